"""Stability: re-explain under small seeded perturbations of the input and compare the attributions.

Each perturbation picks, with its own seed, ``fraction`` of the source units among the less important half
(by the first ranked method's |score|) and either deletes them (``drop``: later positions shift) or puts the
pad token in their place (``replace``: positions kept). The whole explanation (every requested method) is
re-run on the perturbed input; each method's scores over the units that are left are compared with its
original scores over the same units: Spearman's rank correlation and the overlap of the top-k sets. With
``regenerate``, the greedy answer (its first ``answer_tokens`` tokens) is re-generated on each perturbed
input and compared with the greedy answer on the original. Identical inputs give exactly 1.0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from service.explain.context import Context
from service.explain.faithfulness import sequence_units, unit_scores
from service.explain.methods.base import MethodOutput
from service.explain.methods.counterfactual import greedy
from service.explain.task import Task

#: The summary warns below this mean rank correlation.
UNSTABLE_BELOW = 0.5


@dataclass(frozen=True)
class StabilityParams:
    perturbations: int = 3
    kind: str = "drop"  # or "replace"
    fraction: float = 0.1
    k: int = 5
    seed: int = 0
    regenerate: bool = True
    aggregation: str = "sum"


def compare(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, float]:
    """(Spearman's rho, top-k overlap) of two score vectors over the same units; 1.0 and 1.0 when equal."""
    if len(a) < 2 or np.array_equal(a, b):
        return 1.0, 1.0
    rho = spearmanr(a, b).statistic
    top = min(k, len(a))
    overlap = len(set(np.argsort(-a, kind="stable")[:top]) & set(np.argsort(-b, kind="stable")[:top])) / top
    return (0.0 if math.isnan(rho) else float(rho)), float(overlap)


def chosen_units(importance: np.ndarray, params: StabilityParams, index: int) -> list[int]:
    """The units one perturbation touches: seeded, among the less important half by |score|."""
    n = len(importance)
    count = max(1, round(params.fraction * n)) if params.fraction > 0 else 0  # a small input still moves
    if count == 0:
        return []
    finite = int(np.isfinite(importance).sum())
    count = min(count, finite)
    if count == 0:
        return []
    low = [int(i) for i in np.argsort(np.abs(importance), kind="stable")[: max(count, finite // 2)]]
    rng = np.random.default_rng([params.seed, index])
    return sorted(int(i) for i in rng.choice(low, size=count, replace=False))


def perturbed(task: Task, units: list[tuple[int, ...]], touched: list[int], kind: str) -> tuple[Task, list[int]]:
    """The task with the touched units dropped or replaced, and the original indices of the units kept."""
    kept = [i for i in range(len(units)) if i not in touched or kind == "replace"]
    if kind == "replace" or not touched:
        pad = task.pad_id if task.pad_id is not None else 0
        masked = {p for i in touched for p in units[i]}
        ids = tuple(pad if p in masked else t for p, t in enumerate(task.ids))
        return dataclasses.replace(task, ids=ids, evaluate=None, stability=None), kept
    removed = sorted({p for i in touched for p in units[i]})
    gone = set(removed)
    new_index: dict[int, int] = {}
    for p in range(task.seq_len):
        if p not in gone:
            new_index[p] = len(new_index)
    shift = len(removed)
    new_units = tuple(tuple(new_index[p] for p in u) for u in task.units if not set(u) & gone)
    contrast_ids = task.contrast_ids
    return (
        dataclasses.replace(
            task,
            ids=tuple(t for p, t in enumerate(task.ids) if p not in gone),
            prompt_len=task.prompt_len - shift,
            rows=tuple(r - shift for r in task.rows),
            span=(task.span[0] - shift, task.span[1] - shift),
            included=tuple(v for p, v in enumerate(task.included) if p not in gone),
            units=new_units,
            contrast_ids=contrast_ids,
            evaluate=None,
            stability=None,
        ),
        kept,
    )


def units(task: Task, sub_units: Callable[[Task], int]) -> int:
    params: StabilityParams | None = task.stability
    if params is None:
        return 0
    plain = dataclasses.replace(task, evaluate=None, stability=None)
    return params.perturbations * (sub_units(plain) + params.regenerate) + params.regenerate


def run(
    ctx: Context, outputs: dict[str, MethodOutput], explain: Callable[[Task], dict[str, MethodOutput]]
) -> dict[str, dict[str, Any]]:
    """Per method: rank correlation and top-k overlap per perturbation and their means; answer changes."""
    task = ctx.task
    params: StabilityParams = task.stability
    seq_units = sequence_units(task)
    scores = {name: unit_scores(out, task, params.aggregation)[0] for name, out in outputs.items()}
    ranked = {name: v for name, v in scores.items() if v is not None}
    if not ranked or not seq_units:
        return {name: {"skipped": "no method produced scores over source units"} for name in outputs}
    # only prompt units are perturbed (removing answer tokens before a span would move the span)
    eligible = np.array([max(u) < task.prompt_len for u in seq_units])
    importance = np.where(eligible, next(iter(ranked.values())), np.inf)
    answer_tokens = task.span[1] - task.span[0]
    reference = None
    if params.regenerate:
        reference = greedy(ctx, list(task.ids[: task.span[0]]), answer_tokens)
        ctx.unit("stability")
    figures: dict[str, dict[str, Any]] = {name: {"rho": [], "top_k_overlap": []} for name in ranked}
    changed: list[bool] = []
    touched_all = []
    for index in range(params.perturbations):
        touched = chosen_units(importance, params, index)
        touched_all.append(touched)
        new_task, kept = perturbed(task, seq_units, touched, params.kind)
        new_outputs = explain(new_task)
        for name, original in ranked.items():
            after, _ = unit_scores(new_outputs[name], new_task, params.aggregation)
            if after is None:
                continue
            rho, overlap = compare(original[kept], after[: len(kept)], params.k)
            figures[name]["rho"].append(round(rho, 4))
            figures[name]["top_k_overlap"].append(round(overlap, 4))
        if reference is not None:
            new = greedy(ctx, list(new_task.ids[: new_task.span[0]]), answer_tokens)
            changed.append(new != reference)
            ctx.unit("stability")
    out: dict[str, dict[str, Any]] = {}
    for name in outputs:
        if name not in figures:
            out[name] = {"skipped": "the method produced no scores over source units"}
            continue
        f = figures[name]
        mean_rho = float(np.mean(f["rho"])) if f["rho"] else 1.0
        out[name] = {
            **f,
            "mean_rho": round(mean_rho, 4),
            "mean_top_k_overlap": round(float(np.mean(f["top_k_overlap"])) if f["top_k_overlap"] else 1.0, 4),
            "k": params.k,
            "kind": params.kind,
            "fraction": params.fraction,
            "perturbations": params.perturbations,
            "seed": params.seed,
            "touched_units": touched_all,
            "answer_changed": changed if reference is not None else None,
            "stable": mean_rho >= UNSTABLE_BELOW,
        }
    return out
