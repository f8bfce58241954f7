"""Server-Sent Events for the streaming routes: one response class that always closes its stream, the event
names of each payload type, keep-alive comments, and the OpenAPI description of the events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from schemas.common import ErrorBody
from schemas.explain import ExplainProgressEvent, ExplainRowEvent
from schemas.generate import TokenEvent

#: Seconds between keep-alive comments, so a long unit of work never leaves the connection silent.
PING_S = 5

_NAMES: dict[type, str] = {
    TokenEvent: "token",
    ExplainProgressEvent: "progress",
    ExplainRowEvent: "row",
    ErrorBody: "error",
}


class EventStream(Protocol):
    def events(self) -> AsyncIterator[BaseModel | dict[str, Any]]: ...

    async def close(self) -> None: ...


def _encode(item: BaseModel | dict[str, Any]) -> dict[str, str]:
    if isinstance(item, dict):  # a response body from the cache
        return {"event": "done", "data": json.dumps(item, separators=(",", ":"), ensure_ascii=False)}
    name = _NAMES.get(type(item), "done")
    return {"event": name, "data": item.model_dump_json(exclude_none=name != "error")}


async def _sse(stream: EventStream) -> AsyncIterator[dict[str, str]]:
    async for item in stream.events():
        yield _encode(item)


class _StreamResponse(EventSourceResponse):
    """Closes the stream (its slot, its model work) however the response ends, even if never iterated."""

    def __init__(self, stream: EventStream, **kwargs: Any) -> None:
        super().__init__(_sse(stream), ping=PING_S, **kwargs)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.close()


def stream_response(stream: EventStream, *, headers: dict[str, str]) -> EventSourceResponse:
    return _StreamResponse(stream, headers=headers)


def event_doc(name: str, schema: str | None) -> dict[str, Any]:
    """One kind of SSE event: its name, and its data as JSON of the given schema."""
    data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json"}
    if schema is not None:
        data["contentSchema"] = {"$ref": f"#/components/schemas/{schema}"}
    return {"properties": {"event": {"const": name}, "data": data}}


def SSE_DOC(description: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    # OpenAPI < 3.2: `schema` describes each event.
    return {
        "description": description,
        "content": {
            "text/event-stream": {"schema": {"type": "object", "required": ["event", "data"], "oneOf": events}}
        },
    }
