"""Configuration from `TXLAB_*` environment variables, defaults pointing at 127.0.0.1."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("order", "inventory", "payment")
DATABASES = (*SERVICES, "broker")  # every database of an installation: the services' and the broker's


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TXLAB_", extra="ignore")

    pg: str = "postgresql://postgres@127.0.0.1:5432"
    amqp: str = "amqp://guest:guest@127.0.0.1:5672/"
    cache_nodes: str = "redis://127.0.0.1:6380,redis://127.0.0.1:6381,redis://127.0.0.1:6382"
    cache_prefix: str = "txlab:cache:"
    cache_max_ttl: float = 300.0  # no entry lives longer; also how long a ring change stays "in progress"
    cache_timeout_seconds: float = 0.25  # to connect to a cache node and for each reply; slower is a miss
    cache_cooldown_seconds: float = 1.0  # a cache node that failed is skipped this long, then tried again
    admin_token: str = ""  # unset: the token `txlab up` saved under data_dir, else a new random one
    data_dir: Path = Path(".txlab")
    host: str = "127.0.0.1"
    admin_port: int = 8000
    order_port: int = 8001
    inventory_port: int = 8002
    payment_port: int = 8003
    # where the other processes are reached; unset: http://<host>:<port> (set in docker-compose)
    admin_url: str | None = None
    order_url: str | None = None
    inventory_url: str | None = None
    payment_url: str | None = None
    # traces: every process keeps its recent spans for the dashboard; set an OTLP/HTTP endpoint (a collector,
    # Jaeger, Tempo: http://host:4318) to export them too. TXLAB_TRACING=0 records none.
    tracing: bool = True
    otlp_endpoint: str | None = None
    db_prefix: str = "txlab"  # databases are <prefix>_order, <prefix>_inventory, ...
    # connections each service keeps open to its database (and a quarter more while busy, closed again after):
    # above what it keeps, every checkout opens a connection (a PostgreSQL process) and closes it afterwards.
    # With 10, 1,500 tcc orders at 32 in flight opened 1,044 connections; with 32, none beyond the first
    db_pool_size: int = Field(32, ge=1)
    bus_prefix: str = ""  # prepended to every exchange and queue name (isolates test runs)
    relay_batch: int = 200
    relay_poll_seconds: float = 1.0
    relay_max_attempts: int = 8  # RabbitMQ refusing a row this often makes it FAILED (outages never count)
    relay_lease_seconds: float = Field(15.0, gt=0)  # a dead relay's rows go to another relay after this
    publish_confirm_timeout: float = Field(5.0, gt=0)
    consumer_prefetch: int = 64
    consumer_batch: int = 64  # most messages a consumer applies in one transaction
    # While more orders are undecided than are decided in the target time at the present rate (never fewer than
    # 32), and at most this many, POST /orders waits in line, then answers 429 (Retry-After); 0: never
    # (services/order/admission.py)
    admission_max_pending: int = Field(200, ge=0)
    admission_target_seconds: float = Field(0.5, ge=0)
    admission_wait_seconds: float = Field(2.0, ge=0)  # a request waits in line this long for room, then 429
    consumer_max_failures: int = 5  # a message failing this often by its own fault is parked
    # SENT outbox rows and inbox rows are kept this long: longer than any message can wait to be redelivered
    message_retention_hours: float = Field(168.0, ge=1.0)
    prune_interval_seconds: float = Field(600.0, gt=0)
    # the half-message broker (broker/): RocketMQ's defaults, a 6 s transaction timeout and 15 check-backs;
    # between two check-backs 5 s (RocketMQ waits 60 s: a demo would wait minutes for a check that failed)
    broker_port: int = 8010
    broker_url: str | None = None
    broker_immunity_seconds: float = Field(6.0, ge=0)
    broker_check_interval_seconds: float = Field(5.0, gt=0)
    broker_max_checks: int = Field(15, ge=1)
    broker_check_timeout_seconds: float = Field(5.0, gt=0)
    broker_lease_seconds: float = Field(30.0, gt=0)  # a dead broker's claimed messages go to another after this
    broker_poll_seconds: float = Field(0.5, gt=0)
    broker_allowed_hosts: str = ""  # check_url hosts allowed besides loopback and the services' own hosts
    # halfmsg: how long after its half message an order's local transaction may still commit; a check-back
    # finding no order after that rolls the message back (and bars a late transaction from committing)
    halfmsg_local_deadline_seconds: float = Field(3.0, gt=0)
    # the coordinator (services/coordinator/): replica i serves HTTP on coordinator_port + i - 1 and Raft on
    # coordinator_raft_port + i - 1; its records live in its Raft log, or in etcd (coordinator_store=etcd://...)
    coordinator_port: int = 7001
    coordinator_raft_port: int = 7101
    coordinator_nodes: int = Field(3, ge=1, le=7)
    coordinator_store: str = "raft"
    coordinator_host: str | None = None  # where the replicas are reached; unset: host (set in docker-compose)
    coordinator_retry_base_seconds: float = Field(0.2, gt=0)  # Confirm/Cancel retries back off from this...
    coordinator_retry_cap_seconds: float = Field(5.0, gt=0)  # ... doubling up to this, with jitter
    coordinator_max_attempts: int = Field(12, ge=1)  # failed attempts of one step before the transaction is STUCK
    # the Raft KV cluster of `txlab raft up` that the dashboard shows: node i serves HTTP on kv_base_port + i - 1;
    # its pid and hold files lie under kv_data_dir/run (unset: data_dir/raft, the default of `txlab raft up`)
    kv_base_port: int = 7200
    kv_nodes: int = Field(3, ge=1, le=7)
    kv_data_dir: Path | None = None
    # tcc, 2pc, 3pc: phase 1 (every Try, prepare, vote and pre-commit) must have succeeded this long after the
    # order was placed, or the transaction is aborted
    tcc_deadline_seconds: float = Field(5.0, gt=0)
    # 2PC: a participant asks the coordinator about a prepared transaction of ours this old, and ends it
    indoubt_seconds: float = Field(30.0, gt=0)
    # 3PC: a participant that voted yes and heard nothing more this long aborts; one pre-committed commits
    threepc_timeout_seconds: float = Field(15.0, gt=0, validation_alias=AliasChoices(
        "threepc_timeout_seconds", "TXLAB_THREEPC_TIMEOUT_SECONDS", "TXLAB_3PC_TIMEOUT_SECONDS"))

    @model_validator(mode="after")
    def _timeouts_in_order(self) -> Settings:
        """3PC's participant timeout must outlast phase 1 (or a pre-committed branch commits while its
        transaction can still abort, with no fault at all), and the in-doubt sweep must wait for it."""
        if not self.tcc_deadline_seconds < self.threepc_timeout_seconds < self.indoubt_seconds:
            raise ValueError(f"need TXLAB_TCC_DEADLINE_SECONDS ({self.tcc_deadline_seconds:g}) < "
                             f"TXLAB_3PC_TIMEOUT_SECONDS ({self.threepc_timeout_seconds:g}) < "
                             f"TXLAB_INDOUBT_SECONDS ({self.indoubt_seconds:g})")
        return self

    def model_post_init(self, _context: object) -> None:
        if not self.admin_token:
            saved = self.token_file
            self.admin_token = saved.read_text().strip() if saved.exists() else secrets.token_urlsafe(18)

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin-token"

    def save_token(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(self.admin_token)
        self.token_file.chmod(0o600)

    def child_env(self) -> dict[str, str]:
        """The environment that gives a child process exactly these settings."""
        return {f"TXLAB_{name.upper()}": str(value) for name, value in self.model_dump().items()
                if value is not None}

    def port(self, service: str) -> int:
        if service.startswith("coordinator-"):
            return self.coordinator_port + coordinator_node(service) - 1
        return int(getattr(self, f"{service}_port"))

    def url(self, service: str) -> str:
        if service.startswith("coordinator-"):
            return f"http://{self.coordinator_host or self.host}:{self.port(service)}"
        return getattr(self, f"{service}_url") or f"http://{self.host}:{self.port(service)}"

    @property
    def coordinators(self) -> tuple[str, ...]:
        """The coordinator replicas' process names: coordinator-1, coordinator-2, ..."""
        return tuple(f"coordinator-{i}" for i in range(1, self.coordinator_nodes + 1))

    def coordinator_urls(self) -> list[str]:
        return [self.url(name) for name in self.coordinators]

    @property
    def kv_dir(self) -> Path:
        """The data dir of the `txlab raft up` cluster the dashboard shows."""
        return self.kv_data_dir or self.data_dir / "raft"

    def kv_urls(self) -> list[str]:
        return [f"http://{self.host}:{self.kv_base_port + i}" for i in range(self.kv_nodes)]

    def check_hosts(self) -> frozenset[str]:
        """The hosts a half message's check_url may name: loopback, this installation's processes and
        TXLAB_BROKER_ALLOWED_HOSTS. Any other address is refused, so that the broker cannot be made to send
        requests anywhere."""
        hosts = {"127.0.0.1", "localhost", "::1", self.host}
        hosts |= {urlsplit(self.url(p)).hostname or "" for p in (*SERVICES, "admin")}
        hosts |= {h.strip().lower() for h in self.broker_allowed_hosts.split(",")}
        return frozenset(h for h in hosts if h)

    def database(self, service: str) -> str:
        return f"{self.db_prefix}_{service}"

    def dsn(self, service: str, driver: str = "asyncpg") -> str:
        """SQLAlchemy URL of a service's database (driver `asyncpg` or `psycopg`)."""
        base = self.pg.split("://", 1)[1].rstrip("/")
        return f"postgresql+{driver}://{base}/{self.database(service)}"

    def raw_dsn(self, service: str) -> str:
        """libpq/asyncpg URL of a service's database."""
        return f"{self.pg.rstrip('/')}/{self.database(service)}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def coordinator_node(process: str) -> int:
    """The replica number of a coordinator process name (`coordinator-2` -> 2)."""
    prefix, _, number = process.partition("-")
    if prefix != "coordinator" or not number.isdigit() or int(number) < 1:
        raise ValueError(f"not a coordinator process name: {process!r}")
    return int(number)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
