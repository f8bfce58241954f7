"""A one-sentence reading of the scores for a UI ("The answer rests mostly on ..."), never a model call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.explain.units import Unit

#: Which method speaks for the summary when several ran (most faithful first).
PREFERENCE = (
    "shapley",
    "integrated_gradients",
    "occlusion",
    "input_x_gradient",
    "saliency",
    "attention_gradient",
    "attention_rollout",
    "attention",
)
LABELS = {
    "shapley": "Shapley values",
    "integrated_gradients": "integrated gradients",
    "occlusion": "occlusion",
    "input_x_gradient": "input × gradient",
    "saliency": "saliency",
    "attention_gradient": "gradient-weighted attention",
    "attention_rollout": "attention rollout",
    "attention": "attention",
}


#: Excluded mass at or above this share is mentioned in the sentence.
EXCLUDED_NOTABLE = 0.10


@dataclass
class _Phrase:
    units: list[int]
    score: float


def _phrases(scores: np.ndarray, units: Sequence[Unit], picked: list[int], texts: dict[str, str]) -> list[_Phrase]:
    """Picked units with only whitespace between them merge into one phrase ('Gustave' + 'Eiffel')."""
    phrases: list[_Phrase] = []
    for u in sorted(picked):
        last = phrases[-1] if phrases else None
        if (
            last is not None
            and last.units[-1] == u - 1
            and units[u].kind == units[u - 1].kind
            and not texts[units[u].kind][units[u - 1].end : units[u].start].strip()
        ):
            last.units.append(u)
            last.score += float(scores[u])
        else:
            phrases.append(_Phrase([u], float(scores[u])))
    return phrases


def _text(phrase: _Phrase, units: Sequence[Unit], texts: dict[str, str]) -> str:
    first, last = units[phrase.units[0]], units[phrase.units[-1]]
    text = texts[first.kind][first.start : last.end] if last.end > first.start else first.text
    text = " ".join(text.split()) or first.text.strip() or first.text
    label = first.label if len(phrase.units) == 1 and first.label else None
    return label if label is not None else (text if len(text) <= 60 else text[:57] + "...")


def summarize(
    method: str,
    scores: np.ndarray,
    units: Sequence[Unit],
    *,
    texts: dict[str, str],
    chat: bool,
    what: str = "The answer",
    excluded: float = 0.0,
    excluded_what: str = "",
) -> str:
    """``scores`` is one value per unit (the sequence vector, or the rows summed); ``excluded`` is the share
    of the raw absolute mass on positions not shown, so shares are of the whole mass, never renormalised."""
    if scores.size == 0 or not np.any(scores):
        return f"{what} shows no measurable dependence on the input ({LABELS.get(method, method)})."
    magnitude = np.abs(scores)
    share = magnitude / magnitude.sum() * (1.0 - excluded)
    order = [int(i) for i in np.argsort(-magnitude) if share[i] >= 0.04][:6] or [int(np.argmax(magnitude))]
    supporting = [i for i in order if scores[i] > 0]
    against = [i for i in order[:3] if scores[i] < 0]
    phrases = sorted(_phrases(share * np.sign(scores), units, supporting, texts), key=lambda p: -abs(p.score))[:3]
    places = [_where(units[p.units[0]], chat) for p in phrases]
    shared = len(set(places)) == 1
    parts = [
        f"'{_text(p, units, texts)}' ({abs(p.score):.0%})" + ("" if shared else place)
        for p, place in zip(phrases, places, strict=True)
    ]
    if parts and shared:
        parts[-1] += places[0]
    sentence = f"{what} rests mostly on " + _join(parts) if parts else f"{what} has no strong support in the input"
    if against:
        phrase = _phrases(share * np.sign(scores), units, against[:1], texts)[0]
        sentence += f"; '{_text(phrase, units, texts)}' ({abs(phrase.score):.0%}) weighs against it"
    if excluded >= EXCLUDED_NOTABLE:
        sentence += f"; {excluded:.0%} of it falls on excluded {excluded_what or 'tokens'}, not shown"
    return sentence + f" ({LABELS.get(method, method)}, share of absolute attribution)."


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(unit: Unit, chat: bool) -> str:
    if unit.kind == "answer":
        return " earlier in the answer"
    if chat and unit.message_index is not None:
        return f" in message {unit.message_index}" + (f" ({unit.role})" if unit.role else "")
    return ""
