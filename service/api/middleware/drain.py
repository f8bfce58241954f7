"""While draining, refuse new work with 503 (probes still answer); count only requests doing work; and when
the drain ends, answer whatever is still open with the documented 503 instead of letting the server drop it.

A request counts as doing work once its body has arrived: a client that sent headers and half a body must
not hold the drain open (it has its own read timeout, see body_limit.py).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.api.middleware.base import HttpMiddleware
from service.api.middleware.paths import PUBLIC_PATHS
from service.serving import Drain

RETRY_HEADERS = {"Retry-After": "1", "Connection": "close"}
_SHUTTING_DOWN = "this server is shutting down; retry (another replica will answer)"


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers") or []:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class _Response:
    """Forwards ``send`` and remembers how far the response got (started? an event stream? finished?)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = self.finished = self.event_stream = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            for name, value in message.get("headers", []):
                if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                    self.event_stream = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


class DrainGate(HttpMiddleware):
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        super().__init__(app)
        self.drain = drain

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await error_response(503, "shutting_down", _SHUTTING_DOWN, headers=RETRY_HEADERS)(scope, receive, send)
            return
        working = False

        def start_work() -> None:
            nonlocal working
            if not working:
                working = True
                self.drain.inflight += 1

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                start_work()
            return message

        if not _has_body(scope):
            start_work()
        response = _Response(send)
        request = asyncio.ensure_future(self.app(scope, counting_receive, response))
        cut = asyncio.ensure_future(self.drain.cut_event().wait())
        try:
            await asyncio.wait({request, cut}, return_when=asyncio.FIRST_COMPLETED)
            if request.done():
                request.result()
                return
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            await self._cut_short(scope, receive, send, response)
        finally:
            for task in (request, cut):
                task.cancel()
            if working:
                self.drain.inflight -= 1

    async def _cut_short(self, scope: Scope, receive: Receive, send: Send, response: _Response) -> None:
        """The drain is over and this request is not: the 503 body, or an ``error`` event on an open stream."""
        if not response.started:
            await error_response(503, "shutting_down", _SHUTTING_DOWN, headers=RETRY_HEADERS)(scope, receive, send)
        elif not response.finished:
            tail = b""
            if response.event_stream:
                body = error_response(503, "shutting_down", _SHUTTING_DOWN).body
                tail = b"event: error\r\ndata: " + bytes(body) + b"\r\n\r\n"
            await send({"type": "http.response.body", "body": tail, "more_body": False})
