"""/explain through the response cache, reusing a cached /generate of the same input and sampling fields.

Explaining an answer that was just generated (`POST /generate` with the same input and sampling fields, and
default `logprobs`/`top_logprobs`) finds that generation in the cache instead of generating it again; a fresh
generation made here is stored under the same key, so a later /generate is a hit too. Either way it happens
inside the explanation's one slot, on the prompt it tokenized once.
"""

from __future__ import annotations

from typing import Any

from schemas.explain import ExplainRequest, ExplainResponse
from schemas.generate import GenerateRequest
from schemas.inputs import InputFields, SamplingFields
from service.cache import CacheOutcome, ResponseCache
from service.engine.continuation import Answer
from service.engine.prompt import PromptTokens
from service.models.registry import ModelRegistry
from service.serving import Deadline, Serving
from service.settings import Settings
from service.usecases import explain as explain_usecase
from service.usecases.caching import cached, key_for
from service.usecases.generate import Admitted, generate_admitted


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
    sink: explain_usecase.EventSink | None = None,
) -> tuple[dict[str, Any], CacheOutcome]:
    lm = registry.get(req.model)
    forced = req.target is not None  # forced decoding is deterministic whatever the sampling fields say

    async def compute(run_deadline: Deadline) -> ExplainResponse:
        async def answer_source(prompt: PromptTokens) -> Answer:
            gen_req = generate_request_for(req)
            job = Admitted(lm, settings, serving, prompt, run_deadline, tokenize_s=0.0, waited_s=0.0)
            body, _ = await cached(
                cache,
                key_for("generate", lm, gen_req),
                lambda _deadline: generate_admitted(job, gen_req),
                deadline=run_deadline,
                temperature=gen_req.temperature,
                seed=gen_req.seed,
                cache_control=cache_control,
            )
            return answer_from_body(body)

        return await explain_usecase.explain(
            registry, settings, req, serving=serving, deadline=run_deadline, answer_source=answer_source, sink=sink
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
