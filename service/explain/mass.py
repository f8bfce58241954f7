"""Mass on excluded positions: how much of a method's raw absolute attribution falls on positions that are
not shown (template and special tokens, the first "sink" token among them, or text outside every segment).

Rollout and attention pile most of their mass on such positions; showing the remainder as if it were the
whole overstates every share. The response reports the excluded share per row and for the sequence vector,
and the summary states shares of the whole (shown + excluded) mass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.explain.task import Task


@dataclass(frozen=True)
class ExcludedMass:
    """Shares in [0, 1] of the raw absolute mass of sources that are not shown (None: that array is absent)."""

    tokens: list[float] | None  # per row, over the row's sources (positions before its target)
    sequence: float | None  # the sequence vector, over the positions before the span
    pooled: float | None  # all rows together, over the positions before the span (the summary's sources)
    what: str  # which positions were excluded, in words


def excluded_positions(task: Task, units: Sequence[tuple[int, ...]]) -> np.ndarray:
    """[T] bool: positions not in any shown unit."""
    shown = np.zeros(task.seq_len, dtype=bool)
    for unit in units:
        shown[list(unit)] = True
    return ~shown


def describe(task: Task, excluded: np.ndarray) -> str:
    """'template and special tokens', 'text outside the units', or both."""
    not_scored = excluded & ~np.asarray(task.included, dtype=bool)
    outside = excluded & ~not_scored
    parts = (["template and special tokens"] if not_scored.any() else []) + (
        ["text outside the units"] if outside.any() else []
    )
    return " and ".join(parts)


def _share(excluded_abs: float, total_abs: float) -> float:
    return float(excluded_abs / total_abs) if total_abs > 0 else 0.0


def excluded_mass(
    task: Task, units: Sequence[tuple[int, ...]], tokens: np.ndarray | None, sequence: np.ndarray | None
) -> ExcludedMass | None:
    """From position-level scores ([*lead, R, T] and [*lead, S]); None when no source position is excluded.

    Leading axes (layers, heads) are pooled: a share of their summed absolute mass."""
    if tokens is None and sequence is None:
        return None
    excluded = excluded_positions(task, units)
    sources = task.sequence_sources
    if not excluded[:sources].any() and not (tokens is not None and excluded[: max(task.rows, default=0)].any()):
        return None
    row_shares = pooled = seq_share = None
    if tokens is not None:
        mag = np.abs(np.asarray(tokens, dtype=np.float64))
        mag = mag.reshape(-1, *mag.shape[-2:]).sum(0)  # [R, T]
        row_shares = []
        for i, t in enumerate(task.rows):
            row_shares.append(_share(mag[i, :t][excluded[:t]].sum(), mag[i, :t].sum()))
        prefix = mag[:, :sources]
        pooled = _share(prefix[:, excluded[:sources]].sum(), prefix.sum())
    if sequence is not None:
        mag = np.abs(np.asarray(sequence, dtype=np.float64))
        mag = mag.reshape(-1, mag.shape[-1]).sum(0)[:sources]
        seq_share = _share(mag[excluded[:sources]].sum(), mag.sum())
    return ExcludedMass(row_shares, seq_share, pooled, describe(task, excluded))
