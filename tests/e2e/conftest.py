import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest

from services.common.settings import Settings
from services.demo import Client
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import PROCESSES, Supervisor
from tests.conftest import destroy, isolated_settings
from tests.polling import eventually

PLAN = SeedPlan(products=20, customers=40, stock=1_000, seed=11)


@contextlib.contextmanager
def own_settings(servers, tmp_path_factory, name: str, **overrides) -> Iterator[Settings]:
    """A system's own databases, queues, ports and data dir (dropped afterwards), with `overrides`."""
    s = isolated_settings(servers, tmp_path_factory.mktemp(name)).model_copy(update=overrides)
    try:
        yield s
    finally:
        destroy(s)


@contextlib.asynccontextmanager
async def seeded_system(settings: Settings, coordinator: bool = False) -> AsyncIterator[Supervisor]:
    """The services (broker, inventory, payment, order, admin) under the supervisor, on seeded data, and the
    coordinator's three replicas when the tests drive tcc orders (they cost three processes' start-up)."""
    await asyncio.to_thread(reset_and_seed, settings, PLAN)
    async with Supervisor(settings, names=None if coordinator else PROCESSES) as sup:
        yield sup


def own_system(name: str, coordinator: bool = False, **overrides):
    """Module-scoped `settings` and `system` fixtures for a system of a test module's own:
    `settings, system = own_system("name", broker_max_checks=3)`."""

    @pytest.fixture(scope="module")
    def settings(servers, tmp_path_factory):
        with own_settings(servers, tmp_path_factory, name, **overrides) as s:
            yield s

    @pytest.fixture(scope="module")
    async def system(settings):
        async with seeded_system(settings, coordinator) as sup:
            yield sup

    return settings, system


@pytest.fixture(scope="package")
def settings(servers, tmp_path_factory):
    """The e2e system's own settings (not shared with other test packages)."""
    with own_settings(servers, tmp_path_factory, "e2e") as s:
        yield s


@pytest.fixture(scope="package")
async def system(settings):
    async with seeded_system(settings) as sup:
        yield sup


@pytest.fixture
async def client(settings, system):
    client = Client(settings, retry_for=90.0)
    yield client
    await client.aclose()


def admin_client(settings: Settings, token: bool = True) -> httpx.AsyncClient:
    """A client of the admin API, with the admin token (or, `token=False`, without it)."""
    headers = {"authorization": f"Bearer {settings.admin_token}"} if token else {}
    return httpx.AsyncClient(base_url=settings.url("admin"), timeout=30.0, headers=headers)


@pytest.fixture
async def admin(settings, system):
    async with admin_client(settings) as client:
        yield client


@pytest.fixture
async def http(settings, system):
    async with httpx.AsyncClient(base_url=settings.url("order"), timeout=10.0) as client:
        yield client


# ----------------------------------------------------------------------------- orders and transactions
async def place(client: Client, bodies: list[dict]) -> list[str]:
    """Place the orders at once; their ids (each accepted: 201, or 202 while its transaction is begun)."""
    answers = await asyncio.gather(*(client.place(b) for b in bodies))
    assert all(status in (200, 201, 202) for status, _ in answers), answers
    return [a["id"] for _, a in answers]


def statuses(settings: Settings, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(settings.raw_dsn("order")) as conn:
        rows = conn.execute("SELECT id::text, status FROM orders WHERE id = ANY(%s::uuid[])", (ids,)).fetchall()
    return dict(rows)


async def settled(settings: Settings, ids: list[str], within: float = 60.0) -> dict[str, str]:
    """Each order's final status, once none is PENDING."""
    def probe() -> dict[str, str] | None:
        now = statuses(settings, ids)
        return now if len(now) == len(ids) and "PENDING" not in now.values() else None

    return await eventually(probe, within=within, interval=0.2, what="every order PAID or CANCELLED")


async def transaction(admin: httpx.AsyncClient, gid: str) -> dict:
    """A global transaction's record, through the admin API."""
    response = await admin.get(f"/transactions/{gid}")
    assert response.status_code == 200, response.text
    return response.json()


# ----------------------------------------------------------------------------- the dashboard
async def first_event(client: httpx.AsyncClient, view: str, **params: str) -> str:
    """The HTML of the first event the live stream of `view` sends."""
    async with client.stream("GET", "/ui/events", params={"view": view} | params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        event, data = None, []
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and event:
                assert event == view
                return "\n".join(data)
    raise AssertionError(f"the {view} stream closed before its first event")
