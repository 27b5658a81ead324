"""Redis-Cluster-style slots behind the ring's interface, for comparison.

A key's slot is CRC16/XMODEM of the key (or of its hash tag: the bytes between the first "{" and
the next "}", when that is not empty) modulo 16384, as in Redis Cluster; a table maps each slot to
a node. A new router splits the slots into contiguous ranges over the nodes in name order, like
`redis-cli --cluster create`. `with_node` moves slots from the nodes holding the most (their highest
slots first) to the new node, and `without_node` deals the removed node's slots to the nodes holding
the fewest, so each change moves only the slots it has to.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections import Counter
from collections.abc import Iterable, Mapping

from hashring.ring import EmptyRingError, Key, _key_bytes

SLOTS = 16384


def key_slot(key: Key) -> int:
    """Redis Cluster's HASH_SLOT: CRC16/XMODEM (crc_hqx with initial value 0) of the hash tag or key."""
    data = _key_bytes(key)
    left = data.find(b"{")
    if left >= 0:
        right = data.find(b"}", left + 1)
        if right > left + 1:
            data = data[left + 1:right]
    return crc_hqx(data, 0) % SLOTS


class RedisSlots:
    """Immutable slot-table router. Nodes have equal weight, as in Redis Cluster."""

    __slots__ = ("_nodes", "_table")

    def __init__(self, nodes: Iterable[str] | Mapping[str, int] = ()) -> None:
        if isinstance(nodes, Mapping) and any(w != 1 for w in nodes.values()):
            raise ValueError("slots give every node an equal share; weights are not supported")
        names = sorted(nodes)
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        n = len(names)
        self._nodes = tuple(names)
        self._table = tuple(names[s * n // SLOTS] for s in range(SLOTS)) if n else ()

    @classmethod
    def _from_table(cls, nodes: tuple[str, ...], table: tuple[str, ...]) -> RedisSlots:
        router = cls.__new__(cls)
        router._nodes, router._table = nodes, table
        return router

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    @property
    def table(self) -> tuple[str, ...]:
        """The owner of each of the 16384 slots."""
        return self._table

    def slot_counts(self) -> dict[str, int]:
        """Slots each node holds."""
        counts = Counter(self._table)
        return {name: counts[name] for name in self._nodes}

    def node_for(self, key: Key) -> str:
        """The owner of the key's slot."""
        if not self._table:
            raise EmptyRingError("no nodes")
        return self._table[key_slot(key)]

    def nodes_for(self, keys: Iterable[Key]) -> list[str]:
        """`node_for` of each key, in order."""
        if not self._table:
            raise EmptyRingError("no nodes")
        table = self._table
        return [table[key_slot(k)] for k in keys]

    def preference_list(self, key: Key, n: int) -> list[str]:
        """The owner, then the owners of the following slots (wrapping), distinct, `n` in all."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        start = key_slot(key) if self._table else 0
        out: list[str] = []
        for i in range(len(self._table)):
            name = self._table[(start + i) % SLOTS]
            if name not in out:
                out.append(name)
                if len(out) == n:
                    break
        return out

    def with_node(self, name: str, weight: int = 1) -> RedisSlots:
        """A new router where `name` took its fair share of slots from the fullest nodes."""
        if weight != 1:
            raise ValueError("slots give every node an equal share; weights are not supported")
        if name in self._nodes:
            return self
        nodes = tuple(sorted((*self._nodes, name)))
        if not self._table:
            return RedisSlots(nodes)
        table = list(self._table)
        held = {n: [s for s in range(SLOTS) if table[s] == n] for n in self._nodes}  # ascending
        for _ in range(SLOTS // len(nodes)):
            donor = min(self._nodes, key=lambda n: (-len(held[n]), n))
            table[held[donor].pop()] = name
        return RedisSlots._from_table(nodes, tuple(table))

    def without_node(self, name: str) -> RedisSlots:
        """A new router where `name`'s slots went, one by one, to the nodes holding the fewest."""
        if name not in self._nodes:
            raise KeyError(f"node {name!r} is not in the slot table")
        nodes = tuple(n for n in self._nodes if n != name)
        if not nodes:
            return RedisSlots()
        table = list(self._table)
        counts = Counter(n for n in table if n != name)
        for slot in range(SLOTS):
            if table[slot] == name:
                taker = min(nodes, key=lambda n: (counts[n], n))
                table[slot] = taker
                counts[taker] += 1
        return RedisSlots._from_table(nodes, tuple(table))
