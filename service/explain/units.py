"""Source units (the columns of every attribution): tokens, words, sentences, messages or caller segments.

Pure Python over character offsets; units are ordered by position and never straddle the span start, so
the sources of the `sequence` vectors are always a prefix of the units.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidRequest

_WORD = re.compile(r"\w+|[^\w\s]+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n")


@dataclass(frozen=True)
class SourceToken:
    """One position of prompt + answer, as the unit builder sees it."""

    position: int
    kind: str  # "prompt" or "answer"
    index: int  # index within the prompt or the answer
    start: int  # char span in its own text (prompt text or answer text)
    end: int
    included: bool
    message_index: int | None = None
    role: str | None = None


@dataclass(frozen=True)
class Unit:
    positions: tuple[int, ...]
    kind: str
    indices: tuple[int, ...]  # token indices within the prompt or the answer
    start: int
    end: int
    text: str
    message_index: int | None = None
    role: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class ResolvedSegment:
    start: int  # char span in the prompt text
    end: int
    label: str | None


def _anchor(text: str, start: int, end: int) -> int | None:
    """First non-space character of a token's span (a leading space belongs to the word after it)."""
    for i in range(start, end):
        if not text[i].isspace():
            return i
    return None


def _group_ids(text: str, pattern: re.Pattern[str], words: bool) -> Callable[[int, int], int | None]:
    if words:
        starts = [m.start() for m in pattern.finditer(text)]
        return lambda s, e: None if (a := _anchor(text, s, e)) is None else bisect.bisect_right(starts, a)
    ends = [m.end() for m in pattern.finditer(text)]
    return lambda s, e: None if (a := _anchor(text, s, e)) is None else bisect.bisect_right(ends, a)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (the `sentence` granularity's rule), without the
    surrounding whitespace."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


def build_units(
    granularity: str,
    tokens: Sequence[SourceToken],
    *,
    prompt_text: str,
    answer_text: str,
    token_text: Callable[[SourceToken], str],
    span_start: int,
    segments: Sequence[ResolvedSegment] = (),
) -> list[Unit]:
    """Group the included positions into units of the requested granularity."""
    texts = {"prompt": prompt_text, "answer": answer_text}
    keyers: dict[str, Callable[[int, int], int | None]] = {}
    if granularity in ("word", "sentence"):
        pattern = _WORD if granularity == "word" else _SENTENCE_END
        keyers = {kind: _group_ids(text, pattern, granularity == "word") for kind, text in texts.items()}
    groups: dict[tuple[object, ...], list[SourceToken]] = {}
    order: list[tuple[object, ...]] = []
    previous: tuple[object, ...] | None = None
    for tok in tokens:
        if not tok.included:
            continue
        side = tok.kind, tok.position >= span_start, tok.message_index
        key: tuple[object, ...]
        if granularity == "token":
            key = (tok.position,)
        elif granularity in ("word", "sentence"):
            group = keyers[tok.kind](tok.start, tok.end)
            if group is None:  # whitespace-only token: joins the unit before it on the same side
                key = previous if previous is not None and previous[:3] == side else (*side, "ws", tok.position)
            else:
                key = (*side, group)
        elif granularity == "message":
            key = (*side,) if tok.kind == "prompt" else ("answer", tok.position >= span_start, None)
        else:  # segments
            owner = next(
                (
                    i
                    for i, seg in enumerate(segments)
                    if tok.kind == "prompt" and tok.start < seg.end and tok.end > seg.start and tok.end > tok.start
                ),
                None,
            )
            if owner is None:
                continue
            key = ("segment", owner)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(tok)
        previous = key
    units = []
    for key in order:
        members = groups[key]
        first = members[0]
        text = texts[first.kind]
        start = min(t.start for t in members)
        end = max(t.end for t in members)
        while granularity != "token" and start < end and text[start].isspace():
            start += 1  # words and sentences are shown without surrounding whitespace
        while granularity != "token" and end > start and text[end - 1].isspace():
            end -= 1
        shown = text[start:end] if end > start else "".join(token_text(t) for t in members)
        label = None
        if granularity == "segments":
            label = segments[int(str(key[1]))].label
        units.append(
            Unit(
                positions=tuple(t.position for t in members),
                kind=first.kind,
                indices=tuple(t.index for t in members),
                start=start,
                end=end,
                text=shown,
                message_index=first.message_index,
                role=first.role,
                label=label,
            )
        )
    units.sort(key=lambda u: u.positions[0])
    return units


def resolve_segments(
    segments: Sequence[Any],
    *,
    prompt_text: str,
    is_chat: bool,
    message_spans: Sequence[tuple[int, int]],
) -> list[ResolvedSegment]:
    """Caller segments → char spans in the prompt text; each error names the segment at fault."""
    out = []
    for i, seg in enumerate(segments):
        param = f"segments.{i}"
        text, label = seg.text, seg.label
        if text is not None:
            found = prompt_text.find(text)
            if found < 0:
                raise InvalidRequest(f"{param}: the text is not in the prompt", param=param)
            out.append(ResolvedSegment(found, found + len(text), label or text[:40]))
            continue
        start, end, message = seg.start, seg.end, seg.message
        if is_chat:
            if message is None or message >= len(message_spans):
                raise InvalidRequest(f"{param}: chat input needs `message`, a valid message index", param=param)
            base, limit = message_spans[message]
        else:
            if message is not None:
                raise InvalidRequest(f"{param}: `message` is only for chat input", param=param)
            base, limit = 0, len(prompt_text)
        if base + end > limit:
            raise InvalidRequest(
                f"{param}: the span ends at {end}, past the text's {limit - base} characters", param=param
            )
        out.append(ResolvedSegment(base + start, base + end, label or prompt_text[base + start : base + end][:40]))
    return out
