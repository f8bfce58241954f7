"""API tests of /generate, the probes and every error case, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def assert_error(response, status: int, type_: str, param: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_ and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def test_healthz_and_readyz(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    assert app_client.get("/readyz").status_code == 200


def test_models_lists_the_tiny_model(app_client: TestClient) -> None:
    [info] = app_client.get("/models").json()
    assert info["id"] == "tiny" and info["default"] and info["ready"] and info["chat_template"]
    assert len(info["revision"]) == 64 and info["device"] == "cpu" and info["max_context"] == 256


def test_generate_chat_response_shape(app_client: TestClient) -> None:
    body = app_client.post("/generate", json={"messages": CHAT, "max_new_tokens": 8, "top_logprobs": 3}).json()
    assert body["finish_reason"] in ("stop", "length", "stop_sequence")
    assert body["model"]["id"] == "tiny" and len(body["model"]["revision"]) == 64
    assert body["usage"]["prompt_tokens"] == len(body["prompt_tokens"])
    assert body["usage"]["completion_tokens"] == len(body["tokens"])
    assert "".join(t["text"] for t in body["tokens"]) == body["text"]
    content = [t for t in body["prompt_tokens"] if t["template"] is False]
    assert "".join(t["text"] for t in content) == CHAT[0]["content"]
    assert all(t["message_index"] == 0 and t["role"] == "user" for t in content)
    for token in body["tokens"]:
        assert token["logprob"] <= 0
        tops = [alt["logprob"] for alt in token["top_logprobs"]]
        assert tops == sorted(tops, reverse=True) and len(tops) == 3
    assert set(body["timings"]) >= {"queue_ms", "prefill_ms", "decode_ms", "total_ms"}


def test_generate_prompt_offsets_index_the_prompt(app_client: TestClient) -> None:
    prompt = "Gustave Eiffel built it in 1887."
    body = app_client.post("/generate", json={"prompt": prompt, "max_new_tokens": 4}).json()
    for token in body["prompt_tokens"]:
        assert prompt[token["offset"] : token["offset"] + len(token["text"])] == token["text"]
        assert "message_index" not in token and "template" not in token  # raw prompt: no chat fields


def test_generate_same_seed_same_output(app_client: TestClient) -> None:
    request = {"prompt": "Hello", "max_new_tokens": 12, "temperature": 1.2, "seed": 11}
    first = app_client.post("/generate", json=request).json()
    second = app_client.post("/generate", json=request).json()
    assert first["tokens"] == second["tokens"] and first["seed"] == 11


def test_generate_without_logprobs_omits_them(app_client: TestClient) -> None:
    body = app_client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 3, "logprobs": False}).json()
    assert body["tokens"] and all("logprob" not in t and "top_logprobs" not in t for t in body["tokens"])


def test_generate_stream_events_then_done(app_client: TestClient) -> None:
    request = {"prompt": "Hello", "max_new_tokens": 6, "temperature": 1.0, "seed": 2, "stream": True}
    with app_client.stream("POST", "/generate", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = [block for block in raw.replace("\r\n", "\n").split("\n\n") if block.strip()]
    parsed = []
    for block in events:
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        parsed.append((lines["event"], json.loads(lines["data"])))
    kinds = [kind for kind, _ in parsed]
    assert kinds[-1] == "done" and set(kinds[:-1]) <= {"token"}
    final = parsed[-1][1]
    tokens = [data["token"] for kind, data in parsed if kind == "token"]
    assert [t["id"] for t in tokens] == [t["id"] for t in final["tokens"]]
    assert all(t["logprob"] is not None for t in tokens)
    unstreamed = app_client.post("/generate", json={**request, "stream": False}).json()
    assert unstreamed["tokens"] == final["tokens"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompt": "hi", "temperature": -1}, "temperature"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "top_logprobs": 21}, "top_logprobs"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "unknown_field": 1}, "unknown_field"),
        ({"prompt": ""}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"prompt": "hi", "stop": [""]}, None),
        ({"prompt": "hi", "top_logprobs": 2, "logprobs": False}, None),
    ],
)
def test_generate_invalid_fields_are_422_naming_the_field(
    app_client: TestClient, payload: dict, param: str | None
) -> None:
    error = assert_error(app_client.post("/generate", json=payload), 422, "invalid_request", param)
    if param:
        assert param in error["message"]


@pytest.mark.parametrize("payload", [{"prompt": "a", "messages": CHAT}, {"max_new_tokens": 3}])
def test_generate_needs_exactly_one_input(app_client: TestClient, payload: dict) -> None:
    error = assert_error(app_client.post("/generate", json=payload), 422, "invalid_request")
    assert "exactly one of `prompt` or `messages`" in error["message"]


def test_generate_over_context_is_422_with_both_numbers(app_client: TestClient) -> None:
    response = app_client.post("/generate", json={"prompt": "Hello world", "max_new_tokens": 250})
    error = assert_error(response, 422, "invalid_request", "max_new_tokens")
    assert "(250)" in error["message"] and "256" in error["message"]


def test_generate_over_server_new_token_limit(app_client: TestClient) -> None:
    error = assert_error(
        app_client.post("/generate", json={"prompt": "x", "max_new_tokens": 5000}), 422, "invalid_request"
    )
    assert "5000" in error["message"] and "1024" in error["message"]


def test_generate_unknown_model_is_404(app_client: TestClient) -> None:
    error = assert_error(app_client.post("/generate", json={"prompt": "x", "model": "nope"}), 404, "model_not_found")
    assert "tiny" in error["message"]


def test_malformed_json_is_400_in_the_error_shape(app_client: TestClient) -> None:
    response = app_client.post("/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_request")


def test_non_object_body_is_422(app_client: TestClient) -> None:
    assert_error(app_client.post("/generate", json=[1, 2]), 422, "invalid_request")


def test_body_over_limit_is_413(app_client: TestClient) -> None:
    big = {"prompt": "x" * 1_100_000}
    assert_error(app_client.post("/generate", json=big), 413, "payload_too_large")


def test_body_over_limit_without_content_length_is_413(app_client: TestClient) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(12):
            yield b"x" * 100_000

    response = app_client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")


def test_unknown_route_and_method_use_the_error_shape(app_client: TestClient) -> None:
    assert_error(app_client.get("/nope"), 404, "not_found")
    assert_error(app_client.get("/generate"), 405, "method_not_allowed")


def test_openapi_documents_errors_and_examples(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    responses = spec["paths"]["/generate"]["post"]["responses"]
    assert {"200", "400", "404", "413", "422", "503"} <= set(responses)
    schema = spec["components"]["schemas"]["GenerateRequest"]
    assert schema.get("examples")
    assert app_client.get("/docs").status_code == 200


def test_model_that_failed_to_load_is_503(tmp_path: Path) -> None:
    settings = Settings(models=f"broken={tmp_path / 'missing'}", cache_dir=tmp_path, offline=True, device="cpu")
    with TestClient(create_app(settings)) as client:
        for _ in range(500):
            response = client.get("/readyz")
            if "failed to load" in response.text:
                break
        error = assert_error(response, 503, "not_ready")
        assert "failed to load" in error["message"]
        assert client.get("/healthz").status_code == 200
        assert_error(client.post("/generate", json={"prompt": "x"}), 503, "not_ready")


def test_readyz_is_503_while_loading(tiny_settings: Settings) -> None:
    with TestClient(create_app(tiny_settings)) as client:
        first = client.get("/readyz")  # loading runs in the background: the first probe cannot be ready
        assert first.status_code == 503 and "still loading" in first.json()["error"]["message"]
        assert first.headers["retry-after"] == "5"
        wait_ready(client)
