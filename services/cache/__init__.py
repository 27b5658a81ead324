"""The hash-ring sharded cache over the Redis cache nodes (`TXLAB_CACHE_NODES`)."""

from services.cache.config import node_name, parse_nodes
from services.cache.sharded import NodeStats, ShardedCache

__all__ = ["NodeStats", "ShardedCache", "node_name", "parse_nodes"]
