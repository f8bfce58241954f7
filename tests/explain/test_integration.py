"""The real default model: 'France' drives 'Paris' for the gradient methods."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.explain import ExplainRequest
from service.usecases.documents import place_documents
from tests.explain.conftest import StubRegistry
from tests.support.run import explain as run_explain

GRADIENT_METHODS = ["saliency", "input_x_gradient", "integrated_gradients"]


@pytest.mark.integration
def test_france_is_a_top_source_of_paris(default_lm, default_settings):
    req = ExplainRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "target": "The capital of France is Paris.",
            "methods": GRADIENT_METHODS,
            "granularity": "word",
            "integrated_gradients": {"n_steps": 16, "baseline": "pad"},
        }
    )
    response = run_explain(StubRegistry(default_lm), default_settings, req)
    row = next(i for i, t in enumerate(response.target_tokens) if t.text.strip() == "Paris")
    prompt_columns = [c for c, s in enumerate(response.sources) if s.kind == "prompt"]
    for method in GRADIENT_METHODS:
        array = response.methods[method].tokens
        assert array is not None
        scores = np.abs(np.asarray(array.data)[row, prompt_columns])
        top = [response.sources[prompt_columns[c]].text for c in np.argsort(-scores)[:3]]
        assert "France" in top, (method, top)
    # the summary speaks for the most faithful method that ran (saliency, by make bench-faithfulness) and
    # states its denominator
    assert "(saliency;" in response.summary and "shares of" in response.summary, response.summary


THREE_DOCUMENTS = [
    {"title": "Rivers", "text": "The Nile is the longest river in Africa. It flows north into the Mediterranean Sea."},
    {"title": "Towers", "text": "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall."},
    {"title": "Mountains", "text": "Mount Everest is the highest mountain on Earth. It stands in the Himalayas."},
]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["lasso", "leave_one_out"])
def test_the_document_that_holds_the_answer_gets_the_largest_score(default_lm, default_settings, mode):
    req = ExplainRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "In which year was the Eiffel Tower completed?"}],
            "documents": THREE_DOCUMENTS,
            "methods": ["context_attribution"],
            "max_new_tokens": 24,
            "context_attribution": {"mode": mode},
        }
    )
    response = run_explain(StubRegistry(default_lm), default_settings, place_documents(req))
    assert "1889" in response.text
    sequence = response.methods["context_attribution"].sequence
    assert sequence is not None
    labels = [s.label for s in response.sources[: response.sequence_sources]]
    assert labels == ["Rivers", "Towers", "Mountains"]
    assert labels[int(np.argmax(sequence.data))] == "Towers"
    assert response.citations is not None
    # every answer sentence cites the towers document first (others may follow, more weakly)
    assert all(c.sources and c.sources[0].label == "Towers" for c in response.citations), response.citations
