"""`/v1/*`: the OpenAI-compatible API (decode, run the use case, encode), for the official clients unchanged.

Deterministic 5xx failures (out of memory on this request, a passed deadline) carry `x-should-retry: false`,
or the client's default retries triple the work.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from schemas.openai import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, Model, ModelList
from service.api.context import Ctx
from service.api.deps import get_registry
from service.api.errors import ERROR_RESPONSES
from service.errors import DeadlineExceeded, InvalidRequest, OutOfMemory
from service.models.registry import ModelRegistry
from service.usecases import openai_compat as usecase
from service.usecases.openai_requests import log_unknown_fields
from service.usecases.openai_stream import DONE, ChatStream, Comment, StreamOut, open_chat_stream

router = APIRouter(prefix="/v1", tags=["openai"])

#: Failures a retry would only repeat.
NO_RETRY = (OutOfMemory, DeadlineExceeded)

T = TypeVar("T")

_STARTED = time.time()


async def no_retry_on_deterministic(call: Awaitable[T]) -> T:
    try:
        return await call
    except NO_RETRY as exc:
        exc.headers = {**exc.headers, "x-should-retry": "false"}
        raise


_STREAM_DOC = {
    "description": "The completion; with `stream: true`, `text/event-stream` of `data:` lines, each a "
    "`ChatCompletionChunk` (or an error body), then `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    response_model_exclude_none=True,
    responses={**ERROR_RESPONSES, 200: _STREAM_DOC},
)
async def chat_completions(req: ChatCompletionRequest, ctx: Ctx) -> Any:
    """OpenAI chat completions; `extra_body={"explain": {...}}` adds each choice's `explanation`."""
    log_unknown_fields("/v1/chat/completions", req)
    if req.stream:
        stream = await no_retry_on_deterministic(open_chat_stream(ctx, req))
        return _StreamResponse(stream, headers={"X-Cache": "bypass"})
    body, outcome = await no_retry_on_deterministic(usecase.chat_completion(ctx, req))
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), headers={"X-Cache": outcome})


@router.post("/completions", response_model=Completion, response_model_exclude_none=True, responses=ERROR_RESPONSES)
async def completions(req: CompletionRequest, ctx: Ctx) -> Any:
    """Legacy completions, with `logprobs` (0-5) and `echo`. Streaming is served by chat completions only."""
    log_unknown_fields("/v1/completions", req)
    if req.stream:
        raise InvalidRequest("streaming is supported on /v1/chat/completions only", param="stream")
    body, outcome = await no_retry_on_deterministic(usecase.completion(ctx, req))
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), headers={"X-Cache": outcome})


@router.get("/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
async def list_models(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> ModelList:
    """The loaded models, as OpenAI lists them."""
    return usecase.models(registry, _STARTED)


@router.get("/models/{model_id}", response_model=Model, responses={k: ERROR_RESPONSES[k] for k in (401, 404, 503)})
async def retrieve_model(model_id: str, registry: Annotated[ModelRegistry, Depends(get_registry)]) -> Model:
    return usecase.model(registry, model_id, _STARTED)


class _StreamResponse(EventSourceResponse):
    """Closes the generations however the response ends, even if never iterated."""

    def __init__(self, stream: ChatStream, **kwargs: Any) -> None:
        super().__init__(_sse(stream), ping=10, **kwargs)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.close()


def _event(out: StreamOut) -> ServerSentEvent:
    if isinstance(out, Comment):
        return ServerSentEvent(comment=out.text)
    if out == DONE:
        return ServerSentEvent(data=DONE)
    return ServerSentEvent(data=json.dumps(out, separators=(",", ":")))


async def _sse(stream: ChatStream) -> AsyncIterator[ServerSentEvent]:
    async for out in stream.events():
        yield _event(out)
