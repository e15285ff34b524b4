"""Engineering limits on readings: a value outside its point's ``low``..``high`` is not Good.

A point's ``low`` and ``high`` (its EURange) are the values the process gives in normal
operation. A reading past them is more often a fault of the measurement than of the process: a
4-20 mA loop with a broken wire reads far below 4 mA, a sensor at its end stop reads its maximum.
So the reading keeps its value (never clamped or changed: the number itself is evidence) but
not its Good quality. The point's ``out_of_range`` says what it gets:

- ``uncertain`` (the default for read-only points): Uncertain, reason "above high 100" or
  "below low 0" (the bound as configured). The OPC UA server serves it as
  UncertainEngineeringUnitsExceeded.
- ``bad``: Bad, with the same reason (the OPC UA server: BadOutOfRange, value null).
- ``keep`` (the default for writable points, whose low..high is usually their write range):
  the quality the reading had.

Rules, the same for every protocol (each client calls `Limits.check` where it turns a device
reading into a sample, before its own deadband, so that a change of quality alone is sent):

- Bounds are inclusive and either may be absent. Only numbers are checked: bool, str and None
  are not, nor is NaN (it is neither above nor below anything); an infinity is.
- The check sees the point's engineering value (after scale and offset) in the point's own unit,
  before any bridge converts it.
- A reading that is already Bad stays Bad with its own reason: the device's failure says more.
- A reading the device marked Uncertain keeps its quality under ``uncertain`` (Bad under
  ``bad``: a reading never gets a better quality here, only a worse one) and its reason gets
  ours appended after "; ", e.g. "UncertainSensorNotAccurate; above high 100", so neither
  is lost. `exceeded` finds our part in such a reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.types import Access, OutOfRange, Quality, Sample, Value

__all__ = ["HasLimits", "Limits", "default_mode", "exceeded", "limit_reason"]

_EXCEEDED = re.compile(r"(?:^|; )(?:above high|below low) ")


class HasLimits(Protocol):
    """A point config: limits and an ``out_of_range`` (None: `default_mode`), and usually an
    ``access`` (read by `Limits.of` when it is there)."""

    @property
    def low(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...
    @property
    def out_of_range(self) -> OutOfRange | None: ...


def _number(bound: float) -> str:
    """A bound as the config most likely wrote it: 100 (not 100.0), 0.5, 1e+20."""
    return f"{bound:.12g}"


def limit_reason(value: float, low: float | None, high: float | None) -> str | None:
    """Why ``value`` is outside low..high (inclusive), or None when it is inside."""
    if high is not None and value > high:
        return f"above high {_number(high)}"
    if low is not None and value < low:
        return f"below low {_number(low)}"
    return None


def exceeded(reason: str | None) -> bool:
    """Whether ``reason`` says a reading was outside its point's limits (wholly or in part)."""
    return reason is not None and _EXCEEDED.search(reason) is not None


def default_mode(access: Access | None) -> OutOfRange:
    """``out_of_range`` when a point does not say: keep for a writable point, whose low..high
    configs have long used as its write range only (a setpoint that reads 0 while idle must not
    turn uncertain on an upgrade); uncertain for the others (access None: learnt at run time)."""
    return OutOfRange.KEEP if access is not None and access.writable else OutOfRange.UNCERTAIN


@dataclass(frozen=True, slots=True)
class Limits:
    """The range check of one point; build it once with `Limits.of` (None: nothing to check)."""

    low: float | None
    high: float | None
    quality: Quality  # what a reading outside gets: UNCERTAIN or BAD

    @staticmethod
    def of(point: HasLimits) -> Limits | None:
        """The check for ``point``, or None when it has no bound or keeps the quality."""
        mode = point.out_of_range
        if mode is None:  # the default: see `default_mode`
            mode = default_mode(getattr(point, "access", None))
        if mode == OutOfRange.KEEP or (point.low is None and point.high is None):
            return None
        quality = Quality.BAD if mode == OutOfRange.BAD else Quality.UNCERTAIN
        return Limits(point.low, point.high, quality)

    def check(
        self, value: Value, quality: Quality, reason: str | None
    ) -> tuple[Quality, str | None]:
        """The (quality, reason) a reading of ``value`` has after the check; the value itself
        is never changed. See the module docstring for the rules."""
        if (
            quality is Quality.BAD
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
            or math.isnan(value)
        ):
            return quality, reason
        why = limit_reason(value, self.low, self.high)
        if why is None:
            return quality, reason
        if quality is Quality.UNCERTAIN:
            return self.quality, why if reason is None else f"{reason}; {why}"
        return self.quality, why

    def sample(self, sample: Sample) -> Sample:
        """``sample`` after `check` (the same object when nothing changes)."""
        quality, reason = self.check(sample.value, sample.quality, sample.reason)
        if quality is sample.quality and reason is sample.reason:
            return sample
        return replace(sample, quality=quality, reason=reason)
