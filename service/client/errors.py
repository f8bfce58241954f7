"""What the client raises: the server's error body as an exception, and a server that cannot be reached."""

from __future__ import annotations

from schemas.common import ErrorDetail


class GlassboxError(Exception):
    """Base of every client error."""


class Unreachable(GlassboxError):
    """No HTTP answer at all: connection refused, DNS failure, or the connection dropped (after retries)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the Glassbox server at {url}: {reason}")
        self.url, self.reason = url, reason


class APIError(GlassboxError):
    """The server refused or failed the request; ``error`` is its ``{"error": {...}}`` body.

    ``status_code`` is None for an ``error`` event inside a stream (the HTTP status was already 200).
    """

    def __init__(self, status_code: int | None, error: ErrorDetail, retry_after: float | None = None) -> None:
        where = f"HTTP {status_code}" if status_code is not None else "stream error"
        super().__init__(f"{where} ({error.type}{'/' + error.code if error.code else ''}): {error.message}")
        self.status_code, self.error, self.retry_after = status_code, error, retry_after


class DeadlineExceeded(GlassboxError):
    """The call's own deadline passed on this side (before sending, or while waiting to retry)."""
