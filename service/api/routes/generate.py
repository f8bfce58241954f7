"""`POST /generate`: decode, run, encode. Streaming sends SSE token events, then one `done` event."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from schemas.generate import GenerateRequest, GenerateResponse
from service.api.deadline import RequestDeadline, get_serving
from service.api.deps import get_cache, get_registry, get_settings
from service.api.errors import ERROR_RESPONSES
from service.api.json_body import OrjsonResponse
from service.api.sse import SSE_DOC, event_doc, stream_response
from service.cache import ResponseCache
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.settings import Settings
from service.usecases.caching import cached, key_for
from service.usecases.generate import generate_once
from service.usecases.generate_stream import open_stream

log = logging.getLogger(__name__)
router = APIRouter(tags=["generate"])


_STREAM_DOC = SSE_DOC(
    "The answer; with `stream: true`, `text/event-stream` of `token` events (a `TokenEvent`); with `explain`, "
    "then the explanation's `progress` and `row` events; then one `done` event carrying this same object, or "
    "an `error` event with the error body.",
    [
        event_doc("token", "TokenEvent"),
        event_doc("progress", "ExplainProgressEvent"),
        event_doc("row", "ExplainRowEvent"),
        event_doc("done", "GenerateResponse"),
        event_doc("error", "ErrorBody"),
    ],
)


@router.post(
    "/generate",
    response_model=GenerateResponse,
    response_model_exclude_none=True,
    responses={**ERROR_RESPONSES, 200: _STREAM_DOC},
)
async def generate(
    req: GenerateRequest,
    registry: Annotated[ModelRegistry, Depends(get_registry)],
    settings: Annotated[Settings, Depends(get_settings)],
    cache: Annotated[ResponseCache, Depends(get_cache)],
    serving: Annotated[Serving, Depends(get_serving)],
    deadline: RequestDeadline,
    cache_control: Annotated[str | None, Header(description="`no-cache` skips the read, `no-store` the write.")] = None,
) -> Any:
    """Generate text with per-token ids, offsets, logprobs and alternatives."""
    if req.stream:
        stream = await open_stream(registry, settings, req, serving=serving, deadline=deadline)
        return stream_response(stream, headers={"X-Cache": "bypass"})
    lm = registry.get(req.model)
    body, outcome = await cached(
        cache,
        key_for("generate", lm, req),
        lambda run_deadline: generate_once(registry, settings, req, serving=serving, deadline=run_deadline),
        deadline=deadline,
        temperature=req.temperature,
        seed=req.seed,
        cache_control=cache_control,
    )
    return OrjsonResponse(body, headers={"X-Cache": outcome.value})
