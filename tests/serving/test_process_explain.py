"""The scheduler in the real server (uvicorn subprocess, slowed tiny model): explanations never freeze
generation, stop on their deadline, their client's disconnect and shutdown, and stream their progress."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.serving.conftest import wait_for
from tests.serving.test_process import Server, stream_in_thread
from tests.serving.test_process import start_server as start_server  # the fixture

pytestmark = pytest.mark.slow

#: ~190 prompt tokens: integrated gradients over it takes many units (each forward is slowed by 30 ms).
LONG_PROMPT = "The Eiffel Tower was designed by Gustave Eiffel and built in 1887 to 1889. " * 9
LONG_EXPLAIN: dict[str, Any] = {
    "prompt": LONG_PROMPT,
    "target": " Paris is the capital of France.",
    "methods": ["integrated_gradients"],
    "integrated_gradients": {"n_steps": 128},
}
LIMITS = {
    "GLASSBOX_EXPLAIN_MAX_STEPS": "512",
    "GLASSBOX_EXPLAIN_MAX_WORK": "100000000",
    "GLASSBOX_EXPLAIN_MAX_SECONDS": "100000",
}


def explain_in_thread(url: str, body: dict[str, Any], **headers: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def post() -> None:
        try:
            response = httpx.post(f"{url}/explain", json=body, headers=headers, timeout=120)
            result.update(status=response.status_code, body=response.json(), at=time.monotonic())
        except httpx.HTTPError as exc:
            result.update(status=None, error=type(exc).__name__, at=time.monotonic())

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, result


def test_generation_completes_while_an_explanation_runs(start_server: Callable[..., Server]) -> None:
    server = start_server(**LIMITS)
    thread, explained = explain_in_thread(server.url, LONG_EXPLAIN)
    wait_for(lambda: server.metric("glassbox_inflight_requests", model="tiny") == 1, 10, "the explanation to start")
    time.sleep(0.5)  # well inside the explanation
    short = httpx.post(f"{server.url}/generate", json={"prompt": "Hello", "max_new_tokens": 4}, timeout=60)
    generated_at = time.monotonic()
    assert short.status_code == 200, short.text
    assert not explained, "the explanation finished before the short generation"  # ordering, not timing
    thread.join(120)
    assert explained["status"] == 200, explained
    assert explained["at"] > generated_at
    prov = explained["body"]["provenance"]
    print("PROV", {k: prov[k] for k in ("estimated_s", "engine_s", "units", "chunks")})
    assert prov["units"] > 20


def test_explanation_over_its_deadline_is_refused_before_any_model_work(start_server: Callable[..., Server]) -> None:
    server = start_server(**LIMITS)
    before = server.metric("glassbox_tokens_total", model="tiny", kind="prompt")
    response = httpx.post(
        f"{server.url}/explain", json=LONG_EXPLAIN, headers={"X-Request-Timeout-Ms": "300"}, timeout=60
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "budget_exceeded" and error["code"] == "deadline"
    assert "estimated at" in error["message"] and "0.3 s" in error["message"]
    assert server.metric("glassbox_work_stopped_total", model="tiny", kind="explanation", reason="timeout") == 0
    assert server.metric("glassbox_tokens_total", model="tiny", kind="prompt") == before


def test_explanation_past_its_deadline_is_a_504_and_frees_the_model(start_server: Callable[..., Server]) -> None:
    """The estimate can be wrong (here: made 1,000× too optimistic): the deadline still holds,
    within one unit."""
    server = start_server(GLASSBOX_TEST_CALIBRATE_SLOWED="0", **LIMITS)
    sent = time.monotonic()
    body = {**LONG_EXPLAIN, "integrated_gradients": {"n_steps": 512}}  # ~20 s here
    response = httpx.post(f"{server.url}/explain", json=body, headers={"X-Request-Timeout-Ms": "6000"}, timeout=60)
    answered = time.monotonic() - sent
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "timeout"
    assert answered < 15, f"answered after {answered:.1f} s"
    wait_for(
        lambda: server.metric("glassbox_work_stopped_total", model="tiny", kind="explanation", reason="timeout") == 1,
        10,
        "the explanation to stop",
    )
    nxt = httpx.post(f"{server.url}/generate", json={"prompt": "Hello", "max_new_tokens": 2}, timeout=30)
    assert nxt.status_code == 200
    assert nxt.json()["timings"]["queue_ms"] < 1000  # no leftover explanation work ahead of it


#: The answer-checking features, each made long on the slowed tiny model: many re-generations, many
#: perturbed re-explanations, or a long follow-up generation.
CHECKING_BODIES: dict[str, dict[str, Any]] = {
    "counterfactual": {
        "methods": ["counterfactual"],
        "granularity": "word",
        "counterfactual": {"max_runs": 256, "max_units": 1000, "compare_tokens": 8},
    },
    "stability": {
        "methods": ["integrated_gradients"],
        "integrated_gradients": {"n_steps": 64},
        "evaluate": {"stability": {"perturbations": 32, "regenerate": True}},
    },
    "self_explanation": {"methods": ["saliency"], "self_explanation": True, "self_explanation_tokens": 1024},
}


@pytest.mark.parametrize("feature", ["counterfactual", "stability"])
def test_answer_checks_past_their_deadline_are_a_504_and_stop(
    start_server: Callable[..., Server], feature: str
) -> None:
    """Counterfactual search, stability and self-explanation obey the deadline like any method: with the
    estimate made 1,000× too optimistic (so nothing is refused up front) the request is answered 504 soon
    after its deadline and its work stops."""
    server = start_server(GLASSBOX_TEST_CALIBRATE_SLOWED="0", GLASSBOX_MAX_NEW_TOKENS_LIMIT="1024", **LIMITS)
    body = {"prompt": LONG_PROMPT, "target": " Paris is the capital of France.", **CHECKING_BODIES[feature]}
    sent = time.monotonic()
    response = httpx.post(f"{server.url}/explain", json=body, headers={"X-Request-Timeout-Ms": "4000"}, timeout=60)
    answered = time.monotonic() - sent
    assert response.status_code == 504, response.text
    assert answered < 14, f"answered after {answered:.1f} s"
    wait_for(
        lambda: server.metric("glassbox_work_stopped_total", model="tiny", kind="explanation", reason="timeout") == 1,
        10,
        "the explanation to stop",
    )
    wait_for(lambda: server.metric("glassbox_inflight_requests", model="tiny") == 0, 5, "the slot to be freed")


@pytest.mark.parametrize("feature", sorted(CHECKING_BODIES))
def test_answer_checks_stop_when_their_client_leaves(start_server: Callable[..., Server], feature: str) -> None:
    """A long self-explanation is refused up front by any short deadline (its generation is estimated), so
    every feature is also checked by its client leaving: the work stops and the slot is freed."""
    server = start_server(GLASSBOX_MAX_NEW_TOKENS_LIMIT="1024", **LIMITS)
    body = {"prompt": LONG_PROMPT, "target": " Paris is the capital of France.", **CHECKING_BODIES[feature]}
    tokens_before = server.metric("glassbox_tokens_total", model="tiny", kind="completion")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/explain", json=body, timeout=2.0)
    wait_for(lambda: server.metric("glassbox_inflight_requests", model="tiny") == 0, 10, "the slot to be freed")
    assert server.metric("glassbox_requests_total", endpoint="/explain", status="499") == 1
    if feature == "self_explanation":  # the follow-up is a generation: it stopped long before its 1,024 tokens
        generated = server.metric("glassbox_tokens_total", model="tiny", kind="completion") - tokens_before
        assert generated < 1024
    else:
        stopped = server.metric("glassbox_work_stopped_total", model="tiny", kind="explanation", reason="cancelled")
        assert stopped == 1


def test_explanation_stops_when_its_client_leaves(start_server: Callable[..., Server]) -> None:
    server = start_server(**LIMITS)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/explain", json=LONG_EXPLAIN, timeout=1.0)
    wait_for(lambda: server.metric("glassbox_inflight_requests", model="tiny") == 0, 5, "the slot to be freed")
    stopped = server.metric("glassbox_work_stopped_total", model="tiny", kind="explanation", reason="cancelled")
    assert stopped == 1


def test_sigterm_stops_an_explanation_and_a_stream_with_503(start_server: Callable[..., Server]) -> None:
    server = start_server(GLASSBOX_DRAIN_TIMEOUT_S="1", **LIMITS)
    thread, explained = explain_in_thread(server.url, LONG_EXPLAIN)
    stream, lines, first = stream_in_thread(server.url, {"prompt": "Hello", "max_new_tokens": 240})
    assert first.wait(30)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0, server.logs()
    thread.join(10)
    stream.join(10)
    assert explained["status"] == 503, explained
    assert explained["body"]["error"]["type"] == "shutting_down"
    assert any(line.startswith("event: error") for line in lines), lines[-4:]
    error = next(lines[i + 1] for i, line in enumerate(lines) if line.startswith("event: error"))
    assert json.loads(error.removeprefix("data: "))["error"]["type"] == "shutting_down"
    logs = server.logs()
    assert '"status": 500' not in logs and " 500" not in logs and "Traceback" not in logs, logs[-3000:]


def test_streamed_explanation_reports_progress_and_rows(start_server: Callable[..., Server]) -> None:
    server = start_server(**LIMITS)
    body = {
        **LONG_EXPLAIN,
        "methods": ["input_x_gradient", "integrated_gradients"],
        "integrated_gradients": {"n_steps": 32},
    }
    events: list[tuple[str, Any]] = []
    with httpx.stream("POST", f"{server.url}/explain", json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((str(name), json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and "progress" in kinds and "row" in kinds
    progress = [e for k, e in events if k == "progress"]
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    done = events[-1][1]
    for _, row in (e for e in events if e[0] == "row"):
        tokens = done["methods"][row["method"]]["tokens"]
        assert row["scores"]["data"] == tokens["data"][row["row"]]
    plain = httpx.post(f"{server.url}/explain", json=body, timeout=120).json()
    for method in body["methods"]:
        assert plain["methods"][method]["tokens"] == done["methods"][method]["tokens"]
        assert plain["methods"][method]["sequence"] == done["methods"][method]["sequence"]
