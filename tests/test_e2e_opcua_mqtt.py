"""OPC UA -> MQTT end to end, as examples/opcua_to_mqtt.yaml does it: a node-opcua server (a
peer we did not write), the real `gateway run` process with its OPC UA client, a real mosquitto,
and the values in a unified-namespace topic tree."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from conftest import MosquittoBroker, wait_for
from test_e2e_modbus_mqtt import Collector
from test_opcua_client import NODES, NodeOpcuaServer, peer, shared_pki  # noqa: F401 (fixtures)

GATEWAY = [sys.executable, "-m", "gateway"]


def config(server: NodeOpcuaServer, broker: MosquittoBroker, pki: Path) -> str:
    return f"""
gateway: {{name: edge-7}}
devices:
  filler:
    protocol: opcua
    url: {server.url}
    security: {{policy: "None", mode: "None", pki_dir: "{pki}"}}
    reconnect: {{initial: 0.1, max: 0.5}}
    subscription: {{publishing_interval: 0.1}}
    points:
      - {{name: temp, node_id: "{NODES["Temp"]}", unit: degC, sampling_interval: 0}}
      - {{name: counter, browse_path: "1:Plant/1:Boiler/1:Counter"}}
endpoints:
  broker: {{protocol: mqtt, host: {broker.host}, port: {broker.port}}}
bridges:
  - name: uns
    from: filler
    to: broker
    units: {{temp: degF}}
    topic: "acme/dortmund/bottling/line-2/{{device}}/{{point}}"
    payload: sample
    retain: true
"""


async def test_opcua_values_reach_the_unified_namespace(
    peer: NodeOpcuaServer,  # noqa: F811 (the fixture imported above)
    mosquitto: MosquittoBroker,
    tmp_path: Path,
) -> None:
    mqtt = Collector(mosquitto, "acme/#")
    path = tmp_path / "gw.yaml"
    path.write_text(config(peer, mosquitto, tmp_path / "pki"))
    proc = await asyncio.create_subprocess_exec(*GATEWAY, "run", str(path))
    try:
        await peer.set("Temp", 21.5)
        topic = "acme/dortmund/bottling/line-2/filler/temp"
        await wait_for(
            lambda: (mqtt.last(topic) or {}).get("value") == pytest.approx(70.7), timeout=20
        )
        sample = mqtt.last(topic)
        assert sample["unit"] == "degF" and sample["quality"] == "good"
        counter = await wait_for(
            lambda: mqtt.last("acme/dortmund/bottling/line-2/filler/counter"), timeout=10
        )
        assert isinstance(counter["value"], int)

        await peer.set("Temp", 30.0, status="UncertainLastUsableValue")
        await wait_for(lambda: (mqtt.last(topic) or {}).get("quality") == "uncertain", timeout=10)
        assert mqtt.last(topic)["value"] == pytest.approx(86.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        mqtt.close()
