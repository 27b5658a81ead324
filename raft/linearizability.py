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
    ops = sorted(ops, key=lambda o: o.call)
    n = len(ops)
    inf = float("inf")
    rets = [o.ret if o.ret is not None else inf for o in ops]
    calls = [o.call for o in ops]
    required = 0
    for i, o in enumerate(ops):
        if o.ret is not None:
            required |= 1 << i
    seen: set[tuple[int, Any]] = set()
    # Depth-first search over (ops linearized so far, register state); each frame keeps its candidate list.
    stack: list[tuple[int, Any, list[int]]] = [(0, None, _candidates(0, n, calls, rets))]
    seen.add((0, None))
    steps = 0
    while stack:
        done, state, cands = stack[-1]
        if done & required == required:
            return True, steps
        if not cands:
            stack.pop()
            continue
        i = cands.pop()
        steps += 1
        if steps > max_steps:
            return None, steps
        legal, nxt = _step(state, ops[i])
        if not legal:
            continue
        nd = done | (1 << i)
        if (nd, nxt) in seen:
            continue
        seen.add((nd, nxt))
        stack.append((nd, nxt, _candidates(nd, n, calls, rets)))
    return False, steps


def _candidates(done: int, n: int, calls: list[int], rets: list[float]) -> list[int]:
    """Ops that may be linearized next: not yet done and invoked before the earliest pending response."""
    min_ret = min((rets[i] for i in range(n) if not done >> i & 1), default=float("inf"))
    return [i for i in range(n) if not done >> i & 1 and calls[i] < min_ret]
