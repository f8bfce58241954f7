"""Attention rollout (Abnar & Zuidema, 2020): head-averaged attention mixed with the residual identity,
multiplied through the layers, so each row says how much of each input reaches the predicting position."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from service.explain.context import Context
from service.explain.methods.attention import AttentionMethod
from service.explain.methods.base import MethodOutput, register
from service.explain.options import RolloutParams


def rollout(attentions: list[torch.Tensor], residual: float) -> torch.Tensor:
    """[T, T] from per-layer head-averaged [T, T] attention, first layer first: R = Â_L ⋯ Â_1."""
    size = attentions[0].shape[-1]
    eye = torch.eye(size, dtype=torch.float64, device=attentions[0].device)
    result = eye
    for layer in attentions:
        mixed = (1.0 - residual) * layer.double() + residual * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result


@register
class AttentionRollout(AttentionMethod):
    name = "attention_rollout"
    needs_attention_at_every_layer = True  # refused on hybrids (Method.refusal)

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: RolloutParams = options
        atts = ctx.forward.attentions
        assert atts is not None
        task = ctx.task
        with torch.no_grad():
            result = rollout([a[0].float().mean(0) for a in atts if a is not None], opts.residual).float()
        start, end = task.span
        tokens = result[[r - 1 for r in task.rows]] if "tokens" in task.scopes else None
        sequence = result[start - 1 : end - 1, :start].mean(0) if "sequence" in task.scopes else None
        return MethodOutput(
            tokens=None if tokens is None else tokens.cpu().numpy(),
            sequence=None if sequence is None else sequence.cpu().numpy(),
            params={**dataclasses.asdict(opts), "heads": "mean", "sequence": "mean over the span's rows"},
        )
