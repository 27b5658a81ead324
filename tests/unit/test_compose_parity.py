"""docker-compose.yml runs what `txlab up` runs: the same processes, on the same host ports, reaching each other
through the settings the code reads; every long-running service has a healthcheck; the image holds every
package and file the processes use. The expectations come from the code (supervisor, Settings, the Raft
replicas' config, scripts/local-services), so a change there that compose misses fails here."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import ValidationError

from services.cache.config import parse_nodes
from services.common.settings import Settings, coordinator_node
from services.coordinator.store import RaftStore
from services.supervisor import all_processes

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SERVICES = (ROOT / "scripts" / "local-services").read_text()
IMAGE_PORTS = {"postgres": 5432, "rabbitmq": 5672, "redis": 6379}  # where each image's server listens
RUN = ["python", "-m", "services.run"]


@pytest.fixture(autouse=True)
def no_txlab_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() here are the defaults `txlab up` starts with, whatever this shell exported."""
    for name in [n for n in os.environ if n.startswith("TXLAB_")]:
        monkeypatch.delenv(name)


def local_services_default(variable: str) -> str:
    """The default scripts/local-services gives one of its settings (`MIN_PREPARED=${TXLAB_...:-300}`)."""
    found = re.search(rf'^{variable}=\$\{{\w+:-"?([^"}}]*)"?\}}', LOCAL_SERVICES, re.MULTILINE)
    assert found, f"scripts/local-services sets no {variable}"
    return found.group(1)


def interpolate(value: object) -> str:
    """Compose's `${VAR:-default}`, with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def published(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> the host address it is published on ("127.0.0.1:8002"; "0.0.0.0:..." without an IP)."""
    def span(ports: str) -> range:
        first, _, last = ports.partition("-")
        return range(int(first), int(last or first) + 1)

    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split("/")[0].split(":")
        ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        host = span(parts[-2]) if len(parts) > 1 else [None] * len(span(parts[-1]))
        out |= {inner: f"{ip}:{outer}" for outer, inner in zip(host, span(parts[-1]), strict=True)}
    return out


def settings_from(env: dict[str, str]) -> Settings:
    with mock.patch.dict(os.environ, env):
        return Settings()


class Compose:
    """The services of a compose file, and the questions the checks ask of them."""

    def __init__(self, compose: dict[str, Any]) -> None:
        self.services: dict[str, dict[str, Any]] = compose.get("services") or {}
        self.runs = {  # txlab process name -> the service running it
            command(s)[3]: n for n, s in self.services.items() if command(s)[:3] == RUN and len(command(s)) == 4}

    def network(self, name: str) -> str:
        """The service whose network namespace (hostname, published ports) `name` lives in."""
        mode = str(self.services[name].get("network_mode", ""))
        return mode.removeprefix("service:") if mode.startswith("service:") else name

    def by_image(self, image: str) -> list[str]:
        return [n for n, s in self.services.items() if str(s.get("image", "")).split(":")[0] == image]

    def by_command(self, *words: str) -> list[str]:
        return [n for n, s in self.services.items() if command(s) == list(words)]

    def publishing(self, name: str, inner: int, outer: int, what: str) -> list[str]:
        """A problem unless `name`'s container port `inner` is published on 127.0.0.1:`outer`."""
        at = published(self.services[self.network(name)]).get(inner)
        if at == f"127.0.0.1:{outer}":
            return []
        owner = f" (in {self.network(name)}'s network)" if self.network(name) != name else ""
        return [f"{what}: container port {inner} of {name}{owner} must be published on 127.0.0.1:{outer} "
                f"as `txlab up` listens there (published: {at or 'nowhere'})"]

    def server(self, url: str, image: str, what: str) -> list[str]:
        """A problem unless `url` names a service of `image` on the port its server listens on."""
        parts = urlsplit(url)
        if parts.hostname in self.by_image(image) and (parts.port or IMAGE_PORTS[image]) == IMAGE_PORTS[image]:
            return []
        return [f"{what} is {url}: not a {image} service of compose on port {IMAGE_PORTS[image]}"]


def process_problems(compose: Compose, up: Settings) -> tuple[list[str], dict[str, Settings]]:
    """The txlab processes: each runs as `txlab up` runs it, published where `txlab up` listens, reaching the
    others, PostgreSQL, RabbitMQ and the cache nodes through its settings. Also their settings, by process."""
    services, runs, problems = compose.services, compose.runs, []
    processes = all_processes(up)
    if missing := [p for p in processes if p not in runs]:
        problems.append(f"no service runs `python -m services.run NAME` for {', '.join(missing)} (`txlab up` does)")
    if extra := sorted(set(runs) - set(processes)):
        problems.append(f"services run {', '.join(extra)}, which `txlab up` does not")
    processes = tuple(p for p in processes if p in runs)
    envs = {p: {k: interpolate(v) for k, v in (services[runs[p]].get("environment") or {}).items()} for p in processes}
    known = {f"TXLAB_{field.upper()}" for field in Settings.model_fields}
    inside: dict[str, Settings] = {}
    for p in processes:
        if unknown := sorted(k for k in envs[p] if k.startswith("TXLAB_") and k not in known):
            problems.append(f"{runs[p]} sets {', '.join(unknown)}: no such setting in services/common/settings.py")
        try:
            inside[p] = settings_from(envs[p])
        except ValidationError as exc:
            problems.append(f"{runs[p]}'s environment is refused by Settings: {exc}")
    if len({tuple(sorted(env.items())) for env in envs.values()}) > 1:
        first = processes[0]
        differ = {p: sorted(k for k in envs[p].keys() | envs[first].keys() if envs[p].get(k) != envs[first].get(k))
                  for p in processes[1:]}
        problems.append("the txlab processes must share one environment (one installation: one token, one data "
                        f"dir, one view of each other); differences from {first}: "
                        + "; ".join(f"{p}: {', '.join(keys)}" for p, keys in differ.items() if keys))
    migrate = compose.by_command("txlab", "migrate")
    if not migrate:
        problems.append("no service runs `txlab migrate` (`txlab up` migrates before it starts the processes)")
    wants = {**{s: "service_healthy" for s in (*compose.by_image("postgres"), *compose.by_image("rabbitmq"))},
             **{s: "service_completed_successfully" for s in migrate}}
    for p, settings in inside.items():
        name = runs[p]
        if settings.host not in ("0.0.0.0", "::"):
            problems.append(f"{name} listens on {settings.host} in its container: a published port cannot reach it")
        problems += compose.publishing(name, settings.port(p), up.port(p), p)
        for q in processes:  # every process reaches every other where it listens
            at, listens = urlsplit(settings.url(q)), inside.get(q)
            if listens and (at.hostname, at.port) != (compose.network(runs[q]), listens.port(q)):
                problems.append(f"{p} reaches {q} at {settings.url(q)}, but {q} listens in "
                                f"{compose.network(runs[q])} on port {listens.port(q)}")
        problems += compose.server(settings.pg, "postgres", f"{p}'s TXLAB_PG")
        problems += compose.server(settings.amqp, "rabbitmq", f"{p}'s TXLAB_AMQP")
        for url in parse_nodes(settings.cache_nodes).values():
            problems += compose.server(url, "redis", f"{p}'s cache node")
        depends = services[name].get("depends_on") or {}
        for service, condition in wants.items():
            if not isinstance(depends, dict) or (depends.get(service) or {}).get("condition") != condition:
                problems.append(f"{name} must depend on {service} with condition {condition}")
        test = [str(part) for part in (services[name].get("healthcheck") or {}).get("test", [])]
        health = f"http://127.0.0.1:{settings.port(p)}/health"
        if test[:3] != ["CMD", "python", "-c"] or len(test) != 4 or health not in test[3]:
            problems.append(f"{name}'s healthcheck must be [CMD, python, -c, CODE] asking {health} "
                            f"(the image has python, not curl); it is {test or 'missing'}")
    return problems, inside


def raft_problems(compose: Compose, up: Settings, inside: dict[str, Settings]) -> list[str]:
    """The replicas dial each other's Raft port at their host setting, so they share one network; their Raft
    ports are published where `txlab up`'s replicas listen."""
    problems = []
    coordinators = [c for c in up.coordinators if c in inside]
    if len({compose.network(compose.runs[c]) for c in coordinators}) > 1:
        problems.append(f"the coordinator replicas dial each other's Raft port at {inside[coordinators[0]].host}: "
                        "they must share one network (network_mode: service:...)")
    for c in coordinators:
        node = coordinator_node(c)
        problems += compose.publishing(compose.runs[c], RaftStore(inside[c], node).cfg.raft_port(node),
                                       RaftStore(up, node).cfg.raft_port(node), f"{c}'s Raft port")
    return problems


def server_problems(compose: Compose, up: Settings) -> list[str]:
    """PostgreSQL, RabbitMQ and the cache nodes on the host ports `txlab up` uses, configured as
    scripts/local-services configures them."""
    problems = []
    for image, url in (("postgres", up.pg), ("rabbitmq", up.amqp)):
        if len(compose.by_image(image)) != 1:
            problems.append(f"one {image} service wanted, found {compose.by_image(image)}")
        for name in compose.by_image(image):
            problems += compose.publishing(name, IMAGE_PORTS[image], urlsplit(url).port or IMAGE_PORTS[image], image)
    cache_ports = sorted(urlsplit(u).port or 6379 for u in parse_nodes(up.cache_nodes).values())
    if cache_ports != sorted(int(p) for p in local_services_default("CACHE_PORTS").split()):
        problems.append(f"Settings' cache nodes {cache_ports} are not the ones scripts/local-services starts")
    at = sorted(published(compose.services[n]).get(IMAGE_PORTS["redis"], "nowhere") for n in compose.by_image("redis"))
    if at != [f"127.0.0.1:{port}" for port in cache_ports]:
        problems.append(f"the cache Redis nodes must be published on 127.0.0.1:{cache_ports} as `txlab up`'s; "
                        f"they are on {at}")
    for name in compose.by_image("postgres"):
        config = dict(re.findall(r"-c\s+(\w+)=(\d+)", " ".join(command(compose.services[name]))))
        for option, minimum in (("max_prepared_transactions", "MIN_PREPARED"), ("max_connections", "MIN_CONNECTIONS")):
            least = int(local_services_default(minimum))
            if int(config.get(option, 0)) < least:
                problems.append(f"{name} must run with -c {option}={least} or more (scripts/local-services's "
                                f"{minimum}; 2PC prepares transactions); it has {config.get(option, 'none')}")
    return problems


def healthcheck_problems(compose: Compose) -> list[str]:
    """Every long-running service but the txlab processes (checked above) has a healthcheck; a one-shot
    service is one others wait for to complete."""
    one_shot = {s for svc in compose.services.values() if isinstance(svc.get("depends_on"), dict)
                for s, d in svc["depends_on"].items() if (d or {}).get("condition") == "service_completed_successfully"}
    problems = []
    for name in sorted(compose.services.keys() - one_shot - set(compose.runs.values())):
        check = compose.services[name].get("healthcheck") or {}
        if not check.get("test") or check.get("disable") or check["test"] == ["NONE"]:
            problems.append(f"{name} has no healthcheck")
    return problems


def compose_problems(text: str) -> list[str]:
    """Every way a docker-compose.yml differs from `txlab up`; empty when they agree."""
    compose, up = Compose(yaml.safe_load(text)), Settings()  # up: what `txlab up` runs with, on the host
    problems, inside = process_problems(compose, up)
    return problems + raft_problems(compose, up, inside) + server_problems(compose, up) + healthcheck_problems(compose)


def dockerfile_problems(dockerfile: str) -> list[str]:
    """What the image lacks of what pip and the processes read: the packages pyproject finds, every project
    package they import, the project files they name (alembic.ini), and pyproject's readme."""
    copied = {src.split("/")[0] for line in dockerfile.splitlines() if line.startswith("COPY ")
              for src in shlex.split(line)[1:-1] if not src.startswith("--")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and any(fnmatch.fnmatch(p.name, i) for i in include)}
    top = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    wanted = {name: "a package pyproject.toml installs" for name in packages}
    wanted |= {"pyproject.toml": "pip install", project["project"]["readme"]: "pyproject.toml's readme"}
    for source in sorted(f for package in packages for f in (ROOT / package).rglob("*.py")):
        where = str(source.relative_to(ROOT))
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in {m.split(".")[0] for m in modules} & top:
                    wanted.setdefault(name, f"imported by {where}")
            elif isinstance(node, ast.Constant) and node.value in top and (ROOT / str(node.value)).is_file():
                wanted.setdefault(str(node.value), f"read by {where}")
    return [f"the Dockerfile does not COPY {name} ({why})" for name, why in sorted(wanted.items())
            if name not in copied]


COMPOSE = (ROOT / "docker-compose.yml").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_compose_runs_what_txlab_up_runs():
    problems = compose_problems(COMPOSE)
    assert not problems, "docker-compose.yml differs from `txlab up`:\n- " + "\n- ".join(problems)


def test_the_image_holds_every_package_and_file_the_processes_use():
    problems = dockerfile_problems(DOCKERFILE)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("old, new, complaint", [
    ('"127.0.0.1:8002:8002"', '"127.0.0.1:8012:8002"', "container port 8002 of inventory must be published on "
                                                       "127.0.0.1:8002"),
    ("7101-7103:7101-7103", "7201-7203:7101-7103", "coordinator-2's Raft port"),
    ('"127.0.0.1:6381:6379"', '"127.0.0.1:6391:6379"', "cache Redis nodes must be published"),
    ("max_prepared_transactions=300", "max_prepared_transactions=0", "max_prepared_transactions=300 or more"),
    ("-c max_connections=300", "", "max_connections=300 or more"),
    ("run coordinator-3", "run coordinator-4", "for coordinator-3"),
    ("TXLAB_PAYMENT_URL: http://payment:8003", "TXLAB_PAYMENT_URL: http://payment:8013", "reaches payment at"),
    ("TXLAB_BROKER_URL", "TXLAB_BROKERS_URL", "TXLAB_BROKERS_URL: no such setting"),
    ("TXLAB_HOST: 0.0.0.0", "TXLAB_HOST: 127.0.0.1", "a published port cannot reach it"),
    ("    network_mode: service:coordinator-1\n", "", "must share one network"),
    ("  healthcheck: {<<: *health, test: [CMD, redis-cli, ping]}\n", "", "cache1 has no healthcheck"),
    ("'http://127.0.0.1:8003/health'", "'http://127.0.0.1:8002/health'", "payment's healthcheck must be"),
    ("    rabbitmq: {condition: service_healthy}\n", "", "must depend on rabbitmq with condition service_healthy"),
])
def test_the_checker_names_what_a_broken_compose_file_gets_wrong(old, new, complaint):
    assert old in COMPOSE, f"the mutation {old!r} no longer applies to docker-compose.yml"
    problems = compose_problems(COMPOSE.replace(old, new, 1))
    assert any(complaint in p for p in problems), f"expected {complaint!r} among {problems}"


def test_the_image_check_names_a_package_left_out():
    problems = dockerfile_problems(DOCKERFILE.replace("COPY broker broker\n", ""))
    assert any("does not COPY broker" in p for p in problems), problems


@contextlib.contextmanager
def health_server(status: int) -> Iterator[int]:
    """An HTTP server on a free loopback port whose every GET answers `status`."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_process_healthcheck_passes_on_200_and_fails_otherwise():
    services = yaml.safe_load(COMPOSE)["services"]
    code = services["inventory"]["healthcheck"]["test"][3]
    up = Settings()

    def exit_code(port: int) -> int:
        probe = code.replace(f":{up.port('inventory')}/", f":{port}/")
        assert probe != code, f"inventory's healthcheck names no port {up.port('inventory')}: {code}"
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30).returncode

    with health_server(200) as port:
        assert exit_code(port) == 0
    with health_server(503) as port:
        assert exit_code(port) != 0
    assert exit_code(port) != 0  # nobody listens any more


def docker_compose_answers() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "compose", "version"], capture_output=True,
                                           timeout=30).returncode == 0


@pytest.mark.skipif(not docker_compose_answers(), reason="`docker compose version` fails: no compose CLI here")
def test_docker_compose_config_accepts_the_file():
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
