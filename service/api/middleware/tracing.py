"""A server span per request (W3C ``traceparent`` continued when present), with route and status."""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.middleware.base import HttpMiddleware
from service.api.middleware.metrics import route_label
from service.api.middleware.response import StatusRecorder
from service.observability.tracing import tracer_var


class Tracing(HttpMiddleware):
    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        super().__init__(app)
        self.tracer = tracer

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers") or []}
        method = scope["method"]
        recorder = StatusRecorder(send)
        token = tracer_var.set(self.tracer)
        try:
            with self.tracer.start_as_current_span(
                f"{method} {scope['path']}",
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]},
            ) as span:
                request_id = (scope.get("state") or {}).get("request_id")
                if request_id:
                    span.set_attribute("glassbox.request_id", request_id)
                try:
                    await self.app(scope, receive, recorder)
                finally:
                    route = route_label(scope)
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", recorder.status)
                    if recorder.status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
        finally:
            tracer_var.reset(token)
