"""Jump consistent hash (Lamping & Veach, 2014) behind the ring's interface, for comparison.

Buckets are the nodes in the order given; a key's 64-bit hash is the first 8 bytes of md5(key),
little-endian. Jump hash moves only 1/(n+1) of keys when a node is appended, and needs no memory,
but it has no weights and can only shrink from the end: removing any other node renumbers the
buckets after it and moves far more keys (`without_node` allows it and says so).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from hashring.ring import EmptyRingError, Key, _key_bytes
from hashring.schemes import md5

_MASK = (1 << 64) - 1
_u64 = struct.Struct("<Q").unpack_from


def jump_bucket(key: int, buckets: int) -> int:
    """The bucket in [0, buckets) for a 64-bit key (the paper's code, with 64-bit wrap-around)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


class JumpHash:
    """Immutable jump-hash router over an ordered list of node names."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Sequence[str]) -> None:
        nodes = tuple(nodes)
        if len(set(nodes)) != len(nodes):
            raise ValueError("node names must be unique")
        self._nodes = nodes

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in bucket order."""
        return self._nodes

    def node_for(self, key: Key) -> str:
        """The node of the key's bucket."""
        if not self._nodes:
            raise EmptyRingError("no nodes")
        return self._nodes[jump_bucket(_u64(md5(_key_bytes(key)).digest())[0], len(self._nodes))]

    def nodes_for(self, keys: Iterable[Key]) -> list[str]:
        """`node_for` of each key, in order."""
        return [self.node_for(k) for k in keys]

    def preference_list(self, key: Key, n: int) -> list[str]:
        """The key's node, then the following buckets in order (wrapping), `n` in all."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        first = self._nodes.index(self.node_for(key))
        count = min(n, len(self._nodes))
        return [self._nodes[(first + i) % len(self._nodes)] for i in range(count)]

    def with_node(self, name: str, weight: int = 1) -> JumpHash:
        """A new router with `name` appended as the last bucket."""
        if weight != 1:
            raise ValueError("jump hash has no weights")
        if name in self._nodes:
            return self
        return JumpHash((*self._nodes, name))

    def without_node(self, name: str) -> JumpHash:
        """A new router without `name`; only removing the last node is a minimal move."""
        if name not in self._nodes:
            raise KeyError(f"node {name!r} is not a bucket")
        return JumpHash(tuple(n for n in self._nodes if n != name))
