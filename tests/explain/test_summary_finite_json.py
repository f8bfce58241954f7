"""The raw JSON text of /explain: score arrays hold finite numbers only (JSON has no NaN, and a serialiser
that writes NaN as null would hide it), and non-finite scores are a clear error, never nulls."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from schemas.explain import METHOD_NAMES
from service.explain import methods
from service.explain.methods.base import MethodOutput

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]


def _refuse(constant: str) -> None:
    raise AssertionError(f"the body holds the non-JSON constant {constant}")


def _numbers(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _numbers(item)]
    return [data]


def test_every_score_in_the_raw_json_is_a_finite_number(client):
    cheap = {"integrated_gradients": {"n_steps": 4}, "shapley": {"n_samples": 2}}  # every method, small budgets
    body = {"messages": CHAT, "target": "Paris is in France.", "methods": list(METHOD_NAMES), **cheap}
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    assert "NaN" not in r.text and "Infinity" not in r.text
    body = json.loads(r.text, parse_constant=_refuse)
    checked = 0
    for name, result in body["methods"].items():
        for scope in ("tokens", "sequence"):
            array = result.get(scope)
            if array is None:
                continue
            values = _numbers(array["data"])
            assert values and all(isinstance(v, int | float) and math.isfinite(v) for v in values), (name, scope)
            checked += len(values)
    assert checked > 0


def test_non_finite_scores_are_a_clear_error_not_nulls(client, monkeypatch):
    saliency = type(methods.get("saliency"))
    real = saliency.run

    def broken(self, ctx, options) -> MethodOutput:
        out = real(self, ctx, options)
        assert out.sequence is not None
        out.sequence = out.sequence.copy()
        out.sequence[0] = np.nan
        return out

    monkeypatch.setattr(saliency, "run", broken)
    body = {"messages": CHAT, "target": "Lyon is not the capital.", "methods": ["saliency"], "scope": ["sequence"]}
    r = client.post("/explain", json=body)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "non_finite_scores" and "saliency produced 1 non-finite sequence-scope" in error["message"]
    assert set(r.json()) == {"error"}  # no partial response with nulls
