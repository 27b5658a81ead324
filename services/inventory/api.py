"""Inventory HTTP routes: the catalogue with stock views."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query, Request

from services.cache.keys import CATALOGUE_TTL, STOCK_TTL, product_key, stock_key
from services.common.identifiers import Identifier
from services.runtime.state import Runtime, runtime

router = APIRouter()


@router.get("/products")
async def list_products(request: Request,
                        sku: Annotated[list[Identifier] | None, Query(max_length=200)] = None) -> list[dict[str, Any]]:
    """The catalogue, or only the named skus (unknown ones are simply absent)."""
    query = "SELECT sku, name, price_cents, available, reserved, sold FROM products"
    params: dict[str, Any] = {}
    if sku:
        query += " WHERE sku = ANY(:skus)"
        params["skus"] = sku
    async with runtime(request).engine.connect() as conn:
        rows = await conn.execute(sa.text(query + " ORDER BY sku"), params)
        return [dict(r._mapping) for r in rows]


async def _select_one(rt: Runtime, query: str, sku: str) -> dict[str, Any] | None:
    async with rt.engine.connect() as conn:
        row = (await conn.execute(sa.text(query), {"s": sku})).first()
    return dict(row._mapping) if row else None


@router.get("/products/{sku}")
async def get_product(sku: Annotated[Identifier, Path()], request: Request) -> dict[str, Any]:
    """One product with its stock view, read through the sharded cache (cache-aside).

    The catalogue entry (name, price) is cached for long; the stock view is invalidated by every event
    that changes it, after that event's transaction committed."""
    rt = runtime(request)
    product = await rt.cache.get_or_load(product_key(sku), lambda: _select_one(
        rt, "SELECT sku, name, price_cents FROM products WHERE sku = :s", sku), ttl=CATALOGUE_TTL)
    if product is None:
        raise HTTPException(404, f"no product with sku {sku!r}")
    stock = await rt.cache.get_or_load(stock_key(sku), lambda: _select_one(
        rt, "SELECT available, reserved, sold FROM products WHERE sku = :s", sku), ttl=STOCK_TTL)
    return product | (stock or {})
