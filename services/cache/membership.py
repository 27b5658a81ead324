"""Which Redis nodes are on the ring right now: `TXLAB_CACHE_NODES` until the admin API changes it, then
the list it saved under the data directory, so that a restarted service rejoins the current ring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.cache.config import parse_nodes
from services.common.settings import Settings


def membership_file(settings: Settings) -> Path:
    return settings.data_dir / "cache-nodes.json"


def current_nodes(settings: Settings) -> dict[str, str]:
    path = membership_file(settings)
    if path.exists():
        return json.loads(path.read_text())
    return parse_nodes(settings.cache_nodes)


def save_nodes(settings: Settings, nodes: dict[str, str]) -> None:
    path = membership_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(nodes))
    os.replace(tmp, path)


def flush(settings: Settings) -> int:
    """Delete every key of this deployment's cache on every known node (after a reseed)."""
    removed = 0
    urls = set(parse_nodes(settings.cache_nodes).values()) | set(current_nodes(settings).values())
    timeout = settings.cache_timeout_seconds
    for url in urls:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry=Retry(NoBackoff(), 0))
        try:
            keys = list(client.scan_iter(match=settings.cache_prefix + "*", count=1000))
            for i in range(0, len(keys), 500):
                removed += client.unlink(*keys[i:i + 500])
        except (redis.RedisError, OSError):
            pass  # a node that does not answer in time is left as it is: what it holds lives at most cache_max_ttl
        finally:
            client.close()
    return removed
