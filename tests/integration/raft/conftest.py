"""Real node processes on free loopback ports in a temp dir; every process started here is stopped here."""

from __future__ import annotations

import pytest

from raft.cluster import LocalCluster, free_base_port


@pytest.fixture
def make_cluster(tmp_path):
    started: list[LocalCluster] = []

    def make(nodes: int = 3, **kw) -> LocalCluster:
        c = LocalCluster(nodes, str(tmp_path / f"c{len(started)}"), free_base_port(nodes),
                         log_dir=str(tmp_path / f"logs{len(started)}"), **kw)
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()
