"""Chat templates that are not ChatML-simple: one that refuses a conversation (Gemma 2's system role), one
whose rendering of a conversation prefix is not a prefix of the whole (Qwen3's ``<think>`` handling)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from schemas.common import ChatMessage
from service.api.app import create_app
from service.engine.prompt import build_prompt
from service.errors import InvalidRequest
from service.settings import Settings
from tests.conftest import wait_ready
from tests.support.tiny_model import build_tiny_model, build_tokenizer

#: Gemma 2's refusal, as its template words it.
GEMMA2_STYLE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen3's handling of reasoning, cut down: an assistant turn before the last user message loses its
#: ``<think>`` block, a later one keeps it (so a prefix of the conversation renders differently).
QWEN3_STYLE = """{%- set ns = namespace(last_query_index=messages|length - 1) -%}
{%- for message in messages[::-1] -%}
{%- set index = (messages|length - 1) - loop.index0 -%}
{%- if ns.last_query_index == messages|length - 1 and message.role == 'user' -%}{%- set ns.last_query_index = index -%}
{%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
{%- if message.role == 'assistant' -%}
{%- set content = message.content -%}{%- set reasoning = '' -%}
{%- if '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}
{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}
{%- endif -%}
{%- if loop.index0 > ns.last_query_index -%}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') -}}
{%- else -%}{{- '<|im_start|>assistant\\n' + content -}}{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- else -%}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"""

SYSTEM_FIRST = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hello")]


def test_prompt_template_that_raises_is_invalid_request_with_its_message() -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = GEMMA2_STYLE
    with pytest.raises(InvalidRequest, match="System role not supported") as caught:
        build_prompt(tokenizer, messages=SYSTEM_FIRST)
    assert caught.value.param == "messages"
    build_prompt(tokenizer, messages=SYSTEM_FIRST[1:])  # what the template accepts still works


def test_prompt_template_that_does_not_parse_is_not_the_clients_fault() -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for message in messages %}"
    with pytest.raises(Exception) as caught:
        build_prompt(tokenizer, messages=SYSTEM_FIRST[1:])
    assert not isinstance(caught.value, InvalidRequest)


@pytest.fixture(scope="module")
def gemma2_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = build_tiny_model(tmp_path_factory.mktemp("gemma2-style"))
    tokenizer = build_tokenizer()
    tokenizer.chat_template = GEMMA2_STYLE
    tokenizer.save_pretrained(folder)
    settings = Settings(models=f"tiny={folder}", cache_dir=tmp_path_factory.mktemp("cache"), device="cpu", offline=True)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/generate", {"max_new_tokens": 2}),
        ("/explain", {"target": "Hi", "methods": ["attention"]}),
        ("/v1/chat/completions", {"model": "tiny", "max_tokens": 2}),
    ],
)
def test_api_template_that_raises_is_422_with_its_message(
    gemma2_client: TestClient, path: str, extra: dict[str, object]
) -> None:
    messages = [m.model_dump() for m in SYSTEM_FIRST]
    r = gemma2_client.post(path, json={"messages": messages, **extra})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "System role not supported" in error["message"]
    assert gemma2_client.post(path, json={"messages": messages[1:], **extra}).status_code == 200


QWEN_CHAT = [
    ChatMessage(role="system", content="You explain things."),
    ChatMessage(role="user", content="What is the capital of France?"),
    ChatMessage(role="assistant", content="<think>\nThe user asks about France.\n</think>\n\nParis."),
    ChatMessage(role="user", content="And of Germany?"),
    ChatMessage(role="assistant", content="<think>\nGermany now.\n</think>\n\nBerlin."),
    ChatMessage(role="user", content="Thanks, hello world"),
]


@pytest.mark.parametrize("count", [3, 5, 6])
def test_prompt_spans_for_a_template_that_is_not_prefix_stable(count: int) -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = QWEN3_STYLE
    messages = QWEN_CHAT[:count]
    prompt = build_prompt(tokenizer, messages=messages)
    shown = prompt.text
    # the premise: rendering a prefix of this conversation is not a prefix of its rendering
    if count > 3:
        prefix = tokenizer.apply_chat_template([m.model_dump() for m in messages[:3]], tokenize=False)
        assert not shown.startswith(prefix)
    headers = [
        shown.index(f"<|im_start|>{m.role}", prompt.messages[i - 1][1] if i else 0) for i, m in enumerate(messages)
    ]
    for i, message in enumerate(messages):
        start, end = prompt.messages[i]
        visible = shown[start:end]
        assert visible and visible in message.content, (i, visible)
        assert visible.endswith(message.content.split("</think>")[-1].strip())
        inside = [k for k in range(len(prompt)) if prompt.message_index[k] == i and not prompt.template[k]]
        assert "".join(prompt.token_text(k, tokenizer) for k in inside) == visible
        # every token from this message's header to the next one's belongs to this message
        stop = headers[i + 1] if i + 1 < len(messages) else shown.rindex("<|im_start|>assistant\n")
        for k, (s, _) in enumerate(prompt.offsets):
            if headers[i] <= s < stop:
                assert prompt.message_index[k] == i and prompt.role[k] == message.role, (i, k)
    assert prompt.message_index[-1] is None
