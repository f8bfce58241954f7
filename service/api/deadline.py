"""The per-request deadline as a FastAPI dependency: the ``X-Request-Timeout-Ms`` header (documented in
OpenAPI) lowers the server's limit, and a client that disconnects cancels the request's work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request

from service.serving import Deadline, Serving

TIMEOUT_HEADER = "X-Request-Timeout-Ms"


def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


async def _watch_disconnect(request: Request, deadline: Deadline) -> None:
    """Wait for ``http.disconnect`` (the body has been read by now) and cancel the request's work.

    Streaming responses listen for the disconnect themselves; this covers the time before the response
    starts, which for a non-streaming request is all of it.
    """
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            deadline.cancel()
            return


async def _request_deadline(
    request: Request,
    serving: Annotated[Serving, Depends(get_serving)],
    timeout_ms: Annotated[
        int | None,
        Header(
            alias=TIMEOUT_HEADER,
            ge=1,
            le=86_400_000,
            description="Give up after this many milliseconds (504). Lowers, never raises, the server's limit.",
        ),
    ] = None,
) -> AsyncIterator[Deadline]:
    deadline = serving.deadline(timeout_ms)
    watcher = asyncio.create_task(_watch_disconnect(request, deadline))
    try:
        yield deadline
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


#: Route parameter type: ``deadline: RequestDeadline``. The watcher stops when the handler returns.
RequestDeadline = Annotated[Deadline, Depends(_request_deadline, scope="function")]
