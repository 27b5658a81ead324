"""Leader election in raft/core.py: timeouts, voting rules, PreVote, CheckQuorum, durable votes, transfer."""

from __future__ import annotations

import pytest

from raft.core import Config, NotLeader, Raft
from raft.testing.sim import Cluster
from raft.types import Message, MsgType, Role


def test_randomized_election_timeouts_fall_in_one_to_two_election_ticks() -> None:
    """§5.2: timeouts are random in [T, 2T) so that split votes are rare."""
    waits = set()
    for seed in range(40):
        r = Raft(Config(1, (1, 2, 3), seed=seed, pre_vote=False))
        ticks = 0
        while r.role is Role.FOLLOWER:
            r.tick()
            ticks += 1
        waits.add(ticks)
    assert min(waits) >= 15 and max(waits) < 30
    assert len(waits) > 5  # actually randomized


def test_single_node_cluster_elects_itself_and_commits_alone() -> None:
    """§5.2/§5.3 degenerate case: one voter is its own majority, once its entry is on its disk."""
    r = Raft(Config(1, (1,)))
    r.campaign()
    assert r.role is Role.LEADER
    idx = r.propose(b"x")
    rd = r.ready()
    assert rd.entries[-1].index == idx and rd.committed_entries == []  # not yet on its disk
    r.advance(rd)
    rd = r.ready()
    assert rd.committed_entries[-1].index == idx
    r.advance(rd)
    assert r.applied == idx


def test_vote_is_denied_to_a_candidate_whose_log_is_behind() -> None:
    """§5.4.1: a voter refuses a candidate whose last log term/index is older than its own."""
    cl = Cluster(3, seed=1, pre_vote=False, check_quorum=False)
    cl.raft(1).campaign()
    cl.stabilize()
    cl.partition([1, 2], [3])
    cl.raft(1).propose(b"only-on-1-and-2")
    cl.stabilize()
    cl.heal()
    cl.partition([2, 3], [1])
    cl.raft(3).campaign()
    cl.stabilize()
    assert cl.raft(3).role is Role.CANDIDATE  # node 2 refused: its log has an entry node 3 lacks
    cl.raft(2).campaign()
    cl.stabilize()
    assert cl.leader() == 2


def test_a_vote_survives_a_restart_so_a_node_never_votes_twice_in_a_term() -> None:
    """§5.1 / Figure 2: currentTerm and votedFor are persisted before the vote is sent."""
    cl = Cluster(3, seed=2, pre_vote=False, check_quorum=False)
    cl.partition([1, 2], [3])
    cl.raft(1).campaign()
    cl.stabilize()
    assert cl.leader() == 1 and cl.nodes[2].durable.hard.vote == 1
    cl.crash(2)
    cl.restart(2)
    cl.heal()
    cl.drop = lambda m: m.frm == 1  # node 3 does not learn about leader 1
    cl.raft(3).campaign()  # term 1 as well: node 3 never heard of term 1
    cl.stabilize()
    assert cl.raft(3).term == 1
    assert cl.raft(3).role is Role.CANDIDATE  # node 2 remembered its vote for 1 after the restart


def test_prevote_keeps_a_partitioned_node_from_inflating_its_term() -> None:
    """Thesis §9.6: with PreVote an isolated node does not raise its term, so rejoining disrupts nobody."""
    terms = {}
    for pre_vote in (True, False):
        cl = Cluster(3, seed=3, pre_vote=pre_vote)
        ldr = cl.wait_leader()
        cl.tick(10)
        lone = next(i for i in cl.nodes if i != ldr)
        before = cl.raft(ldr).term
        cl.isolate(lone)
        cl.tick(300)  # ten election timeouts
        terms[pre_vote] = cl.raft(lone).term - before
        cl.heal()
        cl.tick(50)
        if pre_vote:
            assert cl.leader() == ldr and cl.raft(ldr).term == before  # undisturbed
        else:
            assert cl.raft(cl.wait_leader()).term > before  # the returning node forced a new term
    assert terms[True] == 0
    assert terms[False] >= 5


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    """Thesis §6.2: a leader that has not heard from a quorum within an election timeout steps down."""
    for check_quorum in (True, False):
        cl = Cluster(3, seed=4, check_quorum=check_quorum)
        ldr = cl.wait_leader()
        cl.tick(5)
        cl.isolate(ldr)
        cl.tick(2 * 15)
        assert (cl.raft(ldr).role is Role.LEADER) is (not check_quorum)


def test_leader_lease_makes_followers_ignore_a_disruptive_candidate() -> None:
    """Thesis §4.2.3: a follower that heard from its leader within the minimum election timeout ignores
    a vote request, even of a higher term (CheckQuorum on)."""
    cl = Cluster(3, seed=5, pre_vote=False)
    ldr = cl.wait_leader()
    cl.tick(3)
    follower = next(i for i in cl.nodes if i != ldr)
    term = cl.raft(follower).term
    r = cl.raft(follower)
    r.step(Message(MsgType.VOTE, 9, follower, term + 5, log_term=99, index=99))
    assert r.term == term and r.leader == ldr


def test_leadership_transfer_hands_over_to_an_up_to_date_follower() -> None:
    """Thesis §3.10: the leader catches the target up, then TIMEOUT_NOW makes it campaign at once."""
    cl = Cluster(3, seed=6)
    ldr = cl.wait_leader()
    cl.tick(5)
    target = next(i for i in cl.nodes if i != ldr)
    cl.drop = lambda m: m.to == target and m.type is MsgType.APPEND  # the target lags behind
    idx = cl.raft(ldr).propose(b"x")
    cl.tick(2)
    cl.drop = None
    term = cl.raft(ldr).term
    cl.raft(ldr).transfer_leadership(target)
    with pytest.raises(NotLeader) as exc:
        cl.raft(ldr).propose(b"refused while transferring")
    assert exc.value.leader == target
    cl.tick(3)
    assert cl.leader() == target
    assert cl.raft(target).term == term + 1
    assert cl.raft(target).term_at(idx) == term  # it caught up before taking over


def test_leadership_transfer_to_a_dead_node_is_aborted_after_an_election_timeout() -> None:
    cl = Cluster(3, seed=7)
    ldr = cl.wait_leader()
    cl.tick(5)
    target = next(i for i in cl.nodes if i != ldr)
    cl.crash(target)
    cl.raft(ldr).transfer_leadership(target)
    with pytest.raises(NotLeader):
        cl.raft(ldr).propose(b"x")
    cl.tick(16)
    assert cl.leader() == ldr
    assert cl.raft(ldr).propose(b"x") > 0


def test_stale_leader_learns_the_new_term_from_a_reply_and_steps_down() -> None:
    """§5.1: a server that sees a higher term in any message reverts to follower."""
    cl = Cluster(3, seed=8, check_quorum=False, pre_vote=False)
    old = cl.wait_leader()
    cl.tick(5)
    cl.isolate(old)
    new = cl.wait_leader_in([i for i in cl.nodes if i != old])
    cl.heal()
    cl.tick(10)
    assert cl.leaders() == [new]
    assert cl.raft(old).term == cl.raft(new).term


def test_config_rejects_an_unknown_commit_quorum() -> None:
    """Only 'majority' (Raft) and 'all' (master-slave sync replication) exist."""
    with pytest.raises(ValueError):
        Config(1, (1, 2, 3), commit_quorum="some")
