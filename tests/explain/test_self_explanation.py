"""Self-explanations: mention matching on fixed texts, the follow-up built with the chat template, and the
account held against the attributions over the API."""

from __future__ import annotations

import numpy as np

from schemas.common import ChatMessage
from service.engine.continuation import Answer
from service.engine.prompt import build_prompt, render_chat
from service.explain.units import Unit
from service.usecases.self_explanation import QUESTION, check, follow_up, mentioned


def _unit(text: str, label: str | None = None) -> Unit:
    return Unit(positions=(0,), kind="prompt", indices=(0,), start=0, end=len(text), text=text, label=label)


UNITS = [_unit("What"), _unit("capital"), _unit("France"), _unit("Paris is the capital of France.", "Atlas")]


def test_mentions_match_content_words_and_document_titles():
    account = "I relied on the word France, and on the Atlas document."
    assert mentioned(account, UNITS[2]) and mentioned(account, UNITS[3])
    assert not mentioned(account, UNITS[0])  # "What" is a stop word
    assert not mentioned("Because of capitals in general.", UNITS[1])  # whole words only
    assert mentioned("The CAPITAL is asked for.", UNITS[1])  # case-insensitive


def test_the_account_agrees_when_it_names_the_strongest_source():
    scores = np.array([0.1, 0.5, 2.0, 0.0])
    good = check("Because the question is about France.", UNITS, scores, "input_x_gradient")
    # the document mentions France too (its content words count), though it holds no mass here
    assert good.agrees and good.mentioned == [2, 3] and good.top_sources[0] == 2 and good.top_mentioned[0]
    assert good.mentioned_share == round(2.0 / 2.6, 4) and "agrees" in good.verdict
    bad = check("I just know it.", UNITS, scores, "input_x_gradient")
    assert not bad.agrees and bad.mentioned == [] and bad.mentioned_share == 0.0
    assert "disagrees" in bad.verdict and "'France'" in bad.verdict
    weak = check("The capital was asked.", UNITS, scores, "saliency")
    assert not weak.agrees and weak.mentioned == [1, 3] and "only 19%" in weak.verdict


def test_the_follow_up_is_the_conversation_then_the_answer_then_the_question(lm):
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Capital?")]
    prompt = build_prompt(lm.tokenizer, messages=messages)
    answer = Answer(ids=[1], text="Paris.", offsets=[(0, 6)], special=[False])
    follow = follow_up(lm, prompt, answer)
    expected = render_chat(
        lm.tokenizer,
        [*messages, ChatMessage(role="assistant", content="Paris."), ChatMessage(role="user", content=QUESTION)],
    )
    assert follow.text == expected and follow.is_chat
    raw = follow_up(lm, build_prompt(lm.tokenizer, prompt="Capital?"), answer)
    assert raw.text == render_chat(
        lm.tokenizer,
        [
            ChatMessage(role="user", content="Capital?"),
            ChatMessage(role="assistant", content="Paris."),
            ChatMessage(role="user", content=QUESTION),
        ],
    )


def test_explain_returns_the_self_explanation_checked_against_the_evidence(client):
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "target": "Paris",
        "methods": ["input_x_gradient"],
        "granularity": "word",
        "self_explanation": True,
        "self_explanation_tokens": 8,
    }
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    se = data["self_explanation"]
    assert se["question"] == QUESTION and se["method"] == "input_x_gradient" and isinstance(se["text"], str)
    assert all(0 <= i < data["sequence_sources"] for i in se["mentioned"])
    assert len(se["top_sources"]) == len(se["top_mentioned"]) <= 3
    assert "self_explanation" in data["provenance"]["timings_ms"]
    assert "self_explanation" not in client.post("/explain", json={**body, "self_explanation": False}).json()
