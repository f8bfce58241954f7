"""The /explain use case: validate → estimate cost → build prompt → generate (if no target) → attribute → shape.

Every piece of model work runs on the model's worker thread (``LoadedModel.run``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from schemas.common import ModelRef, Token
from schemas.explain import (
    Attributed,
    ExplainOptions,
    ExplainRequest,
    ExplainResponse,
    MethodResult,
    Provenance,
    SourceUnit,
)
from service.engine.generation import GenerationOutput, generate
from service.engine.prompt import PromptTokens, build_prompt
from service.errors import InvalidRequest
from service.explain import engine, present, summary
from service.explain.methods.base import MethodOutput
from service.explain.objective import DESCRIPTIONS
from service.explain.plan import Answer, Plan, make_plan, placeholder_answer, tokenize_continuation
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.serving import Deadline, Serving
from service.settings import Settings
from service.usecases.limits import check_limits, sampling_params
from service.usecases.tokens import prompt_tokens


def answer_of(output: GenerationOutput, special: frozenset[int]) -> Answer:
    offsets = [(t.offset, t.offset + len(t.text)) for t in output.tokens]
    return Answer(output.ids, output.text, offsets, [t.id in special for t in output.tokens])


def _pad_id(lm: LoadedModel) -> int | None:
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad) if pad is not None else None


def _plan(
    lm: LoadedModel,
    settings: Settings,
    prompt: PromptTokens,
    answer: Answer,
    contrast: Answer | None,
    options: ExplainOptions,
) -> Plan:
    return make_plan(
        prompt=prompt,
        answer=answer,
        contrast=contrast,
        options=options,
        config=lm.model.config,
        settings=settings,
        prompt_token_text=lambda i: prompt.token_text(i, lm.tokenizer),
        pad_id=_pad_id(lm),
        max_context=lm.max_context,
    )


def precheck(
    lm: LoadedModel, settings: Settings, prompt: PromptTokens, options: ExplainOptions, max_new_tokens: int
) -> None:
    """Refuse an over-budget explanation before generating: the answer is costed at its longest."""
    contrast = tokenize_continuation(lm.tokenizer, options.contrast, "contrast") if options.contrast else None
    _plan(lm, settings, prompt, placeholder_answer(max_new_tokens), contrast, options)


async def explain(
    registry: ModelRegistry,
    settings: Settings,
    req: ExplainRequest,
    *,
    serving: Serving | None = None,
    deadline: Deadline | None = None,
    answer: Answer | None = None,
) -> ExplainResponse:
    """POST /explain in one of the model's admission slots, taken before tokenizing (429 when the model's
    slots and queue are full; the deadline bounds the wait). ``serving=None``: no admission (direct callers).
    ``answer``: an answer already generated for this request's input and sampling fields (e.g. from the
    cache), explained instead of generating again."""
    lm = registry.get(req.model)
    if serving is None:
        return await _explain(lm, settings, req, answer)
    async with serving.admission.slot(lm.name, deadline or serving.deadline()):
        return await _explain(lm, settings, req, answer)


async def _explain(
    lm: LoadedModel, settings: Settings, req: ExplainRequest, given: Answer | None = None
) -> ExplainResponse:
    """``target`` by forced decoding, a given answer, or the answer generated with the sampling fields."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    prompt = await asyncio.to_thread(build_prompt, lm.tokenizer, prompt=req.prompt, messages=req.messages)
    contrast = tokenize_continuation(lm.tokenizer, req.contrast, "contrast") if req.contrast else None
    timings["tokenize"] = time.perf_counter() - started
    if req.target is not None:
        answer = tokenize_continuation(lm.tokenizer, req.target, "target")
    elif given is not None:
        if not given.ids:
            raise InvalidRequest("the model generated no tokens to explain (it ended at once)", param="max_new_tokens")
        answer = given
    else:
        check_limits(lm, settings, prompt, req.max_new_tokens)
        precheck(lm, settings, prompt, req, req.max_new_tokens)
        params = sampling_params(req)
        started = time.perf_counter()
        output = await lm.run(generate, lm, prompt, params)
        timings["generate"] = time.perf_counter() - started
        if not output.tokens:
            raise InvalidRequest("the model generated no tokens to explain (it ended at once)", param="max_new_tokens")
        answer = answer_of(output, lm.special_ids)
    return await explain_answer(lm, settings, prompt, answer, req, contrast=contrast, timings=timings)


async def explain_generation(
    lm: LoadedModel, settings: Settings, prompt: PromptTokens, answer: Answer, options: ExplainOptions
) -> ExplainResponse:
    """/generate's ``explain`` field: the explanation of what was just generated (no second generation)."""
    if not answer.ids:
        raise InvalidRequest("the model generated no tokens to explain", param="explain")
    contrast = tokenize_continuation(lm.tokenizer, options.contrast, "explain.contrast") if options.contrast else None
    return await explain_answer(lm, settings, prompt, answer, options, contrast=contrast)


async def explain_answer(
    lm: LoadedModel,
    settings: Settings,
    prompt: PromptTokens,
    answer: Answer,
    options: ExplainOptions,
    *,
    contrast: Answer | None = None,
    timings: dict[str, float] | None = None,
) -> ExplainResponse:
    timings = dict(timings or {})
    started = time.perf_counter()
    plan = _plan(lm, settings, prompt, answer, contrast, options)
    timings["plan"] = time.perf_counter() - started
    started = time.perf_counter()
    result = await lm.run(engine.explain, lm.model, plan.task)
    timings["engine"] = time.perf_counter() - started
    timings.update({f"engine.{k}": v for k, v in result.timings.items()})
    started = time.perf_counter()
    response = build_response(lm, prompt, answer, contrast, options, plan, result)
    timings["present"] = time.perf_counter() - started
    response.provenance.timings_ms = {k: round(v * 1000, 2) for k, v in timings.items()}
    return response


def _unit_arrays(out: MethodOutput, plan: Plan, aggregation: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Method output → [..., rows, units] and [..., sequence units], causal mask applied."""
    units = plan.units
    seq_units = units[: plan.sequence_units]
    tokens = sequence = None
    if out.tokens is not None:
        tokens = out.tokens if out.over_units else present.aggregate(out.tokens, units, aggregation)
        tokens = present.causal_mask(tokens, units, plan.task.rows)
    if out.sequence is not None:
        sequence = (
            out.sequence[..., : len(seq_units)]
            if out.over_units
            else present.aggregate(out.sequence, seq_units, aggregation)
        )
    return tokens, sequence


def build_response(
    lm: LoadedModel,
    prompt: PromptTokens,
    answer: Answer,
    contrast: Answer | None,
    options: ExplainOptions,
    plan: Plan,
    result: engine.EngineResult,
) -> ExplainResponse:
    encode: dict[str, Any] = {
        "normalization": options.normalize,
        "k": options.row_top_k,
        "precision": options.precision,
        "encoding": options.encoding,
        "dtype": options.binary_dtype,
    }
    methods: dict[str, MethodResult] = {}
    summary_vectors: dict[str, np.ndarray] = {}
    for name, out in result.outputs.items():
        tokens, sequence = _unit_arrays(out, plan, options.aggregation)
        lead = list(out.lead_dims)
        methods[name] = MethodResult(
            tokens=None if tokens is None else present.encode(tokens, [*lead, "target", "source"], **encode),
            sequence=None if sequence is None else present.encode(sequence, [*lead, "source"], **encode),
            params=out.params,
            time_ms=round(result.timings.get(name, 0.0) * 1000, 2),
        )
        if not lead:
            if sequence is not None:
                summary_vectors[name] = sequence
            elif tokens is not None:
                summary_vectors[name] = np.abs(tokens).sum(0)[: plan.sequence_units]
    texts = {"prompt": prompt.text, "answer": answer.text}
    chosen = next((m for m in summary.PREFERENCE if m in summary_vectors), None)
    what = "The answer" if plan.span == (0, len(answer.ids)) else "This part of the answer"
    text = (
        summary.summarize(
            chosen,
            summary_vectors[chosen],
            plan.units[: plan.sequence_units],
            texts=texts,
            chat=prompt.is_chat,
            what=what,
        )
        if chosen is not None
        else "No single-vector method ran; see the arrays."
    )
    target_tokens = [
        Token(
            id=answer.ids[j],
            text=answer.token_text(j),
            offset=answer.offsets[j][0],
            special=answer.special[j],
            logprob=result.answer_logprobs[j],
        )
        for j in range(len(answer.ids))
    ]
    contrast_tokens = None
    if contrast is not None:
        contrast_tokens = [
            Token(id=contrast.ids[j], text=contrast.token_text(j), offset=contrast.offsets[j][0])
            for j in range(len(contrast.ids))
        ]
        if result.foil_logprobs is not None:
            for token, lp in zip(contrast_tokens, result.foil_logprobs, strict=False):
                token.logprob = lp
    description = DESCRIPTIONS[options.function]
    if contrast is not None:
        description = f"difference: {description}, minus the same for the contrast"
    return ExplainResponse(
        text=answer.text,
        prompt_text=prompt.text,
        prompt_tokens=prompt_tokens(lm, prompt),
        target_tokens=target_tokens,
        rows=plan.rows,
        span=list(plan.span),
        sources=[
            SourceUnit(
                text=u.text,
                kind=u.kind,  # type: ignore[arg-type]
                start=u.start,
                end=u.end,
                tokens=list(u.indices),
                message_index=u.message_index,
                role=u.role,
                label=u.label,
            )
            for u in plan.units
        ],
        sequence_sources=plan.sequence_units,
        granularity=options.granularity,
        aggregation=options.aggregation,
        attributed=Attributed(
            function=options.function,
            description=description,
            contrast=contrast.text if contrast is not None else None,
            contrast_tokens=contrast_tokens,
        ),
        methods=methods,
        summary=text,
        provenance=Provenance(
            model=ModelRef(id=lm.name, revision=lm.revision),
            dtype=str(lm.dtype).removeprefix("torch."),
            device=str(lm.device),
            methods={name: out.params for name, out in result.outputs.items()},
            chunks={
                "targets_per_backward": plan.task.chunks.targets,
                "steps_per_forward": plan.task.chunks.steps,
                "sequences_per_forward": plan.task.chunks.sequences,
                "ig_targets_per_backward": plan.task.chunks.ig_targets,
            },
            estimated_work=plan.work,
            timings_ms={},
        ),
    )
