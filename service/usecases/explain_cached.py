"""/explain through the response cache, reusing a cached /generate of the same input and sampling fields.

Explaining an answer that was just generated (`POST /generate` with the same input and sampling fields, and
default `logprobs`/`top_logprobs`) finds that generation in the cache instead of generating it again; a fresh
generation made here is stored under the same key, so a later /generate is a hit too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from schemas.common import Token
from schemas.explain import ExplainOptions, ExplainRequest, ExplainResponse
from schemas.generate import GenerateRequest, GenerateResponse
from schemas.inputs import InputFields, SamplingFields
from service.cache import CacheOutcome, ResponseCache
from service.engine.prompt import PromptTokens, build_prompt
from service.explain.plan import Answer
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.serving import Deadline, Serving
from service.settings import Settings
from service.usecases import explain as explain_usecase
from service.usecases.caching import cached, key_for
from service.usecases.generate import check_limits, generate_once


def generate_request_for(req: ExplainRequest) -> GenerateRequest:
    """The /generate request whose answer this /explain request explains."""
    fields = set(InputFields.model_fields) | set(SamplingFields.model_fields)
    return GenerateRequest(**{name: getattr(req, name) for name in fields})


def answer_from_tokens(text: str, tokens: list[Token]) -> Answer:
    return Answer(
        ids=[t.id for t in tokens],
        text=text,
        offsets=[(t.offset, t.offset + len(t.text)) for t in tokens],
        special=[t.special for t in tokens],
    )


def answer_from_body(body: dict[str, Any]) -> Answer:
    """The answer of a (cached) /generate response body."""
    return answer_from_tokens(body["text"], [Token.model_validate(t) for t in body.get("tokens", [])])


async def _precheck(
    lm: LoadedModel, settings: Settings, req: GenerateRequest | ExplainRequest, options: ExplainOptions
) -> PromptTokens:
    """Refuse an over-budget explanation before any generation runs."""
    prompt = await asyncio.to_thread(build_prompt, lm.tokenizer, prompt=req.prompt, messages=req.messages)
    max_new_tokens = int(req.max_new_tokens)
    check_limits(lm, settings, prompt, max_new_tokens)
    explain_usecase.precheck(lm, settings, prompt, options, max_new_tokens)
    return prompt


async def generate_explained(
    registry: ModelRegistry, settings: Settings, req: GenerateRequest, *, serving: Serving, deadline: Deadline
) -> GenerateResponse:
    """/generate, plus the explanation of its answer when the request has an ``explain`` object."""
    if req.explain is None:
        return await generate_once(registry, settings, req, serving=serving, deadline=deadline)
    lm = registry.get(req.model)
    prompt = await _precheck(lm, settings, req, req.explain)
    response = await generate_once(registry, settings, req, serving=serving, deadline=deadline)
    async with serving.admission.slot(lm.name, deadline):
        response.explanation = await explain_usecase.explain_generation(
            lm, settings, prompt, answer_from_tokens(response.text, response.tokens), req.explain
        )
    return response


async def explain_stream_result(
    registry: ModelRegistry, settings: Settings, req: GenerateRequest, response: GenerateResponse
) -> GenerateResponse:
    """Streaming /generate with ``explain``: the `done` event carries the explanation (the stream's slot is
    still held while it is computed)."""
    if req.explain is None:
        return response
    lm = registry.get(req.model)
    prompt = await asyncio.to_thread(build_prompt, lm.tokenizer, prompt=req.prompt, messages=req.messages)
    response.explanation = await explain_usecase.explain_generation(
        lm, settings, prompt, answer_from_tokens(response.text, response.tokens), req.explain
    )
    return response


async def explain_cached(
    registry: ModelRegistry,
    settings: Settings,
    cache: ResponseCache,
    req: ExplainRequest,
    *,
    serving: Serving,
    deadline: Deadline,
    cache_control: str | None,
) -> tuple[dict[str, Any], CacheOutcome]:
    lm = registry.get(req.model)
    forced = req.target is not None  # forced decoding is deterministic whatever the sampling fields say

    async def compute(run_deadline: Deadline) -> ExplainResponse:
        answer = None
        if req.target is None:
            await _precheck(lm, settings, req, req)
            gen_req = generate_request_for(req)
            body, _ = await cached(
                cache,
                key_for("generate", lm, gen_req),
                lambda gen_deadline: generate_once(registry, settings, gen_req, serving=serving, deadline=gen_deadline),
                deadline=run_deadline,
                temperature=gen_req.temperature,
                seed=gen_req.seed,
                cache_control=cache_control,
            )
            answer = answer_from_body(body)
        return await explain_usecase.explain(
            registry, settings, req, serving=serving, deadline=run_deadline, answer=answer
        )

    return await cached(
        cache,
        key_for("explain", lm, req),
        compute,
        deadline=deadline,
        temperature=0.0 if forced else req.temperature,
        seed=req.seed,
        cache_control=cache_control,
    )
