"""How each scheme places a node's virtual points on the 2^32 circle and hashes a key onto it.

Every scheme takes the md5 digest of "<name>-<i>" and reads it as four little-endian 32-bit points,
as libketama does; they differ only in how many digests a node gets:

* ``ketama``: ``points // 4 * weight`` digests, independent of the other nodes, so adding a node never
  changes another node's points (the ring is monotone).
* ``libketama``: libketama's ``floorf(pct * 40.0 * n)`` with ``pct`` in single precision, so equal
  weights can give 39 digests instead of 40 (61 servers do), and every node's count depends on all
  the others.
* ``twemproxy``: twemproxy's ``floorf((float)(pct * 160 / 4 * n + 1e-10))`` computed in single
  precision (25 servers give 39 digests each); keys hashed with its ``hash: md5`` setting.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import numpy as np

try:  # CPython's built-in md5 has no OpenSSL context set-up, about 1.7x faster on short keys
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - CPython builds without the built-in module
    from hashlib import md5 as _md5

SCHEMES = ("ketama", "libketama", "twemproxy")
DEFAULT_POINTS = 160
LIBKETAMA_MAX_NAME = 21  # libketama copies a server address into char[22]

md5 = _md5
_f32 = struct.Struct("<f")


def f32(x: float) -> float:
    """Round a double to the nearest IEEE single, as a C cast to float does."""
    return _f32.unpack(_f32.pack(x))[0]


def digest_count(scheme: str, weights: Mapping[str, int], name: str, points: int) -> int:
    """Number of md5 digests (four points each) node `name` gets under `scheme`."""
    weight = weights[name]
    if scheme == "ketama":
        return points // 4 * weight
    n = len(weights)
    total = sum(weights.values())
    pct = f32(f32(weight) / f32(total))
    if scheme == "libketama":
        # pct * 40.0 is double arithmetic; floorf then takes its argument as a float
        return math.floor(f32(pct * 40.0 * f32(n)))
    # twemproxy: float * int stays float; + 1e-10 is double; the cast brings it back to float
    per_server = f32(f32(f32(pct * 160) / 4) * f32(n))
    return math.floor(f32(per_server + 0.0000000001))


def node_points(name: str, digests: int) -> np.ndarray:
    """The points of `name` in generation order: 4 little-endian u32 from md5("<name>-<i>")."""
    if digests <= 0:
        return np.empty(0, dtype=np.uint32)
    buf = b"".join([md5(f"{name}-{i}".encode()).digest() for i in range(digests)])
    points = np.frombuffer(buf, dtype="<u4").astype(np.uint32)
    points.flags.writeable = False  # shared by every ring derived from the one that made it
    return points


def check_name(scheme: str, name: str) -> None:
    """Reject names the scheme cannot represent."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"node names are non-empty strings, got {name!r}")
    if scheme == "libketama" and len(name.encode()) > LIBKETAMA_MAX_NAME:
        raise ValueError(f"libketama holds server names of at most {LIBKETAMA_MAX_NAME} bytes: {name!r}")
    if scheme == "libketama" and any(c in name for c in " \t\n\0"):
        raise ValueError(f"libketama server names cannot contain blanks or NUL: {name!r}")
