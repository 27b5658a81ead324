"""Where the cache nodes are: `TXLAB_CACHE_NODES`, a comma list of redis URLs."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NODES = "redis://127.0.0.1:6380,redis://127.0.0.1:6381,redis://127.0.0.1:6382"


class CacheSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TXLAB_", extra="ignore")

    cache_nodes: str = DEFAULT_NODES
    cache_prefix: str = "txlab:cache:"
    cache_max_ttl: float = 300.0  # no entry lives longer; also how long a ring change stays "in progress"


def node_name(url: str) -> str:
    """A node's ring name: "host:port" of its URL (plus "/db" when not db 0)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError(f"not a redis URL: {url!r}")
    name = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
    db = parts.path.strip("/") if parts.hostname else ""
    return f"{name}/{db}" if db not in ("", "0") else name


def parse_nodes(csv: str) -> dict[str, str]:
    """Ring name to URL for a comma list of redis URLs."""
    urls = [u.strip() for u in csv.split(",") if u.strip()]
    nodes = {node_name(u): u for u in urls}
    if len(nodes) != len(urls):
        raise ValueError(f"duplicate cache nodes in {csv!r}")
    return nodes
