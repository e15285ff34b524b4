"""The late-update guard of the shadow over MQTT (``shadow.mqtt.max_age``).

The cloud is ``mosquitto_pub`` on a real mosquitto, the replies are read back with
``mosquitto_sub`` (a persistent session made before the gateway starts, so that no reply races
a SUBSCRIBE), and the device is pump on the Modbus simulator: an update whose timestamp is too
old, or too far ahead, is answered on ``.../update/rejected`` and never reaches the device.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, wait_for
from test_mqtt_adapter import create_session, run_cmd, sub_args
from test_opcua_server import running_gateway
from test_shadow_service import config, mosquitto_pub, shadow_of

from gateway.shadow.freshness import check_age
from gateway.shadow.service import LATE_LOG_QUOTA, ShadowService
from protocols.modbus.simulator import SimulatedDevice, Simulator

SHADOW = "site/things/pump/shadow"
REPLIES = "replies"  # the persistent session reading update/accepted and update/rejected
GUARD = 'prefix: "site/things"}'


def guarded(device: SimulatedDevice, broker: MosquittoBroker, tmp_path: Path, guard: str) -> str:
    """test_shadow_service's config (pump: speed rw 0..100) with ``guard`` in shadow.mqtt."""
    text = config(device.port, tmp_path / "s.db", broker)
    assert text.count(GUARD) == 1
    return text.replace(GUARD, f'prefix: "site/things", {guard}}}')


async def reply(broker: MosquittoBroker) -> tuple[str, dict[str, Any]]:
    """The next update reply the cloud gets, as (accepted or rejected, body)."""
    rc, out, err = await run_cmd(
        *sub_args(broker.port, f"{SHADOW}/update/accepted", f"{SHADOW}/update/rejected"),
        "-c", "-i", REPLIES, "-q", "1", "-v", "-C", "1", "-W", "10", limit_s=15,
    )  # fmt: skip
    assert rc == 0, (rc, out, err)
    topic, payload = out.rstrip("\n").split(" ", 1)
    return topic.rsplit("/", 1)[1], json.loads(payload)


async def update(broker: MosquittoBroker, token: str, speed: int, **extra: Any) -> tuple[str, Any]:
    body = {"state": {"desired": {"speed": speed}}, "clientToken": token, **extra}
    await mosquitto_pub(broker, f"{SHADOW}/update", body)
    kind, answer = await reply(broker)
    assert answer["clientToken"] == token, answer  # the answer to this update, not another
    return kind, answer


async def answers_gets(broker: MosquittoBroker) -> None:
    """Once the gateway answers a get it is subscribed (a get before its SUBSCRIBE is lost,
    so it is asked again each second)."""
    await create_session(broker.port, "gets", f"{SHADOW}/get/accepted")
    for _ in range(30):
        await mosquitto_pub(broker, f"{SHADOW}/get", "")
        rc, out, _ = await run_cmd(
            *sub_args(broker.port, f"{SHADOW}/get/accepted"),
            "-c", "-i", "gets", "-q", "1", "-C", "1", "-W", "1", limit_s=5,
        )  # fmt: skip
        if rc == 0 and out:
            return
    pytest.fail("the gateway never answered a shadow get")


@asynccontextmanager
async def pump(
    simulator: Simulator, broker: MosquittoBroker, tmp_path: Path, guard: str
) -> AsyncIterator[tuple[ShadowService, SimulatedDevice]]:
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    await create_session(
        broker.port, REPLIES, f"{SHADOW}/update/accepted", f"{SHADOW}/update/rejected"
    )
    async with running_gateway(guarded(device, broker, tmp_path, guard)) as gateway:
        await answers_gets(broker)
        yield shadow_of(gateway), device


def speed(device: SimulatedDevice) -> int:
    return int(device.get_registers("holding", 10)[0])


async def test_fresh_updates_are_written_stale_and_future_ones_rejected(
    caplog: pytest.LogCaptureFixture,
    simulator: Simulator,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO)
    async with pump(simulator, mosquitto, tmp_path, "max_age: 300") as (shadow, device):
        kind, _ = await update(mosquitto, "fresh", 33, timestamp=time.time() - 5)
        assert kind == "accepted"
        await wait_for(lambda: speed(device) == 33, message="the fresh update written")

        kind, answer = await update(mosquitto, "stale", 44, timestamp=time.time() - 3600)
        assert kind == "rejected" and answer["code"] == 400, answer
        assert answer["message"].startswith("stale update: sent 1 h 0 min ago"), answer
        assert "shadow.mqtt.max_age 5 min 0 s" in answer["message"]
        assert (await shadow.get("pump")).desired == {"speed": 33}

        # Without a timestamp: carried out, as before the option (require_timestamp is off).
        kind, _ = await update(mosquitto, "untimed", 55)
        assert kind == "accepted"
        await wait_for(lambda: speed(device) == 55, message="the untimed update written")

        # Ahead of the gateway's clock: past max_skew (default 60 s) refused, within it taken.
        kind, answer = await update(mosquitto, "future", 66, timestamp=time.time() + 3600)
        assert kind == "rejected" and answer["code"] == 400, answer
        assert (
            "min 59 s ahead of the gateway's clock, over shadow.mqtt.max_skew 1 min 0 s"
            in (answer["message"])
        ), answer
        kind, answer = await update(mosquitto, "millis", 67, timestamp=time.time() * 1000)
        assert kind == "rejected" and "(in milliseconds? it must be seconds)" in answer["message"]
        kind, _ = await update(mosquitto, "skewed", 57, timestamp=time.time() + 10)
        assert kind == "accepted"
        await wait_for(lambda: speed(device) == 57, message="the slightly early update written")

        # A timestamp that is no number is a bad request, whatever its age.
        kind, answer = await update(mosquitto, "text", 68, timestamp="2026-11-23T07:00:00Z")
        assert kind == "rejected" and "timestamp must be a number" in answer["message"], answer

        # A burst of late ones (a broker's queue after an outage): a few lines, then a count.
        for i in range(LATE_LOG_QUOTA):
            kind, _ = await update(mosquitto, f"old-{i}", 10 + i, timestamp=time.time() - 900)
            assert kind == "rejected"
        doc = await shadow.get("pump")
        assert doc.desired == {"speed": 57} and speed(device) == 57  # none of them written
        status = shadow.status()
        assert status["stale_updates"] == 1 + LATE_LOG_QUOTA
        assert status["future_updates"] == 2
        assert status["untimed_updates"] == 1
        assert status["rejected"] == 1 + LATE_LOG_QUOTA + 2 + 1
        said = [r for r in caplog.records if "update of pump rejected: 400" in r.getMessage()]
        late = [r for r in said if r.levelno == logging.WARNING]
        assert len(late) == LATE_LOG_QUOTA, [r.getMessage() for r in late]
        # the bad timestamp: the bad-request streak's line (INFO), not one of the quota
        assert [r.getMessage() for r in said if r.levelno == logging.INFO] == [
            "shadow: update of pump rejected: 400 timestamp must be a number of seconds since "
            "the epoch, not '2026-11-23T07:00:00Z' (until it works again, further failures are "
            "counted, not logged)"
        ]
    late_total = 1 + LATE_LOG_QUOTA + 2
    counted = [m for r in caplog.records if "late-update guard" in (m := r.getMessage())]
    assert counted == [
        f"shadow: {late_total - LATE_LOG_QUOTA} more updates rejected by the late-update guard "
        "in the last minute (counted in the status: stale_updates, future_updates, "
        "untimed_updates)"
    ], counted


async def test_require_timestamp_rejects_an_update_without_one(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    guard = "max_age: 300, require_timestamp: true"
    async with pump(simulator, mosquitto, tmp_path, guard) as (shadow, device):
        kind, answer = await update(mosquitto, "untimed", 44)
        assert kind == "rejected" and answer["code"] == 400, answer
        assert 'needs a top-level "timestamp"' in answer["message"], answer
        assert "shadow.mqtt.require_timestamp" in answer["message"]
        kind, _ = await update(mosquitto, "timed", 45, timestamp=time.time())
        assert kind == "accepted"
        await wait_for(lambda: speed(device) == 45, message="the timed update written")
        assert (await shadow.get("pump")).desired == {"speed": 45}
        status = shadow.status()
        assert status["untimed_updates"] == 1 and status["rejected"] == 1
        assert status["stale_updates"] == status["future_updates"] == 0


async def test_an_update_queued_while_the_gateway_was_away_too_long_is_rejected(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """The case the option is for: a persistent session's broker keeps an update that was
    fresh when sent and delivers it after max_age; the same sender's next one is written."""
    guard = "max_age: 3"
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    await create_session(
        mosquitto.port, REPLIES, f"{SHADOW}/update/accepted", f"{SHADOW}/update/rejected"
    )
    endpoint = f"port: {mosquitto.port},"
    text = guarded(device, mosquitto, tmp_path, guard)
    assert text.count(endpoint) == 1
    text = text.replace(endpoint, f"{endpoint} session: {{persistent: true}},")
    async with running_gateway(text):
        await answers_gets(mosquitto)  # subscribed: the broker keeps the session from now on
    sent = time.time() - 2  # 2 s old: fresh when published
    body = {"state": {"desired": {"speed": 20}}, "clientToken": "queued", "timestamp": sent}
    await mosquitto_pub(mosquitto, f"{SHADOW}/update", body)
    await wait_for(lambda: time.time() - sent > 3.2, message="the queued update is over max_age")
    async with running_gateway(text) as gateway:
        kind, answer = await reply(mosquitto)  # the broker delivers the queued one first
        assert (kind, answer["clientToken"]) == ("rejected", "queued"), answer
        assert answer["message"].startswith("stale update: sent "), answer
        assert speed(device) == 5
        kind, _ = await update(mosquitto, "live", 40, timestamp=time.time())
        assert kind == "accepted"
        await wait_for(lambda: speed(device) == 40, message="the live update written")
        shadow = shadow_of(gateway)
        assert shadow.status()["stale_updates"] == 1
        assert (await shadow.get("pump")).desired == {"speed": 40}


def test_the_age_limits_are_inclusive() -> None:
    """At exactly max_age, or max_skew ahead, an update is still taken; a hair past, not."""
    limits: dict[str, Any] = {"max_age": 300.0, "max_skew": 60.0, "require": False}
    assert check_age({"timestamp": 700.0}, 1000.0, **limits) is None
    assert check_age({"timestamp": 1060.0}, 1000.0, **limits) is None
    assert check_age({"timestamp": 699.9}, 1000.0, **limits).kind == "stale"  # type: ignore[union-attr]
    assert check_age({"timestamp": 1060.1}, 1000.0, **limits).kind == "future"  # type: ignore[union-attr]
    assert check_age({"timestamp": None}, 1000.0, **limits) is None  # null: none
    assert check_age({"timestamp": True}, 1000.0, **limits).kind == "bad"  # type: ignore[union-attr]


VALIDATE_CASES = [
    ("{mqtt: {endpoint: broker, max_age: 0}}", "shadow.mqtt.max_age"),
    ("{mqtt: {endpoint: broker, max_age: 60, max_skew: -1}}", "shadow.mqtt.max_skew"),
    ("{mqtt: {endpoint: broker, require_timestamp: true}}", "max_age with require_timestamp: true"),
    ("{max_age: 60}", "shadow.max_age"),  # only under shadow.mqtt
]


@pytest.mark.parametrize(("shadow", "said"), VALIDATE_CASES)
def test_validate_checks_the_guard(tmp_path: Path, shadow: str, said: str) -> None:
    path = tmp_path / "plant.yaml"
    base = (
        "devices:\n"
        f"  pump: {{protocol: modbus, host: {HOST}, points: [{{name: speed, address: 10, "
        "access: rw}]}\n"
        f"endpoints:\n  broker: {{protocol: mqtt, host: {HOST}}}\n"
    )
    ok = base + "shadow: {mqtt: {endpoint: broker, max_age: 300, require_timestamp: true}}\n"
    path.write_text(ok)
    out = validate(path)
    assert out.returncode == 0, out.stderr
    path.write_text(base + f"shadow: {shadow}\n")
    out = validate(path)
    assert out.returncode == 1 and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_guard_is_off_by_default(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Without max_age an update's timestamp is not looked at (as before the option)."""
    async with pump(simulator, mosquitto, tmp_path, "qos: 1") as (shadow, device):
        kind, _ = await update(mosquitto, "old", 21, timestamp=time.time() - 86400)
        assert kind == "accepted"
        await wait_for(lambda: speed(device) == 21, message="written")
        assert shadow.status()["stale_updates"] == shadow.status()["untimed_updates"] == 0
