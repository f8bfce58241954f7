"""Gradient-weighted attention (Chefer, Gur & Wolf, "Generic Attention-model Explainability", 2021), for
decoder-only models.

Per layer, Ā = mean over heads of (∇A ⊙ A)⁺, the attention probabilities weighted by the gradient of the
attributed function with respect to them, positive part; relevance accumulates through the layers with the
identity, R ← R + Ā·R (R starts as I, first layer first). Only the rows needed are propagated: a row of
R = (I + Ā_L)⋯(I + Ā_1) is e_qᵀ multiplied from the last layer down, so each target costs [1, T] vectors
times [T, T] matrices. Tokens scope: one batched backward per chunk of targets (the gradient of each
target's function); sequence scope: one backward of the span's function, its rows averaged. Scores are
non-negative (relevance, not a signed contribution); the position predicting a target keeps the identity's 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from service.explain import forward as fw
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_RELEVANCE, Method, MethodOutput, register
from service.explain.objective import sequence_score
from service.explain.task import Task


def weighted(attention: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Ā: [..., H, T, T] probabilities and gradients -> [..., T, T], the heads' mean of (∇A ⊙ A)⁺."""
    return (grad * attention).clamp(min=0).mean(-3)


def propagate(rows: torch.Tensor, layers: list[torch.Tensor]) -> torch.Tensor:
    """Rows [c, n, T] of (I + Ā_L)⋯(I + Ā_1) from one-hot rows; ``layers`` first layer first, each [c, T, T]."""
    for a in reversed(layers):
        rows = rows + rows @ a
    return rows


def attention_grads(
    outputs: torch.Tensor, attentions: list[torch.Tensor], vectors: torch.Tensor, *, keep_graph: bool
) -> list[torch.Tensor]:
    """∂(vectors · outputs)/∂A for every layer: [c, H, T, T] each (batch of one sequence)."""
    if vectors.shape[0] == 1:
        grads = torch.autograd.grad(outputs, attentions, vectors[0], retain_graph=keep_graph)
        return [g for g in grads]
    grads = torch.autograd.grad(outputs, attentions, vectors, retain_graph=keep_graph, is_grads_batched=True)
    return [g[:, 0] for g in grads]


def _one_hot(queries: list[list[int]], size: int, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(queries), max(len(q) for q in queries), size, dtype=torch.float64, device=like.device)
    for i, qs in enumerate(queries):
        for j, q in enumerate(qs):
            out[i, j, q] = 1.0
    return out


def _attended(ctx: Context, ids: tuple[int, ...], positions: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A forward over ``ids`` whose attention probabilities are in the graph: (logits, per-layer [1, H, T, T])."""
    leaf = fw.embed(ctx.model, ids).unsqueeze(0).requires_grad_(True)  # so that A carries gradients
    out = fw.run(ctx.model, leaf, fw.predicting(positions, ctx.device), attentions=True)
    assert out.attentions is not None
    return out.logits, [a for a in out.attentions if a is not None]  # every layer: refused on hybrids


def tokens_relevance(ctx: Context) -> torch.Tensor:
    """[R, T]: per target, the predicting position's row of the relevance matrix."""
    task = ctx.task
    rows = list(task.rows)
    logits, atts = _attended(ctx, task.ids, rows)
    scores = ctx.row_scores(logits)  # [1, R]
    count = len(rows)
    out = torch.zeros(count, task.seq_len, dtype=torch.float64)
    for first in range(0, count, task.chunks.targets):
        chunk = range(first, min(count, first + task.chunks.targets))
        vectors = fw.one_hot_rows(chunk, count, 1, None, scores)
        grads = attention_grads(scores, atts, vectors, keep_graph=chunk.stop < count)
        layers = [weighted(a.detach().double(), g.double()) for a, g in zip(atts, grads, strict=True)]  # [c, T, T]
        start = _one_hot([[rows[i] - 1] for i in chunk], task.seq_len, scores)
        out[chunk.start : chunk.stop] = propagate(start, layers)[:, 0].cpu()
        del grads, layers
        ctx.unit("attention_gradient")
    return out


def _span_relevance(ctx: Context, ids: tuple[int, ...], positions: list[int], score: Any) -> torch.Tensor:
    logits, atts = _attended(ctx, ids, positions)
    value = score(logits)  # [1]
    grads = torch.autograd.grad(value.sum(), atts)
    layers = [weighted(a.detach().double(), g.double()) for a, g in zip(atts, grads, strict=True)]  # [1, T, T]
    start = _one_hot([[p - 1 for p in positions]], len(ids), value)
    return propagate(start, layers)[0].mean(0).cpu()


def sequence_relevance(ctx: Context) -> torch.Tensor:
    """[S]: relevance for the span's function (rows averaged), minus the contrast continuation's."""
    task = ctx.task
    sources = task.sequence_sources
    result = _span_relevance(ctx, task.ids, list(range(*task.span)), ctx.span_score)[:sources]
    contrast = task.contrast_sequence
    if contrast is not None:
        positions = list(ctx.contrast_positions())

        def contrast_score(logits: torch.Tensor) -> torch.Tensor:
            ids = torch.tensor([contrast[p] for p in positions], device=ctx.device)
            return sequence_score(logits, ids, task.function)

        result = result - _span_relevance(ctx, contrast, positions, contrast_score)[:sources]
    ctx.unit("attention_gradient")
    return result


@register
class AttentionGradient(Method):
    name = "attention_gradient"
    sign = SIGN_RELEVANCE
    needs_attention = True
    needs_attention_at_every_layer = True  # refused on hybrids (Method.refusal)

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        work = 0
        weights = dims.attention_bytes(shape.seq_len)
        if shape.tokens_scope:
            work += shape.seq_len * (1 + shape.rows)
        if shape.sequence_scope:
            work += 2 * (shape.seq_len + shape.contrast_seq_len * bool(shape.contrast_len))
        graph = dims.graph_bytes(1, shape.seq_len, shape.answer_len, True)
        return Cost(work=work, memory=graph + 2 * weights * 8)  # the probabilities and a chunk of gradients

    def units(self, task: Task) -> int:
        rows = math.ceil(len(task.rows) / task.chunks.targets) if "tokens" in task.scopes and task.rows else 0
        return rows + ("sequence" in task.scopes)

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        task = ctx.task
        with torch.enable_grad():
            tokens = tokens_relevance(ctx) if "tokens" in task.scopes and task.rows else None
            sequence = sequence_relevance(ctx) if "sequence" in task.scopes else None
        return MethodOutput(
            tokens=None if tokens is None else tokens.float().numpy(),
            sequence=None if sequence is None else sequence.float().numpy(),
            params={
                "rule": "R <- R + mean_heads((grad(A) * A)+) R, first layer first, R0 = I",
                "heads": "mean of the positive part",
                "sign": "non-negative relevance (with a sequence-scope contrast: the difference)",
                "sequence": "mean over the span's rows",
                "cost": "one forward keeping attention, one batched backward per chunk of targets",
            },
        )
