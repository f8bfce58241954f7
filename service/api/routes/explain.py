"""`POST /explain`: thin: decode, call the use case (through the response cache), return. With `stream`,
Server-Sent Events: `progress` and `row` events while it runs, then `done` (or `error`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from schemas.explain import ExplainRequest, ExplainResponse
from service.api.context import Ctx
from service.api.errors import ERROR_RESPONSES
from service.api.json_body import OrjsonResponse
from service.api.sse import SSE_DOC, event_doc, stream_response
from service.usecases.documents import place_documents
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
async def explain(req: ExplainRequest, ctx: Ctx) -> Any:
    """Which input tokens drove each answer token, and the answer as a whole, by the requested methods."""
    req = place_documents(req)
    if req.stream:
        stream = await open_explain_stream(
            ctx.registry,
            ctx.settings,
            ctx.cache,
            req,
            serving=ctx.serving,
            deadline=ctx.deadline,
            cache_control=ctx.cache_control,
        )
        return stream_response(stream, headers={"X-Cache": stream.cache_header})
    body, outcome = await explain_cached(
        ctx.registry,
        ctx.settings,
        ctx.cache,
        req,
        serving=ctx.serving,
        deadline=ctx.deadline,
        cache_control=ctx.cache_control,
    )
    return OrjsonResponse(body, headers={"X-Cache": outcome.value})
