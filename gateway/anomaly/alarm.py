"""Hysteresis: one fault is one alarm, and one clear when it is over.

The alarm rises when the (already smoothed) score goes above the threshold and clears only when
the score has stayed below ``clear_ratio * threshold`` for ``hold`` consecutive samples, so a
score that hovers around the threshold does not raise an alarm per sample.
"""

from __future__ import annotations

from enum import StrEnum


class Transition(StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


class Hysteresis:
    def __init__(self, threshold: float, *, clear_ratio: float = 0.8, hold: int = 10) -> None:
        if not 0.0 < clear_ratio <= 1.0:
            raise ValueError("clear_ratio must be in (0, 1]")
        self.threshold = threshold
        self.clear_level = threshold * clear_ratio
        self.hold = max(1, hold)
        self.active = False
        self._below = 0
        self.raised = 0

    def update(self, score: float) -> Transition | None:
        if not self.active:
            if score > self.threshold:
                self.active = True
                self._below = 0
                self.raised += 1
                return Transition.RAISED
            return None
        if score < self.clear_level:
            self._below += 1
            if self._below >= self.hold:
                self.active = False
                return Transition.CLEARED
        else:
            self._below = 0
        return None
