"""Sparkplug 2.2's STATE (``state_version``): ``ONLINE`` / ``OFFLINE`` as plain text on
``STATE/{host_id}``, retained, no timestamp. The edge node follows a 2.2 primary host (played by
mosquitto_pub), the host publishes 2.2's STATE (seen by mosquitto_sub), ``both`` publishes
each, and our host and node meet through mosquitto; the config, and the codec sans I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, started_mosquitto, wait_for
from sparkplug_peers import GROUP, NODE, running, write_config
from test_e2e_modbus_mqtt import Collector
from test_sparkplug_adapter import validate
from test_sparkplug_host import (
    CONFIG,
    Subscriber,
    _adapter,
    _Client,
    _message,
    _problems,
    _publish,
    _retained_text,
)
from test_sparkplug_templates import _config as host_config

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.sparkplug import codec
from protocols.sparkplug.codec import HostState, StateTopic
from protocols.sparkplug.config import SparkplugEndpoint, SparkplugHost
from protocols.sparkplug.node import SparkplugAdapter

STATE22, STATE30 = "STATE/scada", "spBv1.0/STATE/scada"
NBIRTH, NDEATH = f"spBv1.0/{GROUP}/NBIRTH/{NODE}", f"spBv1.0/{GROUP}/NDEATH/{NODE}"

# --- the codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "online"),
    [(b"ONLINE", True), (b"OFFLINE", False), (b" ONLINE\n", True), (b"\tOFFLINE\r\n", False)],
)
def test_a_2_2_state_is_online_or_offline_in_capitals_without_a_timestamp(
    data: bytes, online: bool
) -> None:
    assert codec.decode_state_2_2(data) == HostState(online, None)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"online": true, "timestamp": 1}', "Sparkplug 3.0's STATE"),
        (b"online", "'online', not ONLINE or OFFLINE"),  # the 2.2 strings are in capitals
        (b"ONLINE!", "not ONLINE or OFFLINE"),
        (b"", "'', not ONLINE or OFFLINE"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * 100, "'" + "x" * 40 + "...'"),
    ],
)
def test_anything_else_on_the_2_2_topic_says_why(data: bytes, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        codec.decode_state_2_2(data)
    assert why in str(caught.value)


def test_a_state_topic_is_one_version_and_both_is_3_0_first() -> None:
    new, old = codec.state_topics("scada", "both")
    assert (new.topic, old.topic) == (STATE30, STATE22)
    assert new.stamped and not old.stamped
    assert old.encode(True, 5) == b"ONLINE" and old.encode(False, 5) == b"OFFLINE"
    assert new.decode(new.encode(False, 5)) == HostState(False, 5)
    assert old.decode(b"OFFLINE") == HostState(False, None)
    assert codec.state_topics("scada", "2.2") == (StateTopic("scada", "2.2"),)
    with pytest.raises(ValueError, match="host_id"):
        StateTopic("sca/da", "2.2")
    with pytest.raises(ValueError, match="unknown STATE version '2.1'"):
        StateTopic("scada", "2.1")
    with pytest.raises(ValueError, match="timestamp"):
        codec.encode_state(HostState(True, None))


# --- the config ---------------------------------------------------------------------------------


def _node_config(entry: str) -> Any:
    """A Sparkplug edge node ``sp`` with these lines (4 spaces in), loaded."""
    return load_config_text(
        f"""
gateway: {{name: gw}}
devices:
  plc: {{protocol: modbus, host: {HOST}, port: 5020, points: [{{name: t, address: 0}}]}}
endpoints:
  sp: {{protocol: sparkplug, host: {HOST}, group: g1}}
bridges:
  - {{name: up, from: plc, to: sp}}
""".replace("group: g1}", "group: g1, " + entry + "}")
    )


def _host_config(entry: str) -> Any:
    """`test_sparkplug_host`'s host entry ``spb`` with these lines (4 spaces in), loaded."""
    return load_config_text(CONFIG.format(host=entry, bridges="  - {name: up, from: spb, to: out}"))


@pytest.mark.parametrize(("written", "read"), [("2.2", "2.2"), ("3.0", "3.0"), ("'2.2'", "2.2")])
def test_state_version_written_unquoted_is_read_as_the_text_it_was(written: str, read: str) -> None:
    node = _node_config(f"primary_host: scada, state_version: {written}")
    assert node.devices["sp"].config.state_version == read
    host = _host_config(f"    host_id: scada\n    state_version: {written}")
    assert host.devices["spb"].config.state_version == read
    both = _host_config("    host_id: scada\n    state_version: both")
    assert both.devices["spb"].config.state_version == "both"
    # the default is 3.0: what the entries did before state_version
    assert SparkplugEndpoint(host=HOST, group="g1").state_version == "3.0"
    assert SparkplugHost(host=HOST, group="g1").state_version == "3.0"


@pytest.mark.parametrize(
    ("load", "said"),
    [
        (lambda: _node_config("primary_host: scada, state_version: 2.1"), "found '2.1'"),
        (lambda: _node_config("primary_host: scada, state_version: 2"), "found 2"),
        (lambda: _node_config("primary_host: scada, state_version: both"), "found 'both'"),
        (
            lambda: _host_config("    host_id: scada\n    state_version: '3'"),
            "found '3'; expected one of '3.0', '2.2', 'both'",
        ),
    ],
)
def test_a_state_version_that_is_none_is_refused(load: Callable[[], Any], said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load()
    assert f".state_version: {said}" in str(caught.value)
    assert "expected one of '3.0', '2.2'" in str(caught.value)


def test_the_json_schema_takes_an_unquoted_version_too() -> None:
    """An editor checking the YAML against the schema takes ``state_version: 2.2`` as the
    loader does."""
    for model, versions in [
        (SparkplugEndpoint, ["3.0", "2.2", 3.0, 2.2]),
        (SparkplugHost, ["3.0", "2.2", "both", 3.0, 2.2]),
    ]:
        field = model.model_json_schema()["properties"]["state_version"]
        assert field["enum"] == versions and "type" not in field


def test_a_state_version_without_its_host_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        _node_config("state_version: 2.2")
    assert "sp.state_version: found state_version without primary_host" in str(caught.value)
    assert _problems("    state_version: 2.2") == [
        "devices.spb.state_version: state_version without host_id; host_id: ID beside it"
        " (the STATE version is that host's), or no state_version"
    ]


def test_gateway_validate_says_where_a_state_version_is_wrong(tmp_path: Path) -> None:
    done = validate(tmp_path, "    group: g1\n    primary_host: scada\n    state_version: 2.2")
    assert done.returncode == 0, done.stdout + done.stderr
    for endpoint, found in [
        ("    group: g1\n    state_version: 2.2", "state_version without primary_host"),
        (
            "    group: g1\n    primary_host: scada\n    state_version: 22",
            "found 22; expected one of '3.0', '2.2'",
        ),
    ]:
        done = validate(tmp_path, endpoint)
        out = done.stdout + done.stderr
        assert done.returncode == 1, out
        assert "endpoints.ignition.state_version" in out and found in out
        assert "Traceback" not in out


# --- sans broker: what is read, answered and logged ----------------------------------------------


def _node(**config: Any) -> SparkplugAdapter:
    endpoint = SparkplugEndpoint(host=HOST, group="g1", primary_host="scada", **config)
    return SparkplugAdapter("node", endpoint, AdapterContext(Bus(), "gw"))


async def test_a_2_2_node_reads_the_text_and_says_a_flood_of_bad_states_in_two_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.sparkplug.node")
    node = _node(state_version="2.2")
    for data in (b"nope", b'{"online": true, "timestamp": 1}', b"online"):
        node._on_message(None, None, _message(STATE22, data))
    host = node.status()["primary_host"]
    assert (host["bad_states"], host["online"], host["state_version"]) == (3, False, "2.2")
    node._on_message(None, None, _message(STATE22, b"ONLINE"))
    node._on_message(None, None, _message(STATE22, b"OFFLINE"))
    node._on_message(None, None, _message(STATE22, b"ONLINE"))  # no timestamp: none is stale
    host = node.status()["primary_host"]
    assert (host["online"], host["timestamp"], host["stale_states"]) == (True, None, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "unreadable STATE of primary host scada" in lines[0]
    await node.close()  # the window's count, said at close
    assert "2 more unreadable STATEs" in caplog.records[-1].getMessage()


async def test_the_hosts_warnings_are_one_line_then_a_count_said_at_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.sparkplug.host")
    adapter = _adapter()
    for _ in range(4):
        adapter._on_message(None, None, _message("spBv1.0/plant1/NBIRTH/E1", b"\xff\xff"))
    assert adapter.status()["bad_payloads"] == 4
    assert len(caplog.records) == 1
    assert "unreadable NBIRTH on spBv1.0/plant1/NBIRTH/E1" in caplog.records[0].getMessage()
    await adapter.close()
    assert len(caplog.records) == 2
    assert "3 more such warnings" in caplog.records[1].getMessage()


async def test_a_host_with_both_answers_an_offline_on_that_topic_only() -> None:
    """An OFFLINE on 2.2's topic is answered by ONLINE there only (a 3.0 online said again
    would outdate its will for nothing), at most once per interval as 3.0's; offline on both
    topics within the interval, both are answered when it is over."""
    adapter = _adapter(host_id="scada", state_version="both")
    client = adapter._client = _Client()
    adapter._loop = asyncio.get_running_loop()
    adapter._connected = True
    adapter._state_ts = 1_000
    adapter.state_every_s = 0.3
    assert adapter.status()["state_version"] == "both"
    adapter._on_message(None, None, _message(STATE22, b"ONLINE"))  # its own, back
    adapter._on_message(None, None, _message(STATE22, b"OFFLINE", retain=True))  # held before
    adapter._on_message(None, None, _message(STATE22, b'{"online": false, "timestamp": 1}'))
    assert client.published == [] and adapter.bad_payloads == 1
    for _ in range(3):  # a burst: answered at once, then once more after the interval
        adapter._on_message(None, None, _message(STATE22, b"OFFLINE"))
    assert client.published == [(STATE22, "ONLINE", 1, True)]
    assert adapter._state_ts == 1_000  # 3.0's untouched
    # 3.0's offline within the interval too: answered with 2.2's, on its own topic, newer
    adapter._on_message(None, None, _message(STATE30, b'{"online": false, "timestamp": 1000}'))
    await wait_for(lambda: len(client.published) == 3, timeout=5, message="the second round")
    (topic, said, qos, retain), again = client.published[1:]
    assert (topic, said["online"], qos, retain) == (STATE30, True, 1, True)
    assert said["timestamp"] > 1_000 and again == (STATE22, "ONLINE", 1, True)
    assert adapter.state_republished == 3
    # a clean stop: offline on both, 3.0's with the timestamp of its last online
    assert adapter._last_words() == [
        (STATE30, codec.encode_state(HostState(False, said["timestamp"])), True),
        (STATE22, b"OFFLINE", True),
    ]


# --- the edge node with a 2.2 primary host, through mosquitto ------------------------------------


@pytest.fixture
async def plc(simulator: Simulator) -> SimulatedDevice:
    device = await simulator.add_device()
    device.set_registers("holding", 0, [7])
    return device


def _node_yaml(
    path: Path, plc: SimulatedDevice, *brokers: MosquittoBroker, wait: float = 30
) -> str:
    """`sparkplug_peers.write_config`'s edge node, following primary host scada's 2.2 STATE
    (written unquoted) on ``brokers`` in turn."""
    first, *others = brokers
    failover = ", ".join(f"{{host: {b.host}, port: {b.port}}}" for b in others)
    lines = ["primary_host: scada", f"primary_host_wait: {wait}", "state_version: 2.2"]
    more = "".join(f"    {line}\n" for line in [*lines, f"failover: [{failover}]"])
    return write_config(path, first.port, plc, more=more).read_text()


@contextlib.asynccontextmanager
async def _gateway(text: str) -> AsyncIterator[Gateway]:
    gateway = Gateway(load_config_text(text))
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)


def _node_status(gateway: Gateway) -> dict[str, Any]:
    return dict(gateway.status()["adapters"]["ignition"])


def _primary(gateway: Gateway) -> dict[str, Any]:
    return dict(_node_status(gateway)["primary_host"])


def _bd_seq(payload: bytes) -> Any:
    return next(m.value for m in codec.decode_payload(payload).metrics if m.name == "bdSeq")


async def test_a_2_2_node_births_on_online_ends_on_offline_and_ignores_other_words(
    tmp_path: Path, plc: SimulatedDevice, mosquitto: MosquittoBroker
) -> None:
    port = mosquitto.port
    seen = Collector(mosquitto)
    try:
        async with _gateway(_node_yaml(tmp_path / "gw.yaml", plc, mosquitto)) as gateway:
            await wait_for(lambda: _primary(gateway)["waiting"], 10, message="waiting")
            node = _node_status(gateway)
            assert node["connected"] is False and "STATE on STATE/scada" in node["last_error"]
            assert _primary(gateway)["state_version"] == "2.2"
            # 3.0's online is not this node's (not even read), nor are other words on 2.2's
            # topic: counted, ignored. Each publish is done before the next starts, and the
            # broker delivers in order, so the last count says the 3.0 STATE went by first.
            await _publish(port, STATE30, '{"online": true, "timestamp": 1}', "-r")
            await _publish(port, STATE22, "online")
            await _publish(port, STATE22, '{"online": true, "timestamp": 1}')
            await _publish(port, STATE22, "ONLINE please")
            await wait_for(lambda: _primary(gateway)["bad_states"] == 3, 10, message="bad")
            assert _primary(gateway)["waiting"] and not seen.on(NBIRTH)
            # ONLINE, retained as a 2.2 host keeps it: the births
            await _publish(port, STATE22, "ONLINE", "-r")
            await wait_for(lambda: seen.on(NBIRTH), 10, message="the NBIRTH")
            await wait_for(
                lambda: seen.on(f"spBv1.0/{GROUP}/DBIRTH/{NODE}/plc"), 10, message="DBIRTH"
            )
            assert _primary(gateway)["online"] is True and _primary(gateway)["timestamp"] is None
            bd_seq = _bd_seq(seen.on(NBIRTH)[0])
            # OFFLINE (the host's will, retained): NDEATH, a new session waiting again
            await _publish(port, STATE22, "OFFLINE", "-r")
            ndeath = await wait_for(lambda: seen.on(NDEATH), 10, message="the NDEATH")
            assert _bd_seq(ndeath[0]) == bd_seq
            await wait_for(
                lambda: _primary(gateway)["sessions_ended"] == 1 and _primary(gateway)["waiting"],
                10,
                message="a new session, waiting",
            )
            # ONLINE again (a shell's newline around it is fine): born again
            await _publish(port, STATE22, "ONLINE\n", "-r")
            await wait_for(lambda: len(seen.on(NBIRTH)) == 2, 10, message="the second NBIRTH")
            assert _primary(gateway)["bad_states"] == 3
    finally:
        seen.close()


async def test_a_2_2_node_walks_to_the_broker_where_its_host_says_online(
    plc: SimulatedDevice, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with started_mosquitto(tmp_path / "a") as a, started_mosquitto(tmp_path / "b") as b:
        await _publish(b.port, STATE22, "ONLINE", "-r")  # a says nothing
        on_a, on_b = Collector(a), Collector(b)
        try:
            async with _gateway(_node_yaml(tmp_path / "gw.yaml", plc, a, b, wait=0.5)) as gateway:
                await wait_for(lambda: on_b.on(NBIRTH), 15, message="born on b")
                assert not on_a.on(NBIRTH), "no birth where the host says nothing"
                # the host moves to a: online there, then its will on b
                await _publish(a.port, STATE22, "ONLINE", "-r")
                await _publish(b.port, STATE22, "OFFLINE", "-r")
                await wait_for(lambda: on_b.on(NDEATH), 10, message="its death on b")
                await wait_for(lambda: on_a.on(NBIRTH), 15, message="born on a")
                node = _node_status(gateway)
                assert node["broker"] == f"{a.host}:{a.port}" and node["failovers"] >= 2
        finally:
            on_a.close()
            on_b.close()


# --- the host publishing 2.2's STATE: `gateway run` -----------------------------------------------


def _host_yaml(path: Path, port: int, version: str) -> Path:
    """`test_sparkplug_templates`' host (primary host scada of plant1, learnt points published
    to out/{point}) with ``state_version: version``, unquoted."""
    text = host_config(path, port).read_text()
    path.write_text(text.replace("host_id: scada", f"host_id: scada\n    state_version: {version}"))
    return path


async def _run(
    config: Path,
    up: Callable[[], bool],
    then: Callable[[], Awaitable[None]] | None = None,
    *,
    kill: bool = False,
) -> None:
    """`gateway run` ``config`` until ``up()``, ``then()``; then a clean stop (SIGTERM, exit
    status 0), or with ``kill`` SIGKILL."""
    async with running(config) as proc:
        await wait_for(up, 20, message="online")
        if then is not None:
            await then()
        if kill:
            proc.kill()
            await proc.wait()
        else:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0


@pytest.fixture
def states(mosquitto: MosquittoBroker) -> Iterator[Subscriber]:
    """mosquitto_sub on primary host scada's STATE topics, 2.2's and 3.0's."""
    sub = Subscriber(mosquitto.port, STATE22, STATE30)
    yield sub
    sub.close()


async def test_a_2_2_host_says_online_answers_offline_and_leaves_offline(
    tmp_path: Path, mosquitto: MosquittoBroker, states: Subscriber
) -> None:
    port = mosquitto.port
    config = _host_yaml(tmp_path / "gw.yaml", port, "2.2")
    said = lambda: states.texts(STATE22)  # noqa: E731

    async def answered() -> None:
        assert await _retained_text(port, STATE22) == "ONLINE"
        # another client says OFFLINE (not retained): answered by ONLINE, retained
        await _publish(port, STATE22, "OFFLINE")
        await wait_for(lambda: len(said()) == 3, 10, message="ONLINE again")
        assert said() == ["ONLINE", "OFFLINE", "ONLINE"]
        assert await _retained_text(port, STATE22) == "ONLINE"

    await _run(config, lambda: said() == ["ONLINE"], answered)
    # a clean stop says OFFLINE itself, retained
    await wait_for(lambda: len(said()) == 4, 10, message="OFFLINE")
    assert said()[3] == "OFFLINE" and await _retained_text(port, STATE22) == "OFFLINE"
    assert states.texts(STATE30) == []  # no 3.0 STATE from a 2.2 host
    # killed: the broker publishes its will, OFFLINE, retained
    await _run(config, lambda: len(said()) == 5, kill=True)
    await wait_for(lambda: len(said()) == 6, 10, message="the will")
    assert said()[4:] == ["ONLINE", "OFFLINE"]
    assert await _retained_text(port, STATE22) == "OFFLINE"


async def test_a_host_with_both_says_each_and_its_will_is_3_0s(
    tmp_path: Path, mosquitto: MosquittoBroker, states: Subscriber
) -> None:
    config = _host_yaml(tmp_path / "gw.yaml", mosquitto.port, "both")
    old, new = lambda: states.texts(STATE22), lambda: states.on(STATE30)  # noqa: E731
    await _run(config, lambda: old() == ["ONLINE"] and len(new()) == 1)
    await wait_for(lambda: len(old()) == 2 and len(new()) == 2, 10, message="both offline")
    assert new()[0]["online"] is True
    assert (old()[1], new()[1]) == (
        "OFFLINE",
        {"online": False, "timestamp": new()[0]["timestamp"]},
    )
    # killed: each version's will, 3.0's from the host's connection, 2.2's from the second
    # one that carries it (protocols/sparkplug/statewill.py)
    await _run(config, lambda: len(old()) == 3 and len(new()) == 3, kill=True)
    await wait_for(lambda: len(new()) == 4 and len(old()) == 4, 10, message="the wills")
    assert [m["online"] for m in new()[2:]] == [True, False]
    assert old()[2:] == ["ONLINE", "OFFLINE"]
    assert await _retained_text(mosquitto.port, STATE22) == "OFFLINE"


HOST_ID = "protocol-brain-gw-templates-spb"  # the test host's client id (its default)


async def test_with_both_the_2_2_will_follows_the_hosts_session_and_comes_back_when_lost(
    tmp_path: Path, mosquitto: MosquittoBroker, states: Subscriber
) -> None:
    """The host's session ends (another client takes its client id): 2.2's will connection
    says OFFLINE and ends with it, the next session says ONLINE. The will's connection alone
    is taken over: its will fires, the host says ONLINE again, and it reconnects, so a crash
    after that still says OFFLINE."""
    port = mosquitto.port
    config = _host_yaml(tmp_path / "gw.yaml", port, "both")
    old = lambda: states.texts(STATE22)  # noqa: E731

    async def sessions() -> None:
        await _publish(port, "test/takeover", "x", "-i", HOST_ID)  # the host's session ends
        await wait_for(lambda: old()[-1:] == ["ONLINE"] and len(old()) >= 3, 20, message="again")
        assert old()[:3] == ["ONLINE", "OFFLINE", "ONLINE"]
        assert await _retained_text(port, STATE22) == "ONLINE"
        seen, will = len(old()), f"{HOST_ID}-will22"
        connects = lambda: mosquitto.log.read_text().count(f" as {will} ")  # noqa: E731
        before = connects()
        await _publish(port, "test/takeover", "x", "-i", will)  # the will's own connection
        await wait_for(lambda: len(old()) >= seen + 2, 20, message="its will, then online")
        assert old()[seen : seen + 2] == ["OFFLINE", "ONLINE"]
        assert await _retained_text(port, STATE22) == "ONLINE"
        # mosquitto_pub's connection counts once; then the will's connection is back
        await wait_for(lambda: connects() >= before + 2, 20, message="the will reconnected")

    await _run(config, lambda: old() == ["ONLINE"], sessions, kill=True)
    await wait_for(lambda: old()[-1] == "OFFLINE", 10, message="the 2.2 will after the kill")
    assert await _retained_text(port, STATE22) == "OFFLINE"


async def test_our_2_2_host_and_our_2_2_node_meet_through_mosquitto(
    tmp_path: Path, plc: SimulatedDevice, mosquitto: MosquittoBroker
) -> None:
    """The node waits for the host's ONLINE, births, and the host reads its metric; the host
    killed, its will ends the node's session."""
    seen = Collector(mosquitto)
    try:
        async with _gateway(_node_yaml(tmp_path / "gw.yaml", plc, mosquitto)) as gateway:
            await wait_for(lambda: _primary(gateway)["waiting"], 10, message="waiting")
            assert not seen.on(NBIRTH)
            async with running(_host_yaml(tmp_path / "host.yaml", mosquitto.port, "2.2")) as proc:
                await wait_for(lambda: seen.on(NBIRTH), 20, message="the NBIRTH")
                assert seen.on(STATE22)[-1] == b"ONLINE"  # before the births: it let them out
                value = await wait_for(
                    lambda: seen.last(f"out/{NODE}.plc.temp"), 20, message="read"
                )
                assert value["value"] == 7 and value["quality"] == "good"
                proc.kill()
                await proc.wait()
                await wait_for(lambda: seen.on(NDEATH), 10, message="the node's NDEATH")
            await wait_for(lambda: _primary(gateway)["waiting"], 10, message="waiting again")
            assert _primary(gateway)["sessions_ended"] == 1
    finally:
        seen.close()
