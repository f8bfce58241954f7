"""What the sync and async clients share: settings, request bodies, headers, retry decisions, decoding.

No I/O here, so both clients behave the same by construction.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from schemas.common import ErrorBody, ErrorDetail
from schemas.explain import ExplainRequest
from schemas.generate import GenerateRequest, TokenEvent
from service.client.errors import APIError, DeadlineExceeded
from service.client.models import ExplainProgress, ExplainRow, Explanation, Generation
from service.client.sse import Event

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
#: (connect, read, write, pool) seconds, the form every httpx-like client accepts.
HttpTimeout = tuple[float | None, float | None, float | None, float | None]
#: Without a deadline: 10 s to connect, then as long as the server takes.
TRANSPORT_TIMEOUT: HttpTimeout = (10.0, None, None, None)
#: Statuses worth retrying: overloaded (429) or not ready/draining (503); both say when in Retry-After.
RETRY_STATUSES = frozenset({429, 503})

R = TypeVar("R", bound=BaseModel)

GenerateEvent = TokenEvent | Generation
ExplainEvent = ExplainProgress | ExplainRow | Explanation


def default_url() -> str:
    return os.environ.get("GLASSBOX_URL") or DEFAULT_URL


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most ``max_retries`` more tries, each wait at most ``max_wait_s``."""

    max_retries: int = 3
    max_wait_s: float = 30.0
    backoff_s: float = 0.5  # without Retry-After: 0.5, 1, 2, ... s

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else self.backoff_s * 2**attempt
        return max(0.0, min(wait, self.max_wait_s))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def body(model: type[BaseModel], request: BaseModel | dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """Validate locally (the same schema as the server) and dump only what was set: server defaults apply."""
    if request is None:
        request = fields
    elif fields:
        raise TypeError("give a request object or keyword fields, not both")
    parsed = request if isinstance(request, model) else model.model_validate(request)
    return parsed.model_dump(mode="json", exclude_unset=True)


def generate_body(request: Any, fields: dict[str, Any], stream: bool) -> dict[str, Any]:
    out = body(GenerateRequest, request, fields)
    out["stream"] = stream
    return out


def explain_body(request: Any, fields: dict[str, Any], stream: bool) -> dict[str, Any]:
    out = body(ExplainRequest, request, fields)
    if stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
    return out


def headers(api_key: str | None, remaining_s: float | None, cache_control: str | None) -> dict[str, str]:
    out = {"Accept": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    if remaining_s is not None:
        out[TIMEOUT_HEADER] = str(max(1, int(remaining_s * 1000)))
    if cache_control:
        out["Cache-Control"] = cache_control
    return out


class Deadline:
    """A call's deadline (monotonic), covering every retry and wait."""

    def __init__(self, timeout_s: float | None) -> None:
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the call's deadline passed before the server answered")
        return left

    def http_timeout(self) -> HttpTimeout:
        """The transport's timeout: the deadline plus a margin for the server's own 504 to arrive.

        A (connect, read, write, pool) tuple rather than an ``httpx.Timeout``: an ``http_client`` may be built
        on httpx's successor (Starlette's TestClient uses ``httpx2``), which refuses the other's Timeout."""
        left = self.remaining()
        if left is None:
            return TRANSPORT_TIMEOUT
        return (min(10.0, left + 5.0), left + 5.0, left + 5.0, left + 5.0)

    def allows_wait(self, seconds: float) -> bool:
        return self.at is None or time.monotonic() + seconds < self.at


def error_of(status: int, content: bytes) -> ErrorDetail:
    """The ``{"error": ...}`` body, or a stand-in for a non-Glassbox answer (a proxy's HTML page)."""
    try:
        return ErrorBody.model_validate_json(content).error
    except ValidationError:
        text = content[:200].decode(errors="replace").strip()
        return ErrorDetail(message=text or f"HTTP {status} without a body", type="http_error", code=str(status))


def raise_for(response: httpx.Response, content: bytes) -> None:
    if response.status_code >= 400:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise APIError(response.status_code, error_of(response.status_code, content), retry_after)


def decode(model: type[R], content: bytes) -> R:
    return model.model_validate_json(content)


def generate_event(event: Event) -> GenerateEvent | None:
    if event.name == "token":
        return TokenEvent.model_validate_json(event.data)
    if event.name == "done":
        return Generation.model_validate_json(event.data)
    if event.name == "error":
        raise APIError(None, ErrorBody.model_validate(json.loads(event.data)).error)
    return None  # unknown events are skipped: the server may add kinds


def explain_event(event: Event) -> ExplainEvent | None:
    if event.name == "progress":
        return ExplainProgress.model_validate_json(event.data)
    if event.name == "row":
        return ExplainRow.model_validate_json(event.data)
    if event.name == "done":
        return Explanation.model_validate_json(event.data)
    if event.name == "error":
        raise APIError(None, ErrorBody.model_validate(json.loads(event.data)).error)
    return None
