"""The one ``send`` wrapper the middleware share: it records the response status as it passes."""

from __future__ import annotations

from starlette.types import Message, Send


class StatusRecorder:
    """Forwards messages to ``send``; ``status`` is the response's (500 until a response starts, which is
    what a client sees when the app fails before answering). ``extra_headers`` are added to the start."""

    def __init__(self, send: Send, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._send = send
        self._extra_headers = extra_headers or []
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            if self._extra_headers:
                message["headers"] = [*message.get("headers", []), *self._extra_headers]
        await self._send(message)
