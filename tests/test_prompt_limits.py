"""Limits before costly work (issue 10): refusing a huge prompt costs a bounded amount of tokenizing, and a
chat prompt is built in linear time in the number of messages.

Before: every prefix of a chat was rendered (1,000 empty messages: 16.8 s to a 422) and a 990 KB prompt was
tokenized in full (741,000 tokens, seconds, RSS kept) before the limit was checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from schemas.common import ChatMessage
from service.api.app import create_app
from service.engine.prompt import build_prompt, max_token_bytes, tokens_over
from service.models.loaded import LoadedModel
from service.settings import Settings
from tests.conftest import wait_ready
from tests.test_api_generate import assert_error

EMOJI = "😀" * 247_000  # 988 KB of UTF-8


class Work:
    """Counts what a tokenizer is asked to do: template renders, and characters tokenized."""

    def __init__(self) -> None:
        self.renders = 0
        self.chars = 0


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch, tiny_lm: LoadedModel) -> Iterator[Work]:
    counter = Work()
    cls = type(tiny_lm.tokenizer)
    call, render = cls.__call__, cls.apply_chat_template

    def counted_call(self: PreTrainedTokenizerBase, text: Any, *args: Any, **kwargs: Any) -> Any:
        counter.chars += len(text) if isinstance(text, str) else 0
        return call(self, text, *args, **kwargs)

    def counted_render(self: PreTrainedTokenizerBase, *args: Any, **kwargs: Any) -> Any:
        counter.renders += 1
        return render(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", counted_call)
    monkeypatch.setattr(cls, "apply_chat_template", counted_render)
    yield counter


def test_build_prompt_renders_a_chat_a_constant_number_of_times(tiny_lm: LoadedModel, work: Work) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, messages=[ChatMessage(role="user", content="")] * 1000)
    assert work.renders <= 2  # was 1,001: one per prefix
    assert len(prompt.messages) == 1000
    owners = {i for i in prompt.message_index if i is not None}
    assert owners == set(range(1000))  # every message still owns its template tokens


def test_build_prompt_finds_content_that_repeats_the_role_name(tiny_lm: LoadedModel) -> None:
    messages = [ChatMessage(role="user", content="user"), ChatMessage(role="assistant", content="a")]
    prompt = build_prompt(tiny_lm.tokenizer, messages=messages)
    for (start, end), message in zip(prompt.messages, messages, strict=True):
        assert prompt.text[start:end] == message.content
        assert prompt.text[:start].endswith(message.role + "\n")  # the content, not the header's role name


def test_tokens_over_refuses_after_a_bounded_prefix(tiny_lm: LoadedModel, work: Work) -> None:
    limit = 1000
    count = tokens_over(tiny_lm.tokenizer, EMOJI, limit)
    assert count is not None and count > limit
    assert work.chars < 6 * limit  # not the 247,000 characters of the whole text


@pytest.mark.parametrize("words", [10, 999, 5000])
def test_tokens_over_never_refuses_a_text_within_the_limit(tiny_lm: LoadedModel, words: int) -> None:
    text = " ".join(f"w{i % 97}" for i in range(words))
    exact = len(tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokens_over(tiny_lm.tokenizer, text, exact) is None
    if exact > 1:
        over = tokens_over(tiny_lm.tokenizer, text, exact // 20)
        assert over is None or over > exact // 20


def test_max_token_bytes_bounds_every_tokenization(tiny_lm: LoadedModel) -> None:
    text = "Hello, wörld! 😀 " * 50
    ids = tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= len(text.encode()) / max_token_bytes(tiny_lm.tokenizer)


@pytest.fixture
def limited_client(tiny_settings: Settings) -> Callable[..., TestClient]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(tiny_settings.model_copy(update=overrides)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make  # type: ignore[misc]
    for client in clients:
        client.__exit__(None, None, None)


def _admission_active(client: TestClient) -> int:
    pool = client.app.state.serving.admission._pools.get("tiny")  # type: ignore[attr-defined]
    return 0 if pool is None else int(pool.active)


def test_api_too_many_messages_refused_before_any_tokenizing(
    limited_client: Callable[..., TestClient], work: Work
) -> None:
    client = limited_client(max_prompt_tokens=999)
    work.renders = work.chars = 0  # the warm-up's
    response = client.post("/generate", json={"messages": [{"role": "user", "content": ""}] * 1000})
    assert_error(response, 422, "budget_exceeded", "messages")
    assert work.renders == 0 and work.chars == 0


def test_api_huge_emoji_prompt_refused_after_a_bounded_prefix(
    limited_client: Callable[..., TestClient], work: Work
) -> None:
    client = limited_client(max_prompt_tokens=2000)
    work.renders = work.chars = 0  # the warm-up's
    body = json.dumps({"prompt": EMOJI, "max_new_tokens": 1}, ensure_ascii=False).encode()
    assert len(body) < 1_000_000
    response = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 422, "budget_exceeded", "prompt")
    assert work.chars < 6 * 2000  # never the whole prompt
    assert _admission_active(client) == 0  # no slot kept
