"""An immutable ring of virtual nodes on the 2^32 circle (ketama family).

A key is owned by the first point at or after md5(key)'s first little-endian 32-bit word, wrapping to
the first point past the top of the circle (libketama's and twemproxy's lower-bound search).

Collision rule: when two nodes put a point on the same value, the node whose name sorts first
(Python string order, the same as UTF-8 byte order) keeps that point and the other's is dropped;
a node's own duplicate points collapse into one. The mapping is therefore a function of the set of
(name, weight) pairs only, never of insertion order. libketama itself leaves such ties to qsort.

`node_for` and `nodes_for` run in the C extension `hashring._ketama` when it was built, else in the
pure-Python code here, which is the reference: both give the same owner for every key.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from hashring.schemes import DEFAULT_POINTS, SCHEMES, check_name, digest_count, md5, node_points

try:  # the C lookups; the pure-Python ones below stay the fallback and the reference
    from hashring._ketama import Continuum as _Continuum
except ImportError:  # built without a compiler or OpenSSL headers
    _Continuum = None

ACCELERATED = _Continuum is not None
"""True when lookups run in the C extension `hashring._ketama`, False on the pure-Python path."""

CIRCLE = 1 << 32
Key = str | bytes
_u32 = struct.Struct("<I").unpack_from


class EmptyRingError(LookupError):
    """A lookup on a ring that has no points."""


def _normalise(nodes: Iterable[str] | Mapping[str, int]) -> dict[str, int]:
    if isinstance(nodes, Mapping):
        weights = dict(nodes)
    else:
        names = list(nodes)
        if isinstance(nodes, str | bytes):
            raise TypeError("nodes is a list of names or a dict of name to weight, not a string")
        weights = dict.fromkeys(names, 1)
        if len(weights) != len(names):
            raise ValueError("node names must be unique")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"weight of {name!r} must be a positive integer, got {weight!r}")
    return weights


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"keys are str or bytes, got {type(key).__name__}")


class Ring:
    """A consistent-hash ring. Immutable: `with_node`/`without_node` return new rings, so a reader
    holding a ring keeps a consistent view while a writer swaps in the next one.

    `nodes` is a list of names (weight 1 each) or a dict of name to positive integer weight.
    `scheme` is "ketama" (160 points per unit of weight, monotone), "libketama" or "twemproxy"
    (their exact continuum, see `hashring.schemes`). `points` sets the points per unit of weight
    for "ketama" (a multiple of 4); the other schemes fix it at 160.
    """

    __slots__ = ("_collisions", "_cstring_keys", "_fast", "_names", "_names_arr", "_node_points", "_olist",
                 "_own", "_own_ext", "_plist", "_points", "_points_per_weight", "_scheme", "_weights")

    def __init__(self, nodes: Iterable[str] | Mapping[str, int] = (), scheme: str = "ketama", *,
                 points: int = DEFAULT_POINTS) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        if points < 4 or points % 4:
            raise ValueError(f"points per unit of weight must be a positive multiple of 4, got {points}")
        if scheme != "ketama" and points != DEFAULT_POINTS:
            raise ValueError(f"{scheme} places 160 points per server; `points` applies to ketama only")
        weights = _normalise(nodes)
        for name in weights:
            check_name(scheme, name)
        self._init(scheme, points, weights, {})

    def _init(self, scheme: str, points: int, weights: dict[str, int],
              known: Mapping[str, np.ndarray]) -> None:
        self._scheme = scheme
        self._points_per_weight = points
        self._weights = MappingProxyType(weights)
        self._cstring_keys = scheme == "libketama"  # libketama hashes keys with strlen()
        names = tuple(sorted(weights))
        per_node = {name: known[name] if name in known
                    else node_points(name, digest_count(scheme, weights, name, points)) for name in names}
        self._node_points = per_node
        self._names = names
        arrays = [per_node[name] for name in names]
        pts = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.uint32)
        own = np.repeat(np.arange(len(names), dtype=np.int32), [len(a) for a in arrays])
        order = np.lexsort((own, pts))  # by point, then by name order: the collision rule
        pts, own = pts[order], own[order]
        keep = np.ones(len(pts), dtype=bool)
        keep[1:] = pts[1:] != pts[:-1]
        # a dropped point's winner is the first entry of its run, the last kept index before it
        winner = np.maximum.accumulate(np.where(keep, np.arange(len(pts)), 0))
        self._collisions = tuple((int(pts[i]), names[own[winner[i]]], names[own[i]])
                                 for i in np.flatnonzero(~keep).tolist())
        pts, own = pts[keep], own[keep]
        pts.flags.writeable = False
        self._points = pts
        self._own = own
        # one extra slot past the end so that a hash above the last point wraps to the first
        self._own_ext = np.append(own, own[:1])
        self._names_arr = np.array(names, dtype=object)
        self._plist = pts.tolist()
        olist = [names[i] for i in own.tolist()]
        self._olist = [*olist, *olist[:1]]
        self._fast = None if _Continuum is None else _Continuum(pts, own, names, self._cstring_keys)

    @classmethod
    def _derived(cls, base: Ring, weights: dict[str, int]) -> Ring:
        ring = cls.__new__(cls)
        # ketama points of a node depend on that node alone, so they carry over unchanged
        known = base._node_points if base._scheme == "ketama" else {}
        ring._init(base._scheme, base._points_per_weight, weights,
                   {n: p for n, p in known.items() if n in weights and weights[n] == base._weights[n]})
        return ring

    # --- lookups -----------------------------------------------------------------------------------

    def node_for(self, key: Key) -> str:
        """The node that owns `key` (str keys are hashed as UTF-8)."""
        if self._fast is None:
            return self._node_for_py(key)
        try:
            return self._fast.node_for(key)
        except IndexError:
            raise EmptyRingError("the ring has no nodes") from None

    def _node_for_py(self, key: Key) -> str:
        # the common case (a str key, ketama hashing) takes one branch; the rest go through _hash_input
        data = key.encode() if key.__class__ is str and not self._cstring_keys else self._hash_input(key)
        try:
            return self._olist[bisect_left(self._plist, _u32(md5(data).digest())[0])]
        except IndexError:
            raise EmptyRingError("the ring has no nodes") from None

    def _hash_input(self, key: Key) -> bytes:
        data = _key_bytes(key)
        return data.partition(b"\0")[0] if self._cstring_keys else data

    def nodes_for(self, keys: Iterable[Key]) -> list[str]:
        """Owners of many keys at once, in order; the same answers as `node_for` on each key."""
        if not self._plist:
            raise EmptyRingError("the ring has no nodes")
        if self._fast is not None:
            return self._fast.nodes_for(keys)
        return self._nodes_for_py(keys)

    def _nodes_for_py(self, keys: Iterable[Key]) -> list[str]:
        if not self._plist:
            raise EmptyRingError("the ring has no nodes")
        keys = keys if isinstance(keys, list) else list(keys)
        if self._cstring_keys:
            digests = b"".join([md5(self._hash_input(k)).digest() for k in keys])
        else:
            try:  # the all-str fast path: one comprehension, no per-key type checks
                digests = b"".join([md5(k.encode()).digest() for k in keys])
            except AttributeError:
                try:  # all bytes
                    digests = b"".join([md5(k).digest() for k in keys])
                except TypeError:
                    digests = b"".join([md5(_key_bytes(k)).digest() for k in keys])
        hashes = np.frombuffer(digests, dtype="<u4")[::4]
        idx = np.searchsorted(self._points, hashes, side="left")
        return self._names_arr[self._own_ext[idx]].tolist()

    def hash_of(self, key: Key) -> int:
        """The key's position on the circle."""
        return _u32(md5(self._hash_input(key)).digest())[0]

    def successors(self, key: Key) -> Iterator[str]:
        """Distinct nodes met walking clockwise from the key, owner first."""
        if not self._plist:
            return
        start = bisect_left(self._plist, self.hash_of(key))
        seen: set[str] = set()
        olist, m = self._olist, len(self._plist)
        for j in range(m):
            name = olist[(start + j) % m]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == len(self._names):
                    return

    def preference_list(self, key: Key, n: int) -> list[str]:
        """The owner and the next distinct nodes clockwise, `n` in all (fewer if the ring has fewer)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        out: list[str] = []
        for name in self.successors(key):
            out.append(name)
            if len(out) == n:
                break
        return out

    # --- changes -----------------------------------------------------------------------------------

    def with_node(self, name: str, weight: int = 1) -> Ring:
        """A new ring with `name` added (or its weight changed); this ring is unchanged."""
        check_name(self._scheme, name)
        weights = _normalise({**self._weights, name: weight})
        return Ring._derived(self, weights)

    def without_node(self, name: str) -> Ring:
        """A new ring without `name`; KeyError if it is not on this ring."""
        if name not in self._weights:
            raise KeyError(f"node {name!r} is not on the ring")
        return Ring._derived(self, {n: w for n, w in self._weights.items() if n != name})

    # --- description -------------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in sorted order."""
        return self._names

    @property
    def weights(self) -> Mapping[str, int]:
        return self._weights

    @property
    def points(self) -> np.ndarray:
        """The sorted, read-only uint32 points on the circle (after the collision rule)."""
        return self._points

    @property
    def owners(self) -> tuple[str, ...]:
        """The owner of each point in `points`."""
        return tuple(self._olist[:-1])

    @property
    def collisions(self) -> tuple[tuple[int, str, str], ...]:
        """(point, kept_by, dropped_from) for every point that lost the collision rule."""
        return self._collisions

    def point_counts(self) -> dict[str, int]:
        """Points each node holds on the circle."""
        counts = np.bincount(self._own, minlength=len(self._names))
        return dict(zip(self._names, counts.tolist(), strict=True))

    def shares(self) -> dict[str, float]:
        """The fraction of the circle each node owns (sums to 1 on a non-empty ring)."""
        if not self._plist:
            return {}
        pts = self._points.astype(np.int64)
        arcs = np.diff(pts, prepend=pts[-1] - CIRCLE)
        owned = np.bincount(self._own, weights=arcs, minlength=len(self._names)) / CIRCLE
        return dict(zip(self._names, owned.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self._plist)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self._scheme, self._points_per_weight, dict(self._weights)) == (
            other._scheme, other._points_per_weight, dict(other._weights))

    def __hash__(self) -> int:
        return hash((self._scheme, self._points_per_weight, frozenset(self._weights.items())))

    def __repr__(self) -> str:
        return f"Ring({dict(self._weights)!r}, scheme={self._scheme!r}, points={len(self)})"


@dataclass(frozen=True, slots=True)
class Arc:
    """Hashes in (start, end] (wrapping past 2^32 when start >= end) that change owner."""

    start: int
    end: int
    old_node: str | None
    new_node: str | None

    @property
    def length(self) -> int:
        return (self.end - self.start) % CIRCLE or CIRCLE


def _owners_at(ring: Ring, hashes: np.ndarray) -> list[str | None]:
    if not len(ring):
        return [None] * len(hashes)
    return ring._names_arr[ring._own_ext[np.searchsorted(ring._points, hashes, side="left")]].tolist()


def moved(old: Ring, new: Ring) -> list[Arc]:
    """The arcs of the circle whose owner differs between `old` and `new`, merged where adjacent,
    in clockwise order. A key moves iff its hash lies in one of them."""
    bounds = np.union1d(old.points, new.points)
    if not len(bounds):
        return []
    before, after = _owners_at(old, bounds), _owners_at(new, bounds)
    starts = np.roll(bounds, 1).tolist()  # the arc ending at bounds[i] starts after bounds[i-1]
    ends = bounds.tolist()
    arcs: list[Arc] = []
    for start, end, a, b in zip(starts, ends, before, after, strict=True):
        if a == b:
            continue
        if arcs and arcs[-1].end == start and (arcs[-1].old_node, arcs[-1].new_node) == (a, b):
            arcs[-1] = Arc(arcs[-1].start, end, a, b)
        else:
            arcs.append(Arc(start, end, a, b))
    if len(arcs) > 1 and arcs[-1].end == arcs[0].start and (
            (arcs[-1].old_node, arcs[-1].new_node) == (arcs[0].old_node, arcs[0].new_node)):
        arcs[0] = Arc(arcs[-1].start, arcs[0].end, arcs[0].old_node, arcs[0].new_node)
        arcs.pop()
    return arcs


def moved_share(old: Ring, new: Ring) -> float:
    """The fraction of the circle (so, of uniformly hashed keys) that changes owner."""
    return sum(arc.length for arc in moved(old, new)) / CIRCLE


