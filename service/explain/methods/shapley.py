"""Shapley values over source units by permutation sampling (Castro et al., 2009), with batched masked
forward passes.

Players are the units before the span (words, sentences, messages, segments, or tokens when few); the
answer tokens before each target stay in place. A coalition keeps its players' tokens and masks the others:
``delete`` removes them (like occlusion), ``replace`` puts the pad token in their place. Each coalition is
one forward that scores every target at once (teacher forcing), and a coalition shared by several sampled
permutations is run once. Each sampled permutation's marginal contributions sum to f(all) − f(none), so
efficiency holds exactly (the gap in ``params`` is rounding); the sampling error of each value is its
standard error over the permutations. Scores are signed: positive means the unit raises the function.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import numpy as np
import torch

from service.explain import ablation
from service.explain.ablation import Coalition, players_of
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_SUPPORTS, Method, MethodOutput, register
from service.explain.options import ShapleyParams
from service.explain.task import Task


def permutations(players: int, samples: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(samples):
        order = list(range(players))
        rng.shuffle(order)
        out.append(order)
    return out


def coalitions(orders: list[list[int]], players: int) -> list[Coalition]:
    """The distinct coalitions the permutations visit, in a fixed order (the empty and full ones first)."""
    seen: dict[Coalition, None] = {frozenset(): None, frozenset(range(players)): None}
    for order in orders:
        for k in range(1, players):
            seen.setdefault(frozenset(order[:k]), None)
    return list(seen)


def estimate(orders: list[list[int]], values: dict[Coalition, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) over the permutations of each player's marginal contribution: [k, players]."""
    players = len(orders[0])
    samples = []
    for order in orders:
        phi = torch.zeros_like(values[frozenset()]).unsqueeze(-1).repeat(1, players)
        previous = values[frozenset()]
        for k, player in enumerate(order):
            current = values[frozenset(order[: k + 1])]
            phi[:, player] = current - previous
            previous = current
        samples.append(phi)
    stacked = torch.stack(samples)  # [m, k, players]
    error = stacked.std(0, correction=1) / math.sqrt(len(orders)) if len(orders) > 1 else torch.full_like(phi, math.nan)
    return stacked.mean(0), error


def enumerates(players: int, opts: ShapleyParams) -> bool:
    """Exact enumeration when every coalition costs no more forwards than sampling could."""
    return opts.exact and 2**players <= opts.n_samples * max(0, players - 1) + 2


def every_coalition(players: int) -> list[Coalition]:
    return [frozenset(c) for k in range(players + 1) for c in itertools.combinations(range(players), k)]


def exact_values(values: dict[Coalition, torch.Tensor], players: int) -> torch.Tensor:
    """[k, players] by the Shapley formula over every coalition."""
    phi = torch.zeros(*values[frozenset()].shape, players, dtype=torch.float64)
    for coalition, value in values.items():
        size = len(coalition)
        for player in range(players):
            if player in coalition:
                continue
            weight = math.factorial(size) * math.factorial(players - size - 1) / math.factorial(players)
            phi[..., player] += weight * (values[coalition | {player}] - value)
    return phi


def _efficiency(values: dict[Coalition, torch.Tensor], phi: torch.Tensor, players: int) -> dict[str, Any]:
    full, empty = values[frozenset(range(players))], values[frozenset()]
    total = phi.sum(-1)
    return {
        "f_all": full.tolist(),
        "f_none": empty.tolist(),
        "sum_of_values": total.tolist(),
        "gap": (total - (full - empty)).abs().max().item(),
    }


@register
class Shapley(Method):
    name = "shapley"
    sign = SIGN_SUPPORTS

    def _coalitions(self, task: Task) -> int:
        opts: ShapleyParams = task.methods[self.name]
        n = len(players_of(task))
        if not n:
            return 0
        return 2**n if enumerates(n, opts) else len(coalitions(permutations(n, opts.n_samples, opts.seed), n))

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        opts: ShapleyParams = options
        n = shape.sequence_units
        distinct = min(opts.n_samples * max(0, n - 1) + 2, 2**n)
        work = distinct * shape.seq_len
        if shape.sequence_scope and shape.contrast_len:
            work += distinct * shape.contrast_seq_len
        return Cost(work=work, memory=dims.graph_bytes(1, shape.seq_len, shape.answer_len, False) // 4)

    def units(self, task: Task) -> int:
        per = task.chunks.sequences
        runs = (1 if task.rows or "sequence" in task.scopes else 0) + (task.contrast_sequence is not None)
        return runs * math.ceil(self._coalitions(task) / per)

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: ShapleyParams = options
        task = ctx.task
        players = players_of(task)
        params: dict[str, Any] = {
            **dataclasses.asdict(opts),
            "players": len(players),
            "masking_rule": {"delete": "masked units are removed", "replace": "masked units become the pad token"}[
                opts.masking
            ],
        }
        if not players or not (("tokens" in task.scopes and task.rows) or "sequence" in task.scopes):
            return MethodOutput(tokens=None, sequence=None, over_units=True, params=params)
        exact = enumerates(len(players), opts)
        orders = permutations(len(players), opts.n_samples, opts.seed)
        chosen = every_coalition(len(players)) if exact else coalitions(orders, len(players))
        params["estimator"] = (
            "exact enumeration of every coalition (no more forwards than sampling); standard_error is 0"
            if exact
            else "permutation sampling; standard_error is the sampling error of each value"
        )
        values, rows, span = ablation.function_values(ctx, players, chosen, opts.masking)
        if exact:
            phi = exact_values(values, len(players))
            error = torch.zeros_like(phi)
        else:
            phi, error = estimate(orders, values)  # [k, players]
        tokens = sequence = None
        columns = [task.units.index(unit) for unit in players]
        if rows:
            tokens = np.zeros((len(rows), len(task.units)), dtype=np.float32)
            tokens[:, columns] = phi[: len(rows)].float().numpy()
            params["standard_error"] = error[: len(rows)].float().tolist()
        if span:
            sequence = phi[-1].float().numpy()
            params["sequence_standard_error"] = error[-1].float().tolist()
        params["efficiency"] = _efficiency(values, phi, len(players))
        params["coalitions"] = len(chosen)
        return MethodOutput(tokens=tokens, sequence=sequence, over_units=True, params=params)
