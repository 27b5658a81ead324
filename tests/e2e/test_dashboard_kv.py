"""The Raft KV cluster of `txlab raft up` killed and restarted through admin (and its dashboard): a killed leader
is replaced by a new one in a higher term, stays down while held, and rejoins as a follower once restarted."""

from __future__ import annotations

import asyncio
import os

import pytest

from raft.cluster import free_base_port, hold_file
from services.supervisor import Supervisor
from tests.polling import eventually
from tests.raft_up import node_pid, node_status, raft_up

from .conftest import admin_client, first_event, own_settings

NODES = (1, 2, 3)


@pytest.fixture(scope="module")
def settings(servers, tmp_path_factory):
    with own_settings(servers, tmp_path_factory, "dashboard-kv", kv_base_port=free_base_port(3),
                      kv_data_dir=tmp_path_factory.mktemp("kv") / "raft") as s:
        yield s


@pytest.fixture(scope="module")
async def system(settings):
    async with Supervisor(settings, names=("admin",)) as sup:  # the KV cluster needs nothing else
        yield sup


@pytest.fixture
def kv_cluster(settings, tmp_path):
    with raft_up(settings.kv_dir, settings.kv_base_port, settings.admin_token, tmp_path / "raft-up.log") as up:
        yield up


def leader(settings, among=NODES) -> dict | None:
    """The status of the node that leads in the highest term, None while none does."""
    leaders = [s for i in among if (s := node_status(settings.kv_base_port, i)) and s["role"] == "leader"]
    return max(leaders, key=lambda s: s["term"], default=None)


async def test_kv_kill_and_restart_need_the_token_a_node_of_the_cluster_and_a_raft_up_supervising_it(
        settings, system, admin):
    async with admin_client(settings, token=False) as anonymous:
        for path in ("/kv/kill/1", "/kv/restart/1"):
            assert (await anonymous.post(path)).status_code == 401
    for path in ("/kv/kill/4", "/kv/restart/0"):
        missing = await admin.post(path)
        assert missing.status_code == 404 and "no KV node" in missing.json()["detail"]
    for path in ("/kv/kill/1", "/kv/restart/1"):
        refused = await admin.post(path)
        assert refused.status_code == 409, refused.text
        assert "only `txlab raft up` can kill and restart it" in refused.json()["detail"]
    flashed = await admin.post("/ui/kv/1/kill")
    assert flashed.status_code == 409 and "txlab raft up" in flashed.text


async def test_killing_the_kv_leader_through_admin_elects_a_new_leader_and_a_restart_brings_it_back_as_follower(
        settings, admin, kv_cluster):
    old = await eventually(lambda: leader(settings), within=60.0, what="a KV leader")
    pid = await eventually(lambda: node_pid(settings.kv_dir, old["id"]), within=30.0, what="its pid file")
    html = await first_event(admin, "raft")
    assert f'hx-post="/ui/kv/{old["id"]}/kill"' in html

    killed = await admin.post(f"/kv/kill/{old['id']}")
    assert killed.status_code == 200, killed.text
    assert killed.json() == {"killed": old["id"], "pid": pid, "held": True}
    others = [i for i in NODES if i != old["id"]]
    new = await eventually(lambda: (s := leader(settings, others)) and s["term"] > old["term"] and s,
                           within=60.0, what="a new KV leader in a higher term")
    await asyncio.sleep(2.0)  # `txlab raft up` would have restarted it by now: it is held down instead
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert hold_file(settings.kv_dir, old["id"]).exists() and node_status(settings.kv_base_port, old["id"]) is None
    html = await first_event(admin, "raft")
    kv_section = html[html.index('id="kv-cluster"'):]
    assert f'data-node="{old["id"]}" data-role="down"' in kv_section and "down (killed)" in kv_section
    twice = await admin.post(f"/kv/kill/{old['id']}")
    assert twice.status_code == 409 and "already down" in twice.json()["detail"]

    restarted = await admin.post(f"/kv/restart/{old['id']}")
    assert restarted.status_code == 200 and restarted.json() == {"node": old["id"], "done": "released"}
    await eventually(
        lambda: (s := node_status(settings.kv_base_port, old["id"])) and s["role"] == "follower"
        and s["term"] >= new["term"] and s["leader"] in others,
        within=60.0, what=f"KV node {old['id']} back as a follower of a leader among the others")
    assert not hold_file(settings.kv_dir, old["id"]).exists()
    assert node_pid(settings.kv_dir, old["id"]) not in (None, pid)
