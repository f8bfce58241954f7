"""Occlusion: take one source unit (token, word, sentence, message or segment) out, re-run, measure the drop.

Two ways to take it out. ``delete`` removes its tokens, so every later position shifts: with absolute
position embeddings, or a whole removed document, "content removed" and "positions moved" mix. ``replace``
keeps every position and puts the pad token's embedding (or the vocabulary's mean embedding) in the unit's
place, both computed through the embedding module (so Gemma's √d scaling is applied as for real tokens).

Each occluded sequence is one forward that gives every target's new value at once (teacher forcing).
Deleted sequences are batched right-padded: with causal attention, padding after a row's end cannot reach it.
Scores are f(input) − f(input without the unit): positive means the unit supports the target.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from service.explain import forward as fw
from service.explain.baselines import mean_embedding, token_embedding
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_SUPPORTS, Method, MethodOutput, register
from service.explain.objective import sequence_score, token_scores
from service.explain.options import OcclusionParams
from service.explain.task import Task

#: Why ``delete`` is the default (bench/bench_occlusion_modes.py, 8 prompts on SmolLM2-135M, 2026-12-04).
DEFAULT_MODE_NOTE = (
    "delete: removing its top 20% of words lowered the answer's log-probability by 13.7 nats vs 7.0 for random "
    "words (7/8 prompts); replace by pad ranked the same words, replace by mean 13.5 (8/8)"
)

#: Embedding rows passed through the embedding module at a time when averaging over the vocabulary.


def replacement(ctx: Context, opts: OcclusionParams) -> torch.Tensor:
    """The embedding that stands in for an occluded position in ``replace`` mode [d]."""
    if opts.replace_with == "mean":
        return mean_embedding(ctx.model)
    return token_embedding(ctx.model, ctx.task.pad_id if ctx.task.pad_id is not None else 0)


def _batch(model_device: torch.device, seqs: list[list[int]]) -> torch.Tensor:
    longest = max(len(s) for s in seqs)
    return torch.tensor([s + [s[-1]] * (longest - len(s)) for s in seqs], device=model_device)


def _occluded(
    ctx: Context,
    seq: tuple[int, ...],
    units: list[tuple[int, ...]],
    targets: list[int],
    *,
    span: bool,
    stand_in: torch.Tensor | None = None,
) -> torch.Tensor:
    """The function with each unit taken out: [U, n] per target, or [U] for the span (span mode).

    ``stand_in`` None deletes the unit's tokens; an embedding [d] replaces them in place instead.
    A target at or before a unit's end gets a meaningless value: callers mask it.
    """
    device = ctx.device
    ids = torch.tensor([seq[t] for t in targets], device=device)
    embeds = fw.embed(ctx.model, seq) if stand_in is not None else None
    results = []
    for first in range(0, len(units), ctx.task.chunks.sequences):
        chunk = units[first : first + ctx.task.chunks.sequences]
        if embeds is not None and stand_in is not None:
            batch = embeds.unsqueeze(0).repeat(len(chunk), 1, 1)
            for b, unit in enumerate(chunk):
                batch[b, list(unit)] = stand_in
            keep_positions = fw.predicting(targets, device)
        else:
            seqs, keep = [], []
            for unit in chunk:
                drop = set(unit)
                seqs.append([tok for p, tok in enumerate(seq) if p not in drop])
                keep.append([max(0, t - len(unit) - 1) for t in targets])
            batch = fw.embed_batch(ctx.model, _batch(device, seqs))
            keep_positions = torch.tensor(keep, device=device)
        with torch.no_grad():
            logits = fw.run(ctx.model, batch, keep_positions).logits
            if span:
                results.append(sequence_score(logits, ids, ctx.task.function))
            else:
                results.append(token_scores(logits, ids, ctx.task.function, ctx.foils()))
        ctx.unit("occlusion")
    return torch.cat(results)


def tokens_occlusion(ctx: Context, stand_in: torch.Tensor | None = None) -> np.ndarray:
    """[R, U]: a unit is scored only against the rows entirely after it (others are 0)."""
    task = ctx.task
    rows = list(task.rows)
    assert ctx.forward.row_scores is not None
    base = ctx.forward.row_scores.detach()[0].cpu()  # [R]
    out = np.zeros((len(rows), len(task.units)), dtype=np.float32)
    scored = [u for u, unit in enumerate(task.units) if unit and max(unit) < rows[-1]]
    if not scored:
        return out
    occluded = _occluded(ctx, task.ids, [task.units[u] for u in scored], rows, span=False, stand_in=stand_in).cpu()
    after = torch.tensor(rows).view(1, -1) > torch.tensor([max(task.units[u]) for u in scored]).view(-1, 1)
    drops = torch.where(after, base.view(1, -1) - occluded, torch.zeros_like(occluded))  # [U', R]
    out[:, scored] = drops.T.float().numpy()
    return out


def sequence_occlusion(ctx: Context, stand_in: torch.Tensor | None = None) -> np.ndarray:
    task = ctx.task
    sources = task.sequence_sources
    units = [unit for unit in task.units if unit and max(unit) < sources]
    span = list(range(*task.span))
    base = float(ctx.forward.span_score.detach()[0]) if ctx.forward.span_score is not None else 0.0
    drops = base - _occluded(ctx, task.ids, units, span, span=True, stand_in=stand_in)
    contrast = task.contrast_sequence
    if contrast is not None:
        positions = list(ctx.contrast_positions())
        with torch.no_grad():
            embeds = fw.embed(ctx.model, contrast).unsqueeze(0)
            base2 = float(ctx.contrast_score(embeds)[0])
        drops = drops - (base2 - _occluded(ctx, contrast, units, positions, span=True, stand_in=stand_in))
    return drops.float().cpu().numpy()


@register
class Occlusion(Method):
    name = "occlusion"
    sign = SIGN_SUPPORTS

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        work = 0
        if shape.tokens_scope:
            work += shape.units * shape.seq_len
        if shape.sequence_scope:
            work += shape.sequence_units * (shape.seq_len + shape.contrast_seq_len * bool(shape.contrast_len))
        return Cost(work=work, memory=dims.graph_bytes(1, shape.seq_len, shape.answer_len, False) // 4)

    def units(self, task: Task) -> int:
        per = task.chunks.sequences
        units = math.ceil(len(task.units) / per) if "tokens" in task.scopes and task.rows else 0
        if "sequence" in task.scopes:
            units += math.ceil(len(task.units) / per) * (2 if task.contrast_sequence is not None else 1)
        return units

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: OcclusionParams = options if options is not None else OcclusionParams()
        task = ctx.task
        stand_in = replacement(ctx, opts) if opts.mode == "replace" else None
        tokens = tokens_occlusion(ctx, stand_in) if "tokens" in task.scopes and task.rows else None
        sequence = sequence_occlusion(ctx, stand_in) if "sequence" in task.scopes else None
        if opts.mode == "replace":
            occlude = f"replace the unit's embeddings by the {opts.replace_with} embedding (positions kept)"
        else:
            occlude = "delete the unit's tokens (later positions shift)"
        params: dict[str, Any] = {
            "mode": opts.mode,
            "default_mode": DEFAULT_MODE_NOTE,
            "occlude": occlude,
            "units": "the requested granularity",
        }
        if opts.mode == "replace":
            params["replace_with"] = opts.replace_with
        return MethodOutput(tokens=tokens, sequence=sequence, over_units=True, params=params)
