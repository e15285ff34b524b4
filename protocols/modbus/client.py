"""Modbus client adapter: polls one device (one TCP connection or one serial line, any unit ids
behind it).

Each poll group runs on its own fixed-rate schedule and reads the fewest requests the planner can
make. Failures stay local: a timeout or exception marks only the points of that request bad; a lost
connection marks every point of the device bad once and reconnects with capped, jittered
exponential backoff. Nothing here can delay another device: every device has its own tasks and
every request its own timeout.

``framing: rtu`` speaks raw RTU frames (unit id, PDU, CRC16) to a serial-to-Ethernet converter in
front of an RS-485 bus. RTU has no transaction id, so an answer is matched to the one request
outstanding: `_io_lock` keeps it to one per connection (polls, writes and read-backs alike), and a
unit that timed out is not asked again until `timeout` more seconds have passed, so a late answer
to it lands while nothing of that unit waits and is dropped (answers of other units are told apart
by their unit id). One dead unit costs one timeout per window, not one per request, and does not
reconnect the converter while any other unit answers (see `_unanswered`).

``serial:`` speaks RTU on a local serial line (`protocols.modbus.serial_master`: the serial
line's timing, same client API), with every rule above; "connected" is then the port open, and a
port that cannot be opened or disappears (a USB adapter unplugged) is retried like a connection.

Writes: one register with FC 06 and one coil with FC 05, or FC 16 / FC 15 carrying one value
(``write_multiple``) for devices that implement only those; a device answering FC 06 / FC 05 with
exception 01 gets the write again with FC 16 / FC 15, remembered (`WRITE_FALLBACK`). A bit of a
register is read, changed and written back, or with ``bit_write: mask`` set by FC 22 in the
device, which alone cannot lose a change the device makes to another bit meanwhile. Both framings
write alike.

Pass-through (`forward`, `protocols.modbus.passthrough`): a Modbus server of the gateway sends
requests of its ``passthrough`` unit ids through this device's connection, as they are, one at a
time between the polls (`_io_lock`, as a write), and gets the device's answer back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import DecodePDU, ModbusPDU

from gateway.adapter import Adapter, AdapterContext, raise_if_cancelling
from gateway.backoff import BackoffTimer
from gateway.commands import WriteRefused, WriteStatus, serve_commands
from gateway.limits import Limits
from gateway.text import counted
from gateway.transform import DeadbandFilter, Scaling
from gateway.types import Message, PointSpec, Quality, Sample
from protocols.modbus.codec import (
    ByteOrder,
    CodecError,
    DataType,
    Table,
    decoder,
    encode,
    set_bit,
)
from protocols.modbus.config import Framing, ModbusDevice, ModbusPoint
from protocols.modbus.frames import ExceptionCode, FunctionCode
from protocols.modbus.passthrough import Forwarding, Unanswered, serve_line
from protocols.modbus.planner import ReadItem, ReadRequest, plan_reads
from protocols.modbus.serial_master import SerialRtuClient

log = logging.getLogger(__name__)
# pymodbus logs every failed connect and retry itself; this adapter reports them once, with the
# device name, so the library's own lines would only repeat ours.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
# Consecutive timeouts after which the connection is considered dead and re-opened: a single
# slow answer is not worth a reconnect, a silent peer is. With framing rtu the last request of
# every unit id must have timed out too: behind a converter one unit that is off or misaddressed
# times out while the link works, and a reconnect would only take the live units' points Bad.
TIMEOUTS_BEFORE_RECONNECT = 3
FRAMERS: dict[Framing, FramerType] = {"tcp": FramerType.SOCKET, "rtu": FramerType.RTU}
# The function of each table's read: an answer of another function answers another request.
READ_FUNCTION = {
    Table.HOLDING: FunctionCode.READ_HOLDING_REGISTERS,
    Table.INPUT: FunctionCode.READ_INPUT_REGISTERS,
    Table.COIL: FunctionCode.READ_COILS,
    Table.DISCRETE: FunctionCode.READ_DISCRETE_INPUTS,
}
# Seconds between reads of a point the device refuses (exception 02), each on its own: a device
# whose map grows (a firmware update) serves it again. A reconnect retries at once too.
REFUSED_RETRY_S = 60.0
# A device that answers a single-value write with exception 01 (illegal function) did nothing, so
# the write is safe to send again, once, with the multiple-value function carrying one value:
# many PLCs and meters implement only those. Not FC 22 (mask write): read-modify-write instead
# would give up the atomicity that `bit_write: mask` was chosen for.
WRITE_FALLBACK = {
    FunctionCode.WRITE_SINGLE_REGISTER: FunctionCode.WRITE_MULTIPLE_REGISTERS,
    FunctionCode.WRITE_SINGLE_COIL: FunctionCode.WRITE_MULTIPLE_COILS,
}
ILLEGAL_FUNCTION = 1
# Refused points named in the log, per device; then one line: a wrong unit id or table can make
# every point of a device refused, and hundreds of warnings would bury the one cause.
REFUSALS_LOGGED = 5
# Pass-through request PDUs, as pymodbus's client sends them (`ModbusClientAdapter.forward`).
_REQUESTS = DecodePDU(is_server=True)
# What the adapter talks through: pymodbus's TCP client, or the serial line's master; both have
# pymodbus's client API.
Client = AsyncModbusTcpClient | SerialRtuClient


class _LatePolls:
    """Says in the log that a poll group misses ticks: at its first miss, then at most once a
    minute with the count since the last line, and once it has kept time for a minute."""

    EVERY = 60.0

    def __init__(self, device: str, group: str, interval: float) -> None:
        self.what = f"device {device}: poll group {group} (every {interval:g} s)"
        self.logged_at: float | None = None  # loop time of the last line; None: keeping time
        self.last_miss = 0.0
        self.since = 0  # missed ticks not yet logged

    def missed(self, n: int, now: float) -> None:
        self.last_miss = now
        if self.logged_at is None:
            log.warning(
                "%s is late: %s skipped (a poll took longer than the interval: the device "
                "answers slowly or the gateway is overloaded; readings are taken less often)",
                self.what,
                counted(n, "tick"),
            )
            self.logged_at, self.since = now, 0
            return
        self.since += n
        if now - self.logged_at >= self.EVERY:
            self._flush(now)

    def on_time(self, now: float) -> None:
        if self.logged_at is not None and now - self.last_miss >= self.EVERY:
            self._flush(now)
            log.warning("%s keeps time again", self.what)
            self.logged_at = None

    def _flush(self, now: float) -> None:
        assert self.logged_at is not None
        if self.since:
            log.warning(
                "%s: %s skipped in the last %.0f s",
                self.what,
                counted(self.since, "more tick"),
                now - self.logged_at,
            )
        self.logged_at, self.since = now, 0


def exception_reason(code: int) -> str:
    return f"exception {code:02d} ({EXCEPTION_NAMES.get(code, 'unknown')})"


def _fc(function: int) -> str:
    return f"FC {function:02d}"


# The one exception that is about addresses: 03, 04 and timeouts say nothing about which point.
ADDRESS_REFUSED = exception_reason(2)

_Request = ReadRequest[ReadItem]
# One request's outcome: its registers or bits, or None and why.
_Outcome = tuple[_Request, Sequence[Any] | None, str | None]


@dataclass
class _Group:
    """One poll group: its points, the requests it reads them with, and the points the device
    refuses (read apart, each with its own one-point request, every `REFUSED_RETRY_S`)."""

    items: list[ReadItem]
    plan: list[_Request]
    refused: dict[int, _Request] = field(default_factory=dict)  # point index -> its request
    retry_at: float = 0.0  # loop time of the next read of the refused points
    fresh: set[int] = field(default_factory=set)  # refused by this poll: said once already


def _covering(req: _Request, items: Sequence[ReadItem]) -> _Request:
    """A request like ``req`` for a subset of its items (which fit, since all of them did)."""
    start = items[0].address  # items are sorted by address
    end = max(it.address + it.count for it in items)
    return ReadRequest(req.unit, req.table, start, end - start, tuple(items))


def _wrong_function(rr: ModbusPDU, function: int, what: str) -> str | None:
    """Why ``rr`` cannot answer a ``what`` ("read", "write") of ``function``, or None: on RTU a
    late answer to an earlier request of the same unit would otherwise pass for this one's."""
    got = rr.function_code & 0x7F
    if got != function:
        return f"wrong answer (function {got} to a {what} of function {function})"
    return None


def _mismatch(rr: ModbusPDU, req: _Request) -> str | None:
    """Why ``rr`` cannot be the answer to read ``req``, or None (see `_wrong_function`)."""
    wrong = _wrong_function(rr, READ_FUNCTION[req.table], "read")
    if wrong is not None:
        return wrong
    if rr.isError():
        return None
    if req.table.is_bit:
        got, want = len(rr.bits), -(-req.count // 8) * 8  # bits come in whole bytes
    else:
        got, want = len(rr.registers), req.count
    if got != want:
        return f"wrong answer ({got} values to a read of {req.count})"
    return None


def _refused_at(req: _Request) -> str:
    last = req.address + req.count - 1
    where = f"{req.address}" if req.count == 1 else f"{req.address}..{last}"
    return f"{ADDRESS_REFUSED} at {req.table} {where}"


class ModbusWriteError(WriteRefused):
    """A write was refused by the device or could not be delivered."""


@dataclass
class _Point:
    config: ModbusPoint
    unit: int
    order: ByteOrder
    scaling: Scaling
    deadband: DeadbandFilter
    always: bool  # publish every poll, not only changes
    limits: Limits | None  # low..high check of readings; None: nothing to check
    write_multiple: bool  # one register or coil with FC 16 / FC 15
    mask: bool  # a bit with FC 22 (bit_write: mask)
    _decode: Callable[[Sequence[int]], bool | int | float | str] = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        # Built once: decoding runs for every point of every poll.
        self._decode = decoder(cfg.dtype, self.order, bit=cfg.bit, length=cfg.length)
        self._numeric = cfg.dtype not in (DataType.BOOL, DataType.STRING)

    def decode(self, raw: Sequence[Any]) -> bool | int | float | str:
        if self.config.table.is_bit:
            return bool(raw[0])
        value = self._decode(raw)
        if self._numeric:
            return self.scaling.apply(value)  # type: ignore[arg-type]
        return value


class ModbusClientAdapter(Adapter):
    config: ModbusDevice

    def __init__(self, name: str, config: ModbusDevice, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self._points: list[_Point] = []
        for p in config.points:
            span = None if p.low is None or p.high is None else p.high - p.low
            db = p.deadband
            self._points.append(
                _Point(
                    p,
                    config.unit_of(p),
                    config.order_of(p),
                    Scaling(p.scale, p.offset),
                    DeadbandFilter(db.absolute if db else None, db.percent if db else None, span),
                    config.publish_of(p) == "always",
                    Limits.of(p),
                    config.write_multiple_of(p),
                    config.bit_write_of(p) == "mask",
                )
            )
        self._by_name = {p.config.name: p for p in self._points}
        self._groups: dict[str, _Group] = {}
        self._refusals_said = 0
        for group in config.poll_groups:
            items = [
                ReadItem(p.unit, p.config.table, p.config.address, p.config.count, i)
                for i, p in enumerate(self._points)
                if p.config.poll == group
            ]
            if items:
                self._groups[group] = _Group(items, self._plan(items))
        # One-request plans to read a point back right after writing it.
        self._readback = {
            p.config.name: plan_reads(
                [ReadItem(p.unit, p.config.table, p.config.address, p.config.count, i)],
                max_gap=0,
            )
            for i, p in enumerate(self._points)
            if p.config.writable
        }
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._timeouts = 0
        self._silent = False  # the last request timed out (kept across reconnects)
        self._rtu = config.rtu
        self._units = frozenset(p.unit for p in self._points)
        self._silent_units: set[int] = set()  # whose last request timed out
        # rtu: unit -> (loop time, reason): not asked before then, its reads are Bad for reason
        self._resting: dict[int, tuple[float, str]] = {}
        # Why the connection was dropped: the points of the requests still to come in the same
        # poll report this cause ("timeout"), not a vague "not connected".
        self._down_reason = "not connected"
        self._io_lock = asyncio.Lock()
        self.counters = {
            "polls": 0,
            "polls_missed": 0,  # ticks of a poll group's schedule skipped because it was late
            "requests": 0,
            "errors": 0,
            "timeouts": 0,
            "reconnects": 0,
            "samples": 0,
            "writes": 0,
        }
        self.last_error: str | None = None
        self.forwarding = Forwarding()  # a Modbus server's pass-through requests (`forward`)
        # Single-write functions the device refused with exception 01 while their multiple-write
        # function took the same write: not sent again (see `_write_one`).
        self._fallen_back: set[FunctionCode] = set()

    # -- metadata -------------------------------------------------------------------------

    def points(self) -> list[PointSpec]:
        return [PointSpec.of(self.name, p.config, self._engineering_type(p)) for p in self._points]

    @staticmethod
    def _engineering_type(p: _Point) -> str:
        """The type of the published value: a scaled integer register carries a float."""
        if p._numeric and (p.config.scale != 1 or p.config.offset != 0):
            return "float64" if p.config.dtype is not DataType.FLOAT32 else "float32"
        return str(p.config.dtype)

    def _plan(self, items: Sequence[ReadItem]) -> list[_Request]:
        cfg = self.config
        return plan_reads(
            items, max_gap=cfg.max_gap, max_registers=cfg.max_registers, max_bits=cfg.max_bits
        )

    def requests_per_poll(self) -> dict[str, int]:
        """Requests of each group's plan (the refused points' own reads, when due, apart)."""
        return {group: len(g.plan) for group, g in self._groups.items()}

    def status(self) -> dict[str, Any]:
        # Connected means answering: a frozen device still accepts TCP connections (its
        # kernel does), so between reconnects it looked up while every request timed out.
        # A timeout counts until the next answer, across reconnects.
        refused = [
            f"{self._points[i].config.name} ({r.table} {r.address} unit {r.unit})"
            for g in self._groups.values()
            for i, r in g.refused.items()
        ]
        return {
            "connected": self._connected.is_set() and not self._unanswered(),
            "framing": "rtu" if self._rtu else "tcp",
            "silent_units": sorted(self._silent_units),  # whose last request timed out
            "last_error": self.last_error,
            **self.counters,
            "points_refused": len(refused),  # whose address the device refuses (exception 02)
            "refused_points": sorted(refused),
            # what the device refused with exception 01 and is written with instead
            "write_fallbacks": [
                f"{_fc(single)} -> {_fc(WRITE_FALLBACK[single])}"
                for single in sorted(self._fallen_back)
            ],
            **self.forwarding.status(),
        }

    # -- lifecycle ------------------------------------------------------------------------

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._connected.clear()

    async def run(self) -> None:
        with serve_line(self.context, self.name, self):
            await self._run()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_connected())
            if self._readback:
                tg.create_task(serve_commands(self.bus, self.name, self.write_and_read_back))
            for group in self._groups:
                interval = self.config.poll_groups[group].interval
                tg.create_task(self._poll_forever(group, interval))

    async def _keep_connected(self) -> None:
        cfg = self.config
        backoff = BackoffTimer(cfg.reconnect)
        first = True
        while True:
            client = self._new_client()
            try:
                ok = await asyncio.wait_for(client.connect(), cfg.timeout + 1)
            except (TimeoutError, OSError, ModbusException) as exc:
                ok = False
                self.last_error = f"connect failed: {exc}"
            raise_if_cancelling()
            if not ok:
                client.close()
                if isinstance(client, SerialRtuClient):
                    self.last_error = client.last_error
                self.last_error = self.last_error or "connect failed"
                await self._mark_all_bad("unreachable")
                delay = backoff.next_delay()
                if first:
                    if isinstance(client, SerialRtuClient):  # a box's own port: an error
                        log.error("%s: %s; retrying with backoff", self.name, self.last_error)
                    else:
                        log.warning(
                            "%s: cannot connect to %s; retrying with backoff", self.name, cfg.where
                        )
                    first = False
                await asyncio.sleep(delay)
                self.counters["reconnects"] += 1
                continue
            if not first:
                log.info("%s: connected to %s", self.name, cfg.where)
            first = False
            backoff.reset()
            self._client = client
            self._timeouts = 0
            self._down_reason = "not connected"
            self._lost.clear()
            for g in self._groups.values():
                g.retry_at = 0.0  # a reconnect may follow a firmware update: ask again now
                self._replan(g)  # what a refused read split apart, merged again
            self._refusals_said = 0
            self._connected.set()
            await self._watch(client)
            log.warning("%s: connection lost (%s); reconnecting", self.name, self.last_error)
            first = True
            self._close()
            await self._mark_all_bad("connection lost")

    def _new_client(self) -> Client:
        cfg = self.config
        if cfg.serial is not None:
            return SerialRtuClient(cfg.serial, cfg.timeout)
        assert cfg.host is not None  # ModbusDevice.check: host or serial
        client = AsyncModbusTcpClient(
            cfg.host,
            framer=FRAMERS[cfg.framing],
            port=cfg.port,
            timeout=cfg.timeout,
            retries=0,
            reconnect_delay=0,  # reconnecting is ours, with jitter and a cap
            name=self.name,
        )
        # pymodbus drops the connection itself after a few requests in a row go unanswered,
        # one dead RTU unit's included: when to reconnect is decided here (`_unanswered`).
        client.set_max_no_responses(sys.maxsize)
        return client

    async def _watch(self, client: Client) -> None:
        """Until the connection is lost: a failed request says so, and so does a device that
        closes it between polls (noticed within a second, not at the next slow poll), or a
        serial port that disappears (a USB adapter unplugged)."""
        while not self._lost.is_set():
            try:
                await asyncio.wait_for(self._lost.wait(), 1.0)
            except TimeoutError:
                if not client.connected:
                    if isinstance(client, SerialRtuClient):
                        self._down_reason = client.last_error or "serial port closed"
                    else:
                        self._down_reason = "connection closed by the device"
                    self.last_error = self._down_reason
                    self._connected.clear()
                    self._lost.set()

    async def points_lost(self, reason: str) -> None:
        """``run()`` failed (the runtime restarts it): every point Bad, through the deadband,
        so the first reading after the restart is sent even if unchanged."""
        await self._mark_all_bad(reason)

    async def _mark_all_bad(self, reason: str) -> None:
        now = time.time()
        samples = []
        for p in self._points:
            if p.deadband.accept(None, Quality.BAD):
                samples.append(
                    Sample(p.config.name, None, Quality.BAD, now, now, p.config.unit, reason)
                )
        if samples:
            await self.bus.publish(Message.telemetry(self.name, tuple(samples)))

    # -- polling --------------------------------------------------------------------------

    async def _poll_forever(self, group: str, interval: float) -> None:
        g = self._groups[group]
        loop = asyncio.get_running_loop()
        # The first poll runs at once; the schedule after it gets a random phase, so that
        # hundreds of devices with one interval spread over it instead of all polling, and all
        # publishing, in the same millisecond every period.
        next_t = loop.time() - random.uniform(0, interval)
        late = _LatePolls(self.name, group, interval)
        first = True
        while True:
            # Ticks that pass while the connection is down (reconnecting) are not late polls:
            # the points are Bad then. A device that answers slowly or times out makes them.
            counts = self._connected.is_set() and not first
            await self._connected.wait()
            samples = await self.poll(g.plan)  # g.plan changes when points are refused
            if g.refused:
                samples += await self._poll_refused(g)
            raise_if_cancelling()
            self.counters["polls"] += 1
            if samples:
                self.counters["samples"] += len(samples)
                await self.bus.publish(Message.telemetry(self.name, tuple(samples)))
            # Fixed rate: a late poll does not shift the schedule, missed ticks are skipped
            # (counted and logged: a reading never taken is lost without any other trace).
            next_t += interval
            now = loop.time()
            if next_t < now:
                missed = int((now - next_t) // interval) + 1
                next_t += missed * interval
                if counts:
                    self.counters["polls_missed"] += missed
                    late.missed(missed, now)
            else:
                late.on_time(now)
            first = False
            await asyncio.sleep(next_t - now)

    async def poll(self, plan: list[_Request]) -> list[Sample]:
        """Read every request of ``plan``; returns the samples that pass their deadband."""
        out: list[Sample] = []
        for req in plan:
            values, reason = await self._read(req)
            raise_if_cancelling()
            if values is None and reason == ADDRESS_REFUSED:  # tested only on a failed read
                for outcome in await self._sort_out(req):
                    self._samples(*outcome, out)
                continue
            self._samples(req, values, reason, out)
        return out

    def _samples(
        self, req: _Request, values: Sequence[Any] | None, reason: str | None, out: list[Sample]
    ) -> None:
        """Decode the items of ``req`` and append those that pass their deadband to ``out``."""
        now = time.time()
        for item in req.items:
            p = self._points[cast(int, item.key)]
            why: str | None
            if values is None:
                value, quality, why = None, Quality.BAD, reason
            else:
                try:
                    value = p.decode(req.slice(values, item))
                    quality, why = Quality.GOOD, None
                    if p.limits is not None:
                        quality, why = p.limits.check(value, quality, why)
                except CodecError as exc:
                    value, quality, why = None, Quality.BAD, f"decode: {exc}"
            # The filter runs even for "always" points so it tracks the last value sent;
            # after the range check, so that a change of quality alone is sent.
            if p.deadband.accept(value, quality) or p.always:
                out.append(Sample(p.config.name, value, quality, now, now, p.config.unit, why))

    # -- points the device refuses (exception 02) -----------------------------------------

    async def _sort_out(self, req: _Request) -> list[_Outcome]:
        """``req`` got exception 02: find the points the device refuses by bisecting it, so that
        one bad address (a typo, a gap in the device's map) takes only its own point Bad. The
        refused points leave their group's plan, which reads the rest in the parts that worked
        (not re-merged until a reconnect: the gap between two of them may be what the device
        refuses). Only a request of a group's plan changes it, and only when every part either
        read or was refused: a read-back is one Bad sample, and a part lost to a timeout or the
        connection leaves the plan as it was for the next poll to ask again."""
        outcomes = await self._bisect(req)
        g = self._group_of(req)
        settled = all(v is not None or why == ADDRESS_REFUSED for _, v, why in outcomes)
        kept: list[_Request] = []
        refused = 0
        for i, (part, values, reason) in enumerate(outcomes):
            if reason == ADDRESS_REFUSED:  # a single point: _bisect splits all others
                outcomes[i] = (part, values, _refused_at(part))
                if g is not None and settled:
                    self._refuse(g, part)
                    refused += 1
            else:
                kept.append(part)
        if g is None or not settled:
            return outcomes
        at = next(i for i, r in enumerate(g.plan) if r is req)
        g.plan = g.plan[:at] + kept + g.plan[at + 1 :]  # a new list: a poll may be iterating it
        if len(req.items) > 1 and not refused:
            log.warning(
                "%s: %s %s+%s unit %s is refused as one read (%s) though each of its points "
                "reads: a gap in the device's map? now read as %s until the next reconnect",
                self.name,
                req.table,
                req.address,
                req.count,
                req.unit,
                ADDRESS_REFUSED,
                counted(len(kept), "request"),
            )
        return outcomes

    async def _bisect(self, req: _Request) -> list[_Outcome]:
        """The outcomes of reading the halves of refused ``req``, halved again while refused;
        about 2 log2(n) requests for one refused point among n, once."""
        if len(req.items) == 1:
            return [(req, None, ADDRESS_REFUSED)]
        outcomes: list[_Outcome] = []
        mid = len(req.items) // 2
        for half in (req.items[:mid], req.items[mid:]):
            part = _covering(req, half)
            values, reason = await self._read(part)
            raise_if_cancelling()
            if reason == ADDRESS_REFUSED and len(half) > 1:
                outcomes += await self._bisect(part)
            else:
                outcomes.append((part, values, reason))
        return outcomes

    def _group_of(self, req: _Request) -> _Group | None:
        """The poll group whose plan holds ``req``; None for a read-back, or a request a
        concurrent poll already replaced."""
        g = self._groups.get(self._points[cast(int, req.items[0].key)].config.poll)
        return g if g is not None and any(r is req for r in g.plan) else None

    def _refuse(self, g: _Group, req: _Request) -> None:
        """Point ``req`` (one item) of ``g`` is refused: read apart from now on, said once."""
        index = cast(int, req.items[0].key)
        p = self._points[index]
        if index in g.refused:
            return
        if not g.refused:
            g.retry_at = asyncio.get_running_loop().time() + REFUSED_RETRY_S
        g.refused[index] = req
        g.fresh.add(index)
        p.deadband.reset()  # say the new reason even if the point was already Bad
        self._refusals_said += 1
        if self._refusals_said > REFUSALS_LOGGED:
            if self._refusals_said == REFUSALS_LOGGED + 1:  # a device refusing everything
                log.warning(
                    "%s: more points are refused by the device (%s); `gateway status` lists "
                    "them all (refused_points)",
                    self.name,
                    ADDRESS_REFUSED,
                )
            return
        log.warning(
            "%s: point %s (%s %s, unit %s) is refused by the device with %s: it is Bad and "
            "read on its own every %g s; the points around it are read without it",
            self.name,
            p.config.name,
            req.table,
            req.address,
            req.unit,
            ADDRESS_REFUSED,
            REFUSED_RETRY_S,
        )

    async def _poll_refused(self, g: _Group) -> list[Sample]:
        """Each refused point of ``g``: read on its own when due (a point that reads again
        rejoins the plan), else Bad again (which only "always" points publish)."""
        out: list[Sample] = []
        loop = asyncio.get_running_loop()
        due = loop.time() >= g.retry_at
        if due:
            g.retry_at = loop.time() + REFUSED_RETRY_S
        fresh, g.fresh = g.fresh, set()
        for index, req in list(g.refused.items()):
            if index in fresh:  # refused by this very poll, which sent its sample
                continue
            values, reason = await self._read(req) if due else (None, ADDRESS_REFUSED)
            raise_if_cancelling()
            if values is not None:
                self._readmit(g, index, req)
            elif reason == ADDRESS_REFUSED:
                reason = _refused_at(req)
            self._samples(req, values, reason, out)
        return out

    def _replan(self, g: _Group) -> None:
        """Plan ``g``'s reads afresh, merging all but its refused points again: a gap of the
        device's map that the old plan stepped around is found again by the next poll (its
        points stay Good)."""
        g.plan = self._plan([it for it in g.items if it.key not in g.refused])

    def _readmit(self, g: _Group, index: int, req: _Request) -> None:
        del g.refused[index]
        self._replan(g)
        log.info(
            "%s: point %s (%s %s, unit %s) reads again; polled with the others",
            self.name,
            self._points[index].config.name,
            req.table,
            req.address,
            req.unit,
        )

    async def _read(self, req: _Request) -> tuple[Sequence[Any] | None, str | None]:
        async with self._io_lock:
            client = self._client
            if client is None or not self._connected.is_set():
                return None, self._down_reason
            resting = self._rest_of(req.unit)
            if resting is not None:
                return None, resting[1]
            self.counters["requests"] += 1
            try:
                rr = await self._send_read(client, req)
            except (ModbusException, OSError, TimeoutError) as exc:
                return None, self._io_failed(exc, req.unit)
        self._answered(req.unit)
        # Modbus TCP's transaction id already ties an answer to its request.
        wrong = _mismatch(rr, req) if self._rtu else None
        if wrong is not None:
            self.counters["errors"] += 1
            self.last_error = f"{req.table} {req.address}+{req.count} unit {req.unit}: {wrong}"
            self._rest(req.unit, wrong)  # its own answer may still be on the way
            return None, wrong
        if rr.isError():
            self.counters["errors"] += 1
            code = getattr(rr, "exception_code", 0)
            reason = exception_reason(code)
            self.last_error = f"{req.table} {req.address}+{req.count} unit {req.unit}: {reason}"
            return None, reason
        if req.table.is_bit:
            return rr.bits[: req.count], None
        return rr.registers, None

    @staticmethod
    async def _send_read(client: Client, req: _Request) -> ModbusPDU:
        if req.table is Table.HOLDING:
            return await client.read_holding_registers(
                req.address, count=req.count, device_id=req.unit
            )
        if req.table is Table.INPUT:
            return await client.read_input_registers(
                req.address, count=req.count, device_id=req.unit
            )
        if req.table is Table.COIL:
            return await client.read_coils(req.address, count=req.count, device_id=req.unit)
        return await client.read_discrete_inputs(req.address, count=req.count, device_id=req.unit)

    def _answered(self, unit: int) -> None:
        self._timeouts = 0
        self._silent = False
        self._silent_units.discard(unit)

    def _unanswered(self) -> bool:
        """The connection looks dead: the last request timed out; with framing rtu the last
        request of every unit id did (a dead unit on a live bus is not a dead link)."""
        if self._rtu:
            return self._silent_units >= self._units
        return self._silent

    def _rest(self, unit: int, reason: str) -> None:
        """rtu: ask ``unit`` nothing for `timeout` seconds, so that a late answer of its last
        request arrives while none of its requests waits, and is dropped."""
        if self._rtu:
            until = asyncio.get_running_loop().time() + self.config.timeout
            self._resting[unit] = (until, reason)

    def _rest_of(self, unit: int) -> tuple[float, str] | None:
        """(seconds left, why) while ``unit`` rests, else None."""
        until, reason = self._resting.get(unit, (0.0, ""))
        left = until - asyncio.get_running_loop().time()
        return (left, reason) if left > 0 else None

    @asynccontextmanager
    async def _exchange(self, unit: int) -> AsyncIterator[None]:
        """The connection for one exchange with ``unit`` (a write, or a bit's read-modify-write),
        once ``unit`` has rested: a write waits instead of failing at once like a read."""
        while True:
            resting = self._rest_of(unit)
            if resting is not None:
                await asyncio.sleep(resting[0])
            await self._io_lock.acquire()
            if self._rest_of(unit) is None:
                break
            self._io_lock.release()  # it timed out again meanwhile: wait once more
        try:
            yield
        finally:
            self._io_lock.release()

    def _io_failed(self, exc: BaseException, unit: int) -> str:
        text = str(exc) or type(exc).__name__
        timeout = (
            isinstance(exc, TimeoutError)
            or "timeout" in text.lower()
            or "no response" in text.lower()
        )
        if timeout:
            self.counters["timeouts"] += 1
            self._silent_units.add(unit)
            reason = "timeout"
            self._rest(unit, reason)
            # A unit no point reads (one a pass-through asks) says nothing of the link: a
            # SCADA asking an absent one must not reconnect it and take every point Bad.
            if unit in self._units:
                self._timeouts += 1
                self._silent = True
            if self._timeouts >= TIMEOUTS_BEFORE_RECONNECT and self._unanswered():
                self._down_reason = reason
                self._lost.set()
                self._connected.clear()
        else:
            self.counters["errors"] += 1
            reason = "connection error"
            self._down_reason = reason
            self._lost.set()
            self._connected.clear()
        self.last_error = f"{reason}: {text}"
        return reason

    # -- pass-through ---------------------------------------------------------------------

    async def forward(self, unit: int, pdu: bytes, max_queued: int) -> bytes:
        """Send a request PDU of a Modbus server's pass-through to ``unit`` and return the
        answer's PDU (an exception PDU of the device included); `Unanswered` with the code the
        gateway answers instead: 06 with ``max_queued`` requests waiting already, 0A without a
        connection, 0B without an answer in time (or, on RTU, with one to something else)."""
        with self.forwarding.place(max_queued):
            async with self.forwarding.lock:  # one at a time: a poll waits for one at most
                return await self._forward(unit, pdu)

    async def _forward(self, unit: int, pdu: bytes) -> bytes:
        request = _REQUESTS.decode(pdu)
        if request is None:  # parse_request took it: a function pymodbus lacks
            raise Unanswered(ExceptionCode.ILLEGAL_FUNCTION, f"pymodbus cannot send {pdu.hex()}")
        request.dev_id = unit
        try:
            async with self._exchange(unit):  # as a write: a resting unit is waited for
                client = self._client
                if client is None or not self._connected.is_set():
                    raise Unanswered(
                        ExceptionCode.GATEWAY_PATH_UNAVAILABLE,
                        f"{self.name} is unreachable ({self._down_reason})",
                    )
                self.forwarding.requests += 1
                rr = await client.execute(False, request)
        except (ModbusException, OSError, TimeoutError) as exc:
            reason = self._io_failed(exc, unit)
            self.forwarding.errors += 1
            if reason == "timeout":
                raise Unanswered(ExceptionCode.GATEWAY_TARGET_FAILED, reason) from None
            raise Unanswered(ExceptionCode.GATEWAY_PATH_UNAVAILABLE, reason) from None
        except Unanswered:
            self.forwarding.errors += 1
            raise
        self._answered(unit)
        wrong = _wrong_function(rr, pdu[0], "pass-through") if self._rtu else None
        if wrong is not None:  # a late answer to an earlier request: the unit rests
            self.forwarding.errors += 1
            self.last_error = f"pass-through to unit {unit}: {wrong}"
            self._rest(unit, wrong)
            raise Unanswered(ExceptionCode.GATEWAY_TARGET_FAILED, wrong)
        return bytes((rr.function_code,)) + rr.encode()

    # -- writes (used by write-back paths of later releases) -------------------------------

    async def write_and_read_back(self, point: str, value: Any) -> None:
        """The command handler: write, then read the point back so the new value goes up now
        (through the deadband, like any poll) instead of at the next poll."""
        await self.write(point, value)
        samples = await self.poll(self._readback[point])
        if samples:
            await self.bus.publish(Message.telemetry(self.name, tuple(samples)))

    async def write(self, point: str, value: bool | int | float | str) -> None:
        """Write one point (`_send_write`); refused at once while the device is unreachable."""
        p = self._by_name.get(point)
        if p is None:
            raise ModbusWriteError(WriteStatus.UNKNOWN_POINT, f"{self.name} has no point {point!r}")
        cfg = p.config
        if not cfg.writable:
            raise ModbusWriteError(WriteStatus.NOT_WRITABLE, f"{self.name}/{point} is not writable")
        if value is None or isinstance(value, (dict, list)):
            raise ModbusWriteError(WriteStatus.BAD_VALUE, f"{value!r} cannot be written to {point}")
        self._client_for_write()  # refused at once, not after a wait for the connection
        self.counters["writes"] += 1
        try:
            async with self._exchange(p.unit):  # a bit's read-modify-write is one exchange
                rr = await self._send_write(self._client_for_write(), p, value)
        except (ModbusException, OSError, TimeoutError) as exc:
            reason = self._io_failed(exc, p.unit)
            status = WriteStatus.TIMEOUT if reason == "timeout" else WriteStatus.UNREACHABLE
            raise ModbusWriteError(status, f"{self.name}/{point}: {reason}") from None
        except (CodecError, ValueError, TypeError) as exc:
            raise ModbusWriteError(WriteStatus.BAD_VALUE, f"{self.name}/{point}: {exc}") from None
        self._answered(p.unit)
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            function = rr.function_code & 0x7F
            hint = ""
            if code == ILLEGAL_FUNCTION and function == FunctionCode.MASK_WRITE_REGISTER:
                hint = " (the device has no mask write: set bit_write: read_modify_write)"
            raise ModbusWriteError(
                WriteStatus.DEVICE_ERROR,
                f"{self.name}/{point}: {exception_reason(code)} to {_fc(function)}{hint}",
            )

    def _client_for_write(self) -> Client:
        client = self._client
        if client is None or not self._connected.is_set():
            raise ModbusWriteError(
                WriteStatus.UNREACHABLE, f"{self.name} is unreachable ({self._down_reason})"
            )
        return client

    async def _send_write(
        self, client: Client, p: _Point, value: bool | int | float | str
    ) -> ModbusPDU:
        """Reverse scaling and byte order, then the right function code."""
        cfg = p.config
        if cfg.table is Table.COIL:
            return await self._write_one(client, p, FunctionCode.WRITE_SINGLE_COIL, bool(value))
        if cfg.bit is not None:
            if p.mask:  # the device changes only this bit: atomic, unlike the read below
                bit = 1 << cfg.bit
                rr = await client.mask_write_register(
                    address=cfg.address,
                    and_mask=0xFFFF ^ bit,
                    or_mask=bit if value else 0,
                    device_id=p.unit,
                )
                return self._answering(rr, FunctionCode.MASK_WRITE_REGISTER, p)
            cur = await client.read_holding_registers(cfg.address, count=1, device_id=p.unit)
            here: _Request = ReadRequest(p.unit, Table.HOLDING, cfg.address, 1, ())
            self._answering(cur, FunctionCode.READ_HOLDING_REGISTERS, p, _mismatch(cur, here))
            if cur.isError():
                raise ModbusWriteError(
                    WriteStatus.DEVICE_ERROR,
                    f"reading {cfg.name} before setting its bit failed",
                )
            reg = set_bit(cur.registers[0], cfg.bit, bool(value))
            return await self._write_one(client, p, FunctionCode.WRITE_SINGLE_REGISTER, reg)
        raw: bool | int | float | str = value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raw = p.scaling.invert(value)  # encode rounds for integer types
        regs = encode(raw, cfg.dtype, p.order, length=cfg.length)
        if len(regs) == 1:
            return await self._write_one(client, p, FunctionCode.WRITE_SINGLE_REGISTER, regs[0])
        rr = await client.write_registers(cfg.address, regs, device_id=p.unit)
        return self._answering(rr, FunctionCode.WRITE_MULTIPLE_REGISTERS, p)

    def _answering(
        self, rr: ModbusPDU, function: int, p: _Point, wrong: str | None = None
    ) -> ModbusPDU:
        """``rr``, unless over RTU it cannot answer ``function`` (``wrong``: the reason found
        already): a late answer to an earlier request of the unit, as for reads (`_read`). The
        write's fate is unknown, so the unit rests until its own answer has had its time."""
        if not self._rtu:
            return rr
        if wrong is None:
            wrong = _wrong_function(rr, function, "write")
        if wrong is None:
            return rr
        self.counters["errors"] += 1
        self.last_error = f"{p.config.name} unit {p.unit}: {wrong}"
        self._rest(p.unit, wrong)
        raise ModbusWriteError(WriteStatus.DEVICE_ERROR, f"{self.name}/{p.config.name}: {wrong}")

    async def _write_one(
        self, client: Client, p: _Point, single: FunctionCode, value: int | bool
    ) -> ModbusPDU:
        """One register or coil: with ``single`` (FC 06, FC 05), or its multiple-value function
        where the point asks for it or the device refused ``single`` (`WRITE_FALLBACK`)."""
        multiple = WRITE_FALLBACK[single]
        if p.write_multiple or single in self._fallen_back:
            return self._answering(await _send_one(client, multiple, p, value), multiple, p)
        rr = self._answering(await _send_one(client, single, p, value), single, p)
        refused = rr.isError() and getattr(rr, "exception_code", 0) == ILLEGAL_FUNCTION
        if not refused or not self.config.write_fallback:
            return rr
        retry = self._answering(await _send_one(client, multiple, p, value), multiple, p)
        # Learnt only when the other function works: a device refusing both (or 01 for a
        # passing state of its own) keeps its single-value function.
        if not retry.isError():
            self._fallen_back.add(single)
            log.warning(
                "%s: the device does not take %s (exception 01, illegal function); writing "
                "with %s from now on",
                self.name,
                _fc(single),
                _fc(multiple),
            )
        return retry


async def _send_one(
    client: Client, function: FunctionCode, p: _Point, value: int | bool
) -> ModbusPDU:
    """Write one register or coil of ``p`` with ``function`` (05, 06, 15 or 16)."""
    address, unit = p.config.address, p.unit
    if function is FunctionCode.WRITE_SINGLE_COIL:
        return await client.write_coil(address, bool(value), device_id=unit)
    if function is FunctionCode.WRITE_MULTIPLE_COILS:
        return await client.write_coils(address, [bool(value)], device_id=unit)
    if function is FunctionCode.WRITE_SINGLE_REGISTER:
        return await client.write_register(address, int(value), device_id=unit)
    return await client.write_registers(address, [int(value)], device_id=unit)
