"""The attributed function on ablated inputs: batched teacher-forced forwards over coalitions of source units.

Shared by the methods that mask units and re-run the model (Shapley values, context attribution). A
coalition keeps its players' tokens and masks the others: ``delete`` removes them (later positions shift),
``replace`` puts the pad token in their place (positions kept). Each coalition is one forward that scores
every target at once, ``chunks.sequences`` coalitions per forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from service.explain import forward as fw
from service.explain.context import Context
from service.explain.objective import sequence_score, token_scores
from service.explain.task import Task

Coalition = frozenset[int]


def players_of(task: Task) -> list[tuple[int, ...]]:
    """The units before the span: the sources of the sequence vectors (the answer before a target stays)."""
    return [unit for unit in task.units if unit and max(unit) < task.sequence_sources]


def coalition_values(
    ctx: Context,
    base: tuple[int, ...],
    targets: list[int],
    players: list[tuple[int, ...]],
    chosen: Sequence[Coalition],
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    masking: str,
    phase: str,
) -> dict[Coalition, torch.Tensor]:
    """The function [k] for each coalition, ``sequences`` masked sequences per forward."""
    pad = ctx.task.pad_id if ctx.task.pad_id is not None else 0
    ids = torch.tensor([base[t] for t in targets], device=ctx.device)
    out: dict[Coalition, torch.Tensor] = {}
    per = ctx.task.chunks.sequences
    for first in range(0, len(chosen), per):
        chunk = chosen[first : first + per]
        seqs, keep = [], []
        for coalition in chunk:
            masked = {p for i, unit in enumerate(players) if i not in coalition for p in unit}
            if masking == "delete":
                # a pad token stands in when nothing would be left before a target
                lead = [pad] if len(masked) >= min(targets) else []
                seqs.append(lead + [tok for p, tok in enumerate(base) if p not in masked])
                keep.append([t - len(masked) - 1 + len(lead) for t in targets])
            else:
                seqs.append([pad if p in masked else tok for p, tok in enumerate(base)])
                keep.append([t - 1 for t in targets])
        longest = max(len(s) for s in seqs)
        batch = torch.tensor([s + [s[-1]] * (longest - len(s)) for s in seqs], device=ctx.device)
        with torch.no_grad():
            logits = fw.run(ctx.model, fw.embed_batch(ctx.model, batch), torch.tensor(keep, device=ctx.device)).logits
            values = score(logits, ids).double().cpu()  # [B, k]
        for coalition, value in zip(chunk, values, strict=True):
            out[coalition] = value
        ctx.unit(phase)
    return out


def function_values(
    ctx: Context,
    players: list[tuple[int, ...]],
    chosen: Sequence[Coalition],
    masking: str,
    *,
    spans: Sequence[tuple[int, int]] = (),
    phase: str = "shapley",
) -> tuple[dict[Coalition, torch.Tensor], list[int], list[int]]:
    """Per coalition, the columns [tokens-scope rows..., each of ``spans``..., the sequence span]: the
    attributed function of each row (foils applied), of each extra span of answer positions (its
    log-probability), and of the span (contrast sequence subtracted). Also returns the rows and span positions.
    """
    task = ctx.task
    rows = list(task.rows) if "tokens" in task.scopes else []
    span = list(range(*task.span)) if "sequence" in task.scopes else []
    extra = sorted({p for s, e in spans for p in range(s, e)})
    targets = sorted(set(rows) | set(span) | set(extra))
    foils = ctx.foils()

    def score(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        parts = []
        if rows:
            index = [targets.index(r) for r in rows]
            parts.append(token_scores(logits[:, index], ids[index], task.function, foils))
        for s, e in spans:
            index = [targets.index(p) for p in range(s, e)]
            parts.append(sequence_score(logits[:, index], ids[index], "logprob").unsqueeze(-1))
        if span:
            index = [targets.index(s) for s in span]
            parts.append(sequence_score(logits[:, index], ids[index], task.function).unsqueeze(-1))
        return torch.cat(parts, -1)

    values = coalition_values(ctx, task.ids, targets, players, chosen, score, masking, phase)
    contrast = task.contrast_sequence
    if contrast is not None and span:
        positions = list(ctx.contrast_positions())

        def contrast_score(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return sequence_score(logits, ids, task.function).unsqueeze(-1)

        other = coalition_values(ctx, contrast, positions, players, chosen, contrast_score, masking, phase)
        for c in values:
            values[c] = torch.cat([values[c][:-1], values[c][-1:] - other[c]])
    return values, rows, span
