"""Stopping and starting the machine's own PostgreSQL and RabbitMQ, for the outage tests.

These act on the local servers that scripts/local-services prepared (the tests that use them build their
settings from those servers, whether or not a Docker engine answers), and always leave them running."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _wait_port(port: int, up: bool, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if (s.connect_ex(("127.0.0.1", port)) == 0) == up:
                return
        time.sleep(0.2)
    raise TimeoutError(f"port {port} still {'closed' if up else 'open'} after {within:.0f}s")


def stop_rabbitmq() -> None:
    """Stop the RabbitMQ application (the node stays up, so it comes back fast): every AMQP client is cut off."""
    _run("rabbitmqctl", "-q", "stop_app")
    _wait_port(5672, up=False)


def start_rabbitmq() -> float:
    """Start the RabbitMQ application; return when (wall clock) its AMQP port accepted connections again."""
    starting = subprocess.Popen(["rabbitmqctl", "-q", "start_app"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    _wait_port(5672, up=True)
    port_open = time.time()
    if starting.wait(timeout=120) != 0:
        raise RuntimeError("rabbitmqctl start_app failed")
    _run("rabbitmqctl", "-q", "await_startup")
    return port_open


def restart_postgres() -> None:
    """Restart the local PostgreSQL cluster: every connection is dropped, new ones refused until it is back."""
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    _run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart")
    _run("pg_isready", "-h", "127.0.0.1", "-p", "5432", "-t", "60")


def ensure_rabbitmq_running() -> None:
    """Start RabbitMQ again if a failed test left it stopped."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 5672)) != 0:
            start_rabbitmq()
