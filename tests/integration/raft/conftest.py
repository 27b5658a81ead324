"""Real node processes on free loopback ports in a temp dir; every process started here is stopped here."""

from __future__ import annotations

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
