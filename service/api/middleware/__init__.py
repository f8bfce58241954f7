"""Pure ASGI middleware (no BaseHTTPMiddleware: streams pass through untouched, disconnects stay visible).

Order, outermost first: request id + access log → tracing → metrics → drain → auth → body size limit →
unexpected errors (a JSON 500 that keeps the keep-alive connection; counted and logged by all above).
So every response, a 401 or a 503 included, carries ``X-Request-Id``, is logged, traced and counted,
and an unauthenticated body is never buffered.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.api.body_limit import BodySizeLimit
from service.api.middleware.auth import ApiKeyAuth, document_bearer_auth
from service.api.middleware.drain import DrainGate
from service.api.middleware.metrics import HttpMetrics
from service.api.middleware.request_id import RequestIdAndAccessLog
from service.api.middleware.tracing import Tracing
from service.api.middleware.unexpected import UnexpectedErrors
from service.serving import Serving
from service.settings import Settings


def install_middleware(app: FastAPI, settings: Settings, serving: Serving, tracer_provider: object | None) -> None:
    """Add the stack; Starlette runs the last added outermost."""
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s)
    digests = settings.api_key_digests()
    if digests:
        app.add_middleware(ApiKeyAuth, digests=digests)
        document_bearer_auth(app)
    app.add_middleware(DrainGate, drain=serving.drain)
    app.add_middleware(HttpMetrics)
    if tracer_provider is not None:
        app.add_middleware(Tracing, tracer=tracer_provider.get_tracer("glassbox"))  # type: ignore[attr-defined]
    app.add_middleware(RequestIdAndAccessLog)
