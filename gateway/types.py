"""Canonical types that travel on the bus.

`Sample` has the shape of OPC UA's DataValue (value, status, source and server timestamps) so that
any protocol can be mapped onto it without losing what it knows. `Message` is the envelope: every
reading, command, acknowledgement and event is one.

Timestamps are float seconds since the Unix epoch (time.time()): cheap to make at 15k samples/s,
and every protocol's own timestamp converts to it exactly enough (microseconds).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias

Value: TypeAlias = bool | int | float | str | None


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class OutOfRange(StrEnum):
    """What a reading outside its point's low..high gets (see `gateway.limits`)."""

    UNCERTAIN = "uncertain"
    BAD = "bad"
    KEEP = "keep"  # the quality the reading had


class MessageKind(StrEnum):
    TELEMETRY = "telemetry"
    COMMAND = "command"
    ACK = "ack"
    EVENT = "event"


class Access(StrEnum):
    READ = "r"
    WRITE = "w"
    READ_WRITE = "rw"

    @property
    def readable(self) -> bool:
        return self in (Access.READ, Access.READ_WRITE)

    @property
    def writable(self) -> bool:
        return self in (Access.WRITE, Access.READ_WRITE)


class PointConfig(Protocol):
    """The fields every protocol's point config has in common (see `PointSpec.of`)."""

    @property
    def name(self) -> str: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def access(self) -> Access | None: ...
    @property
    def description(self) -> str: ...
    @property
    def low(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...
    @property
    def write_rate(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PointSpec:
    """What a point is, independent of the protocol that reads it."""

    id: str  # "{device}/{name}", unique in one gateway
    name: str
    datatype: str
    unit: str | None = None
    access: Access = Access.READ
    description: str = ""
    low: float | None = None  # engineering limits (EURange): readings and writes are checked
    high: float | None = None
    write_rate: float | None = None  # writes per second allowed; None: the gateway default

    @staticmethod
    def of(device: str, point: PointConfig, datatype: str) -> PointSpec:
        """The spec of a configured point of ``device`` (access defaults to read-only)."""
        return PointSpec(
            id=f"{device}/{point.name}",
            name=point.name,
            datatype=datatype,
            unit=point.unit,
            access=point.access or Access.READ,
            description=point.description,
            low=point.low,
            high=point.high,
            write_rate=point.write_rate,
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one point, like OPC UA's DataValue."""

    point: str  # point name within its device
    value: Value
    quality: Quality = Quality.GOOD
    source_ts: float = 0.0  # when the device produced or we read it
    gateway_ts: float = 0.0  # when the gateway accepted it
    unit: str | None = None
    reason: str | None = None  # why quality is not good: "timeout", "connection refused", ...

    @staticmethod
    def now(
        point: str,
        value: Value,
        quality: Quality = Quality.GOOD,
        *,
        unit: str | None = None,
        reason: str | None = None,
        source_ts: float | None = None,
    ) -> Sample:
        ts = time.time()
        return Sample(
            point, value, quality, ts if source_ts is None else source_ts, ts, unit, reason
        )


_seq_counters: dict[str, itertools.count[int]] = {}


def next_sequence(origin: str) -> int:
    """Per-origin monotonically increasing sequence number (starting at 1)."""
    counter = _seq_counters.get(origin)
    if counter is None:
        counter = _seq_counters[origin] = itertools.count(1)
    return next(counter)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Message:
    """The envelope on the bus."""

    topic: str
    kind: MessageKind
    samples: tuple[Sample, ...]
    origin: str  # the adapter or device that produced it
    seq: int = 0
    correlation_id: str | None = None
    device: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def telemetry(
        device: str, samples: tuple[Sample, ...], *, origin: str | None = None
    ) -> Message:
        origin = origin or device
        return Message(
            topic=telemetry_topic(device),
            kind=MessageKind.TELEMETRY,
            samples=samples,
            origin=origin,
            seq=next_sequence(origin),
            device=device,
        )


def telemetry_topic(device: str) -> str:
    """Bus topic on which a device's readings are published."""
    return f"telemetry/{device}"
