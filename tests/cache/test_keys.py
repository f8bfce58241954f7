"""Cache keys: equal for requests that must give the same answer, different for any that may not."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from redis.crc import key_slot

from service.cache import keys
from service.cache.keys import is_reproducible, lock_key, request_key, value_key

FINGERPRINT = {
    "id": "smollm2-135m-instruct",
    "revision": "a" * 64,
    "tokenizer": "b" * 64,
    "dtype": "float32",
    "device": "cpu",
}

PROPERTY = settings(database=None, deadline=None, max_examples=150)

# JSON values as model_dump(mode="json") produces them: str keys, finite or not floats, ints, bools.
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
params_st = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def key(params: Any, *, endpoint: str = "generate", fingerprint: dict[str, str] | None = None) -> str:
    return request_key(endpoint=endpoint, model_fingerprint=fingerprint or FINGERPRINT, params=params)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same value with every dict's insertion order permuted."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def integral_floats_as_ints(value: Any) -> Any:
    """What a client sending ``1`` instead of ``1.0`` (or ``-0.0`` instead of ``0``) looks like."""
    if isinstance(value, dict):
        return {k: integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def test_key_is_a_sha256_hex_digest() -> None:
    k = key({"prompt": "hi"})
    assert len(k) == 64
    assert int(k, 16) >= 0


@PROPERTY
@given(params_st, st.randoms(use_true_random=False))
def test_key_ignores_dict_order(params: dict[str, Any], rng: random.Random) -> None:
    assert key(shuffled(params, rng)) == key(params)


@PROPERTY
@given(params_st)
def test_key_ignores_whitespace_of_the_json_it_came_from(params: dict[str, Any]) -> None:
    compact = json.loads(json.dumps(params, separators=(",", ":")))
    spaced = json.loads(json.dumps(params, indent=3))
    assert key(compact) == key(spaced) == key(params)


@PROPERTY
@given(params_st)
def test_key_ignores_int_versus_integral_float(params: dict[str, Any]) -> None:
    assert key(integral_floats_as_ints(params)) == key(params)


def test_key_normalises_floats() -> None:
    base = key({"temperature": 1, "top_p": 0})
    assert key({"temperature": 1.0, "top_p": 0.0}) == base
    assert key({"temperature": 1.0, "top_p": -0.0}) == base
    assert key({"temperature": 1.0000000000000002, "top_p": 0.0}) != base  # a different float


def test_key_keeps_types_that_mean_different_things_apart() -> None:
    variants = [True, 1, "1", [1], {"a": 1}, None, 1.5, float("inf"), float("-inf"), float("nan"), "NaN"]
    assert len({key({"x": v}) for v in variants}) == len(variants)


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, (*prefix, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*prefix, i))]
    return [prefix]


def different(value: Any) -> Any:
    """A value that cannot mean the same as *value* (different type or different number/text)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float) and value == value:  # not NaN
        return value + 1 if abs(value) < 2**52 else "other"
    if isinstance(value, str):
        return value + "x"
    return 7


@PROPERTY
@given(params_st.filter(bool), st.data())
def test_any_change_of_a_parameter_changes_the_key(params: dict[str, Any], data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(leaf_paths(params)))
    changed = copy.deepcopy(params)
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = different(target[path[-1]])
    assert key(changed) != key(params)


@PROPERTY
@given(params_st, st.text(max_size=8), json_values)
def test_adding_a_parameter_changes_the_key(params: dict[str, Any], name: str, value: Any) -> None:
    if name not in params:
        assert key({**params, name: value}) != key(params)


@pytest.mark.parametrize("field", sorted(FINGERPRINT))
def test_any_change_of_the_model_fingerprint_changes_the_key(field: str) -> None:
    assert key({"prompt": "hi"}, fingerprint={**FINGERPRINT, field: FINGERPRINT[field] + "-2"}) != key({"prompt": "hi"})


def test_endpoint_and_format_version_are_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    base = key({"prompt": "hi"})
    assert key({"prompt": "hi"}, endpoint="explain") != base
    monkeypatch.setattr(keys, "CACHE_FORMAT_VERSION", keys.CACHE_FORMAT_VERSION + 1)
    assert key({"prompt": "hi"}) != base


def test_parts_cannot_bleed_into_each_other() -> None:
    # Moving text between endpoint and params must not produce the same digest.
    assert key({"a": "b"}, endpoint="generate") != key({"": "b"}, endpoint="generatea")


def test_non_string_dict_keys_are_refused() -> None:
    with pytest.raises(TypeError):
        key({1: "a"})
    with pytest.raises(TypeError):
        key({"x": object()})


class GenerateParams(BaseModel):
    """A request model like the real ones: defaults that a client may omit or send explicitly."""

    prompt: str
    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = []


def test_omitted_and_explicit_defaults_share_a_key() -> None:
    omitted = GenerateParams.model_validate_json('{"prompt": "hi"}')
    explicit = GenerateParams.model_validate_json(
        '{ "stop": [], "seed": null, "top_p": 1, "temperature": 0, "max_new_tokens": 16, "prompt": "hi" }'
    )
    assert key(omitted.model_dump(mode="json")) == key(explicit.model_dump(mode="json"))
    changed = GenerateParams.model_validate_json('{"prompt": "hi", "top_p": 0.9}')
    assert key(changed.model_dump(mode="json")) != key(omitted.model_dump(mode="json"))


def test_value_and_lock_share_one_cluster_slot() -> None:
    digests = [key({"n": n}) for n in range(50)]
    for digest in digests:
        assert value_key(digest) != lock_key(digest)
        assert key_slot(value_key(digest).encode()) == key_slot(lock_key(digest).encode())
    assert len({key_slot(value_key(d).encode()) for d in digests}) > 1  # the tag is the digest, not a constant


@pytest.mark.parametrize(
    ("temperature", "seed", "expected"),
    [(0.0, None, True), (0.0, 3, True), (0.7, 3, True), (0.7, None, False), (1.0, 0, True)],
)
def test_only_greedy_or_seeded_requests_are_reproducible(temperature: float, seed: int | None, expected: bool) -> None:
    assert is_reproducible(temperature, seed) is expected
