"""Types learned after the start: an OPC UA device point without ``type:`` is float64 until the
client reads the node's DataType. The gateway's own servers must follow the learned type, not
keep the float64 they were built with: libcoap's coap-client and node-opcua's client (peers we
did not write) write a Boolean and a String through them to the node-opcua device."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from conftest import HOST, free_port, wait_for
from test_coap_server import coap_client
from test_opcua_client import NODES, NodeOpcuaServer, peer, shared_pki  # noqa: F401 (fixtures)
from test_opcua_server import SECRET_HASH, one, run_node_client, running_gateway

from gateway.runtime import Gateway
from protocols.coap.server import CoapServerAdapter
from protocols.opcua.server import OpcuaServerAdapter


def config(peer_url: str, coap_port: int, opcua_port: int, pki: Path) -> str:
    """The audit's repro: two device points without ``type:``, both servers bridged."""
    return f"""
gateway: {{name: oc}}
devices:
  boiler:
    protocol: opcua
    url: {peer_url}
    security: {{policy: None, mode: None}}
    points:
      - {{name: en, node_id: "{NODES["Enabled"]}", access: rw}}
      - {{name: label, node_id: "{NODES["Label"]}", access: rw}}
  tank:  # numbers only: nothing but the declaration says Level is an Int16
    protocol: opcua
    url: {peer_url}
    security: {{policy: None, mode: None}}
    points: [{{name: level, node_id: "{NODES["Level"]}", access: rw}}]
endpoints:
  coap: {{protocol: coap, role: server, host: {HOST}, port: {coap_port}, write_timeout: 5}}
  opcua:
    protocol: opcua
    role: server
    host: {HOST}
    port: {opcua_port}
    write_timeout: 5
    anonymous: true
    users: [{{username: op, password_hash: '{SECRET_HASH}'}}]
    security: {{allow_none: true, pki_dir: {pki}}}
bridges:
  - {{name: c, from: [boiler, tank], to: coap}}
  - {{name: o, from: [boiler, tank], to: opcua}}
"""


@dataclass
class Boiler:
    gateway: Gateway
    peer: NodeOpcuaServer
    coap_port: int

    @property
    def coap(self) -> CoapServerAdapter:
        adapter = self.gateway.adapters["coap"]
        assert isinstance(adapter, CoapServerAdapter)
        return adapter

    @property
    def opcua(self) -> OpcuaServerAdapter:
        adapter = self.gateway.adapters["opcua"]
        assert isinstance(adapter, OpcuaServerAdapter)
        return adapter

    def node_id(self, point: str, device: str = "boiler") -> str:
        return f"ns={self.opcua.namespace_index};s={device}.{point}"

    async def coap_client(self, *args: str, path: str) -> tuple[int, str]:
        """Run coap-client; its exit status and output (stdout and stderr)."""
        proc = await asyncio.create_subprocess_exec(
            coap_client(),
            "-B",
            "5",
            *args,
            f"coap://{HOST}:{self.coap_port}{path}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        return proc.returncode or 0, out.decode(errors="replace").strip()


@contextlib.asynccontextmanager
async def boiler(device: NodeOpcuaServer, tmp_path: Path) -> AsyncIterator[Boiler]:
    coap_client()
    coap_port = free_port()
    text = config(device.url, coap_port, free_port(), tmp_path / "pki")
    async with running_gateway(text) as gateway:
        b = Boiler(gateway, device, coap_port)
        # the first values reach both servers only after the client learned the DataTypes
        await wait_for(
            lambda: all(r.sample for r in b.coap._devices["boiler"].points.values()),
            timeout=15,
            message="first values on the CoAP server",
        )
        await wait_for(lambda: b.opcua.updates >= 2, timeout=15, message="first OPC UA values")
        yield b


async def test_coap_put_parses_by_the_learned_type(
    peer: NodeOpcuaServer,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    async with boiler(peer, tmp_path) as b:
        assert await b.coap_client("-m", "put", "-e", "true", path="/boiler/en") == (0, "")
        assert await b.coap_client("-m", "put", "-e", "hello", path="/boiler/label") == (0, "")
        assert await peer.get("Enabled") is True
        assert await peer.get("Label") == "hello"
        assert ("Enabled", True) in peer.written and ("Label", "hello") in peer.written


async def test_coap_well_known_core_lists_the_learned_types(
    peer: NodeOpcuaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with boiler(peer, tmp_path) as b:
        _, out = await b.coap_client(path="/.well-known/core")
        links = {link.split(">")[0].lstrip("<"): link for link in out.split(",")}
        assert 'rt="protocol-brain.point.bool"' in links["/boiler/en"], out
        assert 'rt="protocol-brain.point.string"' in links["/boiler/label"], out
        assert 'rt="protocol-brain.point.int16"' in links["/tank/level"], out  # still a number


async def test_node_opcua_client_reads_and_writes_the_learned_types(
    peer: NodeOpcuaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with boiler(peer, tmp_path) as b:
        plan = {
            "pki": str(tmp_path / "node-pki"),
            "url": b.opcua.endpoint_url,
            "user": {"username": "op", "password": "secret"},
            "read": [b.node_id("label"), b.node_id("en"), b.node_id("level", "tank")],
            "write": [
                {"nodeId": b.node_id("en"), "dataType": "Boolean", "value": True},
                {"nodeId": b.node_id("label"), "dataType": "String", "value": "hello"},
            ],
        }
        code, lines = await run_node_client(plan)
        assert code == 0, lines
        label, en, level = one(lines, "read")
        assert (label["value"], label["dataType"], label["status"]) == (
            "boiler one",
            "String",
            "Good",
        )
        assert label["dataTypeId"] == "ns=0;i=12", label  # String
        assert (en["value"], en["dataType"], en["status"]) == (False, "Boolean", "Good")
        assert en["dataTypeId"] == "ns=0;i=1", en  # Boolean
        # an integer fits a Double too: only the declaration can tell the server
        assert (level["value"], level["dataTypeId"], level["status"]) == (10, "ns=0;i=4", "Good")
        assert [w["status"] for w in one(lines, "write")] == ["Good", "Good"]
        assert await peer.get("Enabled") is True
        assert await peer.get("Label") == "hello"
