"""`txlab bench tcc`: orders/s and latency of the tcc pattern (the Raft-replicated coordinator driving Try,
Confirm or Cancel behind each participant's barrier) beside `pgbench -N` measured in the same run on the same
PostgreSQL (see bench/outbox.py). `--store etcd://127.0.0.1:2379` measures the coordinator on etcd instead."""

from __future__ import annotations

from bench.outbox import run

DTM = ("DTM publishes about 0.26 of raw database TPS for TCC with its barrier (Go server, trivial SQL "
       "branches); compare with orders/s ÷ tps above (Python, real stock and money work)")


def main(argv: list[str]) -> int:
    return run("txlab bench tcc", argv, ["tcc"], reference=DTM, doc=__doc__)
