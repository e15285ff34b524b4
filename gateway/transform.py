"""Value transforms between a device's raw value and what the bus carries. Sans-IO.

`Scaling` is the linear raw <-> engineering map of a point; `DeadbandFilter` decides, per point,
whether a new reading is worth sending. Both run once per sample (15,000 a second), so they do
the least work they can: no allocation, no logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway.types import Quality, Value

_NUMBER = (int, float)  # bool is an int too and is ruled out separately


@dataclass(frozen=True, slots=True)
class Scaling:
    """engineering = raw * scale + offset; reversible, hence scale must not be 0."""

    scale: float = 1.0
    offset: float = 0.0
    _identity: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError(
                f"scale must be finite and not 0, offset finite; got {self.scale}, {self.offset}"
            )
        object.__setattr__(self, "_identity", self.scale == 1 and self.offset == 0)

    def apply(self, raw: int | float) -> int | float:
        """Raw to engineering; the identity returns ``raw`` itself, so ints stay ints."""
        if self._identity:
            return raw
        # 12 significant digits: far more than any register holds, and it drops the binary
        # noise of decimal scales (raw 208 * 0.001 is 0.20800000000000002, published as 0.208).
        value = raw * self.scale + self.offset
        return float(f"{value:.12g}") if value == value else value

    def invert(self, eng: int | float) -> float:
        """Engineering to raw, for writes; integer registers still need rounding."""
        return (eng - self.offset) / self.scale


class DeadbandFilter:
    """Whether a new reading of one point differs enough from the last one sent to send it.

    The state is the last *accepted* value and quality, so slow drift is sent once it adds up.
    ``accept(value, quality)`` is True when:

    1. nothing was accepted yet (or after `reset`);
    2. the quality differs from the last accepted one;
    3. the value is not a number (str, bool, None), or the last one was not, and they differ;
    4. NaN: a NaN after a number, or a number after a NaN, is a change; NaN after NaN is not;
    5. otherwise, with d = |value - last|:
       - neither ``absolute`` nor ``percent`` set: d != 0 (any change, never a repeat);
       - else d > ``absolute`` (when set) or d > ``percent``/100 * ``span`` (when both set) or
         d > ``percent``/100 * |last| (``percent`` without ``span``). Strictly greater: a
         deadband of 0 sends every change and no repeat.

    ``span`` is the point's range (high - low); a percent of the last value shrinks to nothing
    near zero, so give a span whenever the point has one.
    """

    __slots__ = ("absolute", "percent", "span", "_fraction", "_started", "_last", "_quality")

    def __init__(
        self,
        absolute: float | None = None,
        percent: float | None = None,
        span: float | None = None,
    ) -> None:
        if absolute is not None and not absolute >= 0:
            raise ValueError(f"absolute deadband must be >= 0, got {absolute}")
        if percent is not None and not percent >= 0:
            raise ValueError(f"percent deadband must be >= 0, got {percent}")
        if span is not None and not span > 0:
            raise ValueError(f"span must be > 0, got {span}")
        self.absolute = absolute
        self.percent = percent
        self.span = span
        self._fraction = None if percent is None else percent / 100
        self._started = False
        self._last: Value = None
        self._quality: Quality | None = None

    def reset(self) -> None:
        """Forget the last value: the next one is sent whatever it is."""
        self._started = False
        self._last = None
        self._quality = None

    def accept(self, value: Value, quality: Quality) -> bool:
        if self._started and quality == self._quality and not self._changed(value):
            return False
        self._started = True
        self._last = value
        self._quality = quality
        return True

    def _changed(self, value: Value) -> bool:
        last = self._last
        if (
            not isinstance(value, _NUMBER)
            or not isinstance(last, _NUMBER)
            or isinstance(value, bool)
            or isinstance(last, bool)
        ):
            return type(value) is not type(last) or value != last
        if value == last:  # also inf == inf, whose difference is NaN
            return False
        if value != value or last != last:  # NaN: a change unless both are NaN
            return (value != value) is not (last != last)
        delta = abs(value - last)
        if self.absolute is None and self._fraction is None:
            return delta != 0
        if self.absolute is not None and delta > self.absolute:
            return True
        if self._fraction is not None:
            base = self.span if self.span is not None else abs(last)
            return delta > self._fraction * base
        return False
