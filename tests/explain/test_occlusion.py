"""Occlusion against manual re-runs of the model without the occluded tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.explain.engine import explain
from service.explain.task import Chunks
from tests.explain.conftest import make_task

OCCLUSION = {"occlusion": None}


def _logprob(model, ids, t: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(ids)])).logits[0, t - 1]
    return float(torch.log_softmax(logits, -1)[ids[t]])


def _without(ids, unit):
    return tuple(tok for p, tok in enumerate(ids) if p not in unit)


def test_occlusion_matches_manual_reruns(model, ids):
    task = make_task(ids, OCCLUSION, scopes=frozenset({"tokens"}))
    out = explain(model, task).outputs["occlusion"]
    assert out.over_units and out.tokens.shape == (5, 14)
    for i, t in enumerate(task.rows):
        for u in range(14):
            if u >= t:
                assert out.tokens[i, u] == 0
                continue
            expected = _logprob(model, ids, t) - _logprob(model, _without(ids, {u}), t - 1)
            assert out.tokens[i, u] == pytest.approx(expected, abs=1e-6)


def test_occlusion_removes_whole_units(model, ids):
    units = ((0, 1), (2, 3, 4), (5,), (6, 7, 8), (9, 10), (11,), (12, 13))
    task = make_task(ids, OCCLUSION, units=units, span=(11, 14))
    out = explain(model, task).outputs["occlusion"]
    t = 13
    for u, unit in enumerate(units[:5]):
        expected = _logprob(model, ids, t) - _logprob(model, _without(ids, set(unit)), t - len(unit))
        assert out.tokens[task.rows.index(t), u] == pytest.approx(expected, abs=1e-6)
    # sequence scope: the span's log-probability, over the units before the span
    assert out.sequence.shape == (5,)
    for u, unit in enumerate(units[:5]):
        short = _without(ids, set(unit))
        total = sum(_logprob(model, ids, s) for s in range(11, 14))
        occluded = sum(_logprob(model, short, s - len(unit)) for s in range(11, 14))
        assert out.sequence[u] == pytest.approx(total - occluded, abs=1e-6)


@pytest.mark.parametrize("sequences", [2, 16])
def test_occlusion_batched_equals_one_at_a_time(model, ids, sequences):
    one = explain(model, make_task(ids, OCCLUSION, chunks=Chunks(sequences=1))).outputs["occlusion"]
    many = explain(model, make_task(ids, OCCLUSION, chunks=Chunks(sequences=sequences))).outputs["occlusion"]
    np.testing.assert_allclose(many.tokens, one.tokens, atol=1e-9)
    np.testing.assert_allclose(many.sequence, one.sequence, atol=1e-9)


def test_occlusion_contrast_is_the_difference_of_single_attributions(model, ids):
    last = len(ids) - 1
    foil = (ids[-1] + 1) % 48
    single = {"rows": (last,), "span": (last, last + 1), "scopes": frozenset({"tokens"})}
    target = explain(model, make_task(ids, OCCLUSION, **single)).outputs["occlusion"].tokens
    other = explain(model, make_task((*ids[:-1], foil), OCCLUSION, **single)).outputs["occlusion"].tokens
    contrast = explain(model, make_task(ids, OCCLUSION, foils=(foil,), **single)).outputs["occlusion"].tokens
    np.testing.assert_allclose(contrast, target - other, atol=1e-9)

    contrast_ids = (5, 6, 7)
    seq = {"span": (11, 14), "rows": (11, 12, 13), "scopes": frozenset({"sequence"})}
    target_seq = explain(model, make_task(ids, OCCLUSION, **seq)).outputs["occlusion"].sequence
    other_seq = explain(model, make_task(ids[:11] + contrast_ids, OCCLUSION, **seq)).outputs["occlusion"].sequence
    both = explain(model, make_task(ids, OCCLUSION, contrast_ids=contrast_ids, **seq)).outputs["occlusion"].sequence
    np.testing.assert_allclose(both, target_seq - other_seq, atol=1e-9)
