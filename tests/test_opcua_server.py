"""The OPC UA server adapter: a whole in-process gateway (a simulated Modbus device -> bridge ->
our OPC UA server) read and written by asyncua's client and by node-opcua's, on 127.0.0.1.

The helpers here (`plant_config`, `running_gateway`, `run_node_client`, ...) are shared with
test_opcua_security.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from conftest import HOST, NODE_DIR, free_port, modbus_device_yaml, node_binary, wait_for

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.config import load_config, load_config_text
from gateway.passwords import hash_password
from gateway.runtime import Gateway
from gateway.types import Message, Quality, Sample
from protocols.modbus.codec import ByteOrder, DataType, encode
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.opcua.config import OpcuaServer
from protocols.opcua.server import OpcuaServerAdapter
from protocols.opcua.units import eu_information

NAMESPACE = "urn:protocol-brain:plant"
SECRET_HASH = hash_password("secret")
WRITER = (
    f"users: [{{username: op, password_hash: '{SECRET_HASH}'}}]\n"
    "    security: {allow_none: true, pki_dir: PKI}"
)

POINTS = """
      - {name: temp, table: input, address: 0, type: int16, scale: 0.1, unit: degC, low: -20,
         high: 150, poll: fast, description: "oil temperature"}
      - {name: setpoint, table: holding, address: 10, type: float32, byte_order: CDAB,
         unit: degC, access: rw, low: 0, high: 120, poll: fast}
      - {name: level, table: holding, address: 20, type: int16, scale: 0.1, unit: percent,
         access: rw, low: 0, high: 100, poll: fast}
      - {name: count, table: holding, address: 30, type: uint32, poll: fast}
      - {name: enable, table: coil, address: 0, access: rw, poll: fast}
      - {name: model, table: holding, address: 40, type: string, length: 4, poll: fast}
"""


def plant_config(
    modbus_port: int,
    opcua_port: int,
    pki: Path,
    *,
    server: str = "anonymous: true\n    security: {allow_none: true, pki_dir: PKI}",
) -> str:
    """A gateway with one Modbus device ``pump`` bridged to an OPC UA server ``opcua``; the
    bridge shows setpoint in degF. ``server`` is the server's YAML after host and port (PKI is
    replaced by the pki folder)."""
    return f"""
gateway: {{name: plant}}
devices:
{modbus_device_yaml(modbus_port)}
    points:{POINTS}
endpoints:
  opcua:
    protocol: opcua
    role: server
    host: {HOST}
    port: {opcua_port}
    write_timeout: 3
    {server.replace("PKI", str(pki))}
bridges:
  - {{name: up, from: pump, to: opcua, folder: "Plant/{{device}}", units: {{setpoint: degF}}}}
"""


def fill(device: SimulatedDevice) -> None:
    device.set_value("input", 0, 215, DataType.INT16)  # 21.5 degC
    device.set_value("holding", 10, 50.0, DataType.FLOAT32, ByteOrder.CDAB)  # 122 degF
    device.set_value("holding", 20, 425, DataType.INT16)  # 42.5 %
    device.set_value("holding", 30, 70000, DataType.UINT32)
    device.set_bits("coil", 0, [False])
    device.set_value("holding", 40, "PB-7", DataType.STRING, length=4)


@contextlib.asynccontextmanager
async def running_gateway(config: str | Path) -> AsyncIterator[Gateway]:
    """A gateway run in-process on config text, or on a config file (read as `gateway run`
    reads it: relative paths next to it)."""
    loaded = (
        load_config(config) if isinstance(config, Path) else load_config_text(config, "plant.yaml")
    )
    gateway = Gateway(loaded)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    started = asyncio.create_task(gateway.started.wait())
    await asyncio.wait({task, started}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
    assert gateway.started.is_set(), "the gateway did not start in 20 s"
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


class Plant:
    def __init__(self, gateway: Gateway, device: SimulatedDevice, simulator: Simulator) -> None:
        self.gateway = gateway
        self.device = device
        self.simulator = simulator
        adapter = gateway.adapters["opcua"]
        assert isinstance(adapter, OpcuaServerAdapter)
        self.server = adapter
        self.url = adapter.endpoint_url
        self.ns = adapter.namespace_index

    def node_id(self, point: str) -> str:
        return f"ns={self.ns};s=pump.{point}"


@contextlib.asynccontextmanager
async def plant_gateway(
    simulator: Simulator, tmp_path: Path, server: str | None = None
) -> AsyncIterator[Plant]:
    device = await simulator.add_device(name="pump")
    fill(device)
    kwargs = {} if server is None else {"server": server}
    text = plant_config(device.port, free_port(), tmp_path / "pki", **kwargs)
    async with running_gateway(text) as gateway:
        yield Plant(gateway, device, simulator)


def writer(url: str) -> Client:
    """A client logged in as ``op``, the user of the WRITER server settings."""
    client = Client(url)
    client.set_user("op")
    client.set_password("secret")
    return client


async def write(client: Client, node_id: str, variant: ua.Variant) -> str:
    """Write one value; the status name the server answered."""
    try:
        await client.get_node(node_id).write_value(ua.DataValue(variant))
    except ua.UaStatusCodeError as exc:
        return type(exc).__name__
    return "Good"


async def read(client: Client, node_id: str) -> ua.DataValue:
    result: ua.DataValue = await client.get_node(node_id).read_data_value(raise_on_bad_status=False)
    return result


async def run_node(
    args: tuple[str, ...], plan: dict[str, Any], limit: float = 20
) -> tuple[int, list[Any], bytes]:
    """Run node with ``args`` in tests/interop/node, ``plan`` as JSON on stdin; (exit code,
    the JSON lines it printed, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        *args,
        cwd=NODE_DIR,  # where require() finds node-opcua
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(plan).encode()), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node-opcua client did not finish in {limit} s")
    assert proc.returncode is not None
    return proc.returncode, [json.loads(ln) for ln in out.splitlines() if ln.startswith(b"{")], err


async def run_node_client(plan: dict[str, Any], limit: float = 20) -> tuple[int, list[Any]]:
    """Run tests/interop/node/opcua_client.js with ``plan``; (exit code, its JSON lines)."""
    rc, lines, err = await run_node(("opcua_client.js",), plan, limit)
    if rc != 0 and not any("error" in line for line in lines):
        pytest.fail(f"node-opcua client failed: {err.decode(errors='replace')[-2000:]}")
    return rc, lines


def one(lines: list[Any], key: str) -> Any:
    found = [line[key] for line in lines if key in line]
    assert found, f"no {key!r} line in {lines}"
    return found[0]


# -- address space -------------------------------------------------------------------------


async def test_address_space_from_config(simulator: Simulator, tmp_path: Path) -> None:
    async with plant_gateway(simulator, tmp_path) as plant, Client(plant.url) as client:
        assert await client.get_namespace_index(NAMESPACE) == plant.ns
        objects = client.nodes.objects
        folder = await objects.get_child([f"{plant.ns}:Plant", f"{plant.ns}:pump"])
        names = {(await n.read_browse_name()).Name: n for n in await folder.get_children()}
        assert set(names) == {"temp", "setpoint", "level", "count", "enable", "model"}
        assert names["temp"].nodeid == ua.NodeId("pump.temp", plant.ns)

        temp = client.get_node(plant.node_id("temp"))
        assert await temp.read_data_type() == ua.NodeId(ua.ObjectIds.Double)  # scaled int16
        assert (await temp.read_display_name()).Text == "temp"
        assert (await temp.read_description()).Text == "oil temperature"
        assert await temp.read_attribute(ua.AttributeIds.AccessLevel) is not None
        access = (await temp.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
        assert access == ua.AccessLevel.CurrentRead.mask
        eu = await (await temp.get_child("0:EngineeringUnits")).read_value()
        assert (eu.UnitId, eu.DisplayName.Text) == (4408652, "°C")  # UNECE CEL
        eurange = await (await temp.get_child("0:EURange")).read_value()
        assert (eurange.Low, eurange.High) == (-20.0, 150.0)

        setpoint = client.get_node(plant.node_id("setpoint"))
        assert await setpoint.read_data_type() == ua.NodeId(ua.ObjectIds.Float)
        access = (await setpoint.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
        assert access == ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask
        eu = await (await setpoint.get_child("0:EngineeringUnits")).read_value()
        assert eu.UnitId == 4604232  # FAH: the bridge's unit, not the device's
        eurange = await (await setpoint.get_child("0:EURange")).read_value()
        assert (eurange.Low, eurange.High) == pytest.approx((32.0, 248.0))

        types = {
            "count": ua.ObjectIds.UInt32,
            "enable": ua.ObjectIds.Boolean,
            "model": ua.ObjectIds.String,
        }
        for point, datatype in types.items():
            node = client.get_node(plant.node_id(point))
            assert await node.read_data_type() == ua.NodeId(datatype), point
            assert await node.get_properties() == [], point  # no unit, no range

        values = {
            "temp": 21.5,
            "setpoint": 122.0,
            "level": 42.5,
            "count": 70000,
            "enable": False,
            "model": "PB-7",
        }
        for point, expected in values.items():
            dv = await wait_for(
                lambda p=point: _good(client, plant.node_id(p)), message=f"{point} is Good"
            )
            assert dv.Value.Value == pytest.approx(expected), point
            assert dv.SourceTimestamp is not None and dv.ServerTimestamp is not None


async def _good(client: Client, node_id: str) -> ua.DataValue | None:
    dv = await read(client, node_id)
    return dv if dv.StatusCode is not None and dv.StatusCode.is_good() else None


async def test_subscription_sees_changes_and_a_dead_device(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with plant_gateway(simulator, tmp_path) as plant, Client(plant.url) as client:
        changes: list[ua.DataValue] = []

        class Handler:
            def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
                changes.append(data.monitored_item.Value)

        subscription = await client.create_subscription(50, Handler())
        await subscription.subscribe_data_change(client.get_node(plant.node_id("temp")))
        await wait_for(lambda: any(c.Value.Value == 21.5 for c in changes), message="21.5")

        before = time.time()
        plant.device.set_value("input", 0, 233, DataType.INT16)
        latest = await wait_for(
            lambda: next((c for c in changes if c.Value.Value == 23.3), None), message="23.3"
        )
        assert latest.StatusCode.is_good()
        source = latest.SourceTimestamp.replace(tzinfo=UTC).timestamp()
        assert before - 0.05 <= source <= time.time() + 0.05

        await plant.simulator.stop_device(plant.device)
        bad = await wait_for(
            lambda: next((c for c in changes if not c.StatusCode.is_good()), None),
            message="a Bad notification",
        )
        assert bad.StatusCode.value in (
            ua.StatusCodes.BadCommunicationError,
            ua.StatusCodes.BadNoCommunication,
            ua.StatusCodes.BadTimeout,
        )
        assert bad.Value.Value is None  # never a stale number
        dv = await read(client, plant.node_id("temp"))
        assert dv.StatusCode.is_bad() and dv.Value.Value is None

        await plant.simulator.start_device(plant.device)
        await wait_for(lambda: changes[-1].StatusCode.is_good(), message="Good again")
        assert changes[-1].Value.Value == 23.3


# -- status mapping and initial state, driven through send() --------------------------------


async def test_values_statuses_and_initial_state(tmp_path: Path) -> None:
    text = plant_config(free_port(), free_port(), tmp_path / "pki", server=WRITER)  # no device
    text += "  - {name: ro, from: meter, to: opcua, writable: false}\n"
    text = text.replace(
        "endpoints:",
        f"  meter:\n    protocol: modbus\n    host: {HOST}\n    port: {free_port()}\n"
        "    poll_groups: {slow: {interval: 60}}\n"
        "    points:\n"
        "      - {name: knob, table: holding, address: 0, access: rw, poll: slow}\n"
        "endpoints:",
    )
    gateway = Gateway(load_config_text(text, "plant.yaml"))
    adapter = gateway.adapters["opcua"]
    assert isinstance(adapter, OpcuaServerAdapter)
    up, ro = (b.config.route for b in gateway.bridges)
    async with adapter, writer(adapter.endpoint_url) as client:
        ns = adapter.namespace_index
        temp, count = f"ns={ns};s=pump.temp", f"ns={ns};s=pump.count"
        dv = await read(client, temp)
        assert dv.StatusCode.value == ua.StatusCodes.BadWaitingForInitialData

        # a bridge with writable: false serves an rw point read-only
        knob = client.get_node(f"ns={ns};s=meter.knob")
        assert (await knob.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value == 1
        assert await write(client, f"ns={ns};s=meter.knob", ua.Variant(True)) == "BadNotWritable"

        ts = 1_700_000_000.25
        cases = [
            (Sample("temp", 21.5, Quality.GOOD, ts, ts), ua.StatusCodes.Good, 21.5),
            (Sample("temp", 21.6, Quality.UNCERTAIN, ts, ts), ua.StatusCodes.Uncertain, 21.6),
            (Sample("temp", None, Quality.BAD, ts, ts, reason="timeout"), "BadTimeout", None),
            (
                Sample("temp", None, Quality.BAD, ts, ts, reason="connection lost"),
                "BadCommunicationError",
                None,
            ),
            (
                Sample("temp", None, Quality.BAD, ts, ts, reason="not connected"),
                "BadNoCommunication",
                None,
            ),
            (
                Sample("temp", None, Quality.BAD, ts, ts, reason="exception 02 (illegal address)"),
                "BadDeviceFailure",
                None,
            ),
        ]
        for sample, code, value in cases:
            await adapter.send(Message.telemetry("pump", (sample,)), up)
            dv = await read(client, temp)
            expected = code if isinstance(code, int) else getattr(ua.StatusCodes, code)
            assert dv.StatusCode.value == expected, sample
            assert dv.Value.Value == value
            assert dv.SourceTimestamp == datetime.fromtimestamp(ts, UTC)

        # the Python value becomes the node's own type: an int for a UInt32 node
        await adapter.send(Message.telemetry("pump", (Sample.now("count", 7.0),)), up)
        dv = await read(client, count)
        assert (dv.Value.Value, dv.Value.VariantType) == (7, ua.VariantType.UInt32)
        # another bridge's samples do not reach this bridge's nodes
        await adapter.send(Message.telemetry("pump", (Sample.now("count", 8),)), ro)
        assert (await read(client, count)).Value.Value == 7
        status = adapter.status()
        assert status["variables"] == 7 and status["updates"] == len(cases) + 1
        assert status["endpoint"] == adapter.endpoint_url


# -- write-back ------------------------------------------------------------------------------


@pytest.fixture
async def writable(simulator: Simulator, tmp_path: Path) -> AsyncIterator[tuple[Plant, Client]]:
    """The plant with a user who may write, logged in, once the first values are in."""
    async with plant_gateway(simulator, tmp_path, server=WRITER) as plant:
        async with writer(plant.url) as client:
            await wait_for(lambda: _good(client, plant.node_id("setpoint")), message="values")
            yield plant, client


async def test_writes_reach_the_device_with_reverse_conversions(
    writable: tuple[Plant, Client],
) -> None:
    plant, client = writable
    dev = plant.device
    setpoint = plant.node_id("setpoint")

    # 212 degF on the bridge is 100 degC on the device, a CDAB float32
    assert await write(client, setpoint, ua.Variant(212.0, ua.VariantType.Double)) == "Good"
    assert dev.get_registers("holding", 10, 2) == encode(100.0, DataType.FLOAT32, ByteOrder.CDAB)
    await wait_for(lambda: _value_is(client, setpoint, 212.0), message="read back 212")

    # scale 0.1: 42.5 % is raw 425; a Float is taken at its shortest decimal
    level = plant.node_id("level")
    assert await write(client, level, ua.Variant(61.7, ua.VariantType.Float)) == "Good"
    assert dev.get_registers("holding", 20) == [617]
    assert await write(client, plant.node_id("enable"), ua.Variant(True)) == "Good"
    assert dev.get_bits("coil", 0) == [True]

    # refused: nothing reaches the device
    before = dev.get_registers("holding", 10, 2)
    assert await write(client, setpoint, ua.Variant(300.0)) == "BadOutOfRange"
    assert await write(client, setpoint, ua.Variant("hot")) == "BadTypeMismatch"
    assert await write(client, plant.node_id("temp"), ua.Variant(5.0)) == "BadNotWritable"
    assert await write(client, plant.node_id("count"), ua.Variant(1)) == "BadNotWritable"
    assert await write(client, level, ua.Variant(101.0)) == "BadOutOfRange"
    assert dev.get_registers("holding", 10, 2) == before
    assert dev.get_registers("holding", 20) == [617]
    assert dev.get_registers("input", 0) == [215]
    status = plant.server.status()
    assert status["writes_ok"] == 3
    assert status["writes_refused"] == {
        "BadOutOfRange": 2,
        "BadTypeMismatch": 1,
        "BadNotWritable": 2,
    }


async def _value_is(client: Client, node_id: str, value: Any) -> bool:
    dv = await read(client, node_id)
    return bool(dv.StatusCode.is_good() and dv.Value.Value == pytest.approx(value))


async def test_write_to_a_dead_device_fails_now_and_never_later(
    writable: tuple[Plant, Client],
) -> None:
    plant, client = writable
    dev = plant.device
    setpoint = plant.node_id("setpoint")
    before = dev.get_registers("holding", 10, 2)

    await plant.simulator.stop_device(dev)
    await wait_for(lambda: _bad(client, plant.node_id("temp")), message="the device seen down")
    started = time.monotonic()
    assert await write(client, setpoint, ua.Variant(200.0)) == "BadCommunicationError"
    assert time.monotonic() - started < 1.0  # refused at once, not after write_timeout

    await plant.simulator.start_device(dev)
    await wait_for(lambda: _good(client, plant.node_id("temp")), message="back up")
    await asyncio.sleep(0.5)  # several polls: a queued write would have landed by now
    assert dev.get_registers("holding", 10, 2) == before


async def _bad(client: Client, node_id: str) -> bool:
    dv = await read(client, node_id)
    return bool(dv.StatusCode.is_bad())


# -- unknown nodes and who may write what ----------------------------------------------------

VIEWER_HASH = hash_password("look")
EVERYONE = (
    "anonymous: true\n"
    f"    users: [{{username: op, password_hash: '{SECRET_HASH}'}},\n"
    f"            {{username: viewer, password_hash: '{VIEWER_HASH}', access: read}}]\n"
    "    security: {allow_none: true, pki_dir: PKI}"
)
# Server/ServerDiagnostics/EnabledFlag: writable (AccessLevel), but by no client's user
ENABLED_FLAG = "i=2294"


async def write_many(client: Client, items: list[tuple[str, ua.AttributeIds, Any]]) -> list[str]:
    """One Write request; the status name of each item."""
    params = ua.WriteParameters(
        NodesToWrite=[
            ua.WriteValue(
                NodeId=ua.NodeId.from_string(node_id),
                AttributeId=attribute,
                Value=ua.DataValue(ua.Variant(value)),
            )
            for node_id, attribute, value in items
        ]
    )
    return [code.name for code in await client.uaclient.write(params)]


async def test_unknown_nodes_and_access_for_each_kind_of_user(
    simulator: Simulator, tmp_path: Path
) -> None:
    """A node that does not exist is BadNodeIdUnknown to every service and every user (asyncua
    said BadUserAccessDenied to a Write, BadNodeIdInvalid to a Browse); BadUserAccessDenied
    only where another user could write; UserAccessLevel is the user's own."""
    async with plant_gateway(simulator, tmp_path, server=EVERYONE) as plant:
        await wait_for(lambda: plant.server.status()["updates"] >= 6, message="first values")
        nope, level = plant.node_id("nope"), plant.node_id("level")
        V = ua.AttributeIds.Value
        items = [
            (nope, V, 1.0),
            ("i=99999", V, 1.0),
            (plant.node_id("temp"), V, 1.0),  # read only
            ("i=2256", V, 1.0),  # ServerStatus: read only
            (level, ua.AttributeIds.DisplayName, ua.LocalizedText("x")),  # never writable
            (f"ns={plant.ns};s=Plant", V, 1.0),  # a folder has no Value
            (level, V, 50.0),
            (ENABLED_FLAG, V, True),
        ]
        unknown_id = ua.NodeId.from_string(nope)
        for user, password, may_write in (
            (None, None, False),
            ("viewer", "look", False),
            ("op", "secret", True),
        ):
            client = writer(plant.url) if user == "op" else Client(plant.url)
            if user == "viewer":
                client.set_user(user)
                client.set_password(password or "")
            async with client:
                assert await write_many(client, items) == [
                    "BadNodeIdUnknown",
                    "BadNodeIdUnknown",
                    "BadNotWritable",
                    "BadNotWritable",
                    "BadNotWritable",
                    "BadAttributeIdInvalid",
                    "Good" if may_write else "BadUserAccessDenied",
                    "BadUserAccessDenied",
                ], user
                assert (await read(client, nope)).StatusCode.name == "BadNodeIdUnknown"
                browsed = await client.uaclient.browse(
                    ua.BrowseParameters(NodesToBrowse=[ua.BrowseDescription(NodeId=unknown_id)])
                )
                assert browsed[0].StatusCode.name == "BadNodeIdUnknown"
                path = ua.BrowsePath(
                    StartingNode=unknown_id,
                    RelativePath=ua.RelativePath(
                        Elements=[ua.RelativePathElement(TargetName=ua.QualifiedName("x", 1))]
                    ),
                )
                (translated,) = await client.uaclient.translate_browsepaths_to_nodeids([path])
                assert translated.StatusCode.name == "BadNodeIdUnknown"
                user_level = await client.get_node(level).read_attribute(
                    ua.AttributeIds.UserAccessLevel
                )
                assert user_level.Value.Value == (3 if may_write else 1), user
                access_level = await client.get_node(level).read_attribute(
                    ua.AttributeIds.AccessLevel
                )
                assert access_level.Value.Value == 3
                server = ua.NodeId(ua.ObjectIds.Server)
                calls = await client.uaclient.call(
                    [
                        ua.CallMethodRequest(ObjectId=unknown_id, MethodId=unknown_id),
                        ua.CallMethodRequest(ObjectId=server, MethodId=unknown_id),
                    ]
                )
                assert [c.StatusCode.name for c in calls] == [
                    "BadNodeIdUnknown",
                    "BadMethodInvalid",
                ], user
        # only op's write reached the device: 50 % is raw 500
        assert plant.device.get_registers("holding", 20) == [500]
        assert plant.server.status()["writes_ok"] == 1


# -- a peer we did not write -----------------------------------------------------------------


async def test_node_opcua_client_without_security(simulator: Simulator, tmp_path: Path) -> None:
    async with plant_gateway(simulator, tmp_path) as plant:
        await wait_for(lambda: plant.server.status()["updates"] >= 6, message="first values")
        plan = {
            "pki": str(tmp_path / "node-pki"),
            "url": plant.url,
            "browse": f"ns={plant.ns};s=Plant/pump",
            "read": [plant.node_id("temp"), plant.node_id("setpoint")],
            "probe": [plant.node_id("nope"), "i=99999", plant.node_id("setpoint")],
            "subscribe": {"nodes": [plant.node_id("count")], "count": 2, "timeout": 5000},
            "write": [
                {"nodeId": plant.node_id("setpoint"), "dataType": "Float", "value": 212},
                {"nodeId": plant.node_id("nope"), "dataType": "Float", "value": 212},
                {"nodeId": plant.node_id("temp"), "dataType": "Double", "value": 1},
                {"nodeId": "i=2256", "dataType": "Double", "value": 1},  # ServerStatus
            ],
        }

        async def bump() -> None:
            for n in range(1, 100):
                plant.device.set_value("holding", 30, 70000 + n, DataType.UINT32)
                await asyncio.sleep(0.1)

        bumper = asyncio.create_task(bump())
        try:
            code, lines = await run_node_client(plan)
        finally:
            bumper.cancel()
        # anonymous clients may read and subscribe, but not write; a node that does not
        # exist is unknown to them as to anybody, one nobody may write is not writable
        assert code == 0, lines
        assert [w["status"] for w in one(lines, "write")] == [
            "BadUserAccessDenied",
            "BadNodeIdUnknown",
            "BadNotWritable",
            "BadNotWritable",
        ]
        nope, other_nope, writable = one(lines, "probe")
        for unknown in (nope, other_nope):
            assert (unknown["read"], unknown["browse"]) == ("BadNodeIdUnknown",) * 2, unknown
        assert writable["read"] == writable["browse"] == "Good"
        # the setpoint is writable (AccessLevel), but not by this client (UserAccessLevel)
        assert (writable["accessLevel"], writable["userAccessLevel"]) == (3, 1)

        browsed = {b["displayName"]: b for b in one(lines, "browse")}
        assert set(browsed) == {"temp", "setpoint", "level", "count", "enable", "model"}
        assert browsed["temp"]["nodeId"] == plant.node_id("temp")
        temp, setpoint = one(lines, "read")
        assert temp["status"] == "Good" and temp["value"] == 21.5
        assert temp["dataType"] == "Double" and temp["accessLevel"] == 1
        assert temp["description"] == "oil temperature"
        assert temp["properties"]["EngineeringUnits"]["unitId"] == 4408652
        assert temp["properties"]["EURange"] == {"low": -20, "high": 150}
        assert setpoint["dataType"] == "Float" and setpoint["accessLevel"] == 3
        changes = [line["change"] for line in lines if "change" in line]
        assert len(changes) >= 2 and all(c["status"] == "Good" for c in changes)
        assert all(c["sourceTimestamp"] for c in changes)
        assert len({c["value"] for c in changes}) >= 2


def _server_alone(tmp_path: Path) -> OpcuaServerAdapter:
    """An anonymous OPC UA server adapter of gateway 'solo' with no bridge."""
    config = OpcuaServer.model_validate(
        {
            "host": HOST,
            "port": free_port(),
            "anonymous": True,
            "security": {"allow_none": True, "pki_dir": str(tmp_path / "pki")},
        }
    )
    return OpcuaServerAdapter("alone", config, AdapterContext(Bus(), "solo"))


async def test_adapter_alone_serves_no_points(tmp_path: Path) -> None:
    """An OPC UA server with no bridge still starts (its address space is just the standard
    one) and reports its state."""
    adapter = _server_alone(tmp_path)
    async with adapter, Client(adapter.endpoint_url) as client:
        assert await client.get_namespace_index("urn:protocol-brain:solo") == 1
        status = adapter.status()
        assert status["variables"] == 0 and status["sessions"] == 1


# -- engineering units -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "unit_id", "display"),
    [
        ("degC", 4408652, "°C"),  # CEL
        ("celsius", 4408652, "°C"),  # the same unit spelled another way
        ("degF", 4604232, "°F"),  # FAH
        ("%", 20529, "%"),  # P1
        ("l/min", 19506, "l/min"),  # L2
        ("m3/h", 5067080, "m³/h"),  # MQH
        ("rpm", 5394509, "r/min"),  # RPM
        ("kWh", 4937544, "kW·h"),  # KWH
        ("psi", 20563, "lbf/in²"),  # PS
        ("mm/s", 4403510, "mm/s"),  # C16
        ("furlong", -1, "furlong"),  # pint knows it, UNECE code not in our table
        ("no_such_unit", -1, "no_such_unit"),
    ],
)
def test_engineering_units(unit: str, unit_id: int, display: str) -> None:
    eu = eu_information(unit)
    assert eu is not None
    assert (eu.UnitId, eu.DisplayName.Text) == (unit_id, display)
    namespace = "" if unit_id == -1 else "http://www.opcfoundation.org/UA/units/un/cefact"
    assert eu.NamespaceUri == namespace
    assert eu_information(None) is None


async def test_an_oversized_chunk_is_refused_at_its_header(tmp_path: Path) -> None:
    """A peer announcing a chunk far above the receive buffer is cut off at once (it was
    buffered until its timer ran out); the server keeps serving other clients."""
    adapter = _server_alone(tmp_path)
    async with adapter:
        reader, writer = await asyncio.open_connection(HOST, adapter.config.port)
        writer.write(b"HELF" + (200_000_000).to_bytes(4, "little") + b"\0" * 4096)
        await writer.drain()
        start = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert time.monotonic() - start < 2
        writer.close()
        async with Client(adapter.endpoint_url) as client:
            assert await client.get_namespace_index("urn:protocol-brain:solo") == 1


async def test_the_chunk_guard_adds_no_copy_of_what_is_buffered(tmp_path: Path) -> None:
    """A chunk arriving in many reads: the guard reads headers where they lie instead of
    joining asyncua's buffer and the new bytes again (asyncua's own copy is the only one left);
    a header split across two reads is still checked."""
    adapter = _server_alone(tmp_path)
    async with adapter:
        assert adapter.server is not None and adapter.server.bserver is not None
        clients = adapter.server.bserver.clients
        _, first = await asyncio.open_connection(HOST, adapter.config.port)
        await wait_for(lambda: len(clients) == 1, message="the connection accepted")
        (proto,) = clients
        # 50,012 bytes of a 60,000-byte chunk (under the 65,535-byte receive buffer)
        proto.data_received(b"MSGF" + (60_000).to_bytes(4, "little") + bytes(50_004))
        buffered = len(proto._buffer)
        assert buffered == 50_012
        tracemalloc.start()
        try:
            proto.data_received(b"y" * 100)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(proto._buffer) == buffered + 100
        assert peak < 1.5 * buffered, peak  # asyncua's copy: 50 KB; with a second, 100 KB

        _, second = await asyncio.open_connection(HOST, adapter.config.port)
        await wait_for(lambda: len(clients) == 2, message="the second connection accepted")
        split = clients[1]
        split.data_received(b"HE")
        assert split.transport is not None and not split.transport.is_closing()
        split.data_received(b"LF" + (200_000_000).to_bytes(4, "little"))
        assert split.transport is None or split.transport.is_closing()
        assert proto.transport is not None and not proto.transport.is_closing()
        first.close()
        second.close()


# -- clients that vanish ---------------------------------------------------------------------


class _Quiet:
    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        pass


async def test_a_vanished_client_is_bounded_and_its_session_closed_with_the_server(
    simulator: Simulator, tmp_path: Path
) -> None:
    """A client that drops its connection without CloseSession kept its session and its
    subscriptions' queues (10,000 per item) for asyncua's 600 s, across a reload too: the
    gateway grew 16 MB a minute for 50 such sessions. Now its session timeout is at most 60 s,
    an item queues at most 100 changes, and stopping the server closes the sessions."""
    from protocols.opcua.server import ITEM_QUEUE, SESSION_TIMEOUT_S

    async with plant_gateway(simulator, tmp_path) as plant:
        iserver = plant.gateway.adapters["opcua"].server.iserver  # type: ignore[attr-defined]
        client = Client(plant.url)  # asks for a one-hour session
        await client.connect()
        assert client.session_timeout == SESSION_TIMEOUT_S * 1000
        sub = await client.create_subscription(100, _Quiet())
        await sub.subscribe_data_change(client.get_node(plant.node_id("temp")), queuesize=0)
        (internal,) = iserver.subscription_service.subscriptions.values()
        items = internal.monitored_item_srv._monitored_items.values()
        assert [m.queue_size for m in items] == [ITEM_QUEUE]
        client.uaclient.protocol.transport.abort()  # gone, without CloseSession
        await asyncio.sleep(0.5)
        assert len(iserver._external_sessions) == 1  # detached, waiting for its timeout
    assert iserver._external_sessions == {}
    assert iserver.subscription_service.subscriptions == {}
