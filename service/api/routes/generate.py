"""`POST /generate`: decode, run, encode. Streaming sends SSE token events, then one `done` event."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from schemas.generate import GenerateRequest, GenerateResponse
from service.api.context import Ctx
from service.api.errors import ERROR_RESPONSES
from service.api.json_body import OrjsonResponse
from service.api.sse import SSE_DOC, event_doc, stream_response
from service.usecases.caching import cached, key_for
from service.usecases.documents import place_documents
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
async def generate(req: GenerateRequest, ctx: Ctx) -> Any:
    """Generate text with per-token ids, offsets, logprobs and alternatives."""
    req = place_documents(req)
    if req.stream:
        stream = await open_stream(ctx.registry, ctx.settings, req, serving=ctx.serving, deadline=ctx.deadline)
        return stream_response(stream, headers={"X-Cache": "bypass"})
    lm = ctx.registry.get(req.model)
    body, outcome = await cached(
        ctx.cache,
        key_for("generate", lm, req),
        lambda run_deadline: generate_once(ctx.registry, ctx.settings, req, serving=ctx.serving, deadline=run_deadline),
        deadline=ctx.deadline,
        temperature=req.temperature,
        seed=req.seed,
        cache_control=ctx.cache_control,
    )
    return OrjsonResponse(body, headers={"X-Cache": outcome.value})
