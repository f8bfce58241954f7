"""A one-sentence reading of the scores for a UI ("The answer rests mostly on ..."), never a model call.

Every claim is checked against the numbers, and every share is of one stated denominator: the absolute
attribution over the shown parts plus the excluded positions (template and special tokens), so a share is
never inflated by leaving mass out.

- "rests mostly on" only when the named parts hold more than half of that mass (``MOSTLY``);
- "spread": when the normalised entropy of the shown shares is at least ``FLAT_ENTROPY`` (over at least
  ``FLAT_MIN_PARTS`` parts), no part is said to dominate; otherwise the largest parts are named with
  "leans most on" and their total;
- mass against the answer (signed methods): reported when it totals ``AGAINST_NOTABLE`` or more, even spread
  thin, or when one part against holds ``AGAINST_PART`` or more;
- a contrast is phrased "X rather than Y" with its size (log-probability difference in nats);
- excluded positions: their share is always in the denominator note, and in the sentence from
  ``EXCLUDED_NOTABLE``;
- integrated gradients: a warning when its ``convergence`` says the path did not converge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.explain.units import Unit

#: Which method speaks for the summary when several ran: most faithful first, by the share of prompts where
#: it beats random deletion at 20 %, then comprehensiveness, in `make bench-faithfulness` (12 prompts on the
#: default model; README "How faithful, how costly").
PREFERENCE = (
    "shapley",
    "context_attribution",
    "occlusion",
    "saliency",
    "attention_gradient",
    "attention",
    "integrated_gradients",
    "input_x_gradient",
    "attention_rollout",
)
LABELS = {
    "shapley": "Shapley values",
    "context_attribution": "context attribution",
    "integrated_gradients": "integrated gradients",
    "occlusion": "occlusion",
    "input_x_gradient": "input × gradient",
    "saliency": "saliency",
    "attention_gradient": "gradient-weighted attention",
    "attention_rollout": "attention rollout",
    "attention": "attention",
}

#: "mostly" needs the named parts to hold more than this share of the whole mass.
MOSTLY = 0.5
#: Shown shares this even (normalised entropy, 1 = all equal) read as spread, from this many parts on.
FLAT_ENTROPY = 0.9
FLAT_MIN_PARTS = 4
#: A part is named only from this share on.
NAMED_MIN = 0.04
#: Mass against the answer is mentioned from this total, or when one part against holds ``AGAINST_PART``.
AGAINST_NOTABLE = 0.25
AGAINST_PART = 0.10
#: Excluded mass at or above this share is mentioned in the sentence (always in the denominator note).
EXCLUDED_NOTABLE = 0.10


@dataclass(frozen=True)
class ContrastNote:
    """ "X rather than Y": the two texts and the size, log p(X) − log p(Y) in nats (None when unknown)."""

    target: str
    foil: str
    size: float | None


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


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."


def _lead(what: str, contrast: ContrastNote | None) -> str:
    if contrast is None:
        return what
    lead = f"'{_short(contrast.target)}' rather than '{_short(contrast.foil)}'"
    if contrast.size is not None:
        direction = "higher" if contrast.size >= 0 else "lower: the model prefers the contrast"
        lead += f" (log-probability {abs(contrast.size):.2f} nats {direction})"
    return lead


def normalised_entropy(shares: np.ndarray) -> float:
    """Entropy of the shares (summing to 1) over log(n): 1 when all are equal, 0 when one holds everything."""
    p = shares[shares > 0]
    if shares.size < 2:
        return 0.0
    return float(-(p * np.log(p)).sum() / math.log(shares.size))


def convergence_warning(params: dict[str, Any] | None) -> str:
    """A sentence when integrated gradients says its path did not converge (``params["convergence"]``)."""
    info = (params or {}).get("convergence")
    if not isinstance(info, dict) or not info.get("warning"):
        return ""
    gap = info.get("max_gap")
    size = f" by up to {float(gap):.0%}" if isinstance(gap, int | float) and math.isfinite(gap) else ""
    return (
        f" Integrated gradients did not converge: the scores miss completeness{size}; "
        "read them with care, or use more steps or another baseline."
    )


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
    signed: bool = True,
    contrast: ContrastNote | None = None,
    params: dict[str, Any] | None = None,
) -> str:
    """``scores`` is one value per unit (the sequence vector, or the rows summed); ``excluded`` is the share
    of the raw absolute mass on positions not shown, so shares are of the whole mass, never renormalised."""
    label = LABELS.get(method, method)
    lead = _lead(what, contrast)
    warning = convergence_warning(params)
    if scores.size == 0 or not np.any(scores):
        return f"{lead} shows no measurable dependence on the input ({label})." + warning
    magnitude = np.abs(scores)
    shown = magnitude / magnitude.sum()  # shares of the shown mass
    share = shown * (1.0 - excluded)  # shares of the whole mass
    signs = np.sign(scores) if signed else np.ones_like(scores)
    order = [int(i) for i in np.argsort(-magnitude, kind="stable")]
    supporting = [i for i in order if signs[i] > 0 and share[i] >= NAMED_MIN][:6]
    phrases = sorted(_phrases(share * signs, units, supporting, texts), key=lambda p: -abs(p.score))[:3]
    parts = _parts(phrases, units, texts, chat)
    named = sum(abs(p.score) for p in phrases)
    flat = magnitude.size >= FLAT_MIN_PARTS and normalised_entropy(shown) >= FLAT_ENTROPY
    top = _phrases(share * signs, units, [order[0]], texts)[0]
    largest = f"'{_text(top, units, texts)}'{_where(units[order[0]], chat)}"
    spread = f"spread over {magnitude.size} parts (the largest, {largest}, holds {abs(top.score):.0%})"
    if parts and named > MOSTLY:
        predicate = f"rests mostly on {parts}"
    elif flat:
        predicate = ""
    elif parts:
        predicate = f"leans most on {parts} (together {named:.0%}, less than half of the mass)"
    else:
        predicate = "has no strong support in the input"
    if excluded >= MOSTLY:
        sentence = (
            f"{lead}: most of the mass ({excluded:.0%}) falls on excluded {excluded_what or 'tokens'}, not shown; "
        )
        sentence += f"the rest is {spread}" if not predicate else f"of the shown parts, it {predicate}"
    elif predicate:
        sentence = f"{lead} {predicate}"
    else:
        sentence = f"No single part dominates {_object(lead, what)}: the mass is {spread}"
    if signed:
        sentence += _against(scores, share, units, texts)
    if EXCLUDED_NOTABLE <= excluded < MOSTLY:
        sentence += f"; {excluded:.0%} of the mass falls on excluded {excluded_what or 'tokens'}, not shown"
    note = f"shares of all absolute attribution over the {magnitude.size} shown parts"
    if excluded_what:
        note += f" and the excluded {excluded_what} ({excluded:.0%})"
    return f"{sentence} ({label}; {note})." + warning


def _object(lead: str, what: str) -> str:
    """The lead as the object of a clause ('the answer', or the contrast phrase as it is)."""
    return lead[0].lower() + lead[1:] if lead == what else lead


def _parts(phrases: list[_Phrase], units: Sequence[Unit], texts: dict[str, str], chat: bool) -> str:
    places = [_where(units[p.units[0]], chat) for p in phrases]
    shared = len(set(places)) == 1
    parts = [
        f"'{_text(p, units, texts)}' ({abs(p.score):.0%})" + ("" if shared else place)
        for p, place in zip(phrases, places, strict=True)
    ]
    if parts and shared:
        parts[-1] += places[0]
    return _join(parts)


def _against(scores: np.ndarray, share: np.ndarray, units: Sequence[Unit], texts: dict[str, str]) -> str:
    negative = [int(i) for i in np.argsort(-share, kind="stable") if scores[i] < 0]
    if not negative:
        return ""
    total = float(share[negative].sum())
    top = _phrases(-share, units, negative[:1], texts)[0]
    if abs(top.score) >= max(AGAINST_PART, total / 2):
        clause = f"; '{_text(top, units, texts)}' ({abs(top.score):.0%}) weighs against it"
        return clause + (f" ({total:.0%} against in all)" if total - abs(top.score) >= 0.05 else "")
    if total >= AGAINST_NOTABLE:
        return (
            f"; {total:.0%} of the mass weighs against it, spread thin over {len(negative)} parts "
            f"(the largest, '{_text(top, units, texts)}', {abs(top.score):.0%})"
        )
    return ""


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
