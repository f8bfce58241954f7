"""Chat completions through the official `openai` client, strictly validated against its own types."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI, UnprocessableEntityError

from tests.openai.conftest import CHAT

GREEDY = {"model": "tiny", "messages": CHAT, "max_tokens": 6, "temperature": 0}


def test_chat_completion_without_logprobs(oai: OpenAI) -> None:
    result = oai.chat.completions.create(**GREEDY)  # type: ignore[call-overload]
    choice = result.choices[0]
    assert result.object == "chat.completion" and result.model == "tiny" and result.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert result.usage is not None and result.usage.completion_tokens == 6
    assert result.usage.total_tokens == result.usage.prompt_tokens + 6
    assert result.system_fingerprint and result.system_fingerprint.endswith("-float32-e2")


def test_chat_completion_with_logprobs_has_bytes_and_alternatives(oai: OpenAI) -> None:
    result = oai.chat.completions.create(**GREEDY, logprobs=True, top_logprobs=3)  # type: ignore[call-overload]
    content = result.choices[0].logprobs.content
    assert content is not None and len(content) == 6
    assert "".join(t.token for t in content) == result.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3 and token.bytes
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
        assert math.isclose(token.logprob, token.top_logprobs[0].logprob, abs_tol=1e-5)  # greedy: the best one
    raw = b"".join(bytes(t.bytes or []) for t in content)
    assert raw.decode("utf-8", "replace") == result.choices[0].message.content


def test_logprobs_without_top_still_list_top_logprobs(oai: OpenAI) -> None:
    result = oai.chat.completions.create(**GREEDY, logprobs=True)  # type: ignore[call-overload]
    content = result.choices[0].logprobs.content
    assert content and all(t.top_logprobs == [] for t in content)


def test_chat_and_generate_give_the_same_text_and_logprobs(oai: OpenAI, app_client: TestClient) -> None:
    result = oai.chat.completions.create(**GREEDY, logprobs=True, top_logprobs=2)  # type: ignore[call-overload]
    native = app_client.post(
        "/generate",
        json={"messages": CHAT, "max_new_tokens": 6, "temperature": 0, "top_logprobs": 2},
        headers={"Cache-Control": "no-cache"},
    ).json()
    assert result.choices[0].message.content == native["text"]
    content = result.choices[0].logprobs.content
    assert [t.logprob for t in content] == [t["logprob"] for t in native["tokens"]]
    assert [[a.logprob for a in t.top_logprobs] for t in content] == [
        [a["logprob"] for a in t["top_logprobs"]] for t in native["tokens"]
    ]


def test_chat_shares_the_response_cache(oai: OpenAI) -> None:
    body = {**GREEDY, "max_tokens": 3, "seed": 7}
    first = oai.chat.completions.with_raw_response.create(**body)  # type: ignore[call-overload]
    second = oai.chat.completions.with_raw_response.create(**body)  # type: ignore[call-overload]
    assert first.headers["x-cache"] in ("miss", "hit") and second.headers["x-cache"] == "hit"
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content


def test_n_choices_are_seeded_one_apart(oai: OpenAI) -> None:
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 8, "temperature": 1.5, "seed": 11}
    several = oai.chat.completions.create(**body, n=3)  # type: ignore[call-overload]
    assert [c.index for c in several.choices] == [0, 1, 2]
    alone = [oai.chat.completions.create(**{**body, "seed": 11 + i}) for i in range(3)]  # type: ignore[call-overload]
    assert [c.message.content for c in several.choices] == [a.choices[0].message.content for a in alone]
    assert several.usage is not None and several.usage.completion_tokens == sum(
        a.usage.completion_tokens for a in alone if a.usage
    )
    assert several.usage.prompt_tokens == alone[0].usage.prompt_tokens  # type: ignore[union-attr]


def test_unknown_fields_are_accepted_and_vllm_extensions_work(oai: OpenAI) -> None:
    result = oai.chat.completions.create(
        **GREEDY,  # type: ignore[call-overload]
        extra_body={"some_future_field": {"x": 1}, "top_k": 5, "return_token_ids": True},
    )
    extra = result.choices[0].model_extra or {}
    assert len(extra["token_ids"]) == 6 and all(isinstance(i, int) for i in extra["token_ids"])
    assert result.model_extra and result.model_extra["prompt_token_ids"]


def test_developer_role_and_text_parts_are_accepted(oai: OpenAI) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
    ]
    result = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=2, temperature=0)  # type: ignore[arg-type]
    assert result.choices[0].message.content is not None


def test_explanation_through_extra_body(oai: OpenAI) -> None:
    result = oai.chat.completions.create(
        **GREEDY,  # type: ignore[call-overload]
        extra_body={"explain": {"methods": ["attention"], "granularity": "word"}},
    )
    explanation = (result.choices[0].model_extra or {})["explanation"]
    assert "text" not in explanation and "cache" not in explanation
    assert explanation["granularity"] == "word" and set(explanation["methods"]) == {"attention"}
    assert len(explanation["target_tokens"]) == 6


def test_documents_go_into_the_prompt_and_become_segments(oai: OpenAI) -> None:
    documents = [{"title": "Atlas", "text": "Paris is the capital of France."}, {"title": "", "text": "Hello world."}]
    result = oai.chat.completions.create(
        **GREEDY,  # type: ignore[call-overload]
        extra_body={"documents": documents, "explain": {"methods": ["attention"]}, "return_token_ids": True},
    )
    plain = oai.chat.completions.create(**GREEDY, extra_body={"return_token_ids": True})  # type: ignore[call-overload]
    assert len(result.model_extra["prompt_token_ids"]) > len(plain.model_extra["prompt_token_ids"])  # type: ignore[index]
    explanation = (result.choices[0].model_extra or {})["explanation"]
    assert explanation["granularity"] == "segments"
    labelled = {s["label"]: s["text"] for s in explanation["sources"] if s.get("label")}
    assert labelled == {"Atlas": "Paris is the capital of France.", "document 2": "Hello world."}
    assert "Use these documents to answer." in explanation["prompt_text"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"chat_template_kwargs": {"enable_thinking": False}}, "chat_template_kwargs"),
        ({"prompt_logprobs": 1}, "prompt_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_features_are_refused_not_ignored(oai: OpenAI, extra: dict[str, object], param: str) -> None:
    with pytest.raises(UnprocessableEntityError) as raised:
        oai.chat.completions.create(**GREEDY, extra_body=extra)  # type: ignore[call-overload]
    assert raised.value.param == param  # type: ignore[attr-defined]


def test_empty_chat_template_kwargs_are_fine(oai: OpenAI) -> None:
    assert oai.chat.completions.create(**GREEDY, extra_body={"chat_template_kwargs": {}}).choices  # type: ignore[call-overload]
