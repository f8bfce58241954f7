"""Score-only requests (`methods: []`): the target's log-probabilities from one forward pass, checked
against a direct transformers forward on the same ids."""

from __future__ import annotations

import pytest
import torch

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]


def _direct_logprobs(lm, prompt_ids: list[int], target_ids: list[int]) -> list[float]:
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    lps = torch.log_softmax(logits, -1)
    p = len(prompt_ids)
    return [float(lps[p + j - 1, t]) for j, t in enumerate(target_ids)]


@pytest.mark.parametrize("inputs", [{"messages": CHAT}, {"prompt": "The Eiffel Tower is in"}])
def test_score_only_equals_a_direct_forward(client, lm, inputs):
    r = client.post("/explain", json={**inputs, "target": " Paris is nice.", "methods": [], "precision": None})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["methods"] == {}
    prompt_ids = [t["id"] for t in body["prompt_tokens"]]
    target_ids = [t["id"] for t in body["target_tokens"]]
    expected = _direct_logprobs(lm, prompt_ids, target_ids)
    got = [t["logprob"] for t in body["target_tokens"]]
    assert got == pytest.approx(expected, abs=1e-5)
    assert body["answer_logprob"] == pytest.approx(sum(expected), abs=1e-4)
    assert "Scored only" in body["summary"]
    # one unit of work (the forward), charged exactly one pass per token: no backward, no method
    assert body["provenance"]["units"] == 1
    assert body["provenance"]["estimated_work"] == len(prompt_ids) + len(target_ids)


def test_score_only_leaves_the_model_as_it_was(client, lm):
    before = [p.requires_grad for p in lm.model.parameters()]
    r = client.post("/explain", json={"messages": CHAT, "target": "Paris", "methods": []})
    assert r.status_code == 200, r.text
    assert [p.requires_grad for p in lm.model.parameters()] == before
    # the same text scored twice gives the same numbers (and an attribution request agrees on them)
    again = client.post("/explain", json={"messages": CHAT, "target": "Paris", "methods": ["saliency"]})
    assert again.status_code == 200, again.text
    lp = [t["logprob"] for t in r.json()["target_tokens"]]
    assert lp == pytest.approx([t["logprob"] for t in again.json()["target_tokens"]], abs=1e-5)
