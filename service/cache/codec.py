"""Stored-value codec: a JSON-able dict to compact bytes and back, exactly.

Layout: ``MAGIC`` (with the format version) + a checksummed zstd frame of msgpack(tree). Long
homogeneous lists of floats or ints (logprobs, attention rows, token ids) become msgpack extension
values holding raw little-endian numbers: float32 when every value survives the round trip through
float32 exactly (model outputs usually do), else float64; ints in the narrowest of int8..int64.
Decoding gives back Python floats and ints, so ``decode(encode(d)) == d`` for any dict of JSON types
(tuples come back as lists).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import zstandard

from service.cache.keys import CACHE_FORMAT_VERSION

MAGIC = b"GBC" + bytes([CACHE_FORMAT_VERSION])
#: Lists shorter than this stay plain msgpack: an extension header would cost more than it saves.
MIN_ARRAY_LEN = 8
#: Decompression refuses to produce more than this, so a corrupt header cannot exhaust memory.
MAX_DECODED_BYTES = 1 << 30
ZSTD_LEVEL = 3

# Extension type codes: the dtype of the raw array that follows.
_EXT_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f8"),
    2: np.dtype("<f4"),
    3: np.dtype("<i1"),
    4: np.dtype("<i2"),
    5: np.dtype("<i4"),
    6: np.dtype("<i8"),
}
_EXT_CODES = {dtype: code for code, dtype in _EXT_DTYPES.items()}
_INT_DTYPES = [np.dtype(t) for t in ("<i1", "<i2", "<i4", "<i8")]


class CodecError(ValueError):
    """A value could not be encoded, or stored bytes could not be decoded (corrupt, foreign, old)."""


def _float_array(values: list[Any]) -> msgpack.ExtType:
    wide = np.array(values, dtype="<f8")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and so stay float64
        narrow = wide.astype("<f4")
    # Exact only if float32 -> float64 restores every value (NaN never compares equal: stays f8).
    arr = narrow if np.array_equal(narrow.astype("<f8"), wide) else wide
    return msgpack.ExtType(_EXT_CODES[arr.dtype], arr.tobytes())


def _int_array(values: list[int]) -> msgpack.ExtType | None:
    lo, hi = min(values), max(values)
    for dtype in _INT_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return msgpack.ExtType(_EXT_CODES[dtype], np.array(values, dtype=dtype).tobytes())
    return None  # beyond int64: plain msgpack (or an encode error past uint64)


def _pack_tree(value: Any) -> Any:
    """Replace long homogeneous numeric lists with raw-array extension values."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CodecError("cache values need string keys (JSON objects)")
        return {k: _pack_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) >= MIN_ARRAY_LEN:
            kinds = {type(v) for v in value}
            if kinds == {float}:
                return _float_array(list(value))
            if kinds == {int}:
                packed = _int_array(list(value))
                if packed is not None:
                    return packed
        return [_pack_tree(v) for v in value]
    return value


def _ext_hook(code: int, data: bytes) -> Any:
    dtype = _EXT_DTYPES.get(code)
    if dtype is None or len(data) % dtype.itemsize:
        raise CodecError(f"bad array extension {code} of {len(data)} bytes")
    if dtype.kind == "f":
        return np.frombuffer(data, dtype=dtype).astype("<f8").tolist()
    return np.frombuffer(data, dtype=dtype).tolist()


def encode(body: dict[str, Any]) -> bytes:
    """Compact bytes for a JSON-able dict. Raises :class:`CodecError` for what msgpack cannot hold."""
    try:
        packed = msgpack.packb(_pack_tree(body), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode cache value: {exc}") from exc
    # The frame checksum turns storage or transport damage into a decode error, not a different answer.
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    return MAGIC + compressor.compress(packed)


def decode(data: bytes) -> dict[str, Any]:
    """The dict :func:`encode` was given. Any malformed input raises :class:`CodecError`, nothing else."""
    if not data.startswith(MAGIC):
        raise CodecError("not a cache value of this format version")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data[len(MAGIC) :], max_output_size=MAX_DECODED_BYTES)
        value = msgpack.unpackb(raw, raw=False, ext_hook=_ext_hook, strict_map_key=True)
    except CodecError:
        raise
    except Exception as exc:  # zstd, msgpack and unicode errors have no common base class
        raise CodecError(f"corrupt cache value: {exc}") from exc
    if not isinstance(value, dict):
        raise CodecError(f"cache value is a {type(value).__name__}, not an object")
    return value
