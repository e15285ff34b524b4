"""Level refresh: a calibrated device keeps learning what normal looks like while it looks normal.

A 400-sample calibration is a few minutes; over the next tens of minutes accelerometers and flow
rates wander by 2-3 of their calibration spreads without anything being wrong, and a level
frozen at calibration turns that wander into long false alarms. With ``refresh: tau`` (off by
default), while the device's alarm is off and its score is below the alarm's clear level, each
fast point's level follows its readings with an exponential mean of time constant ``tau``
samples, and its spread likewise (never below the calibration's: a few minutes underestimate
it). While the alarm is on or the score is elevated both are frozen, so a fault, which raises
the score within a few samples, is not learned away. Slow points have their own running mean
(`core.Preprocessor`).

The scores of a batch are known only after the whole batch is standardised, so a row's update
takes effect from a fixed row on, whatever the batching: rows are counted in blocks of
``BLOCK``, and block ``k`` is standardised with the updates of blocks up to ``k - 2``. Batches
of at most ``BLOCK`` rows per device (the bridge scores at most 64 messages per call) thus give
exactly the scores of one row at a time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BLOCK = 64


class LevelRefresh:
    """Moves ``mean`` and ``scale`` (a `core.Preprocessor`'s, in place) for the fast points."""

    def __init__(
        self,
        mean: npt.NDArray[np.float64],
        scale: npt.NDArray[np.float64],
        slow: npt.NDArray[np.bool_],
        tau: float,
        *,
        floor: npt.NDArray[np.float64] | None = None,
    ) -> None:
        if tau <= 0:
            raise ValueError("tau must be positive")
        self.mean = mean
        self.scale = scale
        self.var = scale**2
        # the spread never falls below the calibration's (a restored level starts above it)
        self.floor = (scale if floor is None else floor).copy()
        self.alpha = 1.0 / tau
        self.fast = ~slow
        self.next = 0  # index of the next row to be standardised
        self.learned = 0  # rows that moved the level
        self._rows: dict[int, list[npt.NDArray[np.float64]]] = {}  # block -> normal rows
        self._applied = 0  # blocks below this are in the level

    def segments(self, rows: int) -> list[tuple[int, int]]:
        """The next ``rows`` rows as ``[lo, hi)`` runs within one block (one level each)."""
        out: list[tuple[int, int]] = []
        lo = 0
        while lo < rows:
            block = (self.next + lo) // BLOCK
            hi = min(rows, (block + 1) * BLOCK - self.next)
            out.append((lo, hi))
            lo = hi
        return out

    def level_for(self, index: int) -> None:
        """Bring the level up to date for row ``index``: fold in blocks up to its block - 2."""
        upto = index // BLOCK - 1
        a, fast = self.alpha, self.fast
        while self._applied < upto:
            for x in self._rows.pop(self._applied, []):
                d = x[fast] - self.mean[fast]
                self.mean[fast] += a * d
                self.var[fast] += a * (d * d - self.var[fast])
                self.scale[fast] = np.maximum(self.floor[fast], np.sqrt(self.var[fast]))
            self._applied += 1

    def learn(self, index: int, row: npt.NDArray[np.float64]) -> None:
        """Row ``index`` was scored as normal: it will move the level (two blocks later)."""
        block = index // BLOCK
        if block < self._applied:  # only when a batch was longer than BLOCK rows
            return
        self._rows.setdefault(block, []).append(row)
        self.learned += 1
