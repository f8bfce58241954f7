"""Source units: words, sentences, messages and caller segments over character offsets."""

from __future__ import annotations

import pytest

from schemas.explain import Segment
from service.errors import InvalidRequest
from service.explain.units import ResolvedSegment, SourceToken, build_units, resolve_segments

PROMPT = "The Eiffel Tower is tall. It was built in 1887!\nSee it."
#         token spans over PROMPT (a BPE-like split with leading spaces)
SPANS = [(0, 3), (3, 6), (6, 10), (10, 16), (16, 19), (19, 24), (24, 25), (25, 28), (28, 32), (32, 38),
         (38, 41), (41, 46), (46, 47), (47, 48), (48, 51), (51, 54), (54, 55)]  # fmt: skip
ANSWER = "Yes, in Paris."
ANSWER_SPANS = [(0, 3), (3, 4), (4, 7), (7, 10), (10, 13), (13, 14)]


def _tokens(included=None) -> list[SourceToken]:
    out = [
        SourceToken(i, "prompt", i, s, e, True if included is None else included[i]) for i, (s, e) in enumerate(SPANS)
    ]
    p = len(SPANS)
    out += [SourceToken(p + j, "answer", j, s, e, True) for j, (s, e) in enumerate(ANSWER_SPANS)]
    return out


def _build(granularity, span_start=None, **kw):
    return build_units(
        granularity,
        kw.pop("tokens", _tokens()),
        prompt_text=PROMPT,
        answer_text=ANSWER,
        token_text=lambda t: "?",
        span_start=len(SPANS) if span_start is None else span_start,
        **kw,
    )


def test_word_units_join_subword_tokens():
    units = _build("word")
    prompt = [u.text for u in units if u.kind == "prompt"]
    assert prompt == [
        "The",
        "Eiffel",
        "Tower",
        "is",
        "tall",
        ".",
        "It",
        "was",
        "built",
        "in",
        "1887",
        "!",
        "See",
        "it",
        ".",
    ]
    eiffel = units[1]
    assert eiffel.positions == (1, 2) and (eiffel.start, eiffel.end) == (4, 10)
    assert [u.text for u in units if u.kind == "answer"] == ["Yes", ",", "in", "Paris", "."]


def test_sentence_units_split_at_terminators_and_newlines():
    units = _build("sentence")
    assert [u.text.strip() for u in units if u.kind == "prompt"] == [
        "The Eiffel Tower is tall.",
        "It was built in 1887!",
        "See it.",
    ]


def test_units_never_straddle_the_span_start():
    span_start = len(SPANS) + 3  # inside the answer sentence
    units = _build("sentence", span_start=span_start)
    answer = [u for u in units if u.kind == "answer"]
    assert [u.indices for u in answer] == [(0, 1, 2), (3, 4, 5)]
    assert all(max(u.positions) < span_start or min(u.positions) >= span_start for u in units)


def test_excluded_tokens_are_left_out():
    included = [i not in (1, 5) for i in range(len(SPANS))]
    units = _build("token", tokens=_tokens(included))
    assert 1 not in [p for u in units for p in u.positions]
    assert len(units) == len(SPANS) - 2 + len(ANSWER_SPANS)


def test_segment_units_from_text_and_spans():
    segments = resolve_segments(
        [Segment(text="Eiffel Tower", label="tower"), Segment(start=26, end=47)],
        prompt_text=PROMPT,
        is_chat=False,
        message_spans=[],
    )
    assert segments[0] == ResolvedSegment(4, 16, "tower")
    units = _build("segments", segments=segments)
    assert [u.label for u in units] == ["tower", PROMPT[26:47]]
    assert units[0].positions == (1, 2, 3)  # the tokens overlapping [4, 16): " Ei", "ffel", " Tower"
    assert units[1].positions == tuple(range(7, 13))


def test_message_spans_resolve_inside_the_message():
    segments = resolve_segments(
        [Segment(start=1, end=3, message=1)], prompt_text="aaaa bbbb", is_chat=True, message_spans=[(0, 4), (5, 9)]
    )
    assert (segments[0].start, segments[0].end) == (6, 8)


@pytest.mark.parametrize(
    ("segment", "chat", "message"),
    [
        (Segment(text="absent"), False, "not in the prompt"),
        (Segment(start=0, end=999), False, "past the text"),
        (Segment(start=0, end=2), True, "needs `message`"),
        (Segment(start=0, end=2, message=0), False, "only for chat"),
    ],
)
def test_segment_errors_name_the_segment(segment, chat, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        resolve_segments([segment], prompt_text=PROMPT, is_chat=chat, message_spans=[(0, 10)])
    assert err.value.param == "segments.0"
