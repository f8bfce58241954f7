"""Issue 10 on the real server (uvicorn in a subprocess): bounded shutdown, honest status of clients that
leave mid-upload, and no secrets in the log at debug level."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from tests.serving.test_process import Server, start_server, stream_in_thread

__all__ = ["start_server"]  # the fixture, shared with test_process.py
pytestmark = pytest.mark.slow

KEY = "sk-glassbox-test-key-0123456789"


def open_upload(server: Server, declared: int, sent: bytes, extra: str = "") -> socket.socket:
    """A POST /generate whose body stops after ``sent`` of its ``declared`` bytes."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n{extra}\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_slow_upload_does_not_pin_the_drain_and_is_answered_503(start_server: Callable[..., Server]) -> None:
    """Before: a half-sent body counted as in flight and held the drain for its whole timeout (35.5 s)."""
    server = start_server(GLASSBOX_DRAIN_TIMEOUT_S="30")
    sock = open_upload(server, 1000, b'{"prompt": "Hel')
    time.sleep(0.3)  # the request is in the app, waiting for the rest of its body
    server.process.send_signal(signal.SIGTERM)
    status, body = read_response(sock)
    assert server.process.wait(20) == 0, server.logs()
    sock.close()
    assert status == 503 and body["error"]["type"] == "shutting_down"  # type: ignore[index]
    assert "drained (0 request(s) still in flight)" in server.logs()
    assert "drain timeout" not in server.logs()


def test_body_that_never_finishes_gets_408(start_server: Callable[..., Server]) -> None:
    server = start_server(GLASSBOX_BODY_READ_TIMEOUT_S="0.5")
    sock = open_upload(server, 1000, b'{"prompt": "Hel')
    status, body = read_response(sock)
    sock.close()
    assert status == 408 and body["error"]["type"] == "request_timeout"  # type: ignore[index]


def test_requests_cut_at_the_drain_end_get_the_503_body_and_streams_an_error_event(
    start_server: Callable[..., Server],
) -> None:
    """Before: a plain request still running got a plain-text 500; a stream ended with neither done nor error."""
    server = start_server(GLASSBOX_DRAIN_TIMEOUT_S="1")
    thread, lines, first = stream_in_thread(server.url, {"prompt": "Hello", "max_new_tokens": 240})
    assert first.wait(30)
    plain: list[httpx.Response] = []

    def post() -> None:
        body = {"prompt": "Hi", "max_new_tokens": 240}  # greedy: a sampled EOS once ended it before the drain
        plain.append(httpx.post(f"{server.url}/generate", json=body, timeout=30))

    import threading

    poster = threading.Thread(target=post)
    poster.start()
    time.sleep(0.5)  # both are generating
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0, server.logs()
    thread.join(10)
    poster.join(10)
    assert plain and plain[0].status_code == 503, plain and plain[0].text
    assert plain[0].json()["error"]["type"] == "shutting_down"
    assert "event: error" in lines and "event: done" not in lines
    error = json.loads(next(line for line in lines if line.startswith("data:") and "shutting_down" in line)[5:])
    assert error["error"]["type"] == "shutting_down"
    logs = server.logs()
    assert " 500" not in logs and '"level": "error"' not in logs, logs


def test_disconnect_mid_upload_is_not_a_500(start_server: Callable[..., Server]) -> None:
    """Before: logged as `POST /generate 500` and counted as a 500 and an `internal` failure."""
    server = start_server()
    internal_before = server.metric("glassbox_request_failures_total", reason="internal")
    sock = open_upload(server, 1000, b'{"prompt": "Hel')
    time.sleep(0.2)
    sock.close()
    deadline = time.monotonic() + 10
    while "POST /generate 499" not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "POST /generate 499" in server.logs()
    assert "POST /generate 500" not in server.logs()
    assert server.metric("glassbox_request_failures_total", reason="internal") == internal_before
    assert server.metric("glassbox_requests_total", status="500") == 0


def test_websocket_upgrade_with_a_bearer_key_never_logs_the_key(start_server: Callable[..., Server]) -> None:
    """Before: at debug level uvicorn logged the upgrade's headers, the bearer key included, and an error."""
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    server = start_server(GLASSBOX_LOG_LEVEL="debug", GLASSBOX_API_KEYS=digest)
    host, port = server.url.removeprefix("http://").split(":")
    for path in ("/generate", "/ws", "/"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    f"Authorization: Bearer {KEY}\r\nCookie: session={KEY}\r\n\r\n"
                ).encode()
            )
            status = int(sock.recv(65536).split()[1])
            assert status in (404, 405), status  # refused as plain HTTP, not switched to a WebSocket
    time.sleep(0.3)
    logs = server.logs()
    assert '"level": "debug"' in logs  # debug logging is really on
    assert KEY not in logs
    levels = [json.loads(line)["level"] for line in logs.splitlines() if line.startswith("{")]
    assert "error" not in levels and "warning" not in levels, logs
