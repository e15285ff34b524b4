"""MQTT adapter (protocols/mqtt/client.py) against a real mosquitto on 127.0.0.1.

What the broker received is read back with ``mosquitto_sub``, so these are interop tests: topics
and payloads byte for byte, retained birth and last will, reconnect with an ordered outbox,
subscriptions into the bus, username/password and TLS.

To read publishes without racing the subscriber's SUBSCRIBE, most tests first create a persistent
session (``mosquitto_sub -c -i ID -q 1 ... -E`` subscribes and exits), then publish (the broker
queues QoS 1 messages for the offline session, in order), then collect them with ``-C N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, find_binary, free_port, wait_for
from test_mqtt_codec import message, sample  # the same fixed-timestamp builders

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.types import MessageKind, Quality
from protocols.mqtt.client import MqttAdapter, MqttError
from protocols.mqtt.config import MqttEndpoint, MqttRoute

FAST_BACKOFF = {"initial": 0.05, "max": 0.2, "multiplier": 2.0}
STATUS = "protocol-brain/gw1/status"


# --- helpers -------------------------------------------------------------------------------------


def mosquitto_binary() -> str:
    return find_binary("mosquitto", "/usr/sbin/mosquitto")


async def run_cmd(*args: str, limit_s: float = 10.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(limit_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sub_args(port: int, *topics: str) -> list[str]:
    args = [find_binary("mosquitto_sub"), "-h", HOST, "-p", str(port)]
    for topic in topics:
        args += ["-t", topic]
    return args


async def create_session(port: int, client_id: str, *topics: str) -> None:
    """A persistent QoS 1 session that queues what is published while it is away."""
    rc, _, err = await run_cmd(*sub_args(port, *topics), "-c", "-i", client_id, "-q", "1", "-E")
    assert rc == 0, err


async def collect(
    port: int, client_id: str, *topics: str, count: int, wait_s: int = 5
) -> list[tuple[str, str]]:
    """The next ``count`` messages of a persistent session, as (topic, payload)."""
    rc, out, err = await run_cmd(
        *sub_args(port, *topics),
        "-c", "-i", client_id, "-q", "1", "-v", "-C", str(count), "-W", str(wait_s),
        limit_s=wait_s + 5,
    )  # fmt: skip
    lines = out.splitlines()
    assert rc == 0 and len(lines) == count, (
        f"rc={rc} got {len(lines)}/{count}: {out[-300:]!r} {err!r}"
    )
    return [tuple(line.split(" ", 1)) for line in lines]  # type: ignore[misc]


async def retained(port: int, topic: str, *extra: str) -> str | None:
    """The retained payload on ``topic`` as a late subscriber sees it (2 s at most), or None."""
    rc, out, _ = await run_cmd(*sub_args(port, topic), "-C", "1", "-W", "2", *extra)
    return out.rstrip("\n") if rc == 0 and out else None


async def publish_to(port: int, topic: str, payload: str, *extra: str) -> None:
    args = [find_binary("mosquitto_pub"), "-h", HOST, "-p", str(port), "-t", topic, "-m", payload]
    rc, _, err = await run_cmd(*args, "-q", "1", *extra)
    assert rc == 0, err


def endpoint(port: int, **kw: Any) -> MqttEndpoint:
    """These tests are about the in-memory path (max_queued, exact payloads without an id):
    no durable outbox unless a test asks for one (tests/test_outbox.py and the uplink tests)."""
    kw.setdefault("reconnect", FAST_BACKOFF)
    kw.setdefault("outbox", None)
    return MqttEndpoint(host=HOST, port=port, **kw)


def adapter(port: int, bus: Bus | None = None, name: str = "up", **kw: Any) -> MqttAdapter:
    return MqttAdapter(name, endpoint(port, **kw), AdapterContext(bus or Bus(), "gw1"))


@contextlib.asynccontextmanager
async def running(mqtt: MqttAdapter, *, connected: bool = True) -> AsyncIterator[MqttAdapter]:
    """``async with`` the adapter with ``run()`` as a task; cancelled (clean shutdown) at exit."""
    async with mqtt:
        task = asyncio.create_task(mqtt.run())
        try:
            if connected:
                async with asyncio.timeout(10):
                    await mqtt.wait_connected()
            yield mqtt
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert task.done()


def custom_broker(tmp_path: Path, extra: str, *, persistence: bool = False) -> MosquittoBroker:
    """A MosquittoBroker whose config replaces the default one (same port on restarts)."""
    broker = MosquittoBroker(mosquitto_binary(), tmp_path)
    lines = [f"listener {broker.port} {HOST}", "user root"]  # root: keep access to tmp files
    if persistence:
        lines += ["persistence true", f"persistence_location {tmp_path}/"]
    else:
        lines += ["persistence false"]
    lines += ["log_type error", "log_type warning", "log_type notice", extra]
    broker.config.write_text("\n".join(lines) + "\n")
    return broker


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[MosquittoBroker] = []

    def make(extra: str = "allow_anonymous true", *, persistence: bool = False) -> MosquittoBroker:
        directory = tmp_path / f"broker{len(made)}"
        directory.mkdir()
        broker = custom_broker(directory, extra, persistence=persistence)
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


# --- interop: what mosquitto_sub receives --------------------------------------------------------

MESSAGE = message(
    sample("temp", 21.5, unit="degC"),
    sample("running", True),
    sample("flow", None, Quality.BAD, reason="timeout"),
    seq=9,
)

EXPECTED = {
    "value": [
        ("plant/gw1/boiler/temp", "21.5"),
        ("plant/gw1/boiler/running", "true"),
        ("plant/gw1/boiler/flow", "null"),
    ],
    "sample": [
        (
            "plant/gw1/boiler/temp",
            '{"value":21.5,"quality":"good","ts":"2024-05-01T12:00:00.123Z","unit":"degC"}',
        ),
        (
            "plant/gw1/boiler/running",
            '{"value":true,"quality":"good","ts":"2024-05-01T12:00:00.123Z"}',
        ),
        (
            "plant/gw1/boiler/flow",
            '{"value":null,"quality":"bad","ts":"2024-05-01T12:00:00.123Z","reason":"timeout"}',
        ),
    ],
    "device": [
        (
            "plant/gw1/boiler",
            '{"device":"boiler","ts":"2024-05-01T12:00:00.123Z","seq":9,'
            '"values":{"temp":21.5,"running":true,"flow":null},"quality":{"flow":"bad"}}',
        ),
    ],
}


@pytest.mark.parametrize("mode", ["value", "sample", "device"])
async def test_mosquitto_sub_receives_exactly_what_we_publish(mosquitto: Any, mode: str) -> None:
    topic = "plant/{gateway}/{device}" if mode == "device" else "plant/{gateway}/{device}/{point}"
    route = MqttRoute(topic=topic, payload=mode, qos=1)  # type: ignore[arg-type]
    await create_session(mosquitto.port, f"sub-{mode}", "plant/#")
    async with running(adapter(mosquitto.port)) as mqtt:
        await mqtt.send(MESSAGE, route)
        await mqtt.send(message(sample("temp", 22.0), seq=10), route)
        await wait_for(lambda: mqtt.status()["acknowledged"] == len(EXPECTED[mode]) + 1)
        status = mqtt.status()
    got = await collect(mosquitto.port, f"sub-{mode}", "plant/#", count=len(EXPECTED[mode]) + 1)
    assert got[:-1] == EXPECTED[mode]
    last_topic, last_payload = got[-1]
    assert last_topic == "plant/gw1/boiler" + ("" if mode == "device" else "/temp")
    if mode == "value":
        assert last_payload == "22.0"
    else:
        assert '"temp":22.0' in last_payload or '"value":22.0' in last_payload
    assert status["published"] == status["acknowledged"] == len(EXPECTED[mode]) + 1
    assert status["queued"] == status["dropped"] == 0


async def test_qos0_retained_values_reach_a_late_subscriber(mosquitto: Any) -> None:
    route = MqttRoute(topic="plant/{device}/{point}", payload="value", qos=0, retain=True)
    async with running(adapter(mosquitto.port)) as mqtt:
        await mqtt.send(message(sample("a", 1), sample("b", 2.5), sample("c", "x")), route)
        rc, out, err = await run_cmd(
            *sub_args(mosquitto.port, "plant/#"), "-v", "-C", "3", "-W", "3"
        )
        assert mqtt.status()["acknowledged"] == 0  # QoS 0 has no acknowledgement
        assert mqtt.status()["published"] == 3
    assert rc == 0, err
    assert sorted(out.splitlines()) == [
        "plant/boiler/a 1",
        "plant/boiler/b 2.5",
        'plant/boiler/c "x"',
    ]


async def test_burst_larger_than_the_window_arrives_complete_and_in_order(
    broker_factory: Any,
) -> None:
    # mosquitto keeps at most max_queued_messages (default 1000) for an offline session
    mosquitto = broker_factory("allow_anonymous true\nmax_queued_messages 5000")
    route = MqttRoute(topic="plant/{device}/{point}", payload="value", qos=1)
    await create_session(mosquitto.port, "sub-burst", "plant/#")
    mqtt = adapter(mosquitto.port, max_queued=5000)
    mqtt.max_inflight = 50  # force the outbox/flusher path
    async with running(mqtt):
        for i in range(100):
            await mqtt.send(message(*(sample(f"p{j:02d}", i * 100 + j) for j in range(30))), route)
        assert mqtt.status()["queued"] > 0  # the window really was full
        await wait_for(lambda: mqtt.status()["acknowledged"] == 3000, timeout=10)
        assert mqtt.status()["inflight"] == 0 and mqtt.status()["dropped"] == 0
    got = await collect(mosquitto.port, "sub-burst", "plant/#", count=3000, wait_s=10)
    assert [int(payload) for _, payload in got] == [
        i * 100 + j for i in range(100) for j in range(30)
    ]


# --- birth, clean shutdown, last will ------------------------------------------------------------


async def test_birth_is_retained_and_clean_shutdown_publishes_offline(mosquitto: Any) -> None:
    async with running(adapter(mosquitto.port)) as mqtt:
        birth = await retained(mosquitto.port, STATUS)
        assert birth is not None
        assert json.loads(birth)["state"] == "online"
        assert json.loads(birth)["ts"].endswith("Z")
    assert not mqtt.status()["connected"]
    offline = await retained(mosquitto.port, STATUS)
    assert offline is not None
    body = json.loads(offline)
    assert body["state"] == "offline"
    # Ours, not the broker's last will (the will has no timestamp): the DISCONNECT was clean.
    assert "ts" in body


async def test_last_will_when_the_gateway_process_is_killed(mosquitto: Any, tmp_path: Path) -> None:
    script = tmp_path / "gw.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from gateway.adapter import AdapterContext
            from gateway.bus import Bus
            from protocols.mqtt.client import MqttAdapter
            from protocols.mqtt.config import MqttEndpoint

            async def main():
                endpoint = MqttEndpoint(host="{HOST}", port={mosquitto.port}, keepalive=60)
                mqtt = MqttAdapter("up", endpoint, AdapterContext(Bus(), "gw1"))
                async with mqtt:
                    task = asyncio.create_task(mqtt.run())
                    await mqtt.wait_connected()
                    print("ready", flush=True)
                    await task

            asyncio.run(main())
            """
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.strip() == b"ready", (line, await proc.stderr.read(2000))  # type: ignore[union-attr]
        birth = await retained(mosquitto.port, STATUS)
        assert birth is not None and json.loads(birth)["state"] == "online"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def will_published() -> bool:
        return await retained(mosquitto.port, STATUS) == '{"state":"offline"}'

    await wait_for(will_published, timeout=5, message="the broker to publish the last will")


# --- reconnect -----------------------------------------------------------------------------------


async def test_reconnects_after_broker_restart_with_birth_subscriptions_and_queued_in_order(
    broker_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    broker = broker_factory(persistence=True)  # keeps the test subscriber's session
    port = broker.port
    bus = Bus()
    commands = bus.subscribe("mqtt/#")
    route = MqttRoute(topic="plant/{device}/{point}", payload="value", qos=1)
    await create_session(port, "sub-restart", "plant/#")
    mqtt = adapter(port, bus, max_queued=5, subscriptions=[{"topic": "cmd/#"}])
    async with running(mqtt):
        await mqtt.send(message(sample("n", 0)), route)
        await wait_for(lambda: mqtt.status()["acknowledged"] == 1)
        birth1 = json.loads(await retained(port, STATUS) or "{}")
        assert birth1["state"] == "online"

        broker.stop()
        await wait_for(lambda: not mqtt.status()["connected"], message="the loss to be noticed")
        for i in range(1, 9):  # 8 publishes into an outbox of 5: 1, 2, 3 are dropped
            await mqtt.send(message(sample("n", i)), route)
        assert mqtt.status()["queued"] == 5
        assert mqtt.status()["dropped"] == 3
        await asyncio.sleep(0.3)  # a few failed attempts against the dead port
        assert mqtt.status()["last_error"] is not None

        broker.start()
        async with asyncio.timeout(10):
            await mqtt.wait_connected()
        await wait_for(lambda: mqtt.status()["acknowledged"] == 6)
        status = mqtt.status()
        assert status["reconnects"] == 1
        assert status["queued"] == 0 and status["dropped"] == 3

        birth2 = json.loads(await retained(port, STATUS) or "{}")
        assert birth2["state"] == "online"
        assert birth2["ts"] > birth1["ts"]  # a new birth, not the old retained one

        await publish_to(port, "cmd/valve", '{"value": 7}')  # re-subscribed after reconnect
        got = await asyncio.wait_for(commands.get(), 5)
        assert got.topic == "mqtt/up/cmd/valve" and got.samples[0].value == 7

    received = await collect(port, "sub-restart", "plant/#", count=6)
    assert received == [("plant/boiler/n", str(i)) for i in (0, 4, 5, 6, 7, 8)]
    drop_warnings = [r for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(drop_warnings) == 1  # once per outage
    assert all(r.exc_info is None for r in caplog.records)  # warnings, not tracebacks


async def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    port = free_port()
    route = MqttRoute(topic="plant/{device}/{point}", payload="value", qos=1)
    mqtt = adapter(port)
    async with running(mqtt, connected=False):  # __aenter__ must not need the broker
        await wait_for(lambda: mqtt.status()["last_error"])
        assert "refused" in mqtt.status()["last_error"]
        assert not mqtt.status()["connected"]
        await mqtt.send(message(sample("early", 1)), route)
        assert mqtt.status()["queued"] == 1
        broker = MosquittoBroker(mosquitto_binary(), tmp_path)
        broker.port = port
        broker.config.write_text(f"listener {port} {HOST}\nallow_anonymous true\n")
        broker.start()
        try:
            async with asyncio.timeout(10):
                await mqtt.wait_connected()
            await wait_for(lambda: mqtt.status()["acknowledged"] == 1)
            assert mqtt.status()["reconnects"] == 0  # first connection, not a reconnect
            assert mqtt.status()["last_error"] is None
        finally:
            broker.stop()


async def test_a_peer_that_never_sends_connack_times_out_and_is_retried() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    mqtt = adapter(port)
    mqtt.connect_timeout = 0.3
    try:
        async with running(mqtt, connected=False):
            await wait_for(lambda: len(accepted) >= 2, message="a second attempt")
            assert "sent no CONNACK within 0.3 s" in (mqtt.status()["last_error"] or "")
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_close_without_ever_connecting_is_quick(caplog: pytest.LogCaptureFixture) -> None:
    route = MqttRoute(topic="plant/{device}/{point}", payload="value", qos=1)
    mqtt = adapter(free_port())
    start = time.monotonic()
    async with running(mqtt, connected=False):
        await mqtt.send(message(sample("x", 1)), route)
        await asyncio.sleep(0.1)
    assert time.monotonic() - start < 3
    assert "1 publish not delivered" in caplog.text


# --- subscriptions -------------------------------------------------------------------------------


async def test_subscriptions_become_bus_messages_and_bad_payloads_are_counted(
    mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bus = Bus()
    inbox = bus.subscribe("mqtt/#")
    subs = [
        {"topic": "sensors/#"},
        {"topic": "raw/#", "payload": "raw"},
        {"topic": "text/+", "payload": "text", "qos": 0},
    ]
    async with running(adapter(mosquitto.port, bus, name="broker1", subscriptions=subs)) as mqtt:
        await publish_to(mosquitto.port, "sensors/line1/temp", '{"value": 21.5, "unit": "degC"}')
        first = await asyncio.wait_for(inbox.get(), 5)
        assert first.topic == "mqtt/broker1/sensors/line1/temp"
        assert first.kind is MessageKind.TELEMETRY
        assert first.origin == first.device == "broker1"
        (sample,) = first.samples
        assert (sample.point, sample.value, sample.quality) == ("sensors/line1/temp", 21.5, "good")
        assert abs(sample.source_ts - time.time()) < 5

        await publish_to(mosquitto.port, "sensors/line1/temp", "{oops")
        await wait_for(lambda: mqtt.status()["bad_payloads"] == 1)
        assert "sensors/line1/temp" in caplog.text and "invalid JSON" in caplog.text

        await publish_to(mosquitto.port, "sensors/line1/temp", "22")
        await publish_to(mosquitto.port, "raw/frame", "AB")
        await publish_to(mosquitto.port, "text/note", "hello world")
        later = [await asyncio.wait_for(inbox.get(), 5) for _ in range(3)]
        assert [m.samples[0].value for m in later] == [22, "4142", "hello world"]
        assert later[0].seq > first.seq
        status = mqtt.status()
        assert status["received"] == 5 and status["bad_payloads"] == 1
        assert status["connected"]


# --- authentication and TLS ----------------------------------------------------------------------


@pytest.fixture
def password_broker(broker_factory: Any, tmp_path: Path) -> MosquittoBroker:
    passwd = tmp_path / "passwd"
    subprocess.run(
        [find_binary("mosquitto_passwd"), "-b", "-c", str(passwd), "gateway", "s3cret"], check=True
    )
    return broker_factory(f"allow_anonymous false\npassword_file {passwd}")  # type: ignore[no-any-return]


async def test_right_password_connects(password_broker: MosquittoBroker) -> None:
    mqtt = adapter(password_broker.port, username="gateway", password="s3cret")
    async with running(mqtt):
        assert mqtt.status()["connected"]
    state = await retained(password_broker.port, STATUS, "-u", "gateway", "-P", "s3cret")
    assert json.loads(state or "{}")["state"] == "offline"


async def test_wrong_password_is_a_clear_error_retried_with_backoff(
    password_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    mqtt = adapter(password_broker.port, username="gateway", password="wrong")
    async with running(mqtt, connected=False):
        await wait_for(
            lambda: len([r for r in caplog.records if "refused the connection" in r.message]) >= 3,
            message="three refused attempts",
        )
        status = mqtt.status()
        assert not status["connected"]
        assert "refused the connection" in status["last_error"]
        assert "check username and password" in status["last_error"]
    assert all(r.exc_info is None for r in caplog.records)


TLS_EXT = """\
basicConstraints=CA:FALSE
subjectAltName=IP:127.0.0.1,DNS:localhost
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
"""
CLIENT_EXT = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    openssl = find_binary("openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=Protocol Brain Test CA")  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    run("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=gateway")
    (d / "ext.cnf").write_text(TLS_EXT)
    (d / "client.cnf").write_text(CLIENT_EXT)
    for name, ext in (("server", "ext.cnf"), ("client", "client.cnf")):
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext)  # fmt: skip
    names = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    return {name: d / name for name in names}


@pytest.fixture
def tls_broker(broker_factory: Any, tls_files: dict[str, Path]) -> MosquittoBroker:
    return broker_factory(  # type: ignore[no-any-return]
        "allow_anonymous true\n"
        f"cafile {tls_files['ca.crt']}\n"
        f"certfile {tls_files['server.crt']}\n"
        f"keyfile {tls_files['server.key']}\n"
    )


async def test_tls_with_ca_file_connects_and_carries_data_both_ways(
    tls_broker: MosquittoBroker, tls_files: dict[str, Path]
) -> None:
    bus = Bus()
    echo = bus.subscribe("mqtt/#", maxsize=10_000)
    route = MqttRoute(topic="plant/{device}/{point}", payload="value", qos=1)
    mqtt = adapter(
        tls_broker.port,
        bus,
        tls={"ca_file": str(tls_files["ca.crt"])},
        subscriptions=[{"topic": "plant/#"}],
    )
    async with running(mqtt):
        for i in range(20):  # many small packets: TLS records hold several, select() sees one
            await mqtt.send(message(*(sample(f"p{j}", i * 10 + j) for j in range(10))), route)
        await wait_for(lambda: len(echo) == 200, message="our own publishes back over TLS")
    values = [echo.get_nowait().samples[0].value for _ in range(200)]  # type: ignore[union-attr]
    assert values == list(range(200))


async def test_tls_without_the_ca_is_a_clear_certificate_error(
    tls_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    mqtt = adapter(tls_broker.port, tls={})  # default system trust: our test CA is unknown
    async with running(mqtt, connected=False):
        await wait_for(lambda: mqtt.status()["last_error"])
        error = mqtt.status()["last_error"]
        assert "TLS certificate of 127.0.0.1" in error and "rejected" in error
        assert "tls.ca_file" in error
        assert not mqtt.status()["connected"]
    assert all(r.exc_info is None for r in caplog.records)


async def test_tls_insecure_connects_without_the_ca_and_warns(
    tls_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    mqtt = adapter(tls_broker.port, tls={"insecure": True})
    async with running(mqtt):
        assert mqtt.status()["connected"]
    assert "NOT checked" in caplog.text


async def test_client_certificate_when_the_broker_requires_one(
    broker_factory: Any, tls_files: dict[str, Path]
) -> None:
    broker = broker_factory(
        "allow_anonymous true\nrequire_certificate true\n"
        f"cafile {tls_files['ca.crt']}\n"
        f"certfile {tls_files['server.crt']}\n"
        f"keyfile {tls_files['server.key']}\n"
    )
    ca = str(tls_files["ca.crt"])
    with_cert = adapter(
        broker.port,
        tls={
            "ca_file": ca,
            "cert_file": str(tls_files["client.crt"]),
            "key_file": str(tls_files["client.key"]),
        },
    )
    async with running(with_cert):
        assert with_cert.status()["connected"]
    without_cert = adapter(broker.port, tls={"ca_file": ca})
    async with running(without_cert, connected=False):
        await wait_for(lambda: without_cert.status()["last_error"])
        assert not without_cert.status()["connected"]
        assert "client certificate" in without_cert.status()["last_error"]


async def test_unreadable_tls_files_fail_at_enter(tmp_path: Path) -> None:
    mqtt = adapter(free_port(), tls={"ca_file": "/nonexistent/ca.pem"})
    with pytest.raises(MqttError, match="tls.ca_file /nonexistent/ca.pem: no such file"):
        async with mqtt:
            pass
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    mqtt = adapter(free_port(), tls={"ca_file": str(garbage)})
    with pytest.raises(MqttError, match="cannot load TLS files"):
        async with mqtt:
            pass


# --- contract details ----------------------------------------------------------------------------


async def test_send_rejects_a_foreign_route(mosquitto: Any) -> None:
    from pydantic import BaseModel

    class Other(BaseModel):
        x: int = 1

    async with running(adapter(mosquitto.port)) as mqtt:
        with pytest.raises(TypeError, match="MqttRoute"):
            await mqtt.send(message(sample("a", 1)), Other())


def test_client_id_and_status_topic_defaults() -> None:
    mqtt = adapter(1883)
    assert mqtt.client_id == "protocol-brain-gw1-up"
    assert mqtt.status_topic == STATUS
    custom = MqttAdapter(
        "up",
        endpoint(1883, client_id="me", status_topic="site/{gateway}/state"),
        AdapterContext(Bus(), "gw/1"),
    )
    assert custom.client_id == "me"
    assert custom.status_topic == "site/gw%2F1/state"


async def test_run_before_enter_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await adapter(1883).run()
