"""Logit lens (nostalgebraist, 2020): each layer's hidden state read through the final norm and output head.

For every explained target and every layer (0 = the embeddings, L = the last decoder layer) it reports the
rank (1 = the top token) and log-probability of the target token, the attributed function (contrast
applied) and the top-k tokens. One forward, no backward: hooks on the decoder layers read only the rows
that predict the targets, so the vocabulary-sized logits exist for one layer at a time. It scores layers,
not sources: its arrays are in ``params`` (dims ``[layer, target]``), not in ``tokens``/``sequence``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from service.explain import forward as fw
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_NOT_SOURCES, Method, MethodOutput, register
from service.explain.objective import logprobs, token_scores
from service.explain.options import LogitLensParams
from service.explain.state import decoder_layers, is_paused
from service.models.facts import ModelFacts, final_norm_module


def final_norm(model: PreTrainedModel) -> torch.nn.Module:
    """The norm applied to the last hidden state before the output head (identity if the model has none;
    the planner refuses the method then, see ``LogitLens.refusal``)."""
    return final_norm_module(model) or torch.nn.Identity()


def lens_targets(ctx: Context) -> list[int]:
    """Target positions read: the rows (tokens scope), else the span."""
    task = ctx.task
    return list(task.rows) if "tokens" in task.scopes and task.rows else list(range(*task.span))


def read_layers(ctx: Context, targets: list[int], top_k: int) -> dict[str, torch.Tensor]:
    """Per layer [L+1, n]: rank, logprob, score; top-k ids and log-probabilities [L+1, n, k]."""
    model = ctx.model
    head = model.get_output_embeddings()
    assert head is not None
    norm = final_norm(model)
    rows = torch.tensor([t - 1 for t in targets], device=ctx.device)
    ids = ctx.targets[targets]
    foils = ctx.foils() if "tokens" in ctx.task.scopes and list(ctx.task.rows) == targets else None
    read: list[dict[str, torch.Tensor]] = []

    def lens(hidden: torch.Tensor, *, normed: bool = False) -> None:
        h = hidden[0, rows]
        logits = head(h if normed else norm(h)).unsqueeze(0)  # [1, n, V]
        wide = logits.double()
        target_logit = wide.gather(-1, ids.view(1, -1, 1))
        lps = torch.log_softmax(wide, -1)
        top = lps.topk(top_k, dim=-1) if top_k else None
        read.append(
            {
                "rank": 1 + (wide > target_logit).sum(-1)[0],
                "logprob": logprobs(logits, ids)[0],
                "score": token_scores(logits, ids, ctx.task.function, foils)[0],
                "top_ids": top.indices[0] if top is not None else torch.zeros(len(targets), 0, dtype=torch.long),
                "top_logprobs": top.values[0] if top is not None else torch.zeros(len(targets), 0),
            }
        )

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        if not is_paused(model):
            lens(output[0] if isinstance(output, tuple) else output)

    embeds = ctx.embeddings.unsqueeze(0)
    handles = [layer.register_forward_hook(hook) for layer in decoder_layers(model)]
    try:
        with torch.no_grad():
            lens(embeds)
            fw.run(model, embeds, rows[-1:])
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.stack([r[key] for r in read]).cpu() for key in read[0]}


@register
class LogitLens(Method):
    name = "logit_lens"
    sign = SIGN_NOT_SOURCES

    def refusal(self, facts: ModelFacts) -> str | None:
        if facts.final_norm is None or not facts.has_output_head:
            return (
                f"{facts.model_type}: no final norm and output head found to read the layers through "
                "(the logit lens needs both): logit_lens is not available"
            )
        return super().refusal(facts)

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        rows = shape.rows if shape.tokens_scope else shape.span_len
        return Cost(work=shape.seq_len, memory=dims.graph_bytes(1, shape.seq_len, rows, False) // 4)

    def units(self, task: Any) -> int:
        return 1

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: LogitLensParams = options
        targets = lens_targets(ctx)
        out = read_layers(ctx, targets, opts.top_k)
        ctx.unit("logit_lens")
        return MethodOutput(
            tokens=None,
            sequence=None,
            params={
                "dims": ["layer", "target"],
                "layers": "0 = the input embeddings, then the output of each decoder layer",
                "targets": [t - ctx.task.prompt_len for t in targets],
                "readout": f"{type(final_norm(ctx.model)).__name__} then the output head",
                "rank": "1 = the model's top token",
                "top_k": opts.top_k,
                "rank_of_target": out["rank"].tolist(),
                "target_logprob": out["logprob"].float().tolist(),
                "score": out["score"].float().tolist(),
                "top_k_ids": out["top_ids"].tolist(),
                "top_k_logprobs": out["top_logprobs"].float().tolist(),
                "cost": "one forward, no backward",
            },
        )
