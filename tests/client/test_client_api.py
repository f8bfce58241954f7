"""The client against the app in-process (tiny model): every call, streaming, retries, deadlines, API key."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from schemas.generate import TokenEvent
from service.api.app import create_app
from service.client import APIError, AsyncClient, Client, DeadlineExceeded, Explanation, Generation, Unreachable
from service.client.figure import write_png
from service.models import registry as registry_module
from service.settings import Settings
from tests.conftest import wait_ready
from tests.serving.slow_serve import slow_down
from tests.support.redis_server import free_port

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]
TARGET = "The capital of France is Paris."


@pytest.fixture(scope="module")
def client(app_client: TestClient) -> Client:
    return Client(http_client=app_client)


def test_client_generate_is_the_api_response(client: Client, app_client: TestClient) -> None:
    gen = client.generate(messages=CHAT, max_new_tokens=6, top_logprobs=2)
    raw = app_client.post("/generate", json={"messages": CHAT, "max_new_tokens": 6, "top_logprobs": 2}).json()
    assert isinstance(gen, Generation)
    assert gen.text == raw["text"] and [t.id for t in gen.tokens] == [t["id"] for t in raw["tokens"]]
    assert gen.usage.completion_tokens == len(gen.tokens) and gen.tokens[0].top_logprobs


def test_client_validates_locally_before_sending(client: Client) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        client.explain(prompt="a", messages=CHAT)


def test_client_explain_arrays_decode_alike_in_every_encoding(client: Client) -> None:
    base = {"messages": CHAT, "target": TARGET, "methods": ["input_x_gradient"], "precision": None}
    dense = client.explain(base).method().tokens
    assert dense is not None
    want = dense.to_numpy()
    assert want.shape == tuple(dense.shape) and np.abs(want).sum() > 0
    for extra in ({"encoding": "base64"}, {"encoding": "base64", "binary_dtype": "float16"}):
        got = client.explain({**base, **extra}).method().tokens
        assert got is not None and got.encoding == "base64"
        np.testing.assert_allclose(got.to_numpy(), want, rtol=2e-3 if "binary_dtype" in extra else 1e-6, atol=1e-6)
    k = 3
    for encoding in ("json", "base64"):
        sparse = client.explain({**base, "row_top_k": k, "encoding": encoding}).method().tokens
        assert sparse is not None and sparse.indices is not None
        got = sparse.to_numpy()
        assert got.shape == want.shape
        assert ((got != 0).sum(-1) <= k).all()
        kept = got != 0
        np.testing.assert_allclose(got[kept], want[kept], rtol=1e-6)
        # what was kept is each row's k largest |scores|
        np.testing.assert_allclose(np.sort(np.abs(got), -1)[:, -k:], np.sort(np.abs(want), -1)[:, -k:], rtol=1e-6)


def test_client_top_sources_are_the_largest_sequence_scores(client: Client) -> None:
    ex = client.explain(messages=CHAT, target=TARGET, granularity="word")
    scores = np.asarray(ex.method().sequence.data)  # type: ignore[union-attr]
    top = ex.top_sources(3)
    assert [s.index for s in top] == list(np.argsort(-np.abs(scores), kind="stable")[:3])
    assert top[0].text == ex.sources[top[0].index].text and abs(top[0].score) == pytest.approx(np.abs(scores).max())


def test_client_html_and_dataframe(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = client.explain(messages=CHAT, target=TARGET, granularity="word")
    page = ex._repr_html_()
    assert "<script" not in page and "background:#" in page and "Eiffel" in page
    frame = ex.to_dataframe()
    assert frame.shape == (len(ex.rows), len(ex.sources))
    assert list(ex.to_dataframe(scope="sequence")["source"]) == [s.text for s in ex.sources[: ex.sequence_sources]]
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        ex.to_dataframe()


def test_client_figures_svg_and_png(client: Client, tmp_path: Any) -> None:
    ex = client.explain(messages=CHAT, target=TARGET)
    root = ET.fromstring(ex.to_svg())
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(root.findall(".//s:g[@class='y-axis']/s:text", ns)) == len(ex.rows)
    assert len(root.findall(".//s:g[@class='x-axis']/s:text", ns)) == len(ex.sources)
    write_png(ex, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_client_stream_generate_tokens_then_the_response(client: Client) -> None:
    events = list(client.stream_generate(messages=CHAT, max_new_tokens=6))
    *tokens, done = events
    assert tokens and all(isinstance(e, TokenEvent) for e in tokens) and isinstance(done, Generation)
    assert [e.token.id for e in tokens] == [t.id for t in done.tokens]  # type: ignore[union-attr]


def test_client_api_errors_carry_the_error_body(client: Client) -> None:
    with pytest.raises(APIError) as err:
        client.explain(messages=CHAT, target=TARGET, model="nope")
    assert err.value.status_code == 404 and err.value.error.type and "nope" in str(err.value)


@pytest.fixture
def slow_app(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make(**settings)``: a started app whose model sleeps 20 ms in every forward pass."""
    load = registry_module.load_model
    monkeypatch.setattr(registry_module, "load_model", lambda *a: slow_down(load(*a), 0.02))
    with contextlib.ExitStack() as stack:

        def make(**overrides: Any) -> TestClient:
            http = stack.enter_context(TestClient(create_app(tiny_settings.model_copy(update=overrides))))
            wait_ready(http)
            return http

        yield make


def test_client_deadline_is_sent_and_enforced_by_the_server(slow_app: Any) -> None:
    client = Client(http_client=slow_app(cache_enabled=False))
    with pytest.raises(APIError) as err:
        client.generate(prompt="Hello", max_new_tokens=100, timeout=0.3)
    assert err.value.status_code == 504
    assert client.generate(prompt="Hello", max_new_tokens=2, timeout=30).tokens


def test_client_sends_the_remaining_deadline_and_api_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": {"message": "x", "type": "not_found", "param": None, "code": None}})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(APIError):
        Client("http://glassbox", api_key="k1", timeout=2.5, http_client=http).generate(prompt="a")
    [request] = seen
    assert 2000 < int(request.headers["X-Request-Timeout-Ms"]) <= 2500
    assert request.headers["Authorization"] == "Bearer k1"
    assert json.loads(request.content) == {"prompt": "a", "stream": False}


def test_client_api_key_against_the_app(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(update={"api_keys": hashlib.sha256(b"secret").hexdigest()})
    with TestClient(create_app(settings)) as http:
        wait_ready(http)
        assert Client(http_client=http, api_key="secret").generate(prompt="Hello", max_new_tokens=2).text is not None
        with pytest.raises(APIError) as err:
            Client(http_client=http).generate(prompt="Hello", max_new_tokens=2)
        assert err.value.status_code == 401


# --- retries ------------------------------------------------------------------------------------------------


class Flaky:
    """A server of our own: ``failures`` answers of ``status`` with Retry-After, then the real body."""

    def __init__(self, status: int, failures: int, retry_after: str, body: bytes) -> None:
        self.status, self.failures, self.retry_after, self.body, self.calls = status, failures, retry_after, body, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.failures:
            error = {"error": {"message": "busy", "type": "overloaded", "param": None, "code": None}}
            return httpx.Response(self.status, json=error, headers={"Retry-After": self.retry_after})
        return httpx.Response(200, content=self.body, headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def explain_body(app_client: TestClient) -> bytes:
    return app_client.post("/explain", json={"messages": CHAT, "target": TARGET}).content


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    waited: list[float] = []
    monkeypatch.setattr("service.client.sync.time.sleep", waited.append)
    yield waited


@pytest.mark.parametrize("status", [429, 503])
def test_client_retries_honouring_retry_after(status: int, explain_body: bytes, sleeps: list[float]) -> None:
    server = Flaky(status, 2, "2", explain_body)
    client = Client("http://glassbox", http_client=httpx.Client(transport=httpx.MockTransport(server)))
    ex = client.explain(messages=CHAT, target=TARGET)
    assert isinstance(ex, Explanation) and server.calls == 3 and sleeps == [2.0, 2.0]


def test_client_retries_are_bounded(explain_body: bytes, sleeps: list[float]) -> None:
    server = Flaky(429, 100, "1000", explain_body)
    http = httpx.Client(transport=httpx.MockTransport(server))
    with pytest.raises(APIError) as err:
        Client("http://glassbox", max_retries=2, max_retry_wait=5, http_client=http).explain(prompt="a")
    assert err.value.status_code == 429 and err.value.retry_after == 1000
    assert server.calls == 3 and sleeps == [5.0, 5.0]


def test_client_does_not_wait_past_its_deadline(explain_body: bytes, sleeps: list[float]) -> None:
    server = Flaky(429, 1, "30", explain_body)
    http = httpx.Client(transport=httpx.MockTransport(server))
    with pytest.raises(APIError) as err:
        Client("http://glassbox", timeout=5, http_client=http).explain(prompt="a")
    assert err.value.status_code == 429 and server.calls == 1 and sleeps == []


def test_client_real_429s_from_a_full_server_are_retried(slow_app: Any) -> None:
    """One slot, no queue: concurrent calls get the server's own 429 + Retry-After, and all succeed."""
    http = slow_app(max_concurrency=1, max_queue=0, cache_enabled=False)
    statuses: list[int] = []
    http.event_hooks["response"].append(lambda r: statuses.append(r.status_code))
    client = Client(http_client=http, max_retries=40, max_retry_wait=0.2)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: client.generate(prompt=f"Hello {i}", max_new_tokens=12), range(4)))
    assert len(results) == 4 and all(isinstance(r, Generation) for r in results)
    assert 429 in statuses, statuses


def test_client_unreachable_server_is_a_clear_error(sleeps: list[float]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unreachable, match="cannot reach the Glassbox server at " + url):
        Client(url, max_retries=1).generate(prompt="a")
    assert len(sleeps) == 1


def test_client_deadline_passed_before_sending() -> None:
    with pytest.raises(DeadlineExceeded):
        Client("http://127.0.0.1:1", timeout=1e-9).generate(prompt="a")


# --- explain streaming (recorded SSE served by a transport of our own) -------------------------------------


def _sse(events: list[tuple[str, Any]]) -> bytes:
    out = [": ping\r\n\r\n"]
    for name, data in events:
        out.append(f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n")
    return "".join(out).encode()


def _recorded_stream(body: bytes, error: bool = False) -> bytes:
    done = json.loads(body)
    method = next(iter(done["methods"]))  # the default method's rows
    tokens = done["methods"][method]["tokens"]
    events: list[tuple[str, Any]] = [
        ("progress", {"done": 1, "total": 3, "elapsed_s": 0.1, "eta_s": 0.2, "phase": "forward"}),
    ]
    for r, target in enumerate(done["rows"]):
        scores = {"dims": ["source"], "shape": tokens["shape"][-1:], "encoding": "json", "data": tokens["data"][r]}
        events.append(("row", {"method": method, "row": r, "target": target, "scores": scores}))
    events.append(("progress", {"done": 3, "total": 3, "elapsed_s": 0.3, "eta_s": 0.0, "phase": "gradients"}))
    if error:
        events.append(("error", {"error": {"message": "deadline", "type": "timeout", "param": None, "code": None}}))
    else:
        events.append(("done", done))
    return _sse(events)


def _stream_server(content: bytes, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=content, headers={"Content-Type": "text/event-stream"})

    return httpx.MockTransport(handler)


def test_client_stream_explain_progress_rows_then_done(explain_body: bytes) -> None:
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=_stream_server(_recorded_stream(explain_body), seen))
    events = list(Client("http://glassbox", http_client=http).stream_explain(messages=CHAT, target=TARGET))
    assert json.loads(seen[0].content)["stream"] is True
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "ExplainProgress" and kinds[-1] == "Explanation" and kinds[-2] == "ExplainProgress"
    done = events[-1]
    assert isinstance(done, Explanation)
    rows = np.stack([e.scores.to_numpy() for e in events if type(e).__name__ == "ExplainRow"])  # type: ignore[union-attr]
    np.testing.assert_array_equal(rows, done.matrix())


def test_client_stream_explain_error_event_raises(explain_body: bytes) -> None:
    http = httpx.Client(transport=_stream_server(_recorded_stream(explain_body, error=True), []))
    with pytest.raises(APIError, match="deadline") as err:
        list(Client("http://glassbox", http_client=http).stream_explain(messages=CHAT, target=TARGET))
    assert err.value.status_code is None and err.value.error.type == "timeout"


def test_async_client_stream_explain(explain_body: bytes) -> None:
    async def run() -> list[Any]:
        http = httpx.AsyncClient(transport=_stream_server(_recorded_stream(explain_body), []))
        async with AsyncClient("http://glassbox", http_client=http) as client:
            return [e async for e in client.stream_explain(messages=CHAT, target=TARGET)]

    events = asyncio.run(run())
    assert isinstance(events[-1], Explanation) and len(events) == 3 + len(events[-1].rows)


# --- async client against the app (its lifespan run in this event loop) ---------------------------------


def test_async_client_every_call_against_the_app(tiny_settings: Settings) -> None:
    app = create_app(tiny_settings)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://glassbox")
            async with AsyncClient(http_client=http) as client:
                for _ in range(600):
                    if await client.ready():
                        break
                    await asyncio.sleep(0.05)
                [info] = await client.models()
                assert info.id == "tiny"
                gen = await client.generate(messages=CHAT, max_new_tokens=5)
                assert isinstance(gen, Generation) and gen.tokens
                ex = await client.explain(messages=CHAT, target=TARGET)
                assert isinstance(ex, Explanation) and ex.top_sources(1)
                events = [e async for e in client.stream_generate(messages=CHAT, max_new_tokens=5)]
                assert isinstance(events[-1], Generation) and events[-1].text == gen.text
                results = await asyncio.gather(*(client.explain(prompt=f"p{i}", target="x") for i in range(3)))
                assert all(isinstance(r, Explanation) for r in results)
                with pytest.raises(APIError) as err:
                    await client.generate(prompt="a", model="nope")
                assert err.value.status_code == 404

    asyncio.run(run())
