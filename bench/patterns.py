"""`txlab bench patterns`: every pattern (outbox, halfmsg, tcc, 2pc, 3pc) at 8, 32 and 128 in flight, beside
`pgbench -N` measured once per concurrency in the same run on the same PostgreSQL. Each row gives orders/s and
its ratio to pgbench's tps, POST and end-to-end p50/p99, CPU ms per order summed over every txlab process
(from /proc), the services' database commits per order (not the checker's), messages per order, refused
orders, and whether the invariants held. `--json FILE` writes the rows; `--plot FILE.png` draws them."""

from __future__ import annotations

from bench.outbox import ALL_PATTERNS, run


def main(argv: list[str]) -> int:
    return run("txlab bench patterns", argv, ALL_PATTERNS, levels=(8, 32, 128), doc=__doc__)
