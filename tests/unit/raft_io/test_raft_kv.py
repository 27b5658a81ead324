"""The KV state machine: CAS semantics, sessions registered through the log and expired by log time,
deterministic snapshots."""

from __future__ import annotations

import time

import msgpack
import pytest

from raft.kv import KVStateMachine, Op, Outcome, Registered, canonical_json, encode_command, encode_register

T0 = 1_000.0  # the leader's timestamp on the first command of each test's log
TIMEOUT = 60.0  # the session timeout the leader stamps on every command of these logs


def put(key: str, value, session: int = 0, seq: int = 0, now: float = T0) -> bytes:
    return encode_command(Op.PUT, key, canonical_json(value), None, session, seq, now=now, session_timeout=TIMEOUT)


def cas(key: str, expected, value, session: int = 0, seq: int = 0, now: float = T0) -> bytes:
    return encode_command(Op.CAS, key, canonical_json(value), canonical_json(expected), session, seq, now=now,
                          session_timeout=TIMEOUT)


def register(kv: KVStateMachine, now: float = T0) -> int:
    result = kv.apply(encode_register(now=now, session_timeout=TIMEOUT))
    assert isinstance(result, Registered)
    return result.session


def test_cas_compares_json_values_not_spellings():
    kv = KVStateMachine()
    kv.apply(put("k", {"b": 1, "a": [1, 2]}))
    assert kv.apply(cas("k", {"a": [1, 2], "b": 1}, 5)) is Outcome.OK
    assert kv.apply(cas("k", 4, 6)) is Outcome.CONFLICT
    assert kv.get("k") == "5"


def test_cas_with_expected_null_creates_a_missing_key_only():
    kv = KVStateMachine()
    assert kv.apply(cas("new", None, 1)) is Outcome.OK
    assert kv.apply(cas("new", None, 2)) is Outcome.CONFLICT


def test_delete_reports_whether_the_key_existed():
    kv = KVStateMachine()
    kv.apply(put("k", 1))
    delete = encode_command(Op.DELETE, "k", now=T0)
    assert kv.apply(delete) is Outcome.OK
    assert kv.apply(delete) is Outcome.NOT_FOUND
    assert kv.get("k") is None


def test_a_retried_session_command_returns_the_first_outcome_without_reapplying():
    kv = KVStateMachine()
    s = register(kv)
    kv.apply(put("k", 1))
    assert kv.apply(cas("k", 1, 2, session=s, seq=7)) is Outcome.OK
    kv.apply(put("k", 1))  # someone else resets the value
    assert kv.apply(cas("k", 1, 2, session=s, seq=7)) is Outcome.OK  # the retry: cached, not re-run
    assert kv.get("k") == "1"
    assert kv.apply(cas("k", 1, 2, session=s, seq=6)) is Outcome.STALE_SEQUENCE


def test_session_ids_come_from_the_log_alike_on_every_replica_and_are_never_reused():
    a, b = KVStateMachine(), KVStateMachine()
    log = [encode_register(now=T0 + 100 * i, session_timeout=TIMEOUT) for i in range(3)]
    assert [a.apply(c) for c in log] == [b.apply(c) for c in log] == [Registered(1), Registered(2), Registered(3)]
    assert list(a.sessions) == [3]  # 1 and 2 expired: each register is 100 s of log time after the last
    assert register(a, now=T0 + 300) == 4  # an expired id is not handed out again


def test_a_command_on_a_session_nobody_registered_is_refused_and_not_applied():
    kv = KVStateMachine()
    register(kv)
    assert kv.apply(put("k", 1, session=99, seq=1)) is Outcome.SESSION_EXPIRED
    assert kv.get("k") is None and 99 not in kv.sessions


def test_a_retried_command_whose_session_was_evicted_by_count_is_refused_not_applied_twice():
    # The defect this guards against: a session evicted to make room forgot its last seq, so the retry of
    # an applied command looked new and was applied a second time.
    kv = KVStateMachine(max_sessions=1)
    a = register(kv)
    kv.apply(put("k", 0))
    assert kv.apply(cas("k", 0, 1, session=a, seq=1)) is Outcome.OK  # applied; its answer is lost
    b = register(kv)  # a second session: past max_sessions, a's (the least recently active) goes
    assert kv.apply(cas("k", 1, 0, session=b, seq=1)) is Outcome.OK
    assert kv.apply(cas("k", 0, 1, session=a, seq=1)) is Outcome.SESSION_EXPIRED  # a retries the same seq
    assert kv.get("k") == "0"  # not swapped a second time


def test_a_retried_command_after_its_session_idled_past_the_timeout_is_refused_not_applied_twice():
    kv = KVStateMachine()
    a, b = register(kv), register(kv)
    kv.apply(put("k", 0))
    assert kv.apply(cas("k", 0, 1, session=a, seq=1, now=T0 + 1)) is Outcome.OK  # its answer is lost
    assert kv.apply(cas("k", 1, 0, session=b, seq=1, now=T0 + 30)) is Outcome.OK
    assert kv.apply(cas("k", 0, 1, session=a, seq=1, now=T0 + 1 + TIMEOUT + 1)) is Outcome.SESSION_EXPIRED
    assert kv.get("k") == "0" and a not in kv.sessions and b in kv.sessions


def test_a_session_expires_only_when_idle_longer_than_the_timeout_in_log_time():
    kv = KVStateMachine()
    s = register(kv)
    for i in range(1, 10):  # in use for 9 timeouts: each command refreshes it
        assert kv.apply(put("k", i, session=s, seq=i, now=T0 + i * TIMEOUT)) is Outcome.OK
    last = T0 + 9 * TIMEOUT
    assert kv.apply(put("other", 0, now=last + TIMEOUT)) is Outcome.OK  # idle exactly the timeout: alive
    assert s in kv.sessions
    assert kv.apply(put("other", 0, now=last + TIMEOUT + 0.001)) is Outcome.OK  # a moment longer: expired
    assert s not in kv.sessions
    assert kv.apply(put("k", 10, session=s, seq=10, now=last + TIMEOUT + 0.002)) is Outcome.SESSION_EXPIRED


def _run(log: list[bytes]) -> tuple[list, bytes]:
    kv = KVStateMachine()
    return [kv.apply(c) for c in log], kv.snapshot()


def test_expiry_depends_only_on_the_log_so_replicas_agree_whatever_their_wall_clocks(monkeypatch):
    s = 1  # the first registration in the log below gets id 1
    log = [encode_register(now=T0, session_timeout=TIMEOUT), put("k", 1, session=s, seq=1, now=T0 + 10),
           put("x", 0, now=T0 + 10 + TIMEOUT + 1), put("k", 2, session=s, seq=2, now=T0 + 10 + TIMEOUT + 2)]
    replicas = []
    for wall in (0.0, T0 + 10.5, 1e12):  # a replica long before, just after, and far beyond the stamps
        monkeypatch.setattr(time, "time", lambda wall=wall: wall)
        monkeypatch.setattr(time, "monotonic", lambda wall=wall: wall)
        replicas.append(_run(log))
    assert replicas[0] == replicas[1] == replicas[2]
    assert replicas[0][0][1:] == [Outcome.OK, Outcome.OK, Outcome.SESSION_EXPIRED]


def test_a_leader_whose_clock_is_behind_does_not_move_log_time_back():
    kv = KVStateMachine()
    s = register(kv, now=T0 + 1_000)
    assert kv.apply(put("k", 1, session=s, seq=1, now=T0)) is Outcome.OK  # a new leader, 1000 s behind
    assert kv.clock == T0 + 1_000
    assert kv.apply(put("k", 2, session=s, seq=2, now=T0 + 1_000 + TIMEOUT)) is Outcome.OK  # not expired


def test_restore_of_a_snapshot_reproduces_map_sessions_and_log_time_so_replicas_agree_on_expiry():
    kv = KVStateMachine()
    old, fresh = register(kv), register(kv, now=T0 + 50)
    kv.apply(put("a", [1, "x"], session=old, seq=1, now=T0 + 60))
    other = KVStateMachine()
    other.restore(kv.snapshot())
    assert (other.data, other.sessions, other.registered, other.clock) == (kv.data, kv.sessions, 2, T0 + 60)
    rest = [put("a", 9, session=old, seq=1, now=T0 + 61),  # a retry: answered from the restored session
            put("c", 1, now=T0 + 61 + TIMEOUT + 1),  # log time moves on: both sessions expire
            put("a", 8, session=fresh, seq=1, now=T0 + 61 + TIMEOUT + 2),
            encode_register(now=T0 + 61 + TIMEOUT + 3, session_timeout=TIMEOUT)]
    outcomes = [Outcome.OK, Outcome.OK, Outcome.SESSION_EXPIRED, Registered(3)]
    assert [kv.apply(c) for c in rest] == [other.apply(c) for c in rest] == outcomes
    assert kv.snapshot() == other.snapshot() and other.get("a") == '[1,"x"]'
    other.restore(b"")
    assert other.data == {} and not other.sessions and other.clock == 0.0 and register(other) == 1


def test_past_max_sessions_the_least_recently_active_is_expired_identically_on_every_replica():
    a, b = KVStateMachine(max_sessions=2), KVStateMachine(max_sessions=2)
    log = [encode_register(now=T0, session_timeout=TIMEOUT) for _ in range(3)]
    log += [put("x", i, session=1 + i % 3, seq=i + 1, now=T0 + i) for i in range(10)]
    assert [a.apply(c) for c in log] == [b.apply(c) for c in log]
    assert a.sessions == b.sessions and list(a.sessions) == [2, 3]


def test_a_malformed_entry_is_skipped_the_same_way_everywhere_instead_of_crashing():
    kv = KVStateMachine()
    good = encode_command(Op.PUT, "k", "1", now=T0)
    junk = [b"\xc1", b"\x93\x01\x02\x03", good[:-1], b"\x96\x09\xa1k\xc0\xc0\xa0\x00",
            encode_command(Op.PUT, "k", now=T0), encode_command(Op.CAS, "k", "1", now=T0),
            msgpack.packb([1, "k", "1", None, 0, 0, T0]),  # a command without its session timeout
            msgpack.packb([1, "k", "1", None, 0, 0, "noon", TIMEOUT]),
            encode_command(Op.PUT, "k", "1", now=T0, session_timeout=0),
            encode_command(Op.PUT, "k", "1", now=float("nan")),
            encode_command(Op.PUT, "k", "1", None, 1, 0, now=T0)]  # a session command without a seq
    register(kv)
    for command in junk:
        assert kv.apply(command) is Outcome.MALFORMED
    assert kv.data == {} and kv.clock == T0


def test_a_snapshot_from_before_log_time_sessions_is_refused_with_a_clear_message():
    old = msgpack.packb([{"k": "1"}, [["client-1", 3, 0]]], use_bin_type=True)
    with pytest.raises(ValueError, match="older txlab"):
        KVStateMachine().restore(old)


def test_a_command_from_before_log_time_sessions_is_refused_loudly_not_skipped():
    old = msgpack.packb([int(Op.PUT), "k", '"v"', None, "client-1", 1], use_bin_type=True)
    with pytest.raises(ValueError, match="older txlab"):
        KVStateMachine().apply(old)
