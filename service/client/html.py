"""Self-contained HTML for notebooks: the prompt (and answer) coloured by the whole-answer attribution.

Inline styles only, no scripts or external assets, so it survives nbconvert, GitHub's notebook viewer and
a saved file.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

from service.client.colours import hex_colour, ink, scale_of

if TYPE_CHECKING:
    from service.client.models import Explanation, Generation

_BOX = "font-family:ui-monospace,monospace;line-height:1.9;white-space:pre-wrap;border:1px solid #ddd;padding:8px"


def _coloured(text: str, spans: Sequence[tuple[int, int, float, str]], scale: float) -> str:
    """``text`` with each (start, end, score, label) span on its colour; the rest greyed."""
    out, at = [], 0
    for start, end, score, label in sorted(spans):
        if start < at:
            continue
        out.append(f'<span style="color:#999">{html.escape(text[at:start])}</span>')
        style = f"background:{hex_colour(score, scale)};color:{ink(score, scale)};border-radius:3px"
        title = html.escape(f"{label} {score:+.4g}", quote=True)
        out.append(f'<span style="{style}" title="{title}">{html.escape(text[start:end])}</span>')
        at = end
    out.append(f'<span style="color:#999">{html.escape(text[at:])}</span>')
    return "".join(out)


def explanation_html(ex: Explanation, method: str | None = None) -> str:
    name = method or next(iter(ex.methods))
    scores = [float(s) for s in ex.source_scores(name)]
    scale = scale_of(scores)
    prompt: list[tuple[int, int, float, str]] = []
    answer: list[tuple[int, int, float, str]] = []
    for unit, score in zip(ex.sources, scores, strict=False):
        (prompt if unit.kind == "prompt" else answer).append((unit.start, unit.end, score, unit.text))
    top = ", ".join(f"{html.escape(s.text)!s} ({s.score:+.3g})" for s in ex.top_sources(3, name))
    return (
        '<div class="glassbox-explanation">'
        f'<div style="font:600 13px sans-serif;margin:4px 0">{html.escape(name)} · {html.escape(ex.granularity)}'
        f" · {html.escape(ex.attributed.description)}</div>"
        f'<div style="font:12px sans-serif;color:#555">strongest: {top}</div>'
        f'<div style="{_BOX}">{_coloured(ex.prompt_text, prompt, scale)}</div>'
        f'<div style="font:600 13px sans-serif;margin:6px 0 2px">answer</div>'
        f'<div style="{_BOX}">{_coloured(ex.text, answer, scale)}</div>'
        f'<div style="font:11px sans-serif;color:#777">red: raises the answer, blue: lowers it; '
        f"full colour = |{scale:.3g}|</div>"
        "</div>"
    )


def generation_html(gen: Generation) -> str:
    if gen.explanation is not None:
        return explanation_html(gen.explanation)
    return f'<div style="{_BOX}">{html.escape(gen.text)}</div>'
