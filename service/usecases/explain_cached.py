"""/explain through the response cache, reusing a cached /generate of the same input and sampling fields.

Explaining an answer that was just generated (`POST /generate` with the same input and sampling fields, and
default `logprobs`/`top_logprobs`) finds that generation in the cache instead of generating it again; a fresh
generation made here is stored under the same key, so a later /generate is a hit too.
"""

from __future__ import annotations

from typing import Any

from schemas.explain import ExplainRequest, ExplainResponse
from schemas.generate import GenerateRequest
from schemas.inputs import InputFields, SamplingFields
from service.cache import CacheOutcome, ResponseCache
from service.engine.prompt import PromptTokens
from service.explain.plan import Answer
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.serving import Deadline, Serving
from service.settings import Settings
from service.usecases import explain as explain_usecase
from service.usecases.caching import cached, key_for
from service.usecases.generate import generate_once


def generate_request_for(req: ExplainRequest) -> GenerateRequest:
    """The /generate request whose answer this /explain request explains."""
    fields = set(InputFields.model_fields) | set(SamplingFields.model_fields)
    return GenerateRequest(**{name: getattr(req, name) for name in fields})


def answer_from_body(body: dict[str, Any]) -> Answer:
    """The answer of a (cached) /generate response body."""
    tokens = body.get("tokens", [])
    return Answer(
        ids=[t["id"] for t in tokens],
        text=body["text"],
        offsets=[(t["offset"], t["offset"] + len(t["text"])) for t in tokens],
        special=[bool(t.get("special", False)) for t in tokens],
    )


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

    def explain_budget(model: LoadedModel, prompt: PromptTokens) -> None:
        """Refuse an over-budget explanation in the generation's slot, before any token is generated."""
        explain_usecase.precheck(model, settings, prompt, req, req.max_new_tokens)

    async def compute(run_deadline: Deadline) -> ExplainResponse:
        answer = None
        if not forced:
            gen_req = generate_request_for(req)
            body, _ = await cached(
                cache,
                key_for("generate", lm, gen_req),
                lambda gen_deadline: generate_once(
                    registry, settings, gen_req, serving=serving, deadline=gen_deadline, check=explain_budget
                ),
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
