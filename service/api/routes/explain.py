"""`POST /explain`: thin: decode, call the use case (through the response cache), return. With `stream`,
Server-Sent Events: `progress` and `row` events while it runs, then `done` (or `error`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from schemas.explain import ExplainRequest, ExplainResponse
from service.api.deadline import RequestDeadline, get_serving
from service.api.deps import get_cache, get_registry, get_settings
from service.api.errors import ERROR_RESPONSES
from service.api.json_body import OrjsonResponse
from service.api.sse import SSE_DOC, event_doc, stream_response
from service.cache import ResponseCache
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.settings import Settings
from service.usecases.explain_cached import explain_cached
from service.usecases.explain_stream import open_explain_stream

router = APIRouter(tags=["explain"])

_STREAM_DOC = SSE_DOC(
    "The explanation; with `stream: true`, `text/event-stream` of `progress` events (an "
    "`ExplainProgressEvent`), `row` events (an `ExplainRowEvent`, each equal to that row of the final "
    "response), then one `done` event carrying this same object, or an `error` event with the error body.",
    [
        event_doc("progress", "ExplainProgressEvent"),
        event_doc("row", "ExplainRowEvent"),
        event_doc("done", "ExplainResponse"),
        event_doc("error", "ErrorBody"),
    ],
)


@router.post(
    "/explain",
    response_model=ExplainResponse,
    response_model_exclude_none=True,
    responses={**ERROR_RESPONSES, 200: _STREAM_DOC},
)
async def explain(
    req: ExplainRequest,
    registry: Annotated[ModelRegistry, Depends(get_registry)],
    settings: Annotated[Settings, Depends(get_settings)],
    cache: Annotated[ResponseCache, Depends(get_cache)],
    serving: Annotated[Serving, Depends(get_serving)],
    deadline: RequestDeadline,
    cache_control: Annotated[str | None, Header(description="`no-cache` skips the read, `no-store` the write.")] = None,
) -> Any:
    """Which input tokens drove each answer token, and the answer as a whole, by the requested methods."""
    if req.stream:
        stream = await open_explain_stream(
            registry, settings, cache, req, serving=serving, deadline=deadline, cache_control=cache_control
        )
        return stream_response(stream, headers={"X-Cache": stream.cache_header})
    body, outcome = await explain_cached(
        registry, settings, cache, req, serving=serving, deadline=deadline, cache_control=cache_control
    )
    return OrjsonResponse(body, headers={"X-Cache": outcome.value})
