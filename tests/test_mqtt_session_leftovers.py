"""MQTT persistent sessions: what a session keeps beyond the gateway's config and run.

- Filters that a config no longer names stay in the broker's session: after a restart with a
  changed config the gateway unsubscribes them (it remembers what it subscribed, per endpoint
  and broker, in the state folder), and a message for one that comes before that is dropped
  and counted, never a sample.
- A broker delivers everything it queued for the session at once after the CONNACK: more
  shadow updates than the shadow's request queue holds must all be carried out, none dropped
  (reading from the broker pauses while the queue is full).
- ``gateway validate`` warns of a persistent session carrying shadow updates without
  ``shadow.mqtt.max_age``, and of a ``max_skew`` without ``max_age``.

The broker is a real mosquitto, the cloud ``mosquitto_pub``; what did not arrive is shown by
order (the broker sends what it queued right after the CONNACK, before anything published
later), not by waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, find_binary, wait_for
from test_mqtt_persistent_session import Source
from test_opcua_server import running_gateway
from test_shadow_max_age import answers_gets, guarded, validate
from test_shadow_service import mosquitto_pub, shadow_of

from protocols.modbus.simulator import Simulator
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint

SHADOW = "site/things/pump/shadow"
BACKLOG = 2_000  # more than the shadow's request queue (1,000) and mosquitto's default queue


async def publish_lines(broker: MosquittoBroker, topic: str, lines: list[str]) -> None:
    """One QoS 1 message per line, from one ``mosquitto_pub -l``."""
    proc = await asyncio.create_subprocess_exec(
        find_binary("mosquitto_pub", "/usr/bin/mosquitto_pub"),
        "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic, "-l",
        stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await proc.communicate("".join(f"{line}\n" for line in lines).encode())
    assert await asyncio.wait_for(proc.wait(), 60) == 0


# --- a backlog larger than the shadow's request queue --------------------------------------------


@pytest.mark.parametrize("held", [True, False], ids=["held", "without-the-hold"])
async def test_a_queued_backlog_of_shadow_updates_is_carried_out_whole(
    simulator: Simulator,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    held: bool,
) -> None:
    """``without-the-hold``: an endpoint that cannot hold the broker back (as before it
    could): the queue drops its oldest requests, and that is counted and logged."""
    if not held:
        monkeypatch.setattr(MqttAdapter, "hold_reading", lambda *_: None)
    mosquitto.stop()  # room for the backlog (mosquitto keeps 1,000 by default)
    with mosquitto.config.open("a") as conf:
        conf.write(f"max_queued_messages {BACKLOG + 100}\nmax_inflight_messages 0\n")
    mosquitto.start()
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    # replies at QoS 0 and a long keepalive: no PUBACK nor PINGRESP comes to read what was
    # read ahead while held, only the resume itself does
    text = guarded(device, mosquitto, tmp_path, "qos: 0")
    endpoint = f"port: {mosquitto.port},"
    options = "session: {persistent: true}, outbox: null, keepalive: 3600,"
    text = text.replace(endpoint, f"{endpoint} {options}")
    async with running_gateway(text):
        await answers_gets(mosquitto)  # subscribed: the broker keeps the session from now on
    last = 77
    updates = [
        json.dumps({"state": {"desired": {"speed": i % 50 if i < BACKLOG - 1 else last}}})
        for i in range(BACKLOG)
    ]
    await publish_lines(mosquitto, f"{SHADOW}/update", updates)
    async with running_gateway(text) as gateway:
        shadow = shadow_of(gateway)

        def desired() -> dict[str, Any]:
            doc = shadow.state("pump")
            return doc.desired if doc is not None else {}

        # 77 only in the last one: once it is taken, every update before it was handled
        await wait_for(lambda: desired() == {"speed": last}, 90, message="the last update")
        assert (await shadow.get("pump")).desired == {"speed": last}
        status, pauses = shadow.status(), gateway.adapters["broker"].status()["read_pauses"]
        if held:
            assert (status["updates"], status["requests_dropped"]) == (BACKLOG, 0), status
            assert pauses >= 1  # it held the broker back
        else:
            assert status["requests_dropped"] > 0 and pauses == 0, status
            assert status["updates"] + status["requests_dropped"] == BACKLOG, status
            assert "MQTT requests dropped, the request queue (1000) was full" in caplog.text
    # no max_age: the start log says that a late update would be carried out
    assert "shadow.mqtt: endpoint 'broker' keeps a persistent session" in caplog.text


# --- filters removed from the config ------------------------------------------------------------


class Endpoint(Source):
    """The in-process endpoint ``src`` with a persistent session, started anew (a restart) on
    each `running` with the subscriptions given there; its samples on one bus throughout."""

    def __init__(self, broker: MosquittoBroker, version: str) -> None:
        super().__init__(broker, version, persistent=True)
        self.base = self.config
        self.client_id = self.config.client_id
        self.samples = self.bus.subscribe("mqtt/src/#", maxsize=1000)

    def with_topics(self, *topics: str) -> MqttEndpoint:
        """`Source`'s settings with ``topics`` as the subscriptions, and no points."""
        subscriptions = [{"topic": t, "qos": 1, "payload": "text"} for t in topics]
        base = self.base.model_dump(exclude_unset=True)
        return MqttEndpoint.model_validate({**base, "points": [], "subscriptions": subscriptions})

    @asynccontextmanager
    async def running(self, *topics: str) -> AsyncIterator[MqttAdapter]:
        """Connected with ``topics`` subscribed (and leftovers unsubscribed); a clean stop."""
        self.config = self.with_topics(*topics)
        async with super().running() as adapter:
            yield adapter

    def record(self) -> Path:
        folder = Path(os.environ["PROTOCOL_BRAIN_STATE_DIR"]) / "mqtt-sessions"
        return folder / f"src@{HOST}_{self.broker.port}.json"

    def remembered(self) -> list[str]:
        doc = json.loads(self.record().read_text())
        assert doc["client_id"] == self.client_id
        return list(doc["filters"])

    async def until(self, topic: str, value: str) -> list[tuple[str, Any]]:
        """The samples (topic, value) up to and including ``value`` on mqtt/src/``topic``."""
        seen: list[tuple[str, Any]] = []
        async with asyncio.timeout(20):
            while not seen or seen[-1] != (f"mqtt/src/{topic}", value):
                message = await self.samples.get()
                seen += [(message.topic, s.value) for s in message.samples]
        return seen


@pytest.fixture(params=["3.1.1", "5"])
def endpoint(mosquitto: MosquittoBroker, request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    found = Endpoint(mosquitto, request.param)
    with found.sub, found.samples:
        yield found


@pytest.fixture(autouse=True)
def _info_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "protocols.mqtt")


async def test_a_filter_removed_from_the_config_is_unsubscribed_after_the_restart(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    pub = endpoint.broker
    async with endpoint.running("old/+", "keep/b"):
        assert sorted(endpoint.remembered()) == ["keep/b", "old/+"]
        await mosquitto_pub(pub, "old/a", "1")
        assert await endpoint.until("old/a", "1") == [("mqtt/src/old/a", "1")]
    await mosquitto_pub(pub, "old/a", "queued")  # kept by the session for a filter ...
    async with endpoint.running("keep/b") as adapter:  # ... that this config no longer names
        assert adapter.session_present is True
        await wait_for(lambda: adapter.unsubscribed == 1, message="old/+ unsubscribed")
        assert endpoint.remembered() == ["keep/b"]
        await mosquitto_pub(pub, "old/a", "after")  # no subscription of the session takes it
        await mosquitto_pub(pub, "keep/b", "2")
        assert await endpoint.until("keep/b", "2") == [("mqtt/src/keep/b", "2")]  # no old/a
        status = adapter.status()
        assert (status["unwanted"], status["unsubscribed"]) == (1, 1), status  # queued one only
    assert "a message on 'old/a', which no subscription of the config takes" in caplog.text
    assert "unsubscribed from 1 topic filter" in caplog.text and "'old/+'" in caplog.text
    async with endpoint.running("keep/b") as adapter:  # nothing left to unsubscribe
        await mosquitto_pub(pub, "keep/b", "3")
        assert await endpoint.until("keep/b", "3") == [("mqtt/src/keep/b", "3")]
        assert (adapter.unsubscribed, adapter.unwanted) == (0, 0)


async def test_a_leftover_whose_unsubscribe_was_not_answered_is_tried_again(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record never knows less than the session: until the broker has answered the
    UNSUBSCRIBE (here it is never sent, as if the connection had dropped first), the leftover
    stays in it, and the next start unsubscribes it."""
    async with endpoint.running("old/a", "keep/b"):
        pass
    with monkeypatch.context() as patch:
        patch.setattr(MqttAdapter, "_unsubscribe_leftovers", lambda *_: asyncio.sleep(0))
        async with endpoint.running("keep/b") as adapter:
            assert adapter.unsubscribed == 0
    assert endpoint.remembered() == ["keep/b", "old/a"]
    async with endpoint.running("keep/b") as adapter:
        await wait_for(lambda: adapter.unsubscribed == 1, message="old/a unsubscribed")
    assert endpoint.remembered() == ["keep/b"]


async def test_a_session_the_broker_lost_has_nothing_to_unsubscribe(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    async with endpoint.running("old/a", "keep/b"):
        pass
    endpoint.broker.stop()  # no persistence: the sessions go with it
    endpoint.broker.start()
    async with endpoint.running("keep/b") as adapter:
        assert adapter.session_present is False
        assert adapter.unsubscribed == 0
    assert endpoint.remembered() == ["keep/b"]
    assert "unsubscribed from" not in caplog.text


async def test_without_a_record_the_leftovers_are_dropped_and_it_is_said_once(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """The first start of a gateway that keeps the record: nothing can be unsubscribed."""
    async with endpoint.running("old/a", "keep/b"):
        pass
    endpoint.record().unlink()
    await mosquitto_pub(endpoint.broker, "old/a", "queued")
    caplog.clear()
    async with endpoint.running("keep/b") as adapter:
        await mosquitto_pub(endpoint.broker, "keep/b", "1")
        assert await endpoint.until("keep/b", "1") == [("mqtt/src/keep/b", "1")]
        assert adapter.unwanted == 1 and adapter.unsubscribed == 0
        adapter._abort_connection("cut for the test")  # a reconnect: not said again
        await wait_for(lambda: adapter.reconnects == 1 and adapter.connected)
        await mosquitto_pub(endpoint.broker, "old/a", "live")  # still in the session
        await mosquitto_pub(endpoint.broker, "keep/b", "2")
        seen = await endpoint.until("keep/b", "2")  # "1" again first, if its PUBACK was cut
        assert {topic for topic, _ in seen} == {"mqtt/src/keep/b"}
        assert adapter.unwanted == 2
    said = [r for r in caplog.records if "no record of its subscriptions" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert endpoint.remembered() == ["keep/b"]


@pytest.mark.parametrize("record", ["{not json", '{"client_id": "someone-else", "filters": ["x"]}'])
async def test_a_damaged_or_foreign_record_is_taken_as_none(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture, record: str
) -> None:
    async with endpoint.running("old/a"):
        pass
    endpoint.record().write_text(record)
    async with endpoint.running("keep/b") as adapter:
        await mosquitto_pub(endpoint.broker, "old/a", "x")
        await mosquitto_pub(endpoint.broker, "keep/b", "1")
        assert await endpoint.until("keep/b", "1") == [("mqtt/src/keep/b", "1")]
        assert adapter.unwanted == 1 and adapter.unsubscribed == 0
    assert endpoint.remembered() == ["keep/b"]
    aside = endpoint.record().with_name(endpoint.record().name + ".bad")
    if record.startswith("{not"):
        assert aside.read_text() == record
        assert "is damaged" in caplog.text and f"moved to {aside}" in caplog.text
    else:
        assert not aside.exists()  # another client id's: not damaged, just not this session's


# --- validate ----------------------------------------------------------------------------------

LATE = "keeps a persistent session, so the broker queues shadow updates"
SKEW = "shadow.mqtt.max_skew: does nothing without max_age"


@pytest.mark.parametrize(
    ("session", "guard", "said"),
    [
        ("{persistent: true}", "", [LATE]),
        ("{persistent: true}", ", max_skew: 30", [LATE, SKEW]),
        ("{persistent: false}", ", max_skew: 30", [SKEW]),
        ("{persistent: true}", ", max_age: 300, max_skew: 30", []),
        ("{persistent: false}", "", []),
    ],
)
def test_validate_warns_of_late_updates_nothing_stops(
    tmp_path: Path, session: str, guard: str, said: list[str]
) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(
        "devices:\n"
        f"  pump: {{protocol: modbus, host: {HOST}, points: [{{name: speed, address: 10}}]}}\n"
        f"endpoints:\n  broker: {{protocol: mqtt, host: {HOST}, session: {session}}}\n"
        f"shadow: {{mqtt: {{endpoint: broker{guard}}}}}\n"
    )
    out = validate(path)
    assert out.returncode == 0, out.stderr
    assert [text for text in (LATE, SKEW) if text in out.stderr] == said, out.stderr
    if LATE in said:
        assert "shadow.mqtt: endpoint 'broker' keeps" in out.stderr
