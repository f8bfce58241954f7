"""The real default model: 'France' drives 'Paris' for the gradient methods."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.explain import ExplainRequest
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
    assert response.summary.startswith("The answer rests mostly on") and "message" in response.summary
