"""Claims about the alternative routers: bounded loads, jump consistent hash, Redis Cluster slots."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashring import SLOTS, BoundedLoads, JumpHash, RedisSlots, Ring, jump_bucket, key_slot


def _keys(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [f"k{rng.getrandbits(48):x}" for _ in range(n)]


@given(st.dictionaries(st.text(alphabet="abcdef", min_size=1, max_size=4), st.integers(1, 3),
                       min_size=1, max_size=8),
       st.floats(0.05, 1.0), st.integers(1, 600))
@settings(max_examples=40, deadline=None)
def test_bounded_loads_never_put_a_node_above_its_cap(weights: dict[str, int], eps: float, n: int) -> None:
    router = BoundedLoads(Ring(weights), eps)
    router.nodes_for(_keys(n))
    for name, load in router.loads().items():
        assert load <= router.capacity(name)
    assert sum(router.loads().values()) == n


def test_bounded_loads_keep_max_over_mean_within_one_plus_eps() -> None:
    router = BoundedLoads(Ring([f"n{i}" for i in range(10)]), eps=0.25)
    router.nodes_for(_keys(50000))
    loads = list(router.loads().values())
    assert max(loads) / (sum(loads) / len(loads)) <= 1.25 + 10 / 50000


def test_bounded_loads_place_a_key_once_and_release_it() -> None:
    router = BoundedLoads(Ring(["a", "b", "c"]), eps=0.1)
    first = router.node_for("k")
    assert router.node_for(b"k") == first and sum(router.loads().values()) == 1
    router.release("k")
    router.release("never-placed")
    assert sum(router.loads().values()) == 0


def test_bounded_loads_replace_the_same_keys_when_a_node_joins() -> None:
    router = BoundedLoads(Ring(["a", "b", "c"]), eps=0.2)
    router.nodes_for(_keys(3000))
    grown = router.with_node("d")
    assert sum(grown.loads().values()) == 3000 and grown.loads()["d"] > 0
    assert sum(grown.without_node("d").loads().values()) == 3000


def test_jump_hash_matches_the_reference_vectors() -> None:
    # Vectors of dgryski/go-jump's test, generated there from the paper's C++ code.
    assert [jump_bucket(1, n) for n in range(1, 20)] == [0] * 6 + [6] * 11 + [17] * 2
    assert [jump_bucket(0xDEADBEEF, n) for n in range(1, 20)] == [0, 1, 2, 3, 3] + [5] * 11 + [16] * 3
    assert [jump_bucket(0x0DDC0FFEEBADF00D, n) for n in range(1, 20)] == [0, 1] + [2] * 13 + [15] * 4


def test_jump_hash_moves_keys_only_to_an_appended_node() -> None:
    keys = _keys(20000)
    old = JumpHash([f"n{i}" for i in range(7)])
    new = old.with_node("n7")
    moved = [(a, b) for a, b in zip(old.nodes_for(keys), new.nodes_for(keys), strict=True) if a != b]
    assert all(b == "n7" for _, b in moved)
    assert len(moved) / len(keys) == pytest.approx(1 / 8, abs=0.01)
    assert new.without_node("n7").nodes_for(keys) == old.nodes_for(keys)
    prefs = new.preference_list("x", 3)
    assert prefs[0] == new.node_for("x") and len(set(prefs)) == 3
    with pytest.raises(ValueError):
        old.with_node("heavy", 2)


def test_key_slot_is_redis_cluster_crc16_with_hash_tags() -> None:
    assert key_slot("123456789") == 0x31C3  # the CRC16/XMODEM check value in the Redis Cluster spec
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") != key_slot("bar")  # an empty tag hashes the whole key
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")
    assert key_slot(b"{user1000}x") == key_slot("{user1000}y")


def test_slots_split_evenly_and_move_only_what_a_change_needs() -> None:
    three = RedisSlots(["a", "b", "c"])
    assert sorted(three.slot_counts().values()) == [5461, 5461, 5462]
    four = three.with_node("d")
    assert sorted(four.slot_counts().values()) == [4096] * 4
    changed = [(x, y) for x, y in zip(three.table, four.table, strict=True) if x != y]
    assert len(changed) == SLOTS // 4 and all(y == "d" for _, y in changed)
    back = four.without_node("d")
    gone = [(x, y) for x, y in zip(four.table, back.table, strict=True) if x != y]
    assert all(x == "d" for x, _ in gone) and sorted(back.slot_counts().values()) == [5461, 5461, 5462]
    assert four.node_for("{tag}1") == four.node_for("{tag}2")
    assert four.nodes_for(["a", "b"]) == [four.node_for("a"), four.node_for("b")]
    assert len(set(four.preference_list("k", 4))) == 4
