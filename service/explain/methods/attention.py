"""Raw attention weights of the shared forward: for each target, the row of the position that predicts it."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from transformers import PretrainedConfig

from service.errors import InvalidRequest
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_MAGNITUDE, Method, MethodOutput, register
from service.explain.options import AttentionParams


def resolve(indices: list[int] | tuple[int, ...] | None, count: int, param: str) -> list[int]:
    if indices is None:
        return list(range(count))
    out = []
    for i in indices:
        if not -count <= i < count:
            raise InvalidRequest(f"{param}: index {i} is out of range for {count} (0..{count - 1})", param=param)
        out.append(i % count)
    if len(set(out)) != len(out):
        raise InvalidRequest(f"{param}: an index is repeated", param=param)
    return out


def _reduce(array: torch.Tensor, dim: int, how: str) -> torch.Tensor:
    if how == "mean":
        return array.mean(dim)
    if how == "max":
        return array.amax(dim)
    return array


class AttentionMethod(Method):
    """A method that reads the attention weights of the shared forward (which keeps them all in memory)."""

    needs_attention = True

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        weights = dims.layers * dims.heads * shape.seq_len * shape.seq_len * 4
        return Cost(work=0, memory=dims.graph_bytes(1, shape.seq_len, shape.answer_len, True) + weights)


@register
class Attention(AttentionMethod):
    name = "attention"
    sign = SIGN_MAGNITUDE

    def validate(self, config: PretrainedConfig, options: Any) -> None:
        opts: AttentionParams = options
        resolve(opts.layers, int(config.num_hidden_layers), "attention.layers")
        resolve(opts.heads, int(config.num_attention_heads), "attention.heads")

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: AttentionParams = options
        atts = ctx.forward.attentions
        assert atts is not None
        layers = resolve(opts.layers, len(atts), "attention.layers")
        heads = resolve(opts.heads, atts[0].shape[1], "attention.heads")
        task = ctx.task
        queries = [r - 1 for r in task.rows]
        start, end = task.span
        tokens = sequence = None
        with torch.no_grad():
            if "tokens" in task.scopes:
                tokens = torch.stack([atts[i][0][heads][:, queries].float() for i in layers])  # [L, H, R, T]
                tokens = _reduce(_reduce(tokens, 1, opts.reduce_heads), 0, opts.reduce_layers)
            if "sequence" in task.scopes:
                rows = [atts[i][0][heads][:, start - 1 : end - 1, :start].float().mean(1) for i in layers]
                sequence = _reduce(_reduce(torch.stack(rows), 1, opts.reduce_heads), 0, opts.reduce_layers)
        lead = (("layer",) if opts.reduce_layers == "none" else ()) + (("head",) if opts.reduce_heads == "none" else ())
        return MethodOutput(
            tokens=None if tokens is None else tokens.cpu().numpy(),
            sequence=None if sequence is None else sequence.cpu().numpy(),
            lead_dims=lead,
            params={
                **dataclasses.asdict(opts),
                "layers": layers,
                "heads": heads,
                "sequence": "mean over the span's rows",
            },
        )
