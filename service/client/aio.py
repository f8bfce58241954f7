"""The asyncio client: ``await AsyncClient(url).explain(messages=[...])``; the same calls as ``Client``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from schemas.common import ModelInfo
from service.client import core
from service.client.errors import DeadlineExceeded, Unreachable
from service.client.models import Explanation, Generation
from service.client.sse import Decoder


class AsyncClient:
    """Async Glassbox client. ``url`` defaults to ``GLASSBOX_URL``, then http://127.0.0.1:8000.

    ``timeout`` (seconds) is a deadline per call, retries included, sent to the server as
    ``X-Request-Timeout-Ms``; ``max_retries`` bounds retries of 429/503 (waiting ``Retry-After``, at most
    ``max_retry_wait`` s each) and of refused connections. ``http_client`` may be any ``httpx.AsyncClient``
    (e.g. one on ``httpx.ASGITransport(app)``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        base = url or (str(http_client.base_url) if http_client is not None else core.default_url())
        self.url = base.rstrip("/")
        self.api_key, self.timeout = api_key, timeout
        self.retry = core.RetryPolicy(max_retries=max_retries, max_wait_s=max_retry_wait)
        self._owns = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=httpx.Timeout(core.TRANSPORT_TIMEOUT))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns:
            await self._http.aclose()

    # --- calls -------------------------------------------------------------------------------------------

    async def generate(
        self, request: Any = None, /, *, timeout: float | None = None, cache_control: str | None = None, **fields: Any
    ) -> Generation:
        """``POST /generate``; ``request`` is a ``GenerateRequest``, a dict, or keyword fields."""
        payload = core.generate_body(request, fields, stream=False)
        content = await self._fetch("/generate", payload, timeout, cache_control)
        return core.decode(Generation, content)

    async def explain(
        self, request: Any = None, /, *, timeout: float | None = None, cache_control: str | None = None, **fields: Any
    ) -> Explanation:
        """``POST /explain``; ``request`` is an ``ExplainRequest``, a dict, or keyword fields."""
        payload = core.explain_body(request, fields, stream=False)
        content = await self._fetch("/explain", payload, timeout, cache_control)
        return core.decode(Explanation, content)

    async def stream_generate(
        self, request: Any = None, /, *, timeout: float | None = None, **fields: Any
    ) -> AsyncIterator[core.GenerateEvent]:
        """``TokenEvent`` for each token, then the ``Generation``; an ``error`` event raises ``APIError``."""
        payload = core.generate_body(request, fields, stream=True)
        async for item in self._events("/generate", payload, timeout, core.generate_event):
            yield item

    async def stream_explain(
        self, request: Any = None, /, *, timeout: float | None = None, **fields: Any
    ) -> AsyncIterator[core.ExplainEvent]:
        """``ExplainProgress`` and ``ExplainRow`` events, then the ``Explanation``."""
        payload = core.explain_body(request, fields, stream=True)
        async for item in self._events("/explain", payload, timeout, core.explain_event):
            yield item

    async def models(self) -> list[ModelInfo]:
        content = await self._fetch("/models", None, None, None)
        return [ModelInfo.model_validate(m) for m in _models(content)]

    async def ready(self) -> bool:
        try:
            return (await self._http.get(f"{self.url}/readyz", timeout=5)).status_code == 200
        except httpx.TransportError:
            return False

    # --- transport ---------------------------------------------------------------------------------------

    async def _events(
        self, path: str, payload: dict[str, Any], timeout: float | None, parse: Any
    ) -> AsyncIterator[Any]:
        decoder = Decoder()
        response = await self._send(path, payload, timeout, None)
        try:
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                if event is not None and (item := parse(event)) is not None:
                    yield item
        except httpx.TransportError as exc:
            raise Unreachable(self.url, f"the stream broke: {exc}") from exc
        finally:
            await response.aclose()

    async def _fetch(
        self, path: str, payload: dict[str, Any] | None, timeout: float | None, cache_control: str | None
    ) -> bytes:
        response = await self._send(path, payload, timeout, cache_control)
        try:
            return await response.aread()
        finally:
            await response.aclose()

    async def _send(
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
                response = await self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                wait = self.retry.delay(attempt, None)
                if attempt < self.retry.max_retries and deadline.allows_wait(wait):
                    attempt += 1
                    await asyncio.sleep(wait)
                    continue
                raise Unreachable(self.url, str(exc) or type(exc).__name__) from exc
            except httpx.TimeoutException as exc:
                raise DeadlineExceeded(f"no answer from {self.url} in time: {exc}") from exc
            except httpx.TransportError as exc:
                raise Unreachable(self.url, str(exc) or type(exc).__name__) from exc
            if response.status_code in core.RETRY_STATUSES and attempt < self.retry.max_retries:
                wait = self.retry.delay(attempt, core.parse_retry_after(response.headers.get("Retry-After")))
                if deadline.allows_wait(wait):
                    await response.aread()
                    await response.aclose()
                    attempt += 1
                    await asyncio.sleep(wait)
                    continue
            if response.status_code >= 400:
                content = await response.aread()
                await response.aclose()
                core.raise_for(response, content)
            return response


def _models(content: bytes) -> list[dict[str, Any]]:
    data = json.loads(content)
    return list(data["models"] if isinstance(data, dict) else data)
