"""The /generate use case: take a slot, tokenize and check limits, generate in the model's batch, shape it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from schemas.common import ModelRef, Token
from schemas.generate import GenerateRequest, GenerateResponse, Timings, Usage
from service.engine.generation import GenerationOutput
from service.engine.prompt import PromptTokens, build_prompt
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.observability.tracing import traced
from service.serving import Deadline, Serving
from service.settings import Settings
from service.usecases import explain as explain_usecase
from service.usecases.limits import (
    check_input_size,
    check_limits,
    check_new_tokens,
    check_prompt_tokens_bounded,
    raise_if_stopped,
    sampling_params,
)
from service.usecases.tokens import generated_token, prompt_tokens


async def tokenize(lm: LoadedModel, settings: Settings, req: GenerateRequest) -> tuple[PromptTokens, float]:
    """Tokenize off the event loop and check the limits; returns the prompt and the time it took."""
    started = time.perf_counter()
    with traced("glassbox.tokenize"):
        prompt = await asyncio.to_thread(_bounded_build, lm, settings, req)
    check_limits(lm, settings, prompt, req.max_new_tokens)
    return prompt, time.perf_counter() - started


def _bounded_build(lm: LoadedModel, settings: Settings, req: GenerateRequest) -> PromptTokens:
    """Refuse a certainly over-long prompt after tokenizing a bounded part of it, else tokenize it all."""
    check_prompt_tokens_bounded(lm, settings, req)
    return build_prompt(lm.tokenizer, prompt=req.prompt, messages=req.messages)


def build_response(
    lm: LoadedModel,
    prompt: PromptTokens,
    req: GenerateRequest,
    output: GenerationOutput,
    *,
    tokenize_s: float,
    queue_s: float,
) -> GenerateResponse:
    tokens: list[Token] = [generated_token(lm, t, logprobs=req.logprobs) for t in output.tokens]
    total_s = tokenize_s + queue_s + output.prefill_s + output.decode_s
    finish = output.finish_reason if output.finish_reason != "cancelled" else "length"
    return GenerateResponse(
        text=output.text,
        finish_reason=finish,  # type: ignore[arg-type]
        prompt_tokens=prompt_tokens(lm, prompt),
        tokens=tokens,
        usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(tokens), total_tokens=len(prompt) + len(tokens)),
        model=ModelRef(id=lm.name, revision=lm.revision),
        seed=output.seed,
        timings=Timings(
            queue_ms=queue_s * 1000,
            tokenize_ms=tokenize_s * 1000,
            prefill_ms=output.prefill_s * 1000,
            decode_ms=output.decode_s * 1000,
            total_ms=total_s * 1000,
            tokens_per_s=len(tokens) / output.decode_s if output.decode_s > 0 else 0.0,
        ),
    )


@dataclass(frozen=True)
class Admitted:
    """A request past everything that can refuse it with a status code, holding a slot."""

    lm: LoadedModel
    settings: Settings
    serving: Serving
    prompt: PromptTokens
    deadline: Deadline
    tokenize_s: float
    waited_s: float  # for the slot


async def admit(
    registry: ModelRegistry,
    settings: Settings,
    req: GenerateRequest,
    serving: Serving,
    deadline: Deadline | None,
    slot: contextlib.AsyncExitStack,
) -> Admitted:
    """Model, token limit, a slot (held until ``slot`` closes), then tokenization and the prompt's limits:
    the server's and those of the ``explain`` option (costed at the longest answer)."""
    lm = registry.get(req.model)
    check_new_tokens(settings, req.max_new_tokens)
    check_input_size(lm, settings, req)
    deadline = deadline or serving.deadline()
    waited = await slot.enter_async_context(serving.admission.slot(lm.name, deadline))
    prompt, tokenize_s = await tokenize(lm, settings, req)
    if req.explain is not None:
        explain_usecase.precheck(lm, settings, prompt, req.explain, req.max_new_tokens, deadline)
    return Admitted(lm, settings, serving, prompt, deadline, tokenize_s, waited)


async def respond(
    job: Admitted,
    req: GenerateRequest,
    output: GenerationOutput,
    queue_s: float,
    sink: explain_usecase.EventSink | None = None,
) -> GenerateResponse:
    """The response, with the explanation of exactly these tokens when the request asks for one (run in the
    request's slot, on the prompt it already tokenized)."""
    response = build_response(
        job.lm, job.prompt, req, output, tokenize_s=job.tokenize_s, queue_s=job.waited_s + queue_s
    )
    if req.explain is not None:
        answer = explain_usecase.answer_of(output, job.lm.special_ids)
        contrast = explain_usecase.contrast_of(job.lm, req.explain, job.prompt, "explain.contrast")
        response.explanation = await explain_usecase.explain_answer(
            job.lm,
            job.settings,
            job.serving,
            job.prompt,
            answer,
            req.explain,
            deadline=job.deadline,
            contrast=contrast,
            sink=sink,
        )
    return response


async def generate_admitted(job: Admitted, req: GenerateRequest) -> GenerateResponse:
    """A row in the model's batch for an admitted request (and its explanation)."""
    lm, prompt = job.lm, job.prompt
    with traced("glassbox.generate", model=lm.name, prompt_tokens=len(prompt)) as span:
        batcher = job.serving.scheduler(lm).batcher
        output, queue_s = await batcher.generate(prompt.ids, sampling_params(req), deadline=job.deadline)
        span.set_attribute("completion_tokens", len(output.tokens))
    raise_if_stopped(output, job.deadline)
    return await respond(job, req, output, queue_s)


async def generate_once(
    registry: ModelRegistry,
    settings: Settings,
    req: GenerateRequest,
    *,
    serving: Serving,
    deadline: Deadline | None = None,
) -> GenerateResponse:
    """Non-streaming /generate: a slot, then tokenize, then a row in the model's batch (and the explanation)."""
    async with contextlib.AsyncExitStack() as slot:
        job = await admit(registry, settings, req, serving, deadline, slot)
        return await generate_admitted(job, req)
