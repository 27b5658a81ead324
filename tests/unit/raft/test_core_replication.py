"""Log replication in raft/core.py: Figure 8, conflicts, backtracking, batching, flow control, Ready rules."""

from __future__ import annotations

from raft.core import Config, Raft
from raft.testing.sim import Cluster
from raft.types import ConfState, Entry, HardState, Message, MsgType, Role, Snapshot


def test_figure8_leader_does_not_commit_an_older_term_entry_by_counting_replicas() -> None:
    """§5.4.2 / Figure 8: an entry from an earlier term stored on a majority may still be overwritten, so a
    leader commits it only indirectly, by committing an entry of its own term after it."""
    cl = Cluster(5, seed=1, pre_vote=False, check_quorum=False, max_entries_per_msg=1)
    # (a) S1 leads term 1 and replicates entry 2 to S2 only.
    cl.raft(1).campaign()
    cl.stabilize()
    cl.partition([1, 2], [3], [4], [5])
    idx = cl.raft(1).propose(b"term-1 entry")
    cl.stabilize()
    assert idx == 2
    # (b) S1 crashes; S5 leads term 2 with votes from S3, S4 and writes its no-op at index 2 alone.
    cl.crash(1)
    cl.partition([3, 4, 5], [2])
    cl.raft(5).campaign()
    cl.drop = lambda m: m.frm == 5 and m.type is MsgType.APPEND
    cl.stabilize()
    assert cl.leader() == 5 and cl.raft(5).term_at(2) == 2
    cl.crash(5)
    # (c) S1 restarts and leads term 3; it gets its term-1 entry onto S3 (a majority: S1, S2, S3)...
    cl.restart(1)
    cl.partition([1, 2, 3], [4], [5])

    def withhold_term3_entries(m: Message) -> bool:
        if m.type is MsgType.APPEND:
            m.entries = tuple(e for e in m.entries if e.term != 3)
        return False

    cl.drop = withhold_term3_entries
    cl.raft(1).campaign()
    cl.stabilize()
    cl.raft(1).campaign()  # term 2 was taken by S5's election on S3: try again
    cl.stabilize()
    assert cl.leader() == 1
    assert all(cl.nodes[i].durable.term_at(2) == 1 for i in (1, 2, 3))
    # ...but must not count those replicas: entry 2 is of an older term.
    assert cl.raft(1).commit == 1
    # (d) S1 crashes; S5 can win again (its last term 2 beats term 1) and overwrites index 2 everywhere.
    cl.crash(1)
    cl.restart(5)
    cl.drop = None
    cl.partition([2, 3, 4, 5], [1])
    for _ in range(3):
        cl.raft(5).campaign()
        cl.stabilize()
    assert cl.leader() == 5
    assert all(cl.nodes[i].durable.term_at(2) == 2 for i in (2, 3, 4, 5))
    # The checker saw every step: nobody applied the overwritten entry.
    assert all(e.data != b"term-1 entry" for i in cl.nodes for e in cl.nodes[i].applied)


def test_figure8_an_older_term_entry_commits_once_a_current_term_entry_does() -> None:
    cl = Cluster(3, seed=2, pre_vote=False, check_quorum=False)
    cl.raft(1).campaign()
    cl.stabilize()
    cl.partition([1], [2, 3])
    idx = cl.raft(1).propose(b"old")
    cl.stabilize()
    cl.heal()
    cl.crash(1)
    cl.restart(1)
    cl.raft(1).campaign()  # term 2: S1 is still the most up-to-date and wins
    cl.stabilize()
    assert cl.leader() == 1
    r = cl.raft(1)
    assert r.term_at(idx) == 1 and r.commit > idx  # committed together with the term-2 no-op


def test_follower_truncates_a_conflicting_suffix_and_takes_the_leaders_entries() -> None:
    """§5.3: if an existing entry conflicts with a new one, delete it and all that follow it."""
    cl = Cluster(3, seed=3, pre_vote=False, check_quorum=False)
    cl.raft(1).campaign()
    cl.stabilize()
    cl.isolate(1)
    for k in range(3):
        cl.raft(1).propose(b"lost-%d" % k)
    cl.stabilize()
    assert cl.nodes[1].durable.term_at(4) == 1
    cl.partition([2, 3], [1])
    cl.raft(2).campaign()
    cl.stabilize()
    cl.raft(2).propose(b"kept")
    cl.stabilize()
    cl.heal()
    cl.tick(10)
    leader_log = [(e.index, e.term, e.data) for e in cl.nodes[2].durable.entries]
    assert [(e.index, e.term, e.data) for e in cl.nodes[1].durable.entries] == leader_log
    assert not any(e.data.startswith(b"lost") for e in cl.nodes[1].durable.entries)


def test_ready_entries_overwrite_from_the_first_conflicting_index() -> None:
    """The storage truncates at entries[0].index: the core hands out the new suffix from the conflict on."""
    r = Raft(Config(2, (1, 2, 3)), hard_state=HardState(1, 1, 1),
             entries=[Entry(1, 1), Entry(1, 2, data=b"a"), Entry(1, 3, data=b"b")])
    r.step(Message(MsgType.APPEND, 3, 2, 2, log_term=1, index=2, entries=(Entry(2, 3, data=b"c"),), commit=1))
    rd = r.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(3, 2)]
    assert rd.must_sync
    resp = [m for m in rd.messages if m.type is MsgType.APPEND_RESP]
    assert resp and not resp[0].reject and resp[0].index == 3


def test_fast_backtracking_finds_the_match_point_in_few_round_trips() -> None:
    """§5.3 optimization: the reject hint lets the leader skip a whole term of conflicting entries."""
    cl = Cluster(3, seed=4, pre_vote=False, check_quorum=False)
    cl.raft(1).campaign()
    cl.stabilize()
    cl.isolate(1)
    for k in range(50):
        cl.raft(1).propose(b"stale-%d" % k)
    cl.stabilize()
    cl.partition([2, 3], [1])
    cl.raft(2).campaign()
    cl.stabilize()
    for k in range(60):
        cl.raft(2).propose(b"new-%d" % k)
    cl.stabilize()
    cl.crash(2)  # re-elected, it starts probing node 1 at its own last index (63), far beyond node 1's log
    cl.restart(2)
    cl.raft(2).campaign()
    cl.stabilize()
    assert cl.leader() == 2
    rejects = []
    cl.drop = lambda m: m.type is MsgType.APPEND_RESP and m.reject and rejects.append(m) is not None
    cl.heal()
    cl.raft(2).propose(b"trigger")
    cl.stabilize()
    cl.tick(5)
    assert cl.raft(1).last_index == cl.raft(2).last_index
    assert 1 <= len(rejects) <= 2  # not one per conflicting entry (50)


def test_leader_batches_proposals_between_two_readies_into_one_append_per_follower() -> None:
    """Batching (thesis §10.2.1): proposals between two Readies travel in one APPEND per follower."""
    cl = Cluster(3, seed=5)
    ldr = cl.wait_leader()
    cl.tick(5)
    appends: list[Message] = []
    cl.drop = lambda m: m.type is MsgType.APPEND and m.entries and appends.append(m) is not None
    for k in range(100):
        cl.raft(ldr).propose(b"%d" % k)
    cl.stabilize()
    assert sorted(m.to for m in appends) == sorted(i for i in cl.nodes if i != ldr)
    assert all(len(m.entries) == 100 for m in appends)


def test_replication_respects_the_inflight_window_and_message_size() -> None:
    """Flow control: at most max_inflight_msgs unacknowledged APPENDs of max_entries_per_msg each."""
    cl = Cluster(3, seed=6, max_inflight_msgs=2, max_entries_per_msg=3)
    ldr = cl.wait_leader()
    cl.tick(5)
    sent: list[Message] = []

    def hold_acks(m: Message) -> bool:
        if m.type is MsgType.APPEND and m.entries:
            sent.append(m)
        return m.type is MsgType.APPEND_RESP

    cl.drop = hold_acks
    for k in range(20):
        cl.raft(ldr).propose(b"%d" % k)
    cl.stabilize()
    for f in (i for i in cl.nodes if i != ldr):
        mine = [m for m in sent if m.to == f]
        assert len(mine) == 2 and all(len(m.entries) == 3 for m in mine)
    cl.drop = None
    cl.tick(10)
    assert all(cl.raft(i).applied == cl.raft(ldr).last_index for i in cl.nodes)


def test_heartbeats_never_tell_a_lagging_follower_to_commit_beyond_what_it_matched() -> None:
    """A heartbeat carries min(match, commit): a follower must not commit entries it has not verified."""
    cl = Cluster(3, seed=7)
    ldr = cl.wait_leader()
    cl.tick(5)
    lag = next(i for i in cl.nodes if i != ldr)
    heartbeats: list[Message] = []

    def starve(m: Message) -> bool:
        if m.to == lag and m.type is MsgType.HEARTBEAT:
            heartbeats.append(m)
        return m.to == lag and m.type is MsgType.APPEND

    cl.drop = starve
    for k in range(5):
        cl.raft(ldr).propose(b"%d" % k)
    cl.tick(20)
    assert heartbeats
    match = cl.raft(ldr).status()["progress"][lag]["match"]
    assert cl.raft(ldr).commit > match
    assert all(m.commit <= match for m in heartbeats)
    assert cl.raft(lag).commit <= match


def test_ready_hands_out_hard_state_only_when_it_changed_and_syncs_only_when_needed() -> None:
    """must_sync: term/vote changed or entries to write; a commit-only change needs no fsync."""
    r = Raft(Config(1, (1, 2, 3), pre_vote=False))
    r.campaign()
    rd = r.ready()
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync and not rd.entries
    r.advance(rd)
    assert not r.has_ready()
    r.step(Message(MsgType.VOTE_RESP, 2, 1, 1))
    rd = r.ready()
    assert r.role is Role.LEADER and rd.hard_state is None and rd.must_sync and len(rd.entries) == 1
    r.advance(rd)
    r.step(Message(MsgType.APPEND_RESP, 2, 1, 1, index=1))
    rd = r.ready()
    assert rd.hard_state == HardState(1, 1, 1) and not rd.must_sync and not rd.entries
    assert [e.index for e in rd.committed_entries] == [1]
    r.advance(rd)


def test_leader_counts_itself_toward_the_quorum_only_after_persisting() -> None:
    """Thesis §10.2.1: the leader may send APPENDs before its own fsync ends, so its own copy must count
    only once the Ready holding it was advanced (persisted)."""
    r = Raft(Config(1, (1, 2, 3), pre_vote=False))
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, 2, 1, 1))
    rd = r.ready()  # the no-op at index 1, being written
    r.step(Message(MsgType.APPEND_RESP, 2, 1, 1, index=1))  # a follower acked before the leader's fsync
    assert r.commit == 0  # 1 of 3 copies known durable
    r.advance(rd)
    assert r.commit == 1
    rd = r.ready()
    assert [e.index for e in rd.committed_entries] == [1]


def test_ready_is_not_handed_out_twice_before_advance() -> None:
    """One Ready at a time: proposals made while it is persisted go into the next one."""
    r = Raft(Config(1, (1,)))
    r.campaign()
    rd = r.ready()
    assert not r.has_ready()
    r.propose(b"x")  # allowed while the Ready is being persisted: it goes into the next one
    r.advance(rd)
    rd2 = r.ready()
    assert [e.data for e in rd2.entries] == [b"x"]


def test_stale_and_duplicated_messages_are_ignored() -> None:
    """§5.1: messages of older terms are ignored; duplicated acks change nothing."""
    cl = Cluster(3, seed=8)
    ldr = cl.wait_leader()
    cl.tick(5)
    r = cl.raft(ldr)
    before = r.status()
    stale = Message(MsgType.APPEND_RESP, 2, ldr, r.term - 1 if r.term > 1 else 0, index=999)
    r.step(stale)
    dup = Message(MsgType.APPEND_RESP, 2, ldr, r.term, index=1)
    r.step(dup)
    r.step(dup)
    assert r.status()["progress"][2]["match"] == before["progress"][2]["match"]
    assert r.role is Role.LEADER


def test_a_conflicting_append_during_an_outstanding_ready_is_handed_out_again_from_the_conflict() -> None:
    """The node keeps stepping while a Ready's fsync runs: an overwrite arriving then must not be lost."""
    r = Raft(Config(2, (1, 2, 3)), hard_state=HardState(1, 1, 1), entries=[Entry(1, 1)])
    two = (Entry(1, 2), Entry(1, 3))
    r.step(Message(MsgType.APPEND, 1, 2, 1, log_term=1, index=1, entries=two, commit=1))
    rd = r.ready()  # entries 2, 3 of term 1 are being written...
    assert [(e.index, e.term) for e in rd.entries] == [(2, 1), (3, 1)]
    r.step(Message(MsgType.APPEND, 3, 2, 2, log_term=1, index=2, entries=(Entry(2, 3, data=b"new"),),
                   commit=1))  # ...when leader 3 of term 2 overwrites index 3
    r.advance(rd)
    rd = r.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(3, 2)]
    assert rd.hard_state is not None and rd.hard_state.term == 2 and rd.must_sync
    r.advance(rd)
    assert not r.has_ready()


def test_a_snapshot_installed_during_an_outstanding_ready_comes_out_in_the_next_one() -> None:
    r = Raft(Config(2, (1, 2, 3)), hard_state=HardState(1, 1, 1), entries=[Entry(1, 1)])
    r.step(Message(MsgType.APPEND, 1, 2, 1, log_term=1, index=1, entries=(Entry(1, 2),), commit=2))
    rd = r.ready()
    snap = Snapshot(10, 1, ConfState((1, 2, 3)), b"state@10")
    r.step(Message(MsgType.SNAPSHOT, 1, 2, 1, snapshot=snap))
    r.advance(rd)
    assert r.applied == 2
    rd = r.ready()
    assert rd.snapshot == snap and rd.committed_entries == []
    assert rd.hard_state is None or rd.hard_state.commit <= 2  # 10 only once the snapshot is on disk
    r.advance(rd)
    assert (r.applied, r.commit, r.first_index) == (10, 10, 11)
    rd = r.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 10


def test_hard_state_commit_never_covers_entries_written_in_the_same_ready() -> None:
    """A crash may persist the hard state but not the entries beside it: the durable commit index must only
    name entries that were already on disk, or a restart would apply the overwritten ones (§5.4.3)."""
    old = [Entry(1, 1), Entry(1, 2, data=b"old-2"), Entry(1, 3, data=b"old-3")]
    r = Raft(Config(2, (1, 2, 3)), hard_state=HardState(1, 1, 1), entries=old)
    new = (Entry(2, 2, data=b"new-2"), Entry(2, 3, data=b"new-3"))
    r.step(Message(MsgType.APPEND, 3, 2, 2, log_term=1, index=1, entries=new, commit=3))
    assert r.commit == 3
    rd = r.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(2, 2), (3, 2)]
    assert rd.hard_state == HardState(2, 0, 1)  # new term now, commit 3 only once 2..3 are durable
    r.advance(rd)
    rd = r.ready()
    assert rd.hard_state == HardState(2, 0, 3)
