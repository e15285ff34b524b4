"""Any to any: a value that enters through one protocol comes out of the other three with the
same value, the same unit conversion and the same timestamp.

One gateway, four sources fed by peers (the Modbus simulator, a node-opcua server, libcoap's
coap-server, mosquitto) and four targets read by clients (an OPC UA client, a CoAP client, a
Modbus client, an MQTT subscriber). Every bridge converts t from degC to degF.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, find_binary, free_port, wait_for
from test_coap_client import coap_server
from test_e2e_modbus_mqtt import Collector
from test_opcua_client import NODES, NodeOpcuaServer, peer, shared_pki  # noqa: F401 (fixtures)

from gateway.config import load_config_text
from gateway.runtime import Gateway
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator

SOURCES = {"mb": "modbus", "ua": "opcua", "co": "coap", "mq": "mqtt"}
MODBUS_ADDRESS = {"ua": 0, "co": 2, "mq": 4}  # float32 each in the Modbus server's map


def config(
    device: SimulatedDevice,
    opcua: NodeOpcuaServer,
    coap_port: int,
    broker: MosquittoBroker,
    ports: dict[str, int],
    pki: Path,
) -> str:
    modbus_map = ", ".join(
        f"{{point: {src}/t, address: {addr}, type: float32}}"
        for src, addr in MODBUS_ADDRESS.items()
    )
    return f"""
gateway: {{name: any, status_interval: 0}}
devices:
  mb:
    protocol: modbus
    host: {HOST}
    port: {device.port}
    poll_groups: {{default: {{interval: 0.1}}}}
    points: [{{name: t, address: 0, type: int16, scale: 0.1, unit: degC}}]
  ua:
    protocol: opcua
    url: {opcua.url}
    security: {{policy: "None", mode: "None", pki_dir: "{pki}/ua"}}
    subscription: {{publishing_interval: 0.05}}
    points: [{{name: t, node_id: "{NODES["Temp"]}", unit: degC, sampling_interval: 0}}]
  co:
    protocol: coap
    url: coap://{HOST}:{coap_port}
    points: [{{name: t, path: t, poll: 0.1, format: senml+json, unit: degC}}]
  mq:
    protocol: mqtt
    host: {broker.host}
    port: {broker.port}
    client_id: any-in
    points: [{{name: t, topic: in/t, unit: degC}}]
endpoints:
  uas:
    protocol: opcua
    role: server
    host: {HOST}
    port: {ports["opcua"]}
    security: {{allow_none: true, pki_dir: "{pki}/uas"}}
    anonymous: true
  cos:
    protocol: coap
    role: server
    host: {HOST}
    port: {ports["coap"]}
  mbs:
    protocol: modbus
    role: server
    host: {HOST}
    port: {ports["modbus"]}
  broker:
    protocol: mqtt
    host: {broker.host}
    port: {broker.port}
    client_id: any-out
bridges:
  - {{name: to-opcua, from: [mb, co, mq], to: uas, units: {{t: degF}}}}
  - {{name: to-coap, from: [mb, ua, mq], to: cos, units: {{t: degF}}}}
  - {{name: to-modbus, from: [ua, co, mq], to: mbs, units: {{t: degF}}, map: [{modbus_map}]}}
  - {{name: to-mqtt, from: [mb, ua, co], to: broker, units: {{t: degF}},
     topic: "out/{{device}}/{{point}}", payload: sample}}
"""


class Readers:
    """The four clients that read the targets; each returns (value, source time or None)."""

    def __init__(self, ports: dict[str, int], mqtt: Collector) -> None:
        self.ports = ports
        self.mqtt = mqtt

    async def opcua(self, source: str) -> tuple[Any, float | None]:
        from asyncua import Client

        async with Client(f"opc.tcp://{HOST}:{self.ports['opcua']}/protocol-brain") as c:
            ns = await c.get_namespace_index("urn:protocol-brain:any")
            dv = await c.get_node(f"ns={ns};s={source}.t").read_data_value(
                raise_on_bad_status=False
            )
        if not dv.StatusCode.is_good():
            return None, None
        return dv.Value.Value, dv.SourceTimestamp.replace(tzinfo=UTC).timestamp()

    async def coap(self, source: str) -> tuple[Any, float | None]:
        from aiocoap import GET, Context, Message

        ctx = await Context.create_client_context()
        try:
            request = Message(code=GET, uri=f"coap://{HOST}:{self.ports['coap']}/{source}/t")
            request.opt.accept = 110
            response = await asyncio.wait_for(ctx.request(request).response, 5)
        finally:
            await ctx.shutdown()
        if not response.code.is_successful():
            return None, None
        (record,) = json.loads(response.payload)
        return record.get("v"), record.get("bt", 0) + record.get("t", 0)

    async def modbus(self, source: str) -> tuple[Any, float | None]:
        from pymodbus.client import AsyncModbusTcpClient

        client = AsyncModbusTcpClient(HOST, port=self.ports["modbus"], timeout=2, retries=0)
        await client.connect()
        try:
            rr = await client.read_holding_registers(MODBUS_ADDRESS[source], count=2, device_id=1)
        finally:
            client.close()
        if rr.isError():
            return None, None
        return struct.unpack(">f", struct.pack(">HH", *rr.registers))[0], None

    async def mqtt_out(self, source: str) -> tuple[Any, float | None]:
        sample = self.mqtt.last(f"out/{source}/t")
        if not sample or sample.get("quality") != "good":
            return None, None
        ts = datetime.fromisoformat(sample["ts"].replace("Z", "+00:00")).timestamp()
        return sample["value"], ts


@pytest.fixture
async def plant(
    simulator: Simulator,
    peer: NodeOpcuaServer,  # noqa: F811 (the fixture imported above)
    mosquitto: MosquittoBroker,
    tmp_path: Path,
) -> AsyncIterator[dict[str, Any]]:
    device = await simulator.add_device()
    coap_port = free_port()
    ports = {"opcua": free_port(), "coap": free_port(), "modbus": free_port()}
    mqtt = Collector(mosquitto, "out/#")
    async with coap_server(coap_port):
        await coap_put_senml(coap_port, 0.0, time.time())
        text = config(device, peer, coap_port, mosquitto, ports, tmp_path)
        gateway = Gateway(load_config_text(text, "any.yaml"))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.wait_for(gateway.started.wait(), 30)
        try:
            yield {
                "device": device,
                "peer": peer,
                "coap_port": coap_port,
                "broker": mosquitto,
                "readers": Readers(ports, mqtt),
            }
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            mqtt.close()


async def coap_put_senml(port: int, value: float, ts: float) -> None:
    client = find_binary("coap-client-openssl", "/usr/bin/coap-client-openssl")
    payload = json.dumps([{"n": "t", "v": value, "u": "Cel", "t": ts}])
    proc = await asyncio.create_subprocess_exec(
        client,
        "-m",
        "put",
        "-e",
        payload,
        "-t",
        "110",
        f"coap://{HOST}:{port}/t",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def enter(plant: dict[str, Any], source: str, celsius: float, ts: float) -> None:
    """Put ``celsius`` into the gateway through ``source``'s protocol, stamped ``ts`` if the
    protocol carries a timestamp (Modbus does not: the gateway stamps its poll)."""
    if source == "mb":
        plant["device"].set_value("holding", 0, round(celsius * 10), DataType.INT16)
    elif source == "ua":
        await plant["peer"].set("Temp", celsius, ts=int(ts * 1000))
    elif source == "co":
        await coap_put_senml(plant["coap_port"], celsius, ts)
    else:
        broker: MosquittoBroker = plant["broker"]
        pub = find_binary("mosquitto_pub", "/usr/bin/mosquitto_pub")
        payload = json.dumps({"value": celsius, "ts": ts})
        proc = await asyncio.create_subprocess_exec(
            # retained: reaches the gateway even if its subscription is a moment late
            pub,
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            "in/t",
            "-m",
            payload,
            "-r",
        )
        assert await proc.wait() == 0


@pytest.mark.parametrize("source", list(SOURCES))
async def test_a_value_entering_anywhere_comes_out_everywhere_else(
    plant: dict[str, Any], source: str
) -> None:
    celsius = 21.5 if source != "mq" else 37.5
    fahrenheit = celsius * 9 / 5 + 32
    ts = round(time.time() - 3.0, 3)  # in the past, so a gateway-made time would differ
    await enter(plant, source, celsius, ts)
    readers: Readers = plant["readers"]
    outputs = {
        "opcua": readers.opcua,
        "coap": readers.coap,
        "modbus": readers.modbus,
        "mqtt": readers.mqtt_out,
    }
    outputs.pop(SOURCES[source])
    seen: dict[str, tuple[Any, float | None]] = {}
    for protocol, read in outputs.items():

        async def arrived(read: Any = read, protocol: str = protocol) -> bool:
            try:
                value, when = await read(source)
            except (OSError, TimeoutError) as exc:  # not serving yet
                seen[protocol] = (None, None)
                print(protocol, "not yet:", exc)
                return False
            seen[protocol] = (value, when)
            return value is not None and abs(value - fahrenheit) < 1e-3

        await wait_for(arrived, timeout=15, message=f"{source} -> {protocol} = {fahrenheit}")
    times = {p: when for p, (_, when) in seen.items() if when is not None}
    assert times, "at least one output protocol carries a timestamp"
    if source != "mb":  # the entering protocol's own timestamp travels through
        for protocol, when in times.items():
            assert when == pytest.approx(ts, abs=0.002), protocol
    else:  # Modbus has none: every output shows the same gateway poll time
        assert max(times.values()) - min(times.values()) < 0.002
