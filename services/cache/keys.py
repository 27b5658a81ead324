"""The cached read views every service agrees on: their keys and how long they live."""

import uuid

CATALOGUE_TTL = 300.0  # product name and price, customer identity: changed only by a reseed, which flushes
STOCK_TTL = 30.0  # available / reserved / sold: invalidated by every event that changes them
ORDER_TTL = 60.0  # an order's view: invalidated by every event that changes the order


def product_key(sku: str) -> str:
    return f"product:{sku}"


def stock_key(sku: str) -> str:
    return f"stock:{sku}"


def customer_key(customer_id: str) -> str:
    return f"customer:{customer_id}"


def order_key(order_id: uuid.UUID | str) -> str:
    return f"order:{order_id}"
