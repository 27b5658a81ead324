"""Payment HTTP routes: customers and their balances."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query, Request

from services.common.identifiers import Identifier
from services.runtime.state import runtime

router = APIRouter()


@router.get("/customers")
async def list_customers(request: Request,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    async with runtime(request).engine.connect() as conn:
        rows = await conn.execute(sa.text(
            "SELECT id, name, balance_cents FROM customers ORDER BY id LIMIT :n"), {"n": limit})
        return [dict(r._mapping) for r in rows]


@router.get("/customers/{customer_id}")
async def get_customer(customer_id: Annotated[Identifier, Path()], request: Request) -> dict[str, Any]:
    async with runtime(request).engine.connect() as conn:
        row = (await conn.execute(sa.text(
            "SELECT id, name, balance_cents FROM customers WHERE id = :c"), {"c": customer_id})).first()
    if row is None:
        raise HTTPException(404, f"no customer {customer_id!r}")
    return dict(row._mapping)
