"""The numbers of anomaly scoring, shared by the gateway stage, training and evaluation.

A device is a matrix of readings, one column per numeric point. Scoring has three steps:

1. **Standardise** each point with the mean and spread of the device's own calibration period
   (``Calibration``), so one shipped model serves pumps, valves and tanks alike.
2. **Reconstruct** a sliding window of each point with the autoencoder (`OnnxScorer`); the
   window's mean squared error is that point's raw score. The model is univariate and shared by
   all points, so a device may have any number of points.
3. **Combine**: each point's error is divided by its typical error on the calibration period,
   the device score is the largest of them (a fault often shows in one sensor only; a mean
   would dilute it by the number of points), smoothed over a few samples; the alarm threshold
   is a high quantile of the calibration period's smoothed scores times a margin.

Slow points (temperatures) wander far from a short calibration period without anything being
wrong. A point whose calibration readings are mostly slow variation (a moving average over
``SLOW_SPAN`` samples keeps more than ``SLOW_SHARE`` of their variance; white noise would keep
1 / SLOW_SPAN, a cycle of a minute at one sample per second about a third) is scored on its
deviation from a slow running mean instead of its level, so drift is tolerated while a sudden
change still counts. The running mean follows a point by at most ``FOLLOW`` of its usual
deviations per step, so it tracks drift but not a fault's jump (a mean that caught up with a
long fault would raise a second alarm when the fault ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

WINDOW = 32
SMOOTH = 10  # samples the device score is averaged over
QUANTILE = 0.99
MARGIN = 1.5
SLOW_SPAN = 30
SLOW_SHARE = 0.5
SLOW_TAU = 60.0  # samples: time constant of the running mean a slow point is compared with
CLIP = 10.0
FOLLOW = 3.0


class WindowModel(Protocol):
    """Anything that maps windows ``[N, 1, W]`` (float32) to their errors ``[N]``."""

    window: int

    def errors(self, windows: Array) -> Array: ...


def slow_share(x: npt.NDArray[Any], span: int = SLOW_SPAN) -> float:
    """Share of the variance of ``x`` that a moving average over ``span`` samples keeps."""
    d = x - x.mean()
    var = float((d * d).mean())
    if var <= 0.0 or len(x) < 2 * span:
        return 0.0
    smooth = np.convolve(d, np.ones(span) / span, mode="valid")
    return float((smooth * smooth).mean() / var)


def running_mean(
    x: npt.NDArray[Any], tau: float, start: float, limit: float = float("inf")
) -> npt.NDArray[np.float64]:
    """Exponential running mean of ``x`` (one column) from ``start``; a reading further than
    ``limit`` from the mean moves it as if it were ``limit`` away."""
    a = 1.0 / tau
    out = np.empty(len(x), dtype=np.float64)
    m = start
    for i, v in enumerate(x.tolist()):
        m += a * min(max(v - m, -limit), limit)
        out[i] = m
    return out


# Columns from which `running_means` steps all columns at once, row by row (a few numpy calls
# per row); below, it goes column by column (`running_mean`, a Python float loop per value).
VECTOR_COLUMNS = 8


def running_means(
    x: npt.NDArray[Any], tau: float, start: npt.NDArray[Any], limit: npt.NDArray[Any]
) -> npt.NDArray[np.float64]:
    """`running_mean` of each column of ``x`` ``[T, C]``, from ``start`` ``[C]`` with ``limit``
    ``[C]``; bit for bit the same (a NaN's sign bit aside): the same float operations in the
    same order, and Python's ``max``/``min`` (a NaN limit is no limit, a NaN reading makes the
    mean NaN)."""
    x = np.asarray(x, dtype=np.float64)
    t, c = x.shape
    hi = np.asarray(limit, dtype=np.float64)
    if c < VECTOR_COLUMNS:
        out = np.empty((t, c), dtype=np.float64)
        for j in range(c):
            out[:, j] = running_mean(x[:, j], tau, float(start[j]), float(hi[j]))
        return out
    a = 1.0 / tau
    lo = -hi
    m = np.array(start, dtype=np.float64)
    out = np.empty((t, c), dtype=np.float64)
    d = np.empty(c, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # as Python floats: inf - inf is NaN
        for i in range(t):
            np.subtract(x[i], m, out=d)
            np.copyto(d, lo, where=lo > d)  # max(d, -limit): d unless -limit is greater
            np.copyto(d, hi, where=hi < d)  # min(d, limit): d unless limit is smaller
            d *= a
            m += d
            out[i] = m
    return out


@dataclass
class Calibration:
    """What normal looks like for one device, learned on its clean period."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    slow: npt.NDArray[np.bool_]
    slow_mean: npt.NDArray[np.float64]  # of a slow point's deviation from its running mean
    slow_scale: npt.NDArray[np.float64]
    error_scale: npt.NDArray[np.float64]
    threshold: float
    smooth: int = SMOOTH
    recent: tuple[float, ...] = ()  # the last raw scores of the calibration (smoothing seed)

    @property
    def points(self) -> int:
        return len(self.mean)


class Preprocessor:
    """Calibration-period standardisation, stateful for slow points (their running mean)."""

    def __init__(self, cal: Calibration, start: npt.NDArray[np.float64] | None = None) -> None:
        self.cal = cal
        self.mean = cal.mean.copy()  # a level refresh (`refresh.LevelRefresh`) moves these
        self.scale = cal.scale.copy()
        self._ema = (cal.mean.copy() if start is None else start.copy()).astype(np.float64)

    def transform(self, values: npt.NDArray[Any]) -> Array:
        """Rows ``[T, C]`` of raw readings -> standardised rows (updates the running means)."""
        cal = self.cal
        x = np.asarray(values, dtype=np.float64)
        z = (x - self.mean) / self.scale
        if cal.slow.any() and len(x):
            cols = np.flatnonzero(cal.slow)
            mean, scale = cal.slow_mean[cols], cal.slow_scale[cols]
            ema = running_means(
                x[:, cols], SLOW_TAU, self._ema[cols], np.abs(mean) + FOLLOW * scale
            )
            self._ema[cols] = ema[-1]
            z[:, cols] = (x[:, cols] - ema - mean) / scale
        return np.clip(z, -CLIP, CLIP).astype(np.float32)


def sliding_errors(model: WindowModel, z: Array, batch: int = 8192) -> Array:
    """Per-point window errors for standardised rows ``[T, C]``: ``[T - W + 1, C]``."""
    w = model.window
    t, c = z.shape
    if t < w:
        return np.zeros((0, c), dtype=np.float32)
    win = np.lib.stride_tricks.sliding_window_view(z, w, axis=0)  # [T-W+1, C, W]
    flat = np.ascontiguousarray(win.reshape(-1, 1, w))
    out = np.concatenate([model.errors(flat[i : i + batch]) for i in range(0, len(flat), batch)])
    return out.reshape(t - w + 1, c)


def moving_average(x: npt.NDArray[Any], k: int) -> npt.NDArray[np.float64]:
    """Trailing mean over ``k`` samples (fewer at the start)."""
    x = np.asarray(x, dtype=np.float64)
    if k <= 1:
        return x
    c = np.cumsum(np.concatenate([[0.0], x]))
    idx = np.arange(len(x))
    lo = np.maximum(0, idx - k + 1)
    out: npt.NDArray[np.float64] = (c[idx + 1] - c[lo]) / (idx + 1 - lo)
    return out


def device_scores(errors: Array, error_scale: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Point errors ``[N, C]`` -> one raw device score per row (largest normalised error)."""
    out: npt.NDArray[np.float64] = (errors.astype(np.float64) / error_scale).max(axis=1)
    return out


def standardiser(values: npt.NDArray[Any], *, drift: bool = True) -> Calibration:
    """The standardisation part of a calibration (no model needed): mean, spread, slow points."""
    x = np.asarray(values, dtype=np.float64)
    mean = x.mean(axis=0)
    # A constant point would divide by zero; its floor follows its magnitude.
    scale = np.maximum(x.std(axis=0), 1e-6 + 1e-3 * np.abs(mean))
    c = x.shape[1]
    slow = np.array([drift and slow_share(x[:, j]) > SLOW_SHARE for j in range(c)], dtype=bool)
    slow_mean, slow_scale = np.zeros(c), np.ones(c)
    for j in np.flatnonzero(slow):
        # The running mean lags a steady trend by a constant: its statistics are taken after
        # the first ``SLOW_TAU`` samples, once that lag has built up.
        floor = 1e-6 + 1e-3 * abs(float(mean[j]))
        limit = float("inf")
        for _ in range(2):  # the second pass follows with the limit the first one measured
            hp = x[:, j] - running_mean(x[:, j], SLOW_TAU, float(x[0, j]), limit)
            hp = hp[int(SLOW_TAU) :] if len(hp) >= SLOW_TAU + 10 else hp - hp.mean()
            slow_mean[j] = float(hp.mean())
            slow_scale[j] = max(float(hp.std()), floor)
            limit = abs(slow_mean[j]) + FOLLOW * slow_scale[j]
    return Calibration(mean, scale, slow, slow_mean, slow_scale, np.ones(c), float("inf"))


def calibrate(
    model: WindowModel,
    values: npt.NDArray[Any],
    *,
    smooth: int = SMOOTH,
    quantile: float = QUANTILE,
    margin: float = MARGIN,
    drift: bool = True,
) -> Calibration:
    """Fit a device's calibration on clean readings ``[T, C]`` (T well above the window)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or len(x) < model.window + smooth:
        raise ValueError(
            f"calibration needs at least {model.window + smooth} rows of readings, got {len(x)}"
        )
    cal = standardiser(x, drift=drift)
    cal.smooth = smooth
    pre = Preprocessor(cal, start=x[0].copy())
    errors = sliding_errors(model, pre.transform(x))
    # A slow point's running mean starts at its first reading and needs SLOW_TAU samples to
    # settle: normal is learned after that (when the period is long enough to afford it).
    settle = int(SLOW_TAU) if cal.slow.any() else 0
    if len(errors) - settle >= max(2 * smooth, 50):
        errors = errors[settle:]
    cal.error_scale = np.maximum(errors.astype(np.float64).mean(axis=0), 1e-6)
    raw = device_scores(errors, cal.error_scale)
    cal.recent = tuple(raw[-smooth:].tolist())
    scores = moving_average(raw, smooth)
    cal.threshold = float(np.quantile(scores, quantile) * margin)
    return cal


def score_series(
    model: WindowModel, cal: Calibration, values: npt.NDArray[Any], calibration_rows: int
) -> npt.NDArray[np.float64]:
    """Smoothed device scores for rows ``calibration_rows..`` of a whole series ``[T, C]``."""
    pre = Preprocessor(cal, start=np.asarray(values[0], dtype=np.float64))
    z = pre.transform(values)
    errors = sliding_errors(model, z)
    raw = device_scores(errors, cal.error_scale)
    smooth = moving_average(raw, cal.smooth)
    # errors[i] belongs to the window ending at row i + W - 1.
    first = calibration_rows - (model.window - 1)
    return smooth[first:]
