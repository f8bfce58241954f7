"""The /generate use case: validate against the model's limits, run the decode loop, shape the answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from schemas.common import ModelRef, Token
from schemas.generate import GenerateRequest, GenerateResponse, Timings, Usage
from service.engine.generation import GeneratedToken, GenerationOutput, generate
from service.engine.prompt import PromptTokens, build_prompt
from service.engine.sampling import SamplingParams
from service.errors import BudgetExceeded, InvalidRequest
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.settings import Settings
from service.usecases.tokens import generated_token, prompt_tokens


def sampling_params(req: GenerateRequest) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=req.max_new_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        stop=tuple(req.stop),
        top_logprobs=req.top_logprobs,
    )


def check_limits(lm: LoadedModel, settings: Settings, prompt: PromptTokens, max_new_tokens: int) -> None:
    """Refuse work the model cannot do before any model time is spent; messages give both numbers."""
    if max_new_tokens > settings.max_new_tokens_limit:
        raise InvalidRequest(
            f"max_new_tokens={max_new_tokens} is over this server's limit of {settings.max_new_tokens_limit}",
            param="max_new_tokens",
        )
    if len(prompt) > settings.max_prompt_tokens:
        raise BudgetExceeded(
            f"the prompt has {len(prompt)} tokens, over this server's limit of {settings.max_prompt_tokens}",
            param="prompt" if not prompt.is_chat else "messages",
        )
    if len(prompt) + max_new_tokens > lm.max_context:
        raise InvalidRequest(
            f"prompt tokens ({len(prompt)}) + max_new_tokens ({max_new_tokens}) = "
            f"{len(prompt) + max_new_tokens} exceeds the model's context limit of {lm.max_context}",
            param="max_new_tokens",
        )


async def prepare(
    registry: ModelRegistry, settings: Settings, req: GenerateRequest
) -> tuple[LoadedModel, PromptTokens, float]:
    """Resolve the model and tokenize (off the event loop); returns the tokenize time too."""
    lm = registry.get(req.model)
    started = time.perf_counter()
    prompt = await asyncio.to_thread(build_prompt, lm.tokenizer, prompt=req.prompt, messages=req.messages)
    check_limits(lm, settings, prompt, req.max_new_tokens)
    return lm, prompt, time.perf_counter() - started


async def run_generation(
    lm: LoadedModel,
    prompt: PromptTokens,
    req: GenerateRequest,
    *,
    on_token: Callable[[GeneratedToken], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[GenerationOutput, float]:
    """Run the decode loop on the model's thread; returns the output and the time spent queued."""
    enqueued = time.perf_counter()
    started: list[float] = []

    def work() -> GenerationOutput:
        started.append(time.perf_counter())
        return generate(lm, prompt, sampling_params(req), on_token=on_token, cancelled=cancelled)

    output = await lm.run(work)
    return output, started[0] - enqueued


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


async def generate_once(registry: ModelRegistry, settings: Settings, req: GenerateRequest) -> GenerateResponse:
    """Non-streaming /generate."""
    lm, prompt, tokenize_s = await prepare(registry, settings, req)
    output, queue_s = await run_generation(lm, prompt, req)
    return build_response(lm, prompt, req, output, tokenize_s=tokenize_s, queue_s=queue_s)
