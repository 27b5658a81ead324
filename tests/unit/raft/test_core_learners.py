"""Learners (thesis §4.2.1 "non-voting members", etcd's learners) in raft/core.py."""

from __future__ import annotations

import pytest

from raft.core import Config, Raft
from raft.testing.sim import Cluster, kv_command
from raft.types import MAX_NODE_ID, ConfChange, Entry, EntryType, HardState, Message, MsgType, Role


def _put(cl: Cluster, ldr: int, key: str, value: str) -> int:
    return cl.raft(ldr).propose(kv_command("put", key, value, "", f"t-{key}-{value}"))


def _add_learner(cl: Cluster, ldr: int, node: int) -> int:
    cl.add_node(node, voter=False)
    idx = cl.raft(ldr).propose_conf_change(ConfChange("add-learner", node))
    cl.tick(20)
    assert cl.raft(ldr).commit >= idx
    return idx


def test_a_learner_does_not_count_toward_the_commit_quorum() -> None:
    """Thesis §4.2.1: a non-voting member receives the log but is not counted in majorities. With 2 voters and
    a learner, one voter down leaves 1 of 2 voters: nothing commits, although the learner stored the entry."""
    cl = Cluster(2, seed=21, check_quorum=False)
    ldr = cl.wait_leader()
    cl.tick(5)
    _add_learner(cl, ldr, 3)
    assert 3 not in cl.raft(ldr).voters
    assert cl.raft(ldr).learners == (3,) and cl.raft(3).learners == (3,)
    other = next(i for i in (1, 2) if i != ldr)
    cl.crash(other)
    idx = _put(cl, ldr, "k", "v")
    cl.tick(30)
    assert cl.raft(ldr).status()["progress"][3]["match"] >= idx  # the learner acknowledged it...
    assert cl.raft(3).last_index >= idx
    assert cl.raft(ldr).commit < idx  # ...and that does not help
    assert cl.raft(ldr).role is Role.LEADER


def test_a_learner_never_campaigns_even_when_its_election_timer_fires() -> None:
    """Thesis §4.2.1: non-voting members never start elections (no pre-vote either), even with no leader."""
    add_me = Entry(1, 2, EntryType.CONF_CHANGE, ConfChange("add-learner", 4).encode())
    for pre_vote in (True, False):
        r = Raft(Config(4, (1, 2, 3), pre_vote=pre_vote), hard_state=HardState(1, 0, 2),
                 entries=[Entry(1, 1), add_me])
        assert r.learners == (4,) and r.voters == (1, 2, 3)
        for _ in range(500):
            r.tick()
        r.campaign()
        r.step(Message(MsgType.TIMEOUT_NOW, 1, 4, 1))
        rd = r.ready()
        assert r.role is Role.FOLLOWER and r.term == 1
        assert not [m for m in rd.messages if m.type in (MsgType.VOTE, MsgType.PRE_VOTE)]

    cl = Cluster(3, seed=22)
    ldr = cl.wait_leader()
    cl.tick(5)
    _add_learner(cl, ldr, 4)
    sent: list[Message] = []
    cl.drop = lambda m: sent.append(m) or False
    for i in (1, 2, 3):
        cl.crash(i)  # the leader and every voter gone: only the learner's timer runs
    term = cl.raft(4).term
    cl.restart(4)
    cl.tick(500)
    assert cl.raft(4).role is Role.FOLLOWER and cl.raft(4).term == term
    assert not [m for m in sent if m.frm == 4]


def test_a_learner_catches_up_from_a_snapshot_and_counts_toward_the_quorum_once_promoted() -> None:
    """Thesis §4.2.1: a new server first catches up as a non-voting member (here from a snapshot, §5), then is
    promoted; from then on it counts: with 3 voters, the leader and the promoted node commit without the third."""
    cl = Cluster(2, seed=23)
    ldr = cl.wait_leader()
    for k in range(10):
        _put(cl, ldr, "k", str(k))
    cl.tick(10)
    cl.compact(ldr)
    assert cl.raft(ldr).first_index > 1  # the new node can only catch up from the snapshot
    _add_learner(cl, ldr, 3)
    assert cl.raft(3).snapshot is not None and cl.nodes[3].values() == {"k": "9"}
    assert cl.raft(3).applied == cl.raft(ldr).commit
    assert cl.raft(3).learners == (3,) and cl.raft(3).snapshot.conf.voters == cl.raft(ldr).voters

    idx = cl.raft(ldr).propose_conf_change(ConfChange("promote", 3))
    cl.tick(20)
    assert cl.raft(ldr).commit >= idx
    assert cl.raft(ldr).learners == () and sorted(cl.raft(ldr).voters) == [1, 2, 3]
    assert cl.raft(3).voters == cl.raft(ldr).voters
    other = next(i for i in (1, 2) if i != ldr)
    cl.crash(other)
    idx = _put(cl, ldr, "k", "after")
    cl.tick(20)
    assert cl.raft(ldr).commit >= idx  # 2 of 3 voters: the promoted node's ack now makes the quorum


def test_promoting_a_node_that_is_not_a_learner_is_refused() -> None:
    """Only a learner can be promoted; a voter or a stranger is a caller error, not a log entry."""
    cl = Cluster(3, seed=24)
    ldr = cl.wait_leader()
    cl.tick(5)
    last = cl.raft(ldr).last_index
    for node in (next(i for i in cl.nodes if i != ldr), 7):
        with pytest.raises(ValueError, match="not a learner"):
            cl.raft(ldr).propose_conf_change(ConfChange("promote", node))
    assert cl.raft(ldr).last_index == last


def test_promoting_a_learner_that_has_not_caught_up_is_refused_until_it_has() -> None:
    """Thesis §4.2.1: a voter with a short log can stall commits until it catches up, so the leader promotes a
    learner only once its match index is within max_learner_lag of the commit index."""
    cl = Cluster(3, seed=25, max_learner_lag=5)
    ldr = cl.wait_leader()
    cl.tick(5)
    _add_learner(cl, ldr, 4)
    cl.crash(4)
    for k in range(20):
        _put(cl, ldr, "k", str(k))
    cl.tick(10)
    last = cl.raft(ldr).last_index
    with pytest.raises(ValueError, match="has not caught up"):
        cl.raft(ldr).propose_conf_change(ConfChange("promote", 4))
    assert cl.raft(ldr).last_index == last and cl.raft(ldr).learners == (4,)
    cl.restart(4)
    cl.tick(30)
    idx = cl.raft(ldr).propose_conf_change(ConfChange("promote", 4))
    cl.tick(20)
    assert cl.raft(ldr).commit >= idx and 4 in cl.raft(4).voters


def test_adding_a_learner_twice_or_adding_a_learner_as_a_voter_is_refused() -> None:
    """A learner joins the voters only by promotion (the catch-up check); duplicates are refused."""
    cl = Cluster(3, seed=26)
    ldr = cl.wait_leader()
    cl.tick(5)
    _add_learner(cl, ldr, 4)
    with pytest.raises(ValueError, match="already a learner"):
        cl.raft(ldr).propose_conf_change(ConfChange("add-learner", 4))
    with pytest.raises(ValueError, match="promote"):
        cl.raft(ldr).propose_conf_change(ConfChange("add", 4))
    with pytest.raises(ValueError, match="already a voter"):
        cl.raft(ldr).propose_conf_change(ConfChange("add-learner", ldr))


def test_a_removed_learner_learns_its_removal_and_is_no_longer_replicated_to() -> None:
    """Thesis §4.1/§4.2.3: a removed member, voter or learner, is told its removal committed and stays quiet."""
    cl = Cluster(3, seed=27)
    ldr = cl.wait_leader()
    cl.tick(5)
    _add_learner(cl, ldr, 4)
    idx = cl.raft(ldr).propose_conf_change(ConfChange("remove", 4))
    cl.tick(60)
    assert cl.raft(ldr).commit >= idx and cl.raft(ldr).learners == ()
    assert cl.raft(4).learners == () and cl.raft(4).commit >= idx
    assert 4 not in cl.raft(ldr).status()["progress"]
    term = cl.raft(4).term
    cl.tick(300)
    assert cl.raft(4).role is Role.FOLLOWER and cl.raft(4).term == term


def test_a_node_id_beyond_what_a_node_can_be_is_refused_before_it_reaches_the_log():
    cl = Cluster(3, seed=5)
    ldr = cl.wait_leader()
    cl.tick(5)
    last = cl.raft(ldr).last_index
    for node in (0, MAX_NODE_ID + 1, 2**64):
        with pytest.raises(ValueError, match="node ids are 1 to 65535"):
            cl.raft(ldr).propose_conf_change(ConfChange("add-learner", node))
    assert cl.raft(ldr).last_index == last
