"""Sparkplug B host application (``role: host``): the tracker's rules on hand-made messages,
the config, and a real `gateway run` reading an edge node we did not write (Eclipse Tahu's
sparkplug-client, tests/interop/node/sparkplug_edge.js) through a real mosquitto, served to
mbpoll by the gateway's Modbus server and published to an MQTT endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, find_binary, free_port, started_mosquitto, wait_for
from sparkplug_peers import Edge, Proxy, running
from test_simulator import mbpoll, mbpoll_read

from gateway.adapter import Adapter
from gateway.config import ConfigError, load_config_text
from gateway.testing import ProtocolConformance
from gateway.types import Quality
from protocols.sparkplug import SPEC as SPARKPLUG
from protocols.sparkplug import codec
from protocols.sparkplug.codec import DataType, Metric, Payload, PropertyValue, Topic
from protocols.sparkplug.config import HostPoint
from protocols.sparkplug.tracker import REBIRTH, HostTracker, learnt_name, quality_of

GROUP, NODE = "plant1", "E1"
Msg = dict[str, Any]

# --- the tracker --------------------------------------------------------------------------------


def _at(kind: str, device: str | None = None, node: str = NODE) -> Topic:
    return Topic(GROUP, kind, node, device)


def _nbirth(bd_seq: int = 0, seq: int = 0) -> Payload:
    return Payload(
        1000,
        (
            Metric("bdSeq", datatype=DataType.INT64, value=bd_seq),
            Metric(REBIRTH, 2, datatype=DataType.BOOLEAN, value=False),
            Metric("Temp", 1, datatype=DataType.DOUBLE, value=21.5),
        ),
        seq,
    )


def _dbirth(seq: int = 1) -> Payload:
    return Payload(
        2000,
        (
            Metric("Inputs/Speed", 10, 1500, DataType.FLOAT, 2.5),
            Metric("Setpoint", 11, datatype=DataType.INT32, value=-5),
            Metric("Mode", 12, datatype=DataType.STRING, value="auto"),
        ),
        seq,
    )


def _wire(payload: Payload, tracker: HostTracker, where: Topic) -> Payload:
    """Through the codec as a broker delivers it, datatypes looked up as the adapter does."""
    return codec.decode_payload(codec.encode_payload(payload), tracker.datatype(where))


def _born(**kwargs: Any) -> HostTracker:
    tracker = HostTracker(**kwargs)
    tracker.receive(_at("NBIRTH"), _nbirth(), 10.0)
    tracker.receive(_at("DBIRTH", "pump1"), _dbirth(), 10.0)
    return tracker


def _values(samples: tuple[Any, ...]) -> dict[str, Any]:
    return {s.point: s.value for s in samples}


def test_learnt_names_join_node_device_and_metric_folders() -> None:
    assert learnt_name("E1", "pump1", "Inputs/Speed") == "E1.pump1.Inputs.Speed"
    assert learnt_name("E1", None, "Temp") == "E1.Temp"
    assert learnt_name("line 2", "dev#", "a b//c") == "line_2.dev_.a_b._.c"
    assert learnt_name("-x", None, "y") == "_-x.y"


def test_births_name_points_and_data_by_alias_takes_the_births_datatype() -> None:
    tracker = HostTracker()
    out = tracker.receive(_at("NBIRTH"), _nbirth(), 10.0)
    assert _values(out.samples) == {"E1.Temp": 21.5}  # bdSeq and Node Control: not points
    assert out.samples[0].source_ts == 1.0 and out.samples[0].gateway_ts == 10.0
    out = tracker.receive(_at("DBIRTH", "pump1"), _dbirth(), 10.0)
    assert _values(out.samples) == {
        "E1.pump1.Inputs.Speed": 2.5,
        "E1.pump1.Setpoint": -5,
        "E1.pump1.Mode": "auto",
    }
    speed = next(s for s in out.samples if s.point == "E1.pump1.Inputs.Speed")
    assert speed.source_ts == 1.5  # the metric's own timestamp before the payload's
    # DDATA by alias only, without datatypes (as Ignition sends them): a negative Int32 comes
    # back signed only through the birth's datatype.
    where = _at("DDATA", "pump1")
    data = Payload(3000, (Metric(alias=11, value=-7 & 0xFFFFFFFF, datatype=DataType.UINT32),), 2)
    raw = codec.encode_payload(data).replace(bytes([0x20, DataType.UINT32]), b"")
    assert codec.decode_payload(raw).metrics[0].value is None  # no datatype, no value
    out = tracker.receive(where, codec.decode_payload(raw, tracker.datatype(where)), 11.0)
    assert _values(out.samples) == {"E1.pump1.Setpoint": -7}
    assert not out.rebirth and out.problem is None


def test_a_seq_gap_reads_the_data_and_asks_for_a_rebirth_once_per_interval() -> None:
    tracker = _born(rebirth_interval=5.0)
    where = _at("DDATA", "pump1")
    out = tracker.receive(where, Payload(3000, (Metric(alias=10, value=3.0),), 2), 11.0)
    assert not out.rebirth and _values(out.samples) == {"E1.pump1.Inputs.Speed": 3.0}
    out = tracker.receive(where, Payload(3000, (Metric(alias=10, value=4.0),), 5), 12.0)
    assert out.rebirth and "seq 5 after 2" in (out.problem or "")
    assert _values(out.samples) == {"E1.pump1.Inputs.Speed": 4.0}
    out = tracker.receive(where, Payload(3000, (Metric(alias=10, value=5.0),), 9), 13.0)
    assert not out.rebirth and out.problem is not None  # asked 1 s ago
    out = tracker.receive(where, Payload(3000, (Metric(alias=10, value=6.0),), 20), 17.5)
    assert out.rebirth
    assert tracker.seq_gaps == 3
    # the seq wraps after 255
    tracker.receive(where, Payload(3000, (Metric(alias=10, value=6.0),), 255), 30.0)
    out = tracker.receive(where, Payload(3000, (Metric(alias=10, value=7.0),), 0), 30.0)
    assert out.problem is None


def test_data_that_cannot_be_read_is_dropped_and_asks_for_a_rebirth() -> None:
    tracker = HostTracker(rebirth_interval=5.0)
    data = Payload(3000, (Metric(alias=10, value=3.0),), 7)
    out = tracker.receive(_at("DDATA", "pump1"), data, 10.0)  # the node never born here
    assert out.rebirth and out.samples == () and "not born" in (out.problem or "")
    tracker = _born()
    out = tracker.receive(_at("DDATA", "pump9"), Payload(3000, (), 2), 20.0)
    assert out.rebirth and "pump9" in (out.problem or "")  # a device not born
    out = tracker.receive(
        _at("DDATA", "pump1"),
        Payload(3000, (Metric(alias=99, value=1.0), Metric(alias=10, value=8.0)), 3),
        30.0,
    )
    assert out.rebirth and "alias 99" in (out.problem or "")
    assert _values(out.samples) == {"E1.pump1.Inputs.Speed": 8.0}  # the known one is read
    assert tracker.unknown_metrics == 1 and tracker.unborn == 1


def test_deaths_make_points_bad_and_an_old_sessions_ndeath_is_ignored() -> None:
    tracker = _born()
    out = tracker.receive(_at("NDEATH"), Payload(5000, (Metric("bdSeq", value=3),)), 20.0)
    assert out.samples == () and tracker.stale_deaths == 1  # the will of an older session
    out = tracker.receive(_at("DDEATH", "pump1"), Payload(5000, (), 2), 21.0)
    assert {s.point for s in out.samples} == {
        "E1.pump1.Inputs.Speed",
        "E1.pump1.Setpoint",
        "E1.pump1.Mode",
    }
    assert {(s.quality, s.reason) for s in out.samples} == {
        (Quality.BAD, "device offline (DDEATH)")
    }
    out = tracker.receive(_at("DDATA", "pump1"), Payload(5000, (Metric(alias=10, value=1),), 3), 22)
    assert out.rebirth and out.samples == ()  # dead until born again
    out = tracker.receive(_at("NDEATH"), Payload(5000, (Metric("bdSeq", value=0),)), 23.0)
    assert [(s.point, s.quality, s.reason) for s in out.samples] == [
        ("E1.Temp", Quality.BAD, "edge node offline (NDEATH)")
    ]  # pump1 was Bad already
    assert tracker.online() == {"E1": "offline"}


def test_quality_property_null_values_and_declared_points() -> None:
    assert quality_of(Metric(value=1.0)) is Quality.GOOD
    assert quality_of(Metric(value=None, is_null=True)) is Quality.BAD
    q = {"Quality": PropertyValue(DataType.INT32, 64)}
    assert quality_of(Metric(value=1.0, properties=q)) is Quality.UNCERTAIN
    q = {"Quality": PropertyValue(DataType.INT32, 12)}
    assert quality_of(Metric(value=1.0, properties=q)) is Quality.BAD
    declared = [
        HostPoint(name="speed", node=NODE, device="pump1", metric="Inputs/Speed", unit="rpm"),
        HostPoint(name="setpoint", node=NODE, device="pump1", metric="Setpoint", type="uint16"),
    ]
    tracker = _born(points=declared, learn=False)
    where = _at("DDATA", "pump1")
    data = Payload(3000, (Metric(alias=10, value=None, is_null=True), Metric(alias=11, value=9)), 2)
    out = tracker.receive(where, data, 11.0)
    got = {s.point: (s.value, s.quality, s.unit, s.reason) for s in out.samples}
    assert got == {
        "speed": (None, Quality.BAD, "rpm", "null value"),
        "setpoint": (9, Quality.GOOD, None, None),
    }
    # -5 in the birth did not fit the declared uint16: Bad, counted
    assert tracker.type_errors == 1
    assert tracker.learnt == set()  # learn: false


def test_learnt_points_stop_at_max_points_and_forget_lists_the_nodes_that_were_online() -> None:
    tracker = _born(max_points=2)
    assert tracker.learnt == {"E1.Temp", "E1.pump1.Inputs.Speed"}
    assert tracker.over_limit == 2
    assert tracker.forget() == [NODE]
    assert tracker.online() == {}
    out = tracker.receive(_at("NDATA"), Payload(3000, (Metric(alias=1, value=1.0),), 3), 40.0)
    assert out.rebirth  # not followed across a lost broker


def test_where_tells_a_write_what_the_birth_said() -> None:
    declared = [HostPoint(name="sp", node=NODE, device="pump1", metric="Setpoint", access="rw")]
    tracker = HostTracker(points=declared)
    point, known, online = tracker.where("sp")
    assert point.metric == "Setpoint" and known is None and not online
    tracker.receive(_at("NBIRTH"), _nbirth(), 10.0)
    tracker.receive(_at("DBIRTH", "pump1"), _dbirth(), 10.0)
    point, known, online = tracker.where("sp")
    assert online and known is not None and known.datatype is DataType.INT32
    with pytest.raises(KeyError):
        tracker.where("nope")


def test_state_payloads_round_trip() -> None:
    state = codec.HostState(True, 1700000000123)
    assert codec.encode_state(state) == b'{"online":true,"timestamp":1700000000123}'
    assert codec.decode_state(codec.encode_state(state)) == state


# --- config -------------------------------------------------------------------------------------

CONFIG = """
gateway: {{name: gw}}
devices:
  spb:
    protocol: sparkplug
    role: host
    host: 127.0.0.1
    group: plant1
{host}
endpoints:
  mb: {{protocol: modbus, role: server, port: 1502}}
  out: {{protocol: mqtt, host: 127.0.0.1}}
bridges:
{bridges}
"""


def _problems(host: str, bridges: str = "  - {name: up, from: spb, to: out}") -> list[str]:
    try:
        load_config_text(CONFIG.format(host=host, bridges=bridges), "host.yaml")
    except ConfigError as exc:
        return [f"{p.dotted}: {p.found}; {p.expected}" for p in exc.problems]
    return []


def test_config_of_a_host() -> None:
    assert _problems("    host_id: scada") == []
    assert _problems("    host_id: 'a/b'")[0].startswith("devices.spb.host_id")
    assert any("learn" in p for p in _problems("    learn: false"))
    twice = """    points:
      - {name: a, node: E1, device: d, metric: M}
      - {name: a, node: E1, device: d, metric: N}
      - {name: b, node: E1, device: d, metric: M}"""
    found = _problems(twice)
    assert any("points[1].name" in p and "used once" in p for p in found)
    assert any("points[2].metric" in p and "one point per metric" in p for p in found)
    found = _problems("    points: [{name: b, node: E1, metric: M, access: w}]")
    assert any("points[0]" in p and "use rw" in p for p in found)
    # a host is a source: not a bridge target
    found = _problems("", "  - {name: down, from: spb, to: spb}")
    assert any("bridges[0].to" in p and "sparkplug host" in p for p in found)
    # learnt points cannot be served from the start: a Modbus server needs declared ones
    found = _problems("", "  - {name: serve, from: spb, to: mb, map: [{point: a, address: 0}]}")
    assert any("bridges[0].from" in p and "points: declared" in p for p in found)
    declared = "    points: [{name: sp, node: E1, device: pump1, metric: Setpoint, type: int32}]"
    serve = "  - {name: serve, from: spb, to: mb, points: [sp], map: [{point: sp, address: 0}]}"
    assert _problems(declared, serve) == []
    # named one by one, the learnt points cannot be among the bridge's: nothing to warn of;
    # a glob would take them, and the server would not serve them
    config = load_config_text(CONFIG.format(host=declared, bridges=serve), "host.yaml")
    assert not any("not served" in w for w in config.warnings)
    glob = serve.replace("points: [sp]", "points: ['*']")
    config = load_config_text(CONFIG.format(host=declared, bridges=glob), "host.yaml")
    (warning,) = [w for w in config.warnings if "not served" in w]
    assert "whose metrics learnt from births (learn: true)" in warning


# --- a real gateway, a real broker, Tahu's edge node ----------------------------------------

BIRTHS = {
    "node_metrics": [
        {"name": "Temp", "type": "Double", "value": 21.5, "alias": 1},
        {"name": REBIRTH, "type": "Boolean", "value": False, "alias": 2},
    ],
    "devices": {
        "pump1": [
            {"name": "Inputs/Speed", "type": "Float", "value": 2.5, "alias": 10},
            {"name": "Outputs/Run", "type": "Boolean", "value": True, "alias": 11},
            {"name": "Setpoint", "type": "Int32", "value": -5, "alias": 12},
        ],
        "pump2": [{"name": "Level", "type": "Double", "value": 0.75, "alias": 20}],
    },
}


class Subscriber:
    """mosquitto_sub on the broker: every (topic, payload) it printed, in order."""

    def __init__(self, port: int, *topics: str) -> None:
        filters = [arg for t in topics for arg in ("-t", t)]
        self.proc = subprocess.Popen(
            [find_binary("mosquitto_sub"), "-h", HOST, "-p", str(port), "-v", *filters],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            topic, _, payload = line.rstrip("\n").partition(" ")
            with self._lock:
                self.seen.append((topic, payload))

    def texts(self, topic: str) -> list[str]:
        """The payloads on ``topic`` as printed (Sparkplug 2.2's STATE is plain text)."""
        with self._lock:
            return [p for t, p in self.seen if t == topic]

    def on(self, topic: str) -> list[Msg]:
        return [json.loads(p) for p in self.texts(topic)]

    def last(self, topic: str) -> Msg | None:
        found = self.on(topic)
        return found[-1] if found else None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def peers(port: int, *topics: str) -> Iterator[tuple[Edge, Subscriber]]:
    sub = Subscriber(port, *topics)
    edge = Edge(port, GROUP, NODE, BIRTHS)
    try:
        yield edge, sub
    finally:
        edge.close()
        sub.close()


def write_config(path: Path, broker: int, out: int, modbus: int, host_id: str = "") -> Path:
    path.write_text(
        f"""
gateway: {{name: gw-host}}
devices:
  spb:
    protocol: sparkplug
    role: host
    host: {HOST}
    port: {broker}
    group: {GROUP}
    keepalive: 5
    reconnect: {{initial: 0.1, max: 0.3}}
    {f"host_id: {host_id}" if host_id else ""}
    points:
      - {{name: speed, node: {NODE}, device: pump1, metric: Inputs/Speed, type: float32}}
      - {{name: setpoint, node: {NODE}, device: pump1, metric: Setpoint, type: int32,
          access: rw}}
      - {{name: temp, node: {NODE}, metric: Temp, type: float32, access: rw}}
endpoints:
  out: {{protocol: mqtt, host: {HOST}, port: {out}, reconnect: {{initial: 0.1, max: 0.3}}}}
  mb: {{protocol: modbus, role: server, host: {HOST}, port: {modbus}}}
bridges:
  - {{name: up, from: spb, to: out, topic: "out/{{point}}"}}
  - name: serve
    from: spb
    to: mb
    points: [speed, setpoint, temp]
    map:
      - {{point: setpoint, address: 0, type: int32}}
      - {{point: speed, address: 2, type: float32}}
      - {{point: temp, address: 4, type: float32}}
"""
    )
    return path


def _value(sub: Subscriber, point: str, want: Callable[[Msg], bool]) -> Callable[[], Msg | None]:
    def find() -> Msg | None:
        last = sub.last(f"out/{point}")
        return last if last is not None and want(last) else None

    return find


def _good(value: Any) -> Callable[[Msg], bool]:
    return lambda m: m["quality"] == "good" and m["value"] == value


def _rebirths(edge: Edge) -> int:
    return sum(
        1
        for e in edge.events("ncmd")
        if any(m.get("name") == REBIRTH and m.get("value") is True for m in e["metrics"])
    )


async def test_a_host_reads_a_tahu_edge_node_and_writes_it_through_a_modbus_server(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    modbus = free_port()
    config = write_config(tmp_path / "gw.yaml", mosquitto.port, mosquitto.port, modbus, "scada")
    state_topic = "spBv1.0/STATE/scada"
    with peers(mosquitto.port, "out/#", state_topic) as (edge, sub):
        await wait_for(edge.ready, timeout=15, message="the Tahu edge node's births")
        async with running(config) as proc:
            # The edge node was born before the gateway started: its first data cannot be
            # read, and the host asks it for a rebirth (NCMD), which brings every value.
            online = await wait_for(lambda: sub.last(state_topic), timeout=20)
            assert online["online"] is True
            edge.send({"cmd": "ddata", "device": "pump1", "metrics": [
                {"name": "Inputs/Speed", "value": 3.25}], "by_alias": True})  # fmt: skip
            await wait_for(lambda: _rebirths(edge), timeout=10, message="a rebirth request")
            await wait_for(_value(sub, "temp", _good(21.5)), timeout=10)
            await wait_for(_value(sub, "speed", _good(3.25)), timeout=10)
            await wait_for(_value(sub, "E1.pump1.Outputs.Run", _good(True)), timeout=10)
            await wait_for(_value(sub, "E1.pump2.Level", _good(0.75)), timeout=10)
            assert sub.on("out/E1.pump1.Inputs.Speed") == []  # declared: fed as "speed"
            assert sub.on("out/E1.bdSeq") == [] and sub.on("out/E1.Node_Control.Rebirth") == []

            # The declared points, served by the gateway's Modbus server to mbpoll
            assert await mbpoll_read(modbus, "-0", "-r", "0", "-t", "4:int", "-B") == {0: "-5"}
            assert await mbpoll_read(modbus, "-0", "-r", "2", "-t", "4:float", "-B") == {2: "3.25"}

            # DDATA by alias only, after the rebirth
            edge.send({"cmd": "ddata", "device": "pump1", "metrics": [
                {"name": "Inputs/Speed", "value": 7.5}], "by_alias": True})  # fmt: skip
            await wait_for(_value(sub, "speed", _good(7.5)), timeout=10)

            # A write from mbpoll goes down as a DCMD, by name, in the birth's datatype; the
            # edge node applies it and its DDATA brings the new value back up.
            rc, out, err = await mbpoll(modbus, "-0", "-r", "0", "-t", "4:int", "-B", HOST, "42")
            assert rc == 0, err + out
            dcmd = await wait_for(lambda: next(iter(edge.events("dcmd")), None), timeout=10)
            assert dcmd["device"] == "pump1"
            assert [(m["name"], m["type"], m["value"]) for m in dcmd["metrics"]] == [
                ("Setpoint", "Int32", 42)
            ]
            await wait_for(_value(sub, "setpoint", _good(42)), timeout=10)
            assert await mbpoll_read(modbus, "-0", "-r", "0", "-t", "4:int", "-B") == {0: "42"}

            # A node's own metric: an NCMD
            rc, out, err = await mbpoll(
                modbus, "-0", "-r", "4", "-t", "4:float", "-B", HOST, "30.5"
            )
            assert rc == 0, err + out
            ncmd = await wait_for(
                lambda: next((e for e in edge.events("ncmd") if e["metrics"][0]["name"] == "Temp"),
                             None), timeout=10)  # fmt: skip
            assert [(m["name"], m["type"], m["value"]) for m in ncmd["metrics"]] == [
                ("Temp", "Double", 30.5)
            ]

            # A null value is Bad; DDEATH makes the device's points Bad
            edge.send({"cmd": "null", "device": "pump1", "name": "Outputs/Run"})
            bad = await wait_for(_value(sub, "E1.pump1.Outputs.Run", lambda m: m["value"] is None))
            assert bad["quality"] == "bad" and bad["reason"] == "null value"
            edge.send({"cmd": "ddeath", "device": "pump2"})
            dead = await wait_for(_value(sub, "E1.pump2.Level", lambda m: m["quality"] == "bad"))
            assert dead["reason"] == "device offline (DDEATH)"

            # The edge node dies: its will (NDEATH, the NBIRTH's bdSeq) makes every point Bad
            edge.send({"cmd": "kill"})
            for point in ("temp", "setpoint", "speed", "E1.pump1.Outputs.Run"):
                await wait_for(
                    _value(sub, point, lambda m: m["quality"] == "bad" and m["value"] is None
                           and m["reason"] == "edge node offline (NDEATH)"),
                    timeout=15, message=f"{point} Bad after NDEATH")  # fmt: skip

            # A clean stop says STATE offline itself, with the timestamp of its online
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            await wait_for(lambda: len(sub.on(state_topic)) >= 2, message="STATE offline")
            assert sub.on(state_topic)[1:] == [{"online": False, "timestamp": online["timestamp"]}]


async def test_after_losing_the_broker_the_host_asks_the_nodes_it_knew_for_a_rebirth(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """Only the gateway loses the broker (a proxy cuts it): its points go Bad, and once back
    it asks the edge node for a rebirth, so that values that do not change come back too."""
    proxy = Proxy(mosquitto.port)
    await proxy.up()
    config = write_config(tmp_path / "gw.yaml", proxy.port, mosquitto.port, free_port())
    with peers(mosquitto.port, "out/#") as (edge, sub):
        await wait_for(edge.ready, timeout=15, message="the Tahu edge node's births")
        async with running(config):
            # the gateway's first rebirth request, once its subscription is up
            async def asked() -> bool:
                if _rebirths(edge):
                    return True
                edge.send({"cmd": "ndata", "metrics": [{"name": "Temp", "value": 21.5}]})
                await asyncio.sleep(0.3)
                return False

            await wait_for(asked, timeout=20, message="a rebirth request")
            await wait_for(_value(sub, "temp", _good(21.5)), timeout=10)
            await proxy.down()
            lost = await wait_for(_value(sub, "temp", lambda m: m["quality"] == "bad"))
            assert "connection lost" in lost["reason"] and lost["value"] is None
            asked_before = _rebirths(edge)
            await proxy.up()
            await wait_for(lambda: _rebirths(edge) > asked_before, timeout=20)
            await wait_for(lambda: edge.reborn() >= 2, timeout=10)  # asked, asked again
            await wait_for(_value(sub, "temp", _good(21.5)), timeout=10)
            await wait_for(_value(sub, "E1.pump2.Level", _good(0.75)), timeout=10)
    await proxy.down()


class TestSparkplugHost(ProtocolConformance):
    """The plugin conformance kit on the host role, fed by Tahu's edge node: its births came
    before the adapter subscribed, so `stimulate`'s NDATA makes the host ask for a rebirth.
    Writes are left to the test above: the kit writes once the broker is connected, and a
    write needs the node's birth too (refused as unreachable before it)."""

    spec = SPARKPLUG
    role = "host"
    writes = False

    def config(self, peer: tuple[MosquittoBroker, Edge] | None) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": peer[0].port if peer is not None else self.closed_port(),
            "group": GROUP,
            "learn": False,  # the kit wants every sample to be one of points()
            "reconnect": {"initial": 0.05, "max": 0.3},
            "rebirth_interval": 0.5,
            "points": [
                {"name": "temp", "node": NODE, "metric": "Temp"},
                {"name": "speed", "node": NODE, "device": "pump1", "metric": "Inputs/Speed"},
                {
                    "name": "run",
                    "node": NODE,
                    "device": "pump1",
                    "metric": "Outputs/Run",
                    "type": "bool",
                },  # fmt: skip
            ],
        }

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[tuple[MosquittoBroker, Edge]]:
        with started_mosquitto(self.tmp_path) as broker:
            edge = Edge(broker.port, GROUP, NODE, BIRTHS)
            try:
                await wait_for(edge.ready, timeout=15, message="the Tahu edge node's births")
                yield broker, edge
            finally:
                edge.close()

    async def stimulate(self, peer: tuple[MosquittoBroker, Edge], adapter: Adapter) -> None:
        peer[1].send({"cmd": "ndata", "metrics": [{"name": "Temp", "value": 21.5}]})


def test_a_malformed_or_unreadable_message_is_counted_and_the_connection_kept() -> None:
    """Garbage on a DDATA topic, and a message whose reading fails unexpectedly, are counted
    and said; nothing escapes into paho (which would drop the connection for it)."""
    import paho.mqtt.client as paho

    from gateway.adapter import AdapterContext
    from gateway.bus import Bus
    from protocols.sparkplug.config import SparkplugHost
    from protocols.sparkplug.host import SparkplugHostAdapter

    bus = Bus()
    seen = bus.subscribe("telemetry/spb", maxsize=100, name="t")
    config = SparkplugHost(host=HOST, group=GROUP)
    adapter = SparkplugHostAdapter("spb", config, AdapterContext(bus, "gw"))

    def message(topic: str, payload: bytes) -> paho.MQTTMessage:
        msg = paho.MQTTMessage(topic=topic.encode())
        msg.payload = payload
        return msg

    adapter._on_message(None, None, message(f"spBv1.0/{GROUP}/DDATA/{NODE}/pump1", b"\xff\x01"))
    assert adapter.bad_payloads == 1
    nbirth = codec.encode_payload(_nbirth())
    adapter._on_message(None, None, message(f"spBv1.0/{GROUP}/NBIRTH/{NODE}", nbirth))
    got = seen.get_nowait()
    assert got is not None and [s.point for s in got.samples] == ["E1.Temp"]

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    adapter.tracker.receive = broken  # type: ignore[method-assign]
    adapter._on_message(None, None, message(f"spBv1.0/{GROUP}/NDATA/{NODE}", nbirth))
    assert adapter.bad_payloads == 2
    # other groups' and other namespaces' messages are not this host's
    adapter._on_message(None, None, message("spBv1.0/other/NBIRTH/x", b"\xff"))
    adapter._on_message(None, None, message("spBv1.0/STATE/scada", b"{}"))
    assert adapter.bad_payloads == 2 and adapter.received == 3


def test_historical_data_is_published_and_followed_by_the_current_value() -> None:
    """A node sends what it buffered offline as historical DATA after its births: a target
    that keeps the latest value must end on the birth's (current) one, not on the history."""
    tracker = _born()  # Inputs/Speed 2.5 at 1.5 s (the birth)
    where = _at("DDATA", "pump1")
    old = Payload(
        3000,
        (
            Metric(alias=10, timestamp=1200, value=1.0, is_historical=True),
            Metric(alias=10, timestamp=1300, value=1.5, is_historical=True),
            Metric(alias=11, timestamp=1300, value=-1, is_historical=True),
        ),
        2,
    )
    out = tracker.receive(where, old, 20.0)
    got = [(s.point, s.value, s.source_ts) for s in out.samples]
    assert got == [
        ("E1.pump1.Inputs.Speed", 1.0, 1.2),
        ("E1.pump1.Inputs.Speed", 1.5, 1.3),
        ("E1.pump1.Setpoint", -1, 1.3),
        ("E1.pump1.Inputs.Speed", 2.5, 1.5),  # the current value again, last
        ("E1.pump1.Setpoint", -5, 2.0),  # its birth had no metric timestamp: the payload's
    ]
    # history newer than the current value (a node whose clock went on) is not followed
    newer = Payload(3000, (Metric(alias=10, timestamp=9000, value=4.0, is_historical=True),), 3)
    out = tracker.receive(where, newer, 21.0)
    assert [(s.value, s.source_ts) for s in out.samples] == [(4.0, 9.0)]
    # live data is the current value from then on
    live = Payload(3000, (Metric(alias=10, timestamp=9500, value=5.0),), 4)
    tracker.receive(where, live, 22.0)
    out = tracker.receive(where, Payload(3000, (Metric(alias=10, timestamp=9100, value=4.5,
                                                       is_historical=True),), 5), 23.0)  # fmt: skip
    assert [s.value for s in out.samples] == [4.5, 5.0]


# --- learnt names that collide, numbers for /metrics ------------------------------------------


def test_a_learnt_name_is_the_first_metrics_and_a_collision_is_counted_and_said_once() -> None:
    """A node's ``pump1/x`` and device pump1's ``x`` both make ``E1.pump1.x``: the first one
    born keeps it, the other is not a point (else one point would flip between two metrics),
    counted and said once, naming both, however often the node births again."""
    tracker = HostTracker()
    nbirth = Payload(1000, (Metric("pump1/x", 1, datatype=DataType.DOUBLE, value=1.0),), 0)
    out = tracker.receive(_at("NBIRTH"), nbirth, 10.0)
    assert _values(out.samples) == {"E1.pump1.x": 1.0} and out.notices == ()
    dbirth = Payload(
        2000,
        (
            Metric("x", 10, datatype=DataType.DOUBLE, value=2.0),
            Metric("y", 11, datatype=DataType.DOUBLE, value=3.0),
        ),
        1,
    )
    out = tracker.receive(_at("DBIRTH", "pump1"), dbirth, 10.0)
    assert _values(out.samples) == {"E1.pump1.y": 3.0}  # x is not learnt
    (line,) = out.notices
    assert "E1/pump1 metric 'x'" in line and "E1 metric 'pump1/x'" in line
    assert "E1.pump1.x" in line
    assert tracker.name_collisions == 1 and tracker.owners["E1.pump1.x"] == (NODE, None, "pump1/x")
    # the device's x feeds nothing; the node's pump1/x still feeds the point
    data = Payload(3000, (Metric(alias=10, value=9.0), Metric(alias=11, value=4.0)), 2)
    out = tracker.receive(_at("DDATA", "pump1"), data, 11.0)
    assert _values(out.samples) == {"E1.pump1.y": 4.0} and not out.rebirth
    out = tracker.receive(_at("NDATA"), Payload(3000, (Metric(alias=1, value=5.0),), 3), 11.0)
    assert _values(out.samples) == {"E1.pump1.x": 5.0}
    # born again (a rebirth, a new connection): the same owner, no new count or line
    tracker.forget()
    tracker.receive(_at("NBIRTH"), nbirth, 20.0)
    out = tracker.receive(_at("DBIRTH", "pump1"), dbirth, 20.0)
    assert out.notices == () and tracker.name_collisions == 1
    assert _values(out.samples) == {"E1.pump1.y": 3.0}
    # characters a name cannot hold: "a b" and "a_b" of one birth are both E2.a_b
    both = Payload(
        1000,
        (
            Metric("a b", datatype=DataType.INT32, value=1),
            Metric("a_b", datatype=DataType.INT32, value=2),
        ),
        0,
    )
    out = tracker.receive(_at("NBIRTH", node="E2"), both, 30.0)
    assert _values(out.samples) == {"E2.a_b": 1} and len(out.notices) == 1
    assert tracker.name_collisions == 2


def test_a_learnt_name_that_is_a_declared_points_is_a_collision_too() -> None:
    declared = [HostPoint(name="E1.Temp", node=NODE, device="pump1", metric="Setpoint")]
    tracker = HostTracker(points=declared)
    out = tracker.receive(_at("NBIRTH"), _nbirth(), 10.0)
    assert out.samples == ()  # the node's Temp would be E1.Temp: the declared point's name
    (line,) = out.notices
    assert "declared point of E1/pump1 metric 'Setpoint'" in line and "E1 metric 'Temp'" in line
    out = tracker.receive(_at("DBIRTH", "pump1"), _dbirth(), 10.0)
    assert _values(out.samples)["E1.Temp"] == -5 and out.notices == ()
    assert tracker.name_collisions == 1 and "E1.Temp" not in tracker.learnt


def test_the_tracker_counts_nodes_and_devices_online_and_offline() -> None:
    tracker = HostTracker()
    zero = {"nodes_online": 0, "nodes_offline": 0, "devices_online": 0, "devices_offline": 0}
    assert tracker.counts() == zero
    tracker = _born()
    tracker.receive(_at("DBIRTH", "pump2"), Payload(2000, (), 2), 10.0)
    assert tracker.counts() == {
        "nodes_online": 1,
        "nodes_offline": 0,
        "devices_online": 2,
        "devices_offline": 0,
    }
    tracker.receive(_at("DDEATH", "pump2"), Payload(5000, (), 3), 11.0)
    assert tracker.counts()["devices_online"] == 1 and tracker.counts()["devices_offline"] == 1
    tracker.receive(_at("NBIRTH", node="E2"), _nbirth(), 12.0)
    tracker.receive(_at("NDEATH"), Payload(5000, (Metric("bdSeq", value=0),)), 13.0)
    assert tracker.counts() == {
        "nodes_online": 1,
        "nodes_offline": 1,
        "devices_online": 0,
        "devices_offline": 2,  # a device of a dead node is not online
    }
    tracker.forget()
    assert tracker.counts() == zero


def _adapter(**config: Any) -> Any:
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus
    from protocols.sparkplug.config import SparkplugHost
    from protocols.sparkplug.host import SparkplugHostAdapter

    host = SparkplugHost(host=HOST, group=GROUP, **config)
    return SparkplugHostAdapter("spb", host, AdapterContext(Bus(), "gw"))


def _message(topic: str, payload: bytes, retain: bool = False) -> Any:
    import paho.mqtt.client as paho

    msg = paho.MQTTMessage(topic=topic.encode())
    msg.payload, msg.retain = payload, retain
    return msg


def test_the_hosts_status_has_numbers_for_metrics() -> None:
    """/metrics exports only numbers: the nodes (texts in ``nodes``) are counted too, and the
    collisions, for an alert to see."""
    from gateway.metrics import exposition

    adapter = _adapter()
    births = [
        ("NBIRTH", None, Payload(1000, (Metric("pump1/x", datatype=DataType.DOUBLE, value=1.0),), 0)),
        ("DBIRTH", "pump1", Payload(1000, (Metric("x", datatype=DataType.DOUBLE, value=2.0),), 1)),
        ("NBIRTH", None, _nbirth()),  # E2
    ]  # fmt: skip
    for i, (kind, device, payload) in enumerate(births):
        node = "E2" if i == 2 else NODE
        topic = codec.topic(GROUP, kind, node, device)
        adapter._on_message(None, None, _message(topic, codec.encode_payload(payload)))
    dead = codec.encode_payload(Payload(5000, (Metric("bdSeq", datatype=DataType.INT64, value=0),)))
    adapter._on_message(None, None, _message(codec.topic(GROUP, "NDEATH", "E2"), dead))
    status = adapter.status()
    assert status["nodes"] == {NODE: "online", "E2": "offline"}
    assert {k: status[k] for k in ("nodes_online", "nodes_offline", "name_collisions")} == {
        "nodes_online": 1,
        "nodes_offline": 1,
        "name_collisions": 1,
    }
    assert status["devices_online"] == 1 and status["devices_offline"] == 0
    assert "state_republished" not in status  # not a primary host
    page = exposition(
        {"adapters": {"spb": status}},
        gateway="gw",
        version="0",
        started=0.0,
        entries={"spb": ("sparkplug", "host")},
        kinds={"spb": adapter.metric_kinds},
    )
    labels = '{adapter="spb",protocol="sparkplug",role="host"}'
    for name, kind in [
        ("nodes_online", "gauge"),
        ("nodes_offline", "gauge"),
        ("devices_online", "gauge"),
        ("name_collisions_total", "counter"),
    ]:
        family = f"protocol_brain_adapter_{name}"
        assert f"# TYPE {family} {kind}\n{family}{labels} 1\n" in page
    assert "state_republished" in _adapter(host_id="scada").status()


# --- its own STATE ------------------------------------------------------------------------------


class _Client:
    """What the host publishes, instead of a broker connection."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any, int, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        from paho.mqtt.enums import MQTTErrorCode

        try:
            said: Any = json.loads(payload)
        except ValueError:  # Sparkplug 2.2's STATE: plain text
            said = payload.decode()
        self.published.append((topic, said, qos, retain))
        return type("Info", (), {"rc": MQTTErrorCode.MQTT_ERR_SUCCESS})()


async def test_an_offline_state_of_its_own_is_answered_online_at_most_once_per_interval() -> None:
    """Sans broker: what is answered (an offline STATE delivered while connected), what is
    not (its own online back, a retained one held at the subscription, an unreadable one),
    and a burst of offline answered once at once and once more when the interval is over."""
    adapter = _adapter(host_id="scada")
    topic = "spBv1.0/STATE/scada"
    client = adapter._client = _Client()
    adapter._loop = asyncio.get_running_loop()
    adapter._connected = True
    adapter._state_ts = 1_000  # this connection's will and online
    adapter.state_every_s = 0.3

    def state(online: bool, retain: bool = False) -> None:
        payload = json.dumps({"online": online, "timestamp": 1_000}).encode()
        adapter._on_message(None, None, _message(topic, payload, retain))

    state(True)  # its own online, back
    state(False, retain=True)  # what the broker held when the host subscribed
    adapter._on_message(None, None, _message(topic, b"OFFLINE"))  # Sparkplug 2.2's
    assert client.published == [] and adapter.bad_payloads == 1
    before = int(time.time() * 1000)
    state(False)
    ((where, said, qos, retain),) = client.published
    assert (where, said["online"], qos, retain) == (topic, True, 1, True)
    assert said["timestamp"] >= before  # the current time, not the will's
    assert adapter.status()["state_republished"] == 1
    for _ in range(5):  # a burst within the interval: one more online, once it is over
        state(False)
    assert len(client.published) == 1
    await wait_for(lambda: len(client.published) == 2, timeout=5, message="the second online")
    assert client.published[1][1]["timestamp"] > said["timestamp"]
    assert adapter.state_republished == 2
    # a clean stop's offline is not older than the last online (nodes drop older STATEs)
    ((_, words, _),) = adapter._last_words()
    assert json.loads(words) == {
        "online": False,
        "timestamp": client.published[1][1]["timestamp"],
    }
    # closing: its own offline goodbye comes back, and must not be answered
    adapter.state_every_s = 0.0
    adapter._closing = True
    state(False)
    assert len(client.published) == 2 and adapter._state_timer is None
    # not connected: nothing said, nothing due
    adapter._closing = False
    adapter._connected = False
    adapter.state_every_s = 0.0
    state(False)
    assert len(client.published) == 2 and adapter._state_timer is None


async def _publish(port: int, topic: str, payload: str, *extra: str) -> None:
    args = [find_binary("mosquitto_pub"), "-h", HOST, "-p", str(port), "-t", topic, "-m", payload]
    proc = await asyncio.create_subprocess_exec(
        *args, "-q", "1", *extra, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err


async def _retained_text(port: int, topic: str) -> str | None:
    """The retained message on ``topic`` as a late subscriber (an edge node starting) sees it
    (None if there is none within 5 s)."""
    args = [find_binary("mosquitto_sub"), "-h", HOST, "-p", str(port), "-t", topic]
    proc = await asyncio.create_subprocess_exec(
        *args, "-C", "1", "-W", "5", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode().rstrip("\n") if proc.returncode == 0 and out else None


async def _retained(port: int, topic: str) -> Msg | None:
    """The retained STATE (3.0's JSON) on ``topic``, as `_retained_text`."""
    text = await _retained_text(port, topic)
    return None if text is None else json.loads(text)


async def test_a_primary_host_says_online_again_when_its_state_topic_says_offline(
    mosquitto: MosquittoBroker,
) -> None:
    """Another client (or an older session's will) puts STATE offline, retained, on the host's
    topic while it is connected: edge nodes would not birth. The host reads its own topic and
    publishes online again with a newer timestamp, which is what the broker then keeps."""
    topic = "spBv1.0/STATE/scada"
    sub = Subscriber(mosquitto.port, topic)
    adapter = _adapter(port=mosquitto.port, host_id="scada", reconnect={"initial": 0.1, "max": 0.3})
    adapter.state_every_s = 0.0  # answer at once (the interval is the test above's)
    try:
        async with adapter:
            task = asyncio.create_task(adapter.run())
            try:
                first = await wait_for(lambda: sub.last(topic), timeout=10, message="online")
                assert first["online"] is True
                offline = json.dumps({"online": False, "timestamp": first["timestamp"]})
                await _publish(mosquitto.port, topic, offline, "-r")
                # the next online after the offline (until the subscriber has the offline,
                # its last message is still the first online)
                again = await wait_for(
                    lambda: next((m for m in sub.on(topic)[2:] if m["online"]), None),
                    timeout=10,
                    message="STATE online again",
                )
                assert again["timestamp"] > first["timestamp"]
                assert [m["online"] for m in sub.on(topic)] == [True, False, True]
                assert await _retained(mosquitto.port, topic) == again
                assert adapter.status()["state_republished"] == 1
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # a clean stop: offline, with the timestamp of the last online; the host reads its
        # own goodbye back before it disconnects, and must not answer it: offline is retained
        goodbye = {"online": False, "timestamp": again["timestamp"]}
        assert await _retained(mosquitto.port, topic) == goodbye
        await wait_for(lambda: len(sub.on(topic)) >= 4, timeout=10, message="STATE offline")
        assert sub.on(topic)[3:] == [goodbye]
    finally:
        sub.close()
