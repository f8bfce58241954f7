"""Run the requested methods on one task, sharing the forward and gradients. Synchronous: it runs on the
model's thread (the scheduler's), calling ``checkpoint`` between units of work and inside every pass."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from service.explain import faithfulness, stability
from service.explain import methods as registry
from service.explain.attention_rows import AttentionMode
from service.explain.checkpoint import NO_CHECKPOINT, Checkpoint, RowsCallback
from service.explain.context import Context
from service.explain.methods.base import Method, MethodOutput, attention_mode
from service.explain.state import explaining
from service.explain.task import Task
from service.models.facts import facts_of


@dataclass
class EngineResult:
    outputs: dict[str, MethodOutput]
    answer_logprobs: list[float]
    foil_logprobs: list[float] | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    units: int = 0  # units of work run
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> faithfulness figures
    stability: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> stability figures
    contrast_logprobs: list[float] | None = None  # sequence-scope contrast: each contrast token's log-probability


def shared_gradient_units(task: Task) -> int:
    rows = math.ceil(len(task.rows) / task.chunks.targets) if "tokens" in task.scopes and task.rows else 0
    return rows + ("sequence" in task.scopes)


def total_units(task: Task) -> int:
    """Units the progress bar counts: the forward, the shared gradients, each method's own, one per method."""
    methods = [registry.get(name) for name in task.methods]
    gradients = any(m.needs_gradients for m in methods)
    own = sum(m.units(task) + 1 for m in methods)
    plain = 1 + (shared_gradient_units(task) if gradients else 0) + own
    return plain + faithfulness.units(task) + stability.units(task, total_units)


def _run_methods(ctx: Context, methods: list[Method], timings: dict[str, float]) -> dict[str, MethodOutput]:
    """The shared forward and gradients, then each method, one unit each (rows streamed as they are final)."""
    task = ctx.task
    started = time.perf_counter()
    _ = ctx.forward
    timings["forward"] = time.perf_counter() - started
    if any(m.needs_gradients for m in methods):
        started = time.perf_counter()
        _ = ctx.gradient_rows
        timings["gradients"] = time.perf_counter() - started
    outputs: dict[str, MethodOutput] = {}
    for method in methods:
        started = time.perf_counter()
        out = outputs[method.name] = method.run(ctx, task.methods[method.name])
        if out.tokens is not None and method.name not in ctx.streamed:
            ctx.emit_rows(method.name, range(len(task.rows)), out.tokens, over_units=out.over_units)
        timings[method.name] = time.perf_counter() - started
        ctx.unit(method.name)
    return outputs


def _rerun(
    parent: Context, methods: list[Method], attention: AttentionMode, gradients: bool
) -> Callable[[Task], dict[str, MethodOutput]]:
    """Every method again on a perturbed task, in the same model state, counting units on ``parent``."""

    def again(perturbed: Task) -> dict[str, MethodOutput]:
        sub = Context(parent.model, perturbed, attentions=attention, gradients=gradients, checkpoint=parent.checkpoint)
        sub.done_units, sub.total_units = parent.done_units, parent.total_units
        outs = _run_methods(sub, methods, {})
        parent.done_units = sub.done_units
        return outs

    return again


def explain(
    model: PreTrainedModel, task: Task, checkpoint: Checkpoint = NO_CHECKPOINT, on_rows: RowsCallback | None = None
) -> EngineResult:
    """All methods of ``task`` in one pass over the model state (restored on exit, errors included)."""
    methods = [registry.get(name) for name in task.methods]
    attention = attention_mode(methods, facts_of(model)) if any(m.needs_attention for m in methods) else "none"
    gradients = any(m.needs_gradients for m in methods)
    timings: dict[str, float] = {}
    outputs: dict[str, MethodOutput] = {}
    with explaining(model, attention=attention, checkpoint=checkpoint, recompute=task.recompute):
        ctx = Context(
            model,
            task,
            attentions=attention,
            gradients=gradients,
            checkpoint=checkpoint,
            on_rows=on_rows,
            total_units=total_units(task),
        )
        outputs = _run_methods(ctx, methods, timings)
        forward = ctx.forward
        evaluations = {}
        if task.evaluate is not None:
            started = time.perf_counter()
            evaluations = faithfulness.run(ctx, outputs)
            timings["faithfulness"] = time.perf_counter() - started
        stable: dict[str, dict[str, Any]] = {}
        if task.stability is not None:
            started = time.perf_counter()

            stable = stability.run(ctx, outputs, _rerun(ctx, methods, attention, gradients))
            timings["stability"] = time.perf_counter() - started
        result = EngineResult(
            outputs,
            forward.answer_logprobs,
            forward.foil_logprobs,
            timings,
            ctx.done_units,
            evaluations=evaluations,
            stability=stable,
            contrast_logprobs=ctx.contrast_logprobs,
        )
        del ctx, forward  # drop the graph before leaving the model's thread
    return result
