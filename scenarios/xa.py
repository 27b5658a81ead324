"""2PC and 3PC, each with the failure it is famous for, narrated on real processes.

- `txlab scenario 2pc-coordinator-crash`: the coordinator's leader dies after every participant prepared and
  before the decision, twice. The participants hold their prepared transactions, and their row locks: a
  second order for the same sku waits on them (the wait is measured in PostgreSQL), until a new leader reads
  the transaction from the replicated log, decides, and commits. 2PC blocks; failover is what unblocks it.
- `txlab scenario 3pc-partition`: one participant's acknowledgement of phase 1 is lost, so the coordinator
  aborts; the abort to the other participant, which acknowledged, is lost too (a partition). The same fault
  is applied under TCC, 2PC and 3PC, in that order. Under 3PC the cut-off participant, pre-committed and
  hearing nothing, commits on its own when its timeout passes, as 3PC prescribes, and `txlab check` reports
  the split outcome by name. Under 2PC it stays prepared (it blocks) until the in-doubt sweep learns the
  decision; under TCC its money stays frozen until the Cancel gets through. Neither acts on its own.

Each runs a system of its own and ends with `txlab check`. Exit 0 when every claim was observed and the
invariants hold, or, for 3pc-partition, when exactly the ones the split breaks fail.
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from scenarios.own import Claim
from scenarios.tcc import Story, _main
from services.checker import run_checks
from services.coordinator.model import PATTERNS


def prepared(story: Story, service: str) -> list[str]:
    with psycopg.connect(story.settings.raw_dsn(service)) as conn:
        return [r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                                           "AND gid LIKE 'txlab:%' ORDER BY prepared")]


def lock_waits(story: Story) -> list[tuple[str, float]]:
    """The inventory sessions waiting on a lock now: (their statement, how long they have waited in ms)."""
    with psycopg.connect(story.settings.raw_dsn("inventory")) as conn:
        return [(q, float(ms)) for q, ms in conn.execute(
            "SELECT left(query, 60), extract(epoch FROM now() - state_change) * 1000 FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'")]


async def coordinator_crash(story: Story) -> list[Claim]:
    node, term = await story.leader()
    story.say(f"replica {node} leads the coordinator group (term {term})")
    await story.arm("coordinator.2pc.after_prepare_all=crash,times=2")
    story.say("the leader now dies after every prepare is answered and before it logs a decision; so does the "
              "next one")
    (first,) = await story.place(1, sku="sku-0003", customer="c00003", pattern="2pc")
    t0 = time.monotonic()
    for _ in range(3000):  # 30 s at most
        if len(held := [g for s in ("inventory", "payment") for g in prepared(story, s) if first in g]) == 2:
            break
        await asyncio.sleep(0.01)
    story.say(f"both participants prepared order {first[:8]}: {', '.join(held)}; each holds its row locks")
    (second,) = await story.place(1, sku="sku-0003", customer="c00004", pattern="outbox")
    story.say(f"a second order for the same sku, {second[:8]}, is placed (an outbox order: it needs no coordinator; "
              "inventory reserves its stock when its event arrives)")
    longest, statement = 0.0, ""
    while time.monotonic() - t0 < 60:  # watched in PostgreSQL until the first order's locks are gone
        for query, ms in lock_waits(story):
            if ms > longest:
                longest, statement = ms, query
        if not any(first in g for g in prepared(story, "inventory")) and not lock_waits(story):
            break
        await asyncio.sleep(0.02)
    if longest:
        story.say(f"its stock reservation waited [bold]{longest:.0f} ms[/bold] on those locks, in PostgreSQL "
                  f"({statement.strip()}...)")
    record = await story.follow(first)
    after, after_term = await story.leader()
    story.say(f"replica {after} leads now (term {after_term}); it read {first[:8]} from the log and decided "
              f"{record['decision']}")
    status = await _final_status(story, second)
    story.say(f"the second order ({second[:8]}): {status}, once the locks were released")
    left = prepared(story, "inventory") + prepared(story, "payment")
    story.say(f"prepared transactions of ours left: {len(left)}")
    return [("the leader dies after every prepare, before deciding", "the participants stay prepared",
             len(held) == 2 and record["state"] in PATTERNS["2pc"].final),
            ("a second order for the same sku", "waits on the prepared transaction's locks", longest > 0),
            ("failover", "a new leader decides and commits; nothing stays prepared",
             record["state"] == "COMMITTED" and status == "PAID" and not left)]


async def _final_status(story: Story, order_id: str, within: float = 60.0) -> str:
    """The order's status once it is no longer PENDING (read in the order service's database)."""
    deadline = time.monotonic() + within
    while True:
        with psycopg.connect(story.settings.raw_dsn("order")) as conn:
            status = conn.execute("SELECT status FROM orders WHERE id = %s", (order_id,)).fetchone()[0]
        if status != "PENDING" or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


PARTITION = {  # the acknowledgement lost, and the abort lost on its way to the other participant
    "tcc": ("inventory.tcc.try=drop,times=1", "coordinator.tcc.send_cancel=drop"),
    "2pc": ("inventory.xa.prepare=drop,times=1", "coordinator.2pc.send_rollback=drop"),
    "3pc": ("inventory.3pc.pre_commit=drop,times=1", "coordinator.3pc.send_abort=drop"),
}


def payment_state(story: Story, gid: str) -> tuple[int, int, bool]:
    """payment's view of the order: (cents captured, cents frozen, still prepared)."""
    with psycopg.connect(story.settings.raw_dsn("payment")) as conn:
        captured = conn.execute("SELECT coalesce(sum(amount_cents), 0) FROM payments WHERE order_id = %s AND "
                                "status = 'CAPTURED'", (gid,)).fetchone()[0]
        frozen = conn.execute("SELECT coalesce(sum((detail->>'amount_cents')::bigint), 0) FROM tcc_barrier t "
                              "WHERE gid = %s AND op = 'try' AND held AND NOT EXISTS (SELECT 1 FROM tcc_barrier s "
                              "WHERE s.gid = t.gid AND s.op IN ('confirm', 'cancel'))", (gid,)).fetchone()[0]
    return int(captured), int(frozen), any(gid in g for g in prepared(story, "payment"))


async def partitioned(story: Story, pattern: str, customer: str) -> tuple[dict, list[tuple[float, tuple]]]:
    """One order under the partition; payment's state sampled until the partition is healed, past the 3PC
    timeout. Returns the final record and the samples (seconds since the order, payment's state)."""
    announce(story, pattern)
    ack, send = PARTITION[pattern]
    await story.arm(ack)
    await story.arm(send)
    (gid,) = await story.place(1, sku="sku-0005", customer=customer, pattern=pattern)
    t0, samples = time.monotonic(), []
    heal_at = story.settings.tcc_deadline_seconds + story.settings.threepc_timeout_seconds + 2.0
    while time.monotonic() - t0 < heal_at:
        samples.append((time.monotonic() - t0, payment_state(story, gid)))
        await asyncio.sleep(0.25)
    await story.client.admin("DELETE", "/faults")
    story.say(f"the partition heals {heal_at:.1f} s after the order")
    record = await story.follow(gid)
    captured, frozen, held = payment_state(story, gid)
    story.say(f"order {gid[:8]}: the coordinator decided {record['decision']}; payment has {captured} cents "
              f"captured, {frozen} frozen, {'a' if held else 'no'} prepared transaction")
    return record, samples


def announce(story: Story, pattern: str) -> None:
    story.say(f"[bold]--- {pattern}: inventory's answer to phase 1 is lost; every abort to payment is lost until "
              f"the partition heals ---[/bold]")


def _spans(samples: list[tuple[float, tuple]], index: int) -> float:
    """How long (s) the sampled payment state `index` was true."""
    times = [t for t, state in samples if state[index]]
    return (max(times) - min(times)) if times else 0.0


async def partition(story: Story) -> list[Claim]:
    timeout = story.settings.threepc_timeout_seconds
    story.say(f"3PC timeout {timeout:g} s; in-doubt sweep after {story.settings.indoubt_seconds:g} s; phase 1 "
              f"deadline {story.settings.tcc_deadline_seconds:g} s")
    tcc, tcc_samples = await partitioned(story, "tcc", "c00006")
    frozen_for = _spans(tcc_samples, 1)
    story.say(f"TCC: payment's money stayed frozen {frozen_for:.1f} s (a participant never confirms on its own); "
              f"the Cancel, sent again until acknowledged, gave it back: {tcc['branches']['payment']['result']}")
    xa, xa_samples = await partitioned(story, "2pc", "c00007")
    blocked_for = _spans(xa_samples, 2)
    story.say(f"2PC: payment stayed prepared {blocked_for:.1f} s, holding its locks (it cannot decide alone), "
              f"until the in-doubt sweep asked the coordinator and rolled back")
    three, three_samples = await partitioned(story, "3pc", "c00008")
    alone = next((t for t, state in three_samples if state[0]), None)
    result = three["branches"]["payment"]["result"]
    story.say(f"3PC: payment, pre-committed, heard nothing for {timeout:g} s and committed on its own"
              + (f" ({alone:.1f} s after the order)" if alone is not None else "")
              + f"; the abort that reached it later found: {result}. Inventory rolled back. The coordinator "
              f"decided abort, so the order is CANCELLED while its money is captured: the split 3PC allows.")
    report = await asyncio.to_thread(run_checks, story.settings, 60.0)
    split = [v for i in report.invariants for v in i.violations if v.startswith("split outcome") and three["gid"] in v]
    story.say(f"txlab check: {split[0] if split else 'no split outcome reported'}")
    return [("tcc", "the Cancel is retried until it gets through; nothing is taken",
             tcc["decision"] == "abort" and payment_state(story, tcc["gid"])[:2] == (0, 0)),
            ("2pc", "payment blocks (prepared), then rolls back as decided; nothing is taken",
             xa["decision"] == "abort" and blocked_for > 0 and payment_state(story, xa["gid"]) == (0, 0, False)),
            ("3pc", "payment commits on its own after the timeout: money captured for an aborted transaction",
             three["decision"] == "abort" and result == "COMMITTED_ON_TIMEOUT"),
            ("txlab check", "names the split outcome", bool(split))]


TIMINGS = {"tcc_deadline_seconds": 2.0, "threepc_timeout_seconds": 3.0, "indoubt_seconds": 5.0,
           "coordinator_max_attempts": 40}


def coordinator_crash_main(argv: list[str]) -> int:
    """2PC blocks: the coordinator's leader dies after every prepare, before the decision; the participants hold
    their locks until a new leader decides."""
    return _main(argv, "2pc-coordinator-crash", coordinator_crash,
                 "2PC blocks: the coordinator dies between the prepares and the decision", **TIMINGS)


def partition_main(argv: list[str]) -> int:
    """3PC under a partition: the coordinator aborts while a participant it cannot reach commits on its own after
    the timeout; `txlab check` reports the split (by design)."""
    return _main(argv, "3pc-partition", partition, "3PC under a partition: a participant commits on its own",
                 broken=("agreement", "coordinated"), **TIMINGS)
