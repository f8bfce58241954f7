"""One diverging colour scale for every view (HTML, SVG, terminal): red supports, blue opposes."""

from __future__ import annotations

from collections.abc import Sequence


def scale_of(scores: Sequence[float]) -> float:
    """The magnitude that maps to full colour (the largest |score|; 1 when all are zero)."""
    peak = max((abs(s) for s in scores), default=0.0)
    return peak if peak > 0 else 1.0


def rgb(score: float, scale: float) -> tuple[int, int, int]:
    """White at 0, red (positive) or blue (negative) at ±scale."""
    t = max(-1.0, min(1.0, score / scale))
    end = (214, 39, 40) if t >= 0 else (31, 119, 180)
    return tuple(round(255 + (c - 255) * abs(t)) for c in end)  # type: ignore[return-value]


def hex_colour(score: float, scale: float) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb(score, scale))


def ink(score: float, scale: float) -> str:
    """Readable text colour on that background."""
    return "#ffffff" if abs(score) / scale > 0.6 else "#111111"
