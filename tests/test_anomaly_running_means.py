"""Slow points' running means for all columns at once, bit for bit as one column at a time.

`Preprocessor.transform` used to call `running_mean` (a Python loop over each value) once per
slow column: with many slow points that was most of the CPU of scoring a message. Now
`running_means` steps the slow columns together; its output must be exactly that of the column
loop it replaces, NaN readings and limits, infinities and signed zeros included (a NaN is NaN
in both; its sign bit may differ, as it did between the old loop's Python floats and numpy
scalars).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.anomaly import core
from gateway.anomaly.core import (
    CLIP,
    FOLLOW,
    SLOW_TAU,
    Calibration,
    Preprocessor,
    running_mean,
    running_means,
)

# The awkward readings (infinities) make numpy say so; that is what they are for.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def column_by_column(x: np.ndarray, tau: float, start: np.ndarray, limit: np.ndarray) -> Any:
    """What `Preprocessor.transform` did before: `running_mean` per column."""
    out = np.empty(x.shape, dtype=np.float64)
    for c in range(x.shape[1]):
        out[:, c] = running_mean(x[:, c], tau, float(start[c]), limit[c])
    return out


def old_transform(pre: Preprocessor, values: np.ndarray) -> Any:
    """`Preprocessor.transform` before, on its own running means ``pre._ema``."""
    cal = pre.cal
    x = np.asarray(values, dtype=np.float64)
    z = (x - pre.mean) / pre.scale
    for c in np.flatnonzero(cal.slow):
        limit = abs(cal.slow_mean[c]) + FOLLOW * cal.slow_scale[c]
        ema = running_mean(x[:, c], SLOW_TAU, float(pre._ema[c]), limit)
        pre._ema[c] = ema[-1]
        z[:, c] = (x[:, c] - ema - cal.slow_mean[c]) / cal.slow_scale[c]
    return np.clip(z, -CLIP, CLIP).astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """The same numbers bit for bit, NaN where NaN (whose sign bit neither keeps: an ``inf - inf``
    of Python floats and of numpy scalars may differ in it)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan = np.isnan(a)
    if not np.array_equal(nan, np.isnan(b)):
        return False
    return np.where(nan, 0, a).tobytes() == np.where(nan, 0, b).tobytes()


def awkward(rng: np.random.Generator, t: int, c: int) -> np.ndarray:
    """Drifting readings with NaNs, infinities, zeros of both signs and huge jumps."""
    x = 50 + np.cumsum(rng.normal(0, 1, (t, c)), axis=0) * rng.uniform(0.01, 100, c)
    flat = x.reshape(-1)
    k = max(1, flat.size // 50)
    flat[rng.choice(flat.size, k)] = np.nan
    flat[rng.choice(flat.size, k)] = rng.choice([np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300], k)
    return x


@pytest.mark.parametrize("columns", [1, core.VECTOR_COLUMNS - 1, core.VECTOR_COLUMNS, 40])
@pytest.mark.parametrize("rows", [1, 3, 500])
def test_running_means_are_those_of_one_column_at_a_time(rows: int, columns: int) -> None:
    rng = np.random.default_rng(rows * 100 + columns)
    x = awkward(rng, rows, columns)
    start = rng.normal(50, 10, columns)
    start[0] = -0.0
    limit = rng.uniform(0.1, 5, columns)
    limit[rng.choice(columns, max(1, columns // 4))] = np.inf
    if columns > 2:
        limit[1] = np.nan  # Python's min/max ignore it
        start[2] = np.nan
    for tau in (SLOW_TAU, 1.0, 7.3):
        expected = column_by_column(x, tau, start, limit)
        got = running_means(x, tau, start, limit)
        assert same_bits(got, expected)


@pytest.mark.parametrize("columns", [4, 60])
def test_transform_is_bit_for_bit_as_before_over_successive_calls(columns: int) -> None:
    rng = np.random.default_rng(columns)
    slow = rng.random(columns) < 0.6
    slow[:2] = True, False
    slow_mean = rng.normal(0, 1, columns)
    slow_mean[0] = np.nan  # a NaN limit: Python's min/max did not limit
    cal = Calibration(
        mean=rng.normal(50, 10, columns),
        scale=rng.uniform(0.5, 5, columns),
        slow=slow,
        slow_mean=slow_mean,
        slow_scale=rng.uniform(0.1, 2, columns),
        error_scale=np.ones(columns),
        threshold=1.0,
    )
    x = awkward(rng, 700, columns)
    new, old = Preprocessor(cal, start=x[0].copy()), Preprocessor(cal, start=x[0].copy())
    at = 0
    for size in (400, 1, 1, 37, 64, 1, 196):  # calibration, then messages and bursts
        rows = x[at : at + size]
        at += size
        assert same_bits(new.transform(rows), old_transform(old, rows))
        assert same_bits(new._ema, old._ema)
    assert np.isnan(new._ema[0]) or slow_mean[0] != slow_mean[0]
