"""Every claim of the summary is checked against constructed scores: "mostly" only over half of the mass,
"spread" when flat, mass against the answer even when thin, contrasts with their size, excluded mass, and
integrated gradients' convergence warning."""

from __future__ import annotations

import numpy as np
import pytest

from service.explain.summary import (
    FLAT_ENTROPY,
    MOSTLY,
    ContrastNote,
    normalised_entropy,
    summarize,
)
from service.explain.units import Unit


def _words(count: int) -> tuple[list[Unit], str]:
    """``count`` words 'w0', 'w1', ... separated by commas (so no two merge into one phrase)."""
    words = [f"w{i}" for i in range(count)]
    text = ", ".join(words)
    units, start = [], 0
    for i, w in enumerate(words):
        start = text.index(w, start)
        units.append(Unit((i,), "prompt", (i,), start, start + len(w), w))
        start += len(w)
    return units, text


def _say(scores, method="input_x_gradient", **kw) -> str:
    units, text = _words(len(scores))
    return summarize(method, np.asarray(scores, dtype=float), units, texts={"prompt": text}, chat=False, **kw)


def test_flat_scores_are_spread_not_mostly():
    rng = np.random.default_rng(0)
    scores = 1.0 + 0.05 * rng.random(40)  # 40 near-equal words: about 2.5% each
    assert normalised_entropy(np.abs(scores) / np.abs(scores).sum()) >= FLAT_ENTROPY
    text = _say(scores)
    assert "mostly" not in text
    assert text.startswith("No single part dominates the answer: the mass is spread over 40 parts")
    assert "(the largest, 'w" in text and "3%)" in text


def test_mostly_only_above_half_of_the_mass():
    over = _say([0.3, 0.25, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])  # the three named hold 65%
    assert over.startswith("The answer rests mostly on 'w0' (30%), 'w1' (25%) and 'w2' (10%)")
    under = _say([0.25, 0.15, 0.05] + [0.01] * 55)  # not flat (entropy 0.82), but the named hold 45%
    assert "mostly" not in under and "spread" not in under
    assert "leans most on 'w0' (25%), 'w1' (15%) and 'w2' (5%) (together 45%, less than half" in under
    assert MOSTLY == 0.5


def test_mass_against_is_reported_even_when_spread_thin():
    scores = [0.1] * 4 + [-0.02] * 30  # 60% of the absolute mass against, no part over 2%
    text = _say(scores)
    assert "60% of the mass weighs against it, spread thin over 30 parts (the largest, 'w4', 2%)" in text
    assert "weighs against" not in _say(scores, method="saliency", signed=False)  # magnitudes have no direction


def test_one_large_part_against_is_named():
    text = _say([0.5, 0.0, 0.2, -0.3])
    assert "'w3' (30%) weighs against it" in text


@pytest.mark.parametrize(("size", "phrase"), [(2.31, "2.31 nats higher"), (-0.5, "0.50 nats lower: the model prefers")])
def test_contrast_is_phrased_as_a_contrast_with_its_size(size, phrase):
    text = _say([0.6, 0.3, 0.1], contrast=ContrastNote("Paris", "Lyon", size))
    assert text.startswith(f"'Paris' rather than 'Lyon' (log-probability {phrase}")
    assert "rests mostly on 'w0' (60%)" in text


def test_excluded_mass_is_in_the_denominator_and_the_sentence_when_large():
    small = _say([0.6, 0.3, 0.1], excluded=0.04, excluded_what="template and special tokens")
    assert "over the 3 shown parts and the excluded template and special tokens (4%)" in small
    assert "falls on excluded" not in small
    medium = _say([0.6, 0.3, 0.1], excluded=0.3, excluded_what="template and special tokens")
    assert "30% of the mass falls on excluded template and special tokens, not shown" in medium
    assert "rests mostly on 'w0' (42%)" in medium  # 60% of the shown 70%
    large = _say([0.6, 0.3, 0.1], excluded=0.7, excluded_what="template and special tokens")
    assert large.startswith("The answer: most of the mass (70%) falls on excluded template and special tokens, not")
    assert "of the shown parts, it leans most on 'w0' (18%)" in large
    assert "mostly on" not in large  # the shown parts hold only 30% of the whole


def test_integrated_gradients_convergence_warning():
    warn = {"convergence": {"warning": True, "max_gap": 0.49}}
    text = _say([0.6, 0.3, 0.1], method="integrated_gradients", params=warn)
    assert "Integrated gradients did not converge: the scores miss completeness by up to 49%" in text
    fine = {"convergence": {"warning": False, "max_gap": 0.004}}
    assert "converge" not in _say([0.6, 0.3, 0.1], method="integrated_gradients", params=fine)
    assert "converge" not in _say([0.6, 0.3, 0.1], method="integrated_gradients")


def test_normalised_entropy_extremes():
    assert normalised_entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert normalised_entropy(np.full(8, 1 / 8)) == pytest.approx(1.0)
