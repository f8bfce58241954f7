"""The blocking client: ``Client(url).explain(messages=[...])`` returns an ``Explanation``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from schemas.common import ModelInfo
from service.client import core
from service.client.errors import DeadlineExceeded, Unreachable
from service.client.models import Explanation, Generation
from service.client.sse import Decoder


class Client:
    """Sync Glassbox client. ``url`` defaults to ``GLASSBOX_URL``, then http://127.0.0.1:8000.

    ``timeout`` (seconds) is a deadline per call, retries included, sent to the server as
    ``X-Request-Timeout-Ms``; ``max_retries`` bounds retries of 429/503 (waiting ``Retry-After``, at most
    ``max_retry_wait`` s each) and of refused connections. ``http_client`` may be any ``httpx.Client``
    (e.g. Starlette's TestClient, or one with a custom transport).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        base = url or (str(http_client.base_url) if http_client is not None else core.default_url())
        self.url = base.rstrip("/")
        self.api_key, self.timeout = api_key, timeout
        self.retry = core.RetryPolicy(max_retries=max_retries, max_wait_s=max_retry_wait)
        self._owns = http_client is None
        self._http = http_client or httpx.Client(timeout=httpx.Timeout(core.TRANSPORT_TIMEOUT))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns:
            self._http.close()

    # --- calls -------------------------------------------------------------------------------------------

    def generate(
        self, request: Any = None, /, *, timeout: float | None = None, cache_control: str | None = None, **fields: Any
    ) -> Generation:
        """``POST /generate``; ``request`` is a ``GenerateRequest``, a dict, or keyword fields."""
        payload = core.generate_body(request, fields, stream=False)
        content = self._fetch("/generate", payload, timeout, cache_control)
        return core.decode(Generation, content)

    def explain(
        self, request: Any = None, /, *, timeout: float | None = None, cache_control: str | None = None, **fields: Any
    ) -> Explanation:
        """``POST /explain``; ``request`` is an ``ExplainRequest``, a dict, or keyword fields."""
        payload = core.explain_body(request, fields, stream=False)
        content = self._fetch("/explain", payload, timeout, cache_control)
        return core.decode(Explanation, content)

    def stream_generate(
        self, request: Any = None, /, *, timeout: float | None = None, **fields: Any
    ) -> Iterator[core.GenerateEvent]:
        """``TokenEvent`` for each token, then the ``Generation``; an ``error`` event raises ``APIError``."""
        payload = core.generate_body(request, fields, stream=True)
        yield from self._events("/generate", payload, timeout, core.generate_event)

    def stream_explain(
        self, request: Any = None, /, *, timeout: float | None = None, **fields: Any
    ) -> Iterator[core.ExplainEvent]:
        """``ExplainProgress`` and ``ExplainRow`` events, then the ``Explanation``."""
        payload = core.explain_body(request, fields, stream=True)
        yield from self._events("/explain", payload, timeout, core.explain_event)

    def models(self) -> list[ModelInfo]:
        content = self._fetch("/models", None, None, None)
        return [ModelInfo.model_validate(m) for m in _models(content)]

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    # --- transport ---------------------------------------------------------------------------------------

    def _events(self, path: str, payload: dict[str, Any], timeout: float | None, parse: Any) -> Iterator[Any]:
        decoder = Decoder()
        response = self._send(path, payload, timeout, None)
        try:
            for line in response.iter_lines():
                event = decoder.feed(line)
                if event is not None and (item := parse(event)) is not None:
                    yield item
        except httpx.TransportError as exc:
            raise Unreachable(self.url, f"the stream broke: {exc}") from exc
        finally:
            response.close()

    def _fetch(
        self, path: str, payload: dict[str, Any] | None, timeout: float | None, cache_control: str | None
    ) -> bytes:
        response = self._send(path, payload, timeout, cache_control)
        try:
            return response.read()
        finally:
            response.close()

    def _send(
        self, path: str, payload: dict[str, Any] | None, timeout: float | None, cache_control: str | None
    ) -> httpx.Response:
        deadline = core.Deadline(timeout if timeout is not None else self.timeout)
        attempt = 0
        while True:
            request = self._http.build_request(
                "GET" if payload is None else "POST",
                f"{self.url}{path}",
                json=payload,
                headers=core.headers(self.api_key, deadline.remaining(), cache_control),
                timeout=deadline.http_timeout(),
            )
            try:
                response = self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                wait = self.retry.delay(attempt, None)
                if attempt < self.retry.max_retries and deadline.allows_wait(wait):
                    attempt += 1
                    time.sleep(wait)
                    continue
                raise Unreachable(self.url, str(exc) or type(exc).__name__) from exc
            except httpx.TimeoutException as exc:
                raise DeadlineExceeded(f"no answer from {self.url} in time: {exc}") from exc
            except httpx.TransportError as exc:
                raise Unreachable(self.url, str(exc) or type(exc).__name__) from exc
            if response.status_code in core.RETRY_STATUSES and attempt < self.retry.max_retries:
                wait = self.retry.delay(attempt, core.parse_retry_after(response.headers.get("Retry-After")))
                if deadline.allows_wait(wait):
                    response.read()
                    response.close()
                    attempt += 1
                    time.sleep(wait)
                    continue
            if response.status_code >= 400:
                content = response.read()
                response.close()
                core.raise_for(response, content)
            return response


def _models(content: bytes) -> list[dict[str, Any]]:
    data = json.loads(content)
    return list(data["models"] if isinstance(data, dict) else data)
