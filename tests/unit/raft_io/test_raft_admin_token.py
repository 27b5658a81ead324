"""Which admin token the Raft nodes and `txlab raft` commands use: the one the txlab services use."""

from __future__ import annotations

import stat

import pytest

from raft.api import KVApi
from raft.cluster import admin_token, free_base_port
from raft.node import NodeConfig, RaftNode
from services.common.settings import Settings


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TXLAB_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("TXLAB_DATA_DIR", str(tmp_path / "txlab"))
    return tmp_path / "txlab"


def test_the_configured_token_wins_and_is_not_saved(data_dir, monkeypatch):
    monkeypatch.setenv("TXLAB_ADMIN_TOKEN", "configured")
    assert admin_token() == "configured"
    assert not (data_dir / "admin-token").exists()


def test_without_one_the_token_saved_for_the_services_is_used(data_dir):
    services = Settings(admin_token="saved-by-txlab-up")
    services.save_token()
    assert admin_token() == "saved-by-txlab-up"


def test_without_either_a_random_token_is_saved_privately_and_reused_by_the_services(data_dir):
    token = admin_token()
    assert len(token) >= 16
    saved = data_dir / "admin-token"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert admin_token() == token
    assert Settings().admin_token == token
    assert [p.name for p in data_dir.iterdir()] == ["admin-token"]


def test_the_api_refuses_to_run_without_a_token(tmp_path):
    node = RaftNode(NodeConfig(id=1, nodes=1, data_dir=str(tmp_path), base_port=free_base_port(1)))
    try:
        with pytest.raises(ValueError):
            KVApi(node, "")
    finally:
        node.storage.close()
