"""Linearizability checker for KV histories (Wing & Gong's search with Lowe's memoization).

A history is a list of `KvOp`s with invocation and response times. It is linearizable if every completed
operation can be given a point between its invocation and response such that, in that order, each one
returns what a single-copy register per key would return. Operations on different keys commute, so the
history is split per key and each key is checked on its own (P-compositionality, Horn & Kroening 2015).
An operation without a response (the client timed out) may take effect at any point after its invocation,
or never; a read without a response constrains nothing and is dropped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

_UNKNOWN = object()  # output of an operation whose response never arrived
_BLANK = object()  # register value written by a timed-out write whose value nobody observed
_ANY = object()  # guard of a blank put: it applies whatever the register holds


@dataclass(slots=True)
class KvOp:
    """One client operation. kind: "put" (value), "get" (output = value read, None = absent),
    "cas" (expected -> value; output = swapped or not). ret is None when no response was seen."""

    client: int
    kind: str
    key: str
    call: int
    ret: int | None = None
    value: Any = None
    expected: Any = None
    output: Any = _UNKNOWN


@dataclass(slots=True)
class CheckResult:
    ok: bool | None  # None: the step bound was hit before an answer was found
    key: str | None = None  # the first key whose history is not linearizable (or undecided)
    ops: int = 0
    steps: int = 0

    def __bool__(self) -> bool:
        return self.ok is True


def check_kv(history: list[KvOp], max_steps: int = 200_000) -> CheckResult:
    """Check a whole KV history, key by key; `max_steps` bounds the search per key."""
    by_key: dict[str, list[KvOp]] = defaultdict(list)
    for op in history:
        if op.ret is None and op.kind == "get":
            continue
        by_key[op.key].append(op)
    total = 0
    for key in sorted(by_key):
        ok, steps = _check_register(by_key[key], max_steps)
        total += steps
        if ok is not True:
            return CheckResult(ok, key, len(history), total)
    return CheckResult(True, None, len(history), total)


def _step(state: Any, op: KvOp) -> tuple[bool, Any]:
    """Apply `op` to a register holding `state`: (is the op's output legal, state after)."""
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return op.output == state, state
    if op.kind == "cas":
        swapped = state == op.expected
        if op.output is _UNKNOWN:
            return True, op.value if swapped else state
        return op.output == swapped, op.value if swapped else state
    raise ValueError(f"unknown op kind {op.kind!r}")


def _check_register(ops: list[KvOp], max_steps: int) -> tuple[bool | None, int]:
    # A timed-out write whose value nobody ever observed can only matter by hiding the current value (e.g. to
    # explain a failed compare-and-set): such writes with the same guard (none for a put, the expected value
    # for a CAS) are interchangeable "blank" writes. Counting how many of each group were used, instead of
    # which, keeps long histories with many timeouts tractable.
    observed = {o.output for o in ops if o.kind == "get"} | {o.expected for o in ops if o.kind == "cas"}
    groups: dict[Any, list[int]] = defaultdict(list)  # guard -> invocation times of its blank writes
    rest = []
    for o in ops:
        if o.ret is None and o.kind in ("put", "cas") and o.value not in observed:
            groups[_ANY if o.kind == "put" else o.expected].append(o.call)
        else:
            rest.append(o)
    guards = list(groups)
    blanks = [sorted(groups[g]) for g in guards]
    ops = sorted(rest, key=lambda o: o.call)
    inf = float("inf")
    rets = [o.ret if o.ret is not None else inf for o in ops]
    calls = [o.call for o in ops]
    required = 0
    for i, o in enumerate(ops):
        if o.ret is not None:
            required |= 1 << i
    no_blanks = (0,) * len(guards)
    seen: set[tuple[int, Any, tuple[int, ...]]] = {(0, None, no_blanks)}
    # Depth-first search over (ops linearized so far, register state, blank writes used per group); each
    # frame keeps its candidate list, where -1 - g stands for "one more blank write of group g".
    first = _candidates(0, None, no_blanks, calls, rets, guards, blanks)
    stack: list[tuple[int, Any, tuple[int, ...], list[int]]] = [(0, None, no_blanks, first)]
    steps = 0
    while stack:
        done, state, used, cands = stack[-1]
        if done & required == required:
            return True, steps
        if not cands:
            stack.pop()
            continue
        i = cands.pop()
        steps += 1
        if steps > max_steps:
            return None, steps
        if i < 0:
            g = -1 - i
            nd, nxt, nu = done, _BLANK, (*used[:g], used[g] + 1, *used[g + 1 :])
        else:
            legal, nxt = _step(state, ops[i])
            if not legal:
                continue
            nd, nu = done | (1 << i), used
        if (nd, nxt, nu) in seen:
            continue
        seen.add((nd, nxt, nu))
        stack.append((nd, nxt, nu, _candidates(nd, nxt, nu, calls, rets, guards, blanks)))
    return False, steps


def _candidates(done: int, state: Any, used: tuple[int, ...], calls: list[int], rets: list[float],
                guards: list[Any], blanks: list[list[int]]) -> list[int]:
    """Ops that may be linearized next: not yet done and invoked before the earliest pending response;
    -1 - g for a blank write of group g when an unused one was invoked before it too and its guard holds."""
    n = len(calls)
    min_ret = min((rets[i] for i in range(n) if not done >> i & 1), default=float("inf"))
    cands = [i for i in range(n) if not done >> i & 1 and calls[i] < min_ret]
    if state is not _BLANK:
        for g, guard in enumerate(guards):
            k = used[g]
            if k < len(blanks[g]) and blanks[g][k] < min_ret and (guard is _ANY or guard == state):
                cands.insert(0, -1 - g)  # tried last: blank writes are rarely needed
    return cands


def require_linearizable(history: list[KvOp], label: str) -> None:
    """Raise AssertionError, naming `label` and showing the key's history, unless `history` is
    linearizable."""
    res = check_kv(history)
    if res.ok is False:
        raise AssertionError(f"{label}: history of key {res.key!r} is not linearizable:\n"
                             + "\n".join(str(o) for o in history if o.key == res.key))
    if res.ok is None:
        raise AssertionError(f"{label}: linearizability search bound hit on key {res.key!r}")
