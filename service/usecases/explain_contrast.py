"""Contrast ("why X rather than Y") in `tokens` scope, defined per row, and its size.

The contrast is an alternative continuation after the answer's tokens before the span. Row k of the span
(answer token s + k) is contrasted with the contrast's token k only while the two share every token before
it: the foil then has exactly the target's context, and the row's function is f(target) − f(foil) given
that context. Past the first divergent position the contexts differ, so comparing tokens by index would mean
nothing (the tokenizations of "The capital is Paris." and "It is Lyon." need not line up at all). Rows up to
and including the first divergent one are explained; an explicit ``target_span`` reaching further is a 422
naming that position. The size of the contrast is the log-probability difference, per row and in total,
and over the span in sequence scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.engine.continuation import Answer
from service.errors import InvalidRequest


@dataclass(frozen=True)
class ContrastRows:
    rows: list[int]  # answer token indices explained in tokens scope
    foils: tuple[int, ...]  # the contrast's token for each row
    divergence: int | None  # answer token index where target and contrast first differ (None: they never do)


def first_divergence(answer: Answer, contrast: Answer, start: int) -> int | None:
    """Offset k from the span start of the first token where the answer and the contrast differ, or None."""
    for k, (a, c) in enumerate(zip(answer.ids[start:], contrast.ids, strict=False)):
        if a != c:
            return k
    return None


def contrast_rows(answer: Answer, contrast: Answer, span: tuple[int, int], *, explicit_span: bool) -> ContrastRows:
    """The rows that can carry a foil (see the module docstring), or a 422 when an explicit span asks for more."""
    start, end = span
    diverge = first_divergence(answer, contrast, start)
    last = len(contrast.ids) - 1 if diverge is None else min(diverge, len(contrast.ids) - 1)  # last valid offset
    stop = min(end, start + last + 1)
    if explicit_span and stop < end:
        if diverge is not None:
            a, c = answer.token_text(start + diverge), contrast.token_text(diverge)
            reason = (
                f"the target and the contrast first differ at answer token {start + diverge} ({a!r} vs {c!r}); "
                "past it their contexts differ, so no later row has a foil"
            )
        else:
            reason = f"the contrast ends after {len(contrast.ids)} tokens: answer token {start + last + 1} has no foil"
        raise InvalidRequest(
            f"contrast in tokens scope: {reason}; set target_span.end to at most {stop} or use scope `sequence`",
            param="target_span",
        )
    rows = list(range(start, stop))
    foils = tuple(contrast.ids[r - start] for r in rows)
    return ContrastRows(rows, foils, None if diverge is None else start + diverge)
