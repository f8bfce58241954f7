"""Baselines are taken at the embedding module's output, so √d-scaled embeddings (Gemma) get the right ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM

from service.explain import baselines
from service.explain.baselines import baseline_vector, mean_embedding
from service.explain.engine import explain
from service.explain.options import IntegratedGradientsParams
from tests.explain import oracle
from tests.explain.conftest import make_task

PAD = 3
DIM = 16


@pytest.fixture(scope="module")
def gemma() -> GemmaForCausalLM:
    """A random tiny Gemma in float64: its embedding module multiplies the looked-up row by √d."""
    torch.manual_seed(0)
    config = GemmaConfig(
        vocab_size=48,
        hidden_size=DIM,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    model = GemmaForCausalLM(config).double().eval()
    with torch.no_grad():  # rows of a trained model's size; `padding_idx` would leave the pad row at zero
        model.get_input_embeddings().weight.copy_(0.5 * torch.randn(48, DIM, dtype=torch.float64))
    model.requires_grad_(False)
    return model


def _module_output(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(torch.tensor(ids))  # type: ignore[operator,no-any-return]


def test_gemma_scales_its_embedding_inside_the_module(gemma):
    """The premise: the module's output is √d times the weight row (else this file tests nothing)."""
    weight = gemma.get_input_embeddings().weight
    np.testing.assert_allclose(_module_output(gemma, [PAD])[0], weight[PAD] * math.sqrt(DIM), rtol=1e-12)


def test_pad_baseline_is_the_module_output_of_the_pad_id_not_the_raw_row(gemma):
    weight = gemma.get_input_embeddings().weight
    pad = baseline_vector(gemma, "pad", PAD)
    np.testing.assert_allclose(pad, _module_output(gemma, [PAD])[0], rtol=1e-12)
    assert not torch.allclose(pad, weight[PAD])
    # without an explicit id, the config's pad token
    np.testing.assert_allclose(baseline_vector(gemma, "pad"), pad, rtol=1e-12)


def test_mean_baseline_is_the_mean_module_output_over_the_vocabulary(gemma, monkeypatch):
    monkeypatch.setattr(baselines, "_MEAN_CHUNK", 5)  # several chunks, the last one partial
    baselines._MEANS.clear()
    every = _module_output(gemma, list(range(48)))
    mean = mean_embedding(gemma)
    np.testing.assert_allclose(mean, every.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(baseline_vector(gemma, "mean"), mean, rtol=0)
    weight = gemma.get_input_embeddings().weight
    assert not torch.allclose(mean, weight.mean(0))


def test_mean_is_cached_and_recomputed_when_the_weights_change(gemma):
    module = gemma.get_input_embeddings()
    first = mean_embedding(gemma)
    assert mean_embedding(gemma) is first
    saved = module.weight.detach().clone()
    try:
        with torch.no_grad():
            module.weight.add_(1.0)
        np.testing.assert_allclose(mean_embedding(gemma), first + math.sqrt(DIM), rtol=1e-12)
    finally:
        with torch.no_grad():
            module.weight.copy_(saved)
    np.testing.assert_allclose(mean_embedding(gemma), first, rtol=1e-12)


def test_zero_and_unknown_baselines(gemma):
    zero = baseline_vector(gemma, "zero")
    assert zero.shape == (DIM,) and zero.dtype == torch.float64 and not zero.any()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_vector(gemma, "noise")


def _module_baseline(model: torch.nn.Module, kind: str, length: int) -> torch.Tensor:
    every = _module_output(model, list(range(48)))
    return (every[PAD] if kind == "pad" else every.mean(0)).expand(1, length, -1)


@pytest.mark.parametrize("kind", ["pad", "mean"])
def test_ig_on_gemma_matches_captum_from_the_module_baseline(gemma, ids, kind):
    """The engine's rows equal Captum's with the baseline built from the module's output (raw weight rows
    would be √d = 4 times smaller)."""
    task = make_task(
        ids, {"integrated_gradients": IntegratedGradientsParams(8, kind, "gausslegendre", keep_first=False)}, pad_id=PAD
    )
    out = explain(gemma, task).outputs["integrated_gradients"]
    x = oracle.embeds(gemma, ids)
    base = _module_baseline(gemma, kind, len(ids))
    for i, t in list(enumerate(task.rows))[-2:]:  # Captum is slow: two rows (the longest) suffice
        reference = oracle.integrated_gradients(oracle.token_fn(gemma, ids, t), x, base, 8, "gausslegendre")
        np.testing.assert_allclose(out.tokens[i], reference.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["pad", "mean"])
def test_ig_on_gemma_is_complete_towards_the_module_baseline(gemma, ids, kind):
    """Scores sum to f(x) − f(module baseline) within 1% (a path of 32 steps)."""
    task = make_task(
        ids,
        {"integrated_gradients": IntegratedGradientsParams(32, kind, "gausslegendre", keep_first=False)},
        pad_id=PAD,
    )
    out = explain(gemma, task).outputs["integrated_gradients"]
    x = oracle.embeds(gemma, ids)
    base = _module_baseline(gemma, kind, len(ids))
    for i, t in enumerate(task.rows):
        fn = oracle.token_fn(gemma, ids, t)
        expected = oracle.value(fn, x) - oracle.value(fn, base)
        assert abs(out.tokens[i].sum() - expected) <= 0.01 * abs(expected)
