"""The real default model through the official client: the France question answers "Paris"."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.openai.conftest import CHAT, openai_client

pytestmark = pytest.mark.integration


def test_france_question_answers_paris(default_client: TestClient) -> None:
    oai = openai_client(default_client)
    result = oai.chat.completions.create(
        model=oai.models.list().data[0].id,
        messages=CHAT,
        max_tokens=16,
        temperature=0,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    assert "Paris" in (result.choices[0].message.content or "")
    tokens = result.choices[0].logprobs.content  # type: ignore[union-attr]
    assert tokens and b"".join(bytes(t.bytes or []) for t in tokens).decode() == result.choices[0].message.content
