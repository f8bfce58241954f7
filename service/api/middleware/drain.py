"""While draining, refuse new work with 503 (probes still answer) and count what is in flight."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.api.middleware.base import HttpMiddleware
from service.api.middleware.paths import PUBLIC_PATHS
from service.serving import Drain


class DrainGate(HttpMiddleware):
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        super().__init__(app)
        self.drain = drain

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            response = error_response(
                503,
                "shutting_down",
                "this server is shutting down; retry (another replica will answer)",
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        self.drain.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.inflight -= 1
