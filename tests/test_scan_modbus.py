"""``gateway scan modbus``: the units behind a Modbus TCP (or RTU over TCP) address, their device
identification and the register ranges that answer, against the project's simulator serving
several unit ids, the gateway's own Modbus server (``role: server`` with ``identity:``, MBAP and
RTU framings) run by ``gateway run``, and pymodbus's server (a peer we did not write). A raw
capturing server proves that only read functions are ever sent, and plays a gateway that closes
the connection for a unit and one that answers garbage. Plus the sans-IO parts byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import HOST, free_port, modbus_device_yaml, port_open, wait_for
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusTcpServer

from gateway.cli import main
from gateway.scan import host_port
from protocols.modbus.codec import Table
from protocols.modbus.config import Framing
from protocols.modbus.frames import (
    ExceptionCode,
    FrameDecoder,
    FrameError,
    ReadDeviceIdCode,
    ReadDeviceIdentification,
    ReadRequest,
    build_frame,
    exception_pdu,
    parse_request,
    read_bits_pdu,
    read_registers_pdu,
)
from protocols.modbus.identity import device_identification_pdu
from protocols.modbus.rtu import build_rtu_frame
from protocols.modbus.scan import (
    READ_OF,
    Link,
    RtuResponseDecoder,
    ScanOptions,
    find_ranges,
    parse_identification,
    parse_units,
    rtu_response_size,
)
from protocols.modbus.simulator import Simulator

GATEWAY = [sys.executable, "-m", "gateway"]
READS = {0x01, 0x02, 0x03, 0x04, 0x2B}  # the only functions a scan may send


async def scan_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``gateway scan modbus ARGS`` in a thread (its own event loop), next to the peers that
    run in the test's loop: exit code, stdout, stderr."""

    def run() -> int:
        try:
            return main(["scan", "modbus", *args])
        except SystemExit as exc:  # argparse refusing an option
            return int(exc.code or 0)

    code = await asyncio.to_thread(run)
    out = capsys.readouterr()
    return code, out.out, out.err


async def scan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = await scan_cli(capsys, *args, "--json")
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


def by_unit(doc: dict[str, object]) -> dict[int, dict[str, object]]:
    units = doc["units"]
    assert isinstance(units, list)
    return {u["unit"]: u for u in units}


def validates(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    """``gateway validate`` accepts the file (in-process: the command is synchronous)."""
    assert main(["validate", str(path)]) == 0
    assert f"{path}: ok" in capsys.readouterr().out


# -- sans-IO parts ---------------------------------------------------------------------------


def test_unit_lists_and_targets_parse_and_bad_ones_say_why() -> None:
    assert parse_units("1-247") == list(range(1, 248))
    assert parse_units("5, 1,2,1-3") == [1, 2, 3, 5]
    assert parse_units("0,255") == [0, 255]  # MBAP: any unit id
    for bad, why in (
        ("1-300", "0-255"),
        ("0", "1-247"),  # rtu: 0 is broadcast
        ("9-3", "backwards"),
        ("x", "not a unit id"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_units(bad, "rtu" if bad == "0" else "tcp")
    assert host_port("plc.local") == ("plc.local", 502)
    assert host_port("10.0.0.5:5020") == ("10.0.0.5", 5020)
    assert host_port("[::1]:1502") == ("::1", 1502)
    assert host_port("[fe80::1]") == ("fe80::1", 502)


def test_rtu_responses_are_framed_by_their_size_and_crc() -> None:
    registers = build_rtu_frame(3, read_registers_pdu(3, [1, 2, 0xFFFF]))
    bits = build_rtu_frame(3, read_bits_pdu(1, [True, False, True]))
    refused = build_rtu_frame(9, exception_pdu(0x2B, ExceptionCode.ILLEGAL_FUNCTION))
    objects = {0: b"ACME", 1: b"GW-7", 2: b"V2.3"}
    ident = build_rtu_frame(
        3,
        device_identification_pdu(objects, ReadDeviceIdentification(ReadDeviceIdCode.BASIC, 0)),
    )
    assert rtu_response_size(registers) == len(registers) == 11
    assert rtu_response_size(refused) == 5
    assert rtu_response_size(ident) == len(ident)
    assert rtu_response_size(ident[:9]) is None  # the first object's length not there yet
    assert rtu_response_size(bytes((3, 0x10, 0))) == 0  # a write's answer: never asked for
    assert rtu_response_size(bytes((3, 3, 7))) == 0  # an odd byte count of registers
    assert rtu_response_size(bytes((3, 1, 251))) == 0  # more than 2000 bits
    # garbage that reads as the head of a long answer does not hold back a good frame after it
    assert [f.pdu for f in RtuResponseDecoder().feed(b"\x01\x03\xf0" + bits)] == [bits[1:-2]]
    decoder = RtuResponseDecoder()
    bad_crc = registers[:-1] + bytes((registers[-1] ^ 1,))
    frames = decoder.feed(b"\x00\x99" + bad_crc + bits + refused + ident[:10])
    assert [(f.unit_id, f.pdu) for f in frames] == [
        (3, read_bits_pdu(1, [True, False, True])),
        (9, bytes((0xAB, 0x01))),
    ]
    assert decoder.dropped == 2 + len(bad_crc) and decoder.pending == 10
    (last,) = decoder.feed(ident[10:])
    part = parse_identification(last.pdu)
    assert part.objects == objects and not part.more and part.conformity == 0x81


def test_identification_answers_that_do_not_parse_are_frame_errors() -> None:
    good = device_identification_pdu(
        {0: b"A", 1: b"B", 2: b"C"}, ReadDeviceIdentification(ReadDeviceIdCode.BASIC, 0)
    )
    for broken in (good[:-1], good + b"\x00", good[:5], b"\x2b\x0d" + good[2:]):
        with pytest.raises(FrameError):
            parse_identification(broken)


@pytest.mark.parametrize("seed", range(5))
async def test_ranges_are_found_exactly_within_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    readable: set[int] = set()
    for _ in range(rng.randint(1, 6)):  # a few runs of any length, some past the bound
        start = rng.randrange(0, 260)
        readable.update(range(start, start + rng.randint(1, 60)))
    reads: list[tuple[int, int]] = []

    async def read(address: int, count: int) -> bool:
        reads.append((address, count))
        return all(a in readable for a in range(address, address + count))

    spans = await find_ranges(read, 200)
    assert {a for s, e in spans for a in range(s, e)} == {a for a in readable if a < 200}
    assert all(e < spans[i + 1][0] for i, (_, e) in enumerate(spans[:-1]))  # merged
    assert all(a + n <= 200 for a, n in reads) and len(reads) <= 2 + 20 + 200


# -- the project's simulator: several unit ids ---------------------------------------------


async def test_simulator_units_their_ranges_and_a_config_that_validates(
    simulator: Simulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    device = await simulator.add_device(unit_ids=(1,), size={"holding": 37, "input": 5})
    device.add_unit(3, size={"holding": 0, "input": 120, "coil": 16, "discrete": 0})
    device.add_unit(7, size={"holding": 250, "input": 0, "coil": 0, "discrete": 9})
    out = tmp_path / "found.yaml"
    code, text, err = await scan_cli(
        capsys, f"{HOST}:{device.port}", "--units", "1-10", "--registers", "--yaml", str(out)
    )
    assert code == 0, err
    rows = {line.split()[0]: line for line in text.splitlines() if " found " in line[:12]}
    assert set(rows) == {"1", "3", "7"}  # absent units answer 0B: not counted
    assert all("not supported" in row for row in rows.values())  # no function 43
    assert "holding  0-36" in text and "input    0-119" in text and "discrete 0-8" in text
    assert "3 units found, 7 without an answer" in text
    validates(capsys, out)
    config = out.read_text()
    assert f'    host: "{HOST}"\n    port: {device.port}\n' in config
    assert config.startswith("# A starting point")
    assert "unit_id: 3" in config and "{name: co_15, table: coil, address: 15, type: bool" in config
    one, seven = config.split("unit_1:")[1].split("unit_3:")[0], config.split("unit_7:")[1]
    assert "hr_36," in one and "hr_37," not in one and "hr_199," in seven and "hr_200" not in seven
    doc = await scan_json(capsys, f"{HOST}:{device.port}", "--units", "1-10", "--registers")
    units = by_unit(doc)
    assert doc["found"] == [1, 3, 7] and set(units) == {1, 3, 7}
    assert units[1]["registers"] == {
        "holding": [[0, 36]],
        "input": [[0, 4]],
        "coil": [[0, 199]],
        "discrete": [[0, 199]],
    }  # the tables of 1000 entries it left at their default size, up to the bound
    assert units[3]["registers"] == {
        "holding": [],
        "input": [[0, 119]],
        "coil": [[0, 15]],
        "discrete": [],
    }
    assert units[3]["answer"] == "exception 02 illegal data address"  # no holding table
    assert units[1]["answer"] == units[7]["answer"] == "holding 0 read"
    # without --registers: the holding register 0 the presence read found, where it did
    plain = tmp_path / "plain.yaml"
    code, _, err = await scan_cli(
        capsys, f"{HOST}:{device.port}", "--units", "1-9", "--yaml", str(plain)
    )
    assert code == 0, err
    validates(capsys, plain)
    written = plain.read_text()
    assert written.count("{name: hr_0, table: holding, address: 0, type: uint16, access: r}") == 2
    assert "\n  unit_1:" in written and "\n  unit_7:" in written and "\n#  unit_3:" in written
    assert "# unit 3 answered (exception 02 illegal data address) but no address read" in written
    assert units[7]["registers"] == {
        "holding": [[0, 199]],
        "input": [],
        "coil": [],
        "discrete": [[0, 8]],
    }


# -- the gateway's own Modbus server, MBAP and RTU, through `gateway run` --------------------

GATEWAY_CONFIG = """
gateway: {{name: gw, status_interval: 0}}
devices:
{device}
    points:
      - {{name: a, address: 0}}
      - {{name: b, address: 1}}
      - {{name: c, address: 2}}
      - {{name: f, address: 4, type: float32}}
      - {{name: pump, table: coil, address: 0}}
endpoints:
  mb:
    protocol: modbus
    role: server
    host: 127.0.0.1
    port: {tcp_port}
    unit_ids: [1, 2]
    identity: {{vendor_name: ACME, product_code: GW-7, revision: V2.3, model_name: Edge 7}}
  serial:
    protocol: modbus
    role: server
    host: 127.0.0.1
    port: {rtu_port}
    framing: rtu
    unit_ids: [5]
    identity: {{vendor_name: ACME, product_code: RTU-1, revision: '1.0', vendor_url: {long}, product_name: {long}}}
bridges:
  - name: serve
    from: plc
    to: mb
    map:
      - {{point: a, address: 0}}
      - {{point: b, address: 1}}
      - {{point: c, address: 2}}
      - {{point: f, address: 10, type: float32}}
      - {{point: a, table: input, address: 3}}
      - {{point: pump, table: coil, address: 0}}
      - {{point: pump, table: discrete, address: 7}}
  - name: serve-serial
    from: plc
    to: serial
    map:
      - {{point: a, address: 0}}
      - {{point: b, address: 1}}
"""


@contextlib.asynccontextmanager
async def gateway_serving(simulator: Simulator, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    """`gateway run` serving a simulated device over MBAP and RTU: (tcp port, rtu port), once
    every mapped point has a value (before, a read of it answers 0B)."""
    device = await simulator.add_device(size=10, name="plc")
    device.set_registers(Table.HOLDING, 0, [1, 2, 3, 0, 0x4148, 0])
    tcp_port, rtu_port = free_port(), free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        GATEWAY_CONFIG.format(
            device=modbus_device_yaml(
                device.port, name="plc", poll_groups="{default: {interval: 0.05}}"
            ),
            tcp_port=tcp_port,
            rtu_port=rtu_port,
            long="u" * 200,  # two objects of 200 characters: two answers, "more follows"
        )
    )
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY, "run", str(config), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for(
            lambda: (
                (port_open(HOST, tcp_port) and port_open(HOST, rtu_port))
                or proc.returncode is not None
            ),
            timeout=30,
            message="the gateway's servers",
        )
        assert proc.returncode is None, "gateway run ended"
        mapped: dict[tuple[int, Framing, int], list[tuple[Table, int, int]]] = {
            (tcp_port, "tcp", 1): [
                (Table.HOLDING, 0, 3),
                (Table.HOLDING, 10, 2),
                (Table.DISCRETE, 7, 1),
            ],
            (rtu_port, "rtu", 5): [(Table.HOLDING, 0, 2)],
        }
        for (port, framing, unit), reads in mapped.items():
            options = ScanOptions(HOST, port, framing=framing, timeout=1.0)
            link = await Link.open(options)
            try:
                for table, address, count in reads:
                    request = ReadRequest(READ_OF[table], address, count)
                    await wait_for(
                        functools.partial(served, link, unit, request),
                        timeout=15,
                        message=f"{table} {address} served",
                    )
            finally:
                await link.close()
        yield tcp_port, rtu_port
        proc.terminate()  # SIGTERM, as a service manager stops it
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def served(link: Link, unit: int, request: ReadRequest) -> bool:
    return (await link.call(unit, request))[0] == request.function


async def test_the_gateways_server_over_mbap_and_rtu(
    simulator: Simulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with gateway_serving(simulator, tmp_path) as (tcp_port, rtu_port):
        out = tmp_path / "gw-found.yaml"
        code, text, err = await scan_cli(
            capsys, f"{HOST}:{tcp_port}", "--units", "1-6", "--registers", "--yaml", str(out)
        )
        assert code == 0, err
        assert "ACME GW-7 V2.3" in text and "2 units found, 4 without an answer" in text
        doc = await scan_json(capsys, f"{HOST}:{tcp_port}", "--units", "1-6", "--registers")
        units = by_unit(doc)
        assert doc["found"] == [1, 2]  # 3-6: the server's 0A
        assert units[1]["identification"] == {
            "vendor_name": "ACME",
            "product_code": "GW-7",
            "revision": "V2.3",
            "product_name": "Protocol Brain gateway",
            "model_name": "Edge 7",
            "user_application_name": "gw",
        }
        assert units[1]["registers"] == {
            "holding": [[0, 2], [10, 11]],
            "input": [[3, 3]],
            "coil": [[0, 0]],
            "discrete": [[7, 7]],
        }
        assert units[2]["registers"] == {"holding": [], "input": [], "coil": [], "discrete": []}
        validates(capsys, out)
        written = out.read_text()  # unit 2 has no point: left commented out for the user
        assert (
            "\n  unit_1:" in written and "\n#  unit_2:" in written and "\n  unit_2" not in written
        )

        rtu_out = tmp_path / "rtu-found.yaml"
        args = ("--framing", "rtu", "--units", "3-7", "--registers", "--max-address", "30")
        code, text, err = await scan_cli(
            capsys, f"{HOST}:{rtu_port}", *args, "--yaml", str(rtu_out)
        )
        assert code == 0, err
        assert "one request at a time (rtu)" in text and "ACME RTU-1 1.0" in text
        assert "1 unit found, 4 without an answer" in text
        doc = await scan_json(capsys, f"{HOST}:{rtu_port}", *args)
        assert doc["found"] == [5]
        assert by_unit(doc)[5]["identification"] == {
            "vendor_name": "ACME",
            "product_code": "RTU-1",
            "revision": "1.0",
            "vendor_url": "u" * 200,
            "product_name": "u" * 200,
            "user_application_name": "gw",
        }
        assert by_unit(doc)[5]["registers"] == {
            "holding": [[0, 1]],
            "input": [],
            "coil": [],
            "discrete": [],
        }
        validates(capsys, rtu_out)
        assert "framing: rtu" in rtu_out.read_text()


# -- pymodbus's server: a peer we did not write ----------------------------------------------


async def test_pymodbus_server_units_identification_and_ranges(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def unit(hr: int, ir: int, co: int, di: int) -> ModbusDeviceContext:
        # pymodbus's block address 1 is protocol address 0
        return ModbusDeviceContext(
            hr=ModbusSequentialDataBlock(1, [7] * hr),
            ir=ModbusSequentialDataBlock(1, [1] * ir),
            co=ModbusSequentialDataBlock(1, [True] * co),
            di=ModbusSequentialDataBlock(1, [False] * di),
        )

    context = ModbusServerContext(
        devices={2: unit(20, 5, 16, 32), 4: unit(130, 1, 48, 16)}, single=False
    )
    identity = ModbusDeviceIdentification(
        info_name={"VendorName": "Pymodbus Co", "ProductCode": "PM-1", "MajorMinorRevision": "3"}
    )
    port = free_port()

    def absent_are_silent(sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """pymodbus 3.16 answers a unit id it lacks from its device 0, or with 04 when it has
        none (its datastore never says "no such id"): a request for one is dropped here, so
        that absent units are silent, as behind a serial gateway that does not answer 0B."""
        return None if not sending and pdu.dev_id not in (2, 4) else pdu

    server = ModbusTcpServer(
        context,
        identity=identity,
        address=(HOST, port),
        trace_pdu=absent_are_silent,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(server.serve_forever())
    try:
        await wait_for(lambda: port_open(HOST, port), message="pymodbus listening")
        args = (f"{HOST}:{port}", "--units", "1-6", "--timeout", "0.5", "--registers")
        out = tmp_path / "pm.yaml"
        code, text, err = await scan_cli(capsys, *args, "--yaml", str(out))
        assert code == 0, err
        assert "Pymodbus Co PM-1 3" in text and "2 units found, 4 without an answer" in text
        validates(capsys, out)
        units = by_unit(await scan_json(capsys, *args))
        assert set(units) == {2, 4}
        assert units[2]["registers"] == {
            "holding": [[0, 19]],
            "input": [[0, 4]],
            "coil": [[0, 15]],  # pymodbus keeps bits 16 to a register
            "discrete": [[0, 31]],
        }
        assert units[4]["registers"] == {
            "holding": [[0, 129]],
            "input": [[0, 0]],
            "coil": [[0, 47]],
            "discrete": [[0, 15]],
        }
        assert units[4]["identification"] == {
            "vendor_name": "Pymodbus Co",
            "product_code": "PM-1",
            "revision": "3",
        }
    finally:
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- read-only, closed connections, garbage, deadline, dead port, bad options ----------------


class CapturingServer:
    """A raw Modbus TCP peer that records every request: units 1, 2 and 7 hold 30 registers and
    bits; 1 and 7 have no function 43, 2 only its basic category (03 for the regular one) and
    leaves coil reads unanswered; unit 5 answers garbage, 8 as unit 9, 6 closes the connection
    (as some gateways do for an unknown unit), 20 and up answer after ``slow`` seconds; the
    rest are silent."""

    def __init__(self, slow: float = 5.0) -> None:
        self.functions: list[int] = []
        self.slow = slow
        self.connections = 0
        self.most_connections = 0  # open at once
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CapturingServer:
        self.server = await asyncio.start_server(self.serve, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        self.connections += 1
        self.most_connections = max(self.most_connections, self.connections)
        try:
            while data := await reader.read(4096):
                for frame in decoder.feed(data):
                    self.functions.append(frame.pdu[0])
                    if frame.unit_id == 6:
                        writer.close()
                        return
                    if frame.unit_id >= 20:
                        await asyncio.sleep(self.slow)
                    pdu = self.answer(frame.unit_id, frame.pdu)
                    if pdu is not None:
                        unit = 9 if frame.unit_id == 8 else frame.unit_id
                        writer.write(build_frame(frame.transaction_id, unit, pdu))
        except (ConnectionError, FrameError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    @staticmethod
    def answer(unit: int, pdu: bytes) -> bytes | None:
        if unit == 5:
            return b"\x07\x01"  # not the function asked
        if unit not in (1, 2, 7, 8) and unit < 20:
            return None
        request = parse_request(pdu)
        if unit == 2 and isinstance(request, ReadDeviceIdentification):
            if request.read_code is not ReadDeviceIdCode.BASIC:
                return exception_pdu(pdu[0], ExceptionCode.ILLEGAL_DATA_VALUE)
            return device_identification_pdu({0: b"Raw", 1: b"R-2", 2: b"0.1"}, request)
        if unit == 2 and request.function == 0x01:
            return None
        if not isinstance(request, ReadRequest):
            return exception_pdu(pdu[0], ExceptionCode.ILLEGAL_FUNCTION)
        if request.address + request.count > 30:
            return exception_pdu(pdu[0], ExceptionCode.ILLEGAL_DATA_ADDRESS)
        if request.function.is_bit:
            return read_bits_pdu(request.function, [1] * request.count)
        return read_registers_pdu(request.function, [0] * request.count)


async def test_only_read_functions_are_sent_and_closing_or_garbage_peers_are_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with CapturingServer() as peer:
        out = tmp_path / "raw.yaml"
        args = ("--units", "1-8", "--timeout", "0.3", "--concurrency", "1", "--registers")
        code, text, err = await scan_cli(capsys, f"{HOST}:{peer.port}", *args, "--yaml", str(out))
        assert code == 0, err
        assert set(peer.functions) == READS  # every read was used, nothing else ever
        assert peer.functions.count(0x2B) == 4  # per unit found: one, two for unit 2
        validates(capsys, out)
        doc = await scan_json(capsys, f"{HOST}:{peer.port}", *args)
        assert set(peer.functions) == READS
        units = by_unit(doc)
        assert doc["found"] == [1, 2, 7]  # 7: after 6 closed the connection, on a new one
        assert units[5]["status"] == "garbage" and "function 07" in str(units[5]["answer"])
        assert units[6]["status"] == "closed" and "closed by the peer" in str(units[6]["answer"])
        assert units[7]["registers"] == {
            t: [[0, 29]] for t in ("holding", "input", "coil", "discrete")
        }
        assert units[1]["identification_note"] == "not supported"
        assert units[2]["identification"] == {
            "vendor_name": "Raw",
            "product_code": "R-2",
            "revision": "0.1",
        }
        assert units[2]["registers"]["coil"] == [] and units[2]["registers"]["input"] == [[0, 29]]  # type: ignore[index]
        assert units[2]["register_notes"] == {"coil": "no answer to a read at 0: probed no further"}
        assert (
            units[8]["status"] == "garbage"
            and units[8]["answer"] == "garbage answer: answer for unit 9"
        )
        assert set(units) == {1, 2, 5, 6, 7, 8}  # 3, 4: silent, absent


async def test_the_deadline_ends_the_scan_and_names_what_was_not_probed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with CapturingServer(slow=30.0) as peer:
        args = ("--units", "20-40", "--timeout", "5", "--deadline", "0.5", "--concurrency", "2")
        code, text, err = await scan_cli(capsys, f"{HOST}:{peer.port}", *args)
        assert code == 0, err
        assert "0 units found, 0 without an answer, 21 not probed (deadline reached: 20-40)" in text
        assert peer.most_connections == 2  # --concurrency: two units probed at once


async def test_a_dead_port_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port()
    code, out, err = await scan_cli(capsys, f"{HOST}:{port}", "--units", "1-3")
    assert code == 1 and out == ""
    assert err == f"error: cannot connect to {HOST}:{port}: Connection refused\n"
    config = tmp_path / "none.yaml"
    code, out, err = await scan_cli(capsys, f"{HOST}:{port}", "--yaml", str(config))
    assert code == 1 and "Connection refused" in err and not config.exists()
    code, out, err = await scan_cli(capsys, f"{HOST}:{port}", "--json")
    assert code == 1 and json.loads(out)["error"].endswith("Connection refused")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--units", "1-300"], "error: --units: '1-300': unit ids are 0-255 with framing tcp"),
        (["--framing", "rtu", "--units", "0-3"], "unit ids are 1-247 with framing rtu"),
        (["--timeout", "0"], "--timeout: must be a positive finite number"),
        (["--max-address", "70000"], "must be at most 65536"),
    ],
)
async def test_bad_options_are_refused_before_any_probe(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    async with CapturingServer() as peer:
        code, _, err = await scan_cli(capsys, f"{HOST}:{peer.port}", *args)
        assert code == 2 and message in err
        assert peer.functions == []


async def test_a_late_answer_is_not_taken_for_the_next_units(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # unit 20's answer comes after its timeout, while unit 21's request waits on the connection
    async with CapturingServer(slow=0.45) as peer:
        args = ("--units", "20-21", "--timeout", "0.3", "--concurrency", "1")
        doc = await scan_json(capsys, f"{HOST}:{peer.port}", *args)
        assert doc["found"] == [] and doc["units"] == []  # both absent, none garbage
        assert peer.functions == [0x03, 0x03]
    async with CapturingServer(slow=0.05) as peer:  # the same units, in time: found
        doc = await scan_json(capsys, f"{HOST}:{peer.port}", *args)
        assert doc["found"] == [20, 21] and by_unit(doc)[20]["registers"] is None


async def test_an_rtu_answer_from_another_unit_is_not_this_units(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def other_unit_answers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while request := await reader.readexactly(8):  # function 03: 8 bytes
                writer.write(build_rtu_frame(request[0] + 1, read_registers_pdu(3, [0])))
        writer.close()

    server = await asyncio.start_server(other_unit_answers, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        args = ("--framing", "rtu", "--units", "1-2", "--timeout", "0.3")
        doc = await scan_json(capsys, f"{HOST}:{port}", *args)
        assert doc["found"] == [] and doc["units"] == []  # silent units on a busy bus
    finally:
        server.close()
        await server.wait_closed()
