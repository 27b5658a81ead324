"""The simulator is only worth its seeds if it fails broken cores: plant a known Raft bug, expect a report."""

from __future__ import annotations

import msgpack
import pytest

import raft.storage
from raft.core import Raft, _apply_conf, _PendingRead
from raft.kv import KVStateMachine, Outcome, Session
from raft.testing.sim import Cluster, SafetyChecker, SafetyViolation, run_seed
from raft.types import ConfChange, EntryType, Message, MsgType

CI_SEEDS = 2000  # the CI budget (TXLAB_SIM_SEEDS): default profile
MEMBERSHIP_SEEDS = CI_SEEDS // 8  # forced membership changes


def _first_failure(limit: int, **profile: object) -> str:
    for seed in range(limit):
        try:
            run_seed(seed, **profile)  # type: ignore[arg-type]
        except AssertionError as exc:
            return str(exc)
    raise AssertionError(f"no seed out of {limit} caught the planted bug")


def test_voting_for_a_candidate_with_a_stale_log_breaks_leader_completeness(monkeypatch) -> None:
    monkeypatch.setattr(Raft, "_is_up_to_date", lambda self, log_term, index: True)
    msg = _first_failure(100)
    assert "Leader Completeness" in msg or "State Machine Safety" in msg


def test_heartbeats_announcing_the_leaders_full_commit_index_break_state_machine_safety(monkeypatch) -> None:
    def leaky_heartbeat(self: Raft, context: bytes) -> None:
        for p in self._prs:
            if p != self.id:
                self._send(Message(MsgType.HEARTBEAT, self.id, p, self._term, commit=self._commit,
                                   context=context))

    monkeypatch.setattr(Raft, "_bcast_heartbeat", leaky_heartbeat)
    assert "Safety" in _first_failure(100)


def test_reads_served_without_confirming_leadership_are_caught_as_not_linearizable(monkeypatch) -> None:
    def unconfirmed_read(self: Raft, context: bytes, frm: int) -> None:
        self._answer_read(_PendingRead(context, frm, self._commit))

    monkeypatch.setattr(Raft, "_leader_read", unconfirmed_read)
    assert "not linearizable" in _first_failure(300)


def test_two_leaders_in_one_term_are_reported_with_the_seed_and_step() -> None:
    cl = Cluster(3, seed=77)
    ldr = cl.wait_leader()
    other = next(i for i in cl.nodes if i != ldr)
    checker = SafetyChecker("seed=77")
    checker.leader_of_term[cl.raft(ldr).term] = other  # as if `other` had led this term
    with pytest.raises(SafetyViolation, match=r"seed=77 step=1: Election Safety"):
        checker.check(cl.nodes)


def test_an_unlinearizable_history_fails_the_run_even_when_raft_is_safe(monkeypatch) -> None:
    """run_seed checks the clients' history after the run: a forged stale read must be flagged."""
    real_respond = Cluster._respond

    def stale_gets(self: Cluster, c, result) -> None:
        if c.op.kind == "get" and result is not None:
            result = "never-written"
        real_respond(self, c, result)

    monkeypatch.setattr(Cluster, "_respond", stale_gets)
    assert "not linearizable" in _first_failure(20)


def _first_failure_in(profile: dict, limit: int) -> str:
    for seed in range(limit):
        try:
            run_seed(seed, **profile)
        except AssertionError as exc:
            return str(exc)
    raise AssertionError(f"no seed out of {limit} ({profile or 'default'} profile) caught the planted bug")


def test_a_second_membership_change_while_one_is_uncommitted_breaks_safety(monkeypatch) -> None:
    """Thesis §4.1: a leader proposes a change only once the previous one committed; two single-server
    changes in flight allow disjoint majorities. Dropping the rule is caught by the membership profile
    (operators ask for a second change at once; a node started during a partition lands on one side):
    first at seed 104, where the two majorities each accepted writes: "history of key 'y' is not
    linearizable"."""

    def hasty_conf_change(self: Raft, cc: ConfChange) -> int:
        self._check_leader()
        # (no refusal while another membership change is uncommitted)
        if self._commit < self._term_start:
            raise ValueError("the leader has not committed an entry of its term yet")
        conf = _apply_conf(self._conf(), cc)
        if not conf.voters:
            raise ValueError("cannot remove the last voter")
        if cc.op == "promote":
            pr = self._prs.get(cc.node)
            if self._commit - (pr.match if pr is not None else 0) > self.cfg.max_learner_lag:
                raise ValueError(f"learner {cc.node} has not caught up")
        return self._propose(EntryType.CONF_CHANGE, cc.encode())

    monkeypatch.setattr(Raft, "propose_conf_change", hasty_conf_change)
    msg = _first_failure_in({"membership": True}, MEMBERSHIP_SEEDS)
    assert any(k in msg for k in ("Election Safety", "Leader Completeness", "State Machine Safety",
                                  "not linearizable")), msg


def test_committing_an_entry_of_an_earlier_term_by_counting_replicas_is_caught(monkeypatch) -> None:
    """Raft §5.4.2, Figure 8: a leader may commit by counting replicas only an entry of its own term. Without
    that rule, an entry a leader committed can be overwritten by a later leader. First caught at seed 360:
    "Leader Completeness: leader 3 of term 7 lacks committed entry (2, 2)"."""

    def counting_commit(self: Raft) -> bool:
        matches = sorted((self._prs[p].match for p in self._voters), reverse=True)
        idx = matches[-1] if self.cfg.commit_quorum == "all" else matches[len(matches) // 2]
        if idx > self._commit and self.term_at(idx) is not None:  # (no check of the entry's term)
            self._commit = idx
            return True
        return False

    monkeypatch.setattr(Raft, "_maybe_commit", counting_commit)
    msg = _first_failure(CI_SEEDS)
    assert "Leader Completeness" in msg or "State Machine Safety" in msg, msg


def test_a_disk_whose_fsync_lies_is_caught_losing_acknowledged_entries() -> None:
    """No consensus survives a disk that acknowledges writes it has not made durable; the run must say so
    rather than pass. First caught at seed 0: "node 2 applied (1, 1), durable on 0 nodes only"."""
    assert "durable on" in _first_failure(20, lying_fsync=0.2)


def test_a_zero_length_record_taken_as_valid_is_caught_on_restart(monkeypatch) -> None:
    """Defect 1 of the storage review, put back: an all-zero header passes its CRC (crc32(b"") == 0), so a
    zero-filled tail reads as a record and replay fails to decode it. The simulated disk leaves such tails
    after a crash; first caught at seed 2: "node 2 cannot restart from its disk: ValueError(...)"."""
    real = raft.storage.record_at

    def zero_length_too(data: bytes, pos: int) -> tuple[bytes, int] | None:
        if len(data) - pos >= 8 and raft.storage.RECORD_HEADER.unpack_from(data, pos) == (0, 0):
            return b"", pos + 8
        return real(data, pos)

    def decode_anyway(data: bytes, pos: int) -> tuple[list, int] | None:
        rec = zero_length_too(data, pos)
        return None if rec is None else (msgpack.unpackb(rec[0]), rec[1])

    monkeypatch.setattr(raft.storage, "record_at", zero_length_too)
    monkeypatch.setattr(raft.storage, "_wal_record_at", decode_anyway)
    assert "cannot restart from its disk" in _first_failure(100)


def test_cutting_damage_in_the_middle_of_the_newest_segment_is_caught_losing_synced_entries(monkeypatch) -> None:
    """Defect 2, put back: any damage in the newest segment taken for a torn tail and cut, with every record
    after it. The simulated disk flips bits at rest; first caught at seed 0: "node 2 restarted without
    synced entries [(5, 1)]: its log lost synced data without a word"."""
    monkeypatch.setattr(raft.storage, "next_wal_record", lambda data, bad: None)
    monkeypatch.setattr(raft.storage, "looks_torn", lambda data, pos: True)
    assert "lost synced data without a word" in _first_failure(100)


def test_cutting_a_flipped_bit_in_the_last_record_as_a_torn_tail_is_caught(monkeypatch) -> None:
    """The rule before etcd's torn-write test: a checksum failure in the last record always taken for a torn
    tail, so bit rot there silently drops a record that was synced. First caught at seed 31: "node 2
    restarted without synced entries [(1, 1)]"."""
    monkeypatch.setattr(raft.storage, "looks_torn", lambda data, pos: True)
    assert "lost synced data without a word" in _first_failure(200)


def test_applying_a_command_of_an_expired_session_again_is_caught(monkeypatch) -> None:
    """Defect 3, put back: a retried command whose session was evicted (the runs keep as few as two) is
    applied as new instead of refused with SESSION_EXPIRED, so a write the client saw fail or time out
    takes effect twice. First caught at seed 51: "history of key 'y' is not linearizable"."""
    real_apply = KVStateMachine.apply

    def forgetful_apply(self: KVStateMachine, command: bytes):
        outcome = real_apply(self, command)
        if outcome is Outcome.SESSION_EXPIRED:
            op, key, value, expected, session, seq, *_ = msgpack.unpackb(command, raw=False)
            outcome = self._execute(op, key, value, expected)
            self.sessions[session] = Session(seq, int(outcome), self.clock)
        return outcome

    monkeypatch.setattr(KVStateMachine, "apply", forgetful_apply)
    assert "not linearizable" in _first_failure(200)
