"""The four "answers users can check" features on the default model, for one three-document question:
citations (context attribution), a counterfactual, the self-explanation checked, and stability. Prints each
feature's output, model runs and seconds next to plain input x gradient in the same run (README figures).

    PYTHONPATH=. .venv/bin/python bench/bench_answers.py
"""

from __future__ import annotations

import json
import time
from typing import Any

from schemas.explain import ExplainRequest
from service.models.loader import load_model
from service.settings import Settings
from service.usecases.documents import place_documents
from tests.explain.conftest import StubRegistry
from tests.support.run import explain as run_explain

DOCUMENTS = [
    {"title": "Rivers", "text": "The Nile is the longest river in Africa. It flows north into the Mediterranean Sea."},
    {"title": "Towers", "text": "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall."},
    {"title": "Mountains", "text": "Mount Everest is the highest mountain on Earth. It stands in the Himalayas."},
]
QUESTION = "In which year was the Eiffel Tower completed?"

CASES: dict[str, dict[str, Any]] = {
    "input_x_gradient (baseline)": {"methods": ["input_x_gradient"]},
    "context_attribution (lasso, 32+8 ablations)": {"methods": ["context_attribution"]},
    "context_attribution (leave_one_out)": {
        "methods": ["context_attribution"],
        "context_attribution": {"mode": "leave_one_out"},
    },
    "context_attribution by sentence": {"methods": ["context_attribution"], "document_units": "sentence"},
    "counterfactual (word units)": {"methods": ["counterfactual"], "granularity": "word"},
    "self_explanation": {"methods": ["input_x_gradient"], "self_explanation": True},
    "stability (3 perturbations)": {"methods": ["input_x_gradient"], "evaluate": {"stability": {}}},
}


def main() -> None:
    settings = Settings(device="cpu")
    lm = load_model(*settings.model_specs()[0], settings)
    registry = StubRegistry(lm)
    base = {"messages": [{"role": "user", "content": QUESTION}], "documents": DOCUMENTS, "max_new_tokens": 24}
    print("| feature | engine s | units | what it says |\n|---|---|---|---|")
    for name, extra in CASES.items():
        req = place_documents(ExplainRequest.model_validate({**base, **extra}))
        started = time.perf_counter()
        r = run_explain(registry, settings, req)
        elapsed = time.perf_counter() - started
        method = next(iter(r.methods))
        params = r.methods[method].params
        detail: Any = r.summary
        if r.citations:
            detail = [(c.text, [(s.label, s.score) for s in c.sources]) for c in r.citations]
            detail = f"{json.dumps(detail)}; forwards {params['forwards']}, LDS {params['lds']['sequence']}"
        elif method == "counterfactual":
            detail = f"{r.summary} (runs {params['runs']})"
        elif r.self_explanation is not None:
            detail = f"{r.self_explanation.text!r} → {r.self_explanation.verdict}"
        print(f"| {name} | {r.provenance.engine_s:.2f} (request {elapsed:.1f}) | {r.provenance.units} | {detail} |")
    print(f"\nanswer: {r.text!r}")


if __name__ == "__main__":
    main()
