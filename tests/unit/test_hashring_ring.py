"""Claims about `hashring.Ring`: ownership rule, immutability, collisions, monotonicity, determinism."""

from __future__ import annotations

import random
import statistics
from bisect import bisect_left
from hashlib import md5

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashring import CIRCLE, EmptyRingError, Ring, moved, moved_share

names_st = st.lists(st.text(alphabet="abcdefghij0123456789:.-", min_size=1, max_size=12),
                    min_size=1, max_size=12, unique=True)
keys_st = st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=20)), min_size=1, max_size=200)


def _keys(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"key:{rng.getrandbits(64):x}" for _ in range(n)]


def _same_mapping(a: Ring, b: Ring) -> bool:
    return np.array_equal(a.points, b.points) and a.owners == b.owners


def test_key_is_owned_by_the_first_point_at_or_after_its_md5_word() -> None:
    ring = Ring(["a", "b", "c"])
    points = ring.points.tolist()
    for key in _keys(2000):
        h = int.from_bytes(md5(key.encode()).digest()[:4], "little")
        i = bisect_left(points, h)
        assert ring.node_for(key) == ring.owners[i % len(points)]
        assert ring.hash_of(key) == h


def test_a_hash_equal_to_a_point_belongs_to_that_point_and_past_the_last_point_wraps_to_the_first() -> None:
    ring = Ring(["a", "b", "c"])
    assert ring._olist[bisect_left(ring._plist, int(ring.points[5]))] == ring.owners[5]
    assert ring._olist[bisect_left(ring._plist, CIRCLE - 1)] == ring.owners[0]


def test_ketama_places_160_points_per_unit_of_weight() -> None:
    ring = Ring({"a": 1, "b": 3})
    assert ring.point_counts() == {"a": 160, "b": 480}
    assert len(Ring(["a"], points=1000)) == 1000


@given(names_st, keys_st)
@settings(max_examples=60, deadline=None)
def test_nodes_for_answers_exactly_what_node_for_answers(names: list[str], keys: list[str | bytes]) -> None:
    ring = Ring(names)
    assert ring.nodes_for(keys) == [ring.node_for(k) for k in keys]


def test_str_keys_hash_as_their_utf8_bytes() -> None:
    ring = Ring(["a", "b", "c", "d"])
    for key in ["plain", "ünïcödé", "键"]:
        assert ring.node_for(key) == ring.node_for(key.encode())


def test_libketama_hashes_keys_as_c_strings_up_to_the_first_nul() -> None:
    ring = Ring([f"10.0.0.{i}:11211" for i in range(8)], scheme="libketama")
    assert ring.hash_of(b"abc\0def") == ring.hash_of(b"abc")
    assert ring.nodes_for([b"abc\0def"]) == [ring.node_for("abc")]
    assert Ring(["a"]).hash_of(b"abc\0def") != Ring(["a"]).hash_of(b"abc")


def test_the_ring_is_immutable() -> None:
    ring = Ring(["a", "b"])
    with pytest.raises(ValueError):
        ring.points[0] = 1
    with pytest.raises(AttributeError):
        ring.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        ring.weights["a"] = 5  # type: ignore[index]
    bigger = ring.with_node("c")
    assert ring.nodes == ("a", "b") and bigger.nodes == ("a", "b", "c")


def test_an_empty_ring_refuses_lookups_and_grows_into_a_working_ring() -> None:
    empty = Ring([])
    with pytest.raises(EmptyRingError):
        empty.node_for("k")
    with pytest.raises(EmptyRingError):
        empty.nodes_for(["k"])
    assert empty.preference_list("k", 2) == []
    assert empty.with_node("a").node_for("k") == "a"


@pytest.mark.parametrize("bad", [{"a": 0}, {"a": -1}, {"a": 1.5}, {"a": True}])
def test_weights_must_be_positive_integers(bad: dict) -> None:
    with pytest.raises(ValueError):
        Ring(bad)


def test_bad_arguments_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="scheme"):
        Ring(["a"], scheme="rendezvous")
    with pytest.raises(ValueError, match="multiple of 4"):
        Ring(["a"], points=10)
    with pytest.raises(ValueError, match="ketama only"):
        Ring(["a"], scheme="libketama", points=40)
    with pytest.raises(ValueError, match="21 bytes"):
        Ring(["x" * 22], scheme="libketama")
    with pytest.raises(ValueError, match="unique"):
        Ring(["a", "a"])
    with pytest.raises(TypeError):
        Ring(["a"]).node_for(5)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        Ring(["a"]).without_node("b")


def test_colliding_points_go_to_the_smaller_name_whatever_the_insertion_order() -> None:
    names = [f"cache-{i}" for i in range(1000)]  # 160,000 points: md5 gives one collision here
    ring = Ring(names)
    assert ring.collisions, "this node set is chosen because two of its points collide"
    point, kept, dropped = ring.collisions[0]
    assert kept < dropped
    assert ring.owners[ring.points.tolist().index(point)] == kept
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    assert _same_mapping(ring, Ring(shuffled))
    assert _same_mapping(ring, Ring(list(reversed(names))))
    without_winner = ring.without_node(kept)
    assert without_winner.owners[without_winner.points.tolist().index(point)] == dropped


@given(names_st, st.randoms(use_true_random=False))
@settings(max_examples=40, deadline=None)
def test_insertion_order_never_changes_the_mapping(names: list[str], rnd: random.Random) -> None:
    shuffled = names[:]
    rnd.shuffle(shuffled)
    weights = {n: 1 + i % 3 for i, n in enumerate(names)}
    assert _same_mapping(Ring(names), Ring(shuffled))
    assert _same_mapping(Ring(weights), Ring({n: weights[n] for n in shuffled}))
    built = Ring([])
    for name in shuffled:
        built = built.with_node(name)
    assert _same_mapping(Ring(names), built)


@given(names_st, st.text(alphabet="klmnop", min_size=1, max_size=6), keys_st)
@settings(max_examples=60, deadline=None)
def test_adding_a_node_only_moves_keys_to_that_node(names: list[str], new: str,
                                                   keys: list[str | bytes]) -> None:
    if new in names:
        new = new + "-new"
    old = Ring(names)
    grown = old.with_node(new)
    for before, after in zip(old.nodes_for(keys), grown.nodes_for(keys), strict=True):
        assert after in (before, new)
    assert all(arc.new_node == new for arc in moved(old, grown))


@given(names_st, st.text(alphabet="klmnop", min_size=1, max_size=6), st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_adding_then_removing_a_node_gives_back_the_identical_mapping(names: list[str], new: str,
                                                                     weight: int) -> None:
    if new in names:
        new = new + "-new"
    ring = Ring(names)
    back = ring.with_node(new, weight).without_node(new)
    assert _same_mapping(ring, back)
    assert back == ring


def test_a_key_moves_exactly_when_its_hash_lies_on_a_moved_arc() -> None:
    old = Ring([f"n{i}" for i in range(6)])
    new = old.without_node("n2").with_node("n9", 2)
    arcs = moved(old, new)
    keys = _keys(20000)
    for key, a, b in zip(keys, old.nodes_for(keys), new.nodes_for(keys), strict=True):
        h = old.hash_of(key)
        on_arc = [arc for arc in arcs if (h - arc.start - 1) % CIRCLE < arc.length]
        assert (a != b) == bool(on_arc)
        if on_arc:
            assert (on_arc[0].old_node, on_arc[0].new_node) == (a, b)


def test_moved_share_matches_the_share_of_keys_that_move() -> None:
    old = Ring([f"n{i}" for i in range(10)])
    new = old.with_node("n10")
    keys = _keys(100000)
    moved_keys = sum(a != b for a, b in zip(old.nodes_for(keys), new.nodes_for(keys), strict=True))
    assert moved_keys / len(keys) == pytest.approx(moved_share(old, new), abs=0.005)
    assert moved_share(new.without_node("n10"), old) == 0
    assert moved_share(Ring([]), Ring(["a"])) == 1.0


def test_shares_cover_the_whole_circle_in_proportion_to_weight() -> None:
    ring = Ring({"a": 1, "b": 1, "c": 2})
    shares = ring.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["c"] == pytest.approx(0.5, abs=0.06)
    assert Ring(["solo"]).shares() == {"solo": 1.0}


@given(names_st, st.text(max_size=10), st.integers(1, 15))
@settings(max_examples=60, deadline=None)
def test_preference_list_starts_at_the_owner_and_names_distinct_nodes(names: list[str], key: str,
                                                                     n: int) -> None:
    ring = Ring(names)
    prefs = ring.preference_list(key, n)
    assert prefs[0] == ring.node_for(key)
    assert len(prefs) == len(set(prefs)) == min(n, len(names))


def test_ten_nodes_of_160_points_share_the_circle_within_12_percent_stddev() -> None:
    ring = Ring([f"node{i}" for i in range(10)])
    counts = list(ring.point_counts().values())
    loads = list(ring.shares().values())
    assert counts == [160] * 10
    assert statistics.pstdev(loads) / statistics.mean(loads) < 0.12
