"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018).

Each node may hold at most ceil((1 + eps) * m * w / W) keys, m being the number of keys placed
(counting the one being placed), w the node's weight and W the total. A key goes to the first node
clockwise from its hash that is under that cap. The caps add up to at least m, so a node with room
always exists, and no node ever holds more than (1 + eps) times its fair share at the moment a key
is placed.

Unlike a `Ring`, this router is a placement table: a key's node depends on the keys placed before
it, so it is mutable (`node_for` places the key, `release` removes it) and not safe to share between
threads without a lock. Releasing keys lowers m and can leave a node above the new cap until keys
are placed again; the placement is not rebalanced on release.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hashring.ring import Key, Ring, _key_bytes


class BoundedLoads:
    """A bounded-load placement of keys over a `Ring`."""

    def __init__(self, ring: Ring, eps: float = 0.25) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self._ring = ring
        self._eps = eps
        self._total_weight = sum(ring.weights.values())
        self._placed: dict[bytes, str] = {}
        self._loads: dict[str, int] = dict.fromkeys(ring.nodes, 0)

    @property
    def ring(self) -> Ring:
        return self._ring

    @property
    def eps(self) -> float:
        return self._eps

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._ring.nodes

    def capacity(self, name: str, keys: int | None = None) -> int:
        """The cap of `name` when `keys` keys are placed (default: the current count)."""
        m = len(self._placed) if keys is None else keys
        return math.ceil((1 + self._eps) * m * self._ring.weights[name] / self._total_weight)

    def node_for(self, key: Key) -> str:
        """The key's node, placing the key first if it is new."""
        k = _key_bytes(key)
        node = self._placed.get(k)
        if node is not None:
            return node
        m = len(self._placed) + 1
        for name in self._ring.successors(k):
            if self._loads[name] < self.capacity(name, m):
                self._placed[k] = name
                self._loads[name] += 1
                return name
        raise AssertionError("the caps add up to at least m, so some node has room")

    def nodes_for(self, keys: Iterable[Key]) -> list[str]:
        """`node_for` of each key, placing them in order."""
        return [self.node_for(k) for k in keys]

    def preference_list(self, key: Key, n: int) -> list[str]:
        """The ring's preference list (replicas ignore the caps)."""
        return self._ring.preference_list(key, n)

    def release(self, key: Key) -> None:
        """Forget a placed key; a key never placed is ignored."""
        node = self._placed.pop(_key_bytes(key), None)
        if node is not None:
            self._loads[node] -= 1

    def loads(self) -> dict[str, int]:
        """Keys held by each node."""
        return dict(self._loads)

    def _replaced(self, ring: Ring) -> BoundedLoads:
        router = BoundedLoads(ring, self._eps)
        for k in self._placed:  # dicts keep insertion order: the original placement order
            router.node_for(k)
        return router

    def with_node(self, name: str, weight: int = 1) -> BoundedLoads:
        """A new placement over the ring with `name`, the same keys placed again in the same order."""
        return self._replaced(self._ring.with_node(name, weight))

    def without_node(self, name: str) -> BoundedLoads:
        """A new placement over the ring without `name`, the same keys placed again in the same order."""
        return self._replaced(self._ring.without_node(name))
