"""Stored values: exact round trip, raw numeric arrays, and one exception type for anything corrupt."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from service.cache import codec
from service.cache.codec import CodecError, decode, encode

PROPERTY = settings(database=None, deadline=None, max_examples=150)

finite = st.floats(allow_nan=False)  # NaN != NaN, so it gets its own bitwise test below
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | st.text(max_size=10)
float32s = st.floats(width=32, allow_nan=False).map(float)
arrays = (
    st.lists(finite, min_size=codec.MIN_ARRAY_LEN, max_size=40)
    | st.lists(float32s, min_size=codec.MIN_ARRAY_LEN, max_size=40)
    | st.lists(st.integers(-(2**63), 2**63 - 1), min_size=codec.MIN_ARRAY_LEN, max_size=40)
    | st.lists(st.integers(-200, 200), min_size=codec.MIN_ARRAY_LEN, max_size=40)
    | st.lists(finite | st.integers(-5, 5), min_size=codec.MIN_ARRAY_LEN, max_size=20)  # mixed: plain
)
json_values = st.recursive(
    scalars | arrays,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=30,
)
bodies = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def same(a: Any, b: Any) -> bool:
    """Equality that also tells -0.0 from 0.0 and int from float (== does neither)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


@PROPERTY
@given(bodies)
def test_round_trip_is_exact(body: dict[str, Any]) -> None:
    decoded = decode(encode(body))
    assert decoded == body
    assert same(decoded, body)


def test_nan_and_signed_zero_survive_bit_for_bit() -> None:
    body = {"a": [math.nan, -0.0, 0.0, math.inf, -math.inf, 5e-324, 1.0, 2.0, 3.0]}
    decoded = decode(encode(body))["a"]
    assert [struct.pack("<d", x) for x in decoded] == [struct.pack("<d", x) for x in body["a"]]


def test_long_numeric_lists_are_stored_as_raw_arrays() -> None:
    body = {
        "f64": [1 / 3 + i for i in range(100)],
        "f32": [float(np.float32(1 / 3 + i)) for i in range(100)],
        "ids": list(range(100)),
        "short": [0.5, 1.5],
    }
    raw = zstandard.ZstdDecompressor().decompress(encode(body)[len(codec.MAGIC) :])
    tree = msgpack.unpackb(raw, raw=False)  # no ext_hook: see the extension values themselves
    assert isinstance(tree["f64"], msgpack.ExtType)
    assert len(tree["f64"].data) == 100 * 8
    assert len(tree["f32"].data) == 100 * 4  # exactly float32-representable: half the bytes
    assert len(tree["ids"].data) == 100 * 1  # fits int8
    assert tree["short"] == [0.5, 1.5]


def test_encoded_values_are_much_smaller_than_json() -> None:
    rng = np.random.default_rng(0)
    attention = rng.random((4, 4, 32, 32), dtype=np.float32).tolist()
    body = {"attention": attention, "logprobs": rng.normal(size=256).tolist(), "ids": list(range(256))}
    assert decode(encode(body)) == body
    assert len(encode(body)) < len(json.dumps(body)) / 2.5


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a cache value",
        codec.MAGIC,
        codec.MAGIC + b"\x00" * 32,
        codec.MAGIC + zstandard.ZstdCompressor().compress(b"\xc1"),  # msgpack "never used" byte
        codec.MAGIC + zstandard.ZstdCompressor().compress(msgpack.packb([1, 2, 3])),  # not a dict
        codec.MAGIC + zstandard.ZstdCompressor().compress(msgpack.packb({"a": msgpack.ExtType(99, b"x")})),
        codec.MAGIC + zstandard.ZstdCompressor().compress(msgpack.packb({"a": msgpack.ExtType(1, b"x" * 7)})),
        codec.MAGIC + zstandard.ZstdCompressor().compress(msgpack.packb({1: "int key"})),
        b"GBC\x00" + encode({"a": 1})[4:],  # another format version
    ],
)
def test_malformed_values_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


@PROPERTY
@given(bodies, st.data())
def test_damaged_values_raise_codec_error_never_a_wrong_answer(body: dict[str, Any], data: st.DataObject) -> None:
    blob = bytearray(encode(body))
    position = data.draw(st.integers(0, len(blob) - 1))
    if data.draw(st.booleans()):
        blob[position] ^= 1 << data.draw(st.integers(0, 7))
    else:
        del blob[position:]
    try:
        decoded = decode(bytes(blob))
    except CodecError:
        return  # the only exception allowed
    assert decoded == body  # damage that still decodes must not change the answer


def test_frames_carry_a_checksum() -> None:
    # A flipped bit inside the compressed payload must not decode to a different dict.
    blob = bytearray(encode({"text": "x" * 200, "n": list(range(64))}))
    blob[len(blob) // 2] ^= 0x10
    with pytest.raises(CodecError):
        decode(bytes(blob))


@pytest.mark.parametrize("body", [{1: "a"}, {"a": object()}, {"a": 2**64}, {"a": {2: 3}}])
def test_unencodable_bodies_raise_codec_error(body: dict[Any, Any]) -> None:
    with pytest.raises(CodecError):
        encode(body)
