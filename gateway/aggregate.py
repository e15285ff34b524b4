"""What a bridge sends over time rather than per reading: window summaries and heartbeats.
Sans-IO: the clock is passed in, nothing here sleeps, logs or sends.

`Aggregator` (a bridge's ``aggregate:``) summarises each numeric point of a device per window
of ``every`` seconds. Windows are aligned to the wall clock by the readings' source timestamps
(``every: 60`` starts them on the minute, as ``ts // every * every``), one open window per
device: all its points are summarised together, so a ``device`` payload carries them in one
object. A window is sent

- when a reading of a later window arrives for the device (readings come in order), or
- once the clock is ``grace`` seconds past the window's end and no reading for it arrived in
  the last ``grace`` seconds: a burst of old readings (an outbox drained upstream, a device
  whose clock is behind) is summarised whole instead of cut at the first tick, or
- at `flush` (a clean stop or a reload).

Each statistic is a sample of its own, ``<point>.<stat>`` (``temp.mean``), stamped with the
window's start (source timestamp) and the time it was made (gateway timestamp); ``count``
has no unit, the others keep the readings'. A reading older than the open window, or than a
window already sent, is late: counted and dropped (its window went out without it).

Quality follows OPC UA's aggregates (Part 13, 100 % good): good when every reading of the
window was good, uncertain when some were uncertain or bad (bad ones, failed reads without a
value and NaN/infinities, are counted out of the statistics; the reason says how many), bad
when none had a usable value (every statistic bad, ``count`` 0, the last reading's reason). A
window without a reading sends nothing. A value that is not a number (a string, a bool) is not
summarised: its sample passes through unchanged, at once; so does a failed read of a point
declared as text (`Aggregator`'s ``text``), and a message that is an event or a record (an
OPC UA event's fields, ``meta["record"]`` as `protocols.mqtt.codec.RECORD`).

`Heartbeat` (``heartbeat:``) re-sends a point's last sent sample, unchanged (value, quality,
unit and timestamps: a consumer tells a repeat by its unchanged ``ts``), once ``every``
seconds passed without a send of that point, and again every ``every`` seconds while the
point stays quiet. Points not declared at start (learnt at run time) are forgotten after
``forget`` seconds without a reading of their own, so names that come and go do not pile up.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gateway.globs import Globs
from gateway.types import Message, MessageKind, PointSpec, Quality, Sample, next_sequence

Stat = Literal["mean", "min", "max", "first", "last", "sum", "count"]
DEFAULT_STATS: tuple[Stat, ...] = ("mean", "min", "max", "last")
TEXT_TYPES = frozenset({"bool", "string"})  # datatypes that are never summarised
RECORD = "record"  # meta key of a message whose samples are one record's fields (an event)
HEARTBEAT_FORGET = 3600.0  # seconds: how long a learnt point is re-sent without a reading

_GOOD, _UNCERTAIN, _BAD = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD


def summary_specs(
    spec: PointSpec, stats: Iterable[Stat], every: float, chosen: Globs
) -> list[PointSpec]:
    """What a target sees of ``spec``: one point per statistic, read-only, when it is a number
    that the globs ``chosen`` select; else ``spec`` itself."""
    if spec.datatype in TEXT_TYPES or spec.name not in chosen:
        return [spec]
    out = []
    for stat in stats:
        counted = stat in ("count", "sum")  # not within the point's range
        out.append(
            replace(
                spec,
                id=f"{spec.id}.{stat}",
                name=f"{spec.name}.{stat}",
                datatype="uint32" if stat == "count" else
                "float64" if stat in ("mean", "sum") else spec.datatype,
                unit=None if stat == "count" else spec.unit,
                access=spec.access.READ,
                description=f"{stat} of {spec.name} per {every:g} s",
                low=None if counted else spec.low,
                high=None if counted else spec.high,
                write_rate=None,
            )
        )  # fmt: skip
    return out


def _ts(sample: Sample, now: float) -> float:
    return sample.source_ts or sample.gateway_ts or now


def _device(message: Message) -> str:
    return message.device or message.topic.rpartition("/")[2]


class _Point:
    """The running statistics of one point in one window: O(1) memory whatever its readings."""

    __slots__ = ("n", "total", "low", "high", "first", "last", "unit", "bad", "uncertain", "why")

    def __init__(self) -> None:
        self.n = 0  # usable readings (good or uncertain)
        self.total: float = 0  # an int while every value is one: sums of counters stay exact
        self.low: float = math.inf
        self.high: float = -math.inf
        self.first: float = 0
        self.last: float = 0
        self.unit: str | None = None
        self.bad = 0
        self.uncertain = 0
        self.why: str | None = None  # the reason of the last reading that was not good

    def add(self, sample: Sample) -> None:
        value = sample.value
        if sample.unit is not None:
            self.unit = sample.unit
        if not isinstance(value, int | float) or isinstance(value, bool):
            value = None  # a failed read (`Aggregator.add` passes anything else through)
        if value is None or sample.quality is _BAD or not math.isfinite(value):
            self.bad += 1
            if sample.reason is not None:
                self.why = sample.reason
            elif value is not None and not math.isfinite(value):
                self.why = "not a finite number"
            return
        if sample.quality is _UNCERTAIN:
            self.uncertain += 1
            self.why = sample.reason or self.why
        if self.n == 0:
            self.first = value
        self.n += 1
        self.total += value
        self.last = value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def samples(
        self, point: str, stats: tuple[Stat, ...], start: float, now: float
    ) -> list[Sample]:
        readings = self.n + self.bad
        quality: Quality = _GOOD
        why: str | None = None
        if self.n == 0:
            quality, why = _BAD, self.why or f"no usable reading of {readings}"
        elif self.bad or self.uncertain:
            counts = ((self.bad, "bad"), (self.uncertain, "uncertain"))
            parts = [f"{k} of {readings} readings {word}" for k, word in counts if k]
            quality = _UNCERTAIN
            why = ", ".join(parts) + (f" ({self.why})" if self.why else "")
        out = []
        for stat in stats:
            value: float | None
            if stat == "count":
                value = self.n
            elif self.n == 0:
                value = None
            elif stat == "mean":
                value = float(f"{self.total / self.n:.12g}")  # no float noise
            elif stat == "sum":
                total = self.total
                value = float(f"{total:.12g}") if isinstance(total, float) else total
            else:
                value = {"min": self.low, "max": self.high, "first": self.first,
                         "last": self.last}[stat]  # fmt: skip
            unit = None if stat == "count" else self.unit
            out.append(Sample(f"{point}.{stat}", value, quality, start, now, unit, why))
        return out


@dataclass
class _Window:
    start: float
    arrived: float  # when its last reading came (the clock passed in)
    origin: str
    meta: Mapping[str, Any]
    points: dict[str, _Point] = field(default_factory=dict)


class Aggregator:
    """Summaries per device and window (see the module doc). ``points``: globs of the point
    names to summarise (as the target sees them); ``text``: (device, point) pairs declared as
    text or bool, whose failed reads pass through rather than count as a bad number; ``name``:
    whose sequence numbers the summaries carry."""

    def __init__(
        self,
        every: float,
        stats: Collection[Stat],
        *,
        points: Collection[str] = ("*",),
        grace: float = 2.0,
        text: Collection[tuple[str, str]] = (),
        name: str = "aggregate",
    ) -> None:
        if not every > 0 or not grace >= 0 or not stats:
            raise ValueError(f"every > 0, grace >= 0 and some stats; got {every}, {grace}, {stats}")
        self.every = every
        self.grace = grace
        self.stats = tuple(dict.fromkeys(stats))  # in the config's order
        self._globs = Globs(tuple(points) or ("*",))
        self._text = frozenset(text)
        self._name = name
        self._open: dict[str, _Window] = {}
        self._sent_until: dict[str, float] = {}  # device -> end of its last window sent
        self.windows = 0
        self.late = 0

    def specs(self, spec: PointSpec) -> list[PointSpec]:
        """What the target sees of ``spec``: its summaries, or itself if not summarised."""
        return summary_specs(spec, self.stats, self.every, self._globs)

    def summary_of(self, name: str) -> str | None:
        """The point that ``name`` (``temp.mean``) summarises, if it is a summary's name."""
        point, dot, stat = name.rpartition(".")
        return point if dot and stat in self.stats and point in self._globs else None

    def add(self, message: Message, now: float) -> list[Message]:
        """Take ``message``'s samples: what is to be sent now (windows it closed, then the
        samples passed through)."""
        if message.kind is not MessageKind.TELEMETRY or RECORD in message.meta:
            return [message]  # an event, a record (an OPC UA event's fields): never summarised
        device = _device(message)
        out: list[Message] = []
        passed: list[Sample] = []
        for sample in message.samples:
            value = sample.value
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | None)
                or sample.point not in self._globs
                or (value is None and (device, sample.point) in self._text)
            ):
                passed.append(sample)
                continue
            start = _ts(sample, now) // self.every * self.every
            window = self._open.get(device)
            if window is not None and start > window.start:
                out.append(self._close(device, now))
                window = None
            if (window is not None and start < window.start) or start < self._sent_until.get(
                device, -math.inf
            ):
                self.late += 1
                continue
            if window is None:
                window = self._open[device] = _Window(start, now, message.origin, message.meta)
            window.arrived, window.meta = now, message.meta
            stats = window.points.get(sample.point)
            if stats is None:
                stats = window.points[sample.point] = _Point()
            stats.add(sample)
        if passed:
            samples = tuple(passed)
            out.append(self._message(device, samples, message.origin, message.meta))
        return out

    def due(self, now: float) -> list[Message]:
        """The windows the clock closes at ``now``."""
        grace = self.grace
        closing = [
            device
            for device, w in self._open.items()
            if now >= w.start + self.every + grace and now >= w.arrived + grace
        ]
        return [self._close(device, now) for device in closing]

    def flush(self, now: float) -> list[Message]:
        """Every open window, however far it got (a stop: nothing accepted is lost)."""
        return [self._close(device, now) for device in list(self._open)]

    def _close(self, device: str, now: float) -> Message:
        window = self._open.pop(device)
        self._sent_until[device] = window.start + self.every
        self.windows += 1
        samples = tuple(
            s
            for point, stats in window.points.items()
            for s in stats.samples(point, self.stats, window.start, now)
        )
        return self._message(device, samples, window.origin, window.meta)

    def _message(
        self, device: str, samples: tuple[Sample, ...], origin: str, meta: Mapping[str, Any]
    ) -> Message:
        # One sequence per bridge and device: a consumer of `device` payloads sees it grow.
        seq = next_sequence(f"{self._name}:{device}")
        return Message(
            f"telemetry/{device}", MessageKind.TELEMETRY, samples, origin, seq, None, device, meta
        )

    def status(self) -> dict[str, int]:
        return {"windows": self.windows, "late": self.late, "open_windows": len(self._open)}


class _Sent:
    __slots__ = ("sample", "sent", "read", "origin", "meta")

    def __init__(self, sample: Sample, now: float, origin: str, meta: Mapping[str, Any]) -> None:
        self.sample, self.sent, self.read, self.origin, self.meta = sample, now, now, origin, meta


class Heartbeat:
    """Re-sends quiet points (see the module doc). ``kept``: the (device, point) pairs declared
    at start, which are never forgotten; ``now`` is a monotonic clock."""

    def __init__(
        self,
        every: float,
        *,
        kept: Collection[tuple[str, str]] = (),
        forget: float = HEARTBEAT_FORGET,
        name: str = "heartbeat",
    ) -> None:
        if not every > 0:
            raise ValueError(f"every must be > 0, got {every}")
        self.every = every
        self.forget = max(forget, 2 * every)
        self._kept = frozenset(kept)
        self._name = name
        self._last: dict[tuple[str, str], _Sent] = {}
        self._next = math.inf  # no point is due before this
        self.resent = 0
        self.forgotten = 0

    def sent(self, message: Message, now: float) -> None:
        """``message`` went to the target at ``now``: its points are fresh."""
        if message.kind is not MessageKind.TELEMETRY or RECORD in message.meta:
            return  # an event or a record happened once: repeating it would say it again
        device = _device(message)
        for sample in message.samples:
            self._last[(device, sample.point)] = _Sent(sample, now, message.origin, message.meta)
        if message.samples:
            self._next = min(self._next, now + self.every)

    def due(self, now: float) -> list[Message]:
        """The repeats to send at ``now``, one message per device (each point in it counts as
        sent now)."""
        if now < self._next:
            return []
        every, forget = self.every, self.forget
        repeats: dict[str, list[_Sent]] = {}
        stale = []
        upcoming = math.inf
        for key, entry in self._last.items():
            if now - entry.sent >= every:
                if now - entry.read >= forget and key not in self._kept:
                    stale.append(key)
                    continue
                repeats.setdefault(key[0], []).append(entry)
                entry.sent = now
            upcoming = min(upcoming, entry.sent + every)
        for key in stale:
            del self._last[key]
        self.forgotten += len(stale)
        self._next = upcoming
        out = []
        for device, entries in repeats.items():
            self.resent += len(entries)
            last = entries[-1]
            seq = next_sequence(f"{self._name}:{device}")
            samples = tuple(e.sample for e in entries)
            out.append(
                Message(f"telemetry/{device}", MessageKind.TELEMETRY, samples, last.origin, seq,
                        None, device, last.meta)
            )  # fmt: skip
        return out

    def status(self) -> dict[str, int]:
        return {"resent": self.resent, "forgotten": self.forgotten, "tracked": len(self._last)}
