"""Claims about reading the cache nodes from `TXLAB_CACHE_NODES`."""

import pytest

from services.cache import ShardedCache, node_name, parse_nodes


def test_node_names_are_host_and_port_plus_a_nonzero_db() -> None:
    assert node_name("redis://127.0.0.1:6380") == "127.0.0.1:6380"
    assert node_name("redis://127.0.0.1:6382/1") == "127.0.0.1:6382/1"
    assert node_name("redis://cache.local") == "cache.local:6379"
    with pytest.raises(ValueError):
        node_name("http://127.0.0.1:6380")


def test_the_env_list_gives_the_ring_its_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXLAB_CACHE_NODES", "redis://127.0.0.1:7000, redis://127.0.0.1:7001")
    cache = ShardedCache.from_env()
    assert cache.ring.nodes == ("127.0.0.1:7000", "127.0.0.1:7001")
    with pytest.raises(ValueError):
        parse_nodes("redis://a:1,redis://a:1")
