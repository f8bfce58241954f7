"""`POST /generate`: decode, run, encode. Streaming sends SSE token events, then one `done` event."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from schemas.common import ErrorBody
from schemas.generate import GenerateRequest, GenerateResponse, TokenEvent
from service.api.deps import get_cache, get_registry, get_settings
from service.api.errors import ERROR_RESPONSES, error_body
from service.cache import ResponseCache
from service.engine.generation import GeneratedToken
from service.errors import GlassboxError
from service.models.registry import ModelRegistry
from service.settings import Settings
from service.usecases.caching import cached, key_for
from service.usecases.generate import build_response, generate_once, prepare, run_generation
from service.usecases.tokens import generated_token

log = logging.getLogger(__name__)
router = APIRouter(tags=["generate"])

_STREAM_DOC = {
    "description": "The answer; with `stream: true`, `text/event-stream` of `token` events and a final "
    "`done` event carrying this same object (or an `error` event with the error body).",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
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
    cache_control: Annotated[str | None, Header(description="`no-cache` skips the read, `no-store` the write.")] = None,
) -> Any:
    """Generate text with per-token ids, offsets, logprobs and alternatives."""
    if req.stream:
        return EventSourceResponse(await _stream(registry, settings, req), headers={"X-Cache": "bypass"})
    lm = registry.get(req.model)
    body, outcome = await cached(
        cache,
        key_for("generate", lm, req),
        lambda: generate_once(registry, settings, req),
        temperature=req.temperature,
        seed=req.seed,
        cache_control=cache_control,
    )
    return JSONResponse(body, headers={"X-Cache": outcome.value})


async def _stream(registry: ModelRegistry, settings: Settings, req: GenerateRequest) -> AsyncIterator[dict[str, str]]:
    # Validation happens here, before the response starts, so errors keep their status codes.
    lm, prompt, tokenize_s = await prepare(registry, settings, req)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[GeneratedToken] = asyncio.Queue()
    stop = threading.Event()

    def on_token(token: GeneratedToken) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, token)

    async def events() -> AsyncIterator[dict[str, str]]:
        task = asyncio.ensure_future(run_generation(lm, prompt, req, on_token=on_token, cancelled=stop.is_set))
        index = 0
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                event = TokenEvent(index=index, token=generated_token(lm, getter.result(), logprobs=req.logprobs))
                index += 1
                yield {"event": "token", "data": event.model_dump_json(exclude_none=True)}
            while not queue.empty():  # tokens scheduled before the loop finished
                event = TokenEvent(index=index, token=generated_token(lm, queue.get_nowait(), logprobs=req.logprobs))
                index += 1
                yield {"event": "token", "data": event.model_dump_json(exclude_none=True)}
            output, queue_s = task.result()
            response = build_response(lm, prompt, req, output, tokenize_s=tokenize_s, queue_s=queue_s)
            yield {"event": "done", "data": response.model_dump_json(exclude_none=True)}
        except GlassboxError as exc:
            yield {"event": "error", "data": ErrorBody.model_validate(error_body(exc)).model_dump_json()}
        except Exception:
            log.exception("streaming generation failed")
            body = ErrorBody.model_validate(
                {"error": {"message": "internal error; it has been logged", "type": "internal_error"}}
            )
            yield {"event": "error", "data": body.model_dump_json()}
        finally:
            stop.set()  # a client that went away stops the model at its next token

    return events()
