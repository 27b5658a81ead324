"""Real node processes on free loopback ports in a temp dir; every process started here is stopped here."""

from __future__ import annotations

import httpx
import pytest

from raft.cluster import LocalCluster, free_base_port


@pytest.fixture
def make_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("TXLAB_DATA_DIR", str(tmp_path / "txlab"))  # a generated admin token is saved here
    started: list[LocalCluster] = []

    def make(nodes: int = 3, spare: int = 0, **kw) -> LocalCluster:
        """A cluster of `nodes`, with free ports for `spare` more nodes that may join later."""
        c = LocalCluster(nodes, str(tmp_path / f"c{len(started)}"), free_base_port(nodes + spare),
                         log_dir=str(tmp_path / f"logs{len(started)}"), **kw)
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def spare_node_4(make_cluster) -> tuple[LocalCluster, int]:
    """Three voters holding keys k0..k19, and node 4 running but not a member yet: (cluster, leader)."""
    c = make_cluster(3, spare=1)
    c.start()
    leader = c.wait_leader()
    for i in range(20):
        assert httpx.put(f"{c.http_url(leader)}/kv/k{i}", json={"value": i}).status_code == 200
    c.start_node(4)
    return c, leader
