"""The KV linearizability checker accepts exactly the histories a single register per key can explain."""

from __future__ import annotations

from raft.testing.linearizability import KvOp, check_kv


def put(c: int, key: str, v: str, call: int, ret: int | None) -> KvOp:
    op = KvOp(c, "put", key, call, ret, value=v)
    if ret is not None:
        op.output = True
    return op


def get(c: int, key: str, out: str | None, call: int, ret: int) -> KvOp:
    return KvOp(c, "get", key, call, ret, output=out)


def cas(c: int, key: str, exp: str | None, v: str, ok: bool | None, call: int, ret: int | None) -> KvOp:
    op = KvOp(c, "cas", key, call, ret, value=v, expected=exp)
    if ret is not None:
        op.output = ok
    return op


def test_sequential_history_is_linearizable() -> None:
    h = [put(1, "k", "a", 1, 2), get(1, "k", "a", 3, 4), cas(1, "k", "a", "b", True, 5, 6),
         get(1, "k", "b", 7, 8)]
    assert check_kv(h)


def test_a_read_of_an_overwritten_value_after_the_overwrite_completed_is_not_linearizable() -> None:
    h = [put(1, "k", "a", 1, 2), put(1, "k", "b", 3, 4), get(2, "k", "a", 5, 6)]
    res = check_kv(h)
    assert res.ok is False and res.key == "k"


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    h = [put(1, "k", "a", 1, 10), put(2, "k", "b", 2, 9), get(3, "k", "a", 11, 12)]
    assert check_kv(h)  # b then a
    h2 = [put(1, "k", "a", 1, 10), put(2, "k", "b", 2, 9), get(3, "k", "b", 11, 12)]
    assert check_kv(h2)  # a then b


def test_reads_that_disagree_on_the_order_of_two_writes_are_not_linearizable() -> None:
    h = [
        put(1, "k", "a", 1, 10), put(2, "k", "b", 2, 9),
        get(3, "k", "a", 11, 12), get(4, "k", "b", 13, 14), get(5, "k", "a", 15, 16),
    ]
    assert check_kv(h).ok is False


def test_a_write_without_response_may_or_may_not_have_happened() -> None:
    timed_out = put(1, "k", "x", 1, None)
    assert check_kv([timed_out, get(2, "k", "x", 5, 6)])
    assert check_kv([put(1, "k", "x", 1, None), get(2, "k", None, 5, 6)])
    # ...but once seen, it cannot be unseen.
    assert check_kv([put(1, "k", "x", 1, None), get(2, "k", "x", 5, 6), get(2, "k", None, 7, 8)]).ok is False


def test_compare_and_set_outcomes_must_match_the_register() -> None:
    assert check_kv([put(1, "k", "a", 1, 2), cas(2, "k", "a", "b", True, 3, 4)])
    assert check_kv([put(1, "k", "a", 1, 2), cas(2, "k", "z", "b", True, 3, 4)]).ok is False
    assert check_kv([put(1, "k", "a", 1, 2), cas(2, "k", "a", "b", False, 3, 4)]).ok is False
    # two concurrent CAS from the same expected value: only one may win
    two_winners = [put(1, "k", "a", 1, 2), cas(2, "k", "a", "b", True, 3, 10),
                   cas(3, "k", "a", "c", True, 4, 9)]
    assert check_kv(two_winners).ok is False


def test_keys_are_checked_independently() -> None:
    h = [put(1, "x", "1", 1, 2), put(2, "y", "2", 1, 2), get(3, "x", "1", 3, 4), get(3, "y", "1", 3, 4)]
    res = check_kv(h)
    assert res.ok is False and res.key == "y"


def test_the_step_bound_reports_undecided_instead_of_guessing() -> None:
    h = [put(c, "k", f"v{c}", 1, None) for c in range(14)]
    h += [get(90 + c, "k", f"v{c}", 100 + 2 * c, 101 + 2 * c) for c in range(14)]
    h.append(get(99, "k", "nope", 200, 201))
    res = check_kv(h, max_steps=50)
    assert res.ok is None and not res


def test_a_timed_out_write_nobody_read_can_explain_a_failed_compare_and_set() -> None:
    base = [put(1, "k", "w", 1, 2), cas(2, "k", "w", "z", False, 5, 6),
            put(3, "k", "u", 7, 8), get(4, "k", "u", 9, 10)]
    assert check_kv(base).ok is False  # nothing but "w" can be there when the CAS ran
    assert check_kv([*base, put(5, "k", "v", 3, None)])  # unless the timed-out write of "v" landed first


def test_many_timed_out_writes_nobody_read_do_not_blow_up_the_search() -> None:
    h = [put(c, "k", f"lost{c}", c, None) for c in range(60)]
    h += [put(100, "k", "a", 100, 101), get(101, "k", "a", 102, 103), get(102, "k", None, 104, 105)]
    res = check_kv(h, max_steps=5_000)
    assert res.ok is False and res.steps < 5_000  # decided: None after "a" needs a write of None


def test_a_timed_out_compare_and_set_nobody_read_applies_only_if_its_expected_value_was_there() -> None:
    base = [put(1, "k", "w", 1, 2), cas(2, "k", "w", "z", False, 5, 6),
            put(3, "k", "u", 7, 8), get(4, "k", "u", 9, 10)]
    assert check_kv([*base, cas(5, "k", "w", "v", None, 3, None)])  # w -> v hid "w" from the failed CAS
    assert check_kv([*base, cas(5, "k", "q", "v", None, 3, None)]).ok is False  # "q" was never there
