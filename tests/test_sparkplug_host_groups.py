"""A Sparkplug host that reads several groups in one entry (``group: [A, B]`` or ``'+'``).

One edge_node_id may be a node of two groups: two sessions with nothing in common. The config
(a declared point names its group), the naming rule (``{group}.{node}.{device}.{metric}``),
the adapter on hand-made messages (sessions, seq, deaths and status per group and node, names
that collide across groups) and a real `gateway run` with mosquitto and two Eclipse Tahu edge
nodes (sparkplug-client, tests/interop/node/sparkplug_edge.js), both ``E1``, one per group:
both read as distinct points, rebirth requests and writes (DCMD, NCMD) go to the right group's
node only, and one node's death leaves the other group's points good."""

from __future__ import annotations

import asyncio
import copy
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, free_port, wait_for
from sparkplug_peers import Edge, running
from test_simulator import mbpoll
from test_sparkplug_host import BIRTHS, Subscriber, _good, _message, _nbirth, _rebirths, _value

from gateway import livestatus
from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.config import ConfigError, load_config_text
from protocols.sparkplug import codec
from protocols.sparkplug.codec import DataType, Metric, Payload
from protocols.sparkplug.config import SparkplugEndpoint, SparkplugHost
from protocols.sparkplug.host import SparkplugHostAdapter
from protocols.sparkplug.tracker import learnt_name

A, B, NODE = "plantA", "plantB", "E1"
Msg = dict[str, Any]

# --- config -------------------------------------------------------------------------------------

ENTRY = """
gateway: {{name: gw}}
devices:
  spb: {{protocol: sparkplug, role: host, host: 127.0.0.1, group: {group}, points: {points}}}
endpoints:
  out: {{protocol: mqtt, host: 127.0.0.1}}
bridges:
  - {{name: up, from: spb, to: out}}
"""


def _load(group: str, points: str = "[]") -> None:
    load_config_text(ENTRY.format(group=group, points=points), "groups.yaml")


def _refused(group: str, points: str = "[]") -> list[str]:
    """What validation says of an entry it refuses."""
    with pytest.raises(ConfigError) as refused:
        _load(group, points)
    return [f"{p.dotted}: {p.found}; {p.expected}" for p in refused.value.problems]


def test_a_host_entry_takes_one_group_a_list_or_every_group() -> None:
    sp = "{name: sp, node: E1, device: pump1, metric: Setpoint}"
    # one group, as ever: points need no group, may repeat it, may not name another
    _load("plant1", f"[{sp}]")
    _load("plant1", "[{name: sp, group: plant1, node: E1, metric: M}]")
    (found,) = _refused("plant1", "[{name: sp, group: plant2, node: E1, metric: M}]")
    assert found.startswith("devices.spb.points[0].group: 'plant2', not the entry's group")
    # several: each declared point names its group, one of the list
    _load("[plantA, plantB]")
    (found,) = _refused("[plantA, plantB]", f"[{sp}]")
    assert found.startswith("devices.spb.points[0].group: no group")
    assert "the group_id of its edge node" in found
    (found,) = _refused("[plantA, plantB]", "[{name: sp, group: plantC, node: E1, metric: M}]")
    assert found.startswith("devices.spb.points[0].group: 'plantC', a group the entry does not")
    assert "one of ['plantA', 'plantB']" in found
    # the same metric of one node id in two groups is two points, of one group one
    two = "[{name: a, group: plantA, node: E1, metric: M}, {name: b, group: plantB, node: E1, metric: M}]"
    _load("[plantA, plantB]", two)
    (found,) = _refused("[plantA, plantB]", two.replace("group: plantB", "group: plantA"))
    assert found.startswith("devices.spb.points[1].metric") and "one point per metric" in found
    # every group: any group_id, but one
    _load("'+'", "[{name: sp, group: anywhere, node: E1, metric: M}]")
    (found,) = _refused("'+'", f"[{sp}]")
    assert found.startswith("devices.spb.points[0].group: no group")
    (found,) = _refused("'+'", "[{name: sp, group: 'a#', node: E1, metric: M}]")
    assert found.startswith("devices.spb.points[0].group: 'a#'")
    # lists: ids without '/', '+' or '#', each once, one at least
    (found,) = _refused("[plantA, plantA]")
    assert found == "devices.spb.group[1]: 'plantA' again; a group used once"
    for wrong in ("[plantA, 'a/b']", "[plantA, '+']", "[]"):
        (found,) = _refused(wrong)
        assert found.startswith("devices.spb.group: ")
    # an edge node keeps exactly one group: not a list, not every group
    with pytest.raises(ValueError, match="group"):
        SparkplugEndpoint(host=HOST, group="+")
    with pytest.raises(ValueError, match="group"):
        SparkplugEndpoint.model_validate({"host": HOST, "group": [A, B]})


def test_names_begin_with_the_group_only_when_several_groups_are_read() -> None:
    assert learnt_name("E1", "pump1", "Inputs/Speed", "plantA") == "plantA.E1.pump1.Inputs.Speed"
    assert learnt_name("E1", None, "Temp", "plant 2") == "plant_2.E1.Temp"
    assert learnt_name("E1", None, "Temp") == "E1.Temp"
    # a list of one reads "several": adding a group later renames nothing
    for group, several, filters in [
        ("plant1", False, ["spBv1.0/plant1/#"]),
        ([A], True, ["spBv1.0/plantA/#"]),
        ([A, B], True, ["spBv1.0/plantA/#", "spBv1.0/plantB/#"]),
        ("+", True, ["spBv1.0/+/#"]),
    ]:
        config = SparkplugHost(host=HOST, group=group)
        assert (config.several_groups, config.topic_filters()) == (several, filters)
        adapter, seen = _adapter(group)
        _send(adapter, A if several else "plant1", "NBIRTH", _nbirth())
        assert _drained(seen) == [("plantA.E1.Temp" if several else "E1.Temp", 21.5)]


# --- the adapter on hand-made messages ----------------------------------------------------------


def _adapter(group: str | list[str]) -> tuple[SparkplugHostAdapter, Any]:
    """A host adapter reading ``group``, and its telemetry as the bus gives it."""
    bus = Bus()
    seen = bus.subscribe("telemetry/spb", maxsize=100, name="t")
    return SparkplugHostAdapter(
        "spb", SparkplugHost(host=HOST, group=group), AdapterContext(bus, "gw")
    ), seen


def _drained(seen: Any) -> list[tuple[str, Any]]:
    """(point, value) of every sample published since the last call."""
    out = []
    while (message := seen.get_nowait()) is not None:
        out.extend((s.point, s.value) for s in message.samples)
    return out


def _send(
    adapter: SparkplugHostAdapter,
    group: str,
    kind: str,
    payload: Payload,
    node: str = NODE,
    device: str | None = None,
) -> None:
    topic = codec.topic(group, kind, node, device)
    adapter._on_message(None, None, _message(topic, codec.encode_payload(payload)))


def _speed(value: float, seq: int) -> Payload:
    return Payload(3000, (Metric("Speed", datatype=DataType.DOUBLE, value=value),), seq)


class _Broker:
    """The topics the host publishes to, instead of a broker connection."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        from paho.mqtt.enums import MQTTErrorCode

        self.topics.append(topic)
        return type("Info", (), {"rc": MQTTErrorCode.MQTT_ERR_SUCCESS})()


def test_sessions_seq_deaths_and_status_are_per_group_and_node() -> None:
    adapter, seen = _adapter("+")
    broker = adapter._client = _Broker()  # type: ignore[assignment]
    adapter._connected = True
    speed = Payload(
        1000,
        (
            Metric("bdSeq", datatype=DataType.INT64, value=0),
            Metric("Speed", datatype=DataType.DOUBLE, value=1.0),
        ),
        0,
    )
    _send(adapter, A, "NBIRTH", speed)
    _send(adapter, B, "NBIRTH", speed)
    # each node's own seq: interleaved, neither is a gap
    for seq in (1, 2):
        _send(adapter, A, "NDATA", _speed(10.0 + seq, seq))
        _send(adapter, B, "NDATA", _speed(20.0 + seq, seq))
    assert _drained(seen)[-4:] == [
        ("plantA.E1.Speed", 11.0),
        ("plantB.E1.Speed", 21.0),
        ("plantA.E1.Speed", 12.0),
        ("plantB.E1.Speed", 22.0),
    ]
    assert adapter.tracker.seq_gaps == 0 and broker.topics == []
    # the death of A's E1 (its will: the NBIRTH's bdSeq) leaves B's E1 online
    _send(adapter, A, "NDEATH", Payload(5000, (Metric("bdSeq", datatype=DataType.INT64, value=0),)))
    assert _drained(seen) == [("plantA.E1.Speed", None)]
    _send(adapter, B, "NDATA", _speed(23.0, 3))
    assert _drained(seen) == [("plantB.E1.Speed", 23.0)]
    status = adapter.status()
    assert status["group"] == "+" and status["nodes"] == {
        "plantA/E1": "offline",
        "plantB/E1": "online",
    }
    assert (status["nodes_online"], status["nodes_offline"]) == (1, 1)
    # data of A's dead E1 asks A's E1 for a rebirth, in A's group, whatever B's asked before
    _send(adapter, B, "NDATA", _speed(24.0, 9))  # a gap in B: B asked
    _send(adapter, A, "NDATA", _speed(13.0, 4))  # not born in A: A asked
    assert broker.topics == ["spBv1.0/plantB/NCMD/E1", "spBv1.0/plantA/NCMD/E1"]
    assert adapter.rebirths_asked == 2


def test_a_list_reads_its_groups_only_and_a_name_two_groups_make_is_a_collision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The node E1 of groups ``plant 1`` and ``plant_1`` both make ``plant_1.E1.x`` (a point
    name holds no space): the first born keeps it, the other is counted and said, as any
    collision."""
    adapter, seen = _adapter(["plant 1", "plant_1"])
    birth = Payload(1000, (Metric("x", datatype=DataType.DOUBLE, value=1.0),), 0)
    _send(adapter, "plant 2", "NBIRTH", birth)  # not a group of the list
    assert adapter.received == 0 and adapter.status()["nodes"] == {}
    _send(adapter, "plant 1", "NBIRTH", birth)
    assert _drained(seen) == [("plant_1.E1.x", 1.0)]
    with caplog.at_level(logging.WARNING, logger="protocols.sparkplug.host"):
        _send(adapter, "plant_1", "NBIRTH", birth)
    assert adapter.status()["name_collisions"] == 1 and _drained(seen) == []
    (line,) = [r.getMessage() for r in caplog.records if "not learnt" in r.getMessage()]
    assert "plant_1/E1 metric 'x'" in line and "plant 1/E1 metric 'x'" in line
    assert adapter.status()["nodes"] == {"plant 1/E1": "online", "plant_1/E1": "online"}


# --- a real gateway, a real broker, two Tahu edge nodes E1 in two groups ------------------------


def _births(**values: Any) -> Msg:
    """BIRTHS with other values, by metric name (a `/` in it as `_`)."""
    births = copy.deepcopy(BIRTHS)
    for metric in [*births["node_metrics"], *(m for ms in births["devices"].values() for m in ms)]:
        metric["value"] = values.get(metric["name"].replace("/", "_"), metric["value"])
    return births


def write_config(path: Path, broker: int, modbus: int) -> Path:
    path.write_text(
        f"""
gateway: {{name: gw-groups, status_interval: 0.3}}
devices:
  spb: {{protocol: sparkplug, role: host, host: {HOST}, port: {broker}, group: [{A}, {B}],
        keepalive: 5, reconnect: {{initial: 0.1, max: 0.3}},
        rebirth_interval: 30,  # each is asked once: one interval for both keeps B waiting
        points: [
          {{name: a_speed, group: {A}, node: {NODE}, device: pump1, metric: Inputs/Speed}},
          {{name: b_speed, group: {B}, node: {NODE}, device: pump1, metric: Inputs/Speed}},
          {{name: b_setpoint, group: {B}, node: {NODE}, device: pump1, metric: Setpoint,
            type: int32, access: rw}},
          {{name: a_temp, group: {A}, node: {NODE}, metric: Temp, type: float32, access: rw}}]}}
endpoints:
  out: {{protocol: mqtt, host: {HOST}, port: {broker}, reconnect: {{initial: 0.1, max: 0.3}}}}
  mb: {{protocol: modbus, role: server, host: {HOST}, port: {modbus}}}
bridges:
  - {{name: up, from: spb, to: out, topic: "out/{{point}}"}}
  - {{name: serve, from: spb, to: mb, points: [b_setpoint, a_temp],
     map: [{{point: b_setpoint, address: 0, type: int32}}, {{point: a_temp, address: 2, type: float32}}]}}
"""
    )
    return path


async def _reborn(edge: Edge, temp: float) -> None:
    """NDATA from ``edge`` until the host, started after its births, asks it for a rebirth."""

    async def asked() -> bool:
        if _rebirths(edge):
            return True
        edge.send({"cmd": "ndata", "metrics": [{"name": "Temp", "value": temp}]})
        await asyncio.sleep(0.3)
        return False

    await wait_for(asked, timeout=20, message="a rebirth request")


def _status() -> Msg:
    doc = livestatus.read(livestatus.status_path("gw-groups")) or {}
    return dict(doc.get("status", {}).get("adapters", {}).get("spb", {}))


def _commands(edge: Edge, kind: str, metric: str) -> list[Msg]:
    return [e for e in edge.events(kind) if any(m["name"] == metric for m in e["metrics"])]


async def test_one_node_id_in_two_groups_is_two_nodes_read_written_and_dying_apart(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    modbus = free_port()
    config = write_config(tmp_path / "gw.yaml", mosquitto.port, modbus)
    sub = Subscriber(mosquitto.port, "out/#")
    a = Edge(mosquitto.port, A, NODE, BIRTHS)
    b = Edge(mosquitto.port, B, NODE, _births(Temp=11.5, Inputs_Speed=1.25, Setpoint=7, Level=0.25))
    try:
        await wait_for(lambda: a.ready() and b.ready(), timeout=15, message="both edge nodes born")
        async with running(config):
            # Born before the gateway started: each is asked for a rebirth, in its own group
            # (one node id, two rebirth intervals)
            await _reborn(a, 21.5)
            await wait_for(_value(sub, "plantA.E1.pump2.Level", _good(0.75)), timeout=10)
            await _reborn(b, 11.5)
            for point, value in [
                ("a_speed", 2.5),
                ("b_speed", 1.25),
                ("a_temp", 21.5),
                ("plantB.E1.Temp", 11.5),
                ("plantB.E1.pump2.Level", 0.25),
                ("plantB.E1.pump1.Outputs.Run", True),
            ]:
                await wait_for(_value(sub, point, _good(value)), timeout=10, message=point)
            assert not [
                t for t, _ in list(sub.seen) if t.startswith("out/E1.")
            ]  # names carry the group
            status = await wait_for(
                lambda: (s := _status()).get("nodes_online") == 2 and s, timeout=10
            )
            assert status["nodes"] == {"plantA/E1": "online", "plantB/E1": "online"}
            assert status["devices_online"] == 4 and status["name_collisions"] == 0

            # A write of B's setpoint is a DCMD to B's E1; of A's Temp an NCMD to A's E1
            rc, out, err = await mbpoll(modbus, "-0", "-r", "0", "-t", "4:int", "-B", HOST, "42")
            assert rc == 0, err + out
            (dcmd,) = await wait_for(lambda: b.events("dcmd"), timeout=10, message="B's DCMD")
            assert dcmd["device"] == "pump1" and [
                (m["name"], m["type"], m["value"]) for m in dcmd["metrics"]
            ] == [("Setpoint", "Int32", 42)]
            await wait_for(_value(sub, "b_setpoint", _good(42)), timeout=10)
            rc, out, err = await mbpoll(
                modbus, "-0", "-r", "2", "-t", "4:float", "-B", HOST, "30.5"
            )
            assert rc == 0, err + out
            (ncmd,) = await wait_for(
                lambda: _commands(a, "ncmd", "Temp"), timeout=10, message="A's NCMD"
            )
            assert [(m["name"], m["value"]) for m in ncmd["metrics"]] == [("Temp", 30.5)]

            # A's E1 dies: its points go Bad, B's E1's stay good and go on
            a.send({"cmd": "kill"})
            for point in ("a_speed", "plantA.E1.pump2.Level"):
                await wait_for(
                    _value(
                        sub,
                        point,
                        lambda m: (
                            m["quality"] == "bad" and m["reason"] == "edge node offline (NDEATH)"
                        ),
                    ),
                    timeout=15,
                    message=f"{point} Bad",
                )
            b.send(
                {
                    "cmd": "ddata",
                    "device": "pump1",
                    "metrics": [{"name": "Inputs/Speed", "value": 9.5}],
                    "by_alias": True,
                }
            )
            await wait_for(_value(sub, "b_speed", _good(9.5)), timeout=10)
            status = await wait_for(
                lambda: (s := _status()).get("nodes_offline") == 1 and s, timeout=10
            )
            assert status["nodes"] == {"plantA/E1": "offline", "plantB/E1": "online"}
            assert (
                status["nodes_online"],
                status["devices_online"],
                status["devices_offline"],
            ) == (1, 2, 2)
            of_b = [t for t, _ in list(sub.seen) if t.startswith(("out/plantB.", "out/b_"))]
            assert all(m["quality"] == "good" for t in set(of_b) for m in sub.on(t))

            # each was asked once, and got only its own commands
            assert (_rebirths(a), _rebirths(b)) == (1, 1)
            assert a.events("dcmd") == [] and _commands(b, "ncmd", "Temp") == []
    finally:
        a.close()
        b.close()
        sub.close()
