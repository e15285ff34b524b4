"""The gateway as a Modbus TCP server: bridged points served as a register map, client writes sent
back to the devices through the bridge and its safety rules. It speaks Modbus TCP (MBAP header)
or, with ``framing: rtu``, Modbus RTU over TCP (see below).

The map (the ``map:`` of each bridge that targets the server, see `server_config`) places each
point at an address of one of the four tables of one unit id, with a type, a byte order and a
scale/offset, as a Modbus device would hold it.

Values: `send` encodes each sample into a register image when it arrives (raw = (value - offset)
/ scale, rounded for integer types, in the entry's byte order), so a read is two slices of
plain lists and no encoding: reads are answered in ``data_received``, with no task per request,
like the project's simulator. Next to the values each table keeps one status byte per address:
unmapped, good, or the exception code a read touching it gets.

Anomaly alarms: on a bridge with ``anomaly:`` the map may also place the points ``anomaly``
(bool) and ``anomaly_score`` (float64) of each device (`gateway.anomaly.verdict`), read-only,
set from each scored message's verdict and from the rise/clear EVENT; before the first scored
message they answer 0B like any point with no value. An EVENT's samples are no point's values.
A source point with one of those names keeps it (the alarm's is left out, with a warning).

Exceptions (Modbus application protocol v1.1b3, section 7):

* 01 illegal function: a function other than 01/02/03/04/05/06/15/16/22/23 and 43 with MEI
  type 14 (input registers and discrete inputs have no write function, so they cannot be
  written at all);
* 02 illegal data address: any address of the request is not in the map (or past 65535), 23's
  read part included; a write to a point that is not writable (declared ``r``, or the route
  has ``writable: false``); an identification object that individual access (43/14, read
  code 04) asks for and the server does not hold;
* 03 illegal data value: a bad count (frames.parse_request: 23 reads 1-125 and writes 1-121),
  a read device id code other than 01-04, a write that covers only part of a multi-register
  value (a float32 must be written whole, with function 16; 22 masks one register, so it never
  writes one), registers that do not decode to a value, or a value the write rules refuse as out
  of range or of the wrong type;
* 04 server device failure: a read touching a point whose latest sample is bad for another reason
  than the device being unreachable (a device exception, a value that does not fit the entry's
  type); a write the device refused;
* 06 server device busy: the point's write rate limit refused the write;
* 0A gateway path unavailable: a unit id the server does not serve;
* 0B gateway target device failed to respond: a read touching a point with no value yet, or
  whose latest sample is bad because the device is unreachable (timeout, connection trouble);
  a write the device did not acknowledge in time, or could not be delivered.

An uncertain sample is served as its value (Modbus has no quality). Writes answer only after the
device acknowledged (`Bridge.write`); a request writing several entries writes them in address
order and stops at the first refusal, whose exception is the answer (those before it stay
written: Modbus has no partial success to report). An acknowledged write is served at once by
every entry of the point (the device holds it now, as a device's registers would), until the
device's next sample says otherwise: a read right after a write reads what was written. A
connection handles its requests in order: while a write waits for the device, that connection's
later requests wait too (reading is paused), other connections are served. A malformed MBAP
header closes only its connection.

Functions 22 and 23 are writes like 06 and 16, through the same path (`_Unit.plan_write`, then
`ModbusServerAdapter._write`): the same rules, exceptions and answer after the acknowledgement.

* 22 mask write register: the register becomes (current AND and_mask) OR (or_mask AND NOT
  and_mask), "current" being the latest value served there (a sample of the device, or a write
  acknowledged since); with none (no sample yet, a bad one) it is refused as a read of the
  register would be (0B, 04). On a register shared by ``bit`` entries only the bits that change
  are written. The answer is the request's echo.
* 23 read/write multiple registers: the read range is checked first (02 if any of it is not
  mapped: nothing is written), then the write is done, then the read, which sees it. A refused
  write is the answer and nothing is read; a read refused after the write succeeded (a point with
  no good value) is the answer too, the write done, as for 16's half-done writes.

Function 43 / MEI type 14, read device identification, answers the server's ``identity:`` for
every unit id served (`protocols.modbus.identity`: stream and individual access, conformity
level, more-follows).

Pass-through (``passthrough:``, `protocols.modbus.passthrough`): a request for a unit id of a
passthrough entry is not served from a map but forwarded, as it is, to that entry's Modbus client
device, and its answer or exception returned; the gateway answers 01 (a write on a read-only
entry, a function other than 01-06, 15, 16, 22, 23), 06 (the device's queue is full), 0A (the
device's connection is down) and 0B (the device did not answer) itself. Like a write, the
connection's next requests wait for the answer.

Connections: a client that resets its connection has its queued requests dropped, unanswered (so
that asyncio does not log a failed send per response). A connection with no request served for
``idle_timeout`` seconds is closed. When ``max_connections`` are open, a newcomer takes the slot
of the connection idle longest if that one has had no request served for ``idle_evict_after``
seconds (as many PLCs do: a SCADA client that reconnects is not locked out by the sockets it left
behind); otherwise it is refused. Refusals and such evictions are logged once per run, and
counted.

Flow control: a client may pipeline requests, but it must read the answers. Reads are answered at
once, so a client that sends without reading would otherwise grow the connection's write buffer
(the gateway's memory) without bound, at full CPU. Each connection's write buffer has a high-water
mark (`HIGH_WATER`): past it asyncio calls ``pause_writing`` and the connection stops reading the
socket (its requests wait in the kernel, then in the client); once the client has read the buffer
down to `LOW_WATER`, ``resume_writing`` serves the requests already received and reading goes on.
While it waits no request is served, so a client that never reads is closed after
``idle_timeout`` like an idle one (and is evictable after ``idle_evict_after``): idle means no
progress, not no request. Memory per connection stays under one socket read (256 KiB, what the
decoder may hold) plus the mark. A burst of pipelined requests is served `BURST` at a time, with
the loop's other callbacks (other clients, the polls of the source devices) between bursts.

RTU over TCP (``framing: rtu``): for SCADA masters and HMIs set up to talk to a serial-to-Ethernet
converter in raw mode, the same server answers RTU frames (unit id, PDU, CRC16, no MBAP header;
`protocols.modbus.rtu` frames them, the PDUs are `frames`'s as for MBAP). The unit ids are those
of the devices the gateway stands in for on the bus: served ones are answered as over MBAP, and a
unit id not served gets 0A as over MBAP (a master learns at once that the unit is not there,
rather than after its timeout). The differences are the serial line's:

* no transaction id, so a master sends one request and waits for its answer; the answers come in
  order anyway (see above), so a master that does pipeline is not confused by them;
* unit id 0 is broadcast (and no unit may be 0 or 248-255, `ModbusServer.check`): a write is
  executed by every served unit whose map takes it (in the order of unit_ids), none answering, not
  even an exception; a broadcast read is ignored, and so are 23 (it reads: its write part is not
  done either) and 43; 22 is a write, each unit masking its own register. The connection's next
  request waits until the broadcast write is done, as it waits for any write. Counted in
  ``broadcasts``;
* a frame with a bad CRC, or bytes that cannot start a request (a function code whose length
  cannot be known: anything but 01-06, 15, 16, 22, 23 and 43/14), are dropped unanswered, as an
  RTU slave drops them, and the connection lives on: the decoder finds the next good frame.
  Each run of dropped bytes counts in ``frame_errors`` and is logged under the quota below (for
  MBAP, ``frame_errors`` counts the connections closed for a malformed header).

Connection limits, the idle timeout and flow control are the same for both framings.

Serial line (``serial:``): the server is an RTU slave on a local RS-485 or RS-232 line, one
slave among others: silent for the unit ids it does not serve, deaf to the other slaves'
answers, resynchronised by the line's silences (`protocols.modbus.serial_slave`). Requests are
served by the same `handle`, one at a time; there are no connections.

Log: a connection closed for a malformed header or idleness is one INFO line, but a scanner or a
broken client reconnecting in a loop must not write one per connection: the first `QUOTA` lines
of each `QUOTA_INTERVAL` are logged, the rest counted and said in one line when it ends, one of
the next interval's `QUOTA` (the ``frame_errors`` and ``connections_idle_closed`` counters have
every one). The RTU lines for dropped bytes have a quota of their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from gateway.adapter import Adapter, AdapterContext
from gateway.anomaly.verdict import ForeignEvents, add_alarm_points, served_samples
from gateway.commands import WriteStatus
from gateway.config.common import Path, Problem
from gateway.config.errors import format_path, listing
from gateway.streak import FailureStreak, LogQuota
from gateway.text import counted
from gateway.types import Message, PointSpec, Quality, Sample, Value
from protocols.modbus.codec import (
    ByteOrder,
    CodecError,
    DataType,
    Table,
    decoder,
    encode,
    set_bit,
)
from protocols.modbus.frames import (
    FUNCTION_TABLE,
    ExceptionCode,
    Frame,
    FrameDecoder,
    FrameError,
    MaskWriteRegister,
    ModbusError,
    ReadDeviceIdentification,
    ReadRequest,
    ReadWriteMultipleRegisters,
    Request,
    WriteMultipleCoils,
    WriteMultipleRegisters,
    WriteSingleCoil,
    WriteSingleRegister,
    exception_pdu,
    parse_request,
    read_bits_pdu,
    read_registers_pdu,
    write_response_pdu,
)
from protocols.modbus.identity import device_identification_pdu
from protocols.modbus.passthrough import Passthroughs
from protocols.modbus.rtu import RtuDecoder, RtuFrame
from protocols.modbus.serial_slave import SerialSlave
from protocols.modbus.server_config import MapEntry, ModbusServer, ModbusServerRoute

if TYPE_CHECKING:
    from gateway.bridge import Bridge

log = logging.getLogger(__name__)

SIZE = 65536
HIGH_WATER = 64 * 1024  # bytes of responses a connection may have unsent before it stops reading
LOW_WATER = 16 * 1024  # ...and how far its client must read them down before it reads again
BURST = 64  # requests served per callback before the loop's other callbacks run
QUOTA = 5  # per-connection close lines logged per QUOTA_INTERVAL (and kind); the rest counted
QUOTA_INTERVAL = 10.0
UNMAPPED = 0xFF  # status byte of an address no entry covers
GOOD = 0
WAITING = ExceptionCode.GATEWAY_TARGET_FAILED  # no sample yet
_ZEROS = bytes(SIZE)

WRITE_EXCEPTIONS: dict[WriteStatus, ExceptionCode] = {
    WriteStatus.UNKNOWN_POINT: ExceptionCode.ILLEGAL_DATA_ADDRESS,
    WriteStatus.NOT_WRITABLE: ExceptionCode.ILLEGAL_DATA_ADDRESS,
    WriteStatus.OUT_OF_RANGE: ExceptionCode.ILLEGAL_DATA_VALUE,
    WriteStatus.BAD_VALUE: ExceptionCode.ILLEGAL_DATA_VALUE,
    WriteStatus.RATE_LIMITED: ExceptionCode.SERVER_DEVICE_BUSY,
    WriteStatus.UNREACHABLE: ExceptionCode.GATEWAY_TARGET_FAILED,
    WriteStatus.TIMEOUT: ExceptionCode.GATEWAY_TARGET_FAILED,
    WriteStatus.DEVICE_ERROR: ExceptionCode.SERVER_DEVICE_FAILURE,
}
_UNREACHABLE_WORDS = (
    "timeout",
    "timed out",
    "connect",
    "unreachable",
    "refused",
    "reset",
    "closed",
)
_INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})


def bad_code(sample: Sample) -> ExceptionCode:
    """The exception a read of a bad sample gets: 0B if the device is unreachable, else 04."""
    reason = (sample.reason or "").lower()
    if any(word in reason for word in _UNREACHABLE_WORDS):
        return ExceptionCode.GATEWAY_TARGET_FAILED
    return ExceptionCode.SERVER_DEVICE_FAILURE


# -- the map's checks: `ModbusServerAdapter.attach` (gateway run) and `check_map` (gateway
# validate, through `ModbusServerRoute.check_carried`) share them, so that both say the same.


def route_unit(route: ModbusServerRoute, server: ModbusServer) -> int | Problem:
    """The unit id a route's map is served at, or why the server serves none."""
    if route.unit_id is None and not server.unit_ids:
        return Problem(
            ("unit_id",),
            "none, and the server has no unit_ids (only passthrough)",
            "unit_ids on the server for its maps, none of the passthrough's",
        )
    unit_id = server.unit_ids[0] if route.unit_id is None else route.unit_id
    if unit_id in server.unit_ids:
        return unit_id
    return Problem(
        ("unit_id",),
        f"{unit_id}, which is not one of the server's unit_ids {list(server.unit_ids)}",
        f"one of the server's unit_ids: {listing([str(u) for u in server.unit_ids])}",
    )


def map_point(
    i: int, cfg: MapEntry, points: Mapping[str, Sequence[PointSpec]]
) -> tuple[str, PointSpec] | Problem:
    """(device, spec) of map entry ``i``, or why it serves none: a point the bridge does not
    carry, a name several sources have, or a string point in a numeric or bit entry."""
    device, _, name = cfg.point.rpartition("/")
    devices = [device] if device else list(points)
    found = [(d, p) for d in devices for p in points.get(d, []) if p.name == name]
    where: Path = ("map", i, "point")
    if not found:
        carried = [
            f"{d}/{p.name}" if len(points) > 1 else p.name for d in points for p in points[d]
        ]
        return Problem(
            where,
            f"{cfg.point!r}: the bridge carries no point {cfg.point!r}",
            f"a point the bridge carries: {listing(carried)}"
            if carried
            else "a point (the bridge carries none)",
        )
    if len(found) > 1:
        return Problem(
            where,
            f"{cfg.point!r}: several sources have {name!r}",
            f"device/{name}, one of: {listing([f'{d}/{name}' for d, _ in found])}",
        )
    if found[0][1].datatype == "string" and cfg.dtype is not DataType.STRING:
        key = "type" if cfg.type is not None else "table" if cfg.table.is_bit else "point"
        return Problem(
            ("map", i, key),
            f"{cfg.point!r}: {name} is a string, which a {cfg.dtype} in the {cfg.table} table"
            " cannot hold",
            "type: string (with length) in a holding or input register, for a string point",
        )
    return found[0]


class Placed(Protocol):
    """What `Space` needs of a map entry: its layout and the point it serves, in words."""

    @property
    def config(self) -> MapEntry: ...
    @property
    def label(self) -> str: ...


E = TypeVar("E", bound=Placed)


class Space(Generic[E]):
    """Which entry holds each address of one table of one unit: the maps of every bridge to
    one server share it, so that no two entries serve one register (bits of one excepted)."""

    __slots__ = ("owners", "bits")

    def __init__(self) -> None:
        self.owners: dict[int, E] = {}
        # registers shared by bool entries on different bits: address -> those entries
        self.bits: dict[int, list[E]] = {}

    def add(self, i: int, entry: E) -> Problem | None:
        """Place map entry ``i``; why not, if its addresses are taken."""
        cfg = entry.config
        start, end = cfg.address, cfg.address + cfg.count
        for address in range(start, end):
            other = self.owners.get(address)
            if other is None:
                continue
            if cfg.bit is None or other.config.bit is None:
                why = f"{cfg.table} {address} is taken by {other.label}"
            elif any(e.config.bit == cfg.bit for e in self.bits[address]):
                why = f"bit {cfg.bit} of {cfg.table} {address} is taken by {other.label}"
            else:
                continue
            return Problem(
                ("map", i, "address"),
                f"{cfg.address}: {why}",
                "an address no other map to this server and unit id uses",
            )
        for address in range(start, end):
            self.owners.setdefault(address, entry)
        if cfg.bit is not None:
            self.bits.setdefault(start, []).append(entry)
        return None


@dataclass(frozen=True)
class _Planned:
    """A map entry as ``gateway validate`` places it (no bridge, no values)."""

    config: MapEntry
    label: str


def check_map(
    route: ModbusServerRoute,
    server: ModbusServer,
    points: Mapping[str, Sequence[PointSpec]] | None,
    spaces: dict[tuple[int, Table], Space[Any]],
) -> list[Problem]:
    """What `ModbusServerAdapter.attach` would refuse of ``route`` (``points``: what the bridge
    carries, None when only known at run time); ``spaces`` carries the maps of the bridges
    before it to the same server, as the server attaches them in file order."""
    unit = route_unit(route, server)
    if isinstance(unit, Problem):
        return [unit]
    problems: list[Problem] = []
    for i, cfg in enumerate(route.map):
        found = None if points is None else map_point(i, cfg, points)
        if isinstance(found, Problem):
            problems.append(found)
            continue
        label = cfg.point if found is None else f"{found[0]}/{found[1].name}"
        taken = spaces.setdefault((unit, cfg.table), Space()).add(i, _Planned(cfg, label))
        if taken is not None:
            problems.append(taken)
    return problems


@dataclass(eq=False, slots=True)
class _Entry:
    """One map entry bound to the point it serves."""

    config: MapEntry
    device: str
    spec: PointSpec
    bridge: Bridge
    unit: int
    order: ByteOrder
    writable: bool
    state: int = WAITING  # GOOD or the exception code of its latest sample
    decode: Callable[[Sequence[int]], Any] = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.decode = decoder(cfg.dtype, self.order, bit=cfg.bit, length=cfg.length)

    @property
    def table(self) -> Table:
        return self.config.table

    @property
    def address(self) -> int:
        return self.config.address

    @property
    def count(self) -> int:
        return self.config.count

    @property
    def label(self) -> str:
        return f"{self.device}/{self.spec.name}"

    def raw(self, value: Value) -> float | int | str:
        """Engineering value -> what the registers hold (before encoding)."""
        cfg = self.config
        if cfg.dtype is DataType.STRING:
            return str(value)
        if isinstance(value, str) or value is None:
            raise CodecError(f"{cfg.dtype} needs a number, got {value!r}")
        if cfg.scale == 1.0 and cfg.offset == 0.0:
            return value
        return (value - cfg.offset) / cfg.scale

    def engineering(self, raw: Any) -> Value:
        """What a client wrote (decoded) -> the point's value, in the bridge's units."""
        cfg = self.config
        datatype = self.spec.datatype
        if isinstance(raw, str):
            return raw
        if isinstance(raw, bool) or cfg.dtype is DataType.BOOL:
            return bool(raw) if datatype == "bool" else int(raw)
        value: float | int = raw
        if cfg.scale != 1.0 or cfg.offset != 0.0:
            value = float(f"{raw * cfg.scale + cfg.offset:.12g}")  # drop the float noise
        if datatype == "bool" and value in (0, 1):
            return bool(value)
        if datatype in _INTEGER_TYPES and isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class _Table(Space[_Entry]):
    """One table of one unit: values, a status byte per address, the entry at each address."""

    __slots__ = ("values", "status")

    def __init__(self, table: Table) -> None:
        super().__init__()
        self.values: list[int] = [0] * SIZE
        self.status = bytearray([UNMAPPED]) * SIZE

    def add(self, i: int, entry: _Entry) -> Problem | None:
        taken = super().add(i, entry)
        if taken is None:
            self.status[entry.address : entry.address + entry.count] = (
                bytes([WAITING]) * entry.count
            )
        return taken

    def update(self, entry: _Entry, sample: Sample) -> None:
        """Store a sample of ``entry``'s point (encoded) and its status."""
        start, end = entry.address, entry.address + entry.count
        state: int = GOOD
        if sample.quality is Quality.BAD or sample.value is None:
            state = bad_code(sample) if sample.quality is Quality.BAD else WAITING
        else:
            try:
                self.values[start:end] = self._encode(entry, sample.value)
            except (CodecError, TypeError, ValueError, OverflowError) as exc:
                if entry.state != ExceptionCode.SERVER_DEVICE_FAILURE:
                    log.warning(
                        "%s/%s = %r cannot be served as %s at %s %d: %s",
                        entry.device,
                        entry.spec.name,
                        sample.value,
                        entry.config.dtype,
                        entry.table,
                        start,
                        exc,
                    )
                state = ExceptionCode.SERVER_DEVICE_FAILURE
        entry.state = state
        if entry.config.bit is not None:  # the register is as bad as its worst bit
            state = next((e.state for e in self.bits[start] if e.state), GOOD)
        self.status[start:end] = bytes((state,)) * (end - start)

    def _encode(self, entry: _Entry, value: Value) -> list[int]:
        cfg = entry.config
        if entry.table.is_bit:
            return [bool(value)]
        if cfg.bit is not None:
            return [set_bit(self.values[entry.address], cfg.bit, bool(value))]
        if cfg.dtype is DataType.BOOL:
            return [int(bool(value))]
        return encode(entry.raw(value), cfg.dtype, entry.order, length=cfg.length)

    def read(self, function: int, address: int, count: int) -> bytes:
        """The answer to reading ``count`` from ``address`` (function 23's as 03's)."""
        end = address + count
        status = self.status[address:end]
        if end > SIZE or status != _ZEROS[:count]:
            self.check_mapped(function, address, count)
            raise ModbusError(ExceptionCode(next(s for s in status if s)), function)
        if function <= 2:
            return read_bits_pdu(function, self.values[address:end])
        return read_registers_pdu(function, self.values[address:end])

    def check_mapped(self, function: int, address: int, count: int) -> None:
        """02 unless every address of the range is in the map."""
        end = address + count
        if end > SIZE or UNMAPPED in self.status[address:end]:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)

    def masked(self, request: MaskWriteRegister) -> int:
        """Function 22's new register value, from the latest value served there (a sample, or
        a write acknowledged since); refused as a read of it would be when there is none."""
        function, address = request.function, request.address
        entry = self.owners.get(address)
        if entry is None:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
        if entry.count > 1:  # a multi-register value is written whole, with function 16
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, function)
        self.read(function, address, 1)
        return request.apply(self.values[address])

    def entries(self, function: int, address: int, values: Sequence[int]) -> list[_Entry]:
        """The entries a write of ``values`` at ``address`` covers, each one whole."""
        found: list[_Entry] = []
        end = address + len(values)
        if end > SIZE:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
        at = address
        while at < end:
            entry = self.owners.get(at)
            if entry is None:
                raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
            if entry.address != at or at + entry.count > end:
                # a multi-register value must be written whole
                raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, function)
            found.extend(self.bits.get(at, [entry]))
            at += entry.count
        return found


@dataclass
class _Write:
    """One point to write, and the value."""

    entry: _Entry
    value: Value


class _Unit:
    """The four tables of one unit id (created when a map first uses them)."""

    def __init__(self) -> None:
        self.tables: dict[Table, _Table] = {}

    def table(self, table: Table) -> _Table:
        found = self.tables.get(table)
        if found is None:
            found = self.tables[table] = _Table(table)
        return found

    def read(self, request: ReadRequest) -> bytes:
        table = self.tables.get(FUNCTION_TABLE[request.function])
        if table is None:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, request.function)
        return table.read(request.function, request.address, request.count)

    def answer(self, request: Request) -> bytes:
        """The response PDU of a write request once its writes are done: function 23 reads
        then, so that it reads what it wrote."""
        if isinstance(request, ReadWriteMultipleRegisters):
            table = self.table(Table.HOLDING)
            return table.read(request.function, request.read_address, request.read_count)
        return write_response_pdu(request)

    def plan_write(self, request: Request) -> list[_Write]:
        """The points a write request sets and their values; raises `ModbusError` for what must
        be refused before anything is written (function 23's read part unmapped included)."""
        function = request.function
        table = self.tables.get(FUNCTION_TABLE[function])
        if table is None:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
        match request:
            case (
                WriteSingleCoil(address=address, value=value)
                | WriteSingleRegister(address=address, value=value)
            ):
                values: Sequence[int] = (value,)
            case (
                WriteMultipleCoils(address=address, values=values)
                | WriteMultipleRegisters(address=address, values=values)
            ):
                pass
            case MaskWriteRegister(address=address):
                values = (table.masked(request),)
            case ReadWriteMultipleRegisters(write_address=address, values=values):
                table.check_mapped(function, request.read_address, request.read_count)
            case _:
                raise ModbusError(ExceptionCode.ILLEGAL_FUNCTION, function)
        writes: list[_Write] = []
        for entry in table.entries(function, address, values):
            start = entry.address - address
            registers = values[start : start + entry.count]
            if entry.config.bit is not None:
                bit = entry.config.bit
                if (registers[0] ^ table.values[entry.address]) >> bit & 1 == 0:
                    continue  # a register shared by bits: write only the bits that change
            if not entry.writable:
                raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
            try:
                raw = bool(registers[0]) if entry.table.is_bit else entry.decode(registers)
                writes.append(_Write(entry, entry.engineering(raw)))
            except (CodecError, ValueError, OverflowError):
                raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, function) from None
        return writes


def _close_lines(what: str) -> LogQuota:
    """Per-connection close lines of one kind under a flood; ``what`` starts the count line:
    "mb: connections closed for a malformed request"."""
    interval = QUOTA_INTERVAL  # read when the adapter is made (tests shorten it)

    def say(count: int) -> None:
        log.info("%s: %d more in the last %g s, not logged one by one", what, count, interval)

    return LogQuota(say, quota=QUOTA, interval=interval)


@dataclass
class Counters:
    requests: int = 0
    exceptions: dict[str, int] = field(default_factory=dict)  # "02" -> count
    writes_ok: int = 0
    writes_refused: dict[str, int] = field(default_factory=dict)  # WriteStatus -> count
    frame_errors: int = 0  # tcp: connections closed for a bad header; rtu: runs of bytes dropped
    broadcasts: int = 0  # rtu: requests to unit id 0 (never answered)
    connections_total: int = 0
    connections_refused: int = 0
    connections_evicted: int = 0  # closed to make room for a newcomer
    connections_idle_closed: int = 0  # closed after idle_timeout


class ModbusServerAdapter(Adapter):
    """Serves the register maps of every bridge that targets it."""

    config: ModbusServer

    def __init__(self, name: str, config: ModbusServer, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self.units: dict[int, _Unit] = {u: _Unit() for u in config.unit_ids}
        # id(route) -> device -> point -> its entries: a bridge's samples reach its own map only
        self._routes: dict[int, dict[str, dict[str, list[_Entry]]]] = {}
        # id(route) -> device -> the anomaly alarm's points it serves (bridges with anomaly:)
        self._alarms: dict[int, dict[str, frozenset[str]]] = {}
        self.entries: list[_Entry] = []
        self.map_errors: list[str] = []
        self.counters = Counters()
        self.identity = config.identity.objects(context.gateway_name)  # function 43/14
        self.passthrough = Passthroughs(name, config.passthrough, context)
        self.foreign_events = ForeignEvents(f"Modbus server {name}")  # an OPC UA client's events
        self.port = config.port
        self._server: asyncio.Server | None = None
        self._serial: SerialSlave | None = None
        self._connections: set[_Connection] = set()
        # a client that cannot get in, or one closed for it, is a warning, not our error
        self._refusals = FailureStreak(log, f"{name}: new connections", level=logging.WARNING)
        self._evictions = FailureStreak(log, f"{name}: connection slots", level=logging.WARNING)
        self.bad_frame_log = _close_lines(f"{name}: connections closed for a malformed request")
        self.dropped_log = _close_lines(f"{name}: RTU requests dropped (bad CRC or not a frame)")
        self.idle_log = _close_lines(f"{name}: connections closed for idleness")

    # -- the map

    def attach(self, bridge: Bridge) -> None:
        route = bridge.config.route
        if not isinstance(route, ModbusServerRoute):
            self._map_error(f"bridge {bridge.name} has no map")
            return
        unit_id = route_unit(route, self.config)
        if isinstance(unit_id, Problem):
            self._map_problem(bridge.name, unit_id)
            return
        unit = self.units[unit_id]
        points = bridge.points()
        if bridge.config.anomaly is not None:  # the alarm's points may be mapped too
            points, added = add_alarm_points(points, self.name)
            self._alarms.setdefault(id(route), {}).update(added)
        table = self._routes.setdefault(id(route), {})
        for i, cfg in enumerate(route.map):
            found = map_point(i, cfg, points)
            if isinstance(found, Problem):
                self._map_problem(bridge.name, found)
                continue
            device, spec = found
            entry = _Entry(
                cfg,
                device,
                spec,
                bridge,
                unit_id,
                route.order_of(cfg),
                writable=route.writable and spec.access.writable and cfg.table.writable,
            )
            taken = unit.table(cfg.table).add(i, entry)
            if taken is not None:
                self._map_problem(bridge.name, taken)
                continue
            self.entries.append(entry)
            table.setdefault(device, {}).setdefault(spec.name, []).append(entry)

    def _map_problem(self, bridge: str, problem: Problem) -> None:
        """In the words ``gateway validate`` uses for it (`check_map`)."""
        where = f"bridge {bridge} {format_path(problem.path)}"
        self._map_error(f"{where}: found {problem.found}; expected {problem.expected}")

    def _map_error(self, text: str) -> None:
        log.error("%s: %s; not served", self.name, text)
        self.map_errors.append(text)

    # -- lifecycle

    async def __aenter__(self) -> ModbusServerAdapter:
        serial = self.config.serial
        if serial is not None:  # opened here, or by run() with backoff: the gateway runs on
            self._serial = SerialSlave(self, serial)
            why = self._serial.open()
            if why is not None:
                log.error("%s: %s; retrying with backoff", self.name, why)
            kind, where = "RTU slave", f"serial port {serial.port} ({serial.baudrate} baud)"
        else:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: _Connection(self), self.config.host, self.config.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]
            kind = "RTU over TCP" if self.config.framing == "rtu" else "TCP"
            where = f"{self.config.host}:{self.port}"
        forwarded = "".join(
            f"; unit ids {', '.join(map(str, p.unit_ids))} passed through to {p.device}"
            + (" (writable)" if p.writable else " (read-only)")
            for p in self.config.passthrough
        )
        log.info(
            "%s: Modbus %s server on %s, unit ids %s, %s%s",
            self.name,
            kind,
            where,
            ", ".join(map(str, self.units)) or "none",
            counted(len(self.entries), "map entry", "map entries"),
            forwarded,
        )
        writable = {(e.device, e.spec.name) for e in self.entries if e.writable}
        warnings = [self.config.write_warning(len(writable))]
        warnings += [self.config.passthrough_warning(p) for p in self.config.passthrough]
        for warning in warnings:
            if warning is not None:
                log.warning("%s: %s", self.name, warning)
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._serial is not None:
            self._serial.close()
        for connection in list(self._connections):
            connection.abort()
        self.bad_frame_log.close()
        self.dropped_log.close()
        self.idle_log.close()
        if server is not None:
            await server.wait_closed()

    async def run(self) -> None:
        if self._serial is not None:
            await self._serial.run()
        await asyncio.Event().wait()  # the connections serve from the loop's callbacks

    # -- values

    async def send(self, message: Message, route: Any) -> None:
        if self.foreign_events.dropped_if_foreign(message):
            return
        devices = self._routes.get(id(route))
        points = devices.get(message.device or "") if devices is not None else None
        if not points:
            return
        alarm = self._alarms.get(id(route))
        names = alarm.get(message.device or "", ()) if alarm else ()
        for sample in served_samples(message, names):
            for entry in points.get(sample.point, ()):
                self.units[entry.unit].tables[entry.table].update(entry, sample)

    # -- requests

    def handle(
        self, frame: Frame | RtuFrame, origin: str
    ) -> bytes | Coroutine[Any, Any, bytes | None] | None:
        """A response frame, or for a write a coroutine that returns it once acknowledged; None
        (or a coroutine's None) where no answer is due: an RTU broadcast."""
        self.counters.requests += 1
        function = frame.function
        if isinstance(frame, RtuFrame) and frame.unit_id == 0:  # broadcast
            return self._broadcast(frame, origin)
        passthrough = self.passthrough.by_unit.get(frame.unit_id)
        if passthrough is not None:
            return self.passthrough.handle(passthrough, frame, origin)
        try:
            unit = self.units.get(frame.unit_id)
            if unit is None:
                raise ModbusError(ExceptionCode.GATEWAY_PATH_UNAVAILABLE, function)
            request = parse_request(frame.pdu)
            if isinstance(request, ReadRequest):
                pdu = unit.read(request)
            elif isinstance(request, ReadDeviceIdentification):
                pdu = device_identification_pdu(self.identity, request)
            else:
                writes = unit.plan_write(request)
                where = f"{origin}/unit{frame.unit_id}"
                return self._write(frame, request, unit, writes, where)
        except ModbusError as exc:
            pdu = self._exception(function, exc.code)
        return frame.reply(pdu)

    def _broadcast(self, frame: RtuFrame, origin: str) -> Coroutine[Any, Any, None] | None:
        """RTU unit id 0: as on a serial bus, every unit acts on a write and none answers; a
        read, or a request a unit refuses, is ignored by it (an exception would be an answer).
        Function 22 is a write (each unit masks its own register); 23 and 43 read, so they are
        no broadcast: ignored whole, 23's write part included."""
        self.counters.broadcasts += 1
        try:
            request = parse_request(frame.pdu)
        except ModbusError:
            return None
        if isinstance(request, ReadRequest | ReadWriteMultipleRegisters | ReadDeviceIdentification):
            return None
        plans: list[tuple[int, _Unit, list[_Write]]] = []
        for unit_id, unit in self.units.items():
            try:
                plans.append((unit_id, unit, unit.plan_write(request)))
            except ModbusError:
                continue
        if not plans:
            return None
        return self._write_everywhere(frame, request, plans, origin)

    async def _write_everywhere(
        self,
        frame: RtuFrame,
        request: Request,
        plans: list[tuple[int, _Unit, list[_Write]]],
        origin: str,
    ) -> None:
        for unit_id, unit, writes in plans:  # the answer each unit would give is not sent
            await self._write(frame, request, unit, writes, f"{origin}/unit{unit_id}")

    async def _write(
        self,
        frame: Frame | RtuFrame,
        request: Request,
        unit: _Unit,
        writes: list[_Write],
        origin: str,
    ) -> bytes:
        """Write each point in address order, each once its device acknowledged the one before
        (FC 05/06/15/16, 22 and 23's write part alike); the first refusal is the answer."""
        for write in writes:
            entry = write.entry
            try:
                result = await entry.bridge.write(
                    entry.device,
                    entry.spec.name,
                    write.value,
                    origin=origin,
                    ack_timeout=self.config.write_timeout,
                )
            except Exception:  # a bug behind the bridge: the client is told, the server lives
                log.exception("%s: write %s/%s failed", self.name, entry.device, entry.spec.name)
                pdu = self._exception(request.function, ExceptionCode.SERVER_DEVICE_FAILURE)
                return frame.reply(pdu)
            if not result.ok:
                refused = self.counters.writes_refused
                refused[result.status] = refused.get(result.status, 0) + 1
                code = WRITE_EXCEPTIONS.get(result.status, ExceptionCode.SERVER_DEVICE_FAILURE)
                return frame.reply(self._exception(request.function, code))
            self.counters.writes_ok += 1
            self._written(entry, write.value)
        try:
            pdu = unit.answer(request)
        except ModbusError as exc:  # 23's read part: a point with no good value
            pdu = self._exception(request.function, exc.code)
        return frame.reply(pdu)

    def _written(self, entry: _Entry, value: Value) -> None:
        """An acknowledged write: the device holds ``value`` now, so every entry of its point
        serves it, as a device's registers would (a read right after, 23's read part, 22's
        next mask), until the device's next sample says otherwise."""
        route = entry.bridge.config.route
        points = self._routes.get(id(route), {}).get(entry.device, {})
        sample = Sample(entry.spec.name, value, Quality.GOOD)
        for served in points.get(entry.spec.name, (entry,)):
            self.units[served.unit].tables[served.table].update(served, sample)

    # -- connections

    def admit(self, newcomer: _Connection) -> bool:
        """Whether ``newcomer`` gets a slot: a free one, or that of the connection idle longest."""
        connections = self._connections
        if len(connections) < self.config.max_connections:
            self._evictions.succeeded()
        else:
            idlest = self._idlest()
            if idlest is None:
                self.counters.connections_refused += 1
                self._refusals.failed(
                    f"{newcomer.origin} refused: all {len(connections)} connections had a "
                    f"request in the last {self.config.idle_evict_after:g} s",
                    traceback=False,
                )
                return False
            victim, idle = idlest
            self.counters.connections_evicted += 1
            self._evictions.failed(
                f"all {len(connections)} taken, closed {victim.origin} (no request for "
                f"{idle:.1f} s) to admit {newcomer.origin}",
                traceback=False,
            )
            victim.abort()
            connections.discard(victim)  # its connection_lost comes later, from the loop
        self._refusals.succeeded()
        connections.add(newcomer)
        self.counters.connections_total += 1
        return True

    def _idlest(self) -> tuple[_Connection, float] | None:
        """The connection idle longest and for how long, if at least ``idle_evict_after``."""
        now = asyncio.get_running_loop().time()
        idle = [(now - c.idle_since, c) for c in self._connections if c.idle_since is not None]
        if not idle:
            return None
        seconds, victim = max(idle, key=lambda pair: pair[0])
        return (victim, seconds) if seconds >= self.config.idle_evict_after else None

    def dropped(self, runs: int, origin: str, why: str) -> None:
        """RTU: ``runs`` of bytes dropped unanswered (a bad CRC, garbage) from ``origin``, the
        last for ``why``: counted, and logged under the quota."""
        self.counters.frame_errors += runs
        if self.dropped_log.allow():
            log.info("%s: dropped bytes from %s, not answered: %s", self.name, origin, why)

    def _exception(self, function: int, code: int) -> bytes:
        key = f"{code:02X}"
        exceptions = self.counters.exceptions
        exceptions[key] = exceptions.get(key, 0) + 1
        return exception_pdu(function, ExceptionCode(code))

    # -- status

    def status(self) -> dict[str, Any]:
        c = self.counters
        serial = self._serial
        line: dict[str, Any] = {}
        if serial is not None:  # no port or connections: a line, open or not
            line = {
                "serial_port": serial.settings.port,
                "line_open": serial.is_open,
                "frames_ignored": serial.frames_ignored,
            }
        return {
            **({"port": self.port} if serial is None else line),
            "framing": "rtu" if self.config.rtu else "tcp",
            "connections": len(self._connections),
            "connections_total": c.connections_total,
            "connections_refused": c.connections_refused,
            "connections_evicted": c.connections_evicted,
            "connections_idle_closed": c.connections_idle_closed,
            "requests": c.requests,
            "exceptions": dict(c.exceptions),
            "frame_errors": c.frame_errors,
            "broadcasts": c.broadcasts,
            "events_dropped": self.foreign_events.dropped,  # events it cannot serve
            "writes_ok": c.writes_ok,
            "writes_refused": dict(c.writes_refused),
            "map_entries": len(self.entries),
            "map_errors": len(self.map_errors),
            **(self.passthrough.status() if self.config.passthrough else {}),
        }


class _Connection(asyncio.Protocol):
    """One client connection: frames answered in order, reads at once, writes when acked; reading
    is paused while a write waits, while the client leaves too much unread, and between bursts."""

    def __init__(self, server: ModbusServerAdapter) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        rtu = server.config.framing == "rtu"
        self._decoder: FrameDecoder | RtuDecoder = RtuDecoder() if rtu else FrameDecoder()
        self._dropped = 0  # rtu: the decoder's errors already counted and logged
        self._transport: asyncio.Transport | None = None
        self._writing: asyncio.Task[None] | None = None
        self._stalled = False  # the write buffer passed HIGH_WATER, not yet back to LOW_WATER
        self._more: asyncio.Handle | None = None  # _serve again, for requests already received
        self._idle_timer: asyncio.TimerHandle | None = None
        self.origin = "modbus"
        # loop time of the latest request served (or answered write, or connecting); None
        # while a write waits for its device: that connection is busy, not idle
        self.idle_since: float | None = self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.origin = f"modbus:{peer[0]}:{peer[1]}"
        if not self._server.admit(self):
            transport.abort()
            return
        self._transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        timeout = self._server.config.idle_timeout
        if timeout:
            self._idle_timer = self._loop.call_later(timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._transport = None  # stops _serve: requests still queued are not answered
        if self._writing is not None:
            self._writing.cancel()
        if self._more is not None:
            self._more.cancel()
            self._more = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def pause_writing(self) -> None:
        """The client leaves more than HIGH_WATER unread: read no more of its requests."""
        self._stalled = True
        self._update_reading()

    def resume_writing(self) -> None:
        """Read down to LOW_WATER: serve what was received meanwhile, then read again (from the
        loop, not inside the transport's own callback)."""
        self._stalled = False
        if self._more is None and self._writing is None:
            self._more = self._loop.call_soon(self._serve)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        wanted = self._writing is None and not self._stalled and self._more is None
        if wanted and not transport.is_reading():
            transport.resume_reading()
        elif not wanted and transport.is_reading():
            transport.pause_reading()

    def _check_idle(self) -> None:
        """Close the connection after idle_timeout with no request served (none came, or its
        client does not read the answers); else check again then."""
        timeout = self._server.config.idle_timeout or 0.0
        since = self._loop.time() if self.idle_since is None else self.idle_since
        left = since + timeout - self._loop.time()
        if left > 0:
            self._idle_timer = self._loop.call_later(left, self._check_idle)
            return
        self._idle_timer = None
        server = self._server
        server.counters.connections_idle_closed += 1
        if self._stalled:
            why = "it has not read its responses for %g s"
        else:
            why = "no request for %g s"
        if server.idle_log.allow():
            log.info(f"%s: closing %s: {why}", server.name, self.origin, timeout)
        self.abort()

    def data_received(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        if self._more is None:  # else served by that call, soon
            self._serve()

    def _serve(self) -> None:
        """Answer the complete frames received, up to BURST of them, until a write has to wait
        for its device, the client leaves too much unread, or the connection closes (a client
        that pipelined hundreds of requests and reset would otherwise get a send, and asyncio a
        warning, per remaining response). Reading is paused until all that is over."""
        server = self._server
        if self._more is not None:
            self._more.cancel()
            self._more = None
        budget = BURST
        try:
            while self._writing is None and not self._stalled:
                transport = self._transport
                if transport is None or transport.is_closing():
                    return
                if budget == 0:  # let the others in; serve the rest next round
                    self._more = self._loop.call_soon(self._serve)
                    break
                frame = self._next_frame()
                if frame is None:
                    break
                budget -= 1
                self.idle_since = self._loop.time()
                response = server.handle(frame, self.origin)
                if response is None:  # an RTU broadcast: not answered
                    continue
                if isinstance(response, bytes):
                    transport.write(response)  # past HIGH_WATER, calls pause_writing
                    continue
                self.idle_since = None
                self._writing = asyncio.ensure_future(self._finish(response))
        except FrameError as exc:
            server.counters.frame_errors += 1
            if server.bad_frame_log.allow():
                log.info("%s: closing %s: %s", server.name, self.origin, exc)
            self.abort()
            return
        self._update_reading()

    def _next_frame(self) -> Frame | RtuFrame | None:
        """The decoder's next frame; with rtu, the bytes it dropped on the way (a bad CRC,
        garbage) are counted and logged under the quota, and the connection lives on."""
        decoder = self._decoder
        frame = decoder.next_frame()
        if isinstance(decoder, RtuDecoder) and decoder.errors != self._dropped:
            self._server.dropped(decoder.errors - self._dropped, self.origin, decoder.last_error)
            self._dropped = decoder.errors
        return frame

    async def _finish(self, response: Coroutine[Any, Any, bytes | None]) -> None:
        answer = await response
        self._writing = None
        self.idle_since = self._loop.time()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if answer is not None:
            transport.write(answer)
        self._serve()
