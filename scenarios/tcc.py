"""The TCC failures the barrier and the replicated coordinator exist for, narrated on real processes.

- `txlab scenario tcc-empty-rollback`: every Try on payment fails until the deadline, so the coordinator
  cancels a branch whose Try never ran: the Cancel succeeds, records EMPTY_ROLLBACK, and gives back nothing.
- `txlab scenario tcc-hanging`: inventory's Try is held up past the deadline; its Cancel arrives first (an
  empty rollback), then the Try itself, which the barrier answers SKIPPED: it reserves nothing (anti-hanging).
- `txlab scenario coordinator-failover`: the coordinator's leader dies right after logging a decision
  (a crash fault), then is killed with SIGKILL under load; a new leader resumes every transaction from the
  replicated records, and none is lost.

Each runs a system of its own (its own databases, queues, ports and coordinator group) and ends with
`txlab check`. Exit 0 when every claim was observed and every invariant holds.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
from rich.console import Console

from scenarios.own import Claim, own_settings, verdict
from services.checker import run_checks
from services.common.faults import parse_spec
from services.common.settings import Settings
from services.coordinator.client import leading_replica
from services.coordinator.model import FINAL_STATES, STUCK
from services.coordinator.store import store_spec
from services.demo import Client
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import Supervisor

console = Console(width=120)
PLAN = SeedPlan(products=10, customers=20, stock=1_000, seed=5, scarce_share=0.0, poor_share=0.0)
DEADLINE = 2.0
TIMINGS = {"tcc_deadline_seconds": DEADLINE, "coordinator_retry_base_seconds": 0.1,
           "coordinator_retry_cap_seconds": 1.0}


class Story:
    def __init__(self, settings: Settings, sup: Supervisor, client: Client) -> None:
        self.settings, self.sup, self.client, self.t0 = settings, sup, client, time.monotonic()
        self.shown: set[tuple[float, str]] = set()  # timeline entries told already

    def say(self, text: str) -> None:
        console.print(f"[dim]{time.monotonic() - self.t0:6.2f}s[/dim]  {text}")

    async def arm(self, spec: str) -> None:
        await self.client.admin("POST", "/faults", json=parse_spec(spec).request())
        self.say(f"armed [bold]{spec}[/bold]")

    async def place(self, n: int, sku: str = "sku-0001", customer: str = "c00001", pattern: str = "tcc") -> list[str]:
        body = {"customer_id": customer, "pattern": pattern, "items": [{"sku": sku, "qty": 1}]}
        answers = await asyncio.gather(*(self.client.place(body) for _ in range(n)))
        return [a["id"] for _, a in answers]

    async def tx(self, gid: str) -> dict[str, Any]:
        return await self.client.admin("GET", f"/transactions/{gid}")

    async def follow(self, gid: str, within: float = 60.0, until: Callable[[dict], bool] | None = None) -> dict:
        """Narrate the transaction's timeline (its own and its branches'), until it is final (or `until`)."""
        shown = self.shown
        deadline = time.monotonic() + within
        while True:
            record = await self.tx(gid)
            entries = [(t, text) for t, text in record["timeline"]] + [
                (t, f"{name}: {text}") for name, b in record["branches"].items() for t, text in b["timeline"]]
            for t, text in sorted(entries):
                if (t, text) not in shown:
                    shown.add((t, text))
                    self.say(f"  [cyan]{gid[:8]}[/cyan] {text}")
            done = until(record) if until else record["state"] in (*FINAL_STATES, STUCK)
            if done:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"transaction {gid} still {record['state']} after {within:.0f}s")
            await asyncio.sleep(0.1)

    def barrier(self, service: str, gid: str) -> dict[str, str]:
        with psycopg.connect(self.settings.raw_dsn(service)) as conn:
            return dict(conn.execute("SELECT op, outcome FROM tcc_barrier WHERE gid = %s", (gid,)).fetchall())

    def held(self) -> tuple[int, int]:
        """(units reserved in all, cents frozen in all) right now."""
        with psycopg.connect(self.settings.raw_dsn("inventory")) as conn:
            reserved = conn.execute("SELECT coalesce(sum(reserved), 0) FROM products").fetchone()[0]
        with psycopg.connect(self.settings.raw_dsn("payment")) as conn:
            frozen = conn.execute("SELECT coalesce(sum(frozen_cents), 0) FROM customers").fetchone()[0]
        return int(reserved), int(frozen)

    async def leader(self, after_term: int | None = None) -> tuple[int, int]:
        """(node, term) of the coordinator replica that leads and has caught up (in a term after `after_term`)."""
        async with httpx.AsyncClient() as http:
            status = await leading_replica(self.settings, http, after_term)
        return status["id"], status["term"]


async def empty_rollback(story: Story) -> list[Claim]:
    await story.arm("payment.tcc.try=error")
    story.say(f"every Try on payment now fails (503); the coordinator retries it until the deadline ({DEADLINE:g} s)")
    (gid,) = await story.place(1)
    record = await story.follow(gid)
    await story.client.admin("DELETE", "/faults")
    barrier = story.barrier("payment", gid)
    story.say(f"payment's barrier rows for {gid[:8]}: {barrier}")
    money_back = record["branches"]["payment"]["timeline"][-1][1]
    return [("Cancel of a Try that never ran", "succeeds as EMPTY_ROLLBACK",
             barrier == {"try": "PREVENTED", "cancel": "EMPTY_ROLLBACK"} and money_back == "cancel: EMPTY_ROLLBACK"),
            ("the order", "CANCELLED, nothing frozen left", record["state"] == "CANCELLED" and story.held()[1] == 0)]


async def hanging(story: Story) -> list[Claim]:
    hold = DEADLINE + 2.5
    await story.arm(f"inventory.tcc.try=delay:{int(hold * 1000)},times=1")
    story.say(f"inventory's next Try waits {hold:g} s before it reaches the barrier: past the deadline")
    (gid,) = await story.place(1)
    record = await story.follow(gid)
    before = story.barrier("inventory", gid)
    story.say(f"the order is {record['state']}; inventory's barrier rows: {before} (the Cancel came first)")
    late = await story.follow(gid, within=hold + 10, until=lambda r: any(
        "after the decision" in text for _, text in r["branches"]["inventory"]["timeline"]))
    after = story.barrier("inventory", gid)
    reserved, _ = story.held()
    story.say(f"inventory's barrier rows now: {after}; units reserved in all: {reserved}")
    answer = next(text for _, text in late["branches"]["inventory"]["timeline"] if "after the decision" in text)
    return [("Cancel before its Try", "EMPTY_ROLLBACK", before.get("cancel") == "EMPTY_ROLLBACK"),
            ("the Try arriving after its Cancel", "SKIPPED, reserves nothing (anti-hanging)",
             "SKIPPED" in answer and after == before and reserved == 0)]


async def failover(story: Story) -> list[Claim]:
    node, term = await story.leader()
    story.say(f"replica {node} leads the coordinator group (term {term})")
    await story.arm("coordinator.tcc.after_decision=crash,times=1")
    gids = await story.place(5)
    new, new_term = await story.leader(after_term=term)
    story.say(f"replica {node} died after logging a decision (the supervisor restarts it); replica {new} leads "
              f"now (term {new_term})")
    decided = [await story.follow(g) for g in gids]
    gap = max(_resume_gap(r) for r in decided)
    story.say(f"every transaction finished; the longest wait between a decision and its first phase-2 step: "
              f"{gap:.2f} s")
    victim, victim_term = await story.leader()
    story.say(f"now kill -9 the leader, replica {victim}, while 20 more orders are placed")
    placing = asyncio.create_task(story.place(20, sku="sku-0002", customer="c00002"))
    await asyncio.sleep(0.3)
    await story.sup.kill(f"coordinator-{victim}")
    t_kill = time.monotonic()
    after, after_term = await story.leader(after_term=victim_term)
    story.say(f"replica {after} leads (term {after_term}), {time.monotonic() - t_kill:.2f} s after the kill")
    more = await placing
    records = [await story.follow(g) for g in more]
    lost = [r["gid"] for r in [*decided, *records] if r["state"] not in ("CONFIRMED", "CANCELLED")]
    story.say(f"{len(decided) + len(records)} transactions, {len(lost)} not final")
    return [("the leader dies after a decision", "a new leader finishes phase 2",
             all(r["state"] == "CONFIRMED" for r in decided)),
            ("the leader is killed under load", "no transaction lost", not lost)]


def _resume_gap(record: dict[str, Any]) -> float:
    decided = next(t for t, text in record["timeline"] if text.startswith("decided"))
    steps = [t for b in record["branches"].values() for t, text in b["timeline"] if t > decided]
    return (min(steps) - decided) if steps else 0.0


async def _run(settings: Settings, story_of: Callable[[Story], Awaitable[list[Claim]]], title: str,
               broken: tuple[str, ...] = ()) -> int:
    """Tell the story on a system of its own and judge it. `broken` names the invariant the story breaks on
    purpose: then it must be the only one broken, and the claims say how."""
    await asyncio.to_thread(reset_and_seed, settings, PLAN)
    async with Supervisor(settings) as sup:
        client = Client(settings, retry_for=60.0)
        story = Story(settings, sup, client)
        try:
            console.rule(f"[bold]{title}[/bold]")
            observed = await story_of(story)
        finally:
            await client.admin("DELETE", "/faults")
            await client.aclose()
        report = await asyncio.to_thread(run_checks, settings, 60.0)
    return verdict(observed, report, console, "what was claimed, and what happened", broken=broken)


def _main(argv: list[str], name: str, story: Callable[[Story], Awaitable[list[Claim]]], title: str,
          broken: tuple[str, ...] = (), **timings: Any) -> int:
    p = argparse.ArgumentParser(prog=f"txlab scenario {name}", description=title)
    p.add_argument("--store", type=store_spec, default="raft",
                   help="the coordinator's store: raft, or etcd://host:port")
    args = p.parse_args(argv)
    with own_settings(name, coordinator_store=args.store, **(TIMINGS | timings)) as settings:
        return asyncio.run(_run(settings, story, title, broken))


def empty_rollback_main(argv: list[str]) -> int:
    """TCC empty rollback: a Cancel whose Try never ran is recorded and answered, and holds nothing."""
    return _main(argv, "tcc-empty-rollback", empty_rollback, "TCC empty rollback: a Cancel whose Try never ran")


def hanging_main(argv: list[str]) -> int:
    """TCC anti-hanging: a Try that arrives after its Cancel is refused by the barrier, and holds nothing."""
    return _main(argv, "tcc-hanging", hanging, "TCC anti-hanging: a Try that arrives after its Cancel")


def failover_main(argv: list[str]) -> int:
    """The coordinator's leader dies mid-transaction; a new leader finishes it from the replicated record."""
    return _main(argv, "coordinator-failover", failover, "the coordinator's leader dies mid-transaction")
