"""Structured logs: one JSON object per line, carrying the id of the request that caused it."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
from typing import Any

#: The current request's id; set by the request-id middleware, copied into tasks and to_thread calls.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("glassbox_request_id", default=None)

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


#: A secret-bearing header's value, in the shapes loggers print headers: ``authorization: Bearer k``,
#: ``(b'authorization', b'Bearer k')``, ``'cookie': 'a=b'``.
_SECRET_HEADER = re.compile(
    r"""(?i)((?:proxy-)?authorization|(?:set-)?cookie|x-api-key)(['"]?\s*[:=,]\s*(?:b?['"])?)([^\r\n'"]+)"""
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with the values of authorization and cookie headers, and any bearer credential, replaced."""
    text = _SECRET_HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


class RedactSecrets(logging.Filter):
    """On the root handler, so it sees every logger's records (ours, uvicorn's, libraries'), at every level:
    the rendered message and any extra fields lose header secrets before a formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_") and isinstance(value, (str, bytes, dict, list, tuple)):
                text = str(value)
                if redact(text) != text:
                    setattr(record, key, redact(text))
        return True


#: What uvicorn says at every WebSocket upgrade attempt when none is served (ws="none"): nothing went wrong.
_UNSUPPORTED_UPGRADE = ("Unsupported upgrade request.", "No supported WebSocket library detected")


class QuietUnsupportedUpgrade(logging.Filter):
    """Drop uvicorn's warnings about upgrade attempts: this server has no WebSockets and refuses them as
    plain HTTP requests (404/405), which the access log already records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("uvicorn") and str(record.msg).startswith(_UNSUPPORTED_UPGRADE))


def _known(request_id: str | None) -> str | None:
    return request_id if request_id and request_id != "-" else None


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra fields, "exc_info"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get() or _known(getattr(record, "request_id", None)),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Root logging to stderr in ``json`` or ``text``; uvicorn's loggers propagate here (log_config=None)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(QuietUnsupportedUpgrade())
    handler.addFilter(RedactSecrets())
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
