"""Aggregation, causal mask, normalization, top-k, rounding and the binary encoding (pure NumPy)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.explain.units import Unit
from service.usecases import explain_present as present


def _unit(*positions: int) -> Unit:
    return Unit(positions=positions, kind="prompt", indices=positions, start=0, end=1, text="x")


UNITS = [_unit(0, 1), _unit(2), _unit(3, 4, 5)]
VALUES = np.array([[1.0, -2.0, 3.0, 0.5, -4.0, 1.0], [0.0, 1.0, -1.0, 2.0, 2.0, -3.0]], dtype=np.float32)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("sum", [[-1.0, 3.0, -2.5], [1.0, -1.0, 1.0]]),
        ("mean", [[-0.5, 3.0, -2.5 / 3], [0.5, -1.0, 1 / 3]]),
        ("max", [[1.0, 3.0, 1.0], [1.0, -1.0, 2.0]]),
        ("absmax", [[-2.0, 3.0, -4.0], [1.0, -1.0, -3.0]]),
    ],
)
def test_aggregate_matches_hand_computation(how, expected):
    np.testing.assert_allclose(present.aggregate(VALUES, UNITS, how), expected, rtol=1e-6)


def test_aggregate_keeps_leading_axes():
    stacked = np.stack([VALUES, 2 * VALUES])
    out = present.aggregate(stacked, UNITS, "sum")
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[1], 2 * out[0])


def test_causal_mask_zeroes_units_that_reach_the_target():
    masked = present.causal_mask(np.ones((2, 3), dtype=np.float32), UNITS, rows=[3, 6])
    np.testing.assert_array_equal(masked, [[1, 1, 0], [1, 1, 1]])


def test_normalize_l1_and_max_per_row():
    values = np.array([[1.0, -3.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(present.normalize(values, "l1"), [[0.25, -0.75], [0, 0]])
    np.testing.assert_allclose(present.normalize(values, "max"), [[1 / 3, -1.0], [0, 0]])
    assert present.normalize(values, "none") is values


def test_top_k_keeps_the_largest_magnitudes_largest_first():
    values, indices = present.top_k(np.array([[0.1, -5.0, 2.0, 0.0]]), 2)
    np.testing.assert_array_equal(indices, [[1, 2]])
    np.testing.assert_array_equal(values, [[-5.0, 2.0]])


@given(arrays(np.float64, 20, elements=st.floats(-1e6, 1e6, allow_nan=False)), st.integers(1, 9))
def test_round_significant_keeps_the_requested_digits(values, digits):
    rounded = present.round_significant(values, digits)
    np.testing.assert_allclose(rounded, values, rtol=10.0 ** (1 - digits), atol=0)


def test_encode_json_dense_and_sparse():
    dense = present.encode(VALUES, ["target", "source"], precision=2)
    assert dense.shape == [2, 6] and dense.data[0][2] == 3.0 and dense.indices is None
    sparse = present.encode(VALUES, ["target", "source"], k=2, normalization="l1")
    assert sparse.shape == [2, 6]
    assert sparse.indices == [[4, 2], [5, 3]]
    assert sparse.data[0] == [pytest.approx(-4 / 11.5, rel=1e-3), pytest.approx(3 / 11.5, rel=1e-3)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_encode_base64_round_trips(dtype):
    out = present.encode(VALUES, ["target", "source"], encoding="base64", dtype=dtype, k=3)
    values = np.frombuffer(base64.b64decode(out.data), dtype=np.dtype(dtype).newbyteorder("<")).reshape(2, 3)
    indices = np.frombuffer(base64.b64decode(out.indices), dtype="<i4").reshape(2, 3)
    np.testing.assert_allclose(values, np.take_along_axis(VALUES, indices, -1), rtol=1e-3)
    assert out.dtype == dtype and out.encoding == "base64"
