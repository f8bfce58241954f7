"""Engine arrays → wire arrays: aggregation into units, causal mask, normalization, top-k, rounding, encoding.

NumPy only: nothing here touches the model.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

from schemas.explain import ArrayData
from service.explain.units import Unit


def aggregate(values: np.ndarray, units: Sequence[Unit], how: str) -> np.ndarray:
    """[..., positions] → [..., units]."""
    out = np.zeros((*values.shape[:-1], len(units)), dtype=np.float32)
    for u, unit in enumerate(units):
        part = values[..., list(unit.positions)]
        if how == "sum":
            out[..., u] = part.sum(-1)
        elif how == "mean":
            out[..., u] = part.mean(-1)
        elif how == "max":
            out[..., u] = part.max(-1)
        else:  # absmax: the signed value of largest magnitude
            idx = np.abs(part).argmax(-1)
            out[..., u] = np.take_along_axis(part, idx[..., None], -1)[..., 0]
    return out


def causal_mask(values: np.ndarray, units: Sequence[Unit], rows: Sequence[int]) -> np.ndarray:
    """Zero the columns that are not sources of a row: units reaching the row's target or later."""
    last = np.array([max(u.positions) for u in units])
    allowed = last[None, :] < np.asarray(rows)[:, None]  # [R, U]
    return np.where(allowed, values, 0.0).astype(np.float32)


def normalize(values: np.ndarray, how: str) -> np.ndarray:
    """Per row (last axis); all-zero rows stay zero."""
    if how == "none" or values.size == 0:
        return values
    scale = np.abs(values).sum(-1, keepdims=True) if how == "l1" else np.abs(values).max(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, values / np.where(scale > 0, scale, 1.0), 0.0).astype(np.float32)


def round_significant(values: np.ndarray, digits: int | None) -> np.ndarray:
    if digits is None or values.size == 0:
        return values
    x = values.astype(np.float64)
    magnitude = np.floor(np.log10(np.where(x == 0, 1.0, np.abs(x))))
    with np.errstate(over="ignore", invalid="ignore"):
        scale = 10.0 ** (digits - 1 - magnitude)
        rounded = np.round(x * scale) / scale
    return np.where(np.isfinite(rounded), rounded, x)  # extreme magnitudes stay as they are


def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest |values| along the last axis, largest first: (values, indices)."""
    k = min(k, values.shape[-1])
    order = np.argsort(-np.abs(values), axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(values, order, -1), order.astype(np.int32)


def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def encode(
    values: np.ndarray,
    dims: Sequence[str],
    *,
    normalization: str = "none",
    k: int | None = None,
    precision: int | None = 4,
    encoding: str = "json",
    dtype: str = "float32",
) -> ArrayData:
    shape = list(values.shape)
    values = normalize(values, normalization)
    indices = None
    if k is not None:
        values, indices = top_k(values, k)
    if encoding == "base64":
        return ArrayData(
            dims=list(dims),
            shape=shape,
            encoding="base64",
            dtype=dtype,  # type: ignore[arg-type]
            data=_b64(values, dtype),
            indices=None if indices is None else _b64(indices, "int32"),
        )
    data = round_significant(values, precision).tolist()
    return ArrayData(
        dims=list(dims),
        shape=shape,
        encoding="json",
        data=data,
        indices=None if indices is None else indices.tolist(),
    )
