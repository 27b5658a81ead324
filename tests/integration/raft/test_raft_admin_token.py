"""The Raft admin routes demand the installation's admin token even when none was configured, as the
txlab services do, and the `txlab raft` commands send it."""

from __future__ import annotations

import time

import httpx
from typer.testing import CliRunner

from raft.cli import app


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_admin_routes_answer_401_without_the_token_even_when_none_was_configured(make_cluster, monkeypatch,
                                                                                  tmp_path):
    monkeypatch.delenv("TXLAB_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("TXLAB_DATA_DIR", str(tmp_path / "txlab"))
    c = make_cluster(3)
    c.start()
    url = c.http_url(c.wait_leader())
    assert httpx.post(f"{url}/raft/partition", json={"block": [2]}).status_code == 401
    assert httpx.post(f"{url}/raft/campaign").status_code == 401
    saved = (tmp_path / "txlab" / "admin-token").read_text().strip()  # where the txlab services look too
    assert httpx.delete(f"{url}/raft/partition", headers={"Authorization": f"Bearer {saved}"}).status_code == 200
    assert httpx.get(f"{url}/raft/status").status_code == 200  # status stays public


def test_txlab_raft_commands_send_the_saved_token(make_cluster, monkeypatch, tmp_path):
    monkeypatch.delenv("TXLAB_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("TXLAB_DATA_DIR", str(tmp_path / "txlab"))
    c = make_cluster(3)
    c.start()
    leader = c.wait_leader()
    others = [i for i in (1, 2, 3) if i != leader]
    port = ["--base-port", str(c.base_port)]
    cli = CliRunner()

    r = cli.invoke(app, ["partition", str(leader), "--block", str(others[0]), *port])
    assert r.exit_code == 0, r.output
    assert c.status(leader)["blocked"] == [others[0]]
    r = cli.invoke(app, ["heal", str(leader), *port])
    assert r.exit_code == 0, r.output
    assert c.status(leader)["blocked"] == []
    r = cli.invoke(app, ["transfer-leader", str(others[1]), "--via", str(others[0]), *port])  # redirected
    assert r.exit_code == 0, r.output
    _wait(lambda: c.leader() == others[1])
