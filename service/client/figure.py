"""The heatmap figure (target × source, tokens labelled) as SVG written by hand: no plotting dependency.

``to_png`` draws the same figure with matplotlib when it is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from service.client.colours import hex_colour, scale_of

if TYPE_CHECKING:
    from service.client.models import Explanation

_CELL = 18
_CHAR = 7  # px per label character (monospace 11px)


def _label(text: str, limit: int = 16) -> str:
    shown = text.replace("\n", "⏎").replace(" ", "·")
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _axes(ex: Explanation, method: str | None) -> tuple[list[list[float]], list[str], list[str], str]:
    matrix = ex.matrix(method).tolist()
    targets = [_label(ex.target_tokens[r].text) for r in ex.rows]
    sources = [_label(s.text) for s in ex.sources]
    return matrix, targets, sources, method or next(iter(ex.methods))


def heatmap_svg(ex: Explanation, method: str | None = None) -> str:
    matrix, targets, sources, name = _axes(ex, method)
    scale = scale_of([v for row in matrix for v in row])
    left = 20 + _CHAR * max((len(t) for t in targets), default=1)
    top = 40
    bottom = 30 + _CHAR * max((len(s) for s in sources), default=1)
    legend = f"source → (red raises, blue lowers; full colour = {scale:.3g})"
    width = max(left + _CELL * len(sources) + 20, left + 8 * len(legend), 8 * len(name) + left + 60)
    height = top + _CELL * len(targets) + bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
        f"<title>{escape(f'{name}: attribution of each answer token (row) to each source (column)')}</title>",
        f'<text class="title" x="{left}" y="16" font-size="13">{escape(name)} · {escape(ex.granularity)}</text>',
        f'<g class="cells" transform="translate({left},{top})">',
    ]
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            parts.append(
                f'<rect x="{c * _CELL}" y="{r * _CELL}" width="{_CELL}" height="{_CELL}" '
                f'fill="{hex_colour(value, scale)}"><title>{escape(f"{targets[r]} ← {sources[c]}: {value:+.4g}")}'
                "</title></rect>"
            )
    parts.append("</g>")
    parts.append('<g class="y-axis" text-anchor="end">')
    for r, label in enumerate(targets):
        y = top + r * _CELL + _CELL * 0.7
        parts.append(f'<text class="target" x="{left - 4}" y="{y:.1f}">{escape(label)}</text>')
    parts.append("</g>")
    parts.append('<g class="x-axis" text-anchor="end">')
    y0 = top + _CELL * len(targets) + 4
    for c, label in enumerate(sources):
        x = left + c * _CELL + _CELL * 0.7
        parts.append(
            f'<text class="source" x="{x:.1f}" y="{y0}" transform="rotate(-60 {x:.1f} {y0})">{escape(label)}</text>'
        )
    parts.append("</g>")
    parts.append(f'<text class="axis-label" x="4" y="{top - 6}" font-size="12">target ↓</text>')
    parts.append(f'<text class="axis-label" x="{left}" y="{height - 6}" font-size="12">{escape(legend)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_svg(ex: Explanation, path: Path, method: str | None = None) -> None:
    path.write_text(heatmap_svg(ex, method), encoding="utf-8")


def write_png(ex: Explanation, path: Path, method: str | None = None) -> None:
    """The same figure through matplotlib (an optional dependency: a clear error without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("--png needs matplotlib (pip install matplotlib); --svg needs nothing") from exc
    matrix, targets, sources, name = _axes(ex, method)
    peak = scale_of([v for row in matrix for v in row])
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(sources) + 2), max(3, 0.3 * len(targets) + 2)))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-peak, vmax=peak, aspect="auto")
    ax.set_xticks(range(len(sources)), sources, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(targets)), targets, fontsize=7)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    ax.set_title(f"{name} · {ex.granularity}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["heatmap_svg", "write_png", "write_svg"]
