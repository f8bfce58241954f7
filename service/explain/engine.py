"""Run the requested methods on one task, sharing the forward and gradients. Synchronous: call it on the
model's worker thread (``LoadedModel.run``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from transformers import PreTrainedModel

from service.explain import methods as registry
from service.explain.context import Context
from service.explain.methods.base import MethodOutput
from service.explain.state import explaining
from service.explain.task import Task


@dataclass
class EngineResult:
    outputs: dict[str, MethodOutput]
    answer_logprobs: list[float]
    foil_logprobs: list[float] | None
    contrast_logprob: float | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


def explain(model: PreTrainedModel, task: Task) -> EngineResult:
    """All methods of ``task`` in one pass over the model state (restored on exit, errors included)."""
    methods = [registry.get(name) for name in task.methods]
    attention = any(m.needs_attention for m in methods)
    gradients = any(m.needs_gradients for m in methods)
    timings: dict[str, float] = {}
    outputs: dict[str, MethodOutput] = {}
    with explaining(model, attention=attention):
        ctx = Context(model, task, attentions=attention, gradients=gradients)
        started = time.perf_counter()
        forward = ctx.forward
        timings["forward"] = time.perf_counter() - started
        if gradients:
            started = time.perf_counter()
            _ = ctx.gradient_rows
            timings["gradients"] = time.perf_counter() - started
        for method in methods:
            started = time.perf_counter()
            outputs[method.name] = method.run(ctx, task.methods[method.name])
            timings[method.name] = time.perf_counter() - started
        contrast_lp = ctx.contrast_logprob if task.contrast_ids is not None else None
        result = EngineResult(outputs, forward.answer_logprobs, forward.foil_logprobs, contrast_lp, timings)
        del ctx, forward  # drop the graph before leaving the model's thread
    return result
