"""Sparkplug B templates (Ignition's UDTs): the codec on definitions, instances, nested
templates, parameters, datasets, the depth limit and malformed input; the host's tracker
flattening instances into ``{metric}/{member}`` points; and a real `gateway run` reading UDT
instances that Eclipse Tahu's JavaScript edge node (sparkplug-client, a codec we did not
write) publishes through a real mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, wait_for
from sparkplug_peers import Edge, running
from test_sparkplug_host import Subscriber, _adapter, _message

from gateway.commands import WriteRefused, WriteStatus
from gateway.types import Quality
from protocols.sparkplug import codec
from protocols.sparkplug.codec import (
    CodecError,
    DataSet,
    DataType,
    Metric,
    Parameter,
    Payload,
    PropertyValue,
    Template,
    Topic,
    decode_payload,
    encode_payload,
)
from protocols.sparkplug.config import HostPoint
from protocols.sparkplug.tracker import HostTracker

GROUP, NODE = "plant1", "E1"
T = DataType.TEMPLATE

# --- the codec ----------------------------------------------------------------------------------

MOTOR_DEF = Template(
    (Metric("Amps", datatype=DataType.DOUBLE, value=0.0),), is_definition=True, version="1"
)
PUMP_DEF = Template(
    (
        Metric("Speed", datatype=DataType.FLOAT, value=0.0),
        Metric("Running", datatype=DataType.BOOLEAN, value=False),
        Metric("Motor", datatype=T, template=Template(template_ref="Motor")),
    ),
    is_definition=True,
    parameters=(Parameter("Site", DataType.STRING, "north"),),
)


def _pump(speed: float = 2.5, running: bool = True, amps: float = 4.25) -> Template:
    return Template(
        (
            Metric("Speed", datatype=DataType.FLOAT, value=speed),
            Metric("Running", datatype=DataType.BOOLEAN, value=running),
            Metric(
                "Motor",
                datatype=T,
                template=Template(
                    (Metric("Amps", datatype=DataType.DOUBLE, value=amps),), template_ref="Motor"
                ),
            ),
        ),
        template_ref="Pump",
        parameters=(
            Parameter("Site", DataType.STRING, "south"),
            Parameter("Id", DataType.INT32, -3),
            Parameter("Serial", DataType.UINT64, 2**63 + 1),
            Parameter("Gain", DataType.FLOAT, 0.5),
            Parameter("Offset", DataType.DOUBLE, -1.25),
            Parameter("Enabled", DataType.BOOLEAN, True),
            Parameter("Unset", DataType.INT32, None),
        ),
    )


def _nested(depth: int) -> Template:
    """A template with ``depth`` levels of templates: the outermost is level 1."""
    inner = Template((Metric("x", datatype=DataType.INT32, value=depth),), template_ref="L")
    for _ in range(depth - 1):
        inner = Template((Metric("sub", datatype=T, template=inner),), template_ref="L")
    return inner


def test_template_definitions_instances_nested_and_parameters_round_trip() -> None:
    payload = Payload(
        1000,
        (
            Metric("Motor", datatype=T, template=MOTOR_DEF),
            Metric("_types_/Pump", datatype=T, template=PUMP_DEF),
            Metric(
                "Pump1",
                5,
                1500,
                T,
                template=_pump(),
                properties={"Quality": PropertyValue(DataType.INT32, 192)},
            ),
        ),
        0,
    )
    back = decode_payload(encode_payload(payload))
    assert back == payload
    pump = back.metrics[2].template
    assert pump is not None and pump.metrics[2].template is not None
    assert pump.metrics[2].template.metrics[0].value == 4.25
    assert {p.name: p.value for p in pump.parameters}["Serial"] == 2**63 + 1
    assert back.metrics[2].value is None  # a template's value is in .template, never .value


def test_a_template_is_template_value_field_18_as_the_proto_has_it() -> None:
    # Metric: name "u" (0a 01 75), datatype 19 (20 13), template_value (field 18, LEN:
    # key 0x92 0x01): member "a" Boolean true (12 07: 0a 01 61 20 0b 70 01), template_ref "P"
    # (22 01 50), is_definition absent.
    member = Metric("a", datatype=DataType.BOOLEAN, value=True)
    metric = Metric("u", datatype=T, template=Template((member,), template_ref="P"))
    raw = bytes.fromhex("0a0175" + "2013" + "92010c" + "12070a0161200b7001" + "220150")
    assert codec.encode_metric(metric) == raw
    assert codec.decode_metric(raw) == metric


def _untyped(metric: Metric) -> bytes:
    """``metric`` as DATA may carry it: no datatype, nor any of its template's members."""
    out = b"" if metric.name is None else codec._len_field(1, metric.name.encode())
    if metric.alias is not None:
        out += codec._key(2, 0) + codec._varint(metric.alias)
    if metric.template is not None:
        members = b"".join(codec._len_field(2, _untyped(m)) for m in metric.template.metrics)
        return out + codec._len_field(18, members)
    assert metric.datatype is not None
    return out + codec._encode_value(metric.datatype, metric.value, 10)


def _untyped_data(timestamp: int, seq: int, *metrics: Metric) -> bytes:
    """A DATA payload whose metrics have no datatypes (as Ignition's)."""
    body = b"".join(codec._len_field(2, _untyped(m)) for m in metrics)
    return encode_payload(Payload(timestamp, (), seq)) + body


def test_members_of_a_template_in_data_take_datatypes_from_the_lookup_by_path() -> None:
    """DATA may leave datatypes out, a template's members' too: the lookup is asked with the
    member's path below the top-level metric."""
    # encode with datatypes, then strip every datatype field (key 0x20, one-byte value)
    typed = Metric(
        alias=5,
        datatype=T,
        template=Template(
            (
                Metric("Speed", datatype=DataType.DOUBLE, value=7.5),
                Metric(
                    "Motor",
                    datatype=T,
                    template=Template((Metric("Amps", datatype=DataType.DOUBLE, value=9.0),)),
                ),
            )
        ),
    )
    raw = _untyped(typed)
    assert b"\x20" not in raw  # no datatype field (key 0x20) anywhere
    asked: list[tuple[Any, ...]] = []

    def lookup(name: str | None, alias: int | None, members: tuple[str, ...] = ()) -> Any:
        asked.append((name, alias, members))
        return {(): T, ("Speed",): DataType.DOUBLE, ("Motor",): T}.get(
            members, DataType.DOUBLE if members == ("Motor", "Amps") else None
        )

    back = codec.decode_metric(raw, lookup)
    assert asked == [
        (None, 5, ()),
        (None, 5, ("Speed",)),
        (None, 5, ("Motor",)),
        (None, 5, ("Motor", "Amps")),
    ]
    assert back.template is not None and back.template.metrics[0].value == 7.5
    motor = back.template.metrics[1].template
    assert motor is not None and motor.metrics[0].value == 9.0
    assert back.alias == 5
    # without a lookup a template is still read (field 18 says so); untyped members are None
    plain = codec.decode_metric(raw)
    assert plain.datatype is T and plain.template is not None
    assert plain.template.metrics[0].value is None


def test_templates_nested_deeper_than_the_limit_are_a_codec_error() -> None:
    deepest = codec.MAX_TEMPLATE_DEPTH
    ok = Payload(metrics=(Metric("t", datatype=T, template=_nested(deepest)),))
    back = decode_payload(encode_payload(ok))
    assert back == ok
    deep = Payload(metrics=(Metric("t", datatype=T, template=_nested(deepest + 1)),))
    with pytest.raises(CodecError, match=f"nested more than {deepest} deep"):
        decode_payload(encode_payload(deep))
    # a hostile chain far deeper than Python's recursion limit is refused just the same
    raw = b""
    for _ in range(2000):  # a member that is a template, in a template, 2000 times
        raw = b"\x12" + _len(b"\x20\x13\x92\x01" + _len(raw))
    with pytest.raises(CodecError, match="nested more than"):
        codec.decode_metric(bytes([0x20, 0x13, 0x92, 0x01]) + _len(raw))


def _len(data: bytes) -> bytes:
    out, size = bytearray(), len(data)
    while True:
        out.append((size & 0x7F) | (0x80 if size >> 7 else 0))
        size >>= 7
        if not size:
            return bytes(out) + data


@pytest.mark.parametrize(
    ("template_value", "why"),
    [
        (bytes.fromhex("120a0a01"), "truncated"),  # a member longer than the template
        (bytes.fromhex("1005"), "expected a length-delimited"),  # a member as a varint
        (bytes.fromhex("2202ffff"), "not UTF-8"),  # template_ref
        (bytes.fromhex("0a02c328"), "not UTF-8"),  # version
        (bytes.fromhex("28"), "truncated varint"),  # is_definition without its value
        (bytes.fromhex("1a030a01"), "truncated"),  # a parameter cut short
        (bytes.fromhex("1a04100328ff"), "truncated varint"),  # a parameter's value cut short
        (bytes.fromhex("0f"), "wire type 7"),
    ],
)
def test_malformed_templates_are_codec_errors(template_value: bytes, why: str) -> None:
    raw = bytes.fromhex("0a01742013") + b"\x92\x01" + _len(template_value)
    with pytest.raises(CodecError, match=why):
        codec.decode_metric(raw)


def test_datasets_round_trip_and_malformed_ones_are_codec_errors() -> None:
    dataset = DataSet(
        ("name", "count", "level", "on"),
        (DataType.STRING, DataType.INT32, DataType.DOUBLE, DataType.BOOLEAN),
        (("a", -1, 0.5, True), ("b", None, 2.0, False)),
    )
    metric = Metric("table", datatype=DataType.DATASET, dataset=dataset)
    assert codec.decode_metric(codec.encode_metric(metric)) == metric
    # types as a packed repeated uint32 (another encoder's choice) read the same
    packed = bytes.fromhex("0801" + "120161" + "1a010c" + "2205" + "0a03320161")
    assert codec.decode_metric(
        bytes.fromhex("2010") + b"\x8a\x01" + _len(packed)
    ).dataset == DataSet(("a",), (DataType.STRING,), (("a",),))
    with pytest.raises(CodecError, match="row of 1 values for 2 columns"):
        bad = bytes.fromhex("0802" + "120161" + "120162" + "1803" + "1803" + "2204" + "0a020801")
        codec.decode_metric(bytes.fromhex("2010") + b"\x8a\x01" + _len(bad))
    with pytest.raises(CodecError, match="2 columns with 1 names"):
        bad = bytes.fromhex("0802" + "120161" + "1803" + "1803")
        codec.decode_metric(bytes.fromhex("2010") + b"\x8a\x01" + _len(bad))


def test_a_nested_property_set_is_still_left_out_of_properties() -> None:
    # a property of type PropertySet (20) is not a scalar: dropped, the others kept
    props = bytes.fromhex("0a0171" + "0a0172" + "12020814" + "1204080b3801")
    back = codec.decode_metric(bytes.fromhex("200b7001") + b"\x4a" + _len(props))
    assert back.properties == {"r": PropertyValue(DataType.BOOLEAN, True)}


# --- the tracker --------------------------------------------------------------------------------


def _at(kind: str, device: str | None = None) -> Topic:
    return Topic(GROUP, kind, NODE, device)


def _wire(payload: Payload, tracker: HostTracker, where: Topic) -> Payload:
    return decode_payload(encode_payload(payload), tracker.datatype(where))


def _values(samples: tuple[Any, ...]) -> dict[str, Any]:
    return {s.point: s.value for s in samples}


NBIRTH = Payload(
    1000,
    (
        Metric("bdSeq", datatype=DataType.INT64, value=0),
        Metric("_types_/Motor", datatype=T, template=MOTOR_DEF),
        Metric("_types_/Pump", datatype=T, template=PUMP_DEF),
        Metric("Pump0", 1, datatype=T, template=_pump(1.0, False, 0.0)),
    ),
    0,
)
DBIRTH = Payload(2000, (Metric("Pump1", 10, datatype=T, template=_pump()),), 1)


def _born(**kwargs: Any) -> tuple[HostTracker, Any, Any]:
    tracker = HostTracker(**kwargs)
    out_n = tracker.receive(_at("NBIRTH"), _wire(NBIRTH, tracker, _at("NBIRTH")), 10.0)
    out_d = tracker.receive(_at("DBIRTH", "pump1"), _wire(DBIRTH, tracker, _at("DBIRTH")), 10.0)
    return tracker, out_n, out_d


def test_a_template_instance_is_a_point_per_member_and_definitions_are_not_points() -> None:
    tracker, out_n, out_d = _born()
    assert _values(out_n.samples) == {
        "E1.Pump0.Speed": 1.0,
        "E1.Pump0.Running": False,
        "E1.Pump0.Motor.Amps": 0.0,
    }
    assert _values(out_d.samples) == {
        "E1.pump1.Pump1.Speed": 2.5,
        "E1.pump1.Pump1.Running": True,
        "E1.pump1.Pump1.Motor.Amps": 4.25,
    }
    assert all(s.quality is Quality.GOOD for s in out_d.samples)
    assert not any("types" in p for p in tracker.learnt)
    assert len(tracker.learnt) == 6 and tracker.name_collisions == 0


def test_data_carries_the_instance_with_the_changed_members_only_by_alias_or_name() -> None:
    tracker, _, _ = _born()
    where = _at("DDATA", "pump1")
    changed = Template((Metric("Speed", datatype=DataType.FLOAT, value=3.5),), template_ref="Pump")
    # by alias, datatypes left out (top-level and member), as Ignition sends DATA
    raw = _untyped_data(3000, 2, Metric(alias=10, datatype=T, template=changed))
    out = tracker.receive(where, decode_payload(raw, tracker.datatype(where)), 11.0)
    assert _values(out.samples) == {"E1.pump1.Pump1.Speed": 3.5}
    assert out.samples[0].source_ts == 3.0 and not out.rebirth and out.problem is None
    # by name, a nested member, with the instance's timestamp and Quality for its members
    motor = Template((Metric("Amps", datatype=DataType.DOUBLE, value=5.0),), template_ref="Motor")
    instance = Template(
        (
            Metric("Motor", datatype=T, template=motor),
            Metric(
                "Running",
                timestamp=4500,
                datatype=DataType.BOOLEAN,
                value=False,
                properties={"Quality": PropertyValue(DataType.INT32, 192)},
            ),
        ),
        template_ref="Pump",
    )
    uncertain = {"Quality": PropertyValue(DataType.INT32, 64)}
    data = Payload(
        3000,
        (Metric("Pump1", timestamp=4000, datatype=T, template=instance, properties=uncertain),),
        3,
    )
    out = tracker.receive(where, _wire(data, tracker, where), 11.0)
    got = {s.point: (s.value, s.quality, s.source_ts) for s in out.samples}
    assert got == {
        "E1.pump1.Pump1.Motor.Amps": (5.0, Quality.UNCERTAIN, 4.0),
        "E1.pump1.Pump1.Running": (False, Quality.GOOD, 4.5),
    }
    # NDATA of the node's own instance
    ndata = Payload(
        3000,
        (
            Metric(
                alias=1,
                datatype=T,
                template=Template((Metric("Running", datatype=DataType.BOOLEAN, value=True),)),
            ),
        ),
        4,
    )
    out = tracker.receive(_at("NDATA"), _wire(ndata, tracker, _at("NDATA")), 12.0)
    assert _values(out.samples) == {"E1.Pump0.Running": True}


def test_an_unknown_member_a_null_instance_and_deaths() -> None:
    tracker, _, _ = _born(rebirth_interval=5.0)
    where = _at("DDATA", "pump1")
    extra = Template(
        (
            Metric("Speed", datatype=DataType.FLOAT, value=6.0),
            Metric("Torque", datatype=DataType.FLOAT, value=1.0),
        )
    )
    out = tracker.receive(
        where,
        _wire(Payload(3000, (Metric(alias=10, datatype=T, template=extra),), 2), tracker, where),
        11.0,
    )
    assert _values(out.samples) == {"E1.pump1.Pump1.Speed": 6.0}  # the known member is read
    assert out.rebirth and out.problem == "DDATA metric not in the birth: Pump1/Torque"
    assert tracker.unknown_metrics == 1
    null = Payload(3000, (Metric(alias=10, datatype=T, is_null=True),), 3)
    out = tracker.receive(where, _wire(null, tracker, where), 12.0)
    assert {s.point: (s.value, s.quality, s.reason) for s in out.samples} == {
        p: (None, Quality.BAD, "null value")
        for p in ("E1.pump1.Pump1.Speed", "E1.pump1.Pump1.Running", "E1.pump1.Pump1.Motor.Amps")
    }
    out = tracker.receive(_at("DDEATH", "pump1"), Payload(3000, (), 4), 13.0)
    assert {s.point for s in out.samples} == {
        "E1.pump1.Pump1.Speed",
        "E1.pump1.Pump1.Running",
        "E1.pump1.Pump1.Motor.Amps",
    }
    out = tracker.receive(
        _at("NDEATH"), Payload(3000, (Metric("bdSeq", datatype=DataType.INT64, value=0),)), 14.0
    )
    assert {s.point for s in out.samples} == {
        "E1.Pump0.Speed",
        "E1.Pump0.Running",
        "E1.Pump0.Motor.Amps",
    }
    assert all(s.reason == "edge node offline (NDEATH)" for s in out.samples)


def test_member_names_collide_count_and_stop_at_max_points() -> None:
    tracker = HostTracker()
    birth = Payload(
        1000,
        (
            Metric("Pump1/Speed", datatype=DataType.FLOAT, value=9.0),
            Metric("Pump1", datatype=T, template=_pump()),
        ),
        0,
    )
    out = tracker.receive(_at("NBIRTH"), _wire(birth, tracker, _at("NBIRTH")), 10.0)
    assert _values(out.samples)["E1.Pump1.Speed"] == 9.0  # the first in the birth keeps it
    assert [s.point for s in out.samples].count("E1.Pump1.Speed") == 1
    assert tracker.name_collisions == 1 and len(out.notices) == 1
    assert "'Pump1/Speed'" in out.notices[0] and "has that name" in out.notices[0]
    out = tracker.receive(_at("NBIRTH"), _wire(birth, tracker, _at("NBIRTH")), 11.0)  # rebirth
    assert tracker.name_collisions == 1 and out.notices == ()  # said and counted once
    limited = HostTracker(max_points=2)
    limited.receive(_at("NBIRTH"), _wire(NBIRTH, limited, _at("NBIRTH")), 10.0)
    assert len(limited.learnt) == 2 and limited.over_limit == 1


def test_declared_members_take_their_type_and_unit_and_a_declared_template_is_said() -> None:
    points = [
        HostPoint(
            name="speed",
            node=NODE,
            device="pump1",
            metric="Pump1/Speed",
            type="float64",
            unit="rpm",
        ),
        HostPoint(name="whole", node=NODE, device="pump1", metric="Pump1"),
    ]
    tracker, _, out_d = _born(points=points)
    speed = next(s for s in out_d.samples if s.point == "speed")
    assert (speed.value, speed.unit, speed.quality) == (2.5, "rpm", Quality.GOOD)
    assert "E1.pump1.Pump1.Speed" not in tracker.learnt
    assert any("is a template" in n for n in out_d.notices)
    declared, known, online = tracker.where("speed")
    assert known is not None and known.member and online


def test_an_instance_member_without_a_datatype_takes_the_definitions() -> None:
    """A birth's member should carry its datatype; one without gets the definition's, so
    that DATA without datatypes is read."""
    tracker = HostTracker()
    untyped = Metric(
        "Pump0",
        1,
        datatype=T,
        template=Template((Metric("Speed", is_null=True),), template_ref="Pump"),
    )
    birth = Payload(1000, (NBIRTH.metrics[2], untyped), 0)
    tracker.receive(_at("NBIRTH"), _wire(birth, tracker, _at("NBIRTH")), 10.0)
    raw = _untyped_data(
        2000,
        1,
        Metric(
            alias=1,
            datatype=T,
            template=Template((Metric("Speed", datatype=DataType.FLOAT, value=8.5),)),
        ),
    )
    out = tracker.receive(_at("NDATA"), decode_payload(raw, tracker.datatype(_at("NDATA"))), 11)
    assert _values(out.samples) == {"E1.Pump0.Speed": 8.5}


# --- the adapter --------------------------------------------------------------------------------


async def test_a_write_to_a_template_member_is_refused_and_bad_templates_do_not_stop_it() -> None:
    adapter = _adapter(
        points=[
            {
                "name": "speed",
                "node": NODE,
                "device": "pump1",
                "metric": "Pump1/Speed",
                "type": "float32",
                "access": "rw",
            }
        ]
    )
    seen = adapter.bus.subscribe("telemetry/spb", maxsize=100, name="t")
    for kind, device, payload in (("NBIRTH", None, NBIRTH), ("DBIRTH", "pump1", DBIRTH)):
        topic = codec.topic(GROUP, kind, NODE, device)
        adapter._on_message(None, None, _message(topic, encode_payload(payload)))
    assert adapter.bad_payloads == 0
    adapter._connected = True
    with pytest.raises(WriteRefused) as refused:
        await adapter.write("speed", 3.0)
    assert refused.value.status is WriteStatus.NOT_WRITABLE
    assert "template member" in str(refused.value) and adapter.writes_refused == 1
    # a template nested too deep: counted, and the next message is read
    deep = Payload(3000, (Metric(alias=10, datatype=T, template=_nested(20)),), 2)
    topic = codec.topic(GROUP, "DDATA", NODE, "pump1")
    adapter._on_message(None, None, _message(topic, encode_payload(deep)))
    assert adapter.bad_payloads == 1
    while len(seen):
        seen.get_nowait()
    good = Payload(
        3000,
        (
            Metric(
                alias=10,
                datatype=T,
                template=Template((Metric("Speed", datatype=DataType.FLOAT, value=4.0),)),
            ),
        ),
        3,
    )
    adapter._on_message(None, None, _message(topic, encode_payload(good)))
    got = seen.get_nowait()
    assert got is not None and [(s.point, s.value) for s in got.samples] == [("speed", 4.0)]


# --- a real gateway, Tahu's edge node, mosquitto ------------------------------------------------


PUMP_MEMBERS = [
    {"name": "Speed", "type": "Float", "value": 0.0},
    {"name": "Running", "type": "Boolean", "value": False},
    {
        "name": "Motor",
        "type": "Template",
        "value": {
            "templateRef": "Motor",
            "isDefinition": False,
            "metrics": [{"name": "Amps", "type": "Double", "value": 0.0}],
        },
    },
]


def _tahu_pump(name: str, alias: int, speed: float, amps: float, site: str | None = None) -> dict:
    """A Tahu metric: an instance of Pump (Speed, Running, a nested Motor with Amps)."""
    motor = {
        "templateRef": "Motor",
        "isDefinition": False,
        "metrics": [{"name": "Amps", "type": "Double", "value": amps}],
    }
    value: dict = {
        "templateRef": "Pump",
        "isDefinition": False,
        "metrics": [
            {"name": "Speed", "type": "Float", "value": speed},
            {"name": "Running", "type": "Boolean", "value": True},
            {"name": "Motor", "type": "Template", "value": motor},
        ],
    }
    if site is not None:
        value["parameters"] = [{"name": "Site", "type": "String", "value": site}]
    return {"name": name, "type": "Template", "alias": alias, "value": value}


TAHU_BIRTHS = {
    "node_metrics": [
        {"name": "Node Control/Rebirth", "type": "Boolean", "value": False},
        {
            "name": "_types_/Motor",
            "type": "Template",
            "value": {
                "isDefinition": True,
                "metrics": [{"name": "Amps", "type": "Double", "value": 0.0}],
            },
        },
        {
            "name": "_types_/Pump",
            "type": "Template",
            "value": {
                "isDefinition": True,
                "version": "1",
                "metrics": PUMP_MEMBERS,
                "parameters": [{"name": "Site", "type": "String", "value": "north"}],
            },
        },
        _tahu_pump("Pump0", 1, 1.5, 2.0),
    ],
    "devices": {
        "pump1": [
            _tahu_pump("Pump1", 10, 2.5, 4.25, site="south"),
            {"name": "Level", "type": "Double", "alias": 11, "value": 0.75},
        ],
    },
}


def _config(path: Path, broker: int) -> Path:
    path.write_text(
        f"""
gateway: {{name: gw-templates}}
devices:
  spb:
    protocol: sparkplug
    role: host
    host: {HOST}
    port: {broker}
    group: {GROUP}
    host_id: scada
    keepalive: 5
    reconnect: {{initial: 0.1, max: 0.3}}
    points:
      - {{name: pump1_speed, node: {NODE}, device: pump1, metric: Pump1/Speed, type: float32}}
endpoints:
  out: {{protocol: mqtt, host: {HOST}, port: {broker}, reconnect: {{initial: 0.1, max: 0.3}}}}
bridges:
  - {{name: up, from: spb, to: out, topic: "out/{{point}}"}}
"""
    )
    return path


async def test_a_host_reads_udt_instances_that_tahus_edge_node_publishes(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """Tahu's sparkplug-payload encodes the templates: a definition and an instance in the
    NBIRTH, an instance with a nested template in the DBIRTH, then DDATA and NDATA with one
    changed member each, by alias."""
    config = _config(tmp_path / "gw.yaml", mosquitto.port)
    sub = Subscriber(mosquitto.port, "out/#", "spBv1.0/STATE/scada")
    edge: Edge | None = None
    try:
        async with running(config):
            # the host is subscribed once it says STATE online: births after it are all read
            await wait_for(lambda: sub.last("spBv1.0/STATE/scada"), timeout=20)
            edge = Edge(mosquitto.port, GROUP, NODE, TAHU_BIRTHS)
            await wait_for(edge.ready, timeout=15, message="the Tahu edge node's births")

            def value(point: str, want: Any) -> Any:
                def find() -> Any:
                    last = sub.last(f"out/{point}")
                    ok = last is not None and last["quality"] == "good" and last["value"] == want
                    return last if ok else None

                return find

            for point, want in {
                "pump1_speed": 2.5,  # declared: Pump1/Speed
                "E1.pump1.Pump1.Running": True,
                "E1.pump1.Pump1.Motor.Amps": 4.25,
                "E1.pump1.Level": 0.75,
                "E1.Pump0.Speed": 1.5,
                "E1.Pump0.Running": True,
                "E1.Pump0.Motor.Amps": 2.0,
            }.items():
                await wait_for(value(point, want), timeout=10, message=f"{point} = {want}")
            assert sub.on("out/E1.pump1.Pump1.Speed") == []  # declared: fed as pump1_speed
            assert not any("_types_" in t or t.endswith(("Pump1", "Pump0")) for t, _ in sub.seen)

            # DDATA by alias with one changed member of the nested template
            edge.send(
                {
                    "cmd": "ddata",
                    "device": "pump1",
                    "by_alias": True,
                    "metrics": [
                        {
                            "name": "Pump1",
                            "value": {
                                "templateRef": "Pump",
                                "isDefinition": False,
                                "metrics": [
                                    {
                                        "name": "Motor",
                                        "type": "Template",
                                        "value": {
                                            "templateRef": "Motor",
                                            "isDefinition": False,
                                            "metrics": [
                                                {"name": "Amps", "type": "Double", "value": 6.5}
                                            ],
                                        },
                                    }
                                ],
                            },
                        }
                    ],
                }
            )
            await wait_for(value("E1.pump1.Pump1.Motor.Amps", 6.5), timeout=10)
            # NDATA with one changed member, by alias
            edge.send(
                {
                    "cmd": "ndata",
                    "by_alias": True,
                    "metrics": [
                        {
                            "name": "Pump0",
                            "value": {
                                "templateRef": "Pump",
                                "isDefinition": False,
                                "metrics": [{"name": "Speed", "type": "Float", "value": 3.25}],
                            },
                        }
                    ],
                }
            )
            await wait_for(value("E1.Pump0.Speed", 3.25), timeout=10)
            await asyncio.sleep(0.5)
            # only the changed members were published again
            assert [m["value"] for m in sub.on("out/E1.pump1.Pump1.Running")] == [True]
            assert [m["value"] for m in sub.on("out/pump1_speed")] == [2.5]
            assert [m["value"] for m in sub.on("out/E1.Pump0.Running")] == [True]
            assert not any("error" in m for m in edge.printed())
            assert edge.events("ncmd") == []  # everything was readable: no rebirth asked
    finally:
        if edge is not None:
            edge.close()
        sub.close()
