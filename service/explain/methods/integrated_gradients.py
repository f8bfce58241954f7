"""Integrated gradients (Sundararajan et al., 2017) on the input embeddings, sharing work across targets.

With teacher forcing, one forward over a batch of interpolated sequences gives every target's output at
every step; each target then needs one (batched) backward per step chunk, weighted by the quadrature.
Only the explained sources move along the path: positions in a unit (template and special tokens, and
with `segments` everything outside them, stay at their real embedding), so each row satisfies completeness:
its scores sum to f(input) − f(input with the explained sources at the baseline). Sequence scope moves only
the sources before the span, keeping the span itself fixed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from service.explain import forward as fw
from service.explain.baselines import baseline_vector
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_SUPPORTS, Method, MethodOutput, register
from service.explain.options import IntegratedGradientsParams
from service.explain.task import Task


def quadrature(rule: str, n: int) -> tuple[list[float], list[float]]:
    """(alphas, weights) on [0, 1] of Captum's rules of the same name; every rule's weights sum to 1.

    The trapezoid differs from Captum's on purpose: Captum spaces ``n`` nodes over [0, 1] (a spacing of
    1/(n−1)) but weights them by 1/n, so its weights sum to (n−1)/n and its scores fall 1/n short of
    completeness (6% at 16 steps). Here the weights are the true trapezoid's: 1/(n−1), halved at the ends.
    """
    if rule == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(n)
        return (0.5 * (1 + points)).tolist(), (0.5 * weights).tolist()
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("`riemann_trapezoid` needs at least 2 steps")
        alphas = np.linspace(0.0, 1.0, n).tolist()
        steps = [1 / (n - 1)] * n
        steps[0] /= 2
        steps[-1] /= 2
        return alphas, steps
    if rule == "riemann_middle":
        return torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist(), [1 / n] * n
    raise ValueError(f"unknown quadrature rule {rule!r}")


def moving(task: Task) -> list[bool]:
    """Per position: does it move along the path? The explained sources only, i.e. included positions that
    belong to a unit; with `segments` the rest of the prompt keeps its real embedding, so a row's scores sum
    to f(input) − f(input with only the units at the baseline)."""
    in_unit = [not task.units] * task.seq_len
    for unit in task.units:
        for p in unit:
            in_unit[p] = True
    return [inc and unit for inc, unit in zip(task.included, in_unit, strict=True)]


def _path(x: torch.Tensor, mask: list[bool], baseline: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, delta): the path is start + alpha * delta; unmasked positions stay at their embedding."""
    keep = torch.tensor(mask, device=x.device).unsqueeze(-1)
    delta = torch.where(keep, x - baseline, torch.zeros_like(x))
    return x - delta, delta


def _steps(alphas: list[float], weights: list[float], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    chunks = []
    for i in range(0, len(alphas), size):
        chunk = (alphas[i : i + size], weights[i : i + size])
        chunks.append((torch.tensor(chunk[0], dtype=torch.float64), torch.tensor(chunk[1], dtype=torch.float64)))
    return chunks


def tokens_ig(ctx: Context, opts: IntegratedGradientsParams) -> torch.Tensor:
    """[R, T]: per row, integrated gradients over all scored sources."""
    task = ctx.task
    x = ctx.embeddings
    start, delta = _path(x, moving(task), baseline_vector(ctx.model, opts.baseline, ctx.task.pad_id))
    alphas, weights = quadrature(opts.rule, opts.n_steps)
    count = len(task.rows)
    total = torch.zeros(count, task.seq_len, dtype=torch.float64)
    keep = fw.predicting(task.rows, ctx.device)
    for alpha, weight in _steps(alphas, weights, task.chunks.steps):
        alpha = alpha.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
        leaf = (start + alpha * delta).requires_grad_(True)  # [k, T, d]
        scores = ctx.row_scores(fw.run(ctx.model, leaf, keep).logits)  # [k, R]
        for first in range(0, count, task.chunks.ig_targets):
            chunk = range(first, min(count, first + task.chunks.ig_targets))
            vectors = fw.one_hot_rows(chunk, count, leaf.shape[0], weight.to(x.device), scores)
            grads = fw.batched_input_grads(scores, leaf, vectors, keep_graph=chunk.stop < count)
            total[chunk.start : chunk.stop] += (grads.sum(1) * delta).sum(-1).double().cpu()
            ctx.unit("integrated_gradients")
        del scores, leaf
    return total.float()


def sequence_ig(ctx: Context, opts: IntegratedGradientsParams) -> torch.Tensor:
    """[S]: integrated gradients of the span's function over the sources before it (minus the contrast's)."""
    task = ctx.task
    sources = task.sequence_sources
    x = ctx.embeddings
    mask = [move and p < sources for p, move in enumerate(moving(task))]
    baseline = baseline_vector(ctx.model, opts.baseline, ctx.task.pad_id)
    start, delta = _path(x, mask, baseline)
    alphas, weights = quadrature(opts.rule, opts.n_steps)
    total = torch.zeros(sources, dtype=torch.float64)
    span_keep = fw.predicting(range(*task.span), ctx.device)
    contrast = task.contrast_sequence
    if contrast is not None:
        x2 = fw.embed(ctx.model, contrast)
        start2, delta2 = _path(x2, mask[:sources] + [False] * (len(contrast) - sources), baseline)
    for alpha, weight in _steps(alphas, weights, task.chunks.steps):
        alpha = alpha.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
        leaf = (start + alpha * delta).requires_grad_(True)
        score = ctx.span_score(fw.run(ctx.model, leaf, span_keep).logits)  # [k]
        (grad,) = torch.autograd.grad(score, leaf, weight.to(score))
        total += (grad.sum(0)[:sources] * delta[:sources]).sum(-1).double().cpu()
        if contrast is not None:
            leaf2 = (start2 + alpha * delta2).requires_grad_(True)
            score2 = ctx.contrast_score(leaf2)
            (grad2,) = torch.autograd.grad(score2, leaf2, weight.to(score2))
            total -= (grad2.sum(0)[:sources] * delta2[:sources]).sum(-1).double().cpu()
        ctx.unit("integrated_gradients")
    return total.float()


@register
class IntegratedGradients(Method):
    name = "integrated_gradients"
    sign = SIGN_SUPPORTS

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        opts: IntegratedGradientsParams = options
        work = 0
        if shape.tokens_scope:
            work += opts.n_steps * shape.seq_len * (1 + shape.rows)
        if shape.sequence_scope:
            work += opts.n_steps * 2 * (shape.seq_len + (shape.contrast_seq_len if shape.contrast_len else 0))
        memory = dims.graph_bytes(1, shape.seq_len, shape.rows, False) + dims.backward_bytes(
            1, 1, shape.seq_len, shape.rows
        )
        return Cost(work=work, memory=memory)

    def units(self, task: Task) -> int:
        opts: IntegratedGradientsParams = task.methods[self.name]
        step_chunks = math.ceil(opts.n_steps / task.chunks.steps)
        rows = math.ceil(len(task.rows) / task.chunks.ig_targets) if "tokens" in task.scopes and task.rows else 0
        return step_chunks * (rows + ("sequence" in task.scopes))

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: IntegratedGradientsParams = options
        tokens = tokens_ig(ctx, opts) if "tokens" in ctx.task.scopes and ctx.task.rows else None
        sequence = sequence_ig(ctx, opts) if "sequence" in ctx.task.scopes else None
        return MethodOutput(
            tokens=None if tokens is None else tokens.numpy(),
            sequence=None if sequence is None else sequence.numpy(),
            params={**dataclasses.asdict(opts), "layer": "input embeddings"},
        )
