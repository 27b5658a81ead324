"""The C lookups (`hashring._ketama`) give exactly the pure-Python ring's answers, and the ring falls
back to pure Python when the extension cannot be imported."""

from __future__ import annotations

import random
import subprocess
import sys
from array import array

import numpy as np
import pytest

import hashring.ring
from hashring import EmptyRingError, Ring

KEYS = 100_000
RINGS = {
    "ketama": Ring([f"cache-{i}" for i in range(10)]),
    "libketama": Ring({f"10.0.0.{i}:11211": 1 + i % 3 for i in range(1, 62)}, scheme="libketama"),
    "twemproxy": Ring({f"10.0.1.{i}:6379": 1 for i in range(1, 26)}, scheme="twemproxy"),
}


@pytest.fixture(autouse=True)
def _extension_is_built() -> None:
    if not hashring.ring.ACCELERATED:
        pytest.fail("hashring._ketama is not built: `make` installs gcc and libssl-dev, then `pip install -e .`")


def _random_keys(ring: Ring, seed: int) -> list[str | bytes]:
    rng = random.Random(seed)
    alphabet = "abc:-_09 \0é€漢𝄞"
    keys: list[str | bytes] = ["", b"", "\0", b"\0", "a\0b", b"a\0b", b"\0abc", "\ud7ff\ue000"]
    # a point's own label hashes onto that point exactly: md5("<name>-<i>") starts with it
    keys += [f"{name}-{i}" for name in ring.nodes for i in range(3)]
    keys += [f"{name}-{i}".encode() for name in ring.nodes for i in range(3)]
    while len(keys) < KEYS:
        size = rng.choice((rng.randrange(0, 12), rng.randrange(50, 70), rng.randrange(0, 200)))
        if rng.random() < 0.5:
            keys.append("".join(rng.choice(alphabet) for _ in range(size)))
        else:
            keys.append(rng.randbytes(size))
    return keys


@pytest.mark.parametrize("scheme", list(RINGS))
def test_extension_and_pure_python_agree_on_100k_str_and_bytes_keys(scheme: str) -> None:
    ring = RINGS[scheme]
    keys = _random_keys(ring, seed=len(scheme))
    hashes = [ring.hash_of(k) for k in keys]
    points = set(ring.points.tolist())
    # preconditions: the edge cases are really in the sample
    assert sum(h in points for h in hashes) >= len(ring.nodes) * 3
    assert any(h > ring.points[-1] for h in hashes) and any(h <= ring.points[0] for h in hashes)
    expected = ring._nodes_for_py(keys)
    assert ring.nodes_for(keys) == expected
    assert [ring.node_for(k) for k in keys[::7]] == expected[::7]
    assert [ring._node_for_py(k) for k in keys[::7]] == expected[::7]


def test_extension_accepts_bytearray_memoryview_and_any_iterable_like_the_python_path() -> None:
    ring = RINGS["libketama"]
    keys = [bytearray(b"user:1\0tail"), memoryview(b"sku:2"), memoryview(b"xxorder:3")[2:], "cart:4"]
    expected = ring._nodes_for_py(keys)
    assert ring.nodes_for(iter(keys)) == expected
    assert [ring.node_for(k) for k in keys] == expected


def test_libketama_hashes_up_to_the_first_nul_and_the_others_hash_every_byte() -> None:
    heads = [f"order:{i}" for i in range(500)]
    for scheme, ring in RINGS.items():
        with_tails = [f"{k}\0tail" for k in heads]
        same = ring.nodes_for(with_tails) == ring.nodes_for(heads)
        assert same is (scheme == "libketama"), scheme
        assert ring.nodes_for(with_tails) == ring._nodes_for_py(with_tails)


def test_a_key_hashing_exactly_onto_a_point_belongs_to_that_point_on_both_paths() -> None:
    for ring in RINGS.values():
        labels = [f"{name}-0" for name in ring.nodes]  # md5("<name>-0") starts with one of name's points
        assert ring.nodes_for(labels) == list(ring.nodes)
        assert [ring._node_for_py(k) for k in labels] == list(ring.nodes)


@pytest.mark.parametrize("bad", [42, None, 1.5, ["a"], bytearray, array("B", b"ab")])
def test_a_key_that_is_not_str_or_bytes_is_a_type_error_on_both_paths(bad: object) -> None:
    ring = RINGS["ketama"]
    message = f"keys are str or bytes, got {type(bad).__name__}"
    for lookup in (ring.node_for, ring._node_for_py, lambda k: ring.nodes_for(["ok", k]),
                   lambda k: ring._nodes_for_py(["ok", k])):
        with pytest.raises(TypeError, match=message):
            lookup(bad)


def test_a_str_key_that_is_not_valid_unicode_fails_on_both_paths() -> None:
    ring = RINGS["ketama"]
    for lookup in (ring.node_for, ring._node_for_py, lambda k: ring.nodes_for([k]), lambda k: ring._nodes_for_py([k])):
        with pytest.raises(UnicodeEncodeError):
            lookup("lone \udc80 surrogate")


def test_an_empty_ring_raises_empty_ring_error_on_both_paths() -> None:
    ring = Ring([])
    for lookup in (ring.node_for, ring._node_for_py, lambda k: ring.nodes_for([k]), lambda k: ring._nodes_for_py([k])):
        with pytest.raises(EmptyRingError):
            lookup("key")


def test_continuum_rejects_inputs_that_would_index_out_of_bounds() -> None:
    from hashring._ketama import Continuum

    pts = np.array([1, 5, 9], dtype=np.uint32)
    own = np.array([0, 1, 0], dtype=np.int32)
    assert Continuum(pts, own, ("a", "b")).nodes_for(["x"]) in (["a"], ["b"])
    with pytest.raises(ValueError, match="outside names"):
        Continuum(pts, own, ("a",))
    with pytest.raises(ValueError, match="sorted"):
        Continuum(pts[::-1].copy(), own, ("a", "b"))
    with pytest.raises(ValueError, match="length"):
        Continuum(pts, own[:2], ("a", "b"))
    with pytest.raises(TypeError, match="uint32"):
        Continuum(pts.astype(np.uint64), own, ("a", "b"))
    with pytest.raises(TypeError, match="int32"):
        Continuum(pts, own.astype(np.int16), ("a", "b"))
    with pytest.raises(TypeError, match="immutable"):
        Continuum(pts, own, ("a", "b")).__init__(pts, own, ("b", "a"))


def test_without_the_extension_the_ring_runs_in_pure_python_with_the_same_answers() -> None:
    # a fresh interpreter where importing hashring._ketama fails, as on a machine without a compiler
    script = """
import sys
sys.modules["hashring._ketama"] = None
import hashring.ring
from hashring import Ring
assert not hashring.ring.ACCELERATED
ring = Ring([f"cache-{i}" for i in range(10)])
assert ring._fast is None
keys = [f"user:{i}" for i in range(2000)] + [f"sku:{i}".encode() for i in range(2000)]
print("\\n".join(ring.nodes_for(keys)))
print("\\n".join(ring.node_for(k) for k in keys))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    ring = RINGS["ketama"]
    keys = [f"user:{i}" for i in range(2000)] + [f"sku:{i}".encode() for i in range(2000)]
    assert ring._fast is not None
    assert out == ring.nodes_for(keys) * 2


@pytest.mark.parametrize("size", [1, 2, 3, 17, 1000, 70_000, 300_000])
def test_continuum_finds_the_first_point_at_or_after_the_hash_for_any_point_set(size: int) -> None:
    from hashring._ketama import Continuum

    rng = np.random.default_rng(size)
    points = np.sort(rng.integers(0, 1 << 32, size, dtype=np.uint64).astype(np.uint32))
    if size > 2:  # the ends of the circle are points too
        points[0], points[-1] = 0, (1 << 32) - 1
    owners = rng.integers(0, 7, size, dtype=np.int32)
    names = tuple(f"n{i}" for i in range(7))
    keys = [f"k{i}" for i in range(20_000)]
    # the pure-Python rule: bisect_left over the points, past the last point wraps to the first
    hash_of = Ring([]).hash_of
    hashes = np.array([hash_of(k) for k in keys], dtype=np.uint32)
    at = np.searchsorted(points, hashes, side="left") % size
    expected = [names[i] for i in owners[at]]
    continuum = Continuum(points, owners, names)
    assert continuum.nodes_for(keys) == expected
    assert [continuum.node_for(k) for k in keys[:2000]] == expected[:2000]
