"""Rollout over the explained rows only equals rows of the full T × T product (float64 tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.errors import InvalidRequest
from service.explain.cost import ModelDims, Shape
from service.explain.engine import explain
from service.explain.methods.rollout import AttentionRollout, rollout, rollout_rows
from service.explain.options import RolloutParams
from service.models.facts import facts_of
from tests.explain.conftest import make_task
from tests.explain.oracle import eager_attentions


def _full(atts: list[torch.Tensor], residual: float) -> np.ndarray:
    """The full product in float64 with NumPy: Â_L ⋯ Â_1, Â = rownorm((1 − r)·mean_h A + r·I)."""
    size = atts[0].shape[-1]
    result = np.eye(size)
    for layer in atts:
        mixed = (1 - residual) * layer.double().mean(0).numpy() + residual * np.eye(size)
        mixed /= mixed.sum(-1, keepdims=True)
        result = mixed @ result
    return result


@pytest.mark.parametrize("residual", [0.0, 0.5, 0.9])
def test_row_propagation_equals_the_full_product(model, ids, residual):
    atts = eager_attentions(model, ids)
    queries = [0, 5, 8, 13]
    rows = rollout_rows(atts, residual, queries)
    assert rows.dtype == torch.float64
    full = _full(atts, residual)
    np.testing.assert_allclose(rows.numpy(), full[queries], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rollout([a.mean(0) for a in atts], residual).numpy(), full, rtol=1e-12, atol=1e-14)


def test_engine_rollout_rows_and_sequence(model, ids):
    out = explain(model, make_task(ids, {"attention_rollout": RolloutParams(residual=0.5)})).outputs
    full = _full(eager_attentions(model, ids), 0.5)
    result = out["attention_rollout"]
    np.testing.assert_allclose(result.tokens, full[8:13], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.sequence, full[8:13, :9].mean(0), rtol=1e-6, atol=1e-9)


def test_rollout_through_chosen_layers(model, ids):
    opts = RolloutParams(residual=0.3, layers=(-1, 0))
    out = explain(model, make_task(ids, {"attention_rollout": opts}, scopes=frozenset({"tokens"}))).outputs
    atts = eager_attentions(model, ids)
    full = _full([atts[0], atts[2]], 0.3)  # model order, whatever order they were given in
    np.testing.assert_allclose(out["attention_rollout"].tokens, full[8:13], rtol=1e-6, atol=1e-9)
    assert out["attention_rollout"].params["layers"] == [0, 2]


def test_rollout_layer_out_of_range_is_refused(model):
    with pytest.raises(InvalidRequest) as err:
        AttentionRollout().validate(facts_of(model), RolloutParams(layers=(3,)))
    assert err.value.param == "attention_rollout.layers"


def _shape(seq: int, rows: int) -> Shape:
    return Shape(
        seq_len=seq,
        answer_len=rows,
        rows=rows,
        span_len=rows,
        sequence_sources=seq - rows,
        units=seq,
        sequence_units=seq - rows,
        contrast_len=0,
        tokens_scope=True,
        sequence_scope=True,
    )


def test_rollout_cost_counts_the_row_products():
    dims = ModelDims(layers=30, heads=9, hidden=576, intermediate=1536, vocab=49152, elem=4)
    small, more_rows, longer = (
        AttentionRollout().cost(s, dims, RolloutParams())
        for s in (_shape(2000, 10), _shape(2000, 40), _shape(4000, 10))
    )
    expected = 30 * (9 + 2 * 20) * 2000 * 2000  # layers × (head mean + v·A for rows and span rows) × T²
    assert small.work == dims.token_passes(expected) > 0
    assert more_rows.work > small.work and longer.work > 3 * small.work
    fewer_layers = AttentionRollout().cost(_shape(2000, 10), dims, RolloutParams(layers=(0, 1, 2)))
    assert fewer_layers.work * 10 == pytest.approx(small.work, rel=0.01)
