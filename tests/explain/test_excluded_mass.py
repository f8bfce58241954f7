"""Mass on excluded positions: reported as a share of the raw absolute mass, shown scores never rescaled."""

from __future__ import annotations

import numpy as np
import pytest

from service.explain.engine import explain
from service.explain.mass import excluded_mass
from service.explain.options import RolloutParams
from service.explain.summary import summarize
from service.explain.units import Unit
from tests.explain.conftest import make_task
from tests.explain.oracle import eager_attentions
from tests.explain.test_rollout import _full


def test_shares_by_hand(ids):
    # positions 0 and 3 are excluded template tokens; 9.. are the answer
    included = tuple(p not in (0, 3) for p in range(14))
    units = tuple((p,) for p in range(14) if included[p])
    task = make_task(ids, {}, included=included, units=units)
    tokens = np.arange(5 * 14, dtype=np.float64).reshape(5, 14) - 30.0  # signed: absolute mass counts
    sequence = np.linspace(-1, 2, 9)
    mass = excluded_mass(task, units, tokens, sequence)
    assert mass is not None and mass.what == "template and special tokens"
    for i, t in enumerate(task.rows):
        row = np.abs(tokens[i, :t])
        assert mass.tokens[i] == pytest.approx((row[0] + row[3]) / row.sum())
    prefix = np.abs(tokens[:, :9])
    assert mass.pooled == pytest.approx(prefix[:, [0, 3]].sum() / prefix.sum())
    assert mass.sequence == pytest.approx((abs(sequence[0]) + abs(sequence[3])) / np.abs(sequence).sum())


def test_nothing_excluded_reports_nothing(ids):
    task = make_task(ids, {})
    assert excluded_mass(task, task.units, np.ones((5, 14)), np.ones(9)) is None


def test_text_outside_the_units_is_named(ids):
    units = tuple((p,) for p in range(2, 14))
    task = make_task(ids, {}, units=units)
    mass = excluded_mass(task, units, None, np.ones(9))
    assert mass is not None and mass.what == "text outside the units" and mass.sequence == pytest.approx(2 / 9)


def test_rollout_sink_mass_is_reported_and_the_rest_is_not_renormalised(model, ids):
    included = (False,) + (True,) * 13
    units = tuple((p,) for p in range(1, 14))
    task = make_task(ids, {"attention_rollout": RolloutParams()}, included=included, units=units)
    out = explain(model, task).outputs["attention_rollout"]
    full = _full(eager_attentions(model, ids), 0.5)
    np.testing.assert_allclose(out.tokens, full[8:13], rtol=1e-6, atol=1e-9)  # raw rows, sink column included
    mass = excluded_mass(task, units, out.tokens, out.sequence)
    assert mass is not None
    for i, t in enumerate(task.rows):
        assert mass.tokens[i] == pytest.approx(full[t - 1, 0] / full[t - 1, :t].sum(), rel=1e-6)
    seq = full[8:13, :9].mean(0)
    assert mass.sequence == pytest.approx(seq[0] / seq.sum(), rel=1e-6)


TEXT = "alpha, beta, gamma, delta"


def _units() -> list[Unit]:
    words = TEXT.replace(",", "").split()
    out, start = [], 0
    for i, w in enumerate(words):
        start = TEXT.index(w, start)
        out.append(Unit((i,), "prompt", (i,), start, start + len(w), w))
    return out


def test_summary_states_shares_of_the_whole_mass_and_the_excluded_part():
    scores = np.array([0.6, 0.2, 0.1, 0.1])
    text = summarize(
        "attention_rollout",
        scores,
        _units(),
        texts={"prompt": TEXT},
        chat=False,
        excluded=0.8,
        excluded_what="template and special tokens",
    )
    assert "'alpha' (12%)" in text  # 0.6 of the shown 20%, not 60%
    assert text.startswith("The answer: most of the mass (80%) falls on excluded template and special tokens")
    small = summarize("attention_rollout", scores, _units(), texts={"prompt": TEXT}, chat=False, excluded=0.05)
    assert "excluded" not in small and "'alpha' (57%)" in small


def test_api_reports_excluded_mass_for_position_methods_only(client):
    chat = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]
    body = {"messages": chat, "target": "Paris.", "methods": ["attention_rollout", "occlusion"], "precision": None}
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    methods = r.json()["methods"]
    mass = methods["attention_rollout"]["excluded_mass"]
    assert mass["excluded"] == "template and special tokens"
    assert len(mass["tokens"]) == len(r.json()["rows"])
    assert all(0 < v < 1 for v in [*mass["tokens"], mass["sequence"]])
    assert methods["occlusion"].get("excluded_mass") is None  # scores units, never the excluded positions
