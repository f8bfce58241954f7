"""Request ids (``X-Request-Id`` in, or a new one; echoed on every response) and the JSON access log."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import Receive, Scope, Send

from service.api.middleware.base import HttpMiddleware
from service.api.middleware.paths import PUBLIC_PATHS
from service.api.middleware.response import StatusRecorder
from service.observability.logging import request_id_var

access_log = logging.getLogger("glassbox.access")

#: A client's id is kept only if it is short and plain (it lands in logs and headers).
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID_ID.match(candidate) else None
    return None


class RequestIdAndAccessLog(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        recorder = StatusRecorder(send, [(b"x-request-id", request_id.encode())])
        try:
            await self.app(scope, receive, recorder)
        finally:
            status = recorder.status
            path = scope["path"]
            access_log.log(
                logging.DEBUG if path in PUBLIC_PATHS and status < 400 else logging.INFO,
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": (scope.get("client") or ("-", 0))[0],
                },
            )
            request_id_var.reset(token)
