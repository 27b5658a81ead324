"""`txlab bench halfmsg`: orders/s and latency of the halfmsg pattern beside the outbox pattern's, each next to
`pgbench -N` measured in the same run on the same PostgreSQL (see bench/outbox.py)."""

from __future__ import annotations

from bench.outbox import run


def main(argv: list[str]) -> int:
    return run("txlab bench halfmsg", argv, ["outbox", "halfmsg"], doc=__doc__)
