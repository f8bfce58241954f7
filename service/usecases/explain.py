"""The /explain use case, one pass down the layers: a slot → tokenize once → plan and cost once (refusals
before any model work) → the answer (given, forced, cached or generated in the batch) → the engine on the
model's scheduler, in units → the response. Progress and final rows stream through an optional sink.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from schemas.explain import ExplainOptions, ExplainProgressEvent, ExplainRequest, ExplainResponse, ExplainRowEvent
from service.engine.continuation import Answer, placeholder_answer, tokenize_continuation
from service.engine.generation import GenerationOutput
from service.engine.prompt import PromptTokens, build_prompt
from service.errors import InvalidRequest
from service.explain import engine
from service.metrics import ESTIMATE_ERROR
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.serving import Checkpoint, Deadline, Serving
from service.settings import Settings
from service.usecases import self_explanation
from service.usecases.explain_plan import Plan, check_seconds, make_plan
from service.usecases.explain_response import build_response, row_events
from service.usecases.limits import (
    check_input_size,
    check_limits,
    check_prompt_tokens_bounded,
    raise_if_stopped,
    sampling_params,
)

ExplainEvent = ExplainProgressEvent | ExplainRowEvent

_DEADLINE = "the time left before the request's deadline"

#: Produces the answer to explain for a tokenized prompt (e.g. through the /generate cache).
AnswerSource = Callable[[PromptTokens], Awaitable[Answer]]


@dataclass
class EventSink:
    """Streamed events of one explanation, handed from the model thread to the event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[ExplainEvent] = field(default_factory=asyncio.Queue)
    started: float = field(default_factory=time.perf_counter)
    estimate_s: float = 0.0

    def put(self, event: ExplainEvent) -> None:
        """Thread-safe (called on the model thread)."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def progress(self, done: int, total: int, phase: str) -> None:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (total - done) if done else self.estimate_s
        self.put(
            ExplainProgressEvent(done=done, total=total, elapsed_s=round(elapsed, 3), eta_s=round(eta, 3), phase=phase)
        )


def answer_of(output: GenerationOutput, special: frozenset[int]) -> Answer:
    offsets = [(t.offset, t.offset + len(t.text)) for t in output.tokens]
    return Answer(output.ids, output.text, offsets, [t.id in special for t in output.tokens])


def _pad_id(lm: LoadedModel) -> int | None:
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad) if pad is not None else None


def plan_for(
    lm: LoadedModel,
    settings: Settings,
    prompt: PromptTokens,
    answer: Answer,
    contrast: Answer | None,
    options: ExplainOptions,
    *,
    estimate_only: bool = False,
) -> Plan:
    return make_plan(
        prompt=prompt,
        answer=answer,
        contrast=contrast,
        options=options,
        facts=lm.facts,
        settings=settings,
        prompt_token_text=lambda i: prompt.token_text(i, lm.tokenizer),
        pad_id=_pad_id(lm),
        max_context=lm.max_context,
        speed=lm.speed,
        estimate_only=estimate_only,
    )


def contrast_of(
    lm: LoadedModel, options: ExplainOptions, prompt: PromptTokens, param: str = "contrast"
) -> Answer | None:
    """The contrast's tokens as they follow the prompt (see ``tokenize_continuation``)."""
    if not options.contrast:
        return None
    return tokenize_continuation(lm.tokenizer, options.contrast, param, after=prompt.text)


def generation_seconds(lm: LoadedModel, prompt_len: int, max_new_tokens: int) -> float:
    speed = lm.speed
    return prompt_len / speed.forward_per_s + max_new_tokens * speed.decode_step_s if speed is not None else 0.0


def precheck(
    lm: LoadedModel,
    settings: Settings,
    prompt: PromptTokens,
    options: ExplainOptions,
    max_new_tokens: int,
    deadline: Deadline | None = None,
) -> float:
    """Refuse an over-budget explanation before generating (the answer costed at its longest, generation
    included); returns the estimated seconds."""
    answer = placeholder_answer(max_new_tokens)
    plan = plan_for(lm, settings, prompt, answer, contrast_of(lm, options, prompt), options, estimate_only=True)
    estimate = plan.estimate_s + generation_seconds(lm, len(prompt), max_new_tokens)
    if deadline is not None:
        check_seconds(
            estimate, deadline.remaining(), what="the time left before the request's deadline", code="deadline"
        )
    return estimate


async def explain(
    registry: ModelRegistry,
    settings: Settings,
    req: ExplainRequest,
    *,
    serving: Serving,
    deadline: Deadline | None = None,
    answer_source: AnswerSource | None = None,
    sink: EventSink | None = None,
) -> ExplainResponse:
    """POST /explain in one of the model's admission slots, taken before tokenizing (429 when the model's
    slots and queue are full; the deadline bounds the wait). Without ``target`` the answer comes from
    ``answer_source`` (the /generate cache) or is generated in the model's batch."""
    lm = registry.get(req.model)
    check_input_size(lm, settings, req)
    deadline = deadline or serving.deadline()
    async with serving.admission.slot(lm.name, deadline):
        timings: dict[str, float] = {}
        started = time.perf_counter()
        prompt = await asyncio.to_thread(_tokenize, lm, settings, req)
        contrast = contrast_of(lm, req, prompt)
        timings["tokenize"] = time.perf_counter() - started
        if req.target is not None:
            answer = tokenize_continuation(lm.tokenizer, req.target, "target", after=prompt.text)
        else:
            check_limits(lm, settings, prompt, req.max_new_tokens)
            estimate = precheck(lm, settings, prompt, req, req.max_new_tokens, deadline)
            if sink is not None:
                sink.estimate_s = estimate
                sink.progress(0, 1, "generate")
            started = time.perf_counter()
            answer = await (answer_source or _generator(serving, lm, req, deadline))(prompt)
            timings["generate"] = time.perf_counter() - started
            if not answer.ids:
                raise InvalidRequest(
                    "the model generated no tokens to explain (it ended at once)", param="max_new_tokens"
                )
        return await explain_answer(
            lm, settings, serving, prompt, answer, req, contrast=contrast, deadline=deadline, timings=timings, sink=sink
        )


def _tokenize(lm: LoadedModel, settings: Settings, req: ExplainRequest) -> PromptTokens:
    """Refuse a certainly over-long prompt after tokenizing a bounded part of it, else tokenize it all."""
    check_prompt_tokens_bounded(lm, settings, req)
    return build_prompt(lm.tokenizer, prompt=req.prompt, messages=req.messages)


def _generator(serving: Serving, lm: LoadedModel, req: ExplainRequest, deadline: Deadline) -> AnswerSource:
    async def generate(prompt: PromptTokens) -> Answer:
        output, _ = await serving.scheduler(lm).batcher.generate(prompt.ids, sampling_params(req), deadline=deadline)
        raise_if_stopped(output, deadline)
        return answer_of(output, lm.special_ids)

    return generate


async def explain_answer(
    lm: LoadedModel,
    settings: Settings,
    serving: Serving,
    prompt: PromptTokens,
    answer: Answer,
    options: ExplainOptions,
    *,
    deadline: Deadline,
    contrast: Answer | None = None,
    timings: dict[str, float] | None = None,
    sink: EventSink | None = None,
) -> ExplainResponse:
    """Plan (and refuse what would not fit the deadline), run the engine on the model's scheduler, shape."""
    if not answer.ids:
        raise InvalidRequest("the model generated no tokens to explain", param="explain")
    timings = dict(timings or {})
    started = time.perf_counter()
    plan = plan_for(lm, settings, prompt, answer, contrast, options)
    follow_up_s = (
        generation_seconds(lm, len(prompt) + len(answer.ids) + 32, options.self_explanation_tokens)
        if options.self_explanation
        else 0.0
    )
    check_seconds(plan.estimate_s + follow_up_s, deadline.remaining(), what=_DEADLINE, code="deadline")
    timings["plan"] = time.perf_counter() - started
    on_rows = None
    if sink is not None:
        sink.estimate_s = plan.estimate_s
        sink.started = time.perf_counter()

        def on_rows(method: str, rows: list[int], values: object, over_units: bool) -> None:
            for event in row_events(method, rows, values, over_units, plan, options):  # type: ignore[arg-type]
                sink.put(event)

    def work(checkpoint: Checkpoint) -> engine.EngineResult:
        return engine.explain(lm.model, plan.task, checkpoint, on_rows)

    started = time.perf_counter()
    result = await serving.scheduler(lm).run(
        work, deadline=deadline, on_progress=sink.progress if sink is not None else None, kind="explanation"
    )
    elapsed = time.perf_counter() - started
    result.timings["total"] = elapsed
    if plan.estimate_s > 0:
        ESTIMATE_ERROR.labels(model=lm.name).observe(elapsed / plan.estimate_s)
    timings["engine"] = elapsed
    timings.update({f"engine.{k}": v for k, v in result.timings.items() if k != "total"})
    account = None
    if options.self_explanation:
        started = time.perf_counter()
        account = await self_explanation.ask(serving, lm, prompt, answer, options.self_explanation_tokens, deadline)
        timings["self_explanation"] = time.perf_counter() - started
    started = time.perf_counter()
    response = build_response(lm, prompt, answer, contrast, options, plan, result, account)
    timings["present"] = time.perf_counter() - started
    response.provenance.timings_ms = {k: round(v * 1000, 2) for k, v in timings.items()}
    return response
