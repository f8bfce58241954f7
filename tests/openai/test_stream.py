"""Streamed chat completions as the official client parses them, and the SSE lines on the wire."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from openai import LengthFinishReasonError, OpenAI

from schemas.explain import ArrayData, ExplainProgressEvent, ExplainRowEvent
from schemas.openai import ChatCompletionRequest
from service.usecases.openai_compat import Context
from service.usecases.openai_stream import ChatStream, Comment
from tests.openai.conftest import CHAT

GREEDY = {"model": "tiny", "messages": CHAT, "max_tokens": 6, "temperature": 0}


def test_stream_without_usage_matches_the_non_streamed_answer(oai: OpenAI) -> None:
    chunks = list(oai.chat.completions.create(**GREEDY, stream=True))  # type: ignore[call-overload]
    whole = oai.chat.completions.create(**GREEDY)  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.usage is None and c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_stream_with_usage_ends_with_an_empty_choices_chunk(oai: OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            **GREEDY,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,  # type: ignore[call-overload]
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    logprobs = [c.choices[0].logprobs for c in chunks[:-1] if c.choices and c.choices[0].logprobs]
    streamed = [t for lp in logprobs for t in lp.content or []]
    assert len(streamed) == 6 and all(len(t.top_logprobs) == 2 and t.bytes for t in streamed)


def test_stream_helper_events_and_final_completion(oai: OpenAI) -> None:
    # seeded, so reproducible: the tiny model's answer is "tentG of user..."; the stop string ends it
    body = {**GREEDY, "temperature": 1.0, "seed": 2, "max_tokens": 12, "stop": [" of"]}
    with oai.chat.completions.stream(**body) as stream:  # type: ignore[arg-type]
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "chunk" in kinds and "content.delta" in kinds and kinds[-1] == "content.done"
    whole = oai.chat.completions.create(**body)  # type: ignore[call-overload]
    assert final.choices[0].message.content == whole.choices[0].message.content
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "tentG"


def test_stream_helper_reports_a_length_cut_as_the_client_defines(oai: OpenAI) -> None:
    with pytest.raises(LengthFinishReasonError), oai.chat.completions.stream(**GREEDY) as stream:  # type: ignore[arg-type]
        for _ in stream:
            pass
        stream.get_final_completion()


def test_streamed_explanation_arrives_in_the_final_chunk(oai: OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            **GREEDY,
            stream=True,
            extra_body={"explain": {"methods": ["attention"]}},  # type: ignore[call-overload]
        )
    )
    final = chunks[-1].choices[0]
    assert final.finish_reason == "length"
    explanation = (final.model_extra or {})["explanation"]
    assert len(explanation["target_tokens"]) == 6 and "attention" in explanation["methods"]
    assert all("explanation" not in (c.choices[0].model_extra or {}) for c in chunks[:-1])


def test_n_streams_interleave_and_each_finishes(oai: OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            **{**GREEDY, "temperature": 1.0, "seed": 3},
            n=2,
            stream=True,  # type: ignore[call-overload]
        )
    )
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    for i in (0, 1):
        alone = oai.chat.completions.create(**{**GREEDY, "temperature": 1.0, "seed": 3 + i})  # type: ignore[call-overload]
        assert alone.choices[0].message.content == texts[i]


def test_wire_format_has_no_event_names_and_no_empty_data(app_client: TestClient) -> None:
    body = {**GREEDY, "stream": True, "stream_options": {"include_usage": True}}
    with app_client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert not any(line.startswith("event:") for line in lines)
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data:")]
    assert all(d.strip() for d in data) and data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "chat.completion.chunk" for d in data[:-1])


def _stream(app_client: TestClient) -> ChatStream:
    state = app_client.app.state  # type: ignore[attr-defined]
    ctx = Context(state.registry, state.settings, state.cache, state.serving, state.serving.deadline(), None)
    return ChatStream(ctx, ChatCompletionRequest.model_validate(GREEDY), [])


def test_explain_progress_is_a_comment_rows_are_choice_level_unknown_items_are_skipped(app_client: TestClient) -> None:
    stream = _stream(app_client)
    progress = stream._translate(0, ExplainProgressEvent(done=2, total=5, elapsed_s=0.1, eta_s=0.3, phase="gradients"))
    assert isinstance(progress, Comment) and progress.text.startswith("progress 2/5 gradients")
    scores = ArrayData(dims=["source"], shape=[2], encoding="json", data=[0.5, 0.25])
    row = stream._translate(0, ExplainRowEvent(method="saliency", row=0, target=0, scores=scores))
    assert isinstance(row, dict)
    choice = row["choices"][0]
    assert choice["delta"] == {} and choice["explanation_row"]["scores"]["data"] == [0.5, 0.25]
    assert stream._translate(0, object()) is None
