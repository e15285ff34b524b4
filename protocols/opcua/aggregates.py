"""OPC UA Part 13 aggregates over the shadow's history: the math, without I/O.

The shadow keeps a row per change of value or quality ("a steady value is one row"): a stepped
historian's compression. So every variable is Stepped (Part 13, 3.1.8): a row's value holds
from its time until the next row, and the value at a time between rows is the last one at or
before it. Time before the first row has no data; so has time after ``now`` (we do not
extrapolate a value into the future for time-weighted figures). Extrapolation is stepped only:
the value at a time after ``now`` is the last one, held (Uncertain_DataSubNormal), so
UseSlopedExtrapolation is accepted and changes nothing.

Qualities, under a `Config` (the client's AggregateConfiguration, or the server's `DEFAULT`:
Part 13, 4.2.1.2): good data is used and counts as Good; bad data is left out and counts as
Bad; uncertain data is used (TreatUncertainAsBad false) but counts as neither, or (true) is
left out like bad data and counts as Bad. A result's StatusCode grades the interval's data (Part
13, 5.4.3.2): Good when the Good share is at least PercentDataGood, else Bad (with a null
value) when the Bad share is at least PercentDataBad, else Uncertain_DataSubNormal; the share
by duration for TimeAverage, by number of raw values for the others, of the data there is (time
without data, before the first row or after ``now``, makes an interval Partial, not Bad). The
defaults (100, 100, false) make a result Good when all its data is good, Bad when all of it is
bad, Uncertain_DataSubNormal in between. A configuration with a percentage over 100, or with
PercentDataGood below 100 - PercentDataBad (thresholds that overlap: an interval could be
both Good and Bad), is refused with Bad_AggregateInvalidInputs: `Config.problem`.

Count counts the raw values used (0 in an interval without any); Start and End are the first
and last raw value with its own status and time; the others are reported at the interval's
time. Non-numeric values (strings, booleans) serve Count, Start, End and Interpolative; the
numeric aggregates answer Bad_AggregateInvalidInputs.

`Fold` takes the rows of one interval in time order and keeps O(1) state (it is what a
continuation point carries when an interval's rows span several responses). `value_at` is the
stepped value at a time (Interpolative, ReadAtTime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes as Codes

# A client sends back the times we gave it, rounded to the microsecond (datetime's resolution;
# OPC UA's is 100 ns); a stored time is any float. Times this close are the same time.
SAME = 0.5e-6
# Part 4, 7.34.2: InfoType DataValue and the historian bits of a StatusCode
_INFO_DATAVALUE = 0x400
CALCULATED, INTERPOLATED, PARTIAL, MULTI_VALUE = 0x1, 0x2, 0x4, 0x10


class Aggregate(Enum):
    """The aggregates served, with their AggregateFunction NodeId (namespace 0)."""

    COUNT = ObjectIds.AggregateFunction_Count
    MINIMUM = ObjectIds.AggregateFunction_Minimum
    MAXIMUM = ObjectIds.AggregateFunction_Maximum
    AVERAGE = ObjectIds.AggregateFunction_Average
    START = ObjectIds.AggregateFunction_Start
    END = ObjectIds.AggregateFunction_End
    DELTA = ObjectIds.AggregateFunction_Delta
    RANGE = ObjectIds.AggregateFunction_Range
    INTERPOLATIVE = ObjectIds.AggregateFunction_Interpolative
    TIME_AVERAGE = ObjectIds.AggregateFunction_TimeAverage


class Kind(Enum):
    """The data type of a result: the variable's own, Double, or Int32 (Count)."""

    SAME = "same"
    DOUBLE = "double"
    COUNT = "count"


KINDS = {
    Aggregate.COUNT: Kind.COUNT,
    Aggregate.AVERAGE: Kind.DOUBLE,
    Aggregate.TIME_AVERAGE: Kind.DOUBLE,
    Aggregate.DELTA: Kind.DOUBLE,
    Aggregate.RANGE: Kind.DOUBLE,
}


def code(base: int, bits: int = 0) -> int:
    """A StatusCode with historian ``bits`` (InfoType DataValue where there are any)."""
    return base | _INFO_DATAVALUE | bits if bits else base


@dataclass(frozen=True)
class Result:
    """One aggregate value: at ``ts``, ``value`` (None: null) with StatusCode ``status``."""

    ts: float
    value: Any
    status: int


@dataclass(frozen=True)
class Config:
    """Part 13's AggregateConfiguration (4.2.1.2): how the qualities of an interval's data
    grade its result (module docstring)."""

    uncertain_bad: bool = False  # TreatUncertainAsBad
    percent_bad: int = 100  # PercentDataBad
    percent_good: int = 100  # PercentDataGood
    sloped: bool = False  # UseSlopedExtrapolation: stepped extrapolation only (docstring)

    def problem(self) -> str | None:
        """Why Part 13 refuses this configuration (Bad_AggregateInvalidInputs), if it does."""
        if not (0 <= self.percent_good <= 100 and 0 <= self.percent_bad <= 100):
            return "PercentDataGood and PercentDataBad are percentages, 0 to 100"
        if self.percent_good + self.percent_bad < 100:
            return "PercentDataGood must be at least 100 - PercentDataBad"
        return None

    def used(self, quality: str) -> bool:
        """Whether data of ``quality`` goes into a result (else it counts as Bad)."""
        return quality == "good" or (quality == "uncertain" and not self.uncertain_bad)

    def grade(self, good: float, bad: float, total: float) -> int:
        """The StatusCode of ``good`` and ``bad`` data of ``total`` (raw values or seconds).
        Good is tried first: where both thresholds are met (PercentDataGood is exactly 100 -
        PercentDataBad) Part 13 has PercentDataGood decide."""
        if good * 100 >= self.percent_good * total:
            return Codes.Good
        if bad * 100 >= self.percent_bad * total:
            return Codes.Bad
        return Codes.UncertainDataSubNormal


DEFAULT = Config()  # the server's defaults, served in the Server's DefaultHAConfiguration


# A row as kept in a fold (JSON-friendly for continuation points): ts, value, quality.
Sample = tuple[float, Any, str]


def numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Fold:
    """The rows of the interval ``[lo, hi)``, added in time order under one `Config`;
    ``held`` is the row holding at ``lo`` (the last one before it), then the last row added."""

    lo: float
    hi: float
    held: Sample | None = None
    t: float | None = None  # time up to which durations are summed (lo at first)
    raw: int = 0  # raw values in the interval
    raw_good: int = 0  # of good quality
    raw_bad: int = 0  # not used (bad, or uncertain taken as bad)
    invalid: bool = False  # a value used that is not a number
    total: float = 0.0  # of the numbers used
    low: float | None = None
    low_n: int = 0  # times the minimum occurs
    high: float | None = None
    high_n: int = 0
    first_usable: float | None = None
    last_usable: float | None = None
    start: Sample | None = None
    end: Sample | None = None
    area: float = 0.0  # of the numbers used, held: value x seconds
    time_good: float = 0.0
    time_uncertain: float = 0.0  # uncertain and used
    time_bad: float = 0.0  # not used, or a non-numeric value held

    def add(self, row: Sample, config: Config = DEFAULT) -> None:
        ts, value, quality = row
        self._hold_until(ts, config)
        self.raw += 1
        if self.start is None:
            self.start = row
        self.end = row
        if not config.used(quality):
            self.raw_bad += 1
        elif not numeric(value):
            self.raw_good += quality == "good"
            self.invalid = True
        else:
            self.raw_good += quality == "good"
            v = float(value)
            self.total += v
            if self.first_usable is None:
                self.first_usable = v
            self.last_usable = v
            if self.low is None or v < self.low:
                self.low, self.low_n = v, 0
            self.low_n += v == self.low
            if self.high is None or v > self.high:
                self.high, self.high_n = v, 0
            self.high_n += v == self.high
        self.held = row

    def _hold_until(self, ts: float, config: Config) -> None:
        """Sum the time from ``t`` to ``ts`` under the value held."""
        since = self.lo if self.t is None else self.t
        span = ts - since
        if span <= 0:
            return
        self.t = ts
        if self.held is None:
            return  # no data yet
        _, value, quality = self.held
        if not config.used(quality) or not numeric(value):
            self.time_bad += span
        elif quality == "good":
            self.area += float(value) * span
            self.time_good += span
        else:
            self.area += float(value) * span
            self.time_uncertain += span

    def state(self) -> list[Any]:
        """The fold as JSON-friendly values (`restore` makes it again)."""
        return [getattr(self, f) for f in self.__dataclass_fields__]

    @classmethod
    def restore(cls, state: list[Any]) -> Fold:
        fold = cls(*state)
        for name in ("held", "start", "end"):
            row = getattr(fold, name)
            setattr(fold, name, tuple(row) if row is not None else None)
        return fold

    def result(
        self, aggregate: Aggregate, stamp: float, now: float, step: float, config: Config = DEFAULT
    ) -> Result:
        """The aggregate of the interval, reported at ``stamp``; ``step`` is the
        ProcessingInterval (a shorter interval is Partial, as is one with time without data).
        Interpolative is not a fold: see `value_at`."""
        self._hold_until(min(self.hi, now), config)
        span = self.hi - self.lo
        covered = self.time_good + self.time_uncertain + self.time_bad
        partial = PARTIAL if span < step - SAME or covered < span - SAME else 0
        bits = CALCULATED | partial
        if aggregate in (Aggregate.START, Aggregate.END):
            row = self.start if aggregate is Aggregate.START else self.end
            if row is None:
                return Result(stamp, None, Codes.BadNoData)
            return Result(row[0], *_raw(row))
        by_number = config.grade(self.raw_good, self.raw_bad, self.raw)
        if aggregate is Aggregate.COUNT:
            return _graded(stamp, self.raw - self.raw_bad, by_number, bits)
        if self.invalid:
            return Result(stamp, None, Codes.BadAggregateInvalidInputs)
        if aggregate is Aggregate.TIME_AVERAGE:
            data = self.time_good + self.time_uncertain
            if data <= 0:
                return Result(stamp, None, Codes.Bad if self.time_bad else Codes.BadNoData)
            by_time = config.grade(self.time_good, self.time_bad, covered)
            return _graded(stamp, self.area / data, by_time, bits)
        # the others are of the raw values used in the interval, graded by number
        if self.low is None or self.high is None:
            return Result(stamp, None, Codes.Bad if self.raw_bad else Codes.BadNoData)
        assert self.first_usable is not None and self.last_usable is not None
        if aggregate is Aggregate.MINIMUM:
            multi = MULTI_VALUE if self.low_n > 1 else 0
            return _graded(stamp, self.low, by_number, bits | multi)
        if aggregate is Aggregate.MAXIMUM:
            multi = MULTI_VALUE if self.high_n > 1 else 0
            return _graded(stamp, self.high, by_number, bits | multi)
        if aggregate is Aggregate.AVERAGE:
            return _graded(stamp, self.total / (self.raw - self.raw_bad), by_number, bits)
        if aggregate is Aggregate.RANGE:
            return _graded(stamp, self.high - self.low, by_number, bits)
        delta = self.last_usable - self.first_usable
        return _graded(stamp, delta, by_number, bits)


def _graded(stamp: float, value: Any, grade: int, bits: int) -> Result:
    """A calculated result of ``grade`` (`Config.grade`): a Bad one has no value."""
    if grade == Codes.Bad:
        return Result(stamp, None, Codes.Bad)
    return Result(stamp, value, code(grade, bits))


def _raw(row: Sample) -> tuple[Any, int]:
    """A raw row's value and status (a bad row: Bad and null)."""
    _, value, quality = row
    if quality == "good":
        return value, Codes.Good
    if quality == "uncertain":
        return value, Codes.Uncertain
    return None, Codes.Bad


def value_at(
    held: Sample | None,
    good: Sample | None,
    t: float,
    now: float,
    simple: bool,
    config: Config = DEFAULT,
) -> Result:
    """The stepped value at ``t`` (Part 11 ReadAtTime, Part 13 Interpolative): ``held`` is the
    last row at or before ``t``, ``good`` the last one ``config`` uses. A row used at ``t``
    itself is the raw value; otherwise the held value, Interpolated, Good or Uncertain as its
    row, and Uncertain_DataSubNormal after ``now`` (extrapolated, stepped). A row not used held
    (bad, or uncertain under TreatUncertainAsBad) gives the last one used before it,
    Uncertain_DataSubNormal (Part 13's interpolated bounds), or with ``simple`` bounds (Part
    11's UseSimpleBounds) Bad."""
    if held is None:
        return Result(t, None, Codes.BadNoData)
    exact = abs(held[0] - t) < SAME
    value, status = _raw(held)
    if not config.used(held[2]):
        if simple:
            return Result(t, None, Codes.Bad if exact else code(Codes.Bad, INTERPOLATED))
        if good is None:
            return Result(t, None, Codes.BadNoData)
        return Result(t, good[1], code(Codes.UncertainDataSubNormal, INTERPOLATED))
    if exact:
        return Result(t, value, status)
    if t > now:
        status = Codes.UncertainDataSubNormal
    return Result(t, value, code(status, INTERPOLATED))
