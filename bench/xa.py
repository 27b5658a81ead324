"""`txlab bench 2pc` and `txlab bench 3pc`: orders/s and latency of the patterns that hold each branch's work
in a PostgreSQL prepared transaction until the coordinator's decision, beside `pgbench -N` measured in the same
run on the same PostgreSQL (see bench/outbox.py). `bench 3pc` measures 2pc in the same run, beside it: 3PC
pays a round more (can-commit) for the liveness it buys. `--store etcd://127.0.0.1:2379` measures the
coordinator on etcd instead."""

from __future__ import annotations

from bench.outbox import run

NOTE = ("every order is two prepared transactions: {prepare, PREPARE TRANSACTION} then COMMIT PREPARED on each "
        "participant, the decision logged in between; 3pc adds a can-commit round before the prepares")


def two_phase(argv: list[str]) -> int:
    """orders/s and latency of 2pc (each branch's work held in a PostgreSQL prepared transaction until the
    coordinator's decision) beside `pgbench -N` measured in the same run."""
    return run("txlab bench 2pc", argv, ["2pc"], reference=NOTE, doc=__doc__)


def three_phase(argv: list[str]) -> int:
    """orders/s and latency of 3pc beside 2pc's, in the same run: 3PC pays a round more (can-commit) for the
    liveness it buys; both beside `pgbench -N`."""
    return run("txlab bench 3pc", argv, ["2pc", "3pc"], reference=NOTE, doc=__doc__)
