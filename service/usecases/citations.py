"""`context_attribution`'s per-sentence scores → citations: for each answer sentence, the sources whose removal
would lower its log-probability by at least the threshold (nats) and by at least a share of the strongest
source's effect, strongest first, or none ("unsupported")."""

from __future__ import annotations

from typing import Any

from schemas.explain import Citation, CitedSource
from service.engine.continuation import Answer
from service.explain.units import Unit


def citations(answer: Answer, units: list[Unit], prompt_len: int, params: dict[str, Any]) -> list[Citation]:
    absolute, relative = float(params["citation_threshold"]), float(params["citation_relative"])
    out = []
    for sentence in params.get("sentences", []):
        first, last = (p - prompt_len for p in sentence["positions"])
        start, end = answer.offsets[first][0], answer.offsets[last - 1][1]
        while start < end and answer.text[start].isspace():
            start += 1
        while end > start and answer.text[end - 1].isspace():
            end -= 1
        scores = sentence["scores"]
        threshold = max(absolute, relative * max(scores, default=0.0))
        cited = sorted(
            (
                CitedSource(source=i, label=units[i].label or units[i].text[:40], score=round(s, 4))
                for i, s in enumerate(scores)
                if s >= threshold
            ),
            key=lambda c: -c.score,
        )
        out.append(
            Citation(
                text=answer.text[start:end],
                start=start,
                end=end,
                tokens=[first, last],
                sources=cited,
                supported=bool(cited),
            )
        )
    return out
