"""Modbus RTU on a local serial line (``serial:``), client and server, on pseudo-terminals: socat
makes a pair of linked ptys (``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B``), as a USB
RS-485 adapter and its device would be; for a multi-drop bus (one master, two slaves) the test
links three ptys itself (`Bus`: every byte one end writes, the others read, as on RS-485).

Peers we did not write: pymodbus's serial server (a device) and serial client (a master),
mbpoll in RTU mode, and mosquitto at the end of the line. Parity is N on the ptys: this kernel's
ptys refuse PARENB (tcsetattr EINVAL), and parity means nothing without a wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pty
import tty
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MosquittoBroker, find_binary, wait_for
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from test_e2e_modbus_mqtt import Collector
from test_modbus_client import Running, run_adapter  # noqa: F401
from test_opcua_server import running_gateway
from test_scan_modbus import scan_cli, scan_json, validates

from gateway.config import ConfigError, load_config_text
from gateway.types import Quality
from protocols.modbus.client import ModbusWriteError
from protocols.modbus.codec import Table
from protocols.modbus.config import ModbusDevice, SerialPort
from protocols.modbus.frames import (
    FunctionCode,
    ReadRequest,
    WriteSingleRegister,
    encode_request,
    read_registers_pdu,
)
from protocols.modbus.rtu import MAX_ADU, RtuDecoder, RtuFrame, build_rtu_frame, response_size
from protocols.modbus.serial_line import silent_interval
from protocols.modbus.serial_master import SerialRtuClient
from protocols.modbus.serial_slave import BusDecoder
from protocols.modbus.server import ModbusServerAdapter
from protocols.modbus.simulator import Simulator

HOLDING = FunctionCode.READ_HOLDING_REGISTERS
LINE = {"baudrate": 19200, "parity": "N"}  # see the module's docstring for N


# -- config and timing (sans-IO) ---------------------------------------------------------------


def device_problems(device: str) -> dict[str, tuple[str, str]]:
    text = f"devices:\n  meter:\n    protocol: modbus\n{device}\n    points: [{{name: a, address: 0}}]\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "serial.yaml")
    return {p.dotted: (p.found, p.expected) for p in info.value.problems}


def test_a_serial_device_defaults_to_the_serial_line_spec() -> None:
    device = ModbusDevice.model_validate(
        {"serial": {"port": "/dev/ttyUSB0"}, "points": [{"name": "a", "address": 0}]}
    )
    assert device.serial == SerialPort(port="/dev/ttyUSB0")
    assert (device.serial.baudrate, device.serial.bytesize) == (19200, 8)
    assert (device.serial.parity, device.serial.stopbits) == ("E", 1)  # 19200 8E1
    assert device.rtu and device.check() == []
    assert device.where == "serial port /dev/ttyUSB0"


def test_serial_config_mistakes_are_named_at_their_key() -> None:
    both = device_problems("    host: 10.0.0.5\n    serial: {port: /dev/ttyUSB0}")
    assert both["devices.meter.host"] == ("host with serial", "either serial or host, not both")
    assert device_problems("    timeout: 1")["devices.meter"] == ("no 'host' key", "key 'host'")
    null = device_problems("    host: null")
    assert null["devices.meter.host"] == ("null", "an address (Modbus TCP), or serial")
    tcp = device_problems("    framing: tcp\n    serial: {port: /dev/ttyUSB0}")
    found, expected = tcp["devices.meter.framing"]
    assert found == "tcp with serial" and "a serial line speaks Modbus RTU" in expected
    rate = device_problems("    serial: {port: /dev/ttyUSB0, baudrate: 12345}")
    assert (
        "expected one of 1200, 2400, 4800, 9600, 19200" in rate["devices.meter.serial.baudrate"][1]
    )
    parity = device_problems("    serial: {port: /dev/ttyUSB0, parity: X}")
    assert "devices.meter.serial.parity" in parity
    unit = device_problems("    serial: {port: /dev/ttyUSB0}\n    unit_id: 0")
    assert unit["devices.meter.unit_id"][0].startswith("0 (serial)")
    # framing: rtu said outright is fine
    ModbusDevice.model_validate(
        {"serial": {"port": "/dev/x"}, "framing": "rtu", "points": [{"name": "a", "address": 0}]}
    )


def test_server_on_a_serial_line_takes_no_tcp_address() -> None:
    text = (
        "devices:\n  plc: {protocol: modbus, host: 127.0.0.1, points: [{name: a, address: 0}]}\n"
        "endpoints:\n  mb: {protocol: modbus, role: server, serial: {port: /dev/ttyS0},"
        " port: 1502, unit_ids: [0, 3]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "serial.yaml")
    found = {p.dotted: p.found for p in info.value.problems}
    assert found["endpoints.mb.port"] == "port with serial"
    assert found["endpoints.mb.unit_ids"] == "0 (serial)"


def test_the_silent_interval_is_three_and_a_half_characters() -> None:
    # 11 bits a character (start, 8 data, parity, stop): 3.5 of them at 9600 and 19200 baud
    assert silent_interval(SerialPort(port="x", baudrate=9600)) == pytest.approx(3.5 * 11 / 9600)
    assert silent_interval(SerialPort(port="x")) == pytest.approx(3.5 * 11 / 19200)
    assert silent_interval(SerialPort(port="x", baudrate=115200)) == 0.00175  # fixed above 19200
    # no parity, one stop bit: 10 bits
    assert silent_interval(SerialPort(port="x", baudrate=9600, parity="N")) == pytest.approx(
        3.5 * 10 / 9600
    )


def test_bus_decoder_keeps_requests_drops_answers_and_noise_until_silence() -> None:
    request = build_rtu_frame(2, encode_request(ReadRequest(HOLDING, 0, 2)))
    answer = build_rtu_frame(2, read_registers_pdu(HOLDING, [7, 8]))
    write = build_rtu_frame(1, encode_request(WriteSingleRegister(4, 9)))
    decoder = BusDecoder()
    # a request, another slave's answer and the next request, in one burst
    frames = decoder.feed(request + answer + write)
    assert [(f.unit_id, f.pdu) for f in frames] == [(2, request[1:-2]), (1, write[1:-2])]
    assert decoder.answers == 1 and decoder.errors == 0
    # noise: nothing until the line has been silent, not even a good frame glued to it
    assert decoder.feed(b"\x00\xff\x13" + write) == []
    assert decoder.errors == 1 and decoder.pending == 0
    decoder.silence()
    assert [f.unit_id for f in decoder.feed(write)] == [1]
    # a frame cut short by silence is noise too; the next frame is framed
    assert decoder.feed(write[:5]) == []
    decoder.silence()
    assert decoder.errors == 2 and decoder.last_error.startswith("a frame cut short")
    bad_crc = write[:-1] + bytes((write[-1] ^ 1,))
    assert decoder.feed(bad_crc) == [] and decoder.errors == 3
    decoder.silence()
    assert [f.unit_id for f in decoder.feed(write)] == [1]


# -- ptys --------------------------------------------------------------------------------------


class Socat:
    """A socat pty pair ``a`` <-> ``b`` that can be killed and started again (the same names)."""

    def __init__(self, folder: Path) -> None:
        self.a, self.b = str(folder / "ttyA"), str(folder / "ttyB")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = find_binary("socat", "/usr/bin/socat")
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "pty,raw,echo=0,link=" + self.a,
            "pty,raw,echo=0,link=" + self.b,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_for(
            lambda: os.path.exists(self.a) and os.path.exists(self.b), message="socat's ptys"
        )

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for link in (self.a, self.b):  # socat removes them on a clean exit only
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)


@pytest.fixture
async def socat(tmp_path: Path) -> AsyncIterator[Socat]:
    pair = Socat(tmp_path)
    await pair.start()
    try:
        yield pair
    finally:
        await pair.kill()


class Bus:
    """A multi-drop line of ``n`` ptys: what one end writes, every other end reads (RS-485).
    ``deaf``: end -> the unit ids it hears alone, for a peer that cannot listen to a shared bus
    (pymodbus's server handles one frame per read and loses step on another slave's answer);
    each write arrives whole here, so its first byte is the unit id."""

    def __init__(self, n: int, deaf: dict[int, set[int]] | None = None) -> None:
        self.deaf = deaf or {}
        self.loop = asyncio.get_running_loop()
        pairs = [pty.openpty() for _ in range(n)]
        self.masters = [m for m, _ in pairs]
        self._slaves = [s for _, s in pairs]  # kept open: a pty with no slave open reads EIO
        self.ends = [os.ttyname(s) for s in self._slaves]
        for m in self.masters:
            os.set_blocking(m, False)
            self.loop.add_reader(m, self._relay, m)

    def _relay(self, source: int) -> None:
        try:
            data = os.read(source, 4096)
        except OSError:
            return
        for end, m in enumerate(self.masters):
            hears = self.deaf.get(end)
            if m != source and (hears is None or data[0] in hears):
                os.write(m, data)

    def close(self) -> None:
        for fd in self.masters:
            self.loop.remove_reader(fd)
        for fd in self.masters + self._slaves:
            os.close(fd)


def _tables() -> tuple[list[SimData], ...]:
    """Coils, discrete inputs, holding and input registers: 100 of each, all 0."""
    bits = [SimData(0, count=100, values=False, datatype=SimType.BITS)]
    registers = [SimData(0, count=100, values=0, datatype=SimType.REGISTERS)]
    return bits, bits, registers, registers


@contextlib.asynccontextmanager
async def pymodbus_server(port: str, units: dict[int, list[int]]) -> AsyncIterator[Any]:
    """pymodbus's serial server: each unit with these holding registers from address 0. It
    answers only its own unit ids, as a slave on a shared bus must (pymodbus answers exception
    04 for the others: those answers are dropped through its own trace hook)."""

    def own_only(sending: bool, data: bytes) -> bytes:
        return data if not sending or data[:1] and data[0] in units else b""

    server = ModbusSerialServer(
        [SimDevice(u, simdata=_tables()) for u in units],
        framer=FramerType.RTU,
        port=port,
        trace_packet=own_only,
        **LINE,  # type: ignore[arg-type]
    )
    for unit, registers in units.items():
        await server.async_setValues(unit, HOLDING, 0, registers)
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()


@contextlib.asynccontextmanager
async def pymodbus_client(port: str, wait_s: float = 2.0) -> AsyncIterator[Any]:
    client = AsyncModbusSerialClient(port, timeout=wait_s, retries=0, **LINE)  # type: ignore[arg-type]
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


def serial_device(port: str, points: list[dict[str, Any]], **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "serial": {"port": port, **LINE},
            "timeout": 0.5,
            "reconnect": {"initial": 0.05, "max": 0.3},
            "poll_groups": {"default": {"interval": 0.1}},
            "points": points,
            **extra,
        }
    )


def latest(r: Running, point: str) -> Any:
    sample = r.latest(point)
    return None if sample is None else (sample.value, sample.quality)


# -- the client: our master against pymodbus's serial server ---------------------------------


async def test_client_polls_and_writes_a_pymodbus_serial_device(
    socat: Socat,
    run_adapter: Any,  # noqa: F811
) -> None:
    async with pymodbus_server(socat.a, {1: [215, 0, 7]}) as device:
        points = [
            {"name": "temp", "address": 0, "type": "int16", "scale": 0.1},
            {"name": "setpoint", "address": 2, "access": "rw"},
            {"name": "total", "address": 4, "type": "uint32", "access": "rw"},
        ]
        r: Running = await run_adapter(serial_device(socat.b, points))
        await wait_for(lambda: latest(r, "temp") == (21.5, Quality.GOOD), timeout=10)
        assert latest(r, "setpoint") == (7, Quality.GOOD)
        await r.adapter.write("setpoint", 42)  # FC 06
        await r.adapter.write("total", 70000)  # FC 16
        assert await device.async_getValues(1, HOLDING, 2, 1) == [42]
        assert await device.async_getValues(1, HOLDING, 4, 2) == [1, 4464]
        await wait_for(lambda: latest(r, "setpoint") == (42, Quality.GOOD))
        status = r.adapter.status()
        assert status["connected"] and status["framing"] == "rtu"
        assert status["timeouts"] == 0 and status["errors"] == 0


async def test_a_port_that_cannot_be_opened_is_an_error_and_is_retried(
    tmp_path: Path,
    run_adapter: Any,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    pair = Socat(tmp_path)  # not started yet: the port is not there
    caplog.set_level(logging.ERROR, logger="protocols.modbus.client")
    r: Running = await run_adapter(serial_device(pair.b, [{"name": "a", "address": 0}]))
    await wait_for(lambda: latest(r, "a") == (None, Quality.BAD))
    assert r.latest("a").reason == "unreachable"  # type: ignore[union-attr]
    status = r.adapter.status()
    assert not status["connected"]
    assert status["last_error"] == (f"cannot open serial port {pair.b}: No such file or directory")
    await wait_for(lambda: any(pair.b in m for m in caplog.messages), message="the error line")
    try:
        await pair.start()
        async with pymodbus_server(pair.a, {1: [5]}):
            await wait_for(lambda: latest(r, "a") == (5, Quality.GOOD), timeout=10)
            assert r.adapter.status()["connected"]
    finally:
        await pair.kill()


async def test_a_vanishing_port_marks_the_device_down_until_it_is_back(
    socat: Socat,
    run_adapter: Any,  # noqa: F811
) -> None:
    async with pymodbus_server(socat.a, {1: [11]}):
        r: Running = await run_adapter(serial_device(socat.b, [{"name": "a", "address": 0}]))
        await wait_for(lambda: latest(r, "a") == (11, Quality.GOOD), timeout=10)
    await socat.kill()  # the USB adapter unplugged
    await wait_for(lambda: latest(r, "a") == (None, Quality.BAD), timeout=10)
    status = r.adapter.status()
    assert not status["connected"]
    assert f"serial port {socat.b}" in status["last_error"]
    await socat.start()  # plugged in again
    async with pymodbus_server(socat.a, {1: [12]}):
        await wait_for(lambda: latest(r, "a") == (12, Quality.GOOD), timeout=15)
        assert r.adapter.status()["connected"]
        assert r.adapter.status()["reconnects"] >= 1


async def test_units_behind_one_line_and_a_dead_one_stays_alone(
    socat: Socat,
    run_adapter: Any,  # noqa: F811
) -> None:
    """Two units on the line answer; a third is silent: only its point goes Bad, the line stays
    up, as over RTU over TCP."""
    async with pymodbus_server(socat.a, {1: [10], 2: [20]}):
        points = [
            {"name": "one", "address": 0, "unit_id": 1},
            {"name": "two", "address": 0, "unit_id": 2},
            {"name": "dead", "address": 0, "unit_id": 3},
        ]
        r: Running = await run_adapter(serial_device(socat.b, points, timeout=0.3))
        await wait_for(lambda: latest(r, "one") == (10, Quality.GOOD), timeout=10)
        await wait_for(lambda: latest(r, "two") == (20, Quality.GOOD))
        await wait_for(lambda: r.adapter.status()["timeouts"] >= 3)
        assert r.latest("dead").reason == "timeout"  # type: ignore[union-attr]
        status = r.adapter.status()
        assert status["connected"] and status["silent_units"] == [3]
        assert status["reconnects"] == 0


async def test_values_reach_mosquitto_through_the_gateway(
    socat: Socat, mosquitto: MosquittoBroker
) -> None:
    config = f"""
gateway: {{name: serialgw, status_interval: 0}}
devices:
  meter:
    protocol: modbus
    serial: {{port: {socat.b}, baudrate: 19200, parity: N}}
    timeout: 0.5
    poll_groups: {{default: {{interval: 0.1}}}}
    points:
      - {{name: temp, address: 0, type: int16, scale: 0.1, unit: degC}}
      - {{name: count, address: 1}}
endpoints:
  broker: {{protocol: mqtt, host: {mosquitto.host}, port: {mosquitto.port}}}
bridges:
  - {{name: up, from: meter, to: broker, topic: "site/{{device}}/{{point}}", payload: sample}}
"""
    collector = Collector(mosquitto)
    try:
        async with pymodbus_server(socat.a, {1: [215, 1234]}), running_gateway(config):
            temp = await wait_for(lambda: collector.last("site/meter/temp"), timeout=15)
            assert temp["value"] == pytest.approx(21.5) and temp["quality"] == "good"
            count = await wait_for(lambda: collector.last("site/meter/count"))
            assert count["value"] == 1234
    finally:
        collector.close()


# -- the server target as a slave on the line ----------------------------------------------------

SERVER = """
gateway: {{name: gw, status_interval: 0}}
devices:
  plc:
    protocol: modbus
    host: 127.0.0.1
    port: {device_port}
    timeout: 0.3
    poll_groups: {{default: {{interval: 0.05}}}}
    reconnect: {{initial: 0.05, max: 0.2}}
    points:
      - {{name: count, address: 0}}
      - {{name: temp, address: 1, type: int16}}
      - {{name: setpoint, address: 2, access: rw}}
      - {{name: total, address: 8, type: uint32, access: rw}}
endpoints:
  mb:
    protocol: modbus
    role: server
    serial: {{port: {port}, baudrate: 19200, parity: N}}
    unit_ids: [1]
bridges:
  - name: serve
    from: plc
    to: mb
    map:
      - {{point: count, address: 0}}
      - {{point: temp, address: 1, type: int16}}
      - {{point: setpoint, address: 2}}
      - {{point: total, address: 8, type: uint32}}
"""


@contextlib.asynccontextmanager
async def serial_server(
    simulator: Simulator, port: str, baudrate: int = 19200
) -> AsyncIterator[Any]:
    device = await simulator.add_device(size=40, name="plc")
    device.set_registers(Table.HOLDING, 0, [42, 65535, 7])  # temp -1
    text = SERVER.format(device_port=device.port, port=port).replace("19200", str(baudrate))
    async with running_gateway(text) as gateway:
        server = gateway.adapters["mb"]
        assert isinstance(server, ModbusServerAdapter)
        await wait_for(lambda: all(e.state == 0 for e in server.entries), message="first values")
        yield device, server


async def mbpoll_rtu(port: str, *args: str, values: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """mbpoll once in RTU mode on ``port`` (19200 8N1); ``values``: write them."""
    binary = find_binary("mbpoll", "/usr/bin/mbpoll")
    proc = await asyncio.create_subprocess_exec(
        binary,
        *("-m", "rtu", "-b", "19200", "-P", "none", "-1", "-0", "-o", "2"),
        *args,
        port,
        *values,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_mbpoll_reads_and_writes_the_serial_server(
    simulator: Simulator, socat: Socat
) -> None:
    async with serial_server(simulator, socat.a) as (device, server):
        rc, out, err = await mbpoll_rtu(socat.b, "-a", "1", "-t", "4", "-r", "0", "-c", "3")
        assert rc == 0, out + err
        assert "[0]: \t42\n[1]: \t65535 (-1)\n[2]: \t7\n" in out
        rc, out, err = await mbpoll_rtu(socat.b, "-a", "1", "-t", "4", "-r", "2", values=("99",))
        assert rc == 0, out + err
        assert device.get_registers(Table.HOLDING, 2) == [99]
        status = server.status()
        assert status["serial_port"] == socat.a and status["line_open"]
        assert status["writes_ok"] == 1 and status["frame_errors"] == 0


async def test_pymodbus_serial_client_against_the_serial_server(
    simulator: Simulator, socat: Socat
) -> None:
    async with serial_server(simulator, socat.a) as (device, server):
        async with pymodbus_client(socat.b) as client:
            rr = await client.read_holding_registers(0, count=3, device_id=1)  # FC 03
            assert not rr.isError() and rr.registers == [42, 65535, 7]
            rr = await client.write_register(2, 55, device_id=1)  # FC 06
            assert not rr.isError() and rr.registers == [55]
            rr = await client.write_registers(8, [1, 4464], device_id=1)  # FC 16: 70000
            assert not rr.isError()
            assert device.get_registers(Table.HOLDING, 2) == [55]
            assert device.get_registers(Table.HOLDING, 8, 2) == [1, 4464]
            rr = await client.read_holding_registers(30, count=1, device_id=1)
            assert rr.isError() and rr.exception_code == 2  # unmapped: served units answer
        assert server.status()["writes_ok"] == 2


async def test_the_server_is_silent_for_other_units_on_a_shared_bus(
    simulator: Simulator,
) -> None:
    """One master (pymodbus's client), our server as unit 1 and pymodbus's server as unit 2 on
    one multi-drop line: each unit answers its own requests, nobody else's, and our server
    ignores unit 2's answers. A unit nobody serves times out: no 0A from us."""
    bus = Bus(3, deaf={2: {2}})
    master, ours, theirs = bus.ends
    try:
        async with (
            serial_server(simulator, ours) as (_, server),
            pymodbus_server(theirs, {2: [2222, 3333]}),
            pymodbus_client(master, wait_s=1.0) as client,
        ):
            for _ in range(3):
                rr = await client.read_holding_registers(0, count=2, device_id=2)
                assert not rr.isError() and rr.registers == [2222, 3333]
                rr = await client.read_holding_registers(0, count=1, device_id=1)
                assert not rr.isError() and rr.registers == [42]
            rr = await client.write_register(1, 4444, device_id=2)
            assert not rr.isError()
            with pytest.raises(Exception, match="(?i)no response"):
                await client.read_holding_registers(0, count=1, device_id=9)
            status = server.status()
            # unit 2's four requests and four answers, unit 9's request
            assert status["frames_ignored"] == 9
            assert status["frame_errors"] == 0 and status["exceptions"] == {}
            assert status["requests"] == 3
    finally:
        bus.close()


async def test_noise_then_a_request_is_answered(simulator: Simulator, socat: Socat) -> None:
    """Garbage on the line (no frame, no answer), then after a silence a good request: the server
    resynchronises on the silence and answers it. Raw bytes: a sound master sends no noise."""
    read = build_rtu_frame(1, encode_request(ReadRequest(HOLDING, 0, 1)))
    async with serial_server(simulator, socat.a) as (_, server):
        fd = os.open(socat.b, os.O_RDWR | os.O_NOCTTY)
        try:
            got = bytearray()
            reader = asyncio.get_running_loop()
            reader.add_reader(fd, lambda: got.extend(os.read(fd, 256)))
            os.write(fd, b"\x01\x03\x00\x00\x77\xff\xff\x13\x37" + read)  # noise glued to it
            await wait_for(lambda: server.status()["frame_errors"] == 1)
            os.write(fd, read)  # after the silence
            answer = build_rtu_frame(1, read_registers_pdu(HOLDING, [42]))
            await wait_for(lambda: bytes(got) == answer, message="the answer")
            # a request for another unit and a broadcast write: no answer
            other = build_rtu_frame(5, encode_request(ReadRequest(HOLDING, 0, 1)))
            broadcast = build_rtu_frame(0, encode_request(WriteSingleRegister(2, 66)))
            os.write(fd, other)
            await wait_for(lambda: server.status()["frames_ignored"] == 1)
            os.write(fd, broadcast)
            await wait_for(lambda: server.status()["writes_ok"] == 1)
            os.write(fd, read)
            await wait_for(lambda: len(got) == 2 * len(answer), message="the second answer")
            assert bytes(got) == answer * 2  # nothing for unit 5, nothing for the broadcast
            assert server.status()["broadcasts"] == 1
            reader.remove_reader(fd)
        finally:
            os.close(fd)


async def test_the_server_reopens_its_port_when_it_comes_back(
    simulator: Simulator, socat: Socat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="protocols.modbus.serial_slave")
    async with serial_server(simulator, socat.a) as (_, server):
        await socat.kill()
        await wait_for(lambda: not server.status()["line_open"])
        await wait_for(lambda: any("lost" in m for m in caplog.messages), message="the error")
        await socat.start()
        await wait_for(lambda: server.status()["line_open"], timeout=15)
        async with pymodbus_client(socat.b) as client:
            rr = await client.read_holding_registers(0, count=1, device_id=1)
            assert not rr.isError() and rr.registers == [42]


def test_socat_is_a_peer_the_install_script_knows() -> None:
    script = Path(__file__).parent.parent / "scripts" / "install-peers.sh"
    text = script.read_text()
    assert "have socat || missing+=(socat)" in text
    assert "socat" in text.split("for bin in", 1)[1].split("\n", 1)[0]


# -- gateway scan modbus --serial ----------------------------------------------------------------


async def test_scan_finds_the_units_on_a_serial_line_and_writes_a_config(
    socat: Socat, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "found.yaml"
    async with pymodbus_server(socat.a, {1: [5], 2: [6]}):
        args = ["--serial", socat.b, "--parity", "N", "--units", "1-3", "--timeout", "0.5"]
        doc = await scan_json(capsys, *args, "--yaml", str(out))
    assert doc["target"] == socat.b and doc["framing"] == "rtu"
    assert doc["found"] == [1, 2]
    assert doc["bounds"]["concurrency"] == 1  # type: ignore[index]
    text = out.read_text()
    assert f'serial: {{port: "{socat.b}", baudrate: 19200, parity: N, stopbits: 1}}' in text
    assert "host:" not in text
    validates(capsys, out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1", "--serial", "/dev/x"], "give HOST[:PORT] or --serial PORT"),
        ([], "give HOST[:PORT] or --serial PORT"),
        (["127.0.0.1", "--parity", "N"], "--parity: only with --serial"),
        (["--serial", "/dev/x", "--framing", "tcp"], "--framing tcp: a serial line speaks RTU"),
        (
            ["--serial", "/dev/x", "--baudrate", "1234"],
            "--baudrate: baudrate 1234: expected one of",
        ),
        (["--serial", "/dev/x", "--units", "0-3"], "unit ids are 1-247 with framing rtu"),
    ],
)
async def test_scan_serial_options_are_checked(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = await scan_cli(capsys, *args)
    assert code == 2 and message in err, err


async def test_scan_of_a_missing_serial_port_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = await scan_cli(capsys, "--serial", str(tmp_path / "ttyUSB9"))
    assert code == 1
    assert f"cannot open serial port {tmp_path / 'ttyUSB9'}: No such file or directory" in err


# -- the serial line's timing and a device of our own for what a sound one never sends ---------


class RawSlave:
    """The far end of a pty as a device the test scripts: ``answer(frame)`` returns the bytes
    to send back (None: silent); ``heard`` keeps each request and the loop time it came."""

    def __init__(self, port: str, answer: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.answer = answer
        self.decoder = RtuDecoder()
        self.heard: list[tuple[float, RtuFrame]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop.add_reader(self.fd, self._read)

    def _read(self) -> None:
        for frame in self.decoder.feed(os.read(self.fd, 4096)):
            self.heard.append((self.loop.time(), frame))
            task = asyncio.ensure_future(self._reply(frame))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _reply(self, frame: RtuFrame) -> None:
        reply = await self.answer(frame)
        if reply is not None:
            os.write(self.fd, reply)

    def send(self, data: bytes) -> float:
        os.write(self.fd, data)
        return self.loop.time()

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        for task in self.tasks:
            task.cancel()
        os.close(self.fd)


@contextlib.asynccontextmanager
async def raw_slave(port: str, answer: Any) -> AsyncIterator[RawSlave]:
    slave = RawSlave(port, answer)
    try:
        yield slave
    finally:
        slave.close()


def registers_of(frame: RtuFrame, value: int) -> bytes:
    """A read's answer: ``value`` in every register asked for."""
    count = int.from_bytes(frame.pdu[3:5], "big")
    return build_rtu_frame(frame.unit_id, read_registers_pdu(frame.function, [value] * count))


@contextlib.asynccontextmanager
async def master(port: str, baudrate: int, wait_s: float) -> AsyncIterator[SerialRtuClient]:
    client = SerialRtuClient(SerialPort(port=port, baudrate=baudrate, parity="N"), wait_s)
    assert await client.connect(), client.last_error
    try:
        yield client
    finally:
        client.close()


async def test_the_master_keeps_t35_of_silence_before_a_request(socat: Socat) -> None:
    """1200 baud 8N1: t3.5 is 29 ms. Bytes heard on the line (another slave's late answer) push
    the next request back until the line has been silent that long; the answer is the asked
    unit's, not the frame of another that comes before it."""

    async def answer(frame: RtuFrame) -> bytes:  # another unit's (late) answer first
        other = RtuFrame(frame.unit_id + 1, frame.pdu)
        return registers_of(other, 2) + registers_of(frame, 1)

    async with raw_slave(socat.a, answer) as slave, master(socat.b, 1200, 2.0) as client:
        silence = 3.5 * 10 / 1200
        noise_sent = slave.send(build_rtu_frame(7, read_registers_pdu(HOLDING, [9])))
        await wait_for(lambda: client._line is not None and client._line.quiet_at > noise_sent)
        rr = await client.read_holding_registers(0, count=1, device_id=1)
        assert rr.registers == [1]
        heard_at, _ = slave.heard[0]
        assert heard_at >= noise_sent + silence  # an upper bound would be a timing assertion


async def test_the_timeout_counts_from_the_end_of_sending(socat: Socat) -> None:
    """A 123-register write takes 2.1 s to send at 1200 baud (on a pty it arrives at once: the
    device answers 1 s later, as if the wire were that slow). The 0.5 s timeout starts when the
    last byte has left, so the answer is in time."""

    async def answer(frame: RtuFrame) -> bytes:
        await asyncio.sleep(1.0)  # the device: as a real line delivers the frame, not a proof
        return build_rtu_frame(frame.unit_id, frame.pdu[:5])  # FC 16's answer

    async with raw_slave(socat.a, answer), master(socat.b, 1200, 0.5) as client:
        rr = await client.write_registers(0, list(range(123)), device_id=1)
        assert not rr.isError() and rr.function_code == 16


async def test_a_write_answered_with_another_functions_answer_fails(
    socat: Socat,
    run_adapter: Any,  # noqa: F811
) -> None:
    """A late answer to a read of the same unit arrives while a write waits: it is not the
    write's answer (RTU has no transaction id), so the write fails with that reason and the
    unit rests, as for reads."""
    written: list[int] = []

    async def answer(frame: RtuFrame) -> bytes:
        if frame.function == HOLDING:
            return registers_of(frame, 5)
        written.append(frame.function)
        return registers_of(RtuFrame(frame.unit_id, bytes((3, 0, 0, 0, 1))), 5)  # a read's

    async with raw_slave(socat.a, answer):
        points = [{"name": "sp", "address": 0, "access": "rw"}]
        r: Running = await run_adapter(serial_device(socat.b, points))
        await wait_for(lambda: latest(r, "sp") == (5, Quality.GOOD), timeout=10)
        with pytest.raises(ModbusWriteError, match=r"wrong answer \(function 3 to a write of"):
            await r.adapter.write("sp", 7)
        assert written == [6]
        status = r.adapter.status()
        assert "wrong answer" in status["last_error"] and status["errors"] == 1


async def test_the_server_answers_after_t35_of_silence(simulator: Simulator, socat: Socat) -> None:
    """At 1200 baud the server's answer waits until the line has been silent for t3.5 (29 ms)
    after the request: the master must hear the request end before the answer starts."""
    async with serial_server(simulator, socat.a, baudrate=1200) as (_, server):

        async def silent(frame: RtuFrame) -> None:  # the master's end: it only listens
            return None

        async with raw_slave(socat.b, silent) as peer:
            peer.decoder = RtuDecoder(response_size, head=MAX_ADU)  # it hears answers
            sent = peer.send(build_rtu_frame(1, encode_request(ReadRequest(HOLDING, 0, 1))))
            heard_at, answer = (await wait_for(lambda: peer.heard, message="the answer"))[0]
        assert answer.pdu == read_registers_pdu(HOLDING, [42])
        assert heard_at >= sent + 3.5 * 10 / 1200  # a lower bound: no timing assertion
        assert server.status()["requests"] == 1


async def test_a_request_in_flight_fails_at_once_when_the_port_vanishes(socat: Socat) -> None:
    """Not after its timeout (a minute here): the waiting request is told the line is lost."""

    async def silent(frame: RtuFrame) -> None:
        return None

    async with raw_slave(socat.a, silent) as slave, master(socat.b, 19200, 60.0) as client:
        read = asyncio.ensure_future(client.read_holding_registers(0, count=1, device_id=1))
        await wait_for(lambda: slave.heard, message="the request")
        await socat.kill()
        done, _ = await asyncio.wait({read}, timeout=20)
        assert done, "still waiting for an answer on a lost port"
        with pytest.raises(ConnectionException, match=f"serial port {socat.b} lost"):
            read.result()
        assert not client.connected
