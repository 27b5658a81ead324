"""Consistent hashing: a ketama-compatible ring of virtual nodes, and alternative routers to compare.

Pure computation: no I/O, no clocks, no threads. Every router answers `node_for`, `nodes_for`,
`preference_list`, `with_node` and `without_node`; all are immutable except `BoundedLoads`, whose
answer for a key depends by nature on the keys placed before it.
"""

from hashring.bounded import BoundedLoads
from hashring.jump import JumpHash, jump_bucket
from hashring.ring import CIRCLE, Arc, EmptyRingError, Ring, moved, moved_share
from hashring.slots import SLOTS, RedisSlots, key_slot

__all__ = ["CIRCLE", "SLOTS", "Arc", "BoundedLoads", "EmptyRingError", "JumpHash", "RedisSlots", "Ring",
           "jump_bucket", "key_slot", "moved", "moved_share"]
