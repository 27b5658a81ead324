"""Real node processes on free loopback ports in a temp dir; every process started here is stopped here."""

from __future__ import annotations

import random
import socket

import pytest

from raft.cluster import LocalCluster


def free_base_port(nodes: int = 3) -> int:
    """A base port such that base..base+n-1 and base+100..base+100+n-1 are all free right now."""
    for _ in range(200):
        base = random.randrange(20_000, 40_000)
        socks = []
        try:
            for port in [*range(base, base + nodes), *range(base + 100, base + 100 + nodes)]:
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


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
