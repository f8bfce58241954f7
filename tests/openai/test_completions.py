"""Legacy completions, model listing, and token bytes, through the official client."""

from __future__ import annotations

from fastapi.testclient import TestClient
from openai import OpenAI

from service.usecases.token_bytes import TokenBytes
from tests.openai.conftest import openai_client

PROMPT = "The capital of France is"


def test_completion_echo_with_five_logprobs(app_client: TestClient) -> None:
    # echoed prompt tokens carry null logprobs (as OpenAI sends them), which the client's own types do not
    # allow, so this one client does not validate strictly
    oai = openai_client(app_client, _strict_response_validation=False)
    result = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=5)
    choice = result.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert choice.text.startswith(PROMPT) and "".join(lp.tokens) == choice.text
    assert all(choice.text[o:].startswith(t) for t, o in zip(lp.tokens, lp.text_offset, strict=True))
    generated = 4
    assert lp.token_logprobs[:-generated] == [None] * (len(lp.tokens) - generated)
    assert all(isinstance(x, float) for x in lp.token_logprobs[-generated:])
    assert all(len(top) <= 5 and top for top in lp.top_logprobs[-generated:])
    assert result.usage is not None and result.usage.completion_tokens == generated


def test_completion_without_echo_validates_strictly(oai: OpenAI) -> None:
    result = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    lp = result.choices[0].logprobs
    assert lp is not None and lp.tokens and len(lp.tokens) == 4 and lp.text_offset[0] == 0  # type: ignore[index]
    assert result.object == "text_completion" and result.choices[0].finish_reason == "length"
    plain = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert plain.choices[0].text == PROMPT + result.choices[0].text


def test_completion_of_several_prompts_and_n(oai: OpenAI) -> None:
    result = oai.completions.create(model="tiny", prompt=[PROMPT, "Hello"], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert result.choices[0].text == result.choices[1].text  # greedy: the same answer twice
    single = oai.completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0)
    assert result.choices[2].text == single.choices[0].text


def test_models_list_and_retrieve(oai: OpenAI) -> None:
    models = oai.models.list()
    assert [m.id for m in models] == ["tiny"] and models.data[0].owned_by == "glassbox"
    assert oai.models.retrieve("tiny").id == "tiny"


def test_token_bytes_come_from_the_vocabulary_even_for_split_characters(app_client: TestClient) -> None:
    tokenizer = app_client.app.state.registry.get("tiny").tokenizer  # type: ignore[attr-defined]
    table = TokenBytes(tokenizer)
    text = "Café 東京 🙂"
    ids = tokenizer(text)["input_ids"]
    pieces = [table.bytes_of(i) for i in ids]
    assert b"".join(bytes(p) for p in pieces) == text.encode("utf-8")
    partial = [p for p in pieces if bytes(p).decode("utf-8", "replace") != bytes(p).decode("utf-8", "ignore")]
    assert partial, "the test text should contain a token that splits a multi-byte character"
    assert table.bytes_of(tokenizer.convert_tokens_to_ids("<|im_end|>")) == list(b"<|im_end|>")


def test_openapi_documents_the_v1_routes(app_client: TestClient) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}"} <= set(paths)
    chat = paths["/v1/chat/completions"]["post"]
    assert {"200", "404", "422", "429", "503", "504"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]


def test_native_routes_still_refuse_unknown_fields(app_client: TestClient) -> None:
    response = app_client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 2, "surprise": 1})
    assert response.status_code == 422
