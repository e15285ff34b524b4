"""A reload (SIGHUP) keeps the parts whose settings did not change running, with their
connections, and restarts only what changed (`gateway.handover`).

The plan is checked on loaded configs; the running behaviour on a real ``gateway run``
subprocess fed by a real mosquitto (mosquitto_pub), whose Modbus TCP server is read over one
raw TCP connection held across the reloads: kept, it answers on it; restarted, it closes it."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    HOST,
    MosquittoBroker,
    find_binary,
    free_port,
    port_open,
    reaped,
    wait_for,
)

from gateway import handover
from gateway.config import GatewayConfig, load_config
from gateway.runtime import Carried

LOG_WAIT = 30.0


def _config(
    broker: tuple[str, int],
    mb: int,
    *,
    extra_endpoint: str = "",
    extra_bridge: str = "",
    address: int = 0,
    sensor_extra: str = "",
    name: str = "rl",
    log_level: str = "info",
) -> str:
    host, port = broker
    return (
        f"gateway: {{name: {name}, status_interval: 0.5, log_level: {log_level}}}\n"
        "devices:\n"
        "  sensor:\n"
        "    protocol: mqtt\n"
        f"    host: {host}\n"
        f"    port: {port}\n"
        "    client_id: rl-sensor\n"
        f"    points: [{{name: t, topic: in/t, type: int16}}]{sensor_extra}\n"
        "endpoints:\n"
        f"  mb: {{protocol: modbus, role: server, host: {HOST}, port: {mb}}}\n"
        f"{extra_endpoint}"
        "bridges:\n"
        f"  - {{name: serve, from: sensor, to: mb, map: [{{point: t, address: {address}}}]}}\n"
        f"{extra_bridge}"
    )


def _second_server(port: int) -> tuple[str, str]:
    """An endpoint and a bridge a reload adds: a second Modbus server fed by the sensor."""
    return (
        f"  mb2: {{protocol: modbus, role: server, host: {HOST}, port: {port}}}\n",
        "  - {name: serve2, from: sensor, to: mb2, map: [{point: t, address: 3}]}\n",
    )


def _load(tmp_path: Path, text: str, file: str = "plant.yaml") -> GatewayConfig:
    path = tmp_path / file
    path.write_text(text)
    return load_config(path)


def _plan(old: GatewayConfig, new: GatewayConfig) -> handover.Plan:
    return handover.plan(old, handover.stamps(old), new, handover.stamps(new))


BROKER = (HOST, 1883)  # the plan tests connect to nothing
DEAD = free_port()  # a device that does not answer: one port for every config of a test


def test_the_same_config_keeps_everything_and_live_settings_restart_nothing(
    tmp_path: Path,
) -> None:
    old = _load(tmp_path, _config(BROKER, 5020))
    assert _plan(old, old).kept == {"sensor", "mb"}
    debug = _load(tmp_path, _config(BROKER, 5020, log_level="debug"), "debug.yaml")
    plan = _plan(old, debug)
    assert plan.kept == {"sensor", "mb"} and not plan.restarted
    renamed = _load(tmp_path, _config(BROKER, 5020, name="other"), "renamed.yaml")
    plan = _plan(old, renamed)
    assert not plan.kept
    assert plan.restarted == {n: "the gateway: section changed" for n in ("sensor", "mb")}


def test_a_new_bridge_to_a_new_endpoint_keeps_the_rest(tmp_path: Path) -> None:
    old = _load(tmp_path, _config(BROKER, 5020))
    endpoint, bridge = _second_server(5021)
    new = _load(
        tmp_path, _config(BROKER, 5020, extra_endpoint=endpoint, extra_bridge=bridge), "b.yaml"
    )
    plan = _plan(old, new)
    assert plan.kept == {"sensor", "mb"}
    assert plan.added == ("mb2",) and plan.removed == () and not plan.restarted
    assert plan.line() == "kept running: mb, sensor; new: mb2"
    back = _plan(new, old)  # and the way back removes it
    assert back.kept == {"sensor", "mb"} and back.removed == ("mb2",)


def test_a_changed_bridge_or_source_restarts_the_target(tmp_path: Path) -> None:
    old = _load(tmp_path, _config(BROKER, 5020))
    moved = _load(tmp_path, _config(BROKER, 5020, address=5), "moved.yaml")
    plan = _plan(old, moved)
    assert plan.kept == {"sensor"}  # the source's own settings are the same
    assert plan.restarted == {"mb": "bridge 'serve' into it changed"}
    source = _load(
        tmp_path, _config(BROKER, 5020, sensor_extra="\n    keepalive: 17"), "source.yaml"
    )
    plan = _plan(old, source)
    assert not plan.kept
    assert plan.restarted == {
        "sensor": "its settings changed",
        "mb": "source 'sensor' of bridge 'serve': its settings changed",
    }


def test_a_file_the_settings_name_counts_but_the_state_folder_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("PROTOCOL_BRAIN_STATE_DIR", str(state))
    ca = tmp_path / "ca.pem"
    ca.write_text("first\n")
    tls = "\n    tls: {ca_file: ca.pem}"
    text = _config(BROKER, 5020, sensor_extra=tls)
    old = _load(tmp_path, text)
    before = handover.stamps(old)
    (state / "outbox").mkdir(parents=True)
    (state / "outbox" / "sensor.db").write_text("the gateway's own")  # named by no setting
    assert handover.plan(old, before, old, handover.stamps(old)).kept == {"sensor", "mb"}
    # An outbox on a disk of its own is the part's own state too, wherever it is.
    spool = tmp_path / "spool"
    spool.mkdir()
    outbox = f"\n    outbox: {{path: '{spool}/outbox-{{name}}.db'}}"
    spooled = _load(tmp_path, _config(BROKER, 5020, sensor_extra=outbox), "spool.yaml")
    spooled_before = handover.stamps(spooled)
    (spool / "outbox-sensor.db").write_bytes(b"a backlog written while it ran")
    assert handover.plan(spooled, spooled_before, spooled, handover.stamps(spooled)).kept == {
        "sensor",
        "mb",
    }
    ca.write_text("second, longer\n")  # a renewed CA bundle
    plan = handover.plan(old, before, old, handover.stamps(old))
    assert plan.kept == set()
    assert plan.restarted["sensor"] == f"{ca} changed"

    # A trust list inside the state folder counts, the rest of a state folder does not; the
    # OPC UA server reads its trust list live (`Strict.live_paths`): it is kept, its client not.
    text = (
        "gateway: {name: rl}\n"
        "devices:\n"
        "  uac: {protocol: opcua, url: 'opc.tcp://127.0.0.1:4842',"
        " points: [{name: p, node_id: 'ns=2;i=2'}]}\n"
        "endpoints:\n"
        f"  uas: {{protocol: opcua, role: server, host: {HOST}, port: 4841,"
        " security: {allow_none: true}, anonymous: true}\n"
    )
    opcua = _load(tmp_path, text, "opcua.yaml")
    before = handover.stamps(opcua)
    for part in ("uas", "uac"):
        pki = state / "pki" / part
        (pki / "own").mkdir(parents=True)  # what a part makes at its first start
        (pki / "trusted").mkdir()
        (pki / "own" / "cert.der").write_bytes(b"made by the gateway")
    assert handover.plan(opcua, before, opcua, handover.stamps(opcua)).kept == {"uas", "uac"}
    for part in ("uas", "uac"):
        (state / "pki" / part / "trusted" / "peer.der").write_bytes(b"a peer the integrator trusts")
    plan = handover.plan(opcua, before, opcua, handover.stamps(opcua))
    assert plan.kept == {"uas"}
    assert plan.restarted == {"uac": f"{state / 'pki' / 'uac' / 'trusted'} changed"}


# -- a running gateway ------------------------------------------------------------------------


def _read_register(sock: socket.socket, address: int, tid: int) -> int | None:
    """Function 3, one holding register, on an open Modbus TCP connection; None for an
    exception response (0x0B: no reading yet)."""
    sock.sendall(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, address, 1))
    head = _recv(sock, 7)
    _tid, _proto, length, _unit = struct.unpack(">HHHB", head)
    body = _recv(sock, length - 1)
    if body[0] == 0x83:
        return None
    assert body[0] == 3, f"not a response to function 3: {body.hex()}"
    return int(struct.unpack(">h", body[2:4])[0])


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        data += chunk
    return data


def _publish(broker: MosquittoBroker, value: int) -> None:
    pub = find_binary("mosquitto_pub", "/usr/bin/mosquitto_pub")
    subprocess.run(
        [pub, "-h", broker.host, "-p", str(broker.port), "-t", "in/t", "-m", str(value), "-r"],
        check=True,
        timeout=10,
    )


def _until(check: Callable[[], bool], what: str, timeout: float = LOG_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _reads(sock: socket.socket, address: int, value: int) -> Callable[[], bool]:
    tid = iter(range(1, 60_000))

    def check() -> bool:
        return _read_register(sock, address, next(tid)) == value

    return check


@pytest.fixture
def gateway_run(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path) -> subprocess.Popen[str]:
        with open(config.with_suffix(".log"), "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True,
                env={**os.environ, "PROTOCOL_BRAIN_STATE_DIR": str(tmp_path / "state")},
            )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        with reaped(proc):
            pass


def _log(config: Path) -> str:
    return config.with_suffix(".log").read_text()


def _reload(proc: subprocess.Popen[str], config: Path, text: str, nth: int) -> None:
    """Write ``text`` to the config, SIGHUP, wait for the ``nth`` start to be running."""
    config.write_text(text)
    proc.send_signal(signal.SIGHUP)
    _until(
        lambda: _log(config).count("gateway rl running: ") >= nth, f"start #{nth}: {_log(config)}"
    )
    assert proc.poll() is None, _log(config)


def test_a_reload_keeps_an_unchanged_server_and_its_connections(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    gateway_run: Callable[[Path], subprocess.Popen[str]],
) -> None:
    mb, mb2 = free_port(), free_port()
    broker = (mosquitto.host, mosquitto.port)
    config = tmp_path / "plant.yaml"
    config.write_text(_config(broker, mb))
    proc = gateway_run(config)
    _until(lambda: port_open(HOST, mb), f"our Modbus server listens: {_log(config)}")
    with socket.create_connection((HOST, mb), timeout=5) as sock:
        _publish(mosquitto, 11)
        _until(_reads(sock, 0, 11), "the first value read over the held connection")

        # A reload that adds a second server and a bridge to it: mb and the sensor go on.
        endpoint, bridge = _second_server(mb2)
        added = _config(broker, mb, extra_endpoint=endpoint, extra_bridge=bridge)
        before_reloads = time.time()
        _reload(proc, config, added, 2)
        assert "reload: kept running: mb, sensor; new: mb2" in _log(config)
        _publish(mosquitto, 22)
        _until(_reads(sock, 0, 22), "a new value over the connection held across the reload")
        with socket.create_connection((HOST, mb2), timeout=5) as other:
            _until(_reads(other, 3, 22), "the added server serves the same reading")

        # A reload that changes mb's bridge restarts mb: the held connection is closed.
        moved = _config(broker, mb, address=5, extra_endpoint=endpoint, extra_bridge=bridge)
        _reload(proc, config, moved, 3)
        assert "restarted: mb (bridge 'serve' into it changed)" in _log(config)
        with pytest.raises(OSError):
            for tid in range(100):  # the server closed it: a read fails at once, or soon
                _read_register(sock, 5, tid)
                time.sleep(0.05)
    with socket.create_connection((HOST, mb), timeout=5) as fresh:
        _until(_reads(fresh, 5, 22), "the restarted server serves at the new address")
    status = tmp_path / "state" / "status" / "rl.json"
    _until(lambda: '"state":"running"' in status.read_text(), "the status file says running")
    started = json.loads(status.read_text())["started"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, _log(config)
    assert not port_open(HOST, mb) and not port_open(HOST, mb2), "a kept server outlived stop"
    assert "did not close cleanly" not in _log(config)
    # `gateway status` says "up" since the process started: reloads are no restarts
    assert started < before_reloads, (started, before_reloads)


def test_a_reload_that_cannot_start_leaves_the_kept_parts_running(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    gateway_run: Callable[[Path], subprocess.Popen[str]],
) -> None:
    mb = free_port()
    broker = (mosquitto.host, mosquitto.port)
    config = tmp_path / "plant.yaml"
    config.write_text(_config(broker, mb))
    proc = gateway_run(config)
    _until(lambda: port_open(HOST, mb), f"our Modbus server listens: {_log(config)}")
    with socket.socket() as taken, socket.create_connection((HOST, mb), timeout=5) as sock:
        taken.bind((HOST, 0))  # the added server's port is in use
        taken.listen()
        _publish(mosquitto, 7)
        _until(_reads(sock, 0, 7), "the first value")
        endpoint, bridge = _second_server(taken.getsockname()[1])
        config.write_text(_config(broker, mb, extra_endpoint=endpoint, extra_bridge=bridge))
        proc.send_signal(signal.SIGHUP)
        _until(lambda: "back to the one before" in _log(config), "the fall-back")
        _until(lambda: _log(config).count("gateway rl running: ") >= 2, "the old config runs again")
        assert proc.poll() is None, _log(config)
        _publish(mosquitto, 8)
        _until(_reads(sock, 0, 8), "the kept server answers on its held connection throughout")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, _log(config)
    assert not port_open(HOST, mb)


# -- in one process: the bus's latest readings, and kept parts fitted to another config ---------


async def test_the_bus_keeps_each_points_newest_sample_per_telemetry_topic() -> None:
    from gateway.bus import Bus
    from gateway.types import Message, MessageKind, Quality, Sample

    def sample(point: str, value: float | bool) -> Sample:
        return Sample(point, value, Quality.GOOD, 1.0, 1.0)

    bus = Bus()
    bus.publish_nowait(Message.telemetry("plc", (sample("a", 1),)))
    assert bus.last("telemetry/plc") is None  # only from keep_last on
    bus.keep_last()
    bus.publish_nowait(Message.telemetry("plc", (sample("a", 2), sample("b", 3))))
    newest = Message.telemetry("plc", (sample("a", 4),))
    bus.publish_nowait(newest)
    last = bus.last("telemetry/plc")
    assert last is not None
    assert {s.point: s.value for s in last.samples} == {"a": 4, "b": 3}
    assert last.seq > newest.seq and last.topic == "telemetry/plc"  # a message of its own
    assert bus.last("telemetry/other") is None
    # An MQTT client's own topics are telemetry too, but no device's: not kept.
    bus.publish_nowait(Message("mqtt/cloud/req/1", last.kind, (sample("x", 1),), origin="cloud"))
    assert bus.last("mqtt/cloud/req/1") is None
    # A device's events (an OPC UA client's alarms) come on its topic too, and are no reading.
    alarm = (sample("event.severity", 700), sample("event.active", True))
    bus.publish_nowait(Message("telemetry/plc", MessageKind.EVENT, alarm, "plc", device="plc"))
    last = bus.last("telemetry/plc")
    assert last is not None and last.kind is MessageKind.TELEMETRY
    assert {s.point: s.value for s in last.samples} == {"a": 4, "b": 3}
    bus.drop_last("telemetry/plc")  # its device stopped
    assert bus.last("telemetry/plc") is None


async def _reloaded(first: GatewayConfig, second: GatewayConfig) -> Carried | None:
    """Run ``first`` until started, then stop it for a reload to ``second``: what it hands on."""
    import asyncio

    from gateway.runtime import Gateway

    gateway = Gateway(first)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop, lambda: second))
    await asyncio.wait_for(gateway.started.wait(), 10)
    stop.set()
    await asyncio.wait_for(run, 30)
    return gateway.handed


def _servers(tmp_path: Path, ports: dict[str, int], file: str) -> GatewayConfig:
    lines = [f"  {n}: {{protocol: modbus, role: server, host: {HOST}, port: {p}}}" for n, p in ports.items()]  # fmt: skip
    return _load(tmp_path, "gateway: {name: rl}\nendpoints:\n" + "\n".join(lines) + "\n", file)


async def test_kept_parts_are_handed_on_and_fitted_to_the_config_that_runs_next(
    tmp_path: Path,
) -> None:
    import asyncio

    from gateway.runtime import Gateway

    a, b, b2, a2 = free_port(), free_port(), free_port(), free_port()
    first = _servers(tmp_path, {"mb1": a, "mb2": b}, "first.yaml")
    second = _servers(tmp_path, {"mb1": a, "mb2": b2}, "second.yaml")
    carried = await _reloaded(first, second)
    assert carried is not None and set(carried.parts.adapters) == {"mb1"}
    assert carried.config is second
    assert port_open(HOST, a) and not port_open(HOST, b), "mb1 kept, mb2 stopped"

    # Another config runs next (a reload during the start): what it would not keep stops.
    third = _servers(tmp_path, {"mb1": a2, "mb2": b2}, "third.yaml")
    await carried.narrow(third)
    assert not carried.parts.adapters and not port_open(HOST, a)
    with pytest.raises(ValueError, match="another config"):
        Gateway(second, carried=carried)
    nxt = Gateway(third, carried=carried)
    assert nxt.stamps is carried.stamps  # a kept part's files as the plan saw them
    stop = asyncio.Event()
    run = asyncio.create_task(nxt.run(stop))
    await asyncio.wait_for(nxt.started.wait(), 10)
    assert port_open(HOST, a2) and port_open(HOST, b2)
    stop.set()  # no reload to follow: everything stops
    await asyncio.wait_for(run, 30)
    assert nxt.handed is None
    assert not port_open(HOST, a2) and not port_open(HOST, b2)


def _plc_and_servers(tmp_path: Path, text: str, file: str) -> GatewayConfig:
    dead = DEAD  # the device is down: its points exist, nothing is read
    return _load(
        tmp_path,
        "gateway: {name: rl}\n"
        "devices:\n"
        f"  plc: {{protocol: modbus, host: {HOST}, port: {dead}, timeout: 0.2,"
        " points: [{name: t, address: 0}]}\n" + text,
        file,
    )


async def test_a_start_that_fails_leaves_no_queue_of_its_bridges_on_the_kept_bus(
    tmp_path: Path,
) -> None:
    import asyncio

    from gateway.runtime import Gateway, StartError

    mb1, mb2 = free_port(), free_port()
    endpoints = (
        f"endpoints:\n  mb1: {{protocol: modbus, role: server, host: {HOST}, port: {mb1}}}\n"
    )
    serve = "bridges:\n  - {name: serve, from: plc, to: mb1, map: [{point: t, address: 0}]}\n"
    first = _plc_and_servers(tmp_path, endpoints + serve, "first.yaml")
    (tmp_path / "folder").mkdir()  # a shadow store that cannot open: the start fails there
    second = _plc_and_servers(
        tmp_path,
        endpoints
        + f"  mb2: {{protocol: modbus, role: server, host: {HOST}, port: {mb2}}}\n"
        + serve
        + "  - {name: serve2, from: plc, to: mb2, map: [{point: t, address: 3}]}\n"
        + f"shadow: {{path: '{tmp_path / 'folder'}'}}\n",
        "second.yaml",
    )
    carried = await _reloaded(first, second)
    assert carried is not None and set(carried.parts.adapters) == {"plc", "mb1"}
    failing = Gateway(second, carried=carried)
    with pytest.raises(StartError, match="shadow store"):
        await asyncio.wait_for(failing.run(asyncio.Event()), 30)
    assert failing.handed is carried
    queues = [s.name for s in carried.bus.subscriptions()]
    assert not [q for q in queues if "serve2" in q], queues
    assert not port_open(HOST, mb2) and port_open(HOST, mb1)
    await carried.narrow(first)  # the fall-back
    back = Gateway(first, carried=carried)
    stop = asyncio.Event()
    run = asyncio.create_task(back.run(stop))
    await asyncio.wait_for(back.started.wait(), 10)
    stop.set()
    await asyncio.wait_for(run, 30)
    assert not port_open(HOST, mb1) and back.bus.subscriptions() == []


def _served_plc() -> str:
    """A Modbus server endpoint fed by the (dead) plc of `_plc_and_servers`."""
    return (
        f"endpoints:\n  mb1: {{protocol: modbus, role: server, host: {HOST}, port: {free_port()}}}\n"
        "bridges:\n  - {name: serve, from: plc, to: mb1, map: [{point: t, address: 0}]}\n"
    )


async def test_the_shadow_records_what_kept_sources_read_while_it_restarted(
    tmp_path: Path,
) -> None:
    from gateway.types import Message, Quality, Sample

    text = _served_plc() + f"shadow: {{path: '{tmp_path / 'shadow.db'}'}}\n"
    first = _plc_and_servers(tmp_path, text, "first.yaml")
    other = text.replace("shadow.db'}", "shadow.db', poll_interval: 0.25}")  # it restarts
    assert other != text
    second = _plc_and_servers(tmp_path, other, "second.yaml")
    carried = await _reloaded(first, second)
    assert carried is not None and carried.shadow_feed is not None
    # plc kept running: a reading it takes between the two shadow services
    reading = Sample("t", 42, Quality.GOOD, 5.0, 5.0)
    await carried.bus.publish(Message.telemetry("plc", (reading,)))
    await _shadow_records(second, carried, "t", 42)


async def _shadow_records(config: GatewayConfig, carried: Carried, point: str, value: int) -> None:
    """Run ``config`` with ``carried`` until its shadow reports ``value`` for plc's ``point``."""
    import asyncio

    from gateway.runtime import Gateway

    nxt = Gateway(config, carried=carried)
    stop = asyncio.Event()
    run = asyncio.create_task(nxt.run(stop))
    try:
        await asyncio.wait_for(nxt.started.wait(), 10)
        shadow = nxt.shadow
        assert shadow is not None

        def reported() -> bool:
            doc = shadow.state("plc")
            return doc is not None and doc.reported.get(point) == value

        await wait_for(reported, timeout=10, message=f"the shadow reports {point} = {value}")
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)


def test_a_reload_during_a_stop_or_a_start_is_not_lost() -> None:
    import asyncio

    from gateway.reload import RunSignals
    from gateway.sdnotify import Notifier

    class Named:  # a loaded config, as far as the signals look at one
        warnings = ()

        def __init__(self, name: str) -> None:
            self.name = name

        def __repr__(self) -> str:
            return self.name

    a, b, c = Named("A"), Named("B"), Named("C")
    configs = iter([a, b, c])

    async def main() -> list[object]:
        signals = RunSignals(lambda: next(configs), Notifier(None))  # type: ignore[arg-type,return-value]
        seen: list[object] = []
        signals.reload()  # A stops the running run ...
        seen.append(signals.take())  # ... which hands over to A
        signals.reload()  # B comes while that run stops
        seen.append(signals.next_run())  # A runs next, told to stop at once
        seen.append(signals.stop.is_set())
        seen.append(signals.next_run())  # that run stopped while starting: B, not taken
        signals.reload()  # C; then SIGTERM: no run follows
        signals.quit()
        seen.append(signals.take())
        seen.append(signals.next_run())
        return seen

    assert asyncio.run(main()) == [a, a, True, b, None, None]


async def test_a_reload_keeps_the_opcua_server_and_closes_only_clients_no_longer_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client removed from the server's trust list loses its connection at the reload, the
    other client's session goes on; before, the trust list's change restarted the server and
    every session dropped."""
    import asyncio

    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    from gateway.runtime import Gateway
    from protocols.opcua.pki import ensure_certificate

    monkeypatch.setenv("PROTOCOL_BRAIN_STATE_DIR", str(tmp_path / "state"))
    port = free_port()
    text = (
        "gateway: {name: rl}\n"
        "endpoints:\n"
        f"  uas: {{protocol: opcua, role: server, host: {HOST}, port: {port}, anonymous: true,"
        " security: {endpoints: [{policy: Basic256Sha256, mode: SignAndEncrypt}]}}\n"
    )
    first = _load(tmp_path, text, "first.yaml")
    trusted = tmp_path / "state" / "pki" / "uas" / "trusted"
    gateway = Gateway(first)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop, lambda: _load(tmp_path, text, "second.yaml")))
    await asyncio.wait_for(gateway.started.wait(), 10)
    server = gateway.adapters["uas"]

    clients = {}
    for who in ("kept", "dropped"):
        cert, key = await ensure_certificate(tmp_path / who, f"urn:test:{who}", "localhost")
        (trusted / f"{who}.der").write_bytes(cert.read_bytes())
        client = Client(f"opc.tcp://{HOST}:{port}/protocol-brain", timeout=5)
        client.application_uri = f"urn:test:{who}"
        await client.set_security(
            SecurityPolicyBasic256Sha256, str(cert), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt
        )  # fmt: skip
        await client.connect()
        clients[who] = client
    current_time = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)
    for client in clients.values():
        assert await client.get_node(current_time).read_value() is not None

    (trusted / "dropped.der").unlink()
    stop.set()  # the reload: the same config, a file in the trust list gone
    await asyncio.wait_for(run, 30)
    carried = gateway.handed
    assert carried is not None and carried.parts.adapters == {"uas": server}
    nxt = Gateway(carried.config, carried=carried)
    stop = asyncio.Event()
    run = asyncio.create_task(nxt.run(stop))
    await asyncio.wait_for(nxt.started.wait(), 10)
    try:
        assert await clients["kept"].get_node(current_time).read_value() is not None
        with pytest.raises((ConnectionError, TimeoutError, ua.UaError)):
            await clients["dropped"].get_node(current_time).read_value()
        assert server.status()["sessions"] == 1
        assert "closed the connection from 127.0.0.1: its certificate is no longer trusted" in (
            caplog.text
        )
    finally:
        await clients["kept"].disconnect()
        clients["dropped"].disconnect_socket()
        stop.set()
        await asyncio.wait_for(run, 30)


async def test_a_shadow_a_reload_adds_starts_with_what_kept_sources_last_read(
    tmp_path: Path,
) -> None:
    from gateway.types import Message, Quality, Sample

    text = _served_plc()
    first = _plc_and_servers(tmp_path, text, "first.yaml")
    shadow = f"shadow: {{path: '{tmp_path / 'shadow.db'}'}}\n"
    second = _plc_and_servers(tmp_path, text + shadow, "second.yaml")
    carried = await _reloaded(first, second)
    assert carried is not None and "plc" in carried.parts.adapters and not carried.shadow_feed
    # an on-change source's one reading while there is no shadow to record it (a point of its
    # own: the dead device's Bad readings of t come and go meanwhile)
    await carried.bus.publish(Message.telemetry("plc", (Sample("u", 42, Quality.GOOD, 5.0, 5.0),)))
    await _shadow_records(second, carried, "u", 42)


async def test_a_kept_adapters_reloaded_that_fails_or_hangs_is_logged_and_left(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from gateway import runtime
    from gateway.adapter import Adapter, AdapterContext
    from gateway.bus import Bus

    class Plugin(Adapter):
        def __init__(self, name: str, how: str) -> None:
            super().__init__(name, None, AdapterContext(Bus(), "rl"))
            self.how = how

        async def run(self) -> None:
            await asyncio.Event().wait()

        async def reloaded(self) -> None:
            if self.how == "raises":
                raise KeyError("trusted")
            await asyncio.sleep(60)

    monkeypatch.setattr(runtime, "RELOADED_TIMEOUT", 0.2)
    async with asyncio.timeout(5):
        await runtime._reloaded(Plugin("broken", "raises"))
        await runtime._reloaded(Plugin("slow", "hangs"))
    assert "broken: applying the reload: KeyError" in caplog.text
    assert "slow: applying the reload took over 0.2 s; left" in caplog.text


def _catches_sighup(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & 1 << (signal.SIGHUP - 1))
    return False


def test_a_reload_asked_while_the_config_still_loads_is_applied_not_fatal(
    tmp_path: Path, gateway_run: Callable[[Path], subprocess.Popen[str]]
) -> None:
    """A SIGHUP before the event loop's handler was installed ended the process (a soak run:
    exit -1 for a reload 0.2 s after the start). A large config keeps it loading a while."""
    points = ", ".join(f"{{name: p{i}, address: {i}}}" for i in range(250))
    devices = [
        f"  d{n}: {{protocol: modbus, host: {HOST}, port: {DEAD}, timeout: 0.2, points: [{points}]}}"
        for n in range(120)
    ]
    config = tmp_path / "plant.yaml"
    config.write_text("gateway: {name: rl}\ndevices:\n" + "\n".join(devices) + "\n")
    proc = gateway_run(config)
    deadline = time.monotonic() + 1.0  # the old code was still loading then (about 2 s)
    while not _catches_sighup(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)
    _until(lambda: "gateway rl running: " in _log(config) or proc.poll() is not None, "a start")
    assert proc.poll() is None, f"exit {proc.returncode}: {_log(config)}"
    _until(lambda: "reload: kept running: " in _log(config), f"the reload applied: {_log(config)}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, _log(config)
