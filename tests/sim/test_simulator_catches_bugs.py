"""The simulator is only worth its seeds if it fails broken cores: plant a known Raft bug, expect a report."""

from __future__ import annotations

import pytest

from raft.core import Raft, _apply_conf, _PendingRead
from raft.testing.sim import Cluster, SafetyChecker, SafetyViolation, run_seed
from raft.types import ConfChange, EntryType, Message, MsgType

CI_SEEDS = 2000  # the CI budget (TXLAB_SIM_SEEDS): default profile
MEMBERSHIP_SEEDS = CI_SEEDS // 10  # forced membership changes


def _first_failure(limit: int) -> str:
    for seed in range(limit):
        try:
            run_seed(seed)
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
    first at seed 120, "Leader Completeness: leader 5 of term 9 lacks committed entry (51, 8)"."""

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
    assert "Election Safety" in msg or "Leader Completeness" in msg or "State Machine Safety" in msg, msg
