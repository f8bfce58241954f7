"""Faithfulness of each method's ranking, measured by deleting source units and re-scoring the answer.

For each method that produced scores over the sequence units (the units before the span), the units are
ranked by score, highest first (the most supporting first for signed methods). At each fraction k the top
ceil(k·U) units are deleted (comprehensiveness: how much log p(span) drops) or are the only units kept
(sufficiency: how much it drops with the rest deleted). Seeded random rankings, one random permutation
each (so its sets are nested like a method's), give the baseline; AOPC is the mean over k.

Every masked input is one teacher-forced forward that scores all span tokens at once, batched right-padded
(with causal attention, padding after a row's end cannot reach it) in the engine's `sequences` chunks,
one unit of work per batch, under ``no_grad``: no backward pass. Tokens that are no unit (template and
special tokens, the answer before the span) always stay. Deleting shifts later positions; when nothing
would be left before the first target a pad token stands in (as Shapley's ``delete`` masking does).

Masked inputs shared by construction (the whole input; every unit deleted; the same number of units at two
k's) are run once, so the count is known before running (``cost.faithfulness_inputs``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.explain import forward as fw
from service.explain.context import Context
from service.explain.cost import faithfulness_inputs
from service.explain.methods.base import MethodOutput
from service.explain.objective import sequence_score
from service.explain.task import Task

#: Methods whose scores are over layers rather than sources: nothing to rank.
NO_UNIT_SCORES = frozenset({"logit_lens"})

Masked = frozenset[int]  # deleted positions


@dataclass(frozen=True)
class FaithfulnessParams:
    k: tuple[float, ...] = (0.1, 0.2, 0.5)
    random: int = 3
    seed: int = 0
    aggregation: str = "sum"  # how token scores combine into a unit (the response's aggregation)


def sequence_units(task: Task) -> list[tuple[int, ...]]:
    """The units of the `sequence` vectors (a prefix of ``task.units``)."""
    return [unit for unit in task.units if unit and max(unit) < task.sequence_sources]


def counts(k: tuple[float, ...], units: int) -> list[int]:
    """Units removed (or kept) at each k: ceil(k·U), at least one (tolerant of k·U's rounding)."""
    return [min(units, max(1, math.ceil(f * units - 1e-9))) for f in k]


def ranked_methods(methods: dict[str, Any]) -> int:
    """Methods that may yield unit scores (known before running; an upper bound for the cost)."""
    count = 0
    for name, options in methods.items():
        reductions = (getattr(options, "reduce_heads", None), getattr(options, "reduce_layers", None))
        lead = name == "attention" and "none" in reductions
        count += name not in NO_UNIT_SCORES and not lead
    return count


def planned_inputs(params: FaithfulnessParams | None, methods: dict[str, Any], units: int) -> int:
    """Masked inputs to run for ``units`` sequence units (an upper bound: skipped methods need none)."""
    if params is None:
        return 0
    return faithfulness_inputs(units, counts(params.k, units) if units else [], ranked_methods(methods) + params.random)


def units(task: Task) -> int:
    """Units of work (batches of masked inputs), for progress and the time estimate."""
    inputs = planned_inputs(task.evaluate, task.methods, len(sequence_units(task)))
    return math.ceil(inputs / task.chunks.sequences)


def _aggregate(values: np.ndarray, units: list[tuple[int, ...]], how: str) -> np.ndarray:
    """[positions] → [units], as the response aggregates (sum, mean, max, absmax)."""
    out = np.zeros(len(units), dtype=np.float64)
    for u, unit in enumerate(units):
        part = values[list(unit)].astype(np.float64)
        if how == "sum":
            out[u] = part.sum()
        elif how == "mean":
            out[u] = part.mean()
        elif how == "max":
            out[u] = part.max()
        else:
            out[u] = part[np.abs(part).argmax()]
    return out


def unit_scores(out: MethodOutput, task: Task, aggregation: str) -> tuple[np.ndarray | None, str]:
    """The method's scores over the sequence units, and which ones they are (or None and why not)."""
    units = sequence_units(task)
    if out.lead_dims:
        return None, f"scores have leading axes {list(out.lead_dims)} (reduce them to rank units)"
    if out.sequence is not None:
        vec = out.sequence[: len(units)] if out.over_units else _aggregate(out.sequence, units, aggregation)
        how = "sequence-scope scores"
    elif out.tokens is not None and out.tokens.ndim == 2:
        rows = out.tokens if out.over_units else np.stack([_aggregate(r, units, aggregation) for r in out.tokens])
        vec = rows[:, : len(units)].sum(0)
        how = "tokens-scope scores summed over the rows"
    else:
        return None, "the method produced no scores over source units"
    vec = np.asarray(vec, dtype=np.float64)
    if not np.all(np.isfinite(vec)):
        return None, "the scores are not all finite"
    return vec, how


def ranking(scores: np.ndarray) -> list[int]:
    """Unit indices, highest score first (ties in position order)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")]


def random_rankings(units: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        order = list(range(units))
        rng.shuffle(order)
        out.append(order)
    return out


class _Scorer:
    """log p(span) for masked inputs, each distinct one run once, in batches of ``sequences``."""

    def __init__(self, ctx: Context, units: list[tuple[int, ...]]) -> None:
        self.ctx = ctx
        self.units = units
        self.values: dict[Masked, float] = {}

    def deleted(self, removed: list[int]) -> Masked:
        return frozenset(p for u in removed for p in self.units[u])

    def run(self, wanted: list[Masked]) -> None:
        ctx, task = self.ctx, self.ctx.task
        todo = sorted({m for m in wanted if m not in self.values}, key=len)  # similar lengths batch together
        span = list(range(*task.span))
        ids = torch.tensor([task.ids[t] for t in span], device=ctx.device)
        pad = task.pad_id if task.pad_id is not None else 0
        for first in range(0, len(todo), task.chunks.sequences):
            chunk = todo[first : first + task.chunks.sequences]
            seqs, keep = [], []
            for masked in chunk:
                lead = [pad] if len(masked) >= span[0] else []
                seqs.append(lead + [tok for p, tok in enumerate(task.ids) if p not in masked])
                keep.append([t - len(masked) - 1 + len(lead) for t in span])
            longest = max(len(s) for s in seqs)
            batch = torch.tensor([s + [s[-1]] * (longest - len(s)) for s in seqs], device=ctx.device)
            with torch.no_grad():
                logits = fw.run(ctx.model, fw.embed_batch(ctx.model, batch), torch.tensor(keep, device=ctx.device))
                scores = sequence_score(logits.logits, ids, "logprob").double().cpu().tolist()
            self.values.update(zip(chunk, scores, strict=True))
            ctx.unit("faithfulness")


def _curves(scorer: _Scorer, order: list[int], ns: list[int], base: float) -> tuple[list[float], list[float]]:
    every = range(len(order))
    comp = [base - scorer.values[scorer.deleted(order[:n])] for n in ns]
    suff = [base - scorer.values[scorer.deleted([u for u in every if u not in order[:n]])] for n in ns]
    return comp, suff


def _masks(scorer: _Scorer, order: list[int], ns: list[int]) -> set[Masked]:
    every = range(len(order))
    out = {scorer.deleted(order[:n]) for n in ns}
    return out | {scorer.deleted([u for u in every if u not in order[:n]]) for n in ns}


def _replan(ctx: Context, planned: int, ran: int) -> None:
    """Inputs two rankings happen to share run once, and skipped methods need none: fewer units than planned."""
    ctx.total_units = max(ctx.done_units, ctx.total_units - (planned - ran))


def run(ctx: Context, outputs: dict[str, MethodOutput]) -> dict[str, dict[str, Any]]:
    """Per method: its faithfulness figures (the fields of the wire ``FaithfulnessResult``) or ``skipped``."""
    task = ctx.task
    params: FaithfulnessParams = task.evaluate
    seq_units = sequence_units(task)
    planned = units(task)
    results: dict[str, dict[str, Any]] = {}
    orders: dict[str, list[int]] = {}
    how: dict[str, str] = {}
    for name, out in outputs.items():
        if name in NO_UNIT_SCORES:
            results[name] = {"skipped": "the method scores layers, not source units"}
            continue
        if not seq_units:
            results[name] = {"skipped": "no source units before the span to remove"}
            continue
        scores, why = unit_scores(out, task, params.aggregation)
        if scores is None:
            results[name] = {"skipped": why}
            continue
        orders[name], how[name] = ranking(scores), why
    if not orders:
        _replan(ctx, planned, 0)
        return results
    ns = counts(params.k, len(seq_units))
    scorer = _Scorer(ctx, seq_units)
    randoms = random_rankings(len(seq_units), params.random, params.seed)
    wanted: list[Masked] = [frozenset()]
    for order in [*orders.values(), *randoms]:
        wanted.extend(_masks(scorer, order, ns))
    _replan(ctx, planned, math.ceil(len(set(wanted)) / task.chunks.sequences))
    scorer.run(wanted)
    base = scorer.values[frozenset()]
    random_comp: list[list[float]] = []
    random_suff: list[list[float]] = []
    random_masks: set[Masked] = set()
    for order in randoms:
        comp, suff = _curves(scorer, order, ns, base)
        random_comp.append(comp)
        random_suff.append(suff)
        random_masks |= _masks(scorer, order, ns)
    rc = np.mean(random_comp, 0).tolist() if randoms else []
    rs = np.mean(random_suff, 0).tolist() if randoms else []
    random_aopc = float(np.mean(rc)) if randoms else None
    for name, order in orders.items():
        comp, suff = _curves(scorer, order, ns, base)
        aopc = float(np.mean(comp))
        results[name] = {
            "k": list(params.k),
            "units": len(seq_units),
            "removed": ns,
            "removal": "delete",
            "ranking": f"{how[name]}, highest first",
            "base_logprob": base,
            "comprehensiveness": comp,
            "sufficiency": suff,
            "random_comprehensiveness": rc,
            "random_sufficiency": rs,
            "aopc": aopc,
            "aopc_sufficiency": float(np.mean(suff)),
            "random_aopc": random_aopc,
            "beats_random": None if random_aopc is None else aopc > random_aopc,
            "forwards": len({frozenset()} | _masks(scorer, order, ns) | random_masks),
            "random": params.random,
            "seed": params.seed,
        }
    return results
