"""The coordinator's records: every rule of a transaction's life, applied as commands, with no I/O."""

import copy
import random

import pytest

from services.coordinator.model import FINAL_STATES, STUCK, TxnBook
from services.coordinator.store import TxnMachine

BODIES = {"inventory": {"order_id": "o1", "items": [{"sku": "a", "qty": 1}]},
          "payment": {"order_id": "o1", "customer_id": "c1", "amount_cents": 100}}


def begun(gid: str = "g1", deadline: float = 100.0) -> TxnBook:
    book = TxnBook()
    assert book.apply({"op": "begin", "gid": gid, "pattern": "tcc", "branches": BODIES, "deadline": deadline,
                       "now": 1.0}) == "created"
    return book


def answer(book: TxnBook, branch: str, ok: bool = True, gid: str = "g1", now: float = 2.0) -> str:
    return book.apply({"op": "answered", "gid": gid, "branch": branch, "ok": ok,
                       "outcome": "RESERVED" if ok else "REJECTED", "why": None if ok else "no stock", "now": now})


def test_a_begin_is_idempotent_on_its_gid():
    book = begun()
    again = {"op": "begin", "gid": "g1", "pattern": "tcc", "branches": {"payment": {}}, "deadline": 5, "now": 9}
    assert book.apply(again) == "exists"
    assert set(book.get("g1")["branches"]) == {"inventory", "payment"} and book.get("g1")["deadline"] == 100.0


def test_commit_needs_every_branch_ready_and_is_logged_before_phase_two():
    book = begun()
    answer(book, "inventory")
    assert book.apply({"op": "decide", "gid": "g1", "decision": "commit", "now": 3}) == "ignored"
    answer(book, "payment")
    assert book.apply({"op": "decide", "gid": "g1", "decision": "commit", "now": 3}) == "ok"
    record = book.get("g1")
    assert (record["state"], record["decision"]) == ("CONFIRMING", "commit")
    # a late second decision cannot flip it, and an answer after the decision changes nothing
    assert book.apply({"op": "decide", "gid": "g1", "decision": "abort", "now": 4}) == "ignored"
    assert answer(book, "inventory", ok=False, now=5) == "ignored"


def test_the_report_makes_it_final_only_once_every_branch_settled():
    book = begun()
    answer(book, "inventory")
    answer(book, "payment", ok=False)
    book.apply({"op": "decide", "gid": "g1", "decision": "abort", "reason": "refused", "now": 3})
    assert book.get("g1")["state"] == "CANCELLING"
    book.apply({"op": "settled", "gid": "g1", "branch": "inventory", "outcome": "CANCELLED", "now": 4})
    assert book.apply({"op": "reported", "gid": "g1", "now": 5}) == "ignored"
    book.apply({"op": "settled", "gid": "g1", "branch": "payment", "outcome": "NOTHING_TO_UNDO", "now": 5})
    assert book.apply({"op": "reported", "gid": "g1", "now": 6}) == "ok"
    assert book.get("g1")["state"] == "CANCELLED" and "g1" not in book.active
    assert book.get("g1")["branches"]["payment"]["timeline"][-1] == [5, "cancel: NOTHING_TO_UNDO"]


def test_failed_attempts_are_counted_and_make_the_transaction_stuck_until_an_operator_retries():
    book = begun()
    answer(book, "inventory")
    answer(book, "payment")
    book.apply({"op": "decide", "gid": "g1", "decision": "commit", "now": 3})
    for n in range(1, 4):
        book.apply({"op": "failed", "gid": "g1", "branch": "payment", "error": "503", "next_at": 10 + n,
                    "max_attempts": 3, "now": 3 + n})
    record = book.get("g1")
    assert record["state"] == STUCK and record["retries"] == 3
    assert record["stuck"] == {"from": "CONFIRMING", "why": "branch payment failed 3 times: 503"}
    assert book.apply({"op": "failed", "gid": "g1", "branch": "payment", "error": "x", "next_at": 0,
                       "max_attempts": 3, "now": 9}) == "ignored"
    assert book.apply({"op": "retry", "gid": "g1", "now": 10}) == "ok"
    assert record["state"] == "CONFIRMING" and record["branches"]["payment"]["attempts"] == 0
    assert record["retries"] == 3  # the history of retries stays


def test_phase_one_failures_never_make_it_stuck():
    book = begun()
    for n in range(5):
        book.apply({"op": "failed", "gid": "g1", "branch": "payment", "error": "down", "next_at": n,
                    "max_attempts": 2, "now": n})
    assert book.get("g1")["state"] == "TRYING"


@pytest.mark.parametrize("cmd", [
    None, [], {"op": "begin"}, {"op": "begin", "gid": "g", "now": "x"},
    {"op": "begin", "gid": "g", "pattern": "saga", "branches": BODIES, "deadline": 1, "now": 1},
    {"op": "begin", "gid": "g", "pattern": "tcc", "branches": {"bank": {}}, "deadline": 1, "now": 1},
    {"op": "begin", "gid": "g", "pattern": "tcc", "branches": BODIES, "deadline": float("nan"), "now": 1},
    {"op": "decide", "gid": "g1", "decision": "maybe", "now": 1},
    {"op": "answered", "gid": "g1", "branch": "bank", "now": 1},
    {"op": "explode", "gid": "g1", "now": 1},
])
def test_a_malformed_command_changes_nothing(cmd):
    book = begun()
    before = copy.deepcopy(book.records)
    assert book.apply(cmd).startswith("malformed")
    assert book.records == before


def test_an_unknown_gid_is_reported_not_created():
    assert begun().apply({"op": "decide", "gid": "nope", "decision": "abort", "now": 1}) == "unknown gid"


def _random_commands(rng: random.Random, n: int) -> list[dict]:
    gids = [f"g{i}" for i in range(5)]
    ops = []
    for t in range(n):
        gid = rng.choice(gids)
        op = rng.choice(["begin", "answered", "decide", "settled", "failed", "reported", "retry"])
        cmd = {"op": op, "gid": gid, "now": float(t), "pattern": "tcc", "branches": BODIES, "deadline": 50.0,
               "branch": rng.choice(["inventory", "payment", "report"] if op == "failed" else
                                    ["inventory", "payment"]),
               "ok": rng.random() < 0.8, "outcome": "X", "decision": rng.choice(["commit", "abort"]),
               "error": "e", "next_at": t + 1.0, "max_attempts": 3}
        ops.append(cmd)
    return ops


def test_replicas_applying_the_same_commands_hold_the_same_records_and_snapshots_restore_them():
    rng = random.Random(7)
    commands = _random_commands(rng, 400)
    a, b = TxnMachine(), TxnMachine()
    import msgpack

    for i, cmd in enumerate(commands):
        blob = msgpack.packb(cmd)
        assert a.apply(blob) == b.apply(blob)
        if i == 200:  # b restarts from a snapshot of a
            b = TxnMachine()
            b.restore(a.snapshot())
    assert a.book.records == b.book.records and list(a.book.active) == list(b.book.active)
    assert all(r["state"] not in FINAL_STATES for r in (a.book.get(g) for g in a.book.active))
    assert any(r["state"] in FINAL_STATES for r in a.book.records.values())


def test_an_answer_after_the_decision_is_kept_on_the_timeline_and_changes_nothing_else():
    book = begun()
    answer(book, "payment")
    book.apply({"op": "decide", "gid": "g1", "decision": "abort", "reason": "deadline", "now": 3})
    book.apply({"op": "settled", "gid": "g1", "branch": "inventory", "outcome": "EMPTY_ROLLBACK", "now": 4})
    late = {"op": "answered", "gid": "g1", "branch": "inventory", "ok": False, "outcome": "SKIPPED", "now": 5}
    assert book.apply(late) == "late"
    branch = book.get("g1")["branches"]["inventory"]
    assert branch["state"] == "CANCELLED" and branch["outcome"] is None
    assert branch["timeline"][-1] == [5, "try answered after the decision: SKIPPED"]
    assert book.apply(late) == "ignored"  # once


def three_phase(deadline: float = 100.0) -> TxnBook:
    book = TxnBook()
    assert book.apply({"op": "begin", "gid": "g3", "pattern": "3pc", "branches": BODIES, "deadline": deadline,
                       "now": 1.0}) == "created"
    return book


def vote(book: TxnBook, branch: str, number: int, ok: bool = True, now: float = 2.0) -> str:
    return book.apply({"op": "answered", "gid": "g3", "branch": branch, "round": number, "ok": ok,
                       "outcome": "YES" if ok else "NO", "now": now})


def test_3pc_goes_from_can_commit_to_pre_commit_once_every_branch_voted_yes():
    book = three_phase()
    vote(book, "inventory", 0)
    assert book.get("g3")["state"] == "CAN_COMMIT"
    assert book.apply({"op": "decide", "gid": "g3", "decision": "commit", "now": 3}) == "ignored"
    vote(book, "payment", 0)
    record = book.get("g3")
    assert (record["state"], record["round"]) == ("PRE_COMMITTING", 1)
    assert all(b["state"] == "PENDING" and b["answered_at"] is None for b in record["branches"].values())
    # a repeated vote of the round that is over changes nothing
    assert vote(book, "inventory", 0, ok=False) == "ignored"
    vote(book, "inventory", 1)
    assert book.apply({"op": "decide", "gid": "g3", "decision": "commit", "now": 3}) == "ignored"
    vote(book, "payment", 1)
    assert book.get("g3")["state"] == "PRE_COMMITTING"  # the last round hands over to the decision
    assert book.apply({"op": "decide", "gid": "g3", "decision": "commit", "now": 3}) == "ok"
    assert book.get("g3")["state"] == "COMMITTING"


def test_3pc_does_not_start_a_round_past_the_deadline_and_a_no_vote_refuses():
    book = three_phase(deadline=5.0)
    vote(book, "inventory", 0)
    vote(book, "payment", 0, now=6.0)
    assert book.get("g3")["state"] == "CAN_COMMIT"  # too late to pre-commit anything: the driver aborts
    book = three_phase()
    vote(book, "inventory", 0, ok=False)
    vote(book, "payment", 0)
    record = book.get("g3")
    assert record["state"] == "CAN_COMMIT" and record["branches"]["inventory"]["state"] == "REFUSED"
    assert book.apply({"op": "decide", "gid": "g3", "decision": "abort", "now": 3}) == "ok"
    assert book.get("g3")["state"] == "ABORTING"


def test_a_phase_two_answer_is_kept_as_the_branch_result():
    book = three_phase()
    for number in (0, 1):
        vote(book, "inventory", number)
    vote(book, "payment", 0)
    book.apply({"op": "decide", "gid": "g3", "decision": "abort", "now": 3})
    book.apply({"op": "settled", "gid": "g3", "branch": "payment", "outcome": "COMMITTED_ON_TIMEOUT", "now": 4})
    branch = book.get("g3")["branches"]["payment"]
    assert (branch["state"], branch["result"]) == ("ABORTED", "COMMITTED_ON_TIMEOUT")
    assert branch["timeline"][-1] == [4, "abort: COMMITTED_ON_TIMEOUT"]
