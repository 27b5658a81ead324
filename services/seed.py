"""`txlab seed`: a reproducible catalogue and customer base (the same options give the same data)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import psycopg

from services.cache.membership import flush
from services.common.db import migrate
from services.common.settings import DATABASES, Settings
from services.coordinator.client import reset_records
from services.messaging.parking import queue_depths
from services.messaging.topology import topology_of
from services.runtime.prepared import ours

ADJECTIVES = ("red", "blue", "green", "swift", "quiet", "bold", "tiny", "grand", "lucky", "sharp")
NOUNS = ("kettle", "lamp", "chair", "mug", "pen", "clock", "scarf", "drum", "kite", "bowl")


@dataclass(frozen=True)
class SeedPlan:
    products: int = 50
    customers: int = 200
    stock: int = 500
    scarce_share: float = 0.1  # products with very little stock: orders for them get cancelled
    scarce_stock: int = 3
    balance_cents: int = 500_000
    poor_share: float = 0.1  # customers who cannot pay for most orders
    poor_balance_cents: int = 1_500
    seed: int = 42

    def catalogue(self) -> list[tuple[str, str, int, int]]:
        rng = random.Random(self.seed)
        rows = []
        for i in range(self.products):
            stock = self.scarce_stock if rng.random() < self.scarce_share else self.stock
            name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
            rows.append((f"sku-{i:04d}", name, rng.randrange(199, 9_999), stock))
        return rows

    def customer_rows(self) -> list[tuple[str, str, int]]:
        rng = random.Random(self.seed + 1)
        return [(f"c{i:05d}", f"customer {i}",
                 self.poor_balance_cents if rng.random() < self.poor_share else self.balance_cents)
                for i in range(self.customers)]


def forget_prepared(dsn: str, attempts: int = 50) -> int:
    """Roll back every prepared transaction of ours (named `txlab:...`) in one database; how many there were.
    A participant's sweeper may be ending one at the same moment ("busy"): it is looked at again."""
    rolled = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        database = conn.info.dbname
        for _ in range(attempts):
            found = [xid for xid in conn.tpc_recover() if ours(xid, database) is not None]
            if not found:
                return rolled
            for xid in found:
                try:
                    conn.tpc_rollback(xid)
                    rolled += 1
                except (psycopg.errors.UndefinedObject, psycopg.errors.ObjectInUse):
                    pass  # ended meanwhile, or being ended
            time.sleep(0.1)
    raise RuntimeError(f"prepared transactions of ours are still in {database}")


def reset_and_seed(settings: Settings, plan: SeedPlan) -> tuple[int, int]:
    """Empty every database (the services' and the broker's) and the coordinator's records, and load the plan's
    catalogue and customers."""
    for database in DATABASES:
        migrate(settings, database)
    reset_records(settings)  # the coordinator's global transactions first: none is driven over the new data
    base = settings.pg.rstrip("/")
    with psycopg.connect(f"{base}/{settings.database('broker')}") as conn:
        conn.execute("TRUNCATE half_messages, half_message_history")
    with psycopg.connect(f"{base}/{settings.database('order')}") as conn:
        conn.execute("TRUNCATE orders, order_items, outbox, inbox")
    for service in ("inventory", "payment"):
        forget_prepared(f"{base}/{settings.database(service)}")  # they would hold locks the TRUNCATE waits for
    with psycopg.connect(f"{base}/{settings.database('inventory')}") as conn:
        conn.execute("TRUNCATE products, reservations, outbox, inbox, tcc_barrier")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO products (sku, name, price_cents, initial, available) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            [(sku, name, price, stock, stock) for sku, name, price, stock in plan.catalogue()])
    with psycopg.connect(f"{base}/{settings.database('payment')}") as conn:
        conn.execute("TRUNCATE customers, payments, outbox, inbox, tcc_barrier")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO customers (id, name, initial_cents, balance_cents) VALUES (%s, %s, %s, %s)",
                            [(cid, name, bal, bal) for cid, name, bal in plan.customer_rows()])
    flush(settings)  # cached views of the data just replaced
    asyncio.run(queue_depths(settings.amqp, topology_of(settings), purge=True))  # and the events about it
    return plan.products, plan.customers
