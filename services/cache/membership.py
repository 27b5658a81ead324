"""Which Redis nodes are on the ring right now: `TXLAB_CACHE_NODES` until the admin API changes it, then
the list it saved under the data directory, so that a restarted service rejoins the current ring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

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
    for url in urls:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=settings.cache_prefix + "*", count=1000))
            for i in range(0, len(keys), 500):
                removed += client.unlink(*keys[i:i + 500])
        except (redis.RedisError, OSError):
            pass  # a node that is down holds nothing it could serve; it is purged when it rejoins
        finally:
            client.close()
    return removed
