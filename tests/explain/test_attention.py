"""Attention and attention rollout: probability rows, the causal mask, selection, reduction, the formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.errors import InvalidRequest
from service.explain.engine import explain
from service.explain.methods import attention
from service.explain.options import AttentionParams, RolloutParams
from service.models.facts import facts_of
from tests.explain.conftest import make_task
from tests.explain.oracle import eager_attentions


def _reference_attentions(model, ids) -> np.ndarray:
    """[L, H, T, T] straight from an eager forward."""
    return torch.stack(eager_attentions(model, ids)).numpy()


def test_attention_rows_sum_to_one_and_respect_the_causal_mask(model, ids):
    opts = AttentionParams(reduce_heads="none", reduce_layers="none")
    out = explain(model, make_task(ids, {"attention": opts})).outputs["attention"]
    assert out.lead_dims == ("layer", "head")
    assert out.tokens.shape == (3, 4, 5, 14)
    np.testing.assert_allclose(out.tokens.sum(-1), 1.0, rtol=1e-6)
    for i, t in enumerate(range(9, 14)):
        assert np.all(out.tokens[..., i, t:] == 0)  # a target's own position and later are never sources
        assert np.all(out.tokens[..., i, :t] > 0)


def test_attention_rows_are_the_predicting_positions_rows(model, ids):
    opts = AttentionParams(reduce_heads="none", reduce_layers="none")
    out = explain(model, make_task(ids, {"attention": opts})).outputs["attention"]
    reference = _reference_attentions(model, ids)
    np.testing.assert_allclose(out.tokens, reference[:, :, 8:13, :], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("heads", "layers"), [("mean", "mean"), ("max", "mean"), ("mean", "max"), ("none", "max")])
def test_attention_selection_and_reduction(model, ids, heads, layers):
    opts = AttentionParams(layers=[-1, 0], heads=[1, 3], reduce_heads=heads, reduce_layers=layers)
    out = explain(model, make_task(ids, {"attention": opts})).outputs["attention"]
    picked = _reference_attentions(model, ids)[[2, 0]][:, [1, 3]][:, :, 8:13, :]
    reduce = {"mean": np.mean, "max": np.max}
    expected = picked if heads == "none" else reduce[heads](picked, axis=1, keepdims=True)
    expected = reduce[layers](expected, axis=0)
    if heads != "none":
        expected = expected[0]
    np.testing.assert_allclose(out.tokens, expected, rtol=1e-6, atol=1e-9)
    assert out.params["layers"] == [2, 0]


def test_attention_sequence_is_the_mean_of_the_span_rows(model, ids):
    opts = AttentionParams()
    out = explain(model, make_task(ids, {"attention": opts}, span=(11, 14))).outputs["attention"]
    reference = _reference_attentions(model, ids).mean(axis=(0, 1))
    np.testing.assert_allclose(out.sequence, reference[10:13, :11].mean(0), rtol=1e-6, atol=1e-9)


def test_attention_layer_out_of_range_is_refused(model):
    with pytest.raises(InvalidRequest) as err:
        attention.Attention().validate(facts_of(model), AttentionParams(layers=[3]))
    assert err.value.param == "attention.layers"
    with pytest.raises(InvalidRequest):
        attention.Attention().validate(facts_of(model), AttentionParams(heads=[0, -4, 0]))


def _rollout_by_hand(att: np.ndarray, residual: float) -> np.ndarray:
    """Abnar & Zuidema: Ã_l = Â_l Ã_{l-1}, Â = (1-r)·mean_heads(A) + r·I, rows renormalised."""
    size = att.shape[-1]
    result = np.eye(size)
    for layer in att:
        mixed = (1 - residual) * layer.mean(0) + residual * np.eye(size)
        mixed /= mixed.sum(-1, keepdims=True)
        result = mixed @ result
    return result


@pytest.mark.parametrize("residual", [0.5, 0.0, 0.9])
def test_rollout_matches_the_formula(model, ids, residual):
    out = explain(model, make_task(ids, {"attention_rollout": RolloutParams(residual=residual)})).outputs
    expected = _rollout_by_hand(_reference_attentions(model, ids), residual)
    rollout = out["attention_rollout"]
    np.testing.assert_allclose(rollout.tokens, expected[8:13], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(rollout.tokens.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rollout.sequence, expected[8:13, :9].mean(0), rtol=1e-5, atol=1e-9)


def test_attention_comes_from_the_shared_forward(model, ids, monkeypatch):
    """Attention, rollout and gradients together: one forward over the sequence."""
    import service.explain.forward as fw

    calls = []
    real = fw.run

    def counting(*args, **kwargs):
        calls.append(kwargs.get("attentions", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(fw, "run", counting)
    methods = {"attention": AttentionParams(), "attention_rollout": RolloutParams(), "saliency": None}
    explain(model, make_task(ids, methods, scopes=frozenset({"tokens"})))
    assert calls == [True]
