"""Request count, latency and failures by route template and status."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class HttpMetrics:
    """Counts each HTTP request when it ends (a stream when its last byte is sent).

    Failures are labelled with the error body's ``type``, so errors from middleware (401, 413, 503 while
    draining) count the same as errors from handlers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        body = bytearray()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400 and len(body) < _MAX_ERROR_BODY:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            endpoint = route_label(scope)
            labels = {"endpoint": endpoint, "status": str(status)}
            REQUESTS.labels(**labels).inc()
            LATENCY.labels(**labels).observe(time.perf_counter() - started)
            if status >= 400:
                record_failure(endpoint, _error_type(bytes(body)))
