"""One device's scorer: calibration, windows, smoothing and alarm state, without the bus.

The bridge stage uses it for every device, and ``gateway anomaly evaluate`` runs the same code
over a CSV file, so the evaluated figures are those of the alarm the gateway raises. Scoring
is split in two (``windows`` then ``finish``) so that the stage can put the windows of many
devices and messages into one model call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.anomaly.alarm import Hysteresis, Transition
from gateway.anomaly.core import (
    MARGIN,
    QUANTILE,
    SMOOTH,
    Array,
    Calibration,
    Preprocessor,
    WindowModel,
    calibrate,
)
from gateway.anomaly.refresh import LevelRefresh


@dataclass(frozen=True)
class Scored:
    score: float  # smoothed device score
    points: Array  # each point's error over its calibration typical error
    change: Transition | None
    active: bool


class DeviceScorer:
    def __init__(
        self,
        model: WindowModel,
        *,
        smooth: int = SMOOTH,
        margin: float = MARGIN,
        threshold: float | None = None,
        clear_ratio: float = 0.8,
        hold: int = 10,
        refresh: float = 0.0,
    ) -> None:
        self.model = model
        self.smooth = smooth
        self.margin = margin
        self.fixed_threshold = threshold
        self.clear_ratio = clear_ratio
        self.hold = hold
        self.refresh_tau = refresh  # 0: the level stays as calibrated
        self.refresh: LevelRefresh | None = None
        self._raw: npt.NDArray[np.float64] = np.zeros((0, 0))
        self._first = 0
        self.cal: Calibration | None = None
        self.normal = float("nan")  # high quantile of the calibration's smoothed scores
        self.alarm: Hysteresis | None = None
        self._pre: Preprocessor | None = None
        self._window: npt.NDArray[np.float32] | None = None  # [C, 1, W], newest last
        self._scores: deque[float] = deque(maxlen=smooth)
        self._pending = 0

    def calibrate(self, rows: npt.NDArray[Any]) -> Calibration:
        """Learn normal from clean rows ``[T, C]`` and set the threshold (unless fixed)."""
        x = np.asarray(rows, dtype=np.float64)
        cal = calibrate(self.model, x, smooth=self.smooth, quantile=QUANTILE, margin=1.0)
        self.normal = cal.threshold
        cal.threshold = self.threshold_for(self.normal)
        self._begin(cal, x)
        return cal

    def threshold_for(self, normal: float) -> float:
        """The alarm threshold for a calibration whose smoothed scores reach ``normal`` (their
        high quantile): the fixed threshold if one is set, else ``normal`` x margin."""
        if self.fixed_threshold is not None:
            return self.fixed_threshold
        return normal * self.margin

    def restore(
        self,
        cal: Calibration,
        rows: npt.NDArray[Any],
        *,
        normal: float,
        level: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
        active: bool = False,
    ) -> None:
        """Go on from a stored calibration: ``rows`` (at least a window of fresh readings) fill
        the window instead of calibrating; ``normal`` is the calibration's high score quantile
        (the threshold follows today's margin or fixed threshold), ``level`` what the refresh
        had learned, ``active`` whether the alarm was on (it then clears as usual, and is not
        raised again)."""
        self.normal = normal
        cal = replace(cal, threshold=self.threshold_for(normal))
        x = np.asarray(rows, dtype=np.float64)
        # A slow point's running mean lags a trend (a counter) by what calibration measured as
        # its mean deviation; a few fresh rows cannot build that lag up again (SLOW_TAU is
        # longer than a window), so it starts there, or every kept counter alarmed after a
        # restart or reload.
        self._begin(cal, x, level, start=x[0] - cal.slow_mean)
        assert self.alarm is not None
        self.alarm.active = active

    def level(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
        """The level and spread the refresh has learned (None without a refresh)."""
        if self.refresh is None or self._pre is None:
            return None
        return self._pre.mean.copy(), self._pre.scale.copy()

    def _begin(
        self,
        cal: Calibration,
        x: npt.NDArray[np.float64],
        level: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
        *,
        start: npt.NDArray[np.float64] | None = None,
    ) -> None:
        self.cal = cal
        self._pre = Preprocessor(cal, start=x[0] if start is None else start)
        if level is not None and self.refresh_tau > 0:
            self._pre.mean[:], self._pre.scale[:] = level
        z = self._pre.transform(x)  # warms the running means up and fills the window
        if self.refresh_tau > 0:
            self.refresh = LevelRefresh(
                self._pre.mean, self._pre.scale, cal.slow, self.refresh_tau, floor=cal.scale
            )
        w = self.model.window
        self._window = np.ascontiguousarray(z[-w:].T[:, None, :])
        self.alarm = Hysteresis(cal.threshold, clear_ratio=self.clear_ratio, hold=self.hold)
        self._scores = deque(cal.recent, maxlen=self.smooth)  # smoothing goes on seamlessly

    def windows(self, rows: npt.NDArray[Any]) -> Array:
        """Standardise new rows ``[k, C]``; their windows ``[k * C, 1, W]`` for the model."""
        assert self._pre is not None and self._window is not None and self.alarm is not None
        z = self._standardise(np.asarray(rows, dtype=np.float64))
        w = self.model.window
        history = np.concatenate([self._window[:, 0, 1:].T, z])  # [W - 1 + k, C]
        win = np.lib.stride_tricks.sliding_window_view(history, w, axis=0)  # [k, C, W]
        self._window = np.ascontiguousarray(history[-w:].T[:, None, :])
        self._pending = len(z)
        return win.reshape(-1, 1, w)

    def _standardise(self, x: npt.NDArray[np.float64]) -> Array:
        assert self._pre is not None
        r = self.refresh
        if r is None:
            return self._pre.transform(x)
        parts = []
        for lo, hi in r.segments(len(x)):
            r.level_for(r.next + lo)
            parts.append(self._pre.transform(x[lo:hi]))
        self._raw, self._first = x, r.next
        r.next += len(x)
        return np.concatenate(parts) if parts else self._pre.transform(x)

    def finish(self, errors: Array) -> list[Scored]:
        """The model's errors for the last ``windows`` call -> one result per row, in order."""
        assert self.cal is not None and self.alarm is not None
        k = self._pending
        normalised = (errors.reshape(k, -1) / self.cal.error_scale).astype(np.float32)
        out = []
        r, alarm = self.refresh, self.alarm
        for i, row in enumerate(normalised):
            self._scores.append(float(row.max()))  # as core.device_scores
            score = sum(self._scores) / len(self._scores)
            change = alarm.update(score)
            if r is not None and not alarm.active and score < alarm.clear_level:
                r.learn(self._first + i, self._raw[i])
            out.append(Scored(score, row, change, self.alarm.active))
        return out

    def score(self, rows: npt.NDArray[Any]) -> list[Scored]:
        return self.finish(self.model.errors(np.ascontiguousarray(self.windows(rows))))
