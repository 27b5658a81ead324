"""The seed note's Raft claims, each shown on simulated clusters (deterministic: fixed seeds, virtual time).

Ticks are the node's 10 ms ticks, so the default election timeout (15-30 ticks) is the seed's 150-300 ms.
"""

from __future__ import annotations

from raft.core import NotLeader
from raft.testing.sim import Cluster
from raft.types import NONE, EntryType, MsgType, Role


def _data(cl: Cluster, i: int) -> list[bytes]:
    return [e.data for e in cl.nodes[i].applied if e.type is EntryType.NORMAL]


def test_all_nodes_start_as_followers() -> None:
    cl = Cluster(5, seed=1)
    for i in cl.nodes:
        r = cl.raft(i)
        assert (r.role, r.term, r.leader) == (Role.FOLLOWER, 0, NONE)
    cl.tick(14)  # below the smallest election timeout (15 ticks = 150 ms): nobody moved yet
    assert all(cl.raft(i).role is Role.FOLLOWER for i in cl.nodes)


def test_follower_that_hears_no_leader_becomes_candidate_and_wins_with_a_majority() -> None:
    """§5.2: a follower whose election timeout elapses votes for itself, asks the others, wins a majority."""
    cl = Cluster(5, seed=2, pre_vote=False)
    cl.drop = lambda m: m.type is MsgType.VOTE_RESP  # hold the votes so the candidate state is observable
    assert cl.run_until(lambda: any(cl.raft(i).role is Role.CANDIDATE for i in cl.nodes), 30)
    cand = next(i for i in cl.nodes if cl.raft(i).role is Role.CANDIDATE)
    elapsed = cl.now
    assert 15 <= elapsed < 30  # the randomized timeout lies in [150 ms, 300 ms)
    assert cl.raft(cand).term == 1
    cl.drop = None
    cl.raft(cand).campaign()  # the same candidate asks again, now the votes arrive
    cl.stabilize()
    assert cl.leader() == cand
    voted_for_it = [i for i in cl.nodes if cl.nodes[i].durable.hard.vote == cand]  # durable votes
    assert len(voted_for_it) >= 3
    assert all(cl.raft(i).leader == cand for i in cl.nodes)


def test_split_vote_is_resolved_by_a_new_election() -> None:
    """§5.2: two candidates split the votes of four nodes 2-2; nobody wins, a later timeout elects one."""
    cl = Cluster(4, seed=3, pre_vote=False)
    cl.partition([1, 2], [3, 4])  # each candidate reaches exactly one voter first
    cl.raft(1).campaign()
    cl.raft(3).campaign()
    cl.stabilize()
    assert cl.raft(1).role is Role.CANDIDATE and cl.raft(3).role is Role.CANDIDATE
    assert cl.raft(2).status()["term"] == cl.raft(4).status()["term"] == 1
    assert cl.leader() is None  # 2 votes out of 4 is no majority
    cl.heal()
    ldr = cl.wait_leader(200)
    assert cl.raft(ldr).term >= 2  # a new election in a later term settled it
    assert sorted(cl.raft(i).leader for i in cl.nodes) == [ldr] * 4


def test_entry_is_applied_only_after_a_majority_stored_it() -> None:
    """§5.3: the leader applies (and answers the client) only once a majority has the entry on disk."""
    cl = Cluster(5, seed=4)
    ldr = cl.wait_leader()
    cl.tick(10)
    followers = [i for i in cl.nodes if i != ldr]
    cl.partition([ldr, followers[0]], followers[1:])  # the leader reaches only one follower
    idx = cl.raft(ldr).propose(b"x=1")
    cl.tick(10)
    assert cl.raft(ldr).commit < idx
    assert b"x=1" not in _data(cl, ldr)
    assert cl.nodes[followers[0]].durable.term_at(idx) is not None  # stored by 2 of 5: not enough
    cl.partition([ldr, followers[0], followers[1]], followers[2:])  # now 3 of 5 can store it
    cl.tick(5)
    assert cl.raft(ldr).commit >= idx
    assert b"x=1" in _data(cl, ldr)
    holders = [i for i in cl.nodes if cl.nodes[i].durable.term_at(idx) is not None]
    assert len(holders) >= 3


def test_partition_makes_two_leaders_the_minority_cannot_commit_and_rolls_back_on_healing() -> None:
    """§5.4: the minority leader's entries stay uncommitted; after healing it sees the higher term, steps down
    and its uncommitted entries are replaced by the new leader's log. (CheckQuorum off, as in the seed's
    telling: with it on, the minority leader would step down by itself after an election timeout.)"""
    cl = Cluster(5, seed=5, check_quorum=False)
    old = cl.wait_leader()
    cl.tick(10)
    others = [i for i in cl.nodes if i != old]
    minority, majority = [old, others[0]], others[1:]
    cl.partition(minority, majority)
    new = cl.wait_leader_in(majority)
    assert sorted(cl.leaders()) == sorted([old, new])  # two leaders at once
    assert cl.raft(new).term > cl.raft(old).term

    lost = cl.raft(old).propose(b"from-minority")
    kept = cl.raft(new).propose(b"from-majority")
    cl.tick(30)
    assert cl.raft(old).commit < lost  # the minority leader cannot commit
    assert cl.raft(new).commit >= kept
    assert b"from-minority" not in _data(cl, old)

    cl.heal()
    cl.tick(30)
    assert cl.leaders() == [new]
    assert cl.raft(old).role is Role.FOLLOWER
    for i in cl.nodes:
        r = cl.raft(i)
        assert [e.data for e in r.entries(r.first_index, r.last_index + 1)].count(b"from-minority") == 0
        assert b"from-majority" in _data(cl, i)
        assert b"from-minority" not in _data(cl, i)


def test_quorum_all_blocks_writes_when_one_follower_dies_while_majority_keeps_working() -> None:
    """The seed's master-slave sync replication waits for every slave: one dead follower stops all writes.
    Raft's majority quorum keeps committing with the same failure."""
    results = {}
    for quorum in ("all", "majority"):
        cl = Cluster(3, seed=6, commit_quorum=quorum)
        ldr = cl.wait_leader()
        cl.tick(10)
        first = cl.raft(ldr).propose(b"before")
        cl.tick(5)
        assert cl.raft(ldr).commit >= first
        dead = next(i for i in cl.nodes if i != ldr)
        cl.crash(dead)
        idx = cl.raft(ldr).propose(b"after")
        cl.tick(100)  # one second
        results[quorum] = cl.raft(ldr).commit >= idx
        if quorum == "all":
            assert cl.leader() == ldr  # still leader (CheckQuorum holds with 2 of 3), but blocked
            cl.restart(dead)
            cl.tick(20)
            assert cl.raft(ldr).commit >= idx  # the write completes once the follower is back
    assert results == {"all": False, "majority": True}


def test_writes_to_a_follower_are_refused_with_a_leader_hint() -> None:
    """All changes go through the leader; a follower names it so the client can redirect."""
    cl = Cluster(3, seed=7)
    ldr = cl.wait_leader()
    cl.tick(5)
    follower = next(i for i in cl.nodes if i != ldr)
    try:
        cl.raft(follower).propose(b"x")
    except NotLeader as exc:
        assert exc.leader == ldr
    else:
        raise AssertionError("a follower accepted a proposal")
