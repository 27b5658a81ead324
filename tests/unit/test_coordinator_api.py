"""The coordinator's HTTP answers to input it cannot take as sent, over in-memory stores (no Raft, no sockets):
a follower redirects a request for any gid, and a begin whose work the Raft log cannot keep is a 422 that
proposes nothing."""

import asyncio
import json
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from services.common.settings import Settings
from services.coordinator.app import create_app
from services.coordinator.model import TxnBook
from services.coordinator.store import NotLeader, RaftStore

SETTINGS = Settings(admin_token="t")
TOKEN = {"authorization": "Bearer t"}
LEADER = "http://127.0.0.1:7002"


class Follower:
    """The store of a replica that follows the leader at `LEADER`."""

    book = TxnBook()

    async def catch_up(self) -> None:
        raise NotLeader(LEADER)


class LeadingNode:
    """A Raft node that leads alone: every command it is given is committed and applied at once."""

    is_leader = True

    def __init__(self, store: RaftStore) -> None:
        self.core = SimpleNamespace(term=1, leader=1)
        self.machine = store.machine
        self.submitted: list[bytes] = []

    async def read_barrier(self) -> None:
        pass

    async def submit(self, command: bytes) -> str:
        self.submitted.append(command)
        return self.machine.apply(command)


def client(store) -> httpx.AsyncClient:
    app = create_app(1, SETTINGS)
    app.state.store, app.state.driver = store, SimpleNamespace(wake=asyncio.Event())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://coordinator-1")


@pytest.mark.parametrize("gid", ["%F2%A7%AB%8B%7F", "a%C3%8E", "order-1:2"])
async def test_a_follower_redirects_any_gid_to_the_same_transaction_on_the_leader(gid):
    async with client(Follower()) as c:
        answer = await c.get(f"/transactions/{gid}", headers=TOKEN)
    assert answer.status_code == 307, answer.text
    location = answer.headers["location"]
    assert location.isascii() and location.startswith(f"{LEADER}/transactions/")
    assert unquote(urlsplit(location).path) == f"/transactions/{unquote(gid)}"


@pytest.mark.parametrize("work, why", [({"amount_cents": 2**70}, "out of range"),
                                       ({"customer_id": "\ud800"}, "surrogates")])
async def test_a_begin_whose_work_the_log_cannot_keep_is_refused_and_proposes_nothing(work, why):
    store = RaftStore(SETTINGS, 1)
    store.node = node = LeadingNode(store)
    begin = {"gid": "g1", "pattern": "tcc", "branches": [{"branch": "payment", **work}], "deadline_ms": 1}
    async with client(store) as c:
        # (escaped JSON: a lone surrogate has no UTF-8 form, but JSON text can carry one)
        answer = await c.post("/transactions", content=json.dumps(begin),
                              headers=TOKEN | {"content-type": "application/json"})
    assert answer.status_code == 422 and why in answer.json()["detail"], answer.text
    assert node.submitted == [] and store.book.get("g1") is None
