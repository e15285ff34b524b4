"""Modbus gateway pass-through: the requests of a Modbus server's ``passthrough`` unit ids go, as
they are, to a Modbus client device of the same gateway, which sends them on its own connection or
serial line; its answer (or exception) goes back to the client with the client's transaction id.
A SCADA or an engineering tool reaches any register of the devices behind the gateway (to
commission a meter, to read what nobody mapped) as through a Modbus TCP to RTU gateway.

Bounded and safe:

* read-only by default: functions 01-04 are forwarded; the writes (05, 06, 15, 16, 22, 23) get
  exception 01 and reach nothing unless the entry has ``writable: true``, and then each is logged
  (who, what) and counted: they bypass the write rules of the points. Anything else gets 01
  (diagnostics, file records, 43/14: pymodbus cannot give its answer back byte for byte), and a
  request that `frames.parse_request` refuses gets its 01 or 03 here, not from the device;
* one pass-through request at a time per device (`Forwarding.lock`) contends for the device's
  connection with its polls (`ModbusClientAdapter._io_lock`, first come first served), so a poll
  waits for at most one of them; at most ``max_queued`` wait at once, the next gets 06 (busy);
* the exceptions a gateway answers itself (Modbus application protocol v1.1b3, section 7): 0B
  (gateway target device failed to respond) when the device did not answer in its ``timeout``
  (or answered something else: a late answer on RTU); 0A (gateway path unavailable: no path
  from the input port to the output port) when the device's connection or serial port is down,
  or its adapter is not running.

The server finds the client adapter by name among the running adapters of its gateway
(`serve_line`, `line_of`: the adapters share one `AdapterContext`), at each request, so a device
restarted by a reload is found again. This module imports no Modbus library: the server role
must not need pymodbus, whose client does the I/O in `ModbusClientAdapter.forward`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.adapter import AdapterContext
from protocols.modbus.frames import (
    ExceptionCode,
    Frame,
    FunctionCode,
    ModbusError,
    exception_pdu,
    parse_request,
)
from protocols.modbus.rtu import RtuFrame
from protocols.modbus.server_config import Passthrough

log = logging.getLogger(__name__)

READS = frozenset(f for f in FunctionCode if f <= FunctionCode.READ_INPUT_REGISTERS)  # 01-04
# 05, 06, 15, 16, 22 and 23: the rest but 43 (its 43/14 answer pymodbus re-encodes wrongly)
WRITES = frozenset(FunctionCode) - READS - {FunctionCode.ENCAPSULATED_INTERFACE}


class Unanswered(Exception):
    """The device's answer cannot be given: ``code`` is the exception the gateway answers."""

    def __init__(self, code: ExceptionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Line(Protocol):
    """What the server forwards through: `ModbusClientAdapter.forward`."""

    async def forward(self, unit: int, pdu: bytes, max_queued: int) -> bytes: ...


_LINES: weakref.WeakKeyDictionary[AdapterContext, dict[str, Line]] = weakref.WeakKeyDictionary()


@contextmanager
def serve_line(context: AdapterContext, name: str, line: Line) -> Iterator[None]:
    """While inside, ``line`` is device ``name``'s for the servers of ``context``'s gateway."""
    lines = _LINES.setdefault(context, {})
    lines[name] = line
    try:
        yield
    finally:
        if lines.get(name) is line:  # not a newer adapter of the same name (a reload)
            del lines[name]


def line_of(context: AdapterContext, name: str) -> Line | None:
    return _LINES.get(context, {}).get(name)


@dataclass
class Forwarding:
    """A client device's side: one pass-through request at a time, at most ``max_queued``
    waiting, and the counts of its status."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: int = 0  # waiting for the lock, or holding it
    requests: int = 0  # sent to the device
    busy: int = 0  # refused with 06: too many queued
    errors: int = 0  # no answer (0B) or no connection (0A)

    @contextmanager
    def place(self, max_queued: int) -> Iterator[None]:
        """A place in the queue, or `Unanswered` (06) when ``max_queued`` wait already."""
        if self.queued >= max_queued:
            self.busy += 1
            raise Unanswered(ExceptionCode.SERVER_DEVICE_BUSY, f"{self.queued} queued")
        self.queued += 1
        try:
            yield
        finally:
            self.queued -= 1

    def status(self) -> dict[str, int]:
        return {
            "passthrough_requests": self.requests,
            "passthrough_queued": self.queued,
            "passthrough_busy": self.busy,
            "passthrough_errors": self.errors,
        }


@dataclass
class Counters:
    """A server's pass-through counts (`Gateway.status`)."""

    requests: int = 0  # forwarded
    writes: int = 0  # forwarded writes (writable: true)
    refused: int = 0  # not forwarded: a write (read-only), another function, a bad count
    busy: int = 0  # 06: the device's queue was full
    errors: int = 0  # 0A or 0B: the device did not answer, or cannot be reached


class Passthroughs:
    """A server's ``passthrough`` entries by unit id: what `ModbusServerAdapter.handle` asks
    for the requests of those unit ids."""

    def __init__(self, server: str, entries: list[Passthrough], context: AdapterContext) -> None:
        self.server = server
        self.context = context
        self.by_unit = {u: entry for entry in entries for u in entry.unit_ids}
        self.counters = Counters()

    def handle(
        self, entry: Passthrough, frame: Frame | RtuFrame, origin: str
    ) -> bytes | Coroutine[Any, Any, bytes]:
        """The answer to ``frame`` (a request for a unit id of ``entry``): refused at once, or a
        coroutine that forwards it and returns the device's answer."""
        function = frame.function
        if function not in READS and not (entry.writable and function in WRITES):
            self.counters.refused += 1
            return frame.reply(exception_pdu(function, ExceptionCode.ILLEGAL_FUNCTION))
        try:
            parse_request(frame.pdu)  # a count out of bounds: 03 from here, as a device says
        except ModbusError as exc:
            self.counters.refused += 1
            return frame.reply(exception_pdu(function, exc.code))
        if function in WRITES:
            self.counters.writes += 1
            log.info(
                "%s: pass-through write from %s to %s unit %d: function %d, %s",
                self.server,
                origin,
                entry.device,
                frame.unit_id,
                function,
                frame.pdu[1:].hex(" "),
            )
        return self._forward(entry, frame)

    async def _forward(self, entry: Passthrough, frame: Frame | RtuFrame) -> bytes:
        self.counters.requests += 1
        line = line_of(self.context, entry.device)
        try:
            if line is None:
                raise Unanswered(
                    ExceptionCode.GATEWAY_PATH_UNAVAILABLE, f"device {entry.device} is not running"
                )
            pdu = await line.forward(frame.unit_id, frame.pdu, entry.max_queued)
        except Unanswered as exc:
            if exc.code == ExceptionCode.SERVER_DEVICE_BUSY:
                self.counters.busy += 1
            else:
                self.counters.errors += 1
            return frame.reply(exception_pdu(frame.function, exc.code))
        return frame.reply(pdu)

    def status(self) -> dict[str, int]:
        c = self.counters
        return {
            "passthrough_requests": c.requests,
            "passthrough_writes": c.writes,
            "passthrough_refused": c.refused,
            "passthrough_busy": c.busy,
            "passthrough_errors": c.errors,
        }
