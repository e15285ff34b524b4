"""Writes: the safety rules every write path goes through, and the command/ack round trip.

Whoever wants a device written (an OPC UA client writing a variable, an MQTT command, a CoAP
PUT, a shadow's desired state) calls `CommandRouter.write`. The router checks, in this order,
that the point exists, is declared writable, that the value is of the point's kind (a number,
true/false, a string: `value_problem`) and in its range, and that the point's rate limit allows
another write; it logs and counts every attempt. Only then does it
publish a COMMAND message on ``command/{device}`` and wait for the device adapter's ACK (same
correlation id) on ``ack/{device}``. The caller gets a `WriteResult` that says why a write
failed, so each protocol can map it onto its own status (BadOutOfRange, 4.03, exception 03...).

A write to a device that is down fails at once (the adapter acks "unreachable"): writes are
never queued for later, because a setpoint applied minutes late is worse than a refused one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.bus import Bus, Subscription
from gateway.types import (
    Message,
    MessageKind,
    PointSpec,
    Sample,
    Value,
    new_correlation_id,
    next_sequence,
)

log = logging.getLogger(__name__)

DEFAULT_WRITE_TIMEOUT = 5.0
DEFAULT_WRITE_RATE = 20.0  # writes per second per point, with a burst of the same size


class WriteStatus(StrEnum):
    GOOD = "good"
    UNKNOWN_POINT = "unknown_point"
    NOT_WRITABLE = "not_writable"
    OUT_OF_RANGE = "out_of_range"
    BAD_VALUE = "bad_value"  # wrong type, or does not fit the device's data type
    RATE_LIMITED = "rate_limited"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    DEVICE_ERROR = "device_error"  # the device refused (a Modbus exception, an OPC UA Bad)


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: WriteStatus
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is WriteStatus.GOOD


GOOD = WriteResult(WriteStatus.GOOD)


class WriteRefused(Exception):
    """Raised by an adapter's write handler; carries the status to ack with."""

    def __init__(self, status: WriteStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def command_topic(device: str) -> str:
    return f"command/{device}"


def ack_topic(device: str) -> str:
    return f"ack/{device}"


class RateLimiter:
    """Token bucket per point: ``rate`` writes per second, bursts of up to ``rate``."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        tokens, last = self._tokens.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._tokens[key] = (tokens, now)
            return False
        self._tokens[key] = (tokens - 1.0, now)
        return True


@dataclass
class WriteCounters:
    attempted: int = 0
    succeeded: int = 0
    refused: dict[str, int] = field(default_factory=dict)


NUMERIC_TYPES = frozenset(
    {"int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}
)


def value_problem(datatype: str, value: object) -> str | None:
    """Why ``value`` cannot be written to a point of ``datatype``, or None when its kind fits
    (a number for the numeric types, true/false or 0/1 for bool, a string for string). The
    range is the router's next check; the width of an integer type is the device's.

    `CommandRouter.check` applies this to every write (and so to ``gateway shadow set``),
    so a value of the wrong kind is refused before it reaches a device adapter."""
    if datatype == "bool":
        if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
            return None
        return f"bool takes true or false (or 0/1), got {_kind(value)}"
    if datatype == "string":
        return None if isinstance(value, str) else f"string needs a string, got {_kind(value)}"
    if isinstance(value, bool):
        return f"{datatype} takes a number, not a bool"
    if datatype in NUMERIC_TYPES and not isinstance(value, (int, float)):
        return f"{datatype} needs a number, got {_kind(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    return None


def _kind(value: object) -> str:
    """``value`` as a message names it: ``the string 'fast'``, ``the list [1, 2]``."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return f"the list {value!r}"
    if isinstance(value, dict):
        return f"the object {value!r}"
    return repr(value)


class CommandRouter:
    """Checks writes against the points' declarations and routes them to the device adapters."""

    def __init__(self, bus: Bus, *, timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
        self.bus = bus
        self.timeout = timeout
        self.points: dict[tuple[str, str], PointSpec] = {}
        self.limiters: dict[tuple[str, str], RateLimiter] = {}
        self.counters = WriteCounters()
        self._pending: dict[str, asyncio.Future[WriteResult]] = {}
        self._acks: Subscription | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._on_declare: list[Callable[[str], None]] = []

    def on_declare(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(device)`` when a device's points are declared again: a source that
        learns a point's type once connected (an OPC UA device) re-declares it, and the server
        targets built at start take the new type."""
        self._on_declare.append(callback)

    def declare(self, device: str, points: list[PointSpec]) -> None:
        for p in points:
            self.points[(device, p.name)] = p
            if p.access.writable:
                rate = DEFAULT_WRITE_RATE if p.write_rate is None else p.write_rate
                self.limiters[(device, p.name)] = RateLimiter(rate)
        for callback in self._on_declare:
            try:
                callback(device)
            except Exception:  # a target's bug must not stop the source declaring
                log.exception("after %s declared its points", device)

    def forget(self, device: str, owner: object) -> None:
        """A reload stopped ``device`` (its adapter ``owner``): its points are no longer
        declared, and the callbacks its adapter registered (bound methods of ``owner``) are
        not called again; a new start of it declares and registers afresh."""
        for key in [k for k in self.points if k[0] == device]:
            del self.points[key]
            self.limiters.pop(key, None)
        self._on_declare = [
            c for c in self._on_declare if getattr(c, "__self__", None) is not owner
        ]

    def check(self, device: str, point: str, value: Value) -> WriteResult:
        """The safety rules, without writing: what `write` would refuse, and why."""
        spec = self.points.get((device, point))
        if spec is None:
            return WriteResult(WriteStatus.UNKNOWN_POINT, f"{device} has no point {point!r}")
        if not spec.access.writable:
            return WriteResult(WriteStatus.NOT_WRITABLE, f"{device}/{point} is not writable")
        problem = value_problem(spec.datatype, value)
        if problem is not None:
            return WriteResult(WriteStatus.BAD_VALUE, f"{device}/{point}: {problem}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # In the device's unit, said so: a bridge may have converted the writer's value.
            unit = f" {spec.unit}" if spec.unit else ""
            shown = f"{value:.6g}{unit}" if isinstance(value, float) else f"{value}{unit}"
            if spec.low is not None and value < spec.low:
                return WriteResult(
                    WriteStatus.OUT_OF_RANGE,
                    f"{shown} is below {device}/{point}'s low {spec.low}{unit}",
                )
            if spec.high is not None and value > spec.high:
                return WriteResult(
                    WriteStatus.OUT_OF_RANGE,
                    f"{shown} is above {device}/{point}'s high {spec.high}{unit}",
                )
        return GOOD

    async def write(
        self,
        device: str,
        point: str,
        value: Value,
        *,
        origin: str,
        ack_timeout: float | None = None,
    ) -> WriteResult:
        self.counters.attempted += 1
        result = self.check(device, point, value)
        if result.ok and not self.limiters[(device, point)].allow(point):
            result = WriteResult(
                WriteStatus.RATE_LIMITED,
                f"{device}/{point} allows {self.limiters[(device, point)].rate:g} writes/s",
            )
        if result.ok:
            result = await self._round_trip(
                device, point, value, origin, ack_timeout or self.timeout
            )
        self._count(result)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(
            level,
            "write %s/%s = %r from %s: %s%s",
            device,
            point,
            value,
            origin,
            result.status,
            f" ({result.reason})" if result.reason else "",
        )
        return result

    def _count(self, result: WriteResult) -> None:
        if result.ok:
            self.counters.succeeded += 1
        else:
            refused = self.counters.refused
            refused[result.status] = refused.get(result.status, 0) + 1

    async def _round_trip(
        self, device: str, point: str, value: Value, origin: str, ack_timeout: float
    ) -> WriteResult:
        self._ensure_ack_listener()
        cid = new_correlation_id()
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        message = Message(
            topic=command_topic(device),
            kind=MessageKind.COMMAND,
            samples=(Sample.now(point, value),),
            origin=origin,
            seq=next_sequence(origin),
            correlation_id=cid,
            device=device,
            # The device side drops a command it gets after this: the caller has been told
            # "timeout" by then, and a write applied later would be a surprise.
            meta={"deadline": time.time() + ack_timeout},
        )
        try:
            if self.bus.publish_nowait(message) == 0:
                return WriteResult(WriteStatus.UNREACHABLE, f"no adapter takes writes for {device}")
            return await asyncio.wait_for(future, ack_timeout)
        except TimeoutError:
            return WriteResult(
                WriteStatus.TIMEOUT, f"{device} did not acknowledge in {ack_timeout:g} s"
            )
        finally:
            self._pending.pop(cid, None)

    def _ensure_ack_listener(self) -> None:
        if self._ack_task is None or self._ack_task.done():
            self._acks = self.bus.subscribe("ack/#", maxsize=10000, name="command-router:acks")
            self._ack_task = asyncio.get_running_loop().create_task(self._listen(self._acks))

    async def _listen(self, acks: Subscription) -> None:
        async for message in acks:
            future = self._pending.get(message.correlation_id or "")
            if future is not None and not future.done():
                status = WriteStatus(message.meta.get("status", WriteStatus.DEVICE_ERROR))
                future.set_result(WriteResult(status, str(message.meta.get("reason", ""))))

    def close(self) -> None:
        if self._acks is not None:
            self._acks.close()
        if self._ack_task is not None:
            self._ack_task.cancel()

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {"attempted": c.attempted, "succeeded": c.succeeded, "refused": dict(c.refused)}


async def serve_commands(
    bus: Bus,
    device: str,
    write: Callable[[str, Value], Awaitable[None]],
) -> None:
    """Run a device adapter's write handler for every command addressed to ``device``.

    ``write`` raises `WriteRefused` (or any exception, acked as a device error) on failure.
    Commands are executed one at a time, in order.
    """
    with bus.subscribe(command_topic(device), maxsize=1000, name=f"commands:{device}") as sub:
        async for command in sub:
            deadline = command.meta.get("deadline")
            for sample in command.samples:
                try:
                    if deadline is not None and time.time() > deadline:
                        raise WriteRefused(
                            WriteStatus.TIMEOUT, "expired while waiting for the device; not written"
                        )
                    await write(sample.point, sample.value)
                    status, reason = WriteStatus.GOOD, ""
                except WriteRefused as exc:
                    status, reason = exc.status, exc.reason
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a handler bug must not stop the command loop
                    log.exception("%s: write of %s failed", device, sample.point)
                    status, reason = WriteStatus.DEVICE_ERROR, str(exc) or type(exc).__name__
                bus.publish_nowait(
                    Message(
                        topic=ack_topic(device),
                        kind=MessageKind.ACK,
                        samples=(Sample.now(sample.point, sample.value),),
                        origin=device,
                        seq=next_sequence(device),
                        correlation_id=command.correlation_id,
                        device=device,
                        meta={"status": status, "reason": reason},
                    )
                )
