"""Attention rollout (Abnar & Zuidema, 2020): head-averaged attention mixed with the residual identity,
multiplied through the layers, so each row says how much of each input reaches the predicting position.

Only the explained rows are needed, so row vectors are propagated from the top layer down
(v ← v · Â_l, l = L … 1) instead of forming the T × T product: Q · T² per layer rather than T³, and Â is never
materialised (v · Â = (1 − r) · w · A + r · w with w = v / rowsum).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.attention import AttentionMethod, attention_layers
from service.explain.methods.base import SIGN_MAGNITUDE, MethodOutput, register
from service.explain.options import RolloutParams
from service.models.facts import ModelFacts, facts_of


def rollout(attentions: list[torch.Tensor], residual: float) -> torch.Tensor:
    """[T, T] from per-layer head-averaged [T, T] attention, first layer first: R = Â_L ⋯ Â_1 (the reference)."""
    size = attentions[0].shape[-1]
    eye = torch.eye(size, dtype=torch.float64, device=attentions[0].device)
    result = eye
    for layer in attentions:
        mixed = (1.0 - residual) * layer.double() + residual * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result


def rollout_rows(attentions: list[torch.Tensor], residual: float, queries: list[int]) -> torch.Tensor:
    """Rows ``queries`` of R = Â_L ⋯ Â_1 ([Q, T]) from per-layer [H, T, T] attention, first layer first.

    Accumulates in at least float32 (float64 stays float64)."""
    size = attentions[0].shape[-1]
    dtype = torch.promote_types(attentions[0].dtype, torch.float32)
    device = attentions[0].device
    v = torch.zeros(len(queries), size, dtype=dtype, device=device)
    v[torch.arange(len(queries), device=device), torch.tensor(queries, device=device)] = 1.0
    for layer in reversed(attentions):
        a = layer.to(dtype).mean(0)  # [T, T], rows sum to 1
        w = v / ((1.0 - residual) * a.sum(-1) + residual)  # v · D⁻¹, D the row sums of (1 − r)A + rI
        v = (1.0 - residual) * (w @ a) + residual * w
    return v


def queries_of(rows: int, span_len: int, tokens_scope: bool, sequence_scope: bool) -> int:
    """How many rows are propagated (an upper bound: the span's rows may repeat the explained rows)."""
    return (rows if tokens_scope else 0) + (span_len if sequence_scope else 0)


@register
class AttentionRollout(AttentionMethod):
    name = "attention_rollout"
    needs_attention_at_every_layer = True  # refused on hybrids (Method.refusal)
    sign = SIGN_MAGNITUDE

    def validate(self, facts: ModelFacts, options: Any) -> None:
        opts: RolloutParams = options
        attention_layers(opts.layers, facts, "attention_rollout.layers")

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        opts: RolloutParams = options if options is not None else RolloutParams()
        layers = len(opts.layers) if opts.layers is not None else dims.layers
        queries = queries_of(shape.rows, shape.span_len, shape.tokens_scope, shape.sequence_scope)
        flops = layers * (dims.heads + 2 * queries) * shape.seq_len * shape.seq_len  # head mean + v · A
        base = super().cost(shape, dims, options)
        rows_bytes = 2 * queries * shape.seq_len * 8
        return Cost(work=dims.token_passes(flops), memory=base.memory + rows_bytes)

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: RolloutParams = options
        atts = ctx.forward.attentions
        assert atts is not None
        layers = attention_layers(opts.layers, facts_of(ctx.model), "attention_rollout.layers")
        chosen = [a[0] for a in (atts[i] for i in sorted(layers)) if a is not None]
        assert len(chosen) == len(layers), "refused on hybrids: every layer has attention weights"
        task = ctx.task
        start, end = task.span
        token_queries = [r - 1 for r in task.rows] if "tokens" in task.scopes else []
        span_queries = list(range(start - 1, end - 1)) if "sequence" in task.scopes else []
        queries = sorted(set(token_queries) | set(span_queries))
        where = {q: i for i, q in enumerate(queries)}
        tokens = sequence = None
        if queries:
            with torch.no_grad():
                result = rollout_rows(chosen, opts.residual, queries).float().cpu()
            if token_queries:
                tokens = result[[where[q] for q in token_queries]].numpy()
            if span_queries:
                sequence = result[[where[q] for q in span_queries], :start].mean(0).numpy()
        return MethodOutput(
            tokens=tokens,
            sequence=sequence,
            params={
                **dataclasses.asdict(opts),
                "layers": sorted(layers),
                "heads": "mean",
                "sequence": "mean over the span's rows",
                "rows": "only the explained rows are propagated",
            },
        )
