"""Raft consensus: a deterministic core with no I/O, durable storage, TCP transport, and a replicated KV."""
