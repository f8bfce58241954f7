"""Raw attention weights of the shared forward: for each target, the row of the position that predicts it."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from service.errors import InvalidRequest
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape, forward_bytes
from service.explain.methods.base import SIGN_MAGNITUDE, Method, MethodOutput, register
from service.explain.options import AttentionParams
from service.models.facts import ModelFacts, facts_of


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


def attention_layers(indices: list[int] | tuple[int, ...] | None, facts: ModelFacts, param: str) -> list[int]:
    """Decoder-layer indices (negative from the end) that have attention weights; all of them by default."""
    captured = list(facts.attention_layers)
    if indices is None:
        return captured
    layers = resolve(indices, facts.layers, param)
    missing = [i for i in layers if i not in captured]
    if missing:
        kinds = ", ".join(f"{i} is {facts.layer_kinds[i]}" for i in missing)
        raise InvalidRequest(
            f"{param}: {facts.model_type} has no attention weights at layer {kinds}; its attention layers "
            f"are {captured}",
            param=param,
        )
    return layers


def layer_params(facts: ModelFacts, layers: list[int]) -> dict[str, Any]:
    """What the response covers: the decoder-layer indices, and the layers left out with their kind."""
    out: dict[str, Any] = {"layers": layers}
    if facts.other_layers:
        out["layers_without_attention"] = [{"layer": i, "kind": facts.layer_kinds[i]} for i in facts.other_layers]
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
        weights = dims.attention_bytes(shape.seq_len)
        forward = forward_bytes(shape, dims, eager=True)
        return Cost(work=0, memory=forward + weights)


@register
class Attention(AttentionMethod):
    name = "attention"
    sign = SIGN_MAGNITUDE
    attention_rows_only = True

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        if not dims.attention_rows:
            return super().cost(shape, dims, options)
        # the explained rows only, recomputed beside the model's kernel: [H, Q, T] per attention layer
        queries = (shape.rows if shape.tokens_scope else 0) + (shape.span_len if shape.sequence_scope else 0)
        weights = dims.attending * dims.heads * queries * shape.seq_len * 4
        # beside the shared forward's peak: its graph only when another method needs a backward pass
        forward = forward_bytes(shape, dims, eager=False)
        return Cost(work=0, memory=forward + weights)

    def validate(self, facts: ModelFacts, options: Any) -> None:
        opts: AttentionParams = options
        attention_layers(opts.layers, facts, "attention.layers")
        resolve(opts.heads, facts.heads or 0, "attention.heads")

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: AttentionParams = options
        facts = facts_of(ctx.model)
        atts = ctx.forward.attentions
        assert atts is not None
        layers = attention_layers(opts.layers, facts, "attention.layers")
        chosen = [a for a in (atts[i] for i in layers) if a is not None]
        assert len(chosen) == len(layers), "validated against the captured layers before the model ran"
        heads = resolve(opts.heads, chosen[0].shape[1], "attention.heads")
        task = ctx.task
        queries = [r - 1 for r in task.rows]
        start, end = task.span
        fwd = ctx.forward
        tokens = sequence = None
        with torch.no_grad():
            if "tokens" in task.scopes:
                tokens = torch.stack([fwd.attention_rows(a[0][heads], queries).float() for a in chosen])  # [L, H, R, T]
                tokens = _reduce(_reduce(tokens, 1, opts.reduce_heads), 0, opts.reduce_layers)
            if "sequence" in task.scopes:
                span_rows = range(start - 1, end - 1)
                rows = [fwd.attention_rows(a[0][heads], span_rows)[..., :start].float().mean(1) for a in chosen]
                sequence = _reduce(_reduce(torch.stack(rows), 1, opts.reduce_heads), 0, opts.reduce_layers)
        lead = (("layer",) if opts.reduce_layers == "none" else ()) + (("head",) if opts.reduce_heads == "none" else ())
        return MethodOutput(
            tokens=None if tokens is None else tokens.cpu().numpy(),
            sequence=None if sequence is None else sequence.cpu().numpy(),
            lead_dims=lead,
            params={
                **dataclasses.asdict(opts),
                **layer_params(facts, layers),
                "heads": heads,
                "sequence": "mean over the span's rows",
            },
        )
