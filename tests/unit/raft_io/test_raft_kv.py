"""The KV state machine: CAS semantics, exactly-once sessions, deterministic snapshots."""

from __future__ import annotations

from raft.kv import KVStateMachine, Op, Outcome, canonical_json, encode_command


def put(key: str, value, client: str = "", seq: int = 0) -> bytes:
    return encode_command(Op.PUT, key, canonical_json(value), None, client, seq)


def cas(key: str, expected, value, client: str = "", seq: int = 0) -> bytes:
    return encode_command(Op.CAS, key, canonical_json(value), canonical_json(expected), client, seq)


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
    assert kv.apply(encode_command(Op.DELETE, "k")) is Outcome.OK
    assert kv.apply(encode_command(Op.DELETE, "k")) is Outcome.NOT_FOUND
    assert kv.get("k") is None


def test_a_retried_session_command_returns_the_first_outcome_without_reapplying():
    kv = KVStateMachine()
    kv.apply(put("k", 1))
    assert kv.apply(cas("k", 1, 2, client="c", seq=7)) is Outcome.OK
    kv.apply(put("k", 1))  # someone else resets the value
    assert kv.apply(cas("k", 1, 2, client="c", seq=7)) is Outcome.OK  # the retry: cached, not re-run
    assert kv.get("k") == "1"
    assert kv.apply(cas("k", 1, 2, client="c", seq=6)) is Outcome.STALE_SEQUENCE


def test_sessions_are_evicted_oldest_first_identically_on_every_replica():
    a, b = KVStateMachine(max_sessions=2), KVStateMachine(max_sessions=2)
    log = [put("x", i, client=f"c{i % 3}", seq=i) for i in range(10)]
    for cmd in log:
        a.apply(cmd)
        b.apply(cmd)
    assert a.sessions == b.sessions and len(a.sessions) == 2


def test_restore_of_a_snapshot_reproduces_map_and_sessions():
    kv = KVStateMachine()
    kv.apply(put("a", [1, "x"], client="c", seq=1))
    kv.apply(put("b", None))
    other = KVStateMachine()
    other.restore(kv.snapshot())
    assert other.data == kv.data and other.sessions == kv.sessions
    assert other.apply(put("a", 9, client="c", seq=1)) is Outcome.OK and other.get("a") == '[1,"x"]'
    other.restore(b"")
    assert other.data == {} and other.sessions == {}


def test_a_malformed_entry_is_skipped_the_same_way_everywhere_instead_of_crashing():
    kv = KVStateMachine()
    junk = [b"\xc1", b"\x93\x01\x02\x03", encode_command(Op.PUT, "k")[:-1], b"\x96\x09\xa1k\xc0\xc0\xa0\x00",
            encode_command(Op.PUT, "k"), encode_command(Op.CAS, "k", "1")]
    for command in junk:
        assert kv.apply(command) is Outcome.MALFORMED
    assert kv.data == {}
