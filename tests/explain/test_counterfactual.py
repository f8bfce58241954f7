"""Counterfactuals: the returned set really changes the greedy answer (re-checked here with the model's own
generate), smaller sets in the same ranking do not, and the budget stops the search honestly."""

from __future__ import annotations

import pytest
import torch

from service.explain import engine
from service.explain.options import CounterfactualParams
from tests.explain.conftest import make_task

UNITS = ((0, 1), (2, 3, 4), (5, 6), (7, 8), *((p,) for p in range(9, 14)))


def _greedy(model, prompt: list[int], tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False)
    return out[0, len(prompt) :].tolist()


def _without(ids, units: list[int]) -> list[int]:
    removed = {p for u in units for p in UNITS[u]}
    return [t for p, t in enumerate(ids[:9]) if p not in removed] or [0]  # the method's stand-in pad


def _run(model, ids, **params):
    task = make_task(ids, {"counterfactual": CounterfactualParams(**params)}, units=UNITS)
    return engine.explain(model, task).outputs["counterfactual"]


@pytest.mark.parametrize("rank_by", ["input_x_gradient", "leave_one_out"])
def test_the_returned_set_changes_the_answer_and_no_smaller_ranked_set_does(model, ids, rank_by):
    out = _run(model, ids, rank_by=rank_by, max_runs=6, max_units=4, compare_tokens=3)
    params = out.params
    reference = _greedy(model, list(ids[:9]), 3)
    assert params["reference_ids"] == reference
    assert params["found"], params
    removed = params["removed_units"]
    new = _greedy(model, _without(ids, removed), 3)
    assert new == params["new_answer_ids"] and new != reference
    ranking = params["ranking"]
    assert sorted(ranking[: len(removed)]) == sorted(removed)
    for size in range(1, len(removed)):
        assert _greedy(model, _without(ids, ranking[:size]), 3) == reference
    assert params["runs"] == 1 + len(removed)


def test_the_budget_stops_the_search_with_an_honest_not_found(model, ids):
    out = _run(model, ids, max_runs=1)
    assert out.params["found"] is False and out.params["runs"] == 1
    assert "new_answer_ids" not in out.params and "removed_units" not in out.params


def test_explain_says_what_the_counterfactual_found(client):
    body = {
        "prompt": "What is the capital of France?",
        "target": " Paris",
        "methods": ["counterfactual"],
        "granularity": "word",
        "counterfactual": {"max_runs": 4},
    }
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    params = data["methods"]["counterfactual"]["params"]
    assert params["runs"] <= 4 and "reference_answer" in params
    if params["found"]:
        assert "new_answer" in params and data["summary"].count("Without") == 1
    else:
        assert "No counterfactual within" in data["summary"]
