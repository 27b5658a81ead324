"""Membership changes, snapshots and ReadIndex in raft/core.py."""

from __future__ import annotations

import pytest

from raft.core import Config, NotLeader, Raft
from raft.testing.sim import Cluster, kv_command
from raft.types import ConfChange, ConfState, Entry, EntryType, HardState, Message, MsgType, Role, Snapshot


def _kv_put(cl: Cluster, ldr: int, key: str, value: str) -> int:
    return cl.raft(ldr).propose(kv_command("put", key, value, "", f"t-{key}-{value}"))


# ------------------------------------------------------------------ membership (thesis §4.1)


def test_adding_a_node_catches_it_up_and_counts_it_in_the_quorum() -> None:
    """Thesis §4.1: a single-server change takes effect on each server as soon as the entry is in its log."""
    cl = Cluster(3, seed=1)
    ldr = cl.wait_leader()
    for k in range(5):
        _kv_put(cl, ldr, "k", str(k))
    cl.tick(5)
    cl.add_node(4)
    idx = cl.raft(ldr).propose_conf_change(ConfChange("add", 4))
    assert cl.raft(ldr).voters == (1, 2, 3, 4)  # applied on append, before commit
    cl.tick(10)
    assert all(cl.raft(i).voters == (1, 2, 3, 4) for i in cl.nodes)
    assert cl.raft(4).commit >= idx and cl.nodes[4].values() == {"k": "4"}
    # With 4 voters the quorum is 3: two crashed followers now block commits.
    down = [i for i in (1, 2, 3, 4) if i != ldr][:2]
    for i in down:
        cl.crash(i)
    stuck = cl.raft(ldr).propose(b"needs 3 of 4")
    cl.tick(10)
    assert cl.raft(ldr).commit < stuck


def test_removing_a_follower_shrinks_the_quorum_and_the_removed_node_stays_quiet() -> None:
    """Thesis §4.1/§4.2.3: after its removal a node counts in no quorum and no longer campaigns."""
    cl = Cluster(3, seed=2)
    ldr = cl.wait_leader()
    cl.tick(5)
    gone = next(i for i in cl.nodes if i != ldr)
    cl.raft(ldr).propose_conf_change(ConfChange("remove", gone))
    cl.tick(10)
    assert cl.raft(ldr).voters == tuple(i for i in (1, 2, 3) if i != gone)
    assert cl.raft(gone).voters == cl.raft(ldr).voters
    term = cl.raft(ldr).term
    cl.isolate(gone)
    cl.tick(200)
    assert cl.raft(gone).role is Role.FOLLOWER and cl.raft(gone).term == term  # no longer campaigns
    cl.heal()
    third = next(i for i in cl.nodes if i not in (ldr, gone))
    cl.crash(third)
    idx = cl.raft(ldr).propose(b"x")  # 1 of 2 voters is not a majority: blocked...
    cl.tick(20)
    assert cl.raft(ldr).commit < idx
    cl.restart(third)
    cl.tick(30)
    assert cl.raft(cl.wait_leader()).commit >= idx


def test_a_removed_leader_steps_down_once_the_change_commits_and_a_new_leader_takes_over() -> None:
    """Thesis §4.2.2: the leader manages the cluster until C_new commits, then steps down."""
    cl = Cluster(3, seed=3)
    ldr = cl.wait_leader()
    cl.tick(5)
    cl.raft(ldr).propose_conf_change(ConfChange("remove", ldr))
    cl.stabilize()
    assert cl.raft(ldr).role is Role.FOLLOWER
    new = cl.wait_leader(200)
    assert new != ldr
    assert cl.raft(new).voters == tuple(i for i in (1, 2, 3) if i != ldr)


def test_only_one_membership_change_may_be_in_flight() -> None:
    """Thesis §4.1: single-server changes are safe only one at a time."""
    cl = Cluster(3, seed=4)
    ldr = cl.wait_leader()
    cl.tick(5)
    follower = next(i for i in cl.nodes if i != ldr)
    cl.crash(follower)
    other = next(i for i in cl.nodes if i not in (ldr, follower))
    cl.isolate(other)  # the first change cannot commit
    cl.raft(ldr).propose_conf_change(ConfChange("add", 4))
    with pytest.raises(ValueError, match="already in progress"):
        cl.raft(ldr).propose_conf_change(ConfChange("add", 5))


def test_membership_changes_that_change_nothing_are_refused() -> None:
    """Adding a voter twice or removing a stranger is a caller error, not a log entry."""
    cl = Cluster(3, seed=10)
    ldr = cl.wait_leader()
    cl.tick(5)
    with pytest.raises(ValueError, match="already a voter"):
        cl.raft(ldr).propose_conf_change(ConfChange("add", 2))
    with pytest.raises(ValueError, match="not a voter"):
        cl.raft(ldr).propose_conf_change(ConfChange("remove", 7))


def test_a_new_leader_refuses_a_membership_change_until_its_noop_commits() -> None:
    """The single-server change bug (Ongaro, raft-dev 2015): a leader first commits an entry of its term."""
    r = Raft(Config(1, (1, 2, 3), pre_vote=False))
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, 2, 1, 1))
    assert r.role is Role.LEADER
    with pytest.raises(ValueError, match="not committed"):
        r.propose_conf_change(ConfChange("add", 4))
    with pytest.raises(NotLeader):
        Raft(Config(2, (1, 2, 3))).propose_conf_change(ConfChange("add", 4))


def test_a_node_whose_own_removal_is_uncommitted_may_still_lead_the_cluster_through_it() -> None:
    """Thesis §4.2.2: a server not in C_new can still lead until C_new commits; counting only C_new's votes.
    Otherwise a leader that removed itself and lost leadership could leave nobody able to finish."""
    remove_me = Entry(1, 2, EntryType.CONF_CHANGE, ConfChange("remove", 1).encode())
    log = [Entry(1, 1), remove_me]
    r = Raft(Config(1, (1, 2, 3), pre_vote=False), hard_state=HardState(1, 0, 1), entries=log)
    assert r.voters == (2, 3)
    while r.role is Role.FOLLOWER:
        r.tick()
    assert r.role is Role.CANDIDATE
    r.step(Message(MsgType.VOTE_RESP, 2, 1, r.term))
    assert r.role is Role.CANDIDATE  # its own vote does not count in C_new = {2, 3}
    r.step(Message(MsgType.VOTE_RESP, 3, 1, r.term))
    assert r.role is Role.LEADER
    rd = r.ready()
    r.advance(rd)
    for p in (2, 3):
        r.step(Message(MsgType.APPEND_RESP, p, 1, r.term, index=r.last_index))
    assert r.commit == r.last_index
    r.advance(r.ready())
    assert r.role is Role.FOLLOWER  # C_new committed: it steps down for good
    committed = Raft(Config(1, (1, 2, 3)), hard_state=HardState(1, 0, 2), entries=[Entry(1, 1), remove_me])
    for _ in range(100):
        committed.tick()
    assert committed.role is Role.FOLLOWER and committed.term == 1  # removal committed: never campaigns


def test_a_truncated_membership_change_is_undone() -> None:
    """Membership follows the log: if an uncommitted conf-change entry is overwritten, so is its effect."""
    r = Raft(Config(2, (1, 2, 3)), hard_state=HardState(1, 1, 1),
             entries=[Entry(1, 1), Entry(1, 2, EntryType.CONF_CHANGE, ConfChange("add", 4).encode())])
    assert r.voters == (1, 2, 3, 4)
    r.step(Message(MsgType.APPEND, 3, 2, 2, log_term=1, index=1, entries=(Entry(2, 2),), commit=1))
    assert r.voters == (1, 2, 3)


# ------------------------------------------------------------------ snapshots (§7)


def test_lagging_follower_receives_and_installs_a_snapshot_after_compaction() -> None:
    """§7: when the entries a follower needs were compacted, the leader sends InstallSnapshot."""
    cl = Cluster(3, seed=5)
    ldr = cl.wait_leader()
    cl.tick(5)
    lag = next(i for i in cl.nodes if i != ldr)
    cl.crash(lag)
    for k in range(20):
        _kv_put(cl, ldr, f"k{k % 3}", str(k))
    cl.tick(5)
    cl.compact(ldr)
    snap = cl.raft(ldr).snapshot
    assert snap is not None and cl.raft(ldr).first_index == snap.index + 1
    snapshots = []
    cl.drop = lambda m: m.type is MsgType.SNAPSHOT and snapshots.append(m) is not None
    cl.restart(lag)
    _kv_put(cl, ldr, "after", "snap")
    cl.tick(20)
    assert len(snapshots) == 1 and snapshots[0].to == lag
    assert cl.nodes[lag].durable.snapshot == snap
    assert cl.nodes[lag].values() == cl.nodes[ldr].values()
    assert cl.raft(lag).applied == cl.raft(ldr).applied


def test_a_lost_snapshot_is_sent_again() -> None:
    """§7: InstallSnapshot is retried when the follower never acknowledges it."""
    cl = Cluster(3, seed=6)
    ldr = cl.wait_leader()
    cl.tick(5)
    lag = next(i for i in cl.nodes if i != ldr)
    cl.crash(lag)
    for k in range(5):
        _kv_put(cl, ldr, "k", str(k))
    cl.tick(5)
    cl.compact(ldr)
    sent = []

    def lose_first(m: Message) -> bool:
        if m.type is MsgType.SNAPSHOT:
            sent.append(m)
            return len(sent) == 1
        return False

    cl.drop = lose_first
    cl.restart(lag)
    cl.tick(60)
    assert len(sent) >= 2
    assert cl.nodes[lag].values() == {"k": "4"}


def test_a_node_restarts_from_its_snapshot_and_log_suffix() -> None:
    """§7: after a restart the state machine comes from the snapshot plus the log after it."""
    cl = Cluster(3, seed=7)
    ldr = cl.wait_leader()
    for k in range(6):
        _kv_put(cl, ldr, "k", str(k))
    cl.tick(5)
    node = next(i for i in cl.nodes if i != ldr)
    cl.compact(node)
    _kv_put(cl, ldr, "k", "after")
    cl.tick(5)
    cl.crash(node)
    cl.restart(node)
    r = cl.raft(node)
    assert r.snapshot is not None and r.applied == r.snapshot.index
    cl.tick(10)
    assert cl.nodes[node].values() == {"k": "after"}


def test_compacting_beyond_the_applied_index_is_refused() -> None:
    """§7: a snapshot covers only applied (hence committed) state."""
    r = Raft(Config(1, (1,)))
    r.campaign()
    with pytest.raises(ValueError):
        r.compact(5, b"")


def test_a_follower_that_already_has_the_snapshot_prefix_keeps_its_log() -> None:
    """§7: if the follower's log has the snapshot's last entry, it keeps the entries after it."""
    r = Raft(Config(2, (1, 2, 3)), hard_state=HardState(1, 1, 0),
             entries=[Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    r.step(Message(MsgType.SNAPSHOT, 1, 2, 1, snapshot=Snapshot(2, 1, ConfState((1, 2, 3)))))
    rd = r.ready()
    assert rd.snapshot is None and r.last_index == 3 and r.commit == 2
    assert [m.index for m in rd.messages if m.type is MsgType.APPEND_RESP] == [2]


# ------------------------------------------------------------------ ReadIndex (thesis §6.4)


def _read(cl: Cluster, node: int, key: str, ticks: int = 20) -> object:
    assert cl.client_get(0, node, key, timeout=ticks)
    op = cl.history[-1]
    cl.run_until(lambda: op.ret is not None, ticks)
    return op.output if op.ret is not None else "no answer"


def test_read_index_on_leader_and_followers_sees_the_latest_committed_write() -> None:
    """Thesis §6.4: ReadIndex on any node (followers ask the leader) returns the last committed value."""
    cl = Cluster(3, seed=8)
    ldr = cl.wait_leader()
    assert cl.client_put(0, ldr, "k", "v1", timeout=20)
    cl.tick(3)
    for i in cl.nodes:
        assert _read(cl, i, "k") == "v1"  # followers forward READ_INDEX and wait to apply the index


def test_read_index_waits_for_a_heartbeat_quorum() -> None:
    """Thesis §6.4: the leader answers a read only after a round of heartbeats shows it is still leader."""
    r = Raft(Config(1, (1, 2, 3), pre_vote=False))
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, 2, 1, 1))
    r.advance(r.ready())
    r.step(Message(MsgType.APPEND_RESP, 2, 1, 1, index=1))  # the no-op commits
    r.advance(r.ready())
    r.read_index(b"ctx")
    rd = r.ready()
    hb = [m for m in rd.messages if m.type is MsgType.HEARTBEAT]
    assert rd.read_states == [] and {m.to for m in hb} == {2, 3} and all(m.context for m in hb)
    r.advance(rd)
    r.step(Message(MsgType.HEARTBEAT_RESP, 3, 1, 1, context=hb[0].context))  # a follower echoes the context
    rd = r.ready()
    assert [(s.index, s.context) for s in rd.read_states] == [(1, b"ctx")]
    r.advance(rd)


def test_read_index_of_a_new_leader_waits_until_its_noop_commits() -> None:
    r = Raft(Config(1, (1, 2, 3), pre_vote=False))
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, 2, 1, 1))
    r.advance(r.ready())
    r.read_index(b"early")
    rd = r.ready()
    assert rd.read_states == [] and not any(m.context for m in rd.messages)  # held back
    r.advance(rd)
    r.step(Message(MsgType.APPEND_RESP, 2, 1, 1, index=1))  # the no-op commits: the read goes ahead
    rd = r.ready()
    hb = [m for m in rd.messages if m.type is MsgType.HEARTBEAT and m.context]
    assert rd.read_states == [] and hb
    r.advance(rd)
    r.step(Message(MsgType.HEARTBEAT_RESP, 2, 1, 1, context=hb[0].context))
    rd = r.ready()
    assert [(s.index, s.context) for s in rd.read_states] == [(1, b"early")]


def test_a_partitioned_old_leader_cannot_serve_a_stale_read() -> None:
    """The point of ReadIndex: a deposed leader that still believes it leads gets no heartbeat quorum."""
    cl = Cluster(5, seed=9, check_quorum=False)
    old = cl.wait_leader()
    assert cl.client_put(0, old, "k", "old", timeout=20)
    cl.tick(5)
    cl.partition([old], [i for i in cl.nodes if i != old])
    new = cl.wait_leader_in([i for i in cl.nodes if i != old])
    assert cl.client_put(1, new, "k", "new", timeout=20)
    cl.tick(5)
    assert cl.raft(old).role is Role.LEADER
    assert _read(cl, old, "k", ticks=50) == "no answer"
    assert _read(cl, new, "k") == "new"


def _leader_of_three() -> Raft:
    """Node 1 leading (1, 2, 3) in term 1 with its no-op (index 1) committed."""
    r = Raft(Config(1, (1, 2, 3), pre_vote=False))
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, 2, 1, 1))
    r.advance(r.ready())
    r.step(Message(MsgType.APPEND_RESP, 2, 1, 1, index=1))
    r.advance(r.ready())
    assert r.role is Role.LEADER and r.commit == 1
    return r


def test_a_read_is_confirmed_only_by_heartbeats_sent_after_it_even_when_contexts_collide() -> None:
    """Thesis §6.4: a read index may be served only once a heartbeat round sent *after* the read was registered
    is acknowledged by a majority; an older round proves leadership at an earlier moment, when a newer leader
    may already have committed writes the read must see. Every node numbers its contexts from 1, so the
    leader's own read and one a follower forwards both carry b"1": they must stay two different reads."""
    r = _leader_of_three()
    r.read_index(b"1")  # the leader's own first read, registered at commit 1
    rd = r.ready()
    before = {m.to: m for m in rd.messages if m.type is MsgType.HEARTBEAT}
    r.advance(rd)
    r.propose(b"x")
    r.advance(r.ready())
    r.step(Message(MsgType.APPEND_RESP, 2, 1, 1, index=2))
    r.advance(r.ready())
    assert r.commit == 2
    r.step(Message(MsgType.READ_INDEX, 2, 1, 1, context=b"1"))  # follower 2's first read, at commit 2
    rd = r.ready()
    after = {m.to: m for m in rd.messages if m.type is MsgType.HEARTBEAT}
    r.advance(rd)
    assert set(before) == set(after) == {2, 3}

    # Node 3 acknowledges the round sent before follower 2's read: it confirms the leader's read only.
    r.step(Message(MsgType.HEARTBEAT_RESP, 3, 1, 1, context=before[3].context))
    rd = r.ready()
    assert [(s.index, s.context) for s in rd.read_states] == [(1, b"1")]
    assert [m for m in rd.messages if m.type is MsgType.READ_INDEX_RESP] == []
    r.advance(rd)

    # Its ack of the round sent after it confirms follower 2's read, at the commit index it was registered at.
    r.step(Message(MsgType.HEARTBEAT_RESP, 3, 1, 1, context=after[3].context))
    rd = r.ready()
    assert rd.read_states == []
    assert [(m.to, m.index, m.context) for m in rd.messages if m.type is MsgType.READ_INDEX_RESP] == [(2, 2, b"1")]


def test_a_removed_node_learns_its_removal_even_while_the_leader_serves_many_reads() -> None:
    """Thesis §4.2.3: a removed server that never learns its removal committed times out and campaigns, so the
    leader keeps sending it heartbeats until several periodic ones carried the commit (see _promotable). A
    burst of ReadIndex rounds (§6.4) says nothing about whether the removed node heard any of them: they must
    not let the leader forget it early."""
    cl = Cluster(3, seed=11)
    ldr = cl.wait_leader()
    cl.tick(5)
    gone = next(i for i in cl.nodes if i != ldr)
    other = next(i for i in cl.nodes if i not in (ldr, gone))
    held: dict[int, list[Message]] = {gone: [], other: []}

    def hold(m: Message) -> bool:
        if (m.frm, m.type) in ((gone, MsgType.HEARTBEAT_RESP), (other, MsgType.APPEND_RESP)):
            held[m.frm].append(m)
            return True
        return False

    # The removal reaches `gone`, which answers a heartbeat sent before the removal committed (held back).
    cl.drop = hold
    idx = cl.raft(ldr).propose_conf_change(ConfChange("remove", gone))
    cl.stabilize_node(ldr)
    assert cl.run_until(lambda: cl.raft(gone).last_index >= idx and held[gone] != [], 10)
    # `other` acknowledges it: C_new = {ldr, other} commits. Nothing reaches `gone` for now.
    cl.drop = lambda m: m.to == gone
    cl.step(held[other][-1])
    assert cl.raft(ldr).commit >= idx > cl.raft(gone).commit
    for _ in range(5):
        assert cl.client_get(0, ldr, "k", timeout=20)
    cl.stabilize()
    assert all(op.ret is not None for op in cl.history)
    cl.step(held[gone][0])  # the late answer to the heartbeat that predates the commit

    campaigns: list[Message] = []

    def record_campaigns(m: Message) -> bool:
        if m.frm == gone and m.type in (MsgType.PRE_VOTE, MsgType.VOTE):
            campaigns.append(m)
        return False

    cl.drop = record_campaigns
    cl.tick(300)
    assert cl.raft(gone).commit >= idx  # it learned that its removal committed...
    assert campaigns == [] and cl.raft(gone).role is Role.FOLLOWER  # ...so it never campaigned
    assert gone not in cl.raft(ldr).status()["progress"]  # and only then did the leader forget it
