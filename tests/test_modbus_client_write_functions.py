"""Which function the Modbus client writes with: ``write_multiple`` (FC 16 / FC 15 for one
register or coil), ``bit_write: mask`` (FC 22, atomic) against read-modify-write, and the
automatic fallback to FC 16 / FC 15 after exception 01 to FC 06 / FC 05. The function codes are
watched on the wire through the trace hook of pymodbus's server (a peer we did not write, in both
framings), which also plays a PLC changing another bit of the register just before our write
lands; the simulator plays a device refusing chosen functions (``refuse_functions``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import HOST, free_port, wait_for
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from test_modbus_client import Running, device_config, run_adapter  # noqa: F401

from gateway.commands import WriteStatus
from gateway.config import ConfigError, load_config_text
from protocols.modbus.client import ModbusWriteError
from protocols.modbus.simulator import SimulatedDevice, Simulator

HOLDING, COILS = 3, 1  # the function codes pymodbus's datastore is addressed by
READS = {1, 2, 3, 4}
WRITES_OF_REGISTERS = {6, 16, 22}
# One poll at the start, the next one at a random time of the day: the wire shows the writes.
SLOW = {"default": {"interval": 86400}}


@dataclass
class Peer:
    """pymodbus's server, unit 1: every request it receives, in order (``requests``); the
    functions it refuses with exception 01 (``refuse``); and, per holding address, bits a "PLC"
    flips in the register just before the next write to it lands (``plc_flips``)."""

    refuse: set[int]
    server: ModbusTcpServer | None = None
    port: int = 0
    requests: list[ModbusPDU] = field(default_factory=list)
    plc_flips: dict[int, int] = field(default_factory=dict)

    def trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append(pdu)
        return pdu

    async def action(
        self,
        function: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function in self.refuse:
            return ExcCodes.ILLEGAL_FUNCTION
        # FC 22 reads the register before masking it: the flip lands at the first touch.
        if function in WRITES_OF_REGISTERS and address in self.plc_flips:
            registers[address - start] ^= self.plc_flips.pop(address)
        return None

    def writes(self) -> list[int]:
        """The function codes of the requests received that were not reads."""
        return [r.function_code for r in self.requests if r.function_code not in READS]

    async def set(self, function: int, address: int, values: list[Any]) -> None:
        assert self.server is not None
        await self.server.async_setValues(1, function, address, values)

    async def get(self, function: int, address: int) -> Any:
        assert self.server is not None
        [value] = await self.server.async_getValues(1, function, address, 1)
        return value


StartPeer = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def start_peer() -> AsyncIterator[StartPeer]:
    """``await start_peer(framing="tcp", refuse=())``: a `Peer` listening on a free port."""
    servers: list[ModbusTcpServer] = []

    async def start(framing: str = "tcp", refuse: tuple[int, ...] = ()) -> Peer:
        peer = Peer(set(refuse))

        def block(bits: bool) -> list[SimData]:
            kind = DataType.BITS if bits else DataType.REGISTERS
            return [SimData(0, count=100, values=False if bits else 0, datatype=kind)]

        tables = (block(True), block(True), block(False), block(False))
        peer.port = free_port()
        peer.server = ModbusTcpServer(
            SimDevice(1, simdata=tables, action=peer.action),
            framer=FramerType.RTU if framing == "rtu" else FramerType.SOCKET,
            address=(HOST, peer.port),
            trace_pdu=peer.trace,
        )
        await peer.server.serve_forever(background=True)
        servers.append(peer.server)
        return peer

    yield start
    for server in servers:
        await server.shutdown()


async def connected(run: Any, port: int, points: list[dict[str, Any]], **extra: Any) -> Running:
    r: Running = await run(device_config(port, points, poll_groups=SLOW, **extra))
    await wait_for(lambda: r.adapter.status()["connected"] and r.adapter.counters["polls"])
    return r


StartPicky = Callable[..., Awaitable[tuple[SimulatedDevice, Running]]]


@pytest.fixture
def start_picky(simulator: Simulator, run_adapter: Any) -> StartPicky:  # noqa: F811
    """``await start_picky(refuse, points, **device_keys)``: a simulated device answering the
    functions ``refuse`` with exception 01, and the client adapter connected to it."""

    async def start(
        refuse: set[int], points: list[dict[str, Any]], **extra: Any
    ) -> tuple[SimulatedDevice, Running]:
        dev = await simulator.add_device(device=SimulatedDevice(refuse_functions=refuse))
        return dev, await connected(run_adapter, dev.port, points, **extra)

    return start


def fallback_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "from now on" in r.getMessage()]


async def test_write_multiple_sends_fc16_and_fc15_for_one_register_or_coil(
    start_peer: StartPeer,
    run_adapter: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    peer = await start_peer()
    await peer.set(HOLDING, 5, [0b1])
    points = [
        {"name": "sp", "address": 0, "access": "rw"},
        {"name": "sp16", "address": 1, "access": "rw", "write_multiple": True},
        {"name": "pump", "table": "coil", "address": 3, "access": "rw"},
        {"name": "pump15", "table": "coil", "address": 4, "access": "rw", "write_multiple": True},
    ]
    r = await connected(run_adapter, peer.port, points)
    peer.requests.clear()
    for point, value in [("sp", 11), ("sp16", 12), ("pump", True), ("pump15", True)]:
        await r.adapter.write(point, value)
    assert peer.writes() == [6, 16, 5, 15]  # the default stays today's: FC 06, FC 05
    assert [peer.requests[1].count, len(peer.requests[3].bits)] == [1, 1]
    assert [await peer.get(HOLDING, a) for a in (0, 1)] == [11, 12]
    assert [await peer.get(COILS, a) for a in (3, 4)] == [True, True]

    # The device's write_multiple, with a point keeping FC 06; a bit's read-modify-write writes
    # back with FC 16 too.
    points = [
        {"name": "sp", "address": 0, "access": "rw", "write_multiple": False},
        {"name": "sp16", "address": 1, "access": "rw"},
        {"name": "pump15", "table": "coil", "address": 4, "access": "rw"},
        {"name": "flag", "address": 5, "type": "bool", "bit": 2, "access": "rw"},
    ]
    r = await connected(run_adapter, peer.port, points, write_multiple=True)
    peer.requests.clear()
    for point, value in [("sp", 21), ("sp16", 22), ("pump15", False), ("flag", True)]:
        await r.adapter.write(point, value)
    assert [q.function_code for q in peer.requests] == [6, 16, 15, 3, 16]
    assert [await peer.get(HOLDING, a) for a in (0, 1, 5)] == [21, 22, 0b101]
    assert await peer.get(COILS, 4) is False
    assert r.adapter.status()["write_fallbacks"] == []


async def test_mask_write_keeps_a_bit_the_device_changes_where_read_modify_write_loses_it(
    start_peer: StartPeer,
    run_adapter: Any,  # noqa: F811
) -> None:
    peer = await start_peer()
    points = [
        {"name": "rmw", "address": 10, "type": "bool", "bit": 3, "access": "rw"},
        {"name": "masked", "address": 11, "type": "bool", "bit": 3, "access": "rw"},
        {"name": "other", "address": 12, "type": "bool", "bit": 3, "access": "rw"},
    ]
    points[1]["bit_write"] = "mask"
    points[2]["bit_write"] = "read_modify_write"  # a point overrides the device's mask
    r = await connected(run_adapter, peer.port, points, bit_write="mask")
    peer.requests.clear()
    # The PLC sets bit 0 of each register between our read and our write (just before it lands).
    peer.plc_flips = {10: 0b1, 11: 0b1, 12: 0b1}
    await r.adapter.write("rmw", True)  # the device's mask
    await r.adapter.write("masked", True)
    await r.adapter.write("other", True)
    assert peer.plc_flips == {}  # every write met its concurrent change
    assert [await peer.get(HOLDING, a) for a in (10, 11, 12)] == [0b1001, 0b1001, 0b1000]
    assert [q.function_code for q in peer.requests] == [22, 22, 3, 6]
    assert [(q.address, q.and_mask, q.or_mask) for q in peer.requests[:2]] == [
        (10, 0xFFF7, 0x0008),
        (11, 0xFFF7, 0x0008),
    ]

    peer.requests.clear()
    peer.plc_flips = {11: 0b100000}
    await r.adapter.write("masked", False)  # clears bit 3 only; the PLC's bits 0 and 5 stay
    assert [(q.function_code, q.and_mask, q.or_mask) for q in peer.requests] == [
        (22, 0xFFF7, 0x0000)
    ]
    assert await peer.get(HOLDING, 11) == 0b100001


async def test_a_device_refusing_fc06_and_fc05_is_written_with_fc16_and_fc15_from_then_on(
    start_picky: StartPicky, caplog: pytest.LogCaptureFixture
) -> None:
    points = [
        {"name": "sp", "address": 0, "access": "rw"},
        {"name": "flag", "address": 1, "type": "bool", "bit": 4, "access": "rw"},
        {"name": "pump", "table": "coil", "address": 2, "access": "rw"},
    ]
    dev, r = await start_picky({5, 6}, points)
    caplog.set_level(logging.WARNING, logger="protocols.modbus.client")
    requests = dev.requests
    await r.adapter.write("sp", 7)  # FC 06 refused, FC 16 written: two requests, one write
    assert dev.get_registers("holding", 0) == [7]
    assert (dev.requests - requests, dev.exceptions, r.adapter.counters["writes"]) == (2, 1, 1)
    assert r.adapter.status()["write_fallbacks"] == ["FC 06 -> FC 16"]
    await r.adapter.write("sp", 8)  # remembered: FC 06 is not tried again
    await r.adapter.write("flag", True)  # the read-modify-write's write back too
    assert dev.get_registers("holding", 0, 2) == [8, 0b10000]
    assert (dev.requests - requests, dev.exceptions) == (5, 1)
    await r.adapter.write("pump", True)
    await r.adapter.write("pump", False)
    await r.adapter.write("pump", True)
    assert dev.get_bits("coil", 2) == [True]
    assert (dev.requests - requests, dev.exceptions) == (9, 2)
    assert r.adapter.status()["write_fallbacks"] == ["FC 05 -> FC 15", "FC 06 -> FC 16"]
    assert fallback_lines(caplog) == [
        "dev: the device does not take FC 06 (exception 01, illegal function); writing with FC "
        "16 from now on",
        "dev: the device does not take FC 05 (exception 01, illegal function); writing with FC "
        "15 from now on",
    ]
    assert r.adapter.status()["connected"]


async def test_no_fallback_learnt_when_both_functions_are_refused_nor_when_it_is_off(
    start_picky: StartPicky, caplog: pytest.LogCaptureFixture
) -> None:
    points = [{"name": "sp", "address": 0, "access": "rw"}]
    dev, r = await start_picky({6, 16}, points)
    for tried in (1, 2):  # each write tries both again: nothing was learnt
        with pytest.raises(ModbusWriteError, match=r"exception 01 \(illegal function\) to FC 16"):
            await r.adapter.write("sp", 7)
        assert dev.exceptions == 2 * tried
    assert r.adapter.status()["write_fallbacks"] == [] and fallback_lines(caplog) == []

    dev, r = await start_picky({6}, points, write_fallback=False)
    requests = dev.requests
    with pytest.raises(ModbusWriteError) as info:
        await r.adapter.write("sp", 7)
    assert info.value.status is WriteStatus.DEVICE_ERROR
    assert str(info.value).endswith("exception 01 (illegal function) to FC 06")
    assert (dev.requests - requests, dev.get_registers("holding", 0)) == (1, [0])

    # Only 01 says the device did nothing: any other exception is not written again.
    points = [{"name": "far", "address": 1500, "access": "rw"}]  # past the device's map: 02
    dev, r = await start_picky(set(), points)
    requests = dev.requests
    with pytest.raises(ModbusWriteError, match=r"exception 02 \(illegal data address\) to FC 06$"):
        await r.adapter.write("far", 7)
    assert dev.requests - requests == 1
    assert r.adapter.status()["write_fallbacks"] == [] and fallback_lines(caplog) == []


async def test_mask_write_to_a_device_without_fc22_fails_and_does_not_fall_back(
    start_picky: StartPicky,
) -> None:
    points = [{"name": "flag", "address": 3, "type": "bool", "bit": 1, "access": "rw"}]
    # The simulator has no FC 22 (like many devices); the register's bit 0 is set meanwhile.
    dev, r = await start_picky(set(), points, bit_write="mask")
    dev.set_registers("holding", 3, [0b1])
    requests = dev.requests
    with pytest.raises(ModbusWriteError) as info:
        await r.adapter.write("flag", True)
    assert info.value.status is WriteStatus.DEVICE_ERROR
    assert "exception 01 (illegal function) to FC 22" in str(info.value)
    assert "bit_write: read_modify_write" in str(info.value)
    # Not read-modify-written behind the user's back: that would give up the atomicity.
    assert (dev.requests - requests, dev.get_registers("holding", 3)) == (1, [0b1])
    assert r.adapter.status()["write_fallbacks"] == []


async def test_rtu_framing_writes_with_the_same_functions(
    start_peer: StartPeer,
    run_adapter: Any,  # noqa: F811
) -> None:
    peer = await start_peer("rtu", refuse=(6,))
    points = [
        {"name": "sp", "address": 0, "access": "rw"},
        {"name": "flag", "address": 1, "type": "bool", "bit": 15, "access": "rw"},
        {"name": "pump", "table": "coil", "address": 2, "access": "rw"},
    ]
    points[1]["bit_write"] = "mask"
    points[2]["write_multiple"] = True
    r = await connected(run_adapter, peer.port, points, framing="rtu", max_gap=0)
    peer.requests.clear()
    await r.adapter.write("sp", 300)
    await r.adapter.write("sp", 301)
    peer.plc_flips = {1: 0b1}
    await r.adapter.write("flag", True)
    await r.adapter.write("pump", True)
    assert peer.writes() == [6, 16, 16, 22, 15]
    assert (peer.requests[3].and_mask, peer.requests[3].or_mask) == (0x7FFF, 0x8000)
    assert [await peer.get(HOLDING, a) for a in (0, 1)] == [301, 0x8001]
    assert await peer.get(COILS, 2) is True
    assert r.adapter.status()["write_fallbacks"] == ["FC 06 -> FC 16"]
    assert r.adapter.status()["connected"]


DEVICE = """\
devices:
  plc:
    protocol: modbus
    host: 127.0.0.1
{device}    points:
      - {{name: flag, address: 0, type: bool, bit: 2, access: rw{flag}}}
      - {{name: sp, address: 1, access: rw{sp}}}
"""


def problems_of(device: str = "", flag: str = "", sp: str = "") -> dict[str, str]:
    text = DEVICE.format(device=device, flag=flag, sp=sp)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "plant.yaml")
    return {p.dotted: f"{p.found} / {p.expected}" for p in info.value.problems}


def test_the_write_options_are_validated() -> None:
    config = load_config_text(DEVICE.format(device="", flag="", sp=""))
    plc = config.devices["plc"].config
    assert (plc.write_multiple, plc.bit_write, plc.write_fallback) == (
        False,
        "read_modify_write",
        True,
    )
    device = "    write_multiple: true\n    bit_write: mask\n    write_fallback: false\n"
    text = DEVICE.format(
        device=device, flag=", bit_write: read_modify_write", sp=", write_multiple: false"
    )
    plc = load_config_text(text).devices["plc"].config
    [flag, sp] = plc.points
    assert (plc.bit_write_of(flag), plc.write_multiple_of(sp)) == ("read_modify_write", False)
    assert (plc.bit_write_of(sp), plc.write_multiple_of(flag)) == ("mask", True)

    found = problems_of(device="    bit_write: atomic\n")
    assert list(found) == ["devices.plc.bit_write"]
    assert "atomic" in found["devices.plc.bit_write"]
    assert "mask" in found["devices.plc.bit_write"]
    found = problems_of(sp=", bit_write: mask")  # sp is a whole register, not a bit
    assert list(found) == ["devices.plc.points[1]"]
    assert "bit_write applies to points with bit" in found["devices.plc.points[1]"]
    found = problems_of(device="    write_multiple: sometimes\n", flag=", write_fallback: true")
    assert set(found) == {"devices.plc.write_multiple", "devices.plc.points[0].write_fallback"}
