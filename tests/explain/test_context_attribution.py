"""Context attribution (ContextCite): the surrogate on a linear toy case, leave-one-out against direct model
runs, seeded reproducibility, answer sentences, documents in the prompt and citations over the API."""

from __future__ import annotations

import numpy as np
import torch

from schemas.explain import ExplainRequest
from service.engine.continuation import Answer
from service.explain import engine
from service.explain.methods.context_attribution import ablations, fit_surrogate, lds
from service.explain.objective import logprobs
from service.explain.options import ContextAttributionParams
from service.usecases.documents import DOCUMENTS_HEADER, place_documents
from service.usecases.explain_plan import answer_sentences
from tests.explain.conftest import make_task

UNITS = ((0, 1), (2, 3, 4), (5, 6), (7, 8), *((p,) for p in range(9, 14)))
ROWS = list(range(9, 14))


def _value(model, ids, present: set[int]) -> np.ndarray:
    """Per row, then the span: log-probabilities with the absent units deleted (a direct, slow function)."""
    masked = {p for i, unit in enumerate(UNITS[:4]) if i not in present for p in unit}
    seq = [t for p, t in enumerate(ids) if p not in masked]
    lead = [0] if len(masked) >= 9 else []
    seq, shift = lead + seq, len(lead) - len(masked)
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits
    lps = logprobs(logits[:, [r - 1 + shift for r in ROWS]], torch.tensor([ids[r] for r in ROWS]))[0]
    return np.append(lps.numpy(), lps.sum().item())


def _run(model, ids, **params):
    task = make_task(ids, {"context_attribution": ContextAttributionParams(**params)}, units=UNITS)
    return engine.explain(model, task).outputs["context_attribution"]


def test_the_surrogate_recovers_a_linear_function_and_its_leave_one_out_scores():
    rng = np.random.default_rng(0)
    weights = np.array([2.0, -1.0, 0.0, 0.5, 3.0])
    coalitions, held = ablations(5, ContextAttributionParams(n_ablations=40, held_out=10))
    x = np.array([[1.0 if i in c else 0.0 for i in range(5)] for c in coalitions])
    y = (x @ weights + 1.5)[:, None]
    fitted, intercept = fit_surrogate(x, y, alpha=0.0)
    np.testing.assert_allclose(fitted[0], weights, atol=1e-9)
    # a linear function's leave-one-out effect of source i is its weight: f(all) - f(all without i)
    everyone = np.ones(5)
    loo = [(everyone @ weights) - (np.delete(everyone, i) @ np.delete(weights, i)) for i in range(5)]
    np.testing.assert_allclose(fitted[0], loo, atol=1e-9)
    sparse, _ = fit_surrogate(x, y + rng.normal(0, 0.01, y.shape), alpha=0.01)
    np.testing.assert_allclose(sparse[0], weights, atol=0.1)
    xh = np.array([[1.0 if i in c else 0.0 for i in range(5)] for c in held])
    # exact predictions; ties among the actual values are broken by rounding noise, hence not exactly 1
    assert lds(fitted, intercept, xh, (xh @ weights + 1.5)[:, None])[0] > 0.95


def test_leave_one_out_equals_direct_removal(model, ids):
    out = _run(model, ids, mode="leave_one_out")
    full = _value(model, ids, {0, 1, 2, 3})
    expected = np.stack([full - _value(model, ids, {0, 1, 2, 3} - {i}) for i in range(4)], axis=-1)  # [k, 4]
    np.testing.assert_allclose(out.tokens[:, :4], expected[:-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sequence[:4], expected[-1], rtol=1e-5, atol=1e-6)
    assert out.params["forwards"] == 5


def test_lasso_scores_are_seeded_and_the_surrogate_is_scored_on_held_out_ablations(model, ids):
    a = _run(model, ids, n_ablations=24, held_out=8, seed=5, alpha=0.0)
    b = _run(model, ids, n_ablations=24, held_out=8, seed=5, alpha=0.0)
    np.testing.assert_array_equal(a.sequence, b.sequence)
    assert a.params["forwards"] <= 32 and a.params["players"] == 4
    rho = a.params["lds"]["sequence"]
    assert rho is None or -1.0 <= rho <= 1.0
    # the least-squares surrogate over these ablations reproduces the ablations it was fitted on in the mean
    assert np.isfinite(a.sequence).all()


def test_answer_sentences_group_tokens_by_sentence():
    text = "Paris is big. It is old."
    pieces = ["Paris", " is", " big", ".", " It", " is", " old", "."]
    offsets, at = [], 0
    for p in pieces:
        offsets.append((at, at + len(p)))
        at += len(p)
    answer = Answer(ids=list(range(8)), text=text, offsets=offsets, special=[False] * 8)
    assert answer_sentences(answer, (0, 8)) == [(0, 4), (4, 8)]
    assert answer_sentences(answer, (2, 6)) == [(2, 4), (4, 6)]


DOCS = [
    {"title": "Rivers", "text": "The Nile is long. It flows north."},
    {"title": "Capitals", "text": "Paris is the capital of France."},
]


def test_documents_go_into_the_chat_and_become_segments_or_sentences():
    req = ExplainRequest.model_validate(
        {"messages": [{"role": "user", "content": "Capital?"}], "documents": DOCS, "target": "Paris."}
    )
    placed = place_documents(req)
    assert placed.documents is None and placed.messages[0].role == "system"
    assert placed.messages[0].content.startswith(DOCUMENTS_HEADER) and placed.messages[1].content == "Capital?"
    labels = [s.label for s in placed.segments]
    assert placed.granularity == "segments" and labels == ["Rivers", "Capitals"]
    system = placed.messages[0].content
    assert [system[s.start : s.end] for s in placed.segments] == [d["text"] for d in DOCS]
    by_sentence = place_documents(req.model_copy(update={"document_units": "sentence"}))
    assert [s.label for s in by_sentence.segments] == ["Rivers · 1", "Rivers · 2", "Capitals · 1"]
    prompt = place_documents(ExplainRequest.model_validate({"prompt": "Q: capital?", "documents": DOCS}))
    assert prompt.prompt.startswith(DOCUMENTS_HEADER) and prompt.prompt.endswith("\n\nQ: capital?")
    assert [prompt.prompt[s.start : s.end] for s in prompt.segments] == [d["text"] for d in DOCS]


def test_explain_with_documents_returns_citations_that_line_up_with_the_answer(client):
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "documents": DOCS,
        "target": "Paris is the capital. It is in France.",
        "methods": ["context_attribution", "saliency"],
        "context_attribution": {"n_ablations": 16, "held_out": 4, "citation_threshold": 0.0},
    }
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert [s["label"] for s in data["sources"][: data["sequence_sources"]]] == ["Rivers", "Capitals"]
    citations = data["citations"]
    assert len(citations) == 2
    for c in citations:
        assert data["text"][c["start"] : c["end"]] == c["text"]
        assert all(s["score"] >= 0.0 for s in c["sources"]) and c["supported"] == bool(c["sources"])
    assert [c["text"] for c in citations] == ["Paris is the capital.", "It is in France."]
    params = data["methods"]["context_attribution"]["params"]
    assert params["forwards"] <= 20 and len(params["sentences"]) == 2
    # a threshold nothing reaches: every sentence is unsupported
    r = client.post("/explain", json={**body, "context_attribution": {"citation_threshold": 1e6}})
    assert all(not c["supported"] and c["sources"] == [] for c in r.json()["citations"])


def test_generate_with_documents_explains_over_the_documents(client):
    r = client.post(
        "/generate",
        json={
            "messages": [{"role": "user", "content": "Capital?"}],
            "documents": DOCS,
            "max_new_tokens": 4,
            "explain": {"methods": ["context_attribution"], "context_attribution": {"mode": "leave_one_out"}},
        },
    )
    assert r.status_code == 200, r.text
    explanation = r.json()["explanation"]
    assert explanation["prompt_text"].count("[2] Capitals") == 1
    assert explanation["methods"]["context_attribution"]["params"]["forwards"] == 3
    assert explanation["citations"] is not None
