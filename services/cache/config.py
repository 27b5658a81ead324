"""Naming cache nodes: `TXLAB_CACHE_NODES` is a comma list of redis URLs; a node's ring name is host:port."""

from __future__ import annotations

from urllib.parse import urlsplit


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
