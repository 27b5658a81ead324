"""The hash-ring sharded cache in front of the inventory and order reads, against real Redis nodes:
invalidated by the events that change the data, and correct while nodes leave and join live."""

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from hashring import Ring
from services.cache.config import parse_nodes
from services.cache.keys import stock_key

from .test_orders_api import PLENTY, RICH, final


@pytest.fixture
async def inventory(settings, system):
    async with httpx.AsyncClient(base_url=settings.url("inventory"), timeout=10.0) as client:
        yield client


def fourth_node(settings) -> tuple[str, str]:
    """Database 1 of the last cache server: a separate keyspace, so a separate node for the ring."""
    url = list(parse_nodes(settings.cache_nodes).values())[-1].rstrip("/") + "/1"
    return next(iter(parse_nodes(url).items()))


async def cached_on(settings, url: str, key: str) -> bool:
    client = aioredis.Redis.from_url(url)
    try:
        return bool(await client.exists(settings.cache_prefix + key))
    finally:
        await client.aclose()


async def test_stock_view_is_cached_and_invalidated_when_an_order_changes_stock(settings, inventory, http):
    before = (await inventory.get(f"/products/{PLENTY}")).json()
    owner = Ring(list(parse_nodes(settings.cache_nodes))).node_for(stock_key(PLENTY))
    assert await cached_on(settings, parse_nodes(settings.cache_nodes)[owner], stock_key(PLENTY))
    order = (await http.post("/orders", json={"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 2}]})).json()
    assert (await final(http, order["id"]))["status"] == "PAID"
    for _ in range(50):  # order.paid reaches inventory a moment after the order became PAID
        after = (await inventory.get(f"/products/{PLENTY}")).json()
        if after["sold"] == before["sold"] + 2:
            break
        await asyncio.sleep(0.1)
    assert (after["available"], after["sold"]) == (before["available"] - 2, before["sold"] + 2)


async def test_admin_adds_and_removes_a_node_live_and_reports_the_keys_moved(client, settings):
    ring = await client.admin("GET", "/cache/ring")
    assert len(ring["nodes"]) == 3 and abs(sum(n["share"] for n in ring["nodes"]) - 1.0) < 1e-9
    assert set(ring["stats"]) == {"order", "inventory", "payment"}
    name, url = fourth_node(settings)
    added = await client.admin("POST", "/cache/nodes", json={"name": name, "url": url})
    assert added["ideal_share"] == pytest.approx(0.25)
    assert 0.15 < added["moved_share"] < 0.35
    assert len((await client.admin("GET", "/cache/ring"))["nodes"]) == 4
    removed = await client.admin("DELETE", f"/cache/nodes/{name}")
    assert removed["moved_share"] == pytest.approx(added["moved_share"])
    assert [n["name"] for n in removed["ring"]["nodes"]] == [n["name"] for n in ring["nodes"]]


async def test_admin_refuses_bad_cache_changes(client, settings):
    for method, path, body, status in [
        ("POST", "/cache/nodes", {"name": "x", "url": "redis://127.0.0.1:9"}, 422),
        ("POST", "/cache/nodes", {"name": "x", "url": "http://127.0.0.1:6380"}, 422),
        ("POST", "/cache/nodes", {"name": next(iter(parse_nodes(settings.cache_nodes))),
                                  "url": settings.cache_nodes.split(",")[0]}, 409),
        # a server already on the ring under another name (it would be two members, and its join purges it)
        ("POST", "/cache/nodes", {"name": "twin", "url": settings.cache_nodes.split(",")[0]}, 409),
        ("POST", "/cache/nodes", {"name": "x", "url": "redis://", "extra": 1}, 422),
        ("POST", "/cache/nodes", {"name": "x", "url": "redis://"}, 422),
        ("DELETE", "/cache/nodes/nowhere:1", None, 404),
    ]:
        with pytest.raises(httpx.HTTPStatusError) as err:
            await client.admin(method, path, json=body)
        assert err.value.response.status_code == status
    async with httpx.AsyncClient(base_url=settings.url("admin")) as anonymous:
        assert (await anonymous.get("/cache/ring")).status_code == 401


async def test_a_node_removed_and_readded_does_not_serve_a_stale_stock_view(client, settings, inventory, http):
    nodes = parse_nodes(settings.cache_nodes)
    owner = Ring(list(nodes)).node_for(stock_key(PLENTY))
    before = (await inventory.get(f"/products/{PLENTY}")).json()
    assert await cached_on(settings, nodes[owner], stock_key(PLENTY))
    await client.admin("DELETE", f"/cache/nodes/{owner}")
    try:
        order = (await http.post("/orders", json={"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}]})).json()
        assert (await final(http, order["id"]))["status"] == "PAID"
        for _ in range(50):
            if (await inventory.get(f"/products/{PLENTY}")).json()["sold"] == before["sold"] + 1:
                break
            await asyncio.sleep(0.1)
        assert await cached_on(settings, nodes[owner], stock_key(PLENTY)), "the removed node still holds the old view"
    finally:
        await client.admin("POST", "/cache/nodes", json={"name": owner, "url": nodes[owner]})
    after = (await inventory.get(f"/products/{PLENTY}")).json()
    assert after["sold"] == before["sold"] + 1, "the re-added node served its stale value"
