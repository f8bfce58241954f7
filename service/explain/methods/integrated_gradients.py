"""Integrated gradients (Sundararajan et al., 2017) on the input embeddings, sharing work across targets.

With teacher forcing, one forward over a batch of interpolated sequences gives every target's output at
every step; each target then needs one (batched) backward per step chunk, weighted by the quadrature.
Only the explained sources move along the path: positions in a unit (template and special tokens, and
with `segments` everything outside them, stay at their real embedding), so each row satisfies completeness:
its scores sum to f(input) − f(input with the explained sources at the baseline). Sequence scope moves only
the sources before the span, keeping the span itself fixed.

The first position is held too by default (`keep_first`): it is every causal LM's attention sink, and
moving its embedding off the token manifold makes f jump (on SmolLM2-135M by 6 nats within 1/1000 of
the path), so no quadrature converges; with it held, the path is smooth (make bench-ig, README).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.explain import forward as fw
from service.explain.baselines import baseline_vector
from service.explain.context import Context, accumulation_dtype
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


def moving(task: Task, keep_first: bool = False) -> list[bool]:
    """Per position: does it move along the path? The explained sources only, i.e. included positions that
    belong to a unit; with `segments` the rest of the prompt keeps its real embedding, so a row's scores sum
    to f(input) − f(input with only the units at the baseline). With ``keep_first`` position 0 (the
    attention sink) is held too."""
    in_unit = [not task.units] * task.seq_len
    for unit in task.units:
        for p in unit:
            in_unit[p] = True
    move = [inc and unit for inc, unit in zip(task.included, in_unit, strict=True)]
    if keep_first and move:
        move[0] = False
    return move


def _path(
    x: torch.Tensor, mask: list[bool], baseline: torch.Tensor, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, delta) in the accumulation dtype: the path is start + alpha * delta; unmasked positions stay
    at their embedding."""
    keep = torch.tensor(mask, device=x.device).unsqueeze(-1)
    xa = x.to(acc)
    delta = torch.where(keep, xa - baseline.to(acc), torch.zeros_like(xa))
    return xa - delta, delta


def _steps(alphas: list[float], weights: list[float], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    chunks = []
    for i in range(0, len(alphas), size):
        chunk = (alphas[i : i + size], weights[i : i + size])
        chunks.append((torch.tensor(chunk[0], dtype=torch.float64), torch.tensor(chunk[1], dtype=torch.float64)))
    return chunks


def _points(start: torch.Tensor, delta: torch.Tensor, alpha: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[k, T, d] path points in the model's dtype, computed in the accumulation dtype (then rounded once)."""
    return (start + alpha.to(device=start.device, dtype=start.dtype).view(-1, 1, 1) * delta).to(dtype)


def _weighted(grads: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Σ_steps weight × gradient × delta, reduced over the hidden dim in the accumulation dtype: [..., T].

    ``grads`` is [..., k, T, d] of unweighted gradients (the quadrature weights would lose digits as grad
    outputs in a bfloat16 model); it is upcast before any product or sum."""
    w = weight.to(device=delta.device, dtype=delta.dtype).view(-1, 1, 1)
    return ((grads.to(delta.dtype) * w).sum(-3) * delta).sum(-1)


@dataclass(frozen=True)
class Integral:
    """Scores of one scope and the endpoints of its path, for the completeness check."""

    scores: torch.Tensor  # [R, T] or [S], float64
    f_input: torch.Tensor  # [R] or [1]
    f_baseline: torch.Tensor  # [R] or [1]


def tokens_ig(ctx: Context, opts: IntegratedGradientsParams) -> Integral:
    """[R, T]: per row, integrated gradients over the explained sources."""
    task = ctx.task
    x = ctx.embeddings
    acc = accumulation_dtype(x.dtype)
    start, delta = _path(
        x, moving(task, opts.keep_first), baseline_vector(ctx.model, opts.baseline, ctx.task.pad_id), acc
    )
    alphas, weights = quadrature(opts.rule, opts.n_steps)
    count = len(task.rows)
    total = torch.zeros(count, task.seq_len, dtype=torch.float64)
    keep = fw.predicting(task.rows, ctx.device)
    for alpha, weight in _steps(alphas, weights, task.chunks.steps):
        leaf = _points(start, delta, alpha, x.dtype).requires_grad_(True)  # [k, T, d]
        scores = ctx.row_scores(fw.run(ctx.model, leaf, keep).logits)  # [k, R]
        for first in range(0, count, task.chunks.ig_targets):
            chunk = range(first, min(count, first + task.chunks.ig_targets))
            vectors = fw.one_hot_rows(chunk, count, leaf.shape[0], None, scores)
            grads = fw.batched_input_grads(scores, leaf, vectors, keep_graph=chunk.stop < count)  # [c, k, T, d]
            total[chunk.start : chunk.stop] += _weighted(grads, weight, delta).double().cpu()
            ctx.unit("integrated_gradients")
        del scores, leaf
    with torch.no_grad():  # the path's two ends, in one forward
        ends = ctx.row_scores(fw.run(ctx.model, _points(start, delta, torch.tensor([0.0, 1.0]), x.dtype), keep).logits)
    ctx.unit("integrated_gradients")
    ends = ends.double().cpu()
    return Integral(total, ends[1], ends[0])


def sequence_ig(ctx: Context, opts: IntegratedGradientsParams) -> Integral:
    """[S]: integrated gradients of the span's function over the sources before it (minus the contrast's)."""
    task = ctx.task
    sources = task.sequence_sources
    x = ctx.embeddings
    acc = accumulation_dtype(x.dtype)
    mask = [move and p < sources for p, move in enumerate(moving(task, opts.keep_first))]
    baseline = baseline_vector(ctx.model, opts.baseline, ctx.task.pad_id)
    start, delta = _path(x, mask, baseline, acc)
    alphas, weights = quadrature(opts.rule, opts.n_steps)
    total = torch.zeros(sources, dtype=torch.float64)
    span_keep = fw.predicting(range(*task.span), ctx.device)
    contrast = task.contrast_sequence
    if contrast is not None:
        x2 = fw.embed(ctx.model, contrast)
        start2, delta2 = _path(x2, mask[:sources] + [False] * (len(contrast) - sources), baseline, acc)
    for alpha, weight in _steps(alphas, weights, task.chunks.steps):
        leaf = _points(start, delta, alpha, x.dtype).requires_grad_(True)
        score = ctx.span_score(fw.run(ctx.model, leaf, span_keep).logits)  # [k]
        (grad,) = torch.autograd.grad(score, leaf, torch.ones_like(score))
        total += _weighted(grad[:, :sources], weight, delta[:sources]).double().cpu()
        if contrast is not None:
            leaf2 = _points(start2, delta2, alpha, x.dtype).requires_grad_(True)
            score2 = ctx.contrast_score(leaf2)
            (grad2,) = torch.autograd.grad(score2, leaf2, torch.ones_like(score2))
            total -= _weighted(grad2[:, :sources], weight, delta2[:sources]).double().cpu()
        ctx.unit("integrated_gradients")
    ends_alpha = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        ends = ctx.span_score(fw.run(ctx.model, _points(start, delta, ends_alpha, x.dtype), span_keep).logits)
        if contrast is not None:
            ends = ends - ctx.contrast_score(_points(start2, delta2, ends_alpha, x.dtype))
    ctx.unit("integrated_gradients")
    ends = ends.double().cpu()
    return Integral(total, ends[1:], ends[:1])


#: A completeness gap above this (relative) is flagged: the path did not converge at this many steps.
GAP_THRESHOLD = 0.05
#: Floor of the denominator |f(input) − f(baseline)|: a row the sources barely move (under 1e-3 nats,
#: probability or logit units) is judged on its absolute error, not on rounding relative to nothing.
GAP_EPS = 1e-3


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _check(f_input: float, f_baseline: float, total: float) -> dict[str, float | None]:
    change = f_input - f_baseline
    gap = abs(total - change) / max(abs(change), GAP_EPS)
    return {"f_input": _finite(f_input), "f_baseline": _finite(f_baseline), "sum": _finite(total), "gap": _finite(gap)}


def convergence(tokens: Integral | None, sequence: Integral | None) -> dict[str, Any]:
    """Completeness per row and for the span: |Σ scores − (f(x) − f(b))| / max(|f(x) − f(b)|, eps), and a
    warning when the largest gap is over ``GAP_THRESHOLD`` (or not finite)."""
    rows = []
    if tokens is not None:
        sums = tokens.scores.sum(-1)
        for i in range(len(sums)):
            rows.append(_check(float(tokens.f_input[i]), float(tokens.f_baseline[i]), float(sums[i])))
    seq = None
    if sequence is not None:
        seq = _check(float(sequence.f_input[0]), float(sequence.f_baseline[0]), float(sequence.scores.sum()))
    gaps = [c["gap"] for c in [*rows, *([seq] if seq is not None else [])]]
    finite = [g for g in gaps if g is not None]
    max_gap = max(finite) if gaps and len(finite) == len(gaps) else None  # None: nothing checked, or NaN/inf
    warning = bool(gaps) and (max_gap is None or max_gap > GAP_THRESHOLD)
    return {"rows": rows, "sequence": seq, "max_gap": max_gap, "warning": warning, "threshold": GAP_THRESHOLD}


@register
class IntegratedGradients(Method):
    name = "integrated_gradients"
    sign = SIGN_SUPPORTS

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        opts: IntegratedGradientsParams = options
        work = 0
        if shape.tokens_scope:  # the steps, then f at the path's two ends (completeness check)
            work += opts.n_steps * shape.seq_len * (1 + shape.rows) + 2 * shape.seq_len
        if shape.sequence_scope:
            contrast = shape.contrast_seq_len if shape.contrast_len else 0
            work += (opts.n_steps + 1) * 2 * (shape.seq_len + contrast)
        memory = dims.graph_bytes(1, shape.seq_len, shape.rows, False) + dims.backward_bytes(
            1, 1, shape.seq_len, shape.rows
        )
        return Cost(work=work, memory=memory)

    def units(self, task: Task) -> int:
        opts: IntegratedGradientsParams = task.methods[self.name]
        step_chunks = math.ceil(opts.n_steps / task.chunks.steps)
        rows = math.ceil(len(task.rows) / task.chunks.ig_targets) if "tokens" in task.scopes and task.rows else 0
        scopes = bool(rows) + ("sequence" in task.scopes)
        return step_chunks * (rows + ("sequence" in task.scopes)) + scopes  # + one forward of the ends per scope

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: IntegratedGradientsParams = options
        tokens = tokens_ig(ctx, opts) if "tokens" in ctx.task.scopes and ctx.task.rows else None
        sequence = sequence_ig(ctx, opts) if "sequence" in ctx.task.scopes else None
        return MethodOutput(
            tokens=None if tokens is None else tokens.scores.float().numpy(),
            sequence=None if sequence is None else sequence.scores.float().numpy(),
            params={
                **dataclasses.asdict(opts),
                "layer": "input embeddings",
                # a source held at its embedding (score 0 by construction), said so the zero is not read as "no effect"
                "held_positions": [0] if opts.keep_first and moving(ctx.task)[:1] == [True] else [],
                "convergence": convergence(tokens, sequence),
            },
        )
