"""The terminal view of an explanation (rich): the answer, the strongest sources, the coloured prompt."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from service.client.colours import hex_colour, ink, scale_of
from service.client.models import Explanation


def heatmap_text(text: str, spans: list[tuple[int, int, float]], scale: float) -> Text:
    out = Text()
    at = 0
    for start, end, score in sorted(spans):
        if start < at:
            continue
        out.append(text[at:start], style="dim")
        out.append(text[start:end], style=f"{ink(score, scale)} on {hex_colour(score, scale)}")
        at = end
    out.append(text[at:], style="dim")
    return out


def show(console: Console, ex: Explanation, method: str | None, top: int) -> None:
    name = method or next(iter(ex.methods))
    scores = [float(s) for s in ex.source_scores(name)]
    scale = scale_of(scores)
    console.print(Text("answer: ", style="bold") + Text(ex.text))
    console.print(Text(f"strongest sources ({name}, {ex.granularity}):", style="bold"))
    for rank, source in enumerate(ex.top_sources(top, name), 1):
        console.print(f"  {rank}. {source.text.strip() or repr(source.text)!s}  {source.score:+.4g}  ({source.kind})")
    prompt = [(u.start, u.end, s) for u, s in zip(ex.sources, scores, strict=False) if u.kind == "prompt"]
    console.print(Text("prompt heatmap (red raises the answer, blue lowers it):", style="bold"))
    console.print(heatmap_text(ex.prompt_text, prompt, scale))
