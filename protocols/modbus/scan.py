"""Probing a Modbus TCP address (or RTU over TCP) for the units behind it, what they are and
which addresses of their tables answer: the engine of ``gateway scan modbus``.

Read-only by construction: the only requests built here are function 03 at address 0 (is a unit
there?), reads of the four tables (01-04) and 43/14 (read device identification). No write
request is ever encoded.

What counts as a unit: any answer, values or an exception, except exceptions 0A and 0B, which a
Modbus TCP gateway (the project's own server and simulator included) answers *for* a unit id
that has no device behind it. A timeout means no unit; a peer that closes the connection when
asked for a unit id (some gateways do, for an unknown one) means no unit either, and the scan
reconnects for the next one. An answer that does not parse as the answer to the request asked
is reported as garbage, with what was wrong.

Time is bounded three ways: each request has its timeout; up to ``concurrency`` TCP connections
probe different unit ids at once (one request at a time on each, as some devices, pymodbus's
server among them, drop pipelined requests); and the whole scan has a deadline, after which
the units not yet probed are reported as such. RTU over TCP is one connection, one request at a
time: a converter has one serial bus, where requests cannot overlap. So is a local serial line
(``serial`` in the options, `SerialLink`), with the line's timing: t3.5 of silence before each
request, the timeout counted from the end of sending.

Register ranges (`find_ranges`): for each table, the first ``limit`` addresses are read in blocks
of 100; a block refused is read again in blocks of 10, and a block of 10 refused address by
address, so every address below ``limit`` is settled and the ranges are exact, at a cost of at
most limit/100 + limit/10 + limit reads per table (a device whose map is all there costs
limit/100). An address "answers" when a read of it returns values: exception 02 (not mapped),
but also 04 or 0B (mapped, no value to give now) leave it out. A table whose read times out is
left at that address (a device silent on unmapped addresses would otherwise cost a timeout per
address).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from protocols.modbus.codec import Table
from protocols.modbus.config import Framing, SerialPort
from protocols.modbus.frames import (
    FUNCTION_TABLE,
    MEI_DEVICE_IDENTIFICATION,
    ExceptionCode,
    FrameDecoder,
    FrameError,
    FunctionCode,
    ModbusError,
    ReadDeviceIdCode,
    ReadDeviceIdentification,
    ReadRequest,
    build_frame,
    encode_request,
    parse_response,
)
from protocols.modbus.rtu import MAX_ADU, RtuDecoder, build_rtu_frame, response_size
from protocols.modbus.serial_line import SerialLine, SerialLineError
from protocols.modbus.server_config import DeviceIdentity

# Object ids 0x00-0x06 of 43/14 by the names the server's `identity:` gives them.
OBJECT_NAMES: tuple[str, ...] = tuple(DeviceIdentity.model_fields)
# Exceptions a gateway answers for a unit id with no device behind it.
ABSENT = frozenset({ExceptionCode.GATEWAY_PATH_UNAVAILABLE, ExceptionCode.GATEWAY_TARGET_FAILED})
PRESENCE = ReadRequest(FunctionCode.READ_HOLDING_REGISTERS, 0, 1)
# The read of each table, holding first (the order of the report).
READ_OF: dict[Table, FunctionCode] = {
    FUNCTION_TABLE[f]: f
    for f in (
        FunctionCode.READ_HOLDING_REGISTERS,
        FunctionCode.READ_INPUT_REGISTERS,
        FunctionCode.READ_COILS,
        FunctionCode.READ_DISCRETE_INPUTS,
    )
}
BLOCKS = (100, 10, 1)  # register probe: block sizes, each refused block read again finer
IDENTIFICATION_ROUNDS = 8  # 43/14 answers followed ("more follows"), a bound on a looping peer
_IDENT_HEAD = struct.Struct(">BBBBBBB")  # function, MEI, read code, conformity, more, next, count

UnitStatus = Literal["found", "absent", "garbage", "closed", "not probed"]


class ScanError(Exception):
    """The address could not be reached at all: one line for the user."""


class NoAnswer(Exception):
    """The request timed out."""


class LinkClosed(Exception):
    """The peer closed the connection (or it failed) while a request waited."""


class Garbage(Exception):
    """Bytes came back that are not the answer to the request."""


# --- sans-IO parts ------------------------------------------------------------------------


def parse_units(text: str, framing: Framing = "tcp") -> list[int]:
    """``1-247``, ``1,2,5``, ``1-5,9``: the unit ids, sorted, each once. ValueError says why
    not. RTU allows 1-247 (0 is broadcast, no unit answers it); MBAP 0-255."""
    low, high = (1, 247) if framing == "rtu" else (0, 255)
    units: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            a = int(first)
            b = int(last) if dash else a
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a unit id or a range like 1-247") from None
        if a > b:
            raise ValueError(f"{part.strip()!r}: the range runs backwards")
        if a < low or b > high:
            raise ValueError(f"{part.strip()!r}: unit ids are {low}-{high} with framing {framing}")
        units.update(range(a, b + 1))
    return sorted(units)


def rtu_response_size(head: bytes | bytearray) -> int | None:
    """The size of the RTU response frame ``head`` starts (unit id first), 0 when no response
    we ask for starts so (a write's answer never is), None while more bytes are needed."""
    if len(head) >= 2 and (head[1] & 0x7F) not in _ASKED:
        return 0
    return response_size(head)


_ASKED = frozenset(READ_OF.values()) | {FunctionCode.ENCAPSULATED_INTERFACE}


class RtuResponseDecoder(RtuDecoder):
    """RTU responses out of a byte stream: `rtu.RtuDecoder` sized by `rtu_response_size` (a
    frame needs a size it knows and a good CRC; any other byte is dropped and counted)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(rtu_response_size, head=MAX_ADU)  # 43/14: its objects tell its size

    @property
    def dropped(self) -> int:
        return self.skipped


@dataclass(frozen=True, slots=True)
class IdentificationPart:
    """One 43/14 answer: its objects and where the next answer starts, if any."""

    conformity: int
    more: bool
    next_id: int
    objects: dict[int, bytes]


def parse_identification(pdu: bytes) -> IdentificationPart:
    """A 43/14 response PDU (the request's exception already taken out by `parse_response`);
    FrameError when it is not one."""
    if len(pdu) < _IDENT_HEAD.size or pdu[1] != MEI_DEVICE_IDENTIFICATION:
        raise FrameError(f"not a device identification answer: {pdu[:8].hex()}")
    _, _, _, conformity, more, next_id, count = _IDENT_HEAD.unpack_from(pdu)
    objects: dict[int, bytes] = {}
    at = _IDENT_HEAD.size
    for _ in range(count):
        if at + 2 > len(pdu) or at + 2 + pdu[at + 1] > len(pdu):
            raise FrameError(f"device identification answer cut short ({len(pdu)} bytes)")
        objects[pdu[at]] = pdu[at + 2 : at + 2 + pdu[at + 1]]
        at += 2 + pdu[at + 1]
    if at != len(pdu):
        raise FrameError(f"{len(pdu) - at} bytes after the identification objects")
    return IdentificationPart(conformity, more == 0xFF, next_id, objects)


def object_text(value: bytes) -> str:
    """An identification object as printable text (objects are ASCII; a device may not be)."""
    return "".join(c if c.isprintable() else "?" for c in value.decode("latin-1"))


def merge(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open spans, sorted and joined where they touch or overlap."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


async def find_ranges(
    read: Callable[[int, int], Awaitable[bool]], limit: int, blocks: Sequence[int] = BLOCKS
) -> list[tuple[int, int]]:
    """The half-open spans below ``limit`` where ``read(address, count)`` is True, probed as the
    module's docstring says (a block that reads is taken whole: a read succeeds only when every
    address of it answers)."""
    found: list[tuple[int, int]] = []

    async def probe(start: int, end: int, sizes: Sequence[int]) -> None:
        for a in range(start, end, sizes[0]):
            b = min(a + sizes[0], end)
            if await read(a, b - a):
                found.append((a, b))
            elif len(sizes) > 1:
                await probe(a, b, sizes[1:])

    await probe(0, limit, blocks)
    return merge(found)


# --- results --------------------------------------------------------------------------------


@dataclass
class UnitReport:
    """What the scan learnt about one unit id."""

    unit: int
    status: UnitStatus = "not probed"
    answer: str = ""  # how it answered the presence read, or what went wrong
    identification: dict[str, str] | None = None  # object name -> text
    identification_note: str = ""  # "not supported", "no answer", ... when there is none
    ranges: dict[Table, list[tuple[int, int]]] = field(default_factory=dict)  # half-open
    range_notes: dict[Table, str] = field(default_factory=dict)
    holding_zero: bool = False  # the presence read returned a value


@dataclass(frozen=True)
class ScanOptions:
    host: str
    port: int = 502
    framing: Framing = "tcp"
    units: tuple[int, ...] = tuple(range(1, 248))
    timeout: float = 1.0
    deadline: float = 120.0
    concurrency: int = 8
    registers: bool = False
    limit: int = 200  # register probe: addresses 0..limit-1 of each table
    serial: SerialPort | None = None  # a local serial line instead of host and port (RTU)

    @property
    def target(self) -> str:
        """What is scanned, in words: HOST:PORT or the serial port."""
        if self.serial is not None:
            return self.serial.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class ScanReport:
    options: ScanOptions
    units: list[UnitReport]
    notes: list[str] = field(default_factory=list)  # what happened to the connections
    deadline_hit: bool = False

    @property
    def found(self) -> list[UnitReport]:
        return [u for u in self.units if u.status == "found"]


# --- I/O ------------------------------------------------------------------------------------


class Link:
    """One connection, one request at a time, in either framing."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, options: ScanOptions
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.options = options
        self.tid = 0
        self.mbap = FrameDecoder()
        self.closed = False

    @classmethod
    async def open(cls, options: ScanOptions) -> Link:
        """Connected, or ScanError naming the address and the system's reason."""
        if options.serial is not None:
            return SerialLink.open_line(options, options.serial)
        where = f"{options.host}:{options.port}"
        try:
            async with asyncio.timeout(max(options.timeout, 3.0)):
                reader, writer = await asyncio.open_connection(options.host, options.port)
        except TimeoutError:
            raise ScanError(f"cannot connect to {where}: no answer (timed out)") from None
        except socket.gaierror as exc:
            raise ScanError(f"cannot connect to {where}: unknown host ({exc.strerror})") from None
        except OSError as exc:  # asyncio's "Connect call failed" hides the reason in errno
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ScanError(f"cannot connect to {where}: {reason}") from None
        return cls(reader, writer, options)

    async def close(self) -> None:
        self.closed = True
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()

    async def call(self, unit: int, request: ReadRequest | ReadDeviceIdentification) -> bytes:
        """The response PDU to ``request`` (an exception PDU included); NoAnswer, LinkClosed or
        Garbage (after which the link is closed when the stream is out of step)."""
        pdu = encode_request(request)
        if self.options.framing == "rtu":
            return await self._call_rtu(unit, request.function, pdu)
        return await self._call_mbap(unit, pdu)

    async def _call_mbap(self, unit: int, pdu: bytes) -> bytes:
        self.tid = (self.tid + 1) & 0xFFFF
        await self._send(build_frame(self.tid, unit, pdu))
        try:
            async with asyncio.timeout(self.options.timeout):
                while True:
                    for frame in self.mbap.feed(await self._receive()):
                        if frame.transaction_id == self.tid:  # others: late answers
                            if frame.unit_id != unit:
                                raise Garbage(f"answer for unit {frame.unit_id}")
                            return frame.pdu
        except FrameError as exc:
            await self.close()
            raise Garbage(str(exc)) from None
        except TimeoutError:
            raise NoAnswer from None

    async def _call_rtu(self, unit: int, function: int, pdu: bytes) -> bytes:
        decoder = RtuResponseDecoder()  # bytes of an earlier, timed-out answer are not this one
        await self._send(build_rtu_frame(unit, pdu))
        try:
            async with asyncio.timeout(self.options.timeout):
                while True:
                    for frame in decoder.feed(await self._receive()):
                        if frame.unit_id == unit and frame.function & 0x7F == function:
                            return frame.pdu
        except TimeoutError:
            if decoder.dropped or decoder.pending:
                n = decoder.dropped + decoder.pending
                raise Garbage(f"{n} bytes that are no answer to function {function:#04x}") from None
            raise NoAnswer from None

    async def _send(self, data: bytes) -> None:
        if self.closed:
            raise LinkClosed("closed")
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as exc:
            self.closed = True
            raise LinkClosed(exc.strerror or str(exc)) from None

    async def _receive(self) -> bytes:
        try:
            data = await self.reader.read(4096)
        except OSError as exc:
            self.closed = True
            raise LinkClosed(exc.strerror or str(exc)) from None
        if not data:
            self.closed = True
            raise LinkClosed("closed by the peer")
        return data


class SerialLink(Link):
    """A local serial line: the RTU calls of `Link`, on `SerialLine` (t3.5 of silence before
    each request; the answer's timeout counts from when the request's last byte has left)."""

    def __init__(self, options: ScanOptions) -> None:
        self.options = options
        self.tid = 0
        self.mbap = FrameDecoder()
        self.closed = False
        self.line: SerialLine | None = None
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the line failed
        self._lost = ""

    @classmethod
    def open_line(cls, options: ScanOptions, settings: SerialPort) -> SerialLink:
        link = cls(options)
        try:
            link.line = SerialLine.open(settings, link)
        except SerialLineError as exc:
            raise ScanError(f"cannot open serial port {settings.port}: {exc}") from None
        return link

    def data_received(self, data: bytes) -> None:
        self._chunks.put_nowait(data)

    def line_lost(self, reason: str) -> None:
        self._lost = reason
        self._chunks.put_nowait(None)

    async def close(self) -> None:
        self.closed = True
        if self.line is not None:
            self.line.close()

    async def _send(self, data: bytes) -> None:
        line = self.line
        if self.closed or line is None or not line.is_open:
            raise LinkClosed(self._lost or "closed")
        await line.wait_quiet()
        while not self._chunks.empty():  # a late answer to an earlier request: not this one's
            self._chunks.get_nowait()
        try:
            done = line.write(data)
        except ConnectionError as exc:
            self.closed = True
            raise LinkClosed(str(exc)) from None
        await asyncio.sleep(max(0.0, done - asyncio.get_running_loop().time()))

    async def _receive(self) -> bytes:
        data = await self._chunks.get()
        if data is None:
            self.closed = True
            raise LinkClosed(self._lost)
        return data


def _exception_name(code: int) -> str:
    try:
        return f"exception {code:02X} {ExceptionCode(code).name.lower().replace('_', ' ')}"
    except ValueError:
        return f"exception {code:02X}"


async def _read(
    link: Link, unit: int, request: ReadRequest | ReadDeviceIdentification
) -> tuple[bytes | None, ModbusError | None]:
    """The answer's PDU, or the exception it carried; Garbage for one that does not match."""
    pdu = await link.call(unit, request)
    try:
        if isinstance(request, ReadRequest):
            parse_response(request, pdu)
        elif pdu[:1] != bytes((request.function,)):
            parse_response(request, pdu)  # raises the exception it carries, or says it is not
    except ModbusError as exc:
        return None, exc
    except FrameError as exc:
        raise Garbage(str(exc)) from None
    return pdu, None


async def _presence(link: Link, report: UnitReport) -> None:
    try:
        pdu, error = await _read(link, report.unit, PRESENCE)
    except NoAnswer:
        report.status, report.answer = "absent", "no answer"
        return
    except Garbage as exc:
        report.status, report.answer = "garbage", f"garbage answer: {exc}"
        return
    except LinkClosed as exc:
        report.status, report.answer = "closed", f"connection {exc}"
        raise
    if error is None:
        report.status, report.answer, report.holding_zero = "found", "holding 0 read", True
    elif error.code in ABSENT:
        report.status, report.answer = "absent", _exception_name(error.code)
    else:
        report.status, report.answer = "found", _exception_name(error.code)


async def _identify(link: Link, report: UnitReport) -> None:
    """43/14, regular category (basic objects included), following "more follows"; a device
    that refuses the regular category (03, 02) is asked for the basic one."""
    objects: dict[int, bytes] = {}
    for code in (ReadDeviceIdCode.REGULAR, ReadDeviceIdCode.BASIC):
        object_id = 0
        try:
            for _ in range(IDENTIFICATION_ROUNDS):
                pdu, error = await _read(
                    link, report.unit, ReadDeviceIdentification(code, object_id)
                )
                if error is not None:
                    break
                assert pdu is not None
                part = parse_identification(pdu)
                objects.update(part.objects)
                if not part.more or part.next_id <= object_id:
                    break
                object_id = part.next_id
        except NoAnswer:
            report.identification_note = "no answer"
            return
        except (Garbage, FrameError) as exc:
            report.identification_note = f"garbage answer: {exc}"
            return
        if error is None:
            break
        if error.code is ExceptionCode.ILLEGAL_FUNCTION:
            report.identification_note = "not supported"
            return
        report.identification_note = _exception_name(error.code)
    if not objects:
        return
    report.identification_note = ""
    report.identification = {
        (OBJECT_NAMES[i] if i < len(OBJECT_NAMES) else f"object_{i:02x}"): object_text(v)
        for i, v in sorted(objects.items())
    }


class _TableReader:
    """``read(address, count)`` for `find_ranges` on one table of one unit: True when values
    come back; after a timeout or garbage it reads nothing more (``stopped`` says why)."""

    def __init__(self, link: Link, unit: int, function: FunctionCode) -> None:
        self.link, self.unit, self.function = link, unit, function
        self.stopped = ""

    async def __call__(self, address: int, count: int) -> bool:
        if self.stopped:
            return False
        request = ReadRequest(self.function, address, count)
        try:
            _, error = await _read(self.link, self.unit, request)
        except NoAnswer:
            self.stopped = f"no answer to a read at {address}: probed no further"
            return False
        except Garbage as exc:
            self.stopped = f"garbage answer at {address}: {exc}"
            return False
        return error is None


async def _probe_tables(link: Link, report: UnitReport, limit: int) -> None:
    for table, function in READ_OF.items():
        reader = _TableReader(link, report.unit, function)
        report.ranges[table] = await find_ranges(reader, limit)
        if reader.stopped:
            report.range_notes[table] = reader.stopped


async def _probe_unit(link: Link, report: UnitReport, options: ScanOptions) -> None:
    await _presence(link, report)
    if report.status != "found":
        return
    await _identify(link, report)
    if options.registers:
        await _probe_tables(link, report, options.limit)


async def scan(options: ScanOptions) -> ScanReport:
    """Probe every unit id of ``options``; ScanError when the address cannot be reached."""
    report = ScanReport(options, [UnitReport(u) for u in options.units])
    first = await Link.open(options)  # unreachable: say so now, not once per unit
    queue = list(reversed(report.units))
    one = options.framing == "rtu" or options.serial is not None
    workers = 1 if one else max(1, min(options.concurrency, len(queue)))

    async def worker(link: Link | None) -> None:
        while queue:
            if link is None or link.closed:
                again = link is not None
                try:
                    link = await Link.open(options)
                except ScanError as exc:
                    what = "reconnecting" if again else "a further connection"
                    note = f"{what}: {exc}"
                    if note not in report.notes:
                        report.notes.append(note)
                    return  # the other connections take the rest
            unit = queue.pop()
            try:
                await _probe_unit(link, unit, options)
            except LinkClosed as exc:
                if unit.status == "found":
                    unit.answer += f"; connection {exc} during the probe"
            except BaseException:
                await link.close()
                raise
        if link is not None:
            await link.close()

    async def run_all() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(worker(first))
            for _ in range(workers - 1):
                group.create_task(worker(None))

    try:
        async with asyncio.timeout(options.deadline):
            await run_all()
    except TimeoutError:
        report.deadline_hit = True
    if not first.closed:
        await first.close()
    return report


def probe_bounds(options: ScanOptions) -> str:
    """The probe's bounds in one line, for the report."""
    if options.framing == "rtu" or options.serial is not None:
        at_once = "one request at a time (rtu)"
    else:
        at_once = f"up to {options.concurrency} connections at once"
    tables = f"; tables probed over addresses 0-{options.limit - 1}" if options.registers else ""
    return (
        f"timeout {options.timeout:g} s per request, deadline {options.deadline:g} s, "
        f"{at_once}{tables}"
    )
