"""`POST /generate`: decode, run, encode. Streaming sends SSE token events, then one `done` event."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from schemas.generate import GenerateRequest, GenerateResponse, TokenEvent
from service.api.deadline import RequestDeadline, get_serving
from service.api.deps import get_cache, get_registry, get_settings
from service.api.errors import ERROR_RESPONSES
from service.api.json_body import OrjsonResponse
from service.cache import ResponseCache
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.settings import Settings
from service.usecases.caching import cached, key_for
from service.usecases.generate import generate_once
from service.usecases.generate_stream import GenerationStream, open_stream

log = logging.getLogger(__name__)
router = APIRouter(tags=["generate"])


def _event(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One kind of SSE event: its name, and its data as JSON of the given schema."""
    data = {"type": "string", "contentMediaType": "application/json", **payload}
    return {"properties": {"event": {"const": name}, "data": data}}


_STREAM_DOC = {
    "description": "The answer; with `stream: true`, `text/event-stream` of `token` events (a `TokenEvent`), "
    "then one `done` event carrying this same object, or an `error` event with the error body.",
    "content": {
        "text/event-stream": {
            # OpenAPI < 3.2: `schema` describes each event.
            "schema": {
                "type": "object",
                "required": ["event", "data"],
                "oneOf": [
                    _event("token", {}),
                    _event("done", {"contentSchema": {"$ref": "#/components/schemas/GenerateResponse"}}),
                    _event("error", {"contentSchema": {"$ref": "#/components/schemas/ErrorBody"}}),
                ],
            }
        }
    },
}


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
        return _StreamResponse(stream, headers={"X-Cache": "bypass"})
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


class _StreamResponse(EventSourceResponse):
    """Closes the generation (its slot, its batch row) however the response ends, even if never iterated."""

    def __init__(self, stream: GenerationStream, **kwargs: Any) -> None:
        super().__init__(_sse(stream), **kwargs)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.close()


async def _sse(stream: GenerationStream) -> AsyncIterator[dict[str, str]]:
    async for item in stream.events():
        kind = "token" if isinstance(item, TokenEvent) else "done" if isinstance(item, GenerateResponse) else "error"
        yield {"event": kind, "data": item.model_dump_json(exclude_none=kind != "error")}
