"""The real thing: `glassbox serve` (uvicorn) in a subprocess, for SIGTERM drain and client disconnects.

The model is the tiny one with each forward pass slowed down (tests/serving/slow_serve.py), so a
generation lasts long enough to act while it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import wait_for
from tests.support.ready import wait_until_ready
from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(**env: str) -> Server:
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        environ = {
            **os.environ,
            "GLASSBOX_MODELS": f"tiny={tiny_model_dir}",
            "GLASSBOX_CACHE_DIR": str(tmp_path / "cache"),
            "GLASSBOX_OFFLINE": "1",
            "GLASSBOX_DEVICE": "cpu",
            "GLASSBOX_HOST": "127.0.0.1",
            "GLASSBOX_PORT": str(port),
            "GLASSBOX_CACHE_ENABLED": "false",
            "GLASSBOX_TEST_STEP_DELAY_S": "0.03",
            "PYTHONPATH": str(REPO),
            **env,
        }
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.serving.slow_serve", "serve"],
                cwd=REPO,
                env=environ,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        server = Server(process, f"http://127.0.0.1:{port}", log)
        started.append(server)
        try:
            wait_until_ready(server.url, process)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{server.logs()}") from exc
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


def stream_in_thread(url: str, request: dict[str, Any]) -> tuple[threading.Thread, list[str], threading.Event]:
    """Read a streaming generation line by line in a thread; ``first`` is set at the first token event."""
    lines: list[str] = []
    first = threading.Event()

    def read() -> None:
        try:
            with httpx.stream("POST", f"{url}/generate", json={**request, "stream": True}, timeout=60) as response:
                lines.append(f"status: {response.status_code}")
                for line in response.iter_lines():
                    lines.append(line)
                    if line.startswith("event: token"):
                        first.set()
        except httpx.HTTPError as exc:
            lines.append(f"transport error: {type(exc).__name__}")
        finally:
            first.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, lines, first


def test_sigterm_drains_in_flight_work_then_exits_zero(start_server: Callable[..., Server]) -> None:
    server = start_server(GLASSBOX_DRAIN_TIMEOUT_S="30")
    thread, lines, first = stream_in_thread(server.url, {"prompt": "Hello", "max_new_tokens": 60})
    assert first.wait(30) and "status: 200" in lines
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=2).status_code == 503, 1.0, "readyz to turn 503")
    refused = httpx.post(f"{server.url}/generate", json={"prompt": "Hi", "max_new_tokens": 2}, timeout=5)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
    assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200  # alive while draining
    thread.join(30)
    assert "event: done" in lines, lines[-5:]  # the in-flight stream finished normally
    assert server.process.wait(20) == 0, server.logs()
    assert "drained (0 request(s) still in flight)" in server.logs()


def test_sigterm_drain_timeout_bounds_the_wait(start_server: Callable[..., Server]) -> None:
    server = start_server(GLASSBOX_DRAIN_TIMEOUT_S="1")
    thread, lines, first = stream_in_thread(server.url, {"prompt": "Hello", "max_new_tokens": 240})
    assert first.wait(30)
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0, server.logs()
    took = time.monotonic() - sent
    thread.join(10)
    assert took < 1 + 3 + 3, f"exit took {took:.1f} s with a 1 s drain timeout"
    assert "event: done" not in lines  # 240 tokens at 30 ms each could not finish in time
    assert "drain timeout of 1 s passed" in server.logs()


def test_stream_disconnect_stops_generation_and_frees_the_slot(start_server: Callable[..., Server]) -> None:
    server = start_server()
    tokens_before = server.metric("glassbox_tokens_total", model="tiny", kind="completion")
    cancelled_before = server.metric("glassbox_request_failures_total", endpoint="/generate", reason="cancelled")
    request = {"prompt": "Hello", "max_new_tokens": 200, "temperature": 1.0, "seed": 1, "stream": True}
    with httpx.stream("POST", f"{server.url}/generate", json=request, timeout=30) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("event: token")
            if seen == 3:
                break  # leaving the block closes the connection mid-stream
    wait_for(lambda: server.metric("glassbox_inflight_requests", model="tiny") == 0, 5, "the slot to be freed")
    generated = server.metric("glassbox_tokens_total", model="tiny", kind="completion") - tokens_before
    assert 3 <= generated < 60, f"{generated} tokens generated for a client that left after 3"
    after = server.metric("glassbox_request_failures_total", endpoint="/generate", reason="cancelled")
    assert after == cancelled_before + 1


def test_disconnect_of_a_plain_request_stops_generation(start_server: Callable[..., Server]) -> None:
    server = start_server()
    tokens_before = server.metric("glassbox_tokens_total", model="tiny", kind="completion")
    request = {"prompt": "Hello", "max_new_tokens": 200, "temperature": 1.0, "seed": 2}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/generate", json=request, timeout=0.6)
    wait_for(lambda: server.metric("glassbox_inflight_requests", model="tiny") == 0, 5, "the slot to be freed")
    generated = server.metric("glassbox_tokens_total", model="tiny", kind="completion") - tokens_before
    assert 0 < generated < 100, f"{generated} tokens generated for a client that left after 0.6 s"
    statuses = server.metric("glassbox_requests_total", endpoint="/generate", status="499")
    assert statuses == 1


def test_disconnect_while_queued_drops_the_queued_work(start_server: Callable[..., Server]) -> None:
    server = start_server(GLASSBOX_MAX_CONCURRENCY="1")
    prompt_before = server.metric("glassbox_tokens_total", model="tiny", kind="prompt")
    thread, lines, first = stream_in_thread(server.url, {"prompt": "Hello", "max_new_tokens": 150})
    assert first.wait(30)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/generate", json={"prompt": "Queued", "max_new_tokens": 5}, timeout=0.5)
    wait_for(lambda: server.metric("glassbox_queue_depth", model="tiny") == 0, 3, "the queue to empty")
    assert server.metric("glassbox_inflight_requests", model="tiny") == 1  # the first one still runs
    thread.join(30)
    done = lines[lines.index("event: done") + 1]
    first_prompt = json.loads(done.removeprefix("data: "))["usage"]["prompt_tokens"]
    prompt_after = server.metric("glassbox_tokens_total", model="tiny", kind="prompt")
    assert prompt_after - prompt_before == first_prompt  # the queued request never reached the model
