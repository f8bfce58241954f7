"""Request count, latency and failures by route template and status."""

from __future__ import annotations

import json
import time

from starlette.types import Message, Receive, Scope, Send

from service.api.middleware.base import HttpMiddleware
from service.api.middleware.response import StatusRecorder
from service.metrics import LATENCY, REQUESTS, record_failure

#: Error bodies are small; a larger one is not parsed for its type.
_MAX_ERROR_BODY = 64 * 1024


def route_label(scope: Scope) -> str:
    """The route's path template (bounded cardinality); ``unmatched`` for 404s of unknown paths."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _error_type(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("type") if isinstance(error, dict) else None


class HttpMetrics(HttpMiddleware):
    """Counts each HTTP request when it ends (a stream when its last byte is sent).

    Failures are labelled with the error body's ``type``, so errors from middleware (401, 413, 503 while
    draining) count the same as errors from handlers.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        recorder = StatusRecorder(send)
        body = bytearray()

        async def capture(message: Message) -> None:
            await recorder(message)
            if message["type"] == "http.response.body" and recorder.status >= 400 and len(body) < _MAX_ERROR_BODY:
                body.extend(message.get("body", b""))

        try:
            await self.app(scope, receive, capture)
        finally:
            status = recorder.status
            endpoint = route_label(scope)
            labels = {"endpoint": endpoint, "status": str(status)}
            REQUESTS.labels(**labels).inc()
            LATENCY.labels(**labels).observe(time.perf_counter() - started)
            if status >= 400:
                record_failure(endpoint, _error_type(bytes(body)))
