"""Stability: 1.0 for an explanation compared with itself, seeded and reproducible perturbations, the
perturbed task built right, and the figures over the API."""

from __future__ import annotations

import numpy as np

from service.explain import engine
from service.explain.options import IntegratedGradientsParams
from service.explain.stability import StabilityParams, chosen_units, compare, perturbed
from tests.explain.conftest import make_task

UNITS = ((0, 1), (2,), (3, 4), (5,), (6,), (7, 8), *((p,) for p in range(9, 14)))


def _task(ids, **stability):
    methods = {"saliency": None, "input_x_gradient": None, "integrated_gradients": IntegratedGradientsParams(n_steps=4)}
    return make_task(ids, methods, units=UNITS, stability=StabilityParams(**stability))


def test_compare_is_one_for_identical_scores_and_lower_for_a_reversed_ranking():
    a = np.array([0.3, -1.0, 2.0, 0.1])
    assert compare(a, a.copy(), 2) == (1.0, 1.0)
    rho, overlap = compare(a, -a, 2)
    assert rho == -1.0 and overlap == 0.0


def test_an_explanation_compared_with_itself_is_perfectly_stable(model, ids):
    result = engine.explain(model, _task(ids, fraction=0.0, perturbations=2, regenerate=True))
    for name in ("saliency", "input_x_gradient", "integrated_gradients"):
        s = result.stability[name]
        assert s["rho"] == [1.0, 1.0] and s["top_k_overlap"] == [1.0, 1.0] and s["stable"]
        assert s["answer_changed"] == [False, False] and s["touched_units"] == [[], []]


def test_perturbations_are_seeded_and_touch_only_unimportant_prompt_units(model, ids):
    importance = np.array([5.0, 0.1, 4.0, 0.2, 0.3, 3.0])
    params = StabilityParams(fraction=0.34, seed=7)
    picks = [chosen_units(importance, params, i) for i in range(4)]
    assert picks == [chosen_units(importance, params, i) for i in range(4)]
    assert all(len(p) == 2 and set(p) <= {1, 3, 4} for p in picks)
    a = engine.explain(model, _task(ids, fraction=0.34, perturbations=2, seed=3, regenerate=False)).stability
    b = engine.explain(model, _task(ids, fraction=0.34, perturbations=2, seed=3, regenerate=False)).stability
    assert a == b and a["input_x_gradient"]["answer_changed"] is None
    assert all(-1.0 <= r <= 1.0 for r in a["input_x_gradient"]["rho"])


def test_a_dropped_unit_leaves_a_shorter_task_with_everything_shifted(ids):
    task = _task(ids)
    units = [u for u in task.units if max(u) < task.span[0]]
    new, kept = perturbed(task, units, [1, 3], "drop")  # positions 2 and 5
    assert new.ids == tuple(t for p, t in enumerate(ids) if p not in (2, 5))
    assert new.prompt_len == 7 and new.rows == tuple(r - 2 for r in task.rows) and new.span == (7, 12)
    assert kept == [0, 2, 4, 5] and new.units[:4] == ((0, 1), (2, 3), (4,), (5, 6))
    replaced, kept = perturbed(task, units, [1], "replace")
    assert replaced.ids[2] == 0 and replaced.ids[:2] == ids[:2] and kept == list(range(6))


def test_stability_over_the_api(client):
    body = {
        "prompt": "What is the capital of France? The capital",
        "target": " of France is Paris.",
        "methods": ["input_x_gradient"],
        "granularity": "word",
        "evaluate": {"stability": {"perturbations": 2, "fraction": 0.2}},
    }
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    s = data["methods"]["input_x_gradient"]["evaluation"]["stability"]
    assert len(s["rho"]) == 2 and len(s["answer_changed"]) == 2 and s["kind"] == "drop"
    assert all(0 <= i < data["sequence_sources"] for t in s["touched_units"] for i in t)
    assert "perturbations" in data["summary"]
    bad = client.post("/explain", json={**body, "evaluate": {"stability": {"fraction": 0.9}}})
    assert bad.status_code == 422
