"""Contrast in `tokens` scope is defined per row: a row's foil is the contrast's token at the same offset
only while target and contrast share every token before it; an explicit span past that is a 422."""

from __future__ import annotations

import pytest
import torch

from service.engine.continuation import Answer
from service.errors import InvalidRequest
from service.usecases.explain_contrast import contrast_rows, first_divergence

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]


def _answer(ids: list[int]) -> Answer:
    text = "".join(f"t{i} " for i in ids)
    offsets, at = [], 0
    for i in ids:
        offsets.append((at, at + len(f"t{i}")))
        at += len(f"t{i} ")
    return Answer(ids, text, offsets, [False] * len(ids))


def test_rows_stop_at_the_first_divergence():
    answer, contrast = _answer([1, 2, 3, 4]), _answer([1, 2, 9, 4])
    got = contrast_rows(answer, contrast, (0, 4), explicit_span=False)
    assert got.rows == [0, 1, 2] and got.foils == (1, 2, 9) and got.divergence == 2
    assert contrast_rows(answer, contrast, (0, 3), explicit_span=True).rows == [0, 1, 2]


def test_an_explicit_span_past_the_divergence_is_refused_naming_it():
    answer, contrast = _answer([1, 2, 3, 4]), _answer([1, 2, 9, 4])
    with pytest.raises(InvalidRequest, match=r"first differ at answer token 2 \('t3' vs 't9'\)") as err:
        contrast_rows(answer, contrast, (0, 4), explicit_span=True)
    assert err.value.param == "target_span" and "at most 3" in str(err.value)


def test_the_contrast_follows_the_span_start():
    answer, contrast = _answer([1, 2, 3, 4]), _answer([2, 9])
    assert first_divergence(answer, contrast, 1) == 1
    got = contrast_rows(answer, contrast, (1, 4), explicit_span=False)
    assert got.rows == [1, 2] and got.foils == (2, 9) and got.divergence == 2


def test_a_shorter_contrast_has_no_foil_after_its_end():
    answer, contrast = _answer([1, 2, 3, 4]), _answer([1, 2])
    assert contrast_rows(answer, contrast, (0, 4), explicit_span=False).rows == [0, 1]
    with pytest.raises(InvalidRequest, match="contrast ends after 2 tokens: answer token 2 has no foil"):
        contrast_rows(answer, contrast, (0, 4), explicit_span=True)


def test_an_identical_contrast_keeps_every_row():
    answer = _answer([1, 2, 3])
    got = contrast_rows(answer, _answer([1, 2, 3]), (0, 3), explicit_span=True)
    assert got.rows == [0, 1, 2] and got.foils == (1, 2, 3) and got.divergence is None


def _logprobs(lm, prefix: list[int], continuation: list[int]) -> list[float]:
    """Straight from the model: each continuation token's log-probability after ``prefix``."""
    ids = torch.tensor([prefix + continuation])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    lps = torch.log_softmax(logits, -1)
    return [float(lps[len(prefix) + j - 1, t]) for j, t in enumerate(continuation)]


def test_api_contrast_rows_and_size(client, lm):
    target, foil = "The capital is Paris.", "It is Lyon."
    body = {"messages": CHAT, "target": target, "contrast": foil, "methods": ["input_x_gradient"], "precision": None}
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    t_ids = [t["id"] for t in out["target_tokens"]]
    c_ids = [t["id"] for t in out["attributed"]["contrast_tokens"]]
    d = next(i for i, (a, b) in enumerate(zip(t_ids, c_ids, strict=False)) if a != b)
    size = out["attributed"]["contrast_size"]
    assert out["rows"] == list(range(d + 1)) and size["divergence"] == d
    prompt = [t["id"] for t in out["prompt_tokens"]]
    t_lp = _logprobs(lm, prompt, t_ids)
    c_lp = _logprobs(lm, prompt, c_ids)
    assert [t["logprob"] for t in out["attributed"]["contrast_tokens"]] == pytest.approx(c_lp, abs=1e-4)
    assert size["rows"][d] == pytest.approx(t_lp[d] - c_lp[d], abs=1e-4)
    assert all(v == 0 for v in size["rows"][:d])
    assert size["total"] == pytest.approx(sum(size["rows"]), abs=1e-6)
    assert size["sequence"] == pytest.approx(sum(t_lp) - sum(c_lp), abs=1e-3)
    assert out["summary"].startswith(
        f"'{target}' rather than '{foil}' (log-probability {abs(size['sequence']):.2f} nats "
    )


def test_api_contrast_rows_before_the_divergence_score_zero(client):
    target, foil = "The capital is Paris.", "The capital is Lyon."
    body = {"messages": CHAT, "target": target, "contrast": foil, "scope": ["tokens"], "precision": None}
    body["methods"] = ["input_x_gradient"]
    out = client.post("/explain", json=body).json()
    d = out["attributed"]["contrast_size"]["divergence"]
    assert d is not None and d > 0 and out["rows"] == list(range(d + 1))
    data = out["methods"]["input_x_gradient"]["tokens"]["data"]
    assert all(v == 0 for row in data[:d] for v in row)  # f(target) − f(foil) with foil = target
    assert any(v != 0 for v in data[d])


def test_api_explicit_span_past_the_divergence_is_a_422(client):
    body = {"messages": CHAT, "target": "The capital is Paris.", "contrast": "It is Lyon.", "target_span": {"start": 0}}
    r = client.post("/explain", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "target_span" and "first differ at answer token 0" in err["message"]
    seq = client.post("/explain", json={**body, "scope": ["sequence"]})
    assert seq.status_code == 200, seq.text  # sequence scope compares whole continuations
