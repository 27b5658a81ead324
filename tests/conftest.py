"""Real servers for every test beyond unit tests: testcontainers when a Docker engine answers, otherwise
the local PostgreSQL, RabbitMQ and Redis that scripts/local-services prepared. Each test session gets
fresh database names, a fresh exchange/queue prefix and its own data directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from raft.cluster import free_base_port
from services.cache.membership import flush
from services.common.settings import DATABASES, Settings


def docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def containers() -> Iterator[dict[str, str]]:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer
    from testcontainers.redis import RedisContainer

    pg = PostgresContainer("postgres:15", username="postgres", password="postgres", driver=None)
    pg.with_command("postgres -c max_prepared_transactions=300 -c max_connections=300")
    with pg, RabbitMqContainer("rabbitmq:3.12") as mq, RedisContainer("redis:7") as r1, \
            RedisContainer("redis:7") as r2, RedisContainer("redis:7") as r3:
        host = pg.get_container_host_ip()
        yield {
            "pg": f"postgresql://postgres:postgres@{host}:{pg.get_exposed_port(5432)}",
            "amqp": f"amqp://guest:guest@{mq.get_container_host_ip()}:{mq.get_exposed_port(5672)}/",
            "cache_nodes": ",".join(f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}"
                                    for r in (r1, r2, r3)),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OwnRedis:
    """A redis-server this test run started and alone may signal (by its pid)."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def hang(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def own_redis_servers(count: int) -> Iterator[list[OwnRedis]]:
    """`count` fresh redis-servers on free loopback ports, without persistence; stopped on exit."""
    started: list[OwnRedis] = []
    try:
        for _ in range(count):
            started.append(_start_redis())
        yield started
    finally:
        for server in started:
            server.resume()  # a stopped process acts on SIGTERM only once it runs again
            server.process.terminate()
        for server in started:
            try:
                server.process.wait(5)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def _start_redis(tries: int = 5) -> OwnRedis:
    """A redis-server of ours, answering on its port. A free port can be taken by another process (another lane's
    server, say) before redis-server binds it: then ours exits, or the one that answers is not ours (its
    process id says), and another port is tried."""
    for _ in range(tries):
        port = free_port()
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        server = OwnRedis(port, process)
        try:
            if _answers(server):
                return server
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.kill()
        process.wait()
    raise RuntimeError(f"no redis-server of ours started in {tries} tries")


def _answers(server: OwnRedis, within: float = 10.0) -> bool:
    """True once our redis-server answers on its port; False if it exited, or another process answers there."""
    deadline = time.monotonic() + within
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=1, socket_connect_timeout=1)
    try:
        while server.process.poll() is None and time.monotonic() < deadline:
            try:
                return int(client.info("server")["process_id"]) == server.process.pid
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, str]]:
    if docker_answers() and not os.environ.get("TXLAB_TEST_LOCAL"):
        with containers() as urls:
            yield urls
    else:
        base = Settings()
        yield {"pg": base.pg, "amqp": base.amqp, "cache_nodes": base.cache_nodes}


def isolated_settings(servers: dict[str, str], data_dir: Path) -> Settings:
    """Settings of an isolated txlab: own databases, own exchanges and queues, own ports and data dir."""
    tag = f"t{uuid.uuid4().hex[:8]}"
    coordinator = free_base_port(3)  # HTTP on base..base+2, Raft on base+100..base+102
    return Settings(**servers, db_prefix=f"txlab_{tag}", bus_prefix=f"{tag}.", admin_token=f"token-{tag}",
                    cache_prefix=f"{tag}:cache:",
                    data_dir=data_dir, admin_port=free_port(), order_port=free_port(),
                    inventory_port=free_port(), payment_port=free_port(), broker_port=free_port(),
                    coordinator_port=coordinator, coordinator_raft_port=coordinator + 100,
                    relay_poll_seconds=0.5,
                    relay_max_attempts=3)


def destroy(s: Settings) -> None:
    """Drop the databases, queues and exchanges of an isolated txlab (and the transactions prepared in them,
    which would keep them from being dropped)."""
    for service in DATABASES:
        with contextlib.suppress(psycopg.OperationalError), \
                psycopg.connect(s.raw_dsn(service), autocommit=True) as conn:
            for xid in conn.tpc_recover():
                if xid.database == conn.info.dbname:
                    conn.tpc_rollback(xid)
        with psycopg.connect(f"{s.pg.rstrip('/')}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{s.database(service)}" WITH (FORCE)')
    _delete_bus(s)
    flush(s)


@pytest.fixture(scope="session")
def settings(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = isolated_settings(servers, tmp_path_factory.mktemp("txlab"))
    yield s
    destroy(s)


def _delete_bus(s: Settings) -> None:
    import asyncio

    from services.messaging.parking import delete_topology
    from services.messaging.topology import topology_of

    asyncio.run(delete_topology(s.amqp, topology_of(s)))
