"""The wire schemas with helpers: every result the client returns is one of these (subclasses of ``schemas``).

Nothing is re-declared: each class only narrows nested fields to the helper-carrying subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from schemas.explain import ArrayData, ExplainProgressEvent, ExplainResponse, ExplainRowEvent, MethodResult
from schemas.generate import GenerateResponse, TokenEvent
from service.client.arrays import to_numpy

if TYPE_CHECKING:
    import pandas


class Array(ArrayData):
    def to_numpy(self) -> np.ndarray:
        """Dense float32 array of ``shape`` (sparse top-k and base64 decoded)."""
        return to_numpy(self)


class Method(MethodResult):
    tokens: Array | None = None
    sequence: Array | None = None


@dataclass(frozen=True)
class ScoredSource:
    """One source unit (token, word, ...) with its score for the whole answer."""

    index: int
    text: str
    kind: str
    score: float


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("to_dataframe() needs pandas: pip install pandas") from exc
    return pandas


class Explanation(ExplainResponse):
    methods: dict[str, Method]  # type: ignore[assignment]

    def method(self, name: str | None = None) -> Method:
        """The named method's result, or the first one."""
        if name is None:
            return next(iter(self.methods.values()))
        if name not in self.methods:
            raise KeyError(f"no method {name!r} in this explanation (has {', '.join(self.methods)})")
        return self.methods[name]

    def matrix(self, method: str | None = None) -> np.ndarray:
        """[target row, source]: the ``tokens``-scope scores (leading layer/head axes averaged)."""
        array = self.method(method).tokens
        if array is None:
            raise ValueError("this explanation has no `tokens` scope (ask for scope ['tokens'])")
        values = array.to_numpy()
        return np.asarray(values.reshape(-1, *values.shape[-2:]).mean(0) if values.ndim > 2 else values)

    def source_scores(self, method: str | None = None) -> np.ndarray:
        """[source]: the ``sequence`` vector over the first ``sequence_sources`` sources, or, without a
        ``sequence`` scope, the ``tokens`` matrix summed over its rows."""
        array = self.method(method).sequence
        if array is None:
            return np.asarray(self.matrix(method).sum(0))
        values = array.to_numpy()
        return np.asarray(values.reshape(-1, values.shape[-1]).mean(0) if values.ndim > 1 else values)

    def top_sources(self, k: int = 5, method: str | None = None) -> list[ScoredSource]:
        """The k sources with the largest |score| for the whole answer, strongest first."""
        scores = self.source_scores(method)
        order = np.argsort(-np.abs(scores), kind="stable")[:k]
        return [
            ScoredSource(int(i), self.sources[i].text, self.sources[i].kind, float(scores[i])) for i in order.tolist()
        ]

    def to_dataframe(
        self, method: str | None = None, scope: Literal["tokens", "sequence"] = "tokens"
    ) -> pandas.DataFrame:
        """``tokens``: rows are target tokens, columns source units. ``sequence``: one row per source.

        Needs pandas (not a dependency of the client): a clear ImportError without it.
        """
        pd = _pandas()
        if scope == "sequence":
            scores = self.source_scores(method)
            return pd.DataFrame(
                {
                    "source": [s.text for s in self.sources[: len(scores)]],
                    "kind": [s.kind for s in self.sources[: len(scores)]],
                    "score": scores,
                }
            )
        matrix = self.matrix(method)
        index = [f"{r}:{self.target_tokens[r].text}" for r in self.rows]
        columns = [f"{i}:{s.text}" for i, s in enumerate(self.sources)]
        return pd.DataFrame(matrix, index=index, columns=columns)

    def to_svg(self, method: str | None = None) -> str:
        """The target × source heatmap figure as a standalone SVG document."""
        from service.client.figure import heatmap_svg

        return heatmap_svg(self, method)

    def _repr_html_(self) -> str:
        """Jupyter: the prompt coloured by attribution, then the answer (self-contained HTML, no scripts)."""
        from service.client.html import explanation_html

        return explanation_html(self)


class Generation(GenerateResponse):
    explanation: Explanation | None = None

    def _repr_html_(self) -> str:
        from service.client.html import generation_html

        return generation_html(self)


class ExplainProgress(ExplainProgressEvent):
    """``event: progress`` of a streamed explanation."""


class ExplainRow(ExplainRowEvent):
    """``event: row``: one finished row of a ``tokens``-scope matrix."""

    scores: Array


__all__ = [
    "Array",
    "ExplainProgress",
    "ExplainRow",
    "Explanation",
    "Generation",
    "Method",
    "ScoredSource",
    "TokenEvent",
]
