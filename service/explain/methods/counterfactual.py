"""Counterfactuals: the smallest set of prompt units, taken in ranked order, whose removal changes the greedy
answer, verified by re-generating it.

Units (words, sentences, documents...) are ranked by their input × gradient effect on the answer (the
shared backward) or by exact leave-one-out (one forward per unit). The search deletes the top 1, 2, ...
units and re-generates greedily, up to ``max_runs`` generations: the first set whose answer differs (in its
first ``compare_tokens`` tokens, or as a whole) is returned with the new answer. With a contrast, the answer
"changes" when the contrast becomes more likely than the target (no generation needed). Honest when nothing
is found within the budget: ``found`` is false and the runs spent are reported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from service.explain import ablation
from service.explain.ablation import players_of
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_SUPPORTS, Method, MethodOutput, register
from service.explain.options import CounterfactualParams
from service.explain.task import Task


def greedy(ctx: Context, prompt: list[int], tokens: int) -> list[int]:
    """Greedy continuation of ``prompt`` (the model's own decoding, with its cache), up to ``tokens``."""
    with torch.no_grad():
        ids = torch.tensor([prompt], device=ctx.device)
        out = ctx.model.generate(  # type: ignore[operator]
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False, num_beams=1
        )
    return [int(t) for t in out[0, len(prompt) :]]


def _ranking(ctx: Context, players: list[tuple[int, ...]], opts: CounterfactualParams) -> np.ndarray:
    """Each player's estimated support for the answer (higher: more likely to change it when removed)."""
    if opts.rank_by == "leave_one_out":
        everyone = frozenset(range(len(players)))
        chosen = [everyone, *(everyone - {i} for i in range(len(players)))]
        values, _, span = ablation.function_values(ctx, players, chosen, "delete", phase="counterfactual")
        column = -1 if span else slice(None)
        full = values[everyone][column].sum()
        return np.array([float(full - values[everyone - {i}][column].sum()) for i in range(len(players))])
    grads = ctx.gradient_rows
    if grads.sequence_input_x_gradient is not None:
        per_position = grads.sequence_input_x_gradient.double().numpy()
    else:
        assert grads.input_x_gradient is not None
        per_position = grads.input_x_gradient.double().sum(0).numpy()
    return np.array([per_position[list(unit)].sum() for unit in players])


@register
class Counterfactual(Method):
    name = "counterfactual"
    sign = SIGN_SUPPORTS
    needs_gradients = True

    def units(self, task: Task) -> int:
        opts: CounterfactualParams = task.methods[self.name]
        return opts.max_runs + (len(players_of(task)) if opts.rank_by == "leave_one_out" else 0)

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        opts: CounterfactualParams = options
        tokens = opts.compare_tokens or shape.answer_len
        ranking = (shape.sequence_units + 1) * shape.seq_len if opts.rank_by == "leave_one_out" else 0
        # a greedy generation with a cache: the prompt once, then one token pass per new token
        generation = shape.sequence_sources + tokens
        return Cost(work=ranking + opts.max_runs * generation, memory=dims.graph_bytes(1, shape.seq_len, 1, False))

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        opts: CounterfactualParams = options
        task = ctx.task
        players = players_of(task)
        params: dict[str, Any] = {**dataclasses.asdict(opts), "players": len(players), "removal": "delete"}
        if not players:
            return MethodOutput(tokens=None, sequence=None, over_units=True, params={**params, "found": False})
        scores = _ranking(ctx, players, opts)
        order = [int(i) for i in np.argsort(-scores, kind="stable")]
        start, end = task.span
        prompt = list(task.ids[:start])
        answer = list(task.ids[start:end])
        tokens = min(opts.compare_tokens or len(answer), len(answer))
        contrast = task.contrast_sequence
        runs = 0
        reference: list[int] | None = None
        if contrast is None:
            reference = greedy(ctx, prompt, tokens)  # what the model says on the whole input
            runs += 1
            ctx.unit(self.name)
        found: dict[str, Any] | None = None
        for size in range(1, min(opts.max_units, len(players)) + 1):
            if runs >= opts.max_runs:
                break
            removed = set(order[:size])
            masked = {p for i in removed for p in players[i]}
            kept = [tok for p, tok in enumerate(prompt) if p not in masked] or [task.pad_id or 0]
            runs += 1
            if contrast is None:
                assert reference is not None
                new = greedy(ctx, kept, tokens)
                ctx.unit(self.name)
                if new[:tokens] != reference[:tokens]:
                    found = {"removed": sorted(removed), "new_answer_ids": new}
                    break
            else:
                flips = self._contrast_flips(ctx, players, removed)
                ctx.unit(self.name)
                if flips:
                    found = {"removed": sorted(removed)}
                    break
        params.update(runs=runs, found=found is not None, compared_tokens=tokens)
        params["criterion"] = (
            "the contrast becomes more likely than the target"
            if contrast is not None
            else f"the greedy answer's first {tokens} tokens differ from the reference generation"
        )
        columns = [task.units.index(unit) for unit in players]
        if reference is not None:
            params["reference_ids"] = reference
        if found is not None:
            params["new_answer_ids"] = found.get("new_answer_ids")
            params["removed_units"] = [columns[i] for i in found["removed"]]
            if params["new_answer_ids"] is None:
                del params["new_answer_ids"]
        sequence = np.zeros(len(task.units), dtype=np.float32)
        sequence[columns] = scores
        params["ranking"] = [columns[i] for i in order]
        return MethodOutput(tokens=None, sequence=sequence, over_units=True, params=params)

    @staticmethod
    def _contrast_flips(ctx: Context, players: list[tuple[int, ...]], removed: set[int]) -> bool:
        coalition = frozenset(range(len(players))) - removed
        values, _, span = ablation.function_values(ctx, players, [coalition], "delete", phase="counterfactual")
        return bool(span) and float(values[coalition][-1]) < 0.0  # target − contrast
