"""Quadrature rules of integrated gradients: analytic identities, and exact completeness on a linear model."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from service.explain.engine import explain
from service.explain.methods.integrated_gradients import quadrature
from service.explain.options import IntegratedGradientsParams
from tests.explain.conftest import make_task

RULES = ("riemann_trapezoid", "gausslegendre", "riemann_middle")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [2, 3, 7, 16, 64])
def test_weights_sum_to_one_and_nodes_lie_in_the_unit_interval(rule, n):
    alphas, weights = quadrature(rule, n)
    assert len(alphas) == len(weights) == n
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-12)
    assert all(0.0 <= a <= 1.0 for a in alphas) and all(w > 0 for w in weights)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_trapezoid_is_the_composite_trapezoid_rule(n):
    """Nodes at k/(n−1), weights h = 1/(n−1) halved at the ends: ∫₀¹ of a line exactly, of x² with error
    h²/6 (the rule's analytic error term), so a rule with the wrong spacing or scale fails."""
    alphas, weights = quadrature("riemann_trapezoid", n)
    h = 1 / (n - 1)
    np.testing.assert_allclose(alphas, [k * h for k in range(n)], atol=1e-12)
    assert math.fsum(w * (3 * a + 2) for a, w in zip(alphas, weights, strict=True)) == pytest.approx(3.5, abs=1e-12)
    square = math.fsum(w * a * a for a, w in zip(alphas, weights, strict=True))
    assert square - 1 / 3 == pytest.approx(h * h / 6, abs=1e-12)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_gauss_legendre_is_exact_up_to_degree_2n_minus_1(n):
    alphas, weights = quadrature("gausslegendre", n)
    for degree in range(2 * n):
        integral = math.fsum(w * a**degree for a, w in zip(alphas, weights, strict=True))
        assert integral == pytest.approx(1 / (degree + 1), abs=1e-12)


class _Linear(torch.nn.Module):
    """A causal model whose logits are linear in the input embeddings: logits[p] = (Σ_{q≤p} x_q) W.

    It speaks the part of the transformers interface the engine uses (``inputs_embeds``, ``logits_to_keep``).
    """

    def __init__(self, vocab: int = 48, dim: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.config = SimpleNamespace(_attn_implementation="eager", num_hidden_layers=0)
        self.embed = torch.nn.Embedding(vocab, dim).double()
        self.embed.weight.data = torch.randn(vocab, dim, generator=generator, dtype=torch.float64)
        self.head = torch.nn.Parameter(torch.randn(dim, vocab, generator=generator, dtype=torch.float64))
        self.requires_grad_(False)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def forward(self, inputs_embeds: torch.Tensor, logits_to_keep: torch.Tensor, **_: Any) -> SimpleNamespace:
        logits = inputs_embeds.cumsum(1) @ self.head
        if logits_to_keep.dim() == 1:
            return SimpleNamespace(logits=logits[:, logits_to_keep])
        return SimpleNamespace(
            logits=torch.gather(logits, 1, logits_to_keep[..., None].expand(-1, -1, logits.shape[-1]))
        )


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline", ["zero", "pad", "mean"])
def test_completeness_is_exact_on_a_linear_function(ids, rule, baseline):
    """On f linear in the embeddings the path integral is f(x) − f(b) for any rule whose weights sum to 1;
    Captum's trapezoid, summing to (n−1)/n, would be 1/3 short here (3 steps)."""
    model = _Linear()
    task = make_task(
        ids,
        {"integrated_gradients": IntegratedGradientsParams(3, baseline, rule, keep_first=False)},
        function="logit",
        pad_id=7,
    )
    out = explain(model, task).outputs["integrated_gradients"]  # type: ignore[arg-type]
    x = model.embed(torch.tensor(ids))
    base = {
        "zero": torch.zeros(16, dtype=torch.float64),
        "pad": model.embed.weight[7],
        "mean": model.embed.weight.mean(0),
    }
    delta = x - base[baseline]
    for i, t in enumerate(task.rows):
        # the row's logit is (Σ_{q<t} x_q) W[:, id_t]: its exact change between input and baseline
        expected = float(delta[:t].sum(0) @ model.head[:, ids[t]])
        scale = float(np.abs(out.tokens[i]).sum())  # the output is float32: rounding relative to the terms
        assert out.tokens[i].sum() == pytest.approx(expected, abs=1e-6 * scale)
    sources = task.sequence_sources
    span_change = sum(float(delta[:sources].sum(0) @ model.head[:, ids[t]]) for t in range(*task.span))
    assert out.sequence.sum() == pytest.approx(span_change, abs=1e-6 * float(np.abs(out.sequence).sum()))
