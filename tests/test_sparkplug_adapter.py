"""The Sparkplug edge node adapter: the plugin conformance kit with a real mosquitto, `gateway
validate` on its ids, and a clear start error for a missing TLS file."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, started_mosquitto

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.testing import ProtocolConformance
from protocols.sparkplug import SPEC as SPARKPLUG
from protocols.sparkplug.config import SparkplugEndpoint
from protocols.sparkplug.node import SparkplugAdapter, SparkplugError


class TestSparkplugEdgeNode(ProtocolConformance):
    spec = SPARKPLUG
    role = "client"
    source = False  # a target: its bridged devices are its Sparkplug devices

    def config(self, peer: MosquittoBroker | None) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": peer.port if peer is not None else self.closed_port(),
            "group": "conformance",
            "node": "edge",
            "reconnect": {"initial": 0.05, "max": 0.3},
        }

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[MosquittoBroker]:
        with started_mosquitto(self.tmp_path) as broker:
            yield broker


def validate(
    tmp_path: Path, endpoint: str, device: str = "plc"
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"""
gateway: {{name: gw}}
devices:
  {device}:
    protocol: modbus
    host: 127.0.0.1
    port: 5020
    points:
      - {{name: t, table: holding, address: 0}}
endpoints:
  ignition:
    protocol: sparkplug
    host: 127.0.0.1
{endpoint}
bridges:
  - {{name: up, from: {device}, to: ignition}}
"""
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_accepts_a_good_endpoint(tmp_path: Path) -> None:
    done = validate(tmp_path, "    group: plant1\n    node: edge-01\n    primary_host: scada")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("endpoint", "found"),
    [
        ("    node: edge-01", "group"),
        ("    group: plant/1", "plant/1"),
        ("    group: plant1\n    node: 'edge+1'", "edge+1"),
        ("    group: '#'", "'#'"),
        ("    group: plant1\n    primary_host: scada/main", "scada/main"),
    ],
)
def test_validate_refuses_bad_ids_and_a_missing_group(
    tmp_path: Path, endpoint: str, found: str
) -> None:
    done = validate(tmp_path, endpoint)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "endpoints.ignition" in out and found in out
    assert "Traceback" not in out


def test_route_check_refuses_a_device_name_that_is_no_sparkplug_id() -> None:
    # Device names are letters, digits, '_', '-', '.' already; the route check stands guard
    # for the ids Sparkplug forbids should that ever widen.
    from gateway.types import PointSpec
    from protocols.sparkplug.config import SparkplugRoute

    problems = SparkplugRoute().check_carried(
        None, {"ok": [], "a+b": [PointSpec("a+b/t", "t", "int16")]}, {}
    )
    assert [p.path for p in problems] == [("from",)] and "a+b" in problems[0].found


async def test_a_missing_tls_file_is_a_clear_start_error(tmp_path: Path) -> None:
    config = SparkplugEndpoint.model_validate(
        {"host": HOST, "group": "g", "tls": {"ca_file": str(tmp_path / "nope.pem")}}
    )
    adapter = SparkplugAdapter("ignition", config, AdapterContext(Bus(), "gw"))
    with pytest.raises(SparkplugError, match=r"tls.ca_file .*nope.pem: no such file"):
        async with adapter:
            pass


async def test_a_gateway_name_that_is_no_node_id_is_a_clear_start_error() -> None:
    config = SparkplugEndpoint.model_validate({"host": HOST, "group": "g"})
    adapter = SparkplugAdapter("ignition", config, AdapterContext(Bus(), "a/b"))
    with pytest.raises(SparkplugError, match="edge node id"):
        async with adapter:
            pass


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (0, None),
        (
            134,
            "b:1 refused the connection: Bad user name or password (check username and password)",
        ),
        (135, "b:1 refused the connection: Not authorized (check username and password)"),
        (136, "b:1 refused the connection: Server unavailable"),
    ],
)
def test_a_refused_connack_says_why_for_both_mqtt_adapters(code: int, said: str | None) -> None:
    # One function for the MQTT endpoint and the Sparkplug node (the node's own copy missed
    # the hint for "Bad user name or password").
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from protocols.mqtt.link import connack_refusal

    assert connack_refusal("b:1", ReasonCode(PacketTypes.CONNACK, identifier=code)) == said
