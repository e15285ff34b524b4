"""Modbus RTU over TCP (``framing: rtu``): the client against pymodbus's own server speaking RTU
frames on 127.0.0.1, as a serial-to-Ethernet converter in raw mode passes them from an RS-485 bus,
and against a tiny device of our own for what a sound server never sends (a late answer, a frame
whose CRC does not match, an answer of the wrong size)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, free_port, wait_for
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from test_cli import gateway
from test_modbus_client import Running, device_config, good, run_adapter  # noqa: F401

from gateway.config.errors import ConfigError
from gateway.config.model import load_config_text
from gateway.types import Quality, Sample

DEAD = 3  # a unit id on the bus that never answers (powered off, wrong address)
HOLDING, INPUT, COILS = 3, 4, 1  # the function codes pymodbus's datastore is addressed by


def _tables() -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """Coils, discrete inputs, holding and input registers: 100 of each, all 0."""

    def block(bits: bool) -> list[SimData]:
        kind = DataType.BITS if bits else DataType.REGISTERS
        return [SimData(0, count=100, values=False if bits else 0, datatype=kind)]

    return block(True), block(True), block(False), block(False)


@dataclass
class Bus:
    """pymodbus's server in RTU framing: units 1 and 2 answer, unit ``DEAD`` never does."""

    server: ModbusTcpServer
    port: int

    async def set(self, unit: int, function: int, address: int, values: list[Any]) -> None:
        await self.server.async_setValues(unit, function, address, values)

    async def get(self, unit: int, function: int, address: int, count: int = 1) -> list[Any]:
        return list(await self.server.async_getValues(unit, function, address, count))


@contextlib.asynccontextmanager
async def pymodbus_units(
    framer: FramerType = FramerType.RTU, trace_pdu: Any = None
) -> AsyncIterator[tuple[ModbusTcpServer, int]]:
    """pymodbus's TCP server (and its port) with units 1 and 2, and unit `DEAD`, which never
    answers; ``trace_pdu`` is pymodbus's hook on each request and answer."""
    dead = asyncio.Event()  # set at teardown only: the dead unit's requests wait until then

    async def never_answers(*_: Any) -> None:
        await dead.wait()

    units = [SimDevice(u, simdata=_tables()) for u in (1, 2)]
    units.append(SimDevice(DEAD, simdata=_tables(), action=never_answers))
    port = free_port()
    server = ModbusTcpServer(units, framer=framer, address=(HOST, port), trace_pdu=trace_pdu)
    await server.serve_forever(background=True)
    try:
        yield server, port
    finally:
        dead.set()
        await server.shutdown()


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    async with pymodbus_units() as (server, port):
        yield Bus(server, port)


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
def start_rtu(run_adapter: Any) -> Start:  # noqa: F811 (the fixture imported above)
    """``await start_rtu(port, points, **device_keys)``: the client adapter running with
    ``framing: rtu`` (and ``max_gap: 0``: one request per point)."""

    async def start(port: int, points: list[dict[str, Any]], **extra: Any) -> Running:
        running: Running = await run_adapter(
            device_config(port, points, framing="rtu", max_gap=0, **extra)
        )
        return running

    return start


def seen(r: Running, point: str, quality: Quality) -> list[Sample]:
    """Every sample of ``point`` of that quality sent so far, oldest first."""
    return [s for m in r.drain() for s in m.samples if s.point == point and s.quality is quality]


def bad_samples(r: Running, point: str) -> list[str | None]:
    return [s.reason for s in seen(r, point, Quality.BAD)]


def values_of(r: Running, point: str) -> list[Any]:
    return [s.value for s in seen(r, point, Quality.GOOD)]


# -- against pymodbus's server ---------------------------------------------------------------


async def test_reads_registers_and_coils_of_two_units(bus: Bus, start_rtu: Start) -> None:
    await bus.set(1, HOLDING, 0, [(-215) & 0xFFFF])
    await bus.set(2, HOLDING, 0, [77])  # the same address on another unit
    await bus.set(2, INPUT, 5, list(struct.unpack(">HH", struct.pack(">I", 123456))))
    await bus.set(1, COILS, 3, [True])
    points = [
        {"name": "temp", "address": 0, "type": "int16", "scale": 0.1, "unit_id": 1},
        {"name": "other", "address": 0, "unit_id": 2},
        {"name": "count", "table": "input", "address": 5, "type": "uint32", "unit_id": 2},
        {"name": "pump", "table": "coil", "address": 3, "unit_id": 1},
        {"name": "valve", "table": "coil", "address": 4, "unit_id": 1},
    ]
    r = await start_rtu(bus.port, points)
    readings = {
        p["name"]: await wait_for(lambda n=p["name"]: good(r, n), timeout=10) for p in points
    }
    assert {n: s.value for n, s in readings.items()} == {
        "temp": -21.5,
        "other": 77,
        "count": 123456,
        "pump": True,
        "valve": False,
    }
    await bus.set(2, HOLDING, 0, [78])
    await wait_for(lambda: (s := good(r, "other")) and s.value == 78, timeout=10)
    status = r.adapter.status()
    assert status["framing"] == "rtu" and status["connected"] is True
    assert status["timeouts"] == 0 and status["errors"] == 0


async def test_writes_go_down_through_the_router_and_read_back(bus: Bus, start_rtu: Start) -> None:
    points = [
        {"name": "sp", "address": 10, "type": "int16", "scale": 0.1, "access": "rw", "unit_id": 2},
        {"name": "run", "table": "coil", "address": 7, "access": "rw", "unit_id": 1},
        {"name": "flag", "address": 20, "type": "bool", "bit": 4, "access": "rw", "unit_id": 1},
    ]
    await bus.set(1, HOLDING, 20, [0b1])
    r = await start_rtu(bus.port, points, poll_groups={"default": {"interval": 30}})
    router = r.adapter.context.router
    router.declare("dev", r.adapter.points())
    try:
        await wait_for(lambda: good(r, "sp") and good(r, "run") and good(r, "flag"), timeout=10)
        for point, value in (("sp", 42.5), ("run", True), ("flag", True)):
            result = await router.write("dev", point, value, origin="test")
            assert result.ok, result
        assert await bus.get(2, HOLDING, 10) == [425]
        assert (await bus.get(1, COILS, 7))[0] is True
        assert await bus.get(1, HOLDING, 20) == [0b10001]  # the other bit kept
        # read back at once, long before the 30 s poll
        await wait_for(lambda: (s := good(r, "sp")) and s.value == 42.5, timeout=5)
        await wait_for(lambda: (s := good(r, "run")) and s.value is True, timeout=5)
    finally:
        router.close()


async def test_a_dead_unit_takes_only_its_own_points_bad(bus: Bus, start_rtu: Start) -> None:
    # Three requests to the dead unit in every poll: before, three timeouts in a row reconnected
    # the converter and took the live unit's points Bad with them, at every poll.
    points = [
        {"name": "live", "address": 0, "unit_id": 1},
        {"name": "live2", "table": "input", "address": 0, "unit_id": 2},
        *({"name": f"dead{a}", "address": a, "unit_id": DEAD} for a in (0, 10, 20)),
        {"name": "dead_sp", "address": 30, "unit_id": DEAD, "access": "rw"},
    ]
    r = await start_rtu(bus.port, points)
    router = r.adapter.context.router
    router.declare("dev", r.adapter.points())
    try:
        for value in (1, 2, 3, 4):
            await bus.set(1, HOLDING, 0, [value])
            await wait_for(lambda v=value: (s := good(r, "live")) and s.value == v, timeout=10)
        # past TIMEOUTS_BEFORE_RECONNECT and pymodbus's own limit (retries + 3), with no answer
        # of the dead unit between
        await wait_for(lambda: r.adapter.status()["timeouts"] >= 7, timeout=30)
        written = await router.write("dev", "dead_sp", 5, origin="test")
        assert written.status == "timeout", written
        await bus.set(2, INPUT, 0, [9])
        await wait_for(lambda: (s := good(r, "live2")) and s.value == 9, timeout=10)
    finally:
        router.close()
    status = r.adapter.status()
    assert status["reconnects"] == 0 and status["connected"] is True
    assert status["silent_units"] == [DEAD]
    assert bad_samples(r, "live") == [] and bad_samples(r, "live2") == []
    for a in (0, 10, 20):
        assert bad_samples(r, f"dead{a}") == ["timeout"]  # once: unchanged since
    # A dead unit is asked once per `timeout`, not once per request: the live units' polls
    # are not three timeouts long.
    assert status["timeouts"] <= status["polls"] + 2, status


async def test_a_dead_unit_alone_on_the_wire_does_not_reconnect_the_converter(
    bus: Bus, start_rtu: Start
) -> None:
    # The live unit is read once an hour: for a while only the dead unit is asked, and nothing
    # answers. That says nothing about the link while the live unit answered last; pymodbus's
    # own count of unanswered requests closed the connection after five, as ours did after three.
    points = [
        {"name": "live", "address": 0, "unit_id": 1, "poll": "hourly"},
        {"name": "dead", "address": 0, "unit_id": DEAD, "poll": "fast"},
    ]
    groups = {"hourly": {"interval": 3600}, "fast": {"interval": 0.1}}
    r = await start_rtu(bus.port, points, poll_groups=groups, timeout=0.2)
    await wait_for(lambda: r.adapter.status()["timeouts"] >= 7, timeout=30)
    status = r.adapter.status()
    assert status["reconnects"] == 0 and status["connected"] is True, status
    assert bad_samples(r, "live") == [] and good(r, "live") is not None


@pytest.mark.parametrize(("bad", "other"), [(0, 0), (248, 255)])
async def test_unit_ids_outside_1_247_are_refused_for_rtu_at_validate_time(
    tmp_path: Path, bad: int, other: int
) -> None:
    """0 is broadcast (no device answers a read), 248-255 are reserved on a serial line."""
    text = (
        "devices:\n"
        "  bus:\n"
        "    protocol: modbus\n"
        "    host: 10.0.0.9\n"
        "    framing: rtu\n"
        f"    unit_id: {bad}\n"
        "    points:\n"
        "      - {name: a, address: 0}\n"
        f"      - {{name: b, address: 1, unit_id: {other}}}\n"
        "      - {name: c, address: 2, unit_id: 247}\n"
        "  typo:\n"
        "    protocol: modbus\n"
        "    host: 10.0.0.9\n"
        "    framing: rtu-over-tcp\n"
        "    points: [{name: a, address: 0}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "plant.yaml")
    found = {p.dotted: (p.line, p.found, p.expected) for p in info.value.problems}
    broadcast = (
        "a unit id 1-247 (0 is broadcast on a serial bus: no device answers a read;"
        " 248-255 are reserved)"
    )
    assert found == {
        "devices.bus.unit_id": (6, f"{bad} (framing: rtu), the unit id of 1 point (a)", broadcast),
        "devices.bus.points[1].unit_id": (9, f"{other} (framing: rtu)", broadcast),
        "devices.typo.framing": (14, "'rtu-over-tcp'", "one of 'tcp', 'rtu'"),
    }
    # any unit id stays allowed in Modbus TCP framing, the default, where devices answer on it
    tcp = load_config_text(
        text.replace("framing: rtu-over-tcp", "framing: tcp").replace("    framing: rtu\n", ""),
        "plant.yaml",
    )
    assert [d.config.framing for d in tcp.devices.values()] == ["tcp", "tcp"]
    assert [d.config.unit_id for d in tcp.devices.values()][0] == bad
    file = tmp_path / "plant.yaml"
    file.write_text(text)
    out = gateway("validate", str(file))
    assert out.returncode == 1 and "3 problems" in out.stderr, out.stderr
    said = f"{file}:9:40: devices.bus.points[1].unit_id: found {other} (framing: rtu)"
    assert said in out.stderr, out.stderr


# -- against a device of our own: what a sound server never sends ----------------------------


def crc16(frame: bytes) -> bytes:
    """Modbus RTU's CRC, low byte first; written here, not taken from the client's library."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def test_crc16_of_a_known_frame() -> None:
    assert crc16(bytes.fromhex("01030000000a")) == bytes.fromhex("c5cd")


@dataclass(frozen=True)
class ReadFrame:
    unit: int
    function: int
    address: int
    count: int

    def reply(self, values: list[int]) -> bytes:
        """The RTU answer carrying ``values`` as registers."""
        body = bytes([self.unit, self.function, 2 * len(values)])
        body += b"".join(struct.pack(">H", v) for v in values)
        return body + crc16(body)


def value_at(address: int) -> int:
    return 1000 + address


Answer = Callable[[ReadFrame], Awaitable[bytes]]


@dataclass
class RawRtuDevice:
    """A register device behind a raw TCP port: one request at a time, as on a bus. Refuses
    (drops) anything that is not an RTU read frame with a good CRC; ``answer`` returns the
    reply of each read, after any delay it likes."""

    answer: Answer
    malformed: int = 0  # requests that were not an RTU read frame with a good CRC

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await reader.readexactly(8)
                if crc16(frame[:6]) != frame[6:] or not 1 <= frame[1] <= 4:
                    self.malformed += 1
                    continue
                read = ReadFrame(frame[0], frame[1], *struct.unpack(">HH", frame[2:6]))
                writer.write(await self.answer(read))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_device() -> AsyncIterator[Callable[[Answer], Awaitable[tuple[RawRtuDevice, int]]]]:
    """Start a `RawRtuDevice` on a free port: ``(device, port)``."""
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[RawRtuDevice, int]:
        device = RawRtuDevice(answer)
        server = await asyncio.start_server(device.serve, HOST, free_port())
        servers.append(server)
        return device, server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


async def test_a_late_answer_is_not_taken_for_the_next_requests(
    raw_device: Any, start_rtu: Start
) -> None:
    # The first read of "a" is answered after the client gave up, while the device still holds
    # the read of "b" (same unit, function and size): RTU has no transaction id, so that late
    # answer arrives just as "b"'s would. pymodbus takes it for b's: b read a's value.
    timeout = 0.5
    late = {"armed": True}

    async def answer(read: ReadFrame) -> bytes:
        if read.address == 0 and late["armed"]:
            late["armed"] = False
            await asyncio.sleep(timeout * 1.5)
        return read.reply([value_at(read.address)])

    device, port = await raw_device(answer)
    points = [{"name": "a", "address": 0}, {"name": "b", "address": 10}]
    r = await start_rtu(port, points, timeout=timeout)
    await wait_for(lambda: good(r, "a") and good(r, "b"), timeout=10)
    polls = r.adapter.status()["polls"]
    await wait_for(lambda: r.adapter.status()["polls"] >= polls + 5, timeout=10)
    assert not late["armed"] and device.malformed == 0
    assert values_of(r, "a") == [value_at(0)] and values_of(r, "b") == [value_at(10)]


async def test_a_frame_whose_crc_does_not_match_is_never_a_value(
    raw_device: Any, start_rtu: Start
) -> None:
    garbled = {"left": 4}

    async def answer(read: ReadFrame) -> bytes:
        frame = bytearray(read.reply([value_at(read.address)]))
        if garbled["left"]:
            garbled["left"] -= 1
            frame[4] ^= 0x01  # a bit flipped on the wire: the CRC no longer matches
        return bytes(frame)

    device, port = await raw_device(answer)
    r = await start_rtu(port, [{"name": "a", "address": 0}])
    await wait_for(lambda: good(r, "a"), timeout=15)
    assert garbled["left"] == 0 and device.malformed == 0
    assert bad_samples(r, "a")[:1] == ["timeout"]  # what a garbled frame looks like: no answer
    assert values_of(r, "a") == [value_at(0)]  # never the flipped value, 1001


async def test_an_answer_of_the_wrong_size_is_bad_not_a_value(
    raw_device: Any, start_rtu: Start
) -> None:
    # e.g. a late answer to a larger read of the same unit: its first register is not "a"
    async def answer(read: ReadFrame) -> bytes:
        return read.reply([value_at(read.address + i) for i in range(read.count + 1)])

    _, port = await raw_device(answer)
    r = await start_rtu(port, [{"name": "a", "address": 0}])
    reasons = await wait_for(lambda: bad_samples(r, "a"), timeout=10)
    assert reasons[0] == "wrong answer (2 values to a read of 1)"
    assert values_of(r, "a") == []
    assert r.adapter.status()["errors"] >= 1
