"""`/v1/chat/completions`, `/v1/completions`, `/v1/models`: OpenAI requests run through the native use cases.

Each choice is one native generation (``generate_once`` through the response cache, as `/generate` runs
it), so the cache, single flight, admission, deadlines and explanations are the native ones; this module
only translates shapes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from schemas.common import Token
from schemas.generate import GenerateRequest, GenerateResponse
from schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Model,
    ModelList,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from service.cache import CacheOutcome
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.serving import Deadline
from service.usecases.caching import ENGINE_VERSION, cached, key_for
from service.usecases.generate import generate_once
from service.usecases.openai_requests import chat_to_native, completion_prompts, completion_to_native
from service.usecases.request_context import RequestContext
from service.usecases.token_bytes import TokenBytes

#: Native finish reasons → OpenAI's (a stop string is OpenAI's `stop`).
FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length"}


#: What every /v1 call needs to run the native use cases.
Context = RequestContext


def system_fingerprint(lm: LoadedModel) -> str:
    """Changes exactly when the same request could get a different answer: weights, dtype, engine."""
    dtype = str(lm.dtype).removeprefix("torch.")
    return f"gb-{lm.revision[:12]}-{dtype}-e{ENGINE_VERSION}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def cache_header(outcomes: list[CacheOutcome]) -> str:
    """One `X-Cache` for several choices: their common outcome, else `miss` (something was computed)."""
    values = {o.value for o in outcomes}
    return values.pop() if len(values) == 1 else CacheOutcome.MISS.value


_token_bytes: dict[int, TokenBytes] = {}


def token_bytes(lm: LoadedModel) -> TokenBytes:
    key = id(lm.tokenizer)
    found = _token_bytes.get(key)
    if found is None:
        found = _token_bytes[key] = TokenBytes(lm.tokenizer)
    return found


def chat_logprobs(lm: LoadedModel, tokens: list[Token], top: int) -> ChoiceLogprobs:
    table = token_bytes(lm)
    content = [
        TokenLogprob(
            token=t.text,
            logprob=t.logprob if t.logprob is not None else 0.0,
            bytes=table.bytes_of(t.id),
            top_logprobs=[
                TopLogprob(token=a.token, logprob=a.logprob, bytes=table.bytes_of(a.id))
                for a in (t.top_logprobs or [])[:top]
            ],
        )
        for t in tokens
    ]
    return ChoiceLogprobs(content=content)


def explanation_of(resp: GenerateResponse) -> dict[str, Any] | None:
    """The `/explain` object minus what the OpenAI part already holds (the answer text) and the cache flag."""
    if resp.explanation is None:
        return None
    return resp.explanation.model_dump(mode="json", exclude_none=True, exclude={"text", "cache"})


async def run_all(ctx: Context, requests: list[GenerateRequest]) -> tuple[list[GenerateResponse], list[CacheOutcome]]:
    """Each native request through the cache, concurrently (one fails: the others are cancelled)."""

    async def one(req: GenerateRequest) -> tuple[GenerateResponse, CacheOutcome]:
        lm = ctx.registry.get(req.model)

        def compute(run_deadline: Deadline) -> Awaitable[GenerateResponse]:
            return generate_once(ctx.registry, ctx.settings, req, serving=ctx.serving, deadline=run_deadline)

        body, outcome = await cached(
            ctx.cache,
            key_for("generate", lm, req),
            compute,
            deadline=ctx.deadline,
            temperature=req.temperature,
            seed=req.seed,
            cache_control=ctx.cache_control,
        )
        return GenerateResponse.model_validate(body), outcome

    tasks = [asyncio.ensure_future(one(r)) for r in requests]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return [r for r, _ in results], [o for _, o in results]


def chat_natives(req: ChatCompletionRequest) -> list[GenerateRequest]:
    return [chat_to_native(req, seed_offset=i) for i in range(req.n)]


async def chat_completion(ctx: Context, req: ChatCompletionRequest) -> tuple[ChatCompletion, str]:
    lm = ctx.registry.get(req.model)
    natives = chat_natives(req)
    responses, outcomes = await run_all(ctx, natives)
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=resp.text),
            finish_reason=FINISH[resp.finish_reason],  # type: ignore[arg-type]
            logprobs=chat_logprobs(lm, resp.tokens, natives[i].top_logprobs) if req.logprobs else None,
            token_ids=[t.id for t in resp.tokens] if req.return_token_ids else None,
            explanation=explanation_of(resp),
        )
        for i, resp in enumerate(responses)
    ]
    first = responses[0]
    completion_tokens = sum(r.usage.completion_tokens for r in responses)
    completion = ChatCompletion(
        id=new_id("chatcmpl"),
        created=int(time.time()),
        model=lm.name,
        choices=choices,
        usage=Usage(
            prompt_tokens=first.usage.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=first.usage.prompt_tokens + completion_tokens,
        ),
        system_fingerprint=system_fingerprint(lm),
        prompt_token_ids=[t.id for t in first.prompt_tokens] if req.return_token_ids else None,
    )
    return completion, cache_header(outcomes)


def completion_logprobs(resp: GenerateResponse, prompt: str, top: int, echo: bool) -> CompletionLogprobs:
    """Legacy logprobs. Echoed prompt tokens carry null: the native use cases return no prompt logprobs."""
    shift = len(prompt) if echo else 0
    shown = [t for t in resp.prompt_tokens if not t.special] if echo else []
    generated = resp.tokens
    return CompletionLogprobs(
        tokens=[t.text for t in shown] + [t.text for t in generated],
        token_logprobs=[None for _ in shown] + [t.logprob for t in generated],
        top_logprobs=[None for _ in shown]
        + [{a.token: a.logprob for a in (t.top_logprobs or [])[:top]} for t in generated],
        text_offset=[t.offset for t in shown] + [shift + t.offset for t in generated],
    )


async def completion(ctx: Context, req: CompletionRequest) -> tuple[Completion, str]:
    lm = ctx.registry.get(req.model)
    prompts = completion_prompts(req)
    natives = [completion_to_native(req, p, seed_offset=i) for p in prompts for i in range(req.n)]
    responses, outcomes = await run_all(ctx, natives)
    choices = []
    for index, resp in enumerate(responses):
        prompt = prompts[index // req.n]
        logprobs = None if req.logprobs is None else completion_logprobs(resp, prompt, req.logprobs, req.echo)
        choices.append(
            CompletionChoice(
                index=index,
                text=(prompt if req.echo else "") + resp.text,
                finish_reason=FINISH[resp.finish_reason],  # type: ignore[arg-type]
                logprobs=logprobs,
                prompt_token_ids=[t.id for t in resp.prompt_tokens] if req.return_token_ids else None,
                token_ids=[t.id for t in resp.tokens] if req.return_token_ids else None,
                explanation=explanation_of(resp),
            )
        )
    prompt_tokens = sum(responses[i * req.n].usage.prompt_tokens for i in range(len(prompts)))
    completion_tokens = sum(r.usage.completion_tokens for r in responses)
    result = Completion(
        id=new_id("cmpl"),
        created=int(time.time()),
        model=lm.name,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        system_fingerprint=system_fingerprint(lm),
    )
    return result, cache_header(outcomes)


def models(registry: ModelRegistry, started: float) -> ModelList:
    """The loaded models (a model still loading is not listed, as in `GET /models`)."""
    return ModelList(
        data=[Model(id=slot.name, created=int(started)) for slot in registry.slots if slot.model is not None]
    )


def model(registry: ModelRegistry, name: str, started: float) -> Model:
    return Model(id=registry.get(name).name, created=int(started))
