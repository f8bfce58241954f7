"""Context attribution (ContextCite; Cohen-Wang et al., 2024): which sources (documents, sentences, any
units) the answer rests on, from random ablations and a sparse linear surrogate.

Each ablation keeps every source with probability ``keep_probability`` and deletes the rest; one batched
teacher-forced forward per ablation scores every answer token at once. A Lasso fitted to (kept-mask →
function) gives each source a weight: the function's expected drop when that source is removed. Its quality
is measured on held-out ablations (the linear datamodeling score: Spearman correlation of predicted and
actual values). ``leave_one_out`` instead removes each source alone (exact, one forward per source).

Columns: the tokens-scope rows, each answer sentence (for citations; its log-probability) and the span.
Scores are signed: positive means the source raises the function.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LinearRegression

from service.explain import ablation
from service.explain.ablation import Coalition, players_of
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_SUPPORTS, Method, MethodOutput, register
from service.explain.options import ContextAttributionParams
from service.explain.task import Task


def ablations(players: int, opts: ContextAttributionParams) -> tuple[list[Coalition], list[Coalition]]:
    """The fitted and the held-out coalitions (seeded; each source kept with ``keep_probability``)."""
    rng = np.random.default_rng(opts.seed)
    masks = rng.random((opts.n_ablations + opts.held_out, players)) < opts.keep_probability
    coalitions = [frozenset(np.flatnonzero(m).tolist()) for m in masks]
    return coalitions[: opts.n_ablations], coalitions[opts.n_ablations :]


def leave_one_out(players: int) -> list[Coalition]:
    everyone = frozenset(range(players))
    return [everyone, *(everyone - {i} for i in range(players))]


def _matrix(coalitions: list[Coalition], players: int) -> np.ndarray:
    x = np.zeros((len(coalitions), players))
    for i, c in enumerate(coalitions):
        x[i, list(c)] = 1.0
    return x


def fit_surrogate(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``y`` [n, k]: (weights [k, players], intercepts [k]) of a Lasso (least squares at 0)."""
    model = LinearRegression() if alpha == 0 else Lasso(alpha=alpha, max_iter=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)


def lds(weights: np.ndarray, intercepts: np.ndarray, x: np.ndarray, y: np.ndarray) -> list[float | None]:
    """Linear datamodeling score per column: Spearman's rho of predicted and actual held-out values."""
    if len(x) < 3:
        return [None] * y.shape[1]
    predicted = x @ weights.T + intercepts
    out: list[float | None] = []
    for k in range(y.shape[1]):
        if np.ptp(y[:, k]) == 0 or np.ptp(predicted[:, k]) == 0:
            out.append(None)
            continue
        rho = float(spearmanr(predicted[:, k], y[:, k]).statistic)
        out.append(None if math.isnan(rho) else rho)
    return out


def _stack(values: dict[Coalition, torch.Tensor], coalitions: list[Coalition]) -> np.ndarray:
    return torch.stack([values[c] for c in coalitions]).numpy()


@register
class ContextAttribution(Method):
    name = "context_attribution"
    sign = SIGN_SUPPORTS

    def _coalitions(self, task: Task) -> int:
        opts: ContextAttributionParams = task.methods[self.name]
        n = len(players_of(task))
        if not n:
            return 0
        if opts.mode == "leave_one_out":
            return n + 1
        fitted, held = ablations(n, opts)
        return len(set(fitted) | set(held))

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        opts: ContextAttributionParams = options
        n = shape.sequence_units
        runs = n + 1 if opts.mode == "leave_one_out" else min(opts.n_ablations + opts.held_out, 2**n)
        work = runs * shape.seq_len
        if shape.sequence_scope and shape.contrast_len:
            work += runs * shape.contrast_seq_len
        return Cost(work=work, memory=dims.graph_bytes(1, shape.seq_len, shape.answer_len, False) // 4)

    def units(self, task: Task) -> int:
        per = task.chunks.sequences
        runs = 1 + (task.contrast_sequence is not None and "sequence" in task.scopes)
        return runs * math.ceil(self._coalitions(task) / per)

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: ContextAttributionParams = options
        task = ctx.task
        players = players_of(task)
        params: dict[str, Any] = {
            k: v
            for k, v in dataclasses.asdict(opts).items()
            if k not in ("sentences", "citation_threshold", "citation_relative")
        }
        params.update(players=len(players), masking="delete")
        if not players:
            return MethodOutput(tokens=None, sequence=None, over_units=True, params=params)
        n = len(players)
        held: list[Coalition] = []
        if opts.mode == "leave_one_out":
            fitted = leave_one_out(n)
        else:
            fitted, held = ablations(n, opts)
        chosen = list(dict.fromkeys([*fitted, *held]))
        values, rows, span = ablation.function_values(
            ctx, players, chosen, "delete", spans=opts.sentences, phase=self.name
        )
        y = _stack(values, fitted)
        if opts.mode == "leave_one_out":
            weights = (y[0][None, :] - y[1:]).T  # [k, players]: f(all) - f(all without i)
            params["estimator"] = "exact leave-one-out: each score is f(all) − f(all without that source)"
            quality: list[float | None] = [None] * y.shape[1]
        else:
            weights, intercepts = fit_surrogate(_matrix(fitted, n), y, opts.alpha)
            params["estimator"] = "Lasso surrogate of random ablations (ContextCite)"
            quality = lds(weights, intercepts, _matrix(held, n), _stack(values, held)) if held else quality_none(y)
            params["intercept"] = intercepts.tolist()
        params["forwards"] = len(chosen) * (1 + (task.contrast_sequence is not None and bool(span)))
        columns = [task.units.index(unit) for unit in players]
        tokens = sequence = None
        r, s = len(rows), len(opts.sentences)
        if rows:
            tokens = np.zeros((r, len(task.units)), dtype=np.float32)
            tokens[:, columns] = weights[:r]
        if span:
            sequence = weights[-1].astype(np.float32)
        full = frozenset(range(n))
        params["lds"] = {
            "rows": quality[:r] if rows else None,
            "sentences": quality[r : r + s],
            "sequence": quality[-1] if span else None,
        }
        params["sentences"] = [
            {
                "positions": [a, b],
                "scores": weights[r + i].astype(float).tolist(),
                "logprob": float(values[full][r + i]) if full in values else None,
            }
            for i, (a, b) in enumerate(opts.sentences)
        ]
        params["citation_threshold"] = opts.citation_threshold
        params["citation_relative"] = opts.citation_relative
        return MethodOutput(tokens=tokens, sequence=sequence, over_units=True, params=params)


def quality_none(y: np.ndarray) -> list[float | None]:
    return [None] * y.shape[1]
