"""An unexpected error is a JSON 500 that keeps the client's keep-alive connection (real uvicorn, one
httpx connection): the next request on it is answered on the same connection, not reset."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from service.api.app import create_app
from service.settings import Settings
from tests.serving.conftest import patched_forward
from tests.support.ready import wait_until_ready
from tests.support.redis_server import free_port


@pytest.fixture(scope="module")
def server(tiny_settings: Settings) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(tiny_settings)

    # Test-only routes on the real app and middleware stack: one that fails unexpectedly, one that says
    # which client port (so which connection) the request came on.
    @app.get("/test-only/boom")
    async def boom() -> None:
        raise RuntimeError("injected failure")

    @app.get("/test-only/peer")
    async def peer(request: Request) -> dict[str, Any]:
        assert request.client is not None
        return {"port": request.client.port}

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url)
    yield url, app
    uv.should_exit = True
    thread.join(30)


def _one_connection(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), timeout=30)


def test_unexpected_error_is_json_500_and_keeps_the_connection(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    with _one_connection(url) as client:
        first = client.get("/test-only/peer").json()["port"]
        failed = client.get("/test-only/boom")
        assert failed.status_code == 500
        assert failed.json() == {
            "error": {
                "message": "internal error; it has been logged",
                "type": "internal_error",
                "param": None,
                "code": None,
            }
        }
        assert failed.headers.get("x-request-id")
        assert failed.headers.get("connection", "").lower() != "close"
        assert client.get("/test-only/peer").json()["port"] == first  # the same connection, still open


def test_model_failure_500_keeps_the_connection(server: tuple[str, FastAPI]) -> None:
    url, app = server
    lm = app.state.registry.get(None)
    calls = {"n": 0}

    def fail_once(forward: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected model failure")
        return forward(*args, **kwargs)

    with _one_connection(url) as client:
        first = client.get("/test-only/peer").json()["port"]
        with patched_forward(lm, fail_once):
            failed = client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 2})
            assert failed.status_code == 500, failed.text
            assert failed.json()["error"]["type"] == "internal_error"
            ok = client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 2})
            assert ok.status_code == 200, ok.text
        assert client.get("/test-only/peer").json()["port"] == first
