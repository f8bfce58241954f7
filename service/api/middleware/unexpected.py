"""Unexpected exceptions become a JSON 500 here, inside the middleware stack, and go no further.

Starlette's ``ServerErrorMiddleware`` renders the handler's 500 and then re-raises the exception; uvicorn,
seeing an exception after the response started, closes the connection, so a client's next request on that
keep-alive connection fails with a reset. Catching it here answers the 500 and keeps the connection.
An exception after the response started (a stream cut mid-way) is re-raised: that response is truncated and
the connection must close.
"""

from __future__ import annotations

import logging

from starlette.types import Message, Receive, Scope, Send

from service.api.errors import INTERNAL_ERROR_MESSAGE, error_response
from service.api.middleware.base import HttpMiddleware

log = logging.getLogger("service.api.errors")


class UnexpectedErrors(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            log.exception("unhandled error")
            await error_response(500, "internal_error", INTERNAL_ERROR_MESSAGE)(scope, receive, send)
