"""Order HTTP routes: place an order (with an Idempotency-Key), read orders."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Annotated, Any
from urllib.parse import quote

import asyncpg
import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

from services.cache.keys import CATALOGUE_TTL, ORDER_TTL, customer_key, order_key, product_key
from services.cache.sharded import Loader
from services.common.identifiers import Identifier
from services.common.tracing import about
from services.order.admission import TICKET
from services.order.coordinated import NotBegun
from services.order.domain import OrderStatus
from services.order.halfmsg import BrokerRefused, TooLate
from services.order.placement import PATTERNS, Item, PlaceOrder, place_order
from services.runtime.state import Runtime, runtime

router = APIRouter()

ORDER_COLUMNS = ("id, customer_id, pattern, status, reason, total_cents, stock_status, payment_status, "
                 "created_at, decided_at")

# printable ASCII, spaces only inside: servers may strip those around a header value, so they tell nothing
IDEMPOTENCY_KEY = re.compile(r"[!-~](?:[ -~]{0,198}[!-~])?")


def valid_idempotency_key(key: str) -> str:
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise ValueError("Idempotency-Key must be 1 to 200 printable ASCII characters (a UUID will do)")
    return key


IdempotencyKey = Annotated[str, AfterValidator(valid_idempotency_key)]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Identifier
    qty: StrictInt = Field(ge=1, le=10_000)  # "1", true and 2.0 are not quantities


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Identifier
    items: list[ItemIn] = Field(min_length=1, max_length=50)
    pattern: str = "outbox"

    @field_validator("items")
    @classmethod
    def distinct_skus(cls, items: list[ItemIn]) -> list[ItemIn]:
        seen: set[str] = set()
        for item in items:
            if item.sku in seen:
                raise ValueError(f"sku {item.sku!r} appears twice; give one line per sku")
            seen.add(item.sku)
        return items

    @field_validator("pattern")
    @classmethod
    def known_pattern(cls, pattern: str) -> str:
        if pattern not in PATTERNS:
            raise ValueError(f"pattern {pattern!r} is not available; choose one of: {', '.join(PATTERNS)}")
        return pattern

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


async def _fetch(rt: Runtime, url: str, **params: Any) -> httpx.Response:
    try:
        return await rt.http.get(url, params=params)
    except httpx.HTTPError as exc:
        raise HTTPException(503, f"cannot reach {url}: {exc.__class__.__name__}") from exc


async def _lookup(rt: Runtime, url: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """GET `url` on another service: its `fields`, None on 404, 503 when it cannot answer."""
    response = await _fetch(rt, url)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise HTTPException(503, f"{url} answered {response.status_code}")
    try:
        body = response.json()
    except ValueError:  # not JSON, or not even UTF-8
        body = None
    if not isinstance(body, dict) or not all(f in body for f in fields):
        raise HTTPException(503, f"{url} answered 200 with something that is not a JSON object with "
                                 f"{', '.join(fields)}")
    return {f: body[f] for f in fields}


def _product(rt: Runtime, sku: str) -> Loader:
    url = f"{rt.settings.url('inventory')}/products/{quote(sku, safe='')}"
    return lambda: _lookup(rt, url, ("sku", "name", "price_cents"))


def _customer(rt: Runtime, customer_id: str) -> Loader:
    url = f"{rt.settings.url('payment')}/customers/{quote(customer_id, safe='')}"
    return lambda: _lookup(rt, url, ("id", "name"))


async def _price_items(rt: Runtime, body: OrderIn) -> list[Item]:
    """Validate the skus and the customer (read through the sharded cache, a round trip per cache node) and price
    the items."""
    loads = {product_key(i.sku): _product(rt, i.sku) for i in body.items}
    loads[customer_key(body.customer_id)] = _customer(rt, body.customer_id)
    found = await rt.cache.get_or_load_many(loads, ttl=CATALOGUE_TTL)
    products, customer = [found[product_key(i.sku)] for i in body.items], found[customer_key(body.customer_id)]
    unknown = [i.sku for i, p in zip(body.items, products, strict=True) if p is None]
    if unknown:
        raise HTTPException(422, f"unknown sku(s): {', '.join(unknown)}")
    if customer is None:
        raise HTTPException(422, f"unknown customer {body.customer_id!r}")
    return [Item(i.sku, i.qty, p["price_cents"]) for i, p in zip(body.items, products, strict=True)]


async def _load_order(rt: Runtime, where: str, value: Any) -> dict[str, Any] | None:
    async with rt.engine.connect() as conn:
        row = (await conn.execute(sa.text(f"SELECT {ORDER_COLUMNS}, request_hash FROM orders WHERE {where} = :v"),
                                  {"v": value})).first()
        if row is None:
            return None
        items = await conn.execute(sa.text(
            "SELECT sku, qty, unit_price_cents FROM order_items WHERE order_id = :o ORDER BY sku"), {"o": row.id})
        return dict(row._mapping) | {"items": [dict(i._mapping) for i in items]}


def _public(order: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in order.items() if k != "request_hash"}


async def _replay(rt: Runtime, key: str, body: OrderIn, response: Response) -> dict[str, Any] | None:
    existing = await _load_order(rt, "idempotency_key", key)
    if existing is None:
        return None
    if existing["request_hash"] != body.fingerprint():
        raise HTTPException(422, "this Idempotency-Key was used for a different request")
    response.status_code = 200
    return _public(existing)


@router.post("/orders", status_code=201)
async def create_order(body: OrderIn, request: Request, response: Response,
                       idempotency_key: Annotated[IdempotencyKey | None, Header()] = None) -> dict[str, Any]:
    """Place an order. A retry with the same Idempotency-Key returns the first order (200), never a second.

    An Idempotency-Key is 1 to 200 printable ASCII characters (`!` to `~`, spaces only between them); an
    empty, blank, longer or non-ASCII one is a 422 and places nothing. While too many orders are undecided
    (`TXLAB_ADMISSION_MAX_PENDING`) the request waits its turn for up to `TXLAB_ADMISSION_WAIT_SECONDS`, then
    the answer is 429 with Retry-After, and nothing is placed."""
    order, placed = await _place(runtime(request), body, response, idempotency_key)
    ticket = request.scope.get(TICKET)
    if placed and ticket is not None:  # a replay placed nothing: its place goes back when the request ends
        ticket.placed()
    return order


async def _place(rt: Runtime, body: OrderIn, response: Response,
                 idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """The order as placed, and whether this request placed it (False: a replay of an earlier one)."""
    order_id = uuid.uuid4()
    with about(order_id=order_id):
        return await _place_order(rt, order_id, body, response, idempotency_key)


async def _place_order(rt: Runtime, order_id: uuid.UUID, body: OrderIn, response: Response,
                       idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    command = PlaceOrder(order_id=order_id, customer_id=body.customer_id, pattern=body.pattern,
                         items=await _price_items(rt, body), idempotency_key=idempotency_key,
                         request_hash=body.fingerprint())
    try:
        created_at = await place_order(rt, command)
    except (BrokerRefused, TooLate) as exc:  # nothing was placed: the client may retry with the same key
        raise HTTPException(503, f"the order was not placed: {exc}") from exc
    except NotBegun as exc:  # placed, and settled later: 202, never a 5xx that a client would retry as unplaced
        response.status_code = 202
        response.headers["Retry-After"] = "1"
        return command.view(exc.created_at) | {
            "note": f"recorded PENDING; its transaction could not be begun yet ({exc}); it will be, and the order "
                    "settled"}, True
    except (sa.exc.IntegrityError, asyncpg.UniqueViolationError):
        # the key's unique constraint: this is a retry (or a concurrent twin) of an order already placed
        if idempotency_key and (replayed := await _replay(rt, idempotency_key, body, response)):
            return replayed, False
        raise
    await rt.faults.hit("order.after_local_commit")
    return command.view(created_at), True


@router.get("/orders/{order_id}")
async def get_order(order_id: uuid.UUID, request: Request) -> dict[str, Any]:
    """One order, read through the sharded cache; every event that changes it invalidates it."""
    rt = runtime(request)

    async def load() -> dict[str, Any] | None:
        order = await _load_order(rt, "id", order_id)
        return jsonable_encoder(_public(order)) if order else None

    order = await rt.cache.get_or_load(order_key(order_id), load, ttl=ORDER_TTL)
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    return order


@router.get("/orders")
async def list_orders(request: Request, status: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    if status is not None and status not in OrderStatus.__members__:
        raise HTTPException(422, f"status must be one of {', '.join(OrderStatus)}")
    query = f"SELECT {ORDER_COLUMNS} FROM orders" + (" WHERE status = :s" if status else "")
    async with runtime(request).engine.connect() as conn:
        rows = await conn.execute(sa.text(query + " ORDER BY created_at DESC LIMIT :n"),
                                  {"s": status, "n": limit})
        return [dict(r._mapping) for r in rows]
