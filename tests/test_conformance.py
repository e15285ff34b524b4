"""Every built-in protocol passes the plugin conformance kit (gateway.testing), with real peers:
the Modbus simulator, mosquitto, node-opcua and libcoap's coap-server; the server roles (OPC UA,
Modbus, CoAP) have no peer to lose."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import HOST, MosquittoBroker, find_binary, free_port, started_mosquitto, wait_for
from test_coap_client import coap_put, coap_server
from test_opcua_client import NODES, NodeOpcuaServer

from gateway.adapter import Adapter, AdapterContext
from gateway.bridge import Bridge
from gateway.config.common import Strict
from gateway.plugins import ProtocolSpec
from gateway.testing import ProtocolConformance
from gateway.types import Access, Message, PointSpec, Value
from protocols.coap import SPEC as COAP
from protocols.modbus import SPEC as MODBUS
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.mqtt import SPEC as MQTT
from protocols.opcua import SPEC as OPCUA

FAST = {"initial": 0.05, "max": 0.3}


class TestModbusClient(ProtocolConformance):
    spec = MODBUS
    role = "client"
    writes = True

    def config(self, peer: SimulatedDevice | None) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": peer.port if peer is not None else self.closed_port(),
            "timeout": 0.3,
            "reconnect": FAST,
            "poll_groups": {"fast": {"interval": 0.1}},
            "points": [
                {"name": "temp", "table": "input", "address": 0, "type": "int16", "poll": "fast"},
                {"name": "sp", "table": "holding", "address": 10, "access": "rw", "low": 0,
                 "high": 100, "poll": "fast"},
                {"name": "on", "table": "coil", "address": 0, "access": "rw", "poll": "fast"},
            ],
        }  # fmt: skip

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[SimulatedDevice]:
        async with Simulator(HOST) as sim:
            yield await sim.add_device()

    async def check_written(self, peer: SimulatedDevice, point: PointSpec, value: Value) -> None:
        if point.name == "sp":
            assert peer.get_registers("holding", 10) == [value]
        else:
            assert peer.get_bits("coil", 0) == [value]


class TestMqttClient(ProtocolConformance):
    spec = MQTT
    role = "client"
    writes = True

    def config(self, peer: MosquittoBroker | None) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": peer.port if peer is not None else self.closed_port(),
            "reconnect": FAST,
            "points": [
                {"name": "temp", "topic": "conf/temp", "unit": "degC"},
                {"name": "sp", "topic": "conf/sp", "access": "rw", "command_topic": "conf/sp/set",
                 "low": 0, "high": 100},
            ],
        }  # fmt: skip

    def route(self) -> dict[str, Any]:
        return {"topic": "conf/out/{device}/{point}", "payload": "sample"}

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[MosquittoBroker]:
        with started_mosquitto(self.tmp_path) as broker:
            yield broker

    async def stimulate(self, peer: MosquittoBroker, adapter: Adapter) -> None:
        for topic, payload in (("conf/temp", "21.5"), ("conf/sp", '{"value": 40}')):
            proc = await asyncio.create_subprocess_exec(
                find_binary("mosquitto_pub"), "-h", peer.host, "-p", str(peer.port),
                "-q", "1", "-t", topic, "-m", payload,
            )  # fmt: skip
            await proc.wait()


class TestOpcuaClient(ProtocolConformance):
    spec = OPCUA
    role = "client"
    writes = True

    def config(self, peer: NodeOpcuaServer | None) -> dict[str, Any]:
        url = peer.url if peer is not None else f"opc.tcp://{HOST}:{self.closed_port()}/peer"
        return {
            "url": url,
            "security": {"policy": "None", "mode": "None", "pki_dir": str(self.tmp_path / "pki")},
            "timeout": 2.0,
            "reconnect": FAST,
            "subscription": {"publishing_interval": 0.1},
            "points": [
                {"name": "temp", "node_id": NODES["Temp"]},
                {"name": "sp", "node_id": NODES["Setpoint"], "access": "rw", "low": 0,
                 "high": 100},
            ],
        }  # fmt: skip

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[NodeOpcuaServer]:
        server = NodeOpcuaServer(self.tmp_path / "node-pki", self.tmp_path / "node.log")
        await server.start()
        try:
            yield server
        finally:
            await server.kill()

    async def check_written(self, peer: NodeOpcuaServer, point: PointSpec, value: Value) -> None:
        await wait_for(lambda: ("Setpoint", value) in peer.written, timeout=5)


class TestOpcuaServer(ProtocolConformance):
    spec = OPCUA
    role = "server"
    source = False
    has_peer = False  # it is the server: nothing to lose

    def config(self, peer: None) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": free_port(),
            "anonymous": True,
            "security": {"allow_none": True, "pki_dir": str(self.tmp_path / "pki")},
        }


class TestModbusServer(ProtocolConformance):
    spec = MODBUS
    role = "server"
    source = False
    has_peer = False  # it is the server: nothing to lose

    def config(self, peer: None) -> dict[str, Any]:
        return {"host": HOST, "port": free_port()}

    def route(self) -> dict[str, Any]:
        return {"map": [{"point": "temp", "address": 0, "type": "float32"}]}


class TestCoapClient(ProtocolConformance):
    spec = COAP
    role = "client"
    writes = True

    def config(self, peer: int | None) -> dict[str, Any]:
        port = peer if peer is not None else self.closed_port()
        return {
            "url": f"coap://{HOST}:{port}",
            "timeout": 1,
            "reconnect": FAST,
            "points": [
                {"name": "clock", "path": "time", "type": "string"},
                {"name": "sp", "path": "/sp", "poll": 0.2, "access": "rw", "low": 0, "high": 100},
            ],
        }

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[int]:
        port = free_port()
        async with coap_server(port):
            await coap_put(port, "/sp", "12.5")
            yield port


class TestCoapServer(ProtocolConformance):
    spec = COAP
    role = "server"
    source = False
    has_peer = False

    def config(self, peer: None) -> dict[str, Any]:
        return {"host": HOST, "port": free_port()}


# The kit itself: what it catches in a plugin (fake adapters of a protocol defined here; the
# classes are not named Test... so pytest does not collect them, the tests call their checks).


class FakePoint(Strict):
    name: str
    access: Access = Access.READ


class FakeConfig(Strict):
    points: list[FakePoint] = []
    block: float = 0.0  # seconds run() blocks the loop on each cycle (time.sleep: the bug)
    attach: str = "good"  # "broken": attach() reads bridge.points() as a list


class FakeRoute(Strict):
    pass


class FakeAdapter(Adapter):
    def __init__(self, name: str, config: FakeConfig, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self.config: FakeConfig = config
        self.served: dict[str, set[str]] = {}

    def points(self) -> list[PointSpec]:
        return [
            PointSpec(f"{self.name}/{p.name}", p.name, "float64", access=p.access)
            for p in self.config.points
        ]

    def attach(self, bridge: Bridge) -> None:
        if self.config.attach == "broken":
            for point in bridge.points():  # the bug: a dict of device -> points
                self.served.setdefault("", set()).add(point.name)  # type: ignore[attr-defined]
        for device, specs in bridge.points().items():
            self.served.setdefault(device, set()).update(p.name for p in specs)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if self.config.block:
                time.sleep(self.config.block)  # noqa: ASYNC251 (the bug the kit catches)

    async def send(self, message: Message, route: Any) -> None:
        served = self.served.get(message.device, set())
        unknown = [s.point for s in message.samples if s.point not in served]
        assert not unknown, f"send() before attach(): {unknown} not served"

    def status(self) -> dict[str, Any]:
        return {"connected": False}


FAKE = ProtocolSpec(
    name="fake",
    description="a fake protocol for the kit's own tests",
    config_model=FakeConfig,
    adapters={"client": f"{__name__}:FakeAdapter", "server": f"{__name__}:FakeAdapter"},
    route_models={"server": FakeRoute},
)


class FakeClient(ProtocolConformance):
    spec = FAKE
    role = "client"
    options: ClassVar[dict[str, Any]] = {}

    def config(self, peer: None) -> dict[str, Any]:
        return {"points": [{"name": "t"}], **self.options}


def run_check(cls: type[ProtocolConformance], check: str, tmp_path: Path) -> None:
    kit = cls()
    kit.tmp_path = tmp_path
    getattr(kit, check)()


def test_kit_fails_an_adapter_that_blocks_the_event_loop_naming_the_call(tmp_path: Path) -> None:
    class Blocking(FakeClient):
        options: ClassVar[dict[str, Any]] = {"block": 0.8}

    with pytest.raises(pytest.fail.Exception) as failed:
        run_check(Blocking, "test_enter_and_run_with_the_peer_down", tmp_path)
    message = str(failed.value)
    assert "the event loop was blocked for 0." in message, message
    assert "(max_loop_block = 0.5 s)" in message
    line = next(
        i
        for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if "time.sleep(self.config.block)" in text
    )
    assert f"in test_conformance.py:{line} run(): time.sleep(self.config.block)" in message
    assert "asyncio.to_thread" in message
    run_check(FakeClient, "test_enter_and_run_with_the_peer_down", tmp_path)  # no block: passes


def test_kit_allows_a_block_below_max_loop_block(tmp_path: Path) -> None:
    class Slow(FakeClient):
        options: ClassVar[dict[str, Any]] = {"block": 0.8}
        max_loop_block = 3.0

    run_check(Slow, "test_enter_and_run_with_the_peer_down", tmp_path)


class FakeServer(ProtocolConformance):
    spec = FAKE
    role = "server"
    source = False
    has_peer = False
    options: ClassVar[dict[str, Any]] = {}

    def config(self, peer: None) -> dict[str, Any]:
        return dict(self.options)


def test_kit_attaches_a_target_to_a_bridge_before_send(tmp_path: Path) -> None:
    run_check(FakeServer, "test_target_accepts_telemetry", tmp_path)  # send() needs attach()

    class BrokenAttach(FakeServer):
        options: ClassVar[dict[str, Any]] = {"attach": "broken"}

    with pytest.raises(AttributeError, match="'str' object has no attribute 'name'"):
        run_check(BrokenAttach, "test_target_accepts_telemetry", tmp_path)


def test_kit_checks_writes_when_the_example_has_rw_points() -> None:
    class Peered(FakeClient):
        @contextlib.asynccontextmanager
        async def peer(self) -> AsyncIterator[None]:
            yield None

    class WithRw(Peered):
        def config(self, peer: None) -> dict[str, Any]:
            return {"points": [{"name": "t"}, {"name": "sp", "access": "rw"}]}

    class OptedOut(WithRw):
        writes = False

    assert WithRw.writes is None and callable(WithRw.test_write_round_trip)
    assert Peered.test_write_round_trip is None  # no rw point: nothing to check
    assert OptedOut.test_write_round_trip is None  # declared: as before
    assert callable(TestModbusClient.test_write_round_trip)


def test_a_check_set_to_none_by_the_class_itself_stays_out() -> None:
    # pytest's way to leave a check out; the kit's own re-enabling must not bring it back
    class NoPromptStop(FakeClient):
        @contextlib.asynccontextmanager
        async def peer(self) -> AsyncIterator[None]:
            yield None

        test_run_stops_promptly_with_the_peer_up = None  # type: ignore[assignment]

    assert NoPromptStop.test_run_stops_promptly_with_the_peer_up is None


def test_an_undeclared_write_check_without_rw_points_is_not_a_failure(tmp_path: Path) -> None:
    # The example's points are known only once a fixture has run: the check is kept, and
    # finds nothing to write, which writes = None (not declared) does not count as a failure.
    class LateConfig(FakeClient):
        fixture_ran = False

        @contextlib.asynccontextmanager
        async def peer(self) -> AsyncIterator[None]:
            yield None

        def config(self, peer: None) -> dict[str, Any]:
            if not type(self).fixture_ran:
                raise RuntimeError("set up by a fixture")
            return {"points": [{"name": "t"}]}

    assert callable(LateConfig.test_write_round_trip)
    LateConfig.fixture_ran = True
    run_check(LateConfig, "test_write_round_trip", tmp_path)
