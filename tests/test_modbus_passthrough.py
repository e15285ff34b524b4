"""Modbus gateway pass-through (``passthrough:`` on the Modbus server): a SCADA on Modbus TCP
reaches any register of the units behind a Modbus client device of the gateway, unmapped ones
included, as through a Modbus TCP to RTU gateway.

Peers we did not write: pymodbus's server is the device (Modbus TCP, RTU over TCP, and RTU on a
socat pty), with its trace hook showing what reaches it; pymodbus's TCP client and mbpoll are the
SCADA on the gateway's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import HOST, free_port, wait_for
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from test_modbus_rtu_over_tcp import DEAD, pymodbus_units
from test_modbus_serial import Socat, pymodbus_server, socat  # noqa: F401
from test_opcua_server import running_gateway
from test_simulator import RawClient, mbpoll, mbpoll_read

from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from protocols.modbus.client import ModbusClientAdapter
from protocols.modbus.codec import Table
from protocols.modbus.frames import build_frame
from protocols.modbus.server import ModbusServerAdapter

HOLDING, COILS = 3, 1  # the function codes pymodbus's datastore is addressed by
MAPPED_UNIT = 100  # the server's own map

CONFIG = """
gateway: {{name: gw, status_interval: 0}}
devices:
  rs485:
    protocol: modbus
    {line}
    timeout: {timeout}
    poll_groups: {{default: {{interval: {interval}}}}}
    reconnect: {{initial: 0.05, max: 0.2}}
    points:
      - {{name: kw, address: 0, unit_id: 1}}
endpoints:
  mb:
    protocol: modbus
    role: server
    host: 127.0.0.1
    port: {server_port}
    unit_ids: [{mapped}]
    passthrough:
      - {{device: rs485, unit_ids: [1, 2, {dead}]{passthrough}}}
bridges:
  - {{name: serve, from: rs485, to: mb, map: [{{point: kw, address: 0}}]}}
"""


@dataclass
class Device:
    """pymodbus's server: units 1 and 2 answer, unit ``DEAD`` never does; ``requests``: every
    request it received, in order."""

    server: ModbusTcpServer
    port: int
    requests: list[ModbusPDU] = field(default_factory=list)

    def trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append(pdu)
        return pdu

    async def set(self, unit: int, function: int, address: int, values: list[Any]) -> None:
        await self.server.async_setValues(unit, function, address, values)

    async def get(self, unit: int, function: int, address: int, count: int = 1) -> list[Any]:
        return list(await self.server.async_getValues(unit, function, address, count))

    def seen(self, unit: int) -> list[int]:
        """The function codes of the requests received for ``unit``."""
        return [r.function_code for r in self.requests if r.dev_id == unit]


@contextlib.asynccontextmanager
async def device(framing: str) -> AsyncIterator[Device]:
    peer = Device(None, 0)  # type: ignore[arg-type]
    framer = FramerType.RTU if framing == "rtu" else FramerType.SOCKET
    async with pymodbus_units(framer, peer.trace) as (peer.server, peer.port):
        yield peer


@dataclass
class Plant:
    gateway: Gateway
    device: Device
    server: ModbusServerAdapter
    client: ModbusClientAdapter

    @property
    def port(self) -> int:
        return self.server.port


def config(line: str, timeout: float = 0.5, passthrough: str = "", interval: float = 0.05) -> str:
    return CONFIG.format(
        line=line,
        interval=interval,
        timeout=timeout,
        server_port=free_port(),
        mapped=MAPPED_UNIT,
        dead=DEAD,
        passthrough=passthrough,
    )


@contextlib.asynccontextmanager
async def plant(
    framing: str,
    device_timeout: float = 0.5,
    passthrough: str = "",
    server_framing: str = "tcp",
    interval: float = 0.05,
) -> AsyncIterator[Plant]:
    """The gateway with the device on ``framing``; ``passthrough``: more keys of the entry."""
    async with device(framing) as peer:
        line = f"host: 127.0.0.1\n    port: {peer.port}\n    framing: {framing}"
        text = config(line, device_timeout, passthrough, interval)
        text = text.replace("role: server\n", f"role: server\n    framing: {server_framing}\n")
        async with running_gateway(text) as gateway:
            server, client = gateway.adapters["mb"], gateway.adapters["rs485"]
            assert isinstance(server, ModbusServerAdapter)
            assert isinstance(client, ModbusClientAdapter)
            await wait_for(lambda: client.status()["connected"] and client.counters["polls"])
            yield Plant(gateway, peer, server, client)


@contextlib.asynccontextmanager
async def scada(
    port: int, framer: FramerType = FramerType.SOCKET
) -> AsyncIterator[AsyncModbusTcpClient]:
    """pymodbus's TCP client on the gateway's server (its timeout above the device's)."""
    client = AsyncModbusTcpClient(HOST, port=port, framer=framer, timeout=15, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


def code_of(rr: ModbusPDU) -> int | None:
    """The exception code of an answer, None for a good one."""
    return rr.exception_code if rr.isError() else None


FRAMINGS = pytest.mark.parametrize("framing", ["tcp", "rtu"])


@FRAMINGS
async def test_a_read_of_an_unmapped_register_reaches_the_device(framing: str) -> None:
    async with plant(framing) as p:
        await p.device.set(2, HOLDING, 50, [1234, 4321, 7])
        await p.device.set(1, COILS, 10, [True, False, True])
        async with scada(p.port) as c:
            rr = await c.read_holding_registers(50, count=3, device_id=2)
            assert code_of(rr) is None and rr.registers == [1234, 4321, 7]
            bits = await c.read_coils(10, count=3, device_id=1)
            assert code_of(bits) is None and bits.bits[:3] == [True, False, True]
            # the map's unit id is the server's own, and a unit id of neither is 0A
            own = await c.read_holding_registers(0, count=1, device_id=MAPPED_UNIT)
            assert code_of(own) is None
            assert code_of(await c.read_holding_registers(50, device_id=9)) == 0x0A
        # mbpoll, 0-based, unit 2
        assert await mbpoll_read(p.port, "-a", "2", "-0", "-r", "50", "-c", "3", "-t", "4") == {
            50: "1234",
            51: "4321",
            52: "7",
        }
        status = p.server.status()
        assert status["passthrough_requests"] == 3 and status["passthrough_errors"] == 0
        assert p.client.status()["passthrough_requests"] == 3
        assert 3 in p.device.seen(2) and 1 in p.device.seen(1)


@FRAMINGS
async def test_a_device_exception_comes_back_as_it_is(framing: str) -> None:
    async with plant(framing) as p, scada(p.port) as c:
        rr = await c.read_holding_registers(99, count=5, device_id=2)  # past its 100 registers
        assert code_of(rr) == 0x02
        assert rr.function_code == 0x83
        rc, out, err = await mbpoll(p.port, "-1", "-a", "2", "-0", "-r", "200", "-t", "4", HOST)
        assert rc != 0 and "Illegal data address" in out + err
        assert p.server.status()["passthrough_errors"] == 0  # the device answered


@FRAMINGS
async def test_a_silent_unit_is_0b_and_a_device_down_is_0a(framing: str) -> None:
    async with plant(framing) as p, scada(p.port) as c:
        assert code_of(await c.read_holding_registers(0, device_id=DEAD)) == 0x0B
        assert p.server.status()["passthrough_errors"] == 1
        assert p.client.status()["passthrough_errors"] == 1
        await p.device.server.shutdown()
        await wait_for(lambda: not p.client.status()["connected"], timeout=10)
        assert code_of(await c.read_holding_registers(0, device_id=2)) == 0x0A


async def test_a_server_speaking_rtu_over_tcp_passes_through_too() -> None:
    async with plant("tcp", server_framing="rtu") as p, scada(p.port, FramerType.RTU) as c:
        await p.device.set(2, HOLDING, 60, [2024, 11])
        rr = await c.read_holding_registers(60, count=2, device_id=2)
        assert code_of(rr) is None and rr.registers == [2024, 11]
        assert code_of(await c.read_holding_registers(0, device_id=DEAD)) == 0x0B
        assert code_of(await c.write_register(60, 1, device_id=2)) == 0x01


@FRAMINGS
async def test_an_absent_unit_asked_again_and_again_does_not_take_the_device_down(
    framing: str,
) -> None:
    async with plant(framing, device_timeout=0.2, interval=3600) as p, scada(p.port) as c:
        polls = p.client.counters["polls"]
        for _ in range(4):  # more than the timeouts in a row that reconnect a device
            assert code_of(await c.read_holding_registers(0, device_id=DEAD)) == 0x0B
        assert p.client.status()["connected"]
        assert p.client.status()["silent_units"] == [DEAD]
        assert code_of(await c.read_holding_registers(0, device_id=2)) is None
        latest = p.server.units[MAPPED_UNIT].tables[Table.HOLDING].status[0]
        assert latest == 0 and p.client.counters["polls"] == polls  # still good, not polled


async def test_a_write_is_refused_by_default_and_reaches_nothing(caplog: Any) -> None:
    async with plant("rtu") as p, scada(p.port) as c:
        for rr in (
            await c.write_register(5, 99, device_id=2),
            await c.write_registers(5, [1, 2], device_id=2),
            await c.write_coil(5, True, device_id=2),
            await c.mask_write_register(address=5, and_mask=0, or_mask=1, device_id=2),
            await c.readwrite_registers(
                read_address=0, read_count=1, write_address=5, values=[3], device_id=2
            ),
        ):
            assert code_of(rr) == 0x01
        # a read after them reaches the device: the writes would have before it
        assert code_of(await c.read_holding_registers(5, device_id=2)) is None
        assert p.device.seen(2) == [3]
        assert await p.device.get(2, HOLDING, 5) == [0]
        status = p.server.status()
        assert status["passthrough_refused"] == 5 and status["passthrough_writes"] == 0


async def test_a_malformed_request_is_refused_here_as_a_device_would() -> None:
    async with plant("tcp") as p, scada(p.port) as c:
        raw = await RawClient.connect(p.port)  # pymodbus's client cannot send a bad count
        try:
            raw.writer.write(build_frame(77, 2, bytes.fromhex("03 0000 007e")))  # 126 registers
            assert await raw.response() == (77, 2, bytes((0x83, 0x03)))
        finally:
            await raw.close()
        assert code_of(await c.read_holding_registers(0, count=100, device_id=2)) is None
        assert p.device.seen(2) == [3]  # only the good one
        assert p.server.status()["passthrough_refused"] == 1


async def test_a_writable_passthrough_forwards_writes_and_logs_them(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="protocols.modbus")
    async with plant("tcp", passthrough=", writable: true") as p, scada(p.port) as c:
        rr = await c.write_registers(5, [11, 12], device_id=2)
        assert code_of(rr) is None
        assert await p.device.get(2, HOLDING, 5, 2) == [11, 12]
        assert code_of(await c.write_coil(7, True, device_id=1)) is None
        assert await p.device.get(1, COILS, 7) == [True]
        assert p.device.seen(2) == [16] and 5 in p.device.seen(1)
        assert p.server.status()["passthrough_writes"] == 2
        written = [r.getMessage() for r in caplog.records if "pass-through write" in r.message]
        assert len(written) == 2
        assert (
            "from modbus:127.0.0.1:" in written[0] and "to rs485 unit 2: function 16" in written[0]
        )
        warned = [
            r.getMessage()
            for r in caplog.records
            if "passthrough to rs485 is writable" in r.message
        ]
        assert warned and "unit ids 1, 2, 3" in warned[0]


@FRAMINGS
async def test_the_queue_is_bounded_and_polls_go_on_meanwhile(framing: str) -> None:
    async with plant(framing, device_timeout=1.0, passthrough=", max_queued: 2") as p:
        stop = asyncio.Event()
        answers: list[int | None] = []

        async def keep_asking() -> None:  # one request to the dead unit after another
            async with scada(p.port) as c:
                while not stop.is_set():
                    answers.append(code_of(await c.read_holding_registers(0, device_id=DEAD)))

        askers = [asyncio.create_task(keep_asking()) for _ in range(2)]
        try:
            await wait_for(lambda: p.client.forwarding.queued == 2, message="2 queued")
            async with scada(p.port) as c:
                assert code_of(await c.read_holding_registers(0, device_id=2)) == 0x06
            assert p.client.status()["passthrough_busy"] == 1
            assert p.server.status()["passthrough_busy"] == 1
            # the queue stays full, and the polls of the mapped point go on between its requests
            await p.device.set(1, HOLDING, 0, [4321])
            async with scada(p.port) as c:

                async def served() -> bool:
                    rr = await c.read_holding_registers(0, device_id=MAPPED_UNIT)
                    return code_of(rr) is None and rr.registers == [4321]

                await wait_for(served, timeout=20, message="the new value served")
            await wait_for(lambda: len(answers) >= 2, timeout=20)
        finally:
            stop.set()
            await asyncio.gather(*askers)
        assert set(answers) == {0x0B}
        # never two pass-through requests in a row while a poll waits: one at a time
        dead = [i for i, r in enumerate(p.device.requests) if r.dev_id == DEAD]
        assert all(b - a > 1 for a, b in zip(dead, dead[1:], strict=False)), dead


async def test_over_a_serial_line(socat: Socat) -> None:  # noqa: F811 (the fixture)
    async with pymodbus_server(socat.b, {1: [5], 2: [0] * 60}) as server:
        await server.async_setValues(2, HOLDING, 40, [314, 159])
        line = f"serial: {{port: {socat.a}, baudrate: 19200, parity: N}}"
        async with (
            running_gateway(config(line)) as gateway,
            scada(gateway.adapters["mb"].port) as c,
        ):
            client = gateway.adapters["rs485"]
            await wait_for(lambda: client.status()["connected"] and client.counters["polls"])
            rr = await c.read_holding_registers(40, count=2, device_id=2)
            assert code_of(rr) is None and rr.registers == [314, 159]
            assert code_of(await c.write_register(40, 1, device_id=2)) == 0x01
            assert await server.async_getValues(2, HOLDING, 40, 1) == [314]


# -- config ------------------------------------------------------------------------------------


def problems(text: str) -> dict[str, tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "pt.yaml")
    return {p.dotted: (p.found, p.expected) for p in info.value.problems}


def test_a_unit_id_both_mapped_and_passed_through_is_refused() -> None:
    text = config("host: 127.0.0.1").replace(f"unit_ids: [{MAPPED_UNIT}]", "unit_ids: [2]")
    found, expected = problems(text)["endpoints.mb.passthrough[0].unit_ids"]
    assert found == "unit id 2, which is the server's own unit_ids too"
    assert "no map (unit_ids)" in expected


def test_the_device_must_be_a_modbus_client_of_the_config() -> None:
    text = config("host: 127.0.0.1").replace("device: rs485", "device: rs232")
    found, expected = problems(text)["endpoints.mb.passthrough[0].device"]
    assert found == "'rs232', which is not an enabled Modbus client device of this config"
    assert expected == "one of: rs485"
    mb = config("host: 127.0.0.1").replace("device: rs485", "device: mb")
    assert "endpoints.mb.passthrough[0].device" in problems(mb)


def test_unit_ids_are_those_of_a_bus_and_serial_servers_have_no_passthrough() -> None:
    for wrong in ("[0, 2]", "[2, 248]", "[2, 2]"):
        text = config("host: 127.0.0.1").replace("[1, 2, 3]", wrong)
        assert "endpoints.mb.passthrough[0].unit_ids" in problems(text), wrong
    serial = re.sub(
        r"host: 127.0.0.1\n    port: \d+", "serial: {port: /dev/ttyS0}", config("host: 127.0.0.1")
    )
    assert problems(serial)["endpoints.mb.passthrough"][1].startswith("passthrough on a TCP")


def test_without_unit_ids_the_server_serves_only_the_passthrough() -> None:
    text = config("host: 127.0.0.1").replace(f"    unit_ids: [{MAPPED_UNIT}]\n", "")
    loaded = load_config_text(text.split("bridges:")[0], "pt.yaml")
    assert loaded.devices["mb"].config.unit_ids == []  # type: ignore[attr-defined]
    found, expected = problems(text)["bridges[0].unit_id"]  # a map needs a unit id of its own
    assert found == "none, and the server has no unit_ids (only passthrough)"


def test_validate_warns_of_a_writable_passthrough() -> None:
    text = config("host: 127.0.0.1", passthrough=", writable: true")
    loaded = load_config_text(text, "pt.yaml", check_adapters=True)
    [warning] = [w for w in loaded.warnings if "passthrough" in w]
    assert "endpoints.mb.passthrough[0].writable" in warning
    assert "past the write rules of the points" in warning
    quiet = load_config_text(config("host: 127.0.0.1"), "pt.yaml", check_adapters=True)
    assert not [w for w in quiet.warnings if "passthrough" in w]
