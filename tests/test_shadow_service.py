"""The shadow in a whole in-process gateway: a Modbus device on the simulator, MQTT on mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, find_binary, modbus_device_yaml, wait_for
from test_e2e_modbus_mqtt import Collector
from test_mqtt_v5 import v5_messages
from test_opcua_server import running_gateway

from gateway.shadow.service import ShadowService
from gateway.shadow.store import ShadowStore
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator


def config(
    modbus_port: int,
    db: Path,
    mqtt: MosquittoBroker | None = None,
    min_free: int | None = None,
    mqtt_keys: str = "",
) -> str:
    endpoints = shadow_mqtt = ""
    if mqtt is not None:
        endpoints = f"""
endpoints:
  broker: {{protocol: mqtt, host: {HOST}, port: {mqtt.port}, reconnect: {{initial: 0.05, max: 0.2}}{mqtt_keys}}}
"""
        shadow_mqtt = '  mqtt: {endpoint: broker, prefix: "site/things"}\n'
    return f"""
gateway: {{name: shadow-test, status_interval: 0}}
devices:
{modbus_device_yaml(modbus_port, poll_groups="{fast: {interval: 0.05}}")}
    points:
      - {{name: temp, table: input, address: 0, type: int16, scale: 0.1, unit: degC, poll: fast}}
      - {{name: speed, table: holding, address: 10, type: int16, access: rw, low: 0, high: 100,
         poll: fast}}
{endpoints}
shadow:
  path: {db}
  poll_interval: 0.1
  history: {{max_age: 3600, max_rows: 1000{"" if min_free is None else f", min_free: {min_free}"}}}
{shadow_mqtt}"""


def shadow_of(gateway: Any) -> ShadowService:
    assert isinstance(gateway.shadow, ShadowService)
    return gateway.shadow


async def test_reported_desired_delta_and_refusal(simulator: Simulator, tmp_path: Path) -> None:
    device = await simulator.add_device(name="pump")
    device.set_value("input", 0, 215, DataType.INT16)
    device.set_registers("holding", 10, [5])
    db = tmp_path / "shadow.db"
    async with running_gateway(config(device.port, db)) as gateway:
        shadow = shadow_of(gateway)

        def reported() -> dict[str, Any]:
            doc = shadow.state("pump")
            return doc.reported if doc is not None else {}

        await wait_for(lambda: reported().get("speed") == 5, message="reported speed 5")
        assert reported()["temp"] == 21.5
        device.set_value("input", 0, 230, DataType.INT16)
        await wait_for(lambda: reported().get("temp") == 23.0, message="reported follows")

        doc = await shadow.update("pump", {"speed": 42})
        assert doc.delta == {"speed": 42}
        await wait_for(lambda: device.get_registers("holding", 10) == [42], message="written")
        await wait_for(lambda: reported().get("speed") == 42, message="reported 42")
        doc = await shadow.get("pump")
        assert doc.delta == {} and doc.errors == {}

        doc = await shadow.update("pump", {"speed": 500})  # above high: 100
        await wait_for(lambda: "speed" in (shadow.state("pump") or doc).errors, message="refusal")
        doc = await shadow.get("pump")
        assert doc.errors["speed"]["status"] == "out_of_range"
        assert doc.errors["speed"]["value"] == 500
        assert doc.desired["speed"] == 500 and doc.delta == {"speed": 500}
        assert device.get_registers("holding", 10) == [42]

        # Another process (the CLI) changes desired in the file: the gateway picks it up.
        other = ShadowStore(str(db))
        other.update("pump", desired={"speed": 7})
        other.close()
        await wait_for(lambda: device.get_registers("holding", 10) == [7], message="polled")
        await wait_for(lambda: not (shadow.state("pump") or doc).delta, message="delta clears")
        assert (shadow.state("pump") or doc).errors == {}

    history = ShadowStore(str(db)).history("pump", "speed")
    assert [r.value for r in history][:1] == [5] and 42 in [r.value for r in history]


async def mosquitto_pub(
    broker: MosquittoBroker, topic: str, payload: dict[str, Any] | str, *options: str
) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    proc = await asyncio.create_subprocess_exec(
        find_binary("mosquitto_pub", "/usr/bin/mosquitto_pub"),
        "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic, "-m", text, *options,
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 10) == 0


@contextlib.asynccontextmanager
async def pump_on_mqtt(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path, mqtt_keys: str = ""
) -> AsyncIterator[tuple[ShadowService, SimulatedDevice, Collector]]:
    """A gateway shadowing device pump (speed 5) with ``shadow.mqtt`` on ``mosquitto``, once
    it reported and subscribed; a collector of everything under the shadow's prefix."""
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    collector = Collector(mosquitto, "site/things/#")
    text = config(device.port, tmp_path / "s.db", mosquitto, mqtt_keys=mqtt_keys)
    try:
        async with running_gateway(text) as gateway:
            shadow = shadow_of(gateway)
            await wait_for(lambda: (shadow.state("pump") or None) is not None, message="report")
            await wait_for(lambda: gateway.adapters["broker"].status()["connected"])
            await asyncio.sleep(0.3)  # the adapter's SUBACK
            yield shadow, device, collector
    finally:
        collector.close()


async def test_mqtt_topics(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    base = "site/things/pump/shadow"
    async with pump_on_mqtt(simulator, mosquitto, tmp_path) as (shadow, device, collector):
        version = (await shadow.get("pump")).version

        await mosquitto_pub(mosquitto, f"{base}/get", {"clientToken": "g1"})
        got = await wait_for(lambda: collector.last(f"{base}/get/accepted"), message="get")
        assert got["clientToken"] == "g1" and got["state"]["reported"]["speed"] == 5

        body = {"state": {"desired": {"speed": 33}}, "clientToken": "u1"}
        await mosquitto_pub(mosquitto, f"{base}/update", body)
        accepted = await wait_for(lambda: collector.last(f"{base}/update/accepted"))
        assert accepted["clientToken"] == "u1"
        assert accepted["state"] == {"desired": {"speed": 33}}
        assert "timestamp" in accepted["metadata"]["desired"]["speed"]
        delta = await wait_for(lambda: collector.last(f"{base}/update/delta"))
        assert delta["state"] == {"speed": 33}
        await wait_for(lambda: device.get_registers("holding", 10) == [33], message="write")

        stale = {"state": {"desired": {"speed": 34}}, "version": version, "clientToken": "u2"}
        await mosquitto_pub(mosquitto, f"{base}/update", stale)
        rejected = await wait_for(lambda: collector.last(f"{base}/update/rejected"))
        assert rejected["code"] == 409 and rejected["clientToken"] == "u2"
        assert device.get_registers("holding", 10) == [33]
        assert (await shadow.get("pump")).desired == {"speed": 33}


def request_options(response_topic: str, correlation: str) -> tuple[str, ...]:
    """mosquitto_pub options of an MQTT 5 request naming where its answer goes."""
    return (
        "-V", "mqttv5",
        "-D", "publish", "response-topic", response_topic,
        "-D", "publish", "correlation-data", correlation,
    )  # fmt: skip


async def test_mqtt_5_requests_get_their_answers_on_their_response_topic(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    base = "site/things/pump/shadow"
    answers = asyncio.create_task(v5_messages(mosquitto.port, "answers/#", count=3))
    v5 = ', version: "5"'
    try:
        async with pump_on_mqtt(simulator, mosquitto, tmp_path, v5) as (_, _device, collector):
            await mosquitto_pub(
                mosquitto,
                f"{base}/get",
                {"clientToken": "g1"},
                *request_options("answers/a", "c-1"),
            )
            reported = {"state": {"reported": {"speed": 1}}}  # refused: 400
            await mosquitto_pub(
                mosquitto, f"{base}/update", reported, *request_options("answers/b", "c-2")
            )
            desired = {"state": {"desired": {"speed": 33}}}
            await mosquitto_pub(
                mosquitto, f"{base}/update", desired, *request_options("answers/c", "c-3")
            )
            got = {topic: (corr, json.loads(body)) for topic, _e, _r, corr, body in await answers}
            assert got["answers/a"][0] == "c-1" and got["answers/a"][1]["clientToken"] == "g1"
            assert got["answers/a"][1]["state"]["reported"]["speed"] == 5
            assert got["answers/b"][0] == "c-2" and got["answers/b"][1]["code"] == 400
            assert got["answers/c"][0] == "c-3"
            assert got["answers/c"][1]["state"] == {"desired": {"speed": 33}}
            # the delta is no answer: it stays on its own topic, for every listener
            delta = await wait_for(lambda: collector.last(f"{base}/update/delta"))
            assert delta["state"] == {"speed": 33}
            assert not [t for _, t, _ in collector.messages if t.endswith(("accepted", "rejected"))]
    finally:
        answers.cancel()


async def test_a_full_disk_under_the_shadow_is_said_once_and_readings_go_on(
    simulator: Simulator, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_value("input", 0, 100, DataType.INT16)
    device.set_registers("holding", 10, [5])
    # No floor: the writes themselves fail. (With one, on a disk this small the documents wait
    # in memory instead: test_store_resilience_shadow.)
    gw_config = config(device.port, small_disk / "shadow.db", min_free=0)
    async with running_gateway(gw_config) as gateway:
        shadow = shadow_of(gateway)
        seen = gateway.bus.subscribe("telemetry/#", maxsize=100000, name="test")

        def reported(point: str) -> Any:
            doc = shadow.state("pump")
            return doc.reported.get(point) if doc is not None else None

        await wait_for(lambda: reported("temp") == 10.0, message="recorded before the disk fills")
        filler = small_disk / "filler"
        with filler.open("wb") as f, contextlib.suppress(OSError):
            while True:  # every byte of the tmpfs: the next history row cannot be written
                f.write(b"\0" * 65536)
                f.flush()
        value = 100

        def change() -> int:  # a new reading is a new history row
            nonlocal value
            value += 1
            device.set_value("input", 0, value, DataType.INT16)
            return shadow.counters["record_errors"]

        await wait_for(lambda: change() >= 20, timeout=30, message="20 failed recordings")
        before = seen.counters.offered
        await wait_for(
            lambda: change() >= 0 and seen.counters.offered > before + 5, message="readings flow on"
        )
        failed = [r for r in caplog.records if "cannot record readings" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in failed]  # once, not per reading
        assert "full" in failed[0].getMessage() and not failed[0].exc_info

        filler.unlink()
        device.set_value("input", 0, 555, DataType.INT16)
        await wait_for(lambda: reported("temp") == 55.5, message="recording again")
        assert any("shadow: works again" in r.getMessage() for r in caplog.records)
    assert gateway.status()["shadow"]["record_errors"] >= 20


async def test_bad_mqtt_requests_get_a_reply_and_one_log_line(
    simulator: Simulator,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    collector = Collector(mosquitto, "site/things/pump/shadow/update/+")  # the replies
    base = "site/things/pump/shadow"
    many = json.dumps({"state": {"desired": {f"k{i}": i for i in range(600)}}})
    bad = [
        ('{"state": {"desired": {"speed": NaN}}}', 400, "NaN is not a finite number"),
        ('{"state": {"desired": {"speed": 1e999}}}', 400, "1e999 is not a finite number"),
        ("[" * 5000, 400, "nested too deeply"),
        ("[" * 70000, 413, "over 65536 bytes"),
        ('{"state": {"desired": {"speed": 1' + "0" * 5000 + "}}}", 400, "invalid JSON"),
        (many, 400, "at most 500 keys"),
    ]
    try:
        async with running_gateway(config(device.port, tmp_path / "s.db", mosquitto)) as gateway:
            shadow = shadow_of(gateway)
            await wait_for(lambda: gateway.adapters["broker"].status()["connected"])
            await asyncio.sleep(0.3)  # the adapter's SUBACK
            for i, (payload, code, said) in enumerate(bad):
                await mosquitto_pub(mosquitto, f"{base}/update", payload)
                await wait_for(
                    lambda i=i: len(collector.on(f"{base}/update/rejected")) == i + 1,  # type: ignore[misc]
                    message=said,
                )
                reply = collector.last(f"{base}/update/rejected")
                assert reply["code"] == code and said in reply["message"], reply
            assert (await shadow.get("pump")).desired == {}  # nothing refused was stored
            rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
            assert len(rejected) == 1 and not rejected[0].exc_info  # one line for the run
            # metadata keys (not points) are recorded, not written down the write path
            for speed in (40, 41):
                body = {"state": {"desired": {"speed": speed, "area": "north"}}}
                await mosquitto_pub(mosquitto, f"{base}/update", body)
                await wait_for(lambda s=speed: device.get_registers("holding", 10) == [s])  # type: ignore[misc]
            doc = await shadow.get("pump")
            assert doc.errors["area"]["status"] == "unknown_point"
            assert not [r for r in caplog.records if "unknown_point" in r.getMessage()]
            # ... and left out of the delta: never written, it is not wanted from the device
            await wait_for(lambda: (shadow.state("pump") or doc).reported.get("speed") == 41)
            doc = await shadow.get("pump")
            assert doc.delta == {} and "delta" not in doc.to_json()["state"]
            body = {"state": {"desired": {"speed": 500, "area": "south"}}}  # 500: out of range
            await mosquitto_pub(mosquitto, f"{base}/update", body)
            await wait_for(lambda: len(collector.on(f"{base}/update/delta")) == 2)
            deltas = [d["state"] for d in collector.on(f"{base}/update/delta")]
            assert deltas == [{"speed": 40}, {"speed": 41}]  # never area: it is no point

            def last_delta() -> Any:
                return collector.last(f"{base}/update/delta")["state"]

            await wait_for(lambda: last_delta().get("speed") == 500, message="delta")
            assert last_delta() == {"speed": 500}  # a refused point stays, metadata does not
            await wait_for(lambda: "speed" in (shadow.state("pump") or doc).errors)
            doc = await shadow.get("pump")
            assert doc.delta == {"speed": 500} and doc.errors["area"]["value"] == "south"
    finally:
        collector.close()


async def test_a_get_takes_any_payload(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """docs/shadow.md: ``shadow/get`` takes any or empty payload; the body is not parsed as a
    request (only a clientToken of a JSON object is echoed)."""
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    collector = Collector(mosquitto, "site/things/+/shadow/get/+")  # the replies
    base = "site/things/pump/shadow"
    try:
        async with running_gateway(config(device.port, tmp_path / "s.db", mosquitto)) as gateway:
            shadow = shadow_of(gateway)
            await wait_for(lambda: shadow.state("pump") is not None, message="report")
            await wait_for(lambda: gateway.adapters["broker"].status()["connected"])
            await asyncio.sleep(0.3)  # the adapter's SUBACK
            payloads = ["x", "[1, 2]", "{not json", "42", "", '{"clientToken": "g2"}']
            for i, payload in enumerate(payloads):
                await mosquitto_pub(mosquitto, f"{base}/get", payload)
                await wait_for(
                    lambda i=i: len(collector.on(f"{base}/get/accepted")) == i + 1,  # type: ignore[misc]
                    message=f"get with {payload!r}",
                )
                got = collector.last(f"{base}/get/accepted")
                assert got["state"]["reported"]["speed"] == 5, (payload, got)
            assert got["clientToken"] == "g2"
            assert collector.on(f"{base}/get/rejected") == []
            await mosquitto_pub(mosquitto, "site/things/boiler/shadow/get", "x")
            rejected = await wait_for(
                lambda: collector.last("site/things/boiler/shadow/get/rejected")
            )
            assert rejected["code"] == 404
    finally:
        collector.close()
