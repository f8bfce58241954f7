"""Cache keys: a SHA-256 over a canonical form of everything that can change a response.

The key must be *exact*: two requests share a key only when they are bound to produce the same
answer. So the digest covers the endpoint, the model fingerprint (id, weights revision, tokenizer /
chat-template hash, dtype, device class), every request parameter with defaults filled in, and
:data:`CACHE_FORMAT_VERSION`. Canonicalisation removes only differences that cannot change the
answer: JSON key order, whitespace, ``1`` vs ``1.0``, ``-0.0`` vs ``0.0``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

#: Bump when the stored value layout or key derivation changes: old entries then never match.
CACHE_FORMAT_VERSION = 2  # 2: explain method results carry signed, sign_meaning, excluded_mass

#: Namespace of every Redis key this package writes.
KEY_PREFIX = f"glassbox:cache:v{CACHE_FORMAT_VERSION}"


def _canonical(value: Any) -> Any:
    """A JSON value in which equal-meaning inputs become identical."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # 1.0 and 1 mean the same to a pydantic float field; -0.0 == 0.0. Non-finite values stay
        # floats and serialise as the bare tokens NaN/Infinity, which no string can collide with.
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                # JSON would silently turn 1 into "1" and make {1: x} collide with {"1": x}.
                raise TypeError(f"cache key parts need string keys, got {type(k).__name__}")
            out[k] = _canonical(v)
        return out
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}; pass model_dump(mode='json')")


def canonical_bytes(value: Any) -> bytes:
    """The canonical JSON encoding of *value*: sorted keys, no whitespace, normalised numbers."""
    return json.dumps(
        _canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True
    ).encode("ascii")


def request_key(*, endpoint: str, model_fingerprint: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Hex SHA-256 identifying one reproducible response.

    ``params`` is the request's ``model_dump(mode="json")`` (defaults filled in, so an omitted
    default and an explicit one are already equal). The parts are hashed as one JSON object, so no
    concatenation of different parts can collide.
    """
    document = {
        "format": CACHE_FORMAT_VERSION,
        "endpoint": endpoint,
        "model": dict(model_fingerprint),
        "params": params,
    }
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


def value_key(key: str) -> str:
    """Redis key of the stored value. The ``{...}`` hash tag puts a request's keys in one cluster slot."""
    return f"{KEY_PREFIX}:{{{key}}}"


def lock_key(key: str) -> str:
    """Redis key of the cross-replica single-flight lock; same slot as :func:`value_key`."""
    return f"{KEY_PREFIX}:{{{key}}}:lock"


def is_reproducible(temperature: float, seed: int | None) -> bool:
    """Greedy decoding and seeded sampling give the same answer again; unseeded sampling does not."""
    return temperature <= 0 or seed is not None
