"""Every built-in protocol passes the plugin conformance kit (gateway.testing), with real peers:
the Modbus simulator, mosquitto, node-opcua and libcoap's coap-server; the server roles (OPC UA,
Modbus, CoAP) have no peer to lose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from conftest import HOST, MosquittoBroker, find_binary, free_port, wait_for
from test_coap_client import coap_put, coap_server
from test_opcua_client import NODES, NodeOpcuaServer

from gateway.adapter import Adapter
from gateway.testing import ProtocolConformance
from gateway.types import PointSpec, Value
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
        broker = MosquittoBroker(find_binary("mosquitto", "/usr/sbin/mosquitto"), self.tmp_path)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()

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
