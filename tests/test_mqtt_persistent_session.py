"""MQTT persistent sessions (``session: {persistent: true}``) against a real mosquitto.

mosquitto runs with ``persistence false``: it keeps sessions in memory while it runs (what a
gateway restart needs) and loses them when it restarts. The cloud is ``mosquitto_pub``; the
gateway is a ``gateway run`` subprocess (stopped with SIGTERM or SIGKILL, as a service manager
or a power cut would) shadowing a device on the Modbus simulator, or the in-process adapter.

That something did not arrive is shown by order, not by waiting: the broker sends what it
queued for a session right after the CONNACK, before anything published later, and the
gateway handles messages in the order they come; so once a message published after the
restart has been handled, a queued one would have been handled before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, modbus_device_yaml, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_e2e_modbus_mqtt import Collector
from test_shadow_service import mosquitto_pub

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.config import load_config_text
from gateway.config.errors import ConfigError
from gateway.types import Quality
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint
from protocols.sparkplug.config import SparkplugEndpoint

GATEWAY = [sys.executable, "-m", "gateway"]
SHADOW = "site/things/pump/shadow"
UPDATE = {"state": {"desired": {"speed": 42}}, "clientToken": "while-down"}


# --- a gateway run subprocess shadowing pump on the simulator -----------------------------------


def gateway_yaml(
    path: Path, device: SimulatedDevice, broker: MosquittoBroker, version: str, session: str
) -> Path:
    path.write_text(f"""
gateway: {{name: persist, status_interval: 0.2}}
devices:
{modbus_device_yaml(device.port, poll_groups="{fast: {interval: 0.05}}")}
    points:
      - {{name: speed, table: holding, address: 10, type: int16, access: rw, low: 0, high: 100,
         poll: fast}}
endpoints:
  broker: {{protocol: mqtt, version: "{version}", host: {HOST}, port: {broker.port},
            reconnect: {{initial: 0.05, max: 0.2}}{session}}}
shadow:
  path: {path.parent / "shadow.db"}
  poll_interval: 0.1
  mqtt: {{endpoint: broker, prefix: "site/things"}}
""")
    return path


class GatewayProcess:
    """``gateway run`` on a config, its log in a file (read while it runs)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> GatewayProcess:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *GATEWAY, "run", str(self.config), stdout=out, stderr=out
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, how: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(how)
        code = await asyncio.wait_for(self.proc.wait(), 20)
        assert code == (0 if how == signal.SIGTERM else -how), self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        """The MQTT endpoint's status in the status file (`gateway status` reads it)."""
        path = Path(os.environ["PROTOCOL_BRAIN_STATE_DIR"]) / "status" / "persist.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        found: dict[str, Any] = doc.get("status", {}).get("adapters", {}).get("broker", {})
        return found


async def shadow_get(broker: MosquittoBroker, collector: Collector) -> dict[str, Any]:
    """The shadow of pump as a get answers it, once the gateway answers (asked again each
    second until then: a get sent before its SUBSCRIBE is lost)."""
    for _ in range(30):
        token = uuid.uuid4().hex
        await mosquitto_pub(broker, f"{SHADOW}/get", {"clientToken": token})
        for _ in range(50):
            for doc in collector.on(f"{SHADOW}/get/accepted"):
                if doc.get("clientToken") == token:
                    return dict(doc)
            await asyncio.sleep(0.02)
    pytest.fail("the gateway never answered a shadow get")


def accepted(collector: Collector, token: str) -> int:
    return sum(d.get("clientToken") == token for d in collector.on(f"{SHADOW}/update/accepted"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_a_shadow_update_sent_while_the_gateway_is_down_is_written_after_its_restart(
    simulator: Simulator,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    version: str,
    how: signal.Signals,
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    collector = Collector(mosquitto, "site/things/#")
    session = ", session: {persistent: true}"
    config = gateway_yaml(tmp_path / "gw.yaml", device, mosquitto, version, session)
    try:
        async with GatewayProcess(config, tmp_path / "first.log") as first:
            await shadow_get(mosquitto, collector)  # up and subscribed
            await first.stop(how)
        # The cloud sends a desired change while the gateway is away; QoS 1 redelivery may
        # bring a message twice, so it comes twice here: both are harmless.
        await mosquitto_pub(mosquitto, f"{SHADOW}/update", UPDATE)
        await mosquitto_pub(mosquitto, f"{SHADOW}/update", UPDATE)
        assert device.get_registers("holding", 10) == [5]
        async with GatewayProcess(config, tmp_path / "second.log") as second:
            await wait_for(
                lambda: device.get_registers("holding", 10) == [42], 30, message="written"
            )

            async def settled() -> dict[str, Any] | None:
                doc = await shadow_get(mosquitto, collector)
                return doc if doc["state"].get("reported", {}).get("speed") == 42 else None

            doc = await wait_for(settled, 30, interval=0.1, message="reported 42")
            assert doc["state"]["desired"] == {"speed": 42}
            assert "delta" not in doc["state"]
            assert accepted(collector, "while-down") == 2
            status = await wait_for(lambda: second.status().get("session_present") is not None)
            assert second.status()["session_present"] is True, status
            assert second.status()["sessions_lost"] == 0
            await second.stop(signal.SIGTERM)
        assert f"(MQTT {version}, session present)" in second.text()
        assert "Traceback" not in first.text() + second.text()
    finally:
        collector.close()


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_without_the_option_an_update_sent_while_down_is_lost(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path, version: str
) -> None:
    """The default (a clean session): what proves that the option is what delivers it."""
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    collector = Collector(mosquitto, "site/things/#")
    config = gateway_yaml(tmp_path / "gw.yaml", device, mosquitto, version, "")
    try:
        async with GatewayProcess(config, tmp_path / "first.log") as first:
            await shadow_get(mosquitto, collector)
            await first.stop(signal.SIGTERM)
        await mosquitto_pub(mosquitto, f"{SHADOW}/update", UPDATE)
        async with GatewayProcess(config, tmp_path / "second.log") as second:
            doc = await shadow_get(mosquitto, collector)  # handled after anything queued
            assert accepted(collector, "while-down") == 0
            assert doc["state"].get("desired", {}) == {}
            assert device.get_registers("holding", 10) == [5]
            await wait_for(lambda: second.status().get("session_present") is False)
            await second.stop(signal.SIGTERM)
        assert "session present" not in second.text()
        assert "has no session" not in second.text()  # a clean session is not missed
    finally:
        collector.close()


# --- the in-process adapter: MQTT-sourced points ------------------------------------------------


class Source:
    """The endpoint ``src`` (point level on tank/level) and a subscription to its readings on
    a bus that outlives its adapters (one per `running`: a restart)."""

    def __init__(self, broker: MosquittoBroker, version: str, **session: Any) -> None:
        self.broker = broker
        self.config = MqttEndpoint.model_validate(
            {
                "host": HOST,
                "port": broker.port,
                "version": version,
                "client_id": f"persist-{uuid.uuid4().hex[:8]}",
                "reconnect": {"initial": 0.05, "max": 0.2},
                "outbox": None,
                "points": [{"name": "level", "topic": "tank/level"}],
                "session": session,
            }
        )
        self.bus = Bus()
        self.sub = self.bus.subscribe("telemetry/src", maxsize=100)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MqttAdapter]:
        """An adapter connected, subscribed and serving; closed (a clean stop) after."""
        adapter = MqttAdapter("src", self.config, AdapterContext(self.bus, "gw"))
        async with adapter:
            task = asyncio.create_task(adapter.run())
            try:
                await asyncio.wait_for(adapter.wait_connected(), 20)
                yield adapter
            finally:
                await adapter.close()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def pub(self, value: float) -> None:
        await mosquitto_pub(self.broker, "tank/level", str(value))

    async def levels(self, until: float) -> list[float]:
        """The good readings of point level, up to and including ``until``."""
        seen: list[float] = []
        async with asyncio.timeout(20):
            while not seen or seen[-1] != until:
                message = await self.sub.get()
                seen += [s.value for s in message.samples if s.quality == Quality.GOOD]  # type: ignore[misc]
        return seen


@pytest.fixture(autouse=True)
def _info_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "protocols.mqtt")


@pytest.fixture(params=["3.1.1", "5"])
def src(mosquitto: MosquittoBroker, request: pytest.FixtureRequest) -> Iterator[Source]:
    """`Source` with a persistent session, in each MQTT version."""
    found = Source(mosquitto, request.param, persistent=True)
    with found.sub:
        yield found


async def test_a_reading_published_while_away_fills_the_point_after_a_restart(
    src: Source, caplog: pytest.LogCaptureFixture
) -> None:
    async with src.running() as adapter:
        assert adapter.session_present is False  # its first connection
        assert "has no session for" in caplog.text and "first connection" in caplog.text
        # a connection lost and made again finds its session: no loss to count
        adapter._abort_connection("cut for the test")
        await wait_for(lambda: adapter.reconnects == 1 and adapter.connected)
        assert adapter.session_present is True and adapter.sessions_lost == 0
        await src.pub(1.0)
        assert await src.levels(1.0) == [1.0]
    await src.pub(2.5)  # while the gateway is away
    async with src.running() as adapter:
        await src.pub(3.0)
        assert await src.levels(3.0) == [2.5, 3.0]
        assert adapter.status()["session_present"] is True


async def test_past_the_session_expiry_nothing_queued_arrives_and_the_gateway_starts_afresh(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    short = Source(mosquitto, "5", persistent=True, expiry=1)
    with short.sub:
        async with short.running():
            pass
        expiring = f"Expiring client {short.config.client_id} due to timeout"
        await wait_for(lambda: expiring in mosquitto.log.read_text(), 10, message=expiring)
        await short.pub(2.5)  # no session to keep it any more
        caplog.clear()
        async with short.running() as adapter:
            assert adapter.status()["session_present"] is False
            assert "has no session for" in caplog.text and "session expiry 1 s" in caplog.text
            await short.pub(3.0)
            assert await short.levels(3.0) == [3.0]


async def test_a_broker_restarted_without_its_sessions_is_said_and_subscribed_afresh(
    src: Source, caplog: pytest.LogCaptureFixture
) -> None:
    async with src.running() as adapter:
        src.broker.stop()
        await wait_for(lambda: not adapter.connected)
        src.broker.start()
        await wait_for(lambda: adapter.sessions_lost == 1, 20)
        await asyncio.wait_for(adapter.wait_connected(), 20)  # subscribed again
        assert adapter.status()["session_present"] is False
        assert adapter.status()["sessions_lost"] == 1
        said = [r for r in caplog.records if "has no session for" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.INFO, logging.WARNING]  # first, lost
        assert "any more" in said[1].getMessage()
        await src.pub(4.0)
        assert await src.levels(4.0) == [4.0]


async def test_the_failback_probe_takes_a_clean_session_and_leaves_ours_alone(src: Source) -> None:
    port = src.broker.port
    async with src.running() as adapter:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, adapter._probe, HOST, port) is None
        assert adapter.connected and adapter.reconnects == 0
    # what the probe left: a client of its id asking to resume finds nothing
    v5 = src.config.v5
    peer = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"{src.config.client_id}-probe",
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        **({} if v5 else {"clean_session": False}),
    )
    flags: list[bool] = []
    peer.on_connect = lambda _c, _u, f, _rc, _p: flags.append(f.session_present)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 60
    options: dict[str, Any] = {"clean_start": False, "properties": props} if v5 else {}
    peer.connect(HOST, port, **options)
    peer.loop_start()
    try:
        await wait_for(lambda: flags, message="the peer's CONNACK")
    finally:
        peer.disconnect()
        peer.loop_stop()
    assert flags == [False]


# --- validate ----------------------------------------------------------------------------------


def endpoint_yaml(lines: str) -> str:
    return f"endpoints:\n  up:\n    protocol: mqtt\n    host: {HOST}\n{lines}"


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (
            "    session: {persistent: true, expiry: 60}\n",
            'endpoints.up.session.expiry: found 60 with MQTT 3.1.1; expected version: "5"',
        ),
        (
            '    version: "5"\n    session: {expiry: 60}\n',
            "endpoints.up.session.expiry: found 60 with persistent false; expected persistent:"
            " true, or no expiry",
        ),
        (
            '    version: "5"\n    session: {persistent: true, expiry: 0}\n',
            "endpoints.up.session.expiry: found 0",
        ),
    ],
)
def test_validate_refuses_an_expiry_it_cannot_send(lines: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(endpoint_yaml(lines))
    assert error in str(caught.value)


def test_a_sparkplug_endpoint_keeps_clean_sessions() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(f"""
endpoints:
  node: {{protocol: sparkplug, host: {HOST}, group: g1, session: {{persistent: true}}}}
""")
    assert (
        "endpoints.node.session: found session on a Sparkplug endpoint; expected no session"
        in str(caught.value)
    )
    assert "session" not in SparkplugEndpoint.model_json_schema()["properties"]  # not offered


def test_persistent_defaults_and_what_validate_warns_of() -> None:
    loaded = load_config_text(
        endpoint_yaml(
            '    version: "5"\n    session: {persistent: true}\n'
            "    subscriptions: [{topic: a/b, qos: 0}, {topic: c/d}]\n"
        )
    )
    entry = loaded.devices["up"].config
    assert isinstance(entry, MqttEndpoint)
    assert entry.session.expiry_s == 86_400  # a day
    assert [path for path, _ in entry.run_warnings()] == [("subscriptions", 0, "qos")]
    assert "broker keeps nothing of 'a/b'" in entry.run_warnings()[0][1]
    clean = MqttEndpoint(host=HOST, subscriptions=[{"topic": "a/b", "qos": 0}])  # type: ignore[list-item]
    assert clean.session.persistent is False and clean.run_warnings() == []
