"""The plain-language summary is built from the scores alone."""

from __future__ import annotations

import numpy as np

from service.explain.summary import summarize
from service.explain.units import Unit

TEXT = "Who designed it? Gustave Eiffel, in 1887, for the fair."


def _unit(word: str, message: int = 1) -> Unit:
    start = TEXT.index(word)
    return Unit((start,), "prompt", (start,), start, start + len(word), word, message_index=message, role="user")


UNITS = [_unit("Who"), _unit("designed"), _unit("Gustave"), _unit("Eiffel"), _unit("1887"), _unit("fair")]


def test_summary_merges_adjacent_words_and_names_the_message():
    scores = np.array([0.01, 0.02, 0.3, 0.31, 0.12, 0.24])
    text = summarize("input_x_gradient", scores, UNITS, texts={"prompt": TEXT}, chat=True)
    assert text.startswith("The answer rests mostly on 'Gustave Eiffel' (61%)")
    assert "'fair' (24%) and '1887' (12%) in message 1 (user)" in text
    assert text.count("message 1") == 1 and "input × gradient" in text


def test_summary_reports_what_weighs_against():
    scores = np.array([0.0, 0.0, 0.5, 0.0, -0.3, 0.2])
    text = summarize("integrated_gradients", scores, UNITS, texts={"prompt": TEXT}, chat=False)
    assert "'1887' (30%) weighs against it" in text and "message" not in text


def test_summary_of_zero_scores_says_so():
    assert "no measurable dependence" in summarize("saliency", np.zeros(6), UNITS, texts={"prompt": TEXT}, chat=True)
