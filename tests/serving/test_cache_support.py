"""The per-model decode facts: decode mode and batching for the kinds of cache transformers makes, and a
model that cannot generate at all is refused with a 422 before any request is queued."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from service.engine.sampling import SamplingParams
from service.errors import InvalidRequest
from service.models.loaded import LoadedModel
from service.serving.batcher import Batcher
from service.serving.cache_support import batching_support, cache_support, decode_mode, generation_refusal, probe
from tests.families import zoo


@pytest.mark.parametrize(
    ("family", "mode", "batching", "reason"),
    [
        ("llama_gqa", "cache", True, None),
        ("mistral", "cache", True, None),  # sliding-window layers, window 4,096
        ("gemma2", "cache", True, None),  # sliding and full layers mixed
        ("minimax", "cache", False, "cache_class"),
        ("jamba", "cache", False, "cache_layer"),
        ("rwkv", "state", False, "recurrent_state"),
        ("recurrent_gemma", "recompute", False, "no_cache"),
    ],
)
def test_decode_mode_and_batching_by_kind_of_cache(family: str, mode: str, batching: bool, reason: str | None) -> None:
    model, _ = zoo.build(family)
    support = cache_support(model)
    assert (support.decode_mode, support.batching, support.reason) == (mode, batching, reason)
    assert decode_mode(model) == mode and generation_refusal(model) is None
    ok, why = batching_support(model)
    assert ok == batching and (why is None) == batching
    assert cache_support(model) is support  # probed once, kept


def test_a_model_that_cannot_run_is_refused_with_422() -> None:
    model, tokenizer = zoo.build("llama_gqa")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this model's kernels are missing")

    model.forward = broken  # type: ignore[method-assign]
    support = probe(model)
    assert support.refusal is not None and "kernels are missing" in support.refusal and not support.batching
    lm = LoadedModel("broken", "broken", model, tokenizer, torch.device("cpu"), torch.float32, "r", 256)
    batcher = Batcher(lm, max_batch_size=4)
    with pytest.raises(InvalidRequest, match="cannot generate") as error:
        asyncio.run(batcher.generate([1, 2, 3], SamplingParams(max_new_tokens=2)))
    assert error.value.status == 422 and not batcher.has_work()
