"""Attention for the explained rows only: equal to transformers' eager weights on every family whose attention
goes through the attention interface, without switching the model to eager, and priced linearly in length."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from service.explain import methods as registry
from service.explain.cost import ModelDims, Shape
from service.explain.engine import explain
from service.explain.methods.base import attention_mode
from service.explain.options import AttentionParams
from service.models.facts import facts_of
from tests.explain.conftest import make_task
from tests.families import zoo

LENGTH = 20  # longer than the zoo's sliding windows (8), so windowed masks are exercised
PROMPT = 12


def _record_families() -> list[str]:
    out = []
    for family in zoo.FAMILIES:
        model, _ = zoo.build(family)
        if facts_of(model).attention_rows:
            out.append(family)
    return out


RECORD = _record_families()


def _reference(model: Any, ids: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Decoder layer -> [H, T, T] eager weights from transformers itself."""
    facts = facts_of(model)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), use_cache=False, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    atts = [a for a in out.attentions if a is not None]
    layers = facts.attention_layers
    if len(atts) != len(layers):  # one entry per layer, other layers' states in between
        atts = [out.attentions[i] for i in layers]
    return {layer: a[0] for layer, a in zip(layers, atts, strict=True)}


@pytest.mark.parametrize("family", RECORD)
def test_rows_equal_eager_weights_without_eager_attention(family: str) -> None:
    model, _ = zoo.build(family)
    generator = torch.Generator().manual_seed(3)
    ids = tuple(torch.randint(5, 200, (LENGTH,), generator=generator).tolist())
    seen: list[str] = []
    handle = model.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    serving = model.config._attn_implementation
    try:
        opts = AttentionParams(reduce_heads="none", reduce_layers="none")
        result = explain(model, make_task(ids, {"attention": opts}, prompt_len=PROMPT))
    finally:
        handle.remove()
    assert attention_mode([registry.get("attention")], facts_of(model)) == "rows"
    assert seen and all(s == "glassbox_rows" for s in seen)
    assert model.config._attn_implementation == serving
    reference = _reference(model, ids)
    out = result.outputs["attention"]
    layers = out.params["layers"]
    expected = np.stack([reference[layer][:, [r - 1 for r in range(PROMPT, LENGTH)]].numpy() for layer in layers])
    assert out.tokens is not None
    np.testing.assert_allclose(out.tokens, expected, rtol=1e-4, atol=1e-6)
    span = np.stack([reference[layer][:, PROMPT - 1 : LENGTH - 1, :PROMPT].mean(1).numpy() for layer in layers])
    assert out.sequence is not None
    np.testing.assert_allclose(out.sequence, span, rtol=1e-4, atol=1e-6)


def test_rollout_or_attention_gradient_keep_full_matrices() -> None:
    model, _ = zoo.build("llama_gqa")
    facts = facts_of(model)
    for other in ("attention_rollout", "attention_gradient"):
        assert attention_mode([registry.get("attention"), registry.get(other)], facts) == "full"
    for family in ("bloom", "gemma2"):  # weights only from output_attentions / eager soft-capping
        other, _ = zoo.build(family)
        assert attention_mode([registry.get("attention")], facts_of(other)) == "full"
    assert attention_mode([registry.get("saliency")], facts) == "none"


def test_rows_cost_memory_grows_linearly_with_length() -> None:
    model, _ = zoo.build("llama_gqa")
    dims = ModelDims.of(facts_of(model))
    assert dims.attention_rows

    def memory(seq: int, rows_mode: bool) -> int:
        shape = Shape(seq, 64, 64, 64, seq - 64, seq - 64, seq - 64, 0, True, False)
        d = dims if rows_mode else ModelDims(**{**dims.__dict__, "attention_rows": False})
        return registry.get("attention").cost(shape, d, AttentionParams()).memory

    assert memory(8192, True) <= 4.5 * memory(2048, True)
    assert memory(8192, False) >= 12 * memory(2048, False)  # full matrices: quadratic
