"""Golden tests: the libketama and twemproxy modes against an independent C reference, and the slot
function against a real Redis in cluster mode.

Why the reference is independent: `ketama_reference.c` (next to this file) is libketama's
`ketama_create_continuum` / `ketama_get_server` and twemproxy's `ketama_update` / `ketama_dispatch`
written out in C and built here with gcc, so the single-precision `pct`, the `floorf` and the binary
searches are the compiler's and the C library's, and md5 is OpenSSL's. The Python ring emulates the
float rounding with struct round-trips and searches with numpy/bisect: nothing is shared but the
algorithm's text. uhashring is not used as the reference because it is not exact: it counts points
with integer arithmetic (so it gives 40 digests where libketama gives 39 for 61 servers), sends a
hash equal to a point to the next point, and lets the last-inserted node win a collision.

25 and 61 equal-weight servers are the counts where the rounding bites: twemproxy gives 39 digests
per server at 25, libketama at 61 (the test checks that this really happens).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from hashring import Ring, key_slot

HERE = Path(__file__).parent
KEYS = 100_000


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # scripts/system-packages (run by `make`) installs gcc and libssl-dev, so their absence is a failure
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the C reference: run scripts/system-packages")
    exe = tmp_path_factory.mktemp("ketama") / "ketama_reference"
    source = HERE / "ketama_reference.c"
    built = subprocess.run(["gcc", "-O2", "-o", str(exe), str(source), "-lcrypto", "-lm"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"cannot build the C reference (OpenSSL headers missing? run scripts/system-packages): "
                    f"{built.stderr[-300:]}")
    return exe


def _run(exe: Path, mode: str, what: str, servers: dict[str, int], keys: list[str] = ()) -> list[str]:
    lines = [str(len(servers)), *(f"{n} {w}" for n, w in servers.items()), *keys]
    out = subprocess.run([str(exe), mode, what], input="\n".join(lines) + "\n", capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


def _keys() -> list[str]:
    rng = random.Random(20240601)
    return [f"{rng.choice(['user', 'sku', 'order', 'session'])}:{rng.getrandbits(40)}" for _ in range(KEYS)]


@pytest.mark.parametrize(("mode", "n", "rounded_digests"), [
    ("libketama", 25, 40), ("libketama", 61, 39), ("twemproxy", 25, 39), ("twemproxy", 61, 39)])
def test_compat_mode_matches_the_c_reference_on_100k_keys(reference: Path, mode: str, n: int,
                                                           rounded_digests: int) -> None:
    servers = {f"10.0.{i // 200}.{i % 200 + 1}:11211": 1 for i in range(n)}
    continuum = [line.split() for line in _run(reference, mode, "continuum", servers)]
    points = [int(p) for p, _ in continuum]
    assert len(set(points)) == len(points), "precondition: no colliding points (ties are qsort's choice)"
    assert len(points) == n * rounded_digests * 4
    ring = Ring(servers, scheme=mode)
    assert ring.points.tolist() == points
    assert list(ring.owners) == [name for _, name in continuum]
    keys = _keys()
    expected = _run(reference, mode, "keys", servers, keys)
    assert ring.nodes_for(keys) == expected
    sample = keys[:: KEYS // 2000]
    assert [ring.node_for(k) for k in sample] == expected[:: KEYS // 2000]


def test_weighted_libketama_matches_the_c_reference(reference: Path) -> None:
    servers = {f"192.168.1.{i}:11211": [64, 128, 256, 1000][i % 4] for i in range(1, 30)}
    ring = Ring(servers, scheme="libketama")
    continuum = [line.split() for line in _run(reference, "libketama", "continuum", servers)]
    assert ring.points.tolist() == [int(p) for p, _ in continuum]
    keys = _keys()[:20000]
    assert ring.nodes_for(keys) == _run(reference, "libketama", "keys", servers, keys)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too: redis-server exits without it."""
    for _ in range(100):
        with socket.socket() as s, socket.socket() as bus:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port + 10000 > 65535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    pytest.fail("no free port pair (port, port + 10000) for a Redis cluster node")


def test_key_slot_matches_redis_cluster_keyslot(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:  # scripts/local-services needs it too
        pytest.fail("redis-server is needed: apt-get install redis-server")
    port = _free_cluster_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
                             "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server exited with {proc.returncode} on port {port}")
                time.sleep(0.05)
        tagged = ["{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "", "{}"]
        keys = [*_keys()[:3000], *tagged]
        pipe = client.pipeline()
        for key in keys:
            pipe.execute_command("CLUSTER", "KEYSLOT", key)
        assert pipe.execute() == [key_slot(k) for k in keys]
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("mode", ["libketama", "twemproxy"])
@pytest.mark.parametrize("seed", range(6))
def test_compat_continuum_matches_the_c_reference_for_random_weighted_server_sets(reference: Path, mode: str,
                                                                                  seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 2, 3, 13, 47, 71, 100])
    servers = {f"10.{seed}.{i // 250}.{i % 250}:{rng.choice([11211, 6379])}": rng.randint(1, 9)
               for i in range(n)}
    continuum = [line.split() for line in _run(reference, mode, "continuum", servers)]
    points = [int(p) for p, _ in continuum]
    ring = Ring(servers, scheme=mode)
    if len(set(points)) == len(points):
        assert ring.points.tolist() == points and list(ring.owners) == [name for _, name in continuum]
    else:  # a tie is qsort's choice in C; the point sets still agree
        assert ring.points.tolist() == sorted(set(points))


def test_libketama_rounding_moves_keys_between_old_servers_where_ketama_does_not() -> None:
    old = {f"10.0.0.{i}:11211": 1 for i in range(1, 61)}
    new = {**old, "10.0.0.61:11211": 1}  # 61 servers: libketama drops to 39 digests each
    keys = _keys()[:20000]
    for scheme, strays_expected in (("libketama", True), ("ketama", False)):
        before, after = Ring(old, scheme=scheme), Ring(new, scheme=scheme)
        strays = sum(b not in (a, "10.0.0.61:11211")
                     for a, b in zip(before.nodes_for(keys), after.nodes_for(keys), strict=True))
        assert (strays > 0) is strays_expected, scheme
