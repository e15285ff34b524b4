"""A fast Modbus TCP device simulator: many devices, one port each, one event loop, no pymodbus.

Used by ``gateway demo``, by the tests (as the real peer of the Modbus client) and by the polling
benchmark (500 devices in one process). Speed comes from staying close to the loop: every
connection is an :class:`asyncio.Protocol` whose ``data_received`` deframes with the sans-IO
:mod:`protocols.modbus.frames`, answers from plain Python lists and writes the reply at once --
no streams, no task per connection, no task per request.

Behaviour worth knowing when a test leans on it:

* A device serves a set of unit ids, each with its own four tables (holding, input, coil,
  discrete). A request for another unit id gets exception 0x0B *gateway target device failed to
  respond* -- what a Modbus TCP gateway answers for an absent serial slave -- rather than
  silence, so a client fails fast instead of waiting for its timeout.
* ``refuse_functions`` (function codes, settable) are answered with exception 01 and change
  nothing, to play a picky device: a PLC that implements only FC 16, not FC 06.
* Any address outside a table's configured size is exception 02; a count of 0 or above the
  protocol limit is 03; an unknown function is 01. A malformed MBAP header (protocol id not 0, a
  length no frame can have) closes that connection and only that one.
* ``delay`` (seconds) holds every answer back, to look like a slow device; set it above the
  client's timeout to look like a device that never answers. ``online = False`` drops the
  device's connections and drops every new one as soon as it is accepted (the port still
  listens); :meth:`Simulator.stop_device` closes the port itself (connection refused) and
  :meth:`Simulator.start_device` opens it again on the same port number.

Run it as its own process (the benchmark does, to measure its CPU apart from the gateway's)::

    python -m protocols.modbus.simulator --devices 500 --registers 30 --base-port 15020 --animate

It prints one JSON line ``{"ports": [...], ...}`` when every port listens, serves until SIGTERM or
SIGINT, then prints one JSON line with its CPU time -- ``cpu_s`` for the whole process,
``serve_cpu_s`` from the ready line to the signal -- and the requests it served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from protocols.modbus.codec import ByteOrder, DataType, Table, encode, register_count
from protocols.modbus.frames import (
    FUNCTION_TABLE,
    ExceptionCode,
    Frame,
    FrameDecoder,
    FrameError,
    ModbusError,
    ReadRequest,
    Request,
    WriteMultipleCoils,
    WriteMultipleRegisters,
    WriteSingleCoil,
    WriteSingleRegister,
    build_frame,
    exception_pdu,
    parse_request,
    read_bits_pdu,
    read_registers_pdu,
    write_response_pdu,
)

log = logging.getLogger(__name__)

DEFAULT_SIZE = 1000
_SERVED = (
    ReadRequest,
    WriteSingleCoil,
    WriteSingleRegister,
    WriteMultipleCoils,
    WriteMultipleRegisters,
)


class UnitTables:
    """The four tables of one unit id: registers as lists of ints, bits as lists of bools."""

    __slots__ = ("tables",)

    def __init__(self, size: int | Mapping[Table | str, int] = DEFAULT_SIZE) -> None:
        if isinstance(size, int):
            sizes = dict.fromkeys(Table, size)
        else:
            sizes = {Table(name): n for name, n in size.items()}
        # bit tables hold bools, which are ints: one list type keeps the hot path simple
        self.tables: dict[Table, list[int]] = {}
        for table in Table:
            n = sizes.get(table, DEFAULT_SIZE)
            if not 0 <= n <= 65536:
                raise ValueError(f"{table} table of {n} entries (0..65536)")
            self.tables[table] = [False] * n if table.is_bit else [0] * n

    def execute(self, request: Request) -> bytes:
        """Apply one request; the response PDU, or :class:`ModbusError` (02) out of the table."""
        function = request.function
        if not isinstance(request, _SERVED):  # functions 22, 23, 43: a simple device lacks them
            raise ModbusError(ExceptionCode.ILLEGAL_FUNCTION, function)
        table = self.tables[FUNCTION_TABLE[function]]
        match request:
            case ReadRequest(address=address, count=count):
                end = address + count
                if end > len(table):
                    raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
                if function.is_bit:
                    return read_bits_pdu(function, table[address:end])
                return read_registers_pdu(function, table[address:end])
            case (
                WriteSingleCoil(address=address, value=value)
                | WriteSingleRegister(address=address, value=value)
            ):
                if address >= len(table):
                    raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
                table[address] = value
            case (
                WriteMultipleCoils(address=address, values=values)
                | WriteMultipleRegisters(address=address, values=values)
            ):
                end = address + len(values)
                if end > len(table):
                    raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, function)
                table[address:end] = values
        return write_response_pdu(request)


class SimulatedDevice:
    """One simulated Modbus TCP server (one port); its tables, knobs and counters.

    ``requests`` counts every request frame answered (exceptions included), ``exceptions`` the
    exception responses among them, ``frame_errors`` the connections closed for a bad header.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        unit_ids: Iterable[int] = (1,),
        size: int | Mapping[Table | str, int] = DEFAULT_SIZE,
        delay: float = 0.0,
        name: str | None = None,
        refuse_functions: Iterable[int] = (),
    ) -> None:
        ids = list(unit_ids)
        if not ids:
            raise ValueError("a device needs at least one unit id")
        self.port = port
        self.name = name
        self.delay = delay
        self.refuse_functions = frozenset(refuse_functions)
        self.default_unit = ids[0]
        self._size = size
        self._units: dict[int, UnitTables] = {}
        for unit_id in ids:
            self.add_unit(unit_id)
        self._online = True
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self.requests = 0
        self.exceptions = 0
        self.frame_errors = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        label = f" {self.name}" if self.name else ""
        return f"<SimulatedDevice{label} port={self.port} units={sorted(self._units)} {state}>"

    # --- tables ---------------------------------------------------------------------------

    @property
    def unit_ids(self) -> frozenset[int]:
        return frozenset(self._units)

    def add_unit(
        self, unit_id: int, size: int | Mapping[Table | str, int] | None = None
    ) -> UnitTables:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit id {unit_id} (0..255)")
        tables = UnitTables(self._size if size is None else size)
        self._units[unit_id] = tables
        return tables

    def tables(self, unit: int | None = None) -> UnitTables:
        unit_id = self.default_unit if unit is None else unit
        try:
            return self._units[unit_id]
        except KeyError:
            raise KeyError(f"unit id {unit_id} not served by {self!r}") from None

    def _table(self, table: Table | str, unit: int | None, bits: bool) -> list[int]:
        kind = Table(table)
        if kind.is_bit != bits:
            use = "set_bits/get_bits" if kind.is_bit else "set_registers/get_registers"
            raise TypeError(f"{kind} is a {'bit' if kind.is_bit else 'register'} table: use {use}")
        return self.tables(unit).tables[kind]

    @staticmethod
    def _span(table: Sequence[object], address: int, count: int) -> slice:
        if address < 0 or count < 0 or address + count > len(table):
            raise IndexError(f"{address}..{address + count - 1} outside a table of {len(table)}")
        return slice(address, address + count)

    def set_registers(
        self, table: Table | str, address: int, values: Iterable[int], *, unit: int | None = None
    ) -> None:
        regs = self._table(table, unit, bits=False)
        vals = [int(v) for v in values]
        if any(not 0 <= v <= 0xFFFF for v in vals):
            raise ValueError(f"register values must be 0..65535: {vals}")
        regs[self._span(regs, address, len(vals))] = vals

    def get_registers(
        self, table: Table | str, address: int, count: int = 1, *, unit: int | None = None
    ) -> list[int]:
        regs = self._table(table, unit, bits=False)
        return regs[self._span(regs, address, count)]

    def set_bits(
        self, table: Table | str, address: int, values: Iterable[bool], *, unit: int | None = None
    ) -> None:
        bits = self._table(table, unit, bits=True)
        vals = [bool(v) for v in values]
        bits[self._span(bits, address, len(vals))] = vals

    def get_bits(
        self, table: Table | str, address: int, count: int = 1, *, unit: int | None = None
    ) -> list[bool]:
        bits = self._table(table, unit, bits=True)
        return [bool(b) for b in bits[self._span(bits, address, count)]]

    def set_value(
        self,
        table: Table | str,
        address: int,
        value: float | int | str,
        dtype: DataType = DataType.UINT16,
        order: ByteOrder = ByteOrder.ABCD,
        *,
        length: int | None = None,
        unit: int | None = None,
    ) -> list[int]:
        """Store a typed value with :func:`protocols.modbus.codec.encode`; the registers written."""
        registers = encode(value, dtype, order, length=length)
        self.set_registers(table, address, registers, unit=unit)
        return registers

    # --- serving --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the port listens (see :meth:`Simulator.stop_device`)."""
        return self._server is not None

    @property
    def connections(self) -> int:
        return len(self._transports)

    @property
    def online(self) -> bool:
        return self._online

    @online.setter
    def online(self, value: bool) -> None:
        self._online = bool(value)
        if not value:
            self.drop_connections()

    def drop_connections(self) -> None:
        """Abort every open connection (the peer sees a reset)."""
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def handle(self, frame: Frame) -> bytes:
        """Answer one request frame with a response frame (the sans-IO core of the device)."""
        self.requests += 1
        function = frame.function
        tables = self._units.get(frame.unit_id)
        try:
            if tables is None:
                raise ModbusError(ExceptionCode.GATEWAY_TARGET_FAILED, function)
            if function in self.refuse_functions:
                raise ModbusError(ExceptionCode.ILLEGAL_FUNCTION, function)
            pdu = tables.execute(parse_request(frame.pdu))
        except ModbusError as exc:
            self.exceptions += 1
            pdu = exception_pdu(function, exc.code)
        return build_frame(frame.transaction_id, frame.unit_id, pdu)


class _DeviceProtocol(asyncio.Protocol):
    """One client connection to one device."""

    __slots__ = ("_device", "_decoder", "_transport", "_loop")

    def __init__(self, device: SimulatedDevice) -> None:
        self._device = device
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._device.online:
            transport.abort()
            return
        self._transport = transport
        self._device._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._device._transports.discard(self._transport)
            self._transport = None

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        device = self._device
        decoder = self._decoder
        decoder.receive_data(data)
        try:
            while (frame := decoder.next_frame()) is not None:
                response = device.handle(frame)
                if device.delay > 0:
                    self._loop.call_later(device.delay, self._send_late, transport, response)
                else:
                    transport.write(response)
        except FrameError as exc:
            device.frame_errors += 1
            log.debug("port %d: closing connection: %s", device.port, exc)
            transport.abort()

    def _send_late(self, transport: asyncio.Transport, response: bytes) -> None:
        if not transport.is_closing() and self._device.online:
            transport.write(response)


# --- animation ----------------------------------------------------------------------------

AnimationKind = Literal["sine", "counter", "toggle"]
PHASES = 8  # sine phase groups across devices (see apply_animation)

_INTEGERS = frozenset(
    {
        DataType.UINT16,
        DataType.INT16,
        DataType.UINT32,
        DataType.INT32,
        DataType.UINT64,
        DataType.INT64,
    }
)


def _wrap(value: float, dtype: DataType) -> float | int:
    """An integer type's value wrapped into its range (a counter rolls over like a device's)."""
    if dtype not in _INTEGERS:
        return value
    span = 1 << (16 * register_count(dtype))
    low = -(span >> 1) if dtype.value.startswith("int") else 0
    return low + (round(value) - low) % span


@dataclass(frozen=True, slots=True)
class Animation:
    """One point that changes over time (see :func:`animate`).

    ``sine``: ``offset + amplitude * sin(2 pi t / period)`` (phase-shifted per device);
    ``counter``: ``offset + step * tick``, wrapping inside the integer type;
    ``toggle``: alternates False/True (0/1 in a register).
    """

    kind: AnimationKind
    table: Table
    address: int
    dtype: DataType = DataType.UINT16
    order: ByteOrder = ByteOrder.ABCD
    amplitude: float = 100.0
    offset: float = 0.0
    period: float = 60.0
    step: float = 1.0
    unit: int | None = None

    @property
    def size(self) -> int:
        """Bits or registers this point occupies."""
        return 1 if self.table.is_bit else register_count(self.dtype)

    def entries(self, tick: int, t: float) -> list[int]:
        """What to store at ``tick``: registers, or one bool (an int) for a bit table."""
        value = self.value(tick, t)
        if self.table.is_bit:
            return [bool(value)]
        return encode(value, self.dtype, self.order)

    def value(self, tick: int, t: float) -> float | int | bool:
        if self.kind == "toggle":
            return tick % 2 == 1
        if self.kind == "sine":
            raw: float = self.offset + self.amplitude * math.sin(2 * math.pi * t / self.period)
        else:
            raw = self.offset + self.step * tick
        return _wrap(raw, self.dtype)


def demo_points(size: int = DEFAULT_SIZE) -> list[Animation]:
    """A small plant in every device (those that fit in ``size`` registers/bits per table).

    holding 0-1 float32 temperature (20 +- 5, 60 s); holding 2-3 uint32 counter; holding 4 int16
    sine (+-1000, 30 s); input 0-1 float32 pressure (1.0 +- 0.5, 20 s); input 2 uint16 counter;
    coil 0 and discrete 0 toggle every tick.
    """
    points = [
        Animation("sine", Table.HOLDING, 0, DataType.FLOAT32, amplitude=5, offset=20, period=60),
        Animation("counter", Table.HOLDING, 2, DataType.UINT32),
        Animation("sine", Table.HOLDING, 4, DataType.INT16, amplitude=1000, period=30),
        Animation("sine", Table.INPUT, 0, DataType.FLOAT32, amplitude=0.5, offset=1, period=20),
        Animation("counter", Table.INPUT, 2, DataType.UINT16),
        Animation("toggle", Table.COIL, 0, DataType.BOOL),
        Animation("toggle", Table.DISCRETE, 0, DataType.BOOL),
    ]
    return [p for p in points if p.address + p.size <= size]


def apply_animation(
    devices: Sequence[SimulatedDevice], points: Sequence[Animation], tick: int, t: float
) -> None:
    """Write every point's value at ``tick`` (time ``t``) into every device, once.

    Devices fall into :data:`PHASES` groups whose sines are shifted by a fraction of a period,
    so that neighbours differ; values are encoded once per group, not once per device, and
    written straight into the tables (500 devices cost about a millisecond per tick).
    """
    for point in points:
        phases = PHASES if point.kind == "sine" else 1
        entries = [
            point.entries(tick, t + k * point.period / PHASES)
            for k in range(min(phases, len(devices)))
        ]
        start = point.address
        end = start + len(entries[0])
        for index, device in enumerate(devices):
            table = device.tables(point.unit).tables[point.table]
            if end > len(table):
                raise IndexError(f"{point} does not fit in {device!r}")
            table[start:end] = entries[index % phases]


async def animate(
    devices: SimulatedDevice | Sequence[SimulatedDevice],
    points: Sequence[Animation] | None = None,
    period: float = 1.0,
) -> None:
    """Change the points' values every ``period`` seconds until cancelled.

    One task for any number of devices (500 tasks waking each second cost more than one loop);
    ticks are scheduled on a fixed grid so that they do not drift.
    """
    group = [devices] if isinstance(devices, SimulatedDevice) else list(devices)
    chosen = demo_points() if points is None else list(points)
    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while True:
        apply_animation(group, chosen, tick, loop.time() - start)
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * period - loop.time()))


# --- the simulator ------------------------------------------------------------------------


class Simulator:
    """Many :class:`SimulatedDevice` servers in the running event loop.

    ``async with Simulator() as sim: dev = await sim.add_device(port=0)``; leaving the block
    stops every device and animation.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.devices: list[SimulatedDevice] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def requests(self) -> int:
        """Requests answered by all devices."""
        return sum(d.requests for d in self.devices)

    async def add_device(
        self,
        port: int = 0,
        *,
        unit_ids: Iterable[int] = (1,),
        size: int | Mapping[Table | str, int] = DEFAULT_SIZE,
        delay: float = 0.0,
        name: str | None = None,
        device: SimulatedDevice | None = None,
    ) -> SimulatedDevice:
        """Create (or take ``device``) and start serving it; port 0 picks a free port."""
        if device is None:
            device = SimulatedDevice(port, unit_ids=unit_ids, size=size, delay=delay, name=name)
        self.devices.append(device)
        await self.start_device(device)
        return device

    async def start_device(self, device: SimulatedDevice) -> None:
        """Listen on the device's port (again); a port of 0 becomes the one picked."""
        if device._server is not None:
            return
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _DeviceProtocol(device), self.host, device.port, reuse_address=True
        )
        device._server = server
        device.port = server.sockets[0].getsockname()[1]
        log.debug("simulated device listening on %s:%d", self.host, device.port)

    async def stop_device(self, device: SimulatedDevice) -> None:
        """Close the port and every connection; tables and counters stay."""
        server, device._server = device._server, None
        device.drop_connections()
        if server is not None:
            server.close()
            await server.wait_closed()

    async def remove_device(self, device: SimulatedDevice) -> None:
        await self.stop_device(device)
        self.devices.remove(device)

    def animate(
        self,
        devices: SimulatedDevice | Sequence[SimulatedDevice] | None = None,
        points: Sequence[Animation] | None = None,
        period: float = 1.0,
    ) -> asyncio.Task[None]:
        """Start :func:`animate` (all devices by default) as a task the simulator cancels."""
        group = self.devices if devices is None else devices
        task = asyncio.get_running_loop().create_task(animate(group, points, period))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for device in self.devices:
            await self.stop_device(device)


# --- command line -------------------------------------------------------------------------


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m protocols.modbus.simulator",
        description="Simulated Modbus TCP devices, one port each, until SIGTERM/SIGINT.",
    )
    parser.add_argument("--devices", type=int, default=1, help="number of devices (1)")
    parser.add_argument(
        "--registers", type=int, default=DEFAULT_SIZE, help="entries per table per unit (1000)"
    )
    parser.add_argument(
        "--base-port", type=int, default=0, help="first port, the next ones follow (0: free ports)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--unit-ids", default="1", help="comma-separated unit ids (1)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--animate", action="store_true", help="change values (demo_points)")
    parser.add_argument("--period", type=float, default=1.0, help="animation period, seconds")
    parser.add_argument(
        "--count-all",
        action="store_true",
        help="every holding register counts up by one each period (every point changes)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.devices < 1 or not 0 <= args.registers <= 65536:
        parser.error("--devices must be >= 1 and --registers 0..65536")
    return args


async def _count_all(devices: Sequence[SimulatedDevice], period: float) -> None:
    """Add one to every holding register of every unit, every ``period`` on a fixed grid."""
    loop = asyncio.get_running_loop()
    start, tick = loop.time(), 0
    while True:
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * period - loop.time()))
        for device in devices:
            for unit in device.unit_ids:
                regs = device.tables(unit).tables[Table.HOLDING]
                regs[:] = [(v + 1) & 0xFFFF for v in regs]


async def _serve(args: argparse.Namespace) -> dict[str, float]:
    unit_ids = [int(u) for u in args.unit_ids.split(",") if u.strip()]
    _raise_fd_limit(4 * args.devices + 256)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(args.host) as sim:
        for i in range(args.devices):
            port = args.base_port + i if args.base_port else 0
            device = await sim.add_device(
                port, unit_ids=unit_ids, size=args.registers, delay=args.delay, name=f"sim{i}"
            )
            for unit in unit_ids:
                n = args.registers
                for table in (Table.HOLDING, Table.INPUT):
                    device.set_registers(table, 0, range(n), unit=unit)
                for table in (Table.COIL, Table.DISCRETE):
                    device.set_bits(table, 0, (a % 2 == 0 for a in range(n)), unit=unit)
        if args.animate:
            sim.animate(points=demo_points(args.registers), period=args.period)
        counting = (
            asyncio.create_task(_count_all(sim.devices, args.period)) if args.count_all else None
        )
        ready = {"ports": [d.port for d in sim.devices], "host": args.host, "pid": os.getpid()}
        print(json.dumps(ready), flush=True)
        started, cpu_started = time.monotonic(), _cpu_seconds()
        await stop.wait()
        if counting is not None:
            counting.cancel()
        serving = {
            "requests": sim.requests,
            "serve_s": round(time.monotonic() - started, 3),
            "serve_cpu_s": round(_cpu_seconds() - cpu_started, 3),
        }
    return serving


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    result = asyncio.run(_serve(args))
    times = os.times()
    # cpu_s: the whole process (start-up included); serve_cpu_s: from "ready" to the signal
    result |= {
        "cpu_s": round(times.user + times.system, 3),
        "user_s": round(times.user, 3),
        "sys_s": round(times.system, 3),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
