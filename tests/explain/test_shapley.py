"""Shapley values: exact enumeration on four units, efficiency, and Captum's ShapleyValueSampling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from captum.attr import ShapleyValueSampling

from service.explain import engine
from service.explain.objective import logprobs
from service.explain.options import ShapleyParams
from tests.explain.conftest import make_task

#: Four prompt units over the 9-token prompt; the answer tokens are units of their own (not players).
UNITS = ((0, 1), (2, 3, 4), (5, 6), (7, 8), *((p,) for p in range(9, 14)))


def _value(model, ids, present: set[int], masking: str, rows: list[int]) -> np.ndarray:
    """Per row, then the span: log-probabilities with the absent units masked (a direct, slow function)."""
    masked = {p for i, unit in enumerate(UNITS[:4]) if i not in present for p in unit}
    if masking == "delete":
        seq = [t for p, t in enumerate(ids) if p not in masked]
        lead = [0] if len(masked) >= 9 else []
        seq, shift = lead + seq, len(lead) - len(masked)
    else:
        seq, shift = [0 if p in masked else t for p, t in enumerate(ids)], 0
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits
    lps = logprobs(logits[:, [r - 1 + shift for r in rows]], torch.tensor([ids[r] for r in rows]))[0]
    return np.append(lps.numpy(), lps.sum().item())


def _exact(model, ids, masking: str, rows: list[int]) -> np.ndarray:
    """[rows + 1, 4] by enumerating every coalition with the Shapley weights."""
    n = 4
    out = np.zeros((len(rows) + 1, n))
    for player in range(n):
        others = [p for p in range(n) if p != player]
        for size in range(n):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                gain = _value(model, ids, {*subset, player}, masking, rows) - _value(
                    model, ids, set(subset), masking, rows
                )
                out[:, player] += weight * gain
    return out


def _run(model, ids, **params):
    task = make_task(ids, {"shapley": ShapleyParams(**params)}, units=UNITS)
    return task, engine.explain(model, task).outputs["shapley"]


@pytest.mark.parametrize("masking", ["delete", "replace"])
def test_shapley_matches_exact_enumeration_within_its_sampling_error(model, ids, masking):
    task, out = _run(model, ids, n_samples=48, masking=masking, seed=3, exact=False)
    exact = _exact(model, ids, masking, list(task.rows))
    assert out.tokens is not None and out.sequence is not None
    error = np.array(out.params["standard_error"])
    np.testing.assert_array_less(np.abs(out.tokens[:, :4] - exact[:-1]), 4 * error + 1e-6)
    seq_error = np.array(out.params["sequence_standard_error"])
    np.testing.assert_array_less(np.abs(out.sequence - exact[-1]), 4 * seq_error + 1e-6)
    assert (out.tokens[:, 4:] == 0).all()  # the answer's own units are not players


def test_shapley_with_every_permutation_is_exact(model, ids):
    """With many samples every one of the 4! orders is drawn and the estimate converges to enumeration."""
    task, out = _run(model, ids, n_samples=400, masking="replace", exact=False)
    exact = _exact(model, ids, "replace", list(task.rows))
    np.testing.assert_allclose(out.sequence, exact[-1], atol=3 * np.max(out.params["sequence_standard_error"]) + 1e-9)


@pytest.mark.parametrize("masking", ["delete", "replace"])
def test_shapley_enumerates_exactly_when_that_is_no_dearer(model, ids, masking):
    task, out = _run(model, ids, n_samples=5, masking=masking)  # 2^4 = 16 coalitions <= 5 x 3 + 2
    assert out.params["coalitions"] == 16 and out.params["estimator"].startswith("exact")
    exact = _exact(model, ids, masking, list(task.rows))
    assert out.tokens is not None
    np.testing.assert_allclose(out.tokens[:, :4], exact[:-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sequence, exact[-1], rtol=1e-5, atol=1e-6)
    assert np.array(out.params["standard_error"]).max() == 0
    _, sampled = _run(model, ids, n_samples=4, masking=masking)  # 16 > 4 x 3 + 2: sampling
    assert sampled.params["estimator"].startswith("permutation")


@pytest.mark.parametrize("exact", [True, False])
def test_shapley_is_efficient(model, ids, exact):
    _, out = _run(model, ids, n_samples=5, exact=exact)
    eff = out.params["efficiency"]
    assert eff["gap"] < 1e-9
    np.testing.assert_allclose(
        eff["sum_of_values"], np.array(eff["f_all"]) - np.array(eff["f_none"]), rtol=1e-9, atol=1e-9
    )
    assert out.sequence is not None
    assert out.sequence.sum() == pytest.approx(eff["f_all"][-1] - eff["f_none"][-1], abs=1e-5)


def test_shapley_agrees_with_captum_on_the_same_function(model, ids):
    task, out = _run(model, ids, n_samples=64, masking="replace", seed=1, exact=False)
    rows = list(task.rows)

    def forward(mask: torch.Tensor) -> torch.Tensor:
        values = [_value(model, ids, {i for i in range(4) if m[i] > 0.5}, "replace", rows)[-1] for m in mask]
        return torch.tensor(values, dtype=torch.float64)

    torch.manual_seed(0)
    captum = ShapleyValueSampling(forward).attribute(
        torch.ones(1, 4, dtype=torch.float64), baselines=torch.zeros(1, 4, dtype=torch.float64), n_samples=64
    )[0]
    error = np.array(out.params["sequence_standard_error"])
    assert out.sequence is not None
    np.testing.assert_array_less(np.abs(out.sequence - captum.numpy()), 4 * math.sqrt(2) * error + 1e-6)


def test_shapley_runs_in_bounded_units(model, ids):
    from service.explain.task import Chunks

    task = make_task(ids, {"shapley": ShapleyParams(n_samples=6)}, units=UNITS, chunks=Chunks(sequences=3))
    phases = []

    class Recorder:
        pause = None

        def __call__(self, interleave: bool = True) -> None:
            return None

        def progress(self, done: int, total: int, phase: str) -> None:
            phases.append((done, total, phase))

    result = engine.explain(model, task, Recorder())
    chunks = math.ceil(result.outputs["shapley"].params["coalitions"] / 3)
    assert sum(1 for *_, p in phases if p == "shapley") == chunks + 1  # and the engine's end-of-method unit
    assert phases[-1][0] == phases[-1][1]  # the planned units were all the units run
