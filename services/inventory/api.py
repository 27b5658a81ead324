"""Inventory HTTP routes: the catalogue with stock views."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request

from services.common.service_app import runtime

router = APIRouter()


@router.get("/products")
async def list_products(request: Request,
                        sku: Annotated[list[str] | None, Query(max_length=200)] = None) -> list[dict[str, Any]]:
    """The catalogue, or only the named skus (unknown ones are simply absent)."""
    query = "SELECT sku, name, price_cents, available, reserved, sold FROM products"
    params: dict[str, Any] = {}
    if sku:
        query += " WHERE sku = ANY(:skus)"
        params["skus"] = sku
    async with runtime(request).engine.connect() as conn:
        rows = await conn.execute(sa.text(query + " ORDER BY sku"), params)
        return [dict(r._mapping) for r in rows]


@router.get("/products/{sku}")
async def get_product(sku: str, request: Request) -> dict[str, Any]:
    async with runtime(request).engine.connect() as conn:
        row = (await conn.execute(sa.text(
            "SELECT sku, name, price_cents, available, reserved, sold FROM products WHERE sku = :s"),
            {"s": sku})).first()
    if row is None:
        raise HTTPException(404, f"no product with sku {sku!r}")
    return dict(row._mapping)
