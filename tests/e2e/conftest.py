import asyncio

import httpx
import pytest

from services.demo import Client
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import Supervisor
from tests.conftest import destroy, isolated_settings

PLAN = SeedPlan(products=20, customers=40, stock=1_000, seed=11)


@pytest.fixture(scope="package")
def settings(servers, tmp_path_factory):
    """The e2e system's own databases, queues, ports and data dir (not shared with other test packages)."""
    s = isolated_settings(servers, tmp_path_factory.mktemp("e2e"))
    yield s
    destroy(s)


@pytest.fixture(scope="package")
async def system(settings):
    """The whole system as processes (inventory, payment, order, admin) under the supervisor."""
    await asyncio.to_thread(reset_and_seed, settings, PLAN)
    async with Supervisor(settings) as sup:
        yield sup


@pytest.fixture
async def client(settings, system):
    client = Client(settings, retry_for=90.0)
    yield client
    await client.aclose()


@pytest.fixture
async def http(settings, system):
    async with httpx.AsyncClient(base_url=settings.url("order"), timeout=10.0) as client:
        yield client
