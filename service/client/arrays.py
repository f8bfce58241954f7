"""Wire arrays (``ArrayData``) → NumPy: JSON or base64, dense or sparse (``row_top_k``).

The inverse of ``service/explain/present.py::encode``: base64 is row-major little-endian float32/float16,
sparse indices are int32 positions along the last axis; the dense result has zeros where top-k dropped.
"""

from __future__ import annotations

import base64
import math

import numpy as np

from schemas.explain import ArrayData


def _unpack(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


def to_numpy(array: ArrayData) -> np.ndarray:
    """The dense float32 array of ``array.shape``, whatever the encoding."""
    shape = tuple(array.shape)
    if array.encoding == "base64":
        values = _unpack(array.data, array.dtype or "float32").astype(np.float32)
        indices = None if array.indices is None else _unpack(array.indices, "int32").astype(np.int64)
    else:
        values = np.asarray(array.data, dtype=np.float32)
        indices = None if array.indices is None else np.asarray(array.indices, dtype=np.int64)
    if indices is None:
        return values.reshape(shape)
    dense = np.zeros(shape, dtype=np.float32)
    if math.prod(shape) == 0:
        return dense
    lead = shape[:-1]
    values, indices = values.reshape(*lead, -1), indices.reshape(*lead, -1)
    np.put_along_axis(dense, indices, values, axis=-1)
    return dense
