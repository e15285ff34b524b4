"""A bridge's ``aggregate:`` (window statistics) and ``heartbeat:`` (re-send a quiet point).

The windowing is tested sans-IO (`gateway.aggregate`, the clock passed in); end to end, an MQTT
source endpoint fed by ``mosquitto_pub`` with readings that carry their own ``ts`` (so the
windows are known in advance) is bridged with ``aggregate:`` to another MQTT endpoint, read back
with ``mosquitto_sub`` from persistent sessions (nothing raced, exact counts); the heartbeat runs
through ``gateway run`` from the Modbus simulator, whose steady point the deadband holds back.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, find_binary, modbus_device_yaml, wait_for
from test_mqtt_adapter import collect, create_session, run_cmd
from test_opcua_server import running_gateway
from test_translate_runtime import Recorder

from gateway.aggregate import Aggregator, Heartbeat, summary_specs
from gateway.bridge import Bridge
from gateway.bus import Bus
from gateway.commands import WriteStatus
from gateway.config import load_config_text
from gateway.config.errors import ConfigError
from gateway.globs import Globs
from gateway.types import Access, Message, MessageKind, PointSpec, Quality, Sample
from protocols.modbus.simulator import Simulator

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z, on the minute
GATEWAY = [sys.executable, "-m", "gateway"]
ALL = ("mean", "min", "max", "first", "last", "sum", "count")


def reading(
    point: str, value: Any, at: float, quality: Quality = Quality.GOOD, **kw: Any
) -> Sample:
    return Sample(point, value, quality, source_ts=at, gateway_ts=at + 0.5, **kw)


def telemetry(*samples: Sample, device: str = "dev") -> Message:
    return Message.telemetry(device, samples)


def table(messages: list[Message]) -> dict[str, tuple[Any, Quality, float, str | None, str | None]]:
    """point -> (value, quality, source_ts, unit, reason) of every sample in ``messages``."""
    return {
        s.point: (s.value, s.quality, s.source_ts, s.unit, s.reason)
        for m in messages
        for s in m.samples
    }


# --- windows, sans-IO --------------------------------------------------------------------------


def test_windows_start_on_the_clock_and_a_reading_of_a_later_window_closes_one() -> None:
    agg = Aggregator(60, ALL, grace=2)
    assert agg.add(telemetry(reading("t", 10.0, T0 + 1, unit="degC")), T0 + 1) == []
    assert agg.add(telemetry(reading("t", 14, T0 + 20, unit="degC")), T0 + 20) == []
    assert agg.add(telemetry(reading("t", 12.5, T0 + 59.9, unit="degC")), T0 + 60) == []
    assert agg.status() == {"windows": 0, "late": 0, "open_windows": 1}
    out = agg.add(telemetry(reading("t", 30.0, T0 + 61, unit="degC")), T0 + 61)
    assert len(out) == 1 and out[0].device == "dev" and out[0].kind is MessageKind.TELEMETRY
    assert [s.point for s in out[0].samples] == [f"t.{s}" for s in ALL]
    assert table(out) == {
        "t.mean": (12.1666666667, Quality.GOOD, T0, "degC", None),
        "t.min": (10.0, Quality.GOOD, T0, "degC", None),
        "t.max": (14, Quality.GOOD, T0, "degC", None),
        "t.first": (10.0, Quality.GOOD, T0, "degC", None),
        "t.last": (12.5, Quality.GOOD, T0, "degC", None),
        "t.sum": (36.5, Quality.GOOD, T0, "degC", None),
        "t.count": (3, Quality.GOOD, T0, None, None),  # a count has no unit
    }
    assert {s.gateway_ts for s in out[0].samples} == {T0 + 61}  # when it was made
    assert agg.status() == {"windows": 1, "late": 0, "open_windows": 1}
    # windows of other sizes start on their own multiples; integer sums stay exact; the
    # statistics come in the config's order
    agg = Aggregator(900, ["sum", "max"])
    agg.add(telemetry(reading("n", 2**53, T0 + 899), reading("n", 1, T0 + 899)), 0)
    (out,) = agg.flush(0)
    assert [s.point for s in out.samples] == ["n.sum", "n.max"]
    assert table([out]) == {
        "n.sum": (2**53 + 1, Quality.GOOD, T0, None, None),
        "n.max": (2**53, Quality.GOOD, T0, None, None),
    }


def test_bad_readings_are_counted_out_and_a_window_of_them_only_is_bad() -> None:
    agg = Aggregator(10, ["mean", "count", "last"])
    agg.add(
        telemetry(
            reading("a", 4.0, T0 + 1),
            reading("a", None, T0 + 2, Quality.BAD, reason="timeout"),
            reading("a", 6.0, T0 + 3),
            reading("u", 1.0, T0 + 1, Quality.UNCERTAIN, reason="out of range"),
            reading("u", 3.0, T0 + 2),
            reading("n", float("nan"), T0 + 1),
            reading("n", 2.0, T0 + 2, Quality.BAD, reason="sensor fault"),
            reading("z", None, T0 + 4, Quality.BAD, reason="connection refused"),
            reading("i", float("inf"), T0 + 5),
        ),
        T0 + 5,
    )
    got = table(agg.flush(T0 + 20))
    bad_a = "1 of 3 readings bad (timeout)"
    assert got["a.mean"] == (5.0, Quality.UNCERTAIN, T0, None, bad_a)
    assert got["a.count"] == (2, Quality.UNCERTAIN, T0, None, bad_a)
    assert got["u.mean"] == (
        2.0,
        Quality.UNCERTAIN,
        T0,
        None,
        "1 of 2 readings uncertain (out of range)",
    )
    # a bad reading's value is not used, whatever it is; the last reason is kept
    assert got["n.mean"] == (None, Quality.BAD, T0, None, "sensor fault")
    assert got["n.count"] == (0, Quality.BAD, T0, None, "sensor fault")
    assert got["z.last"] == (None, Quality.BAD, T0, None, "connection refused")
    assert got["i.mean"] == (None, Quality.BAD, T0, None, "not a finite number")
    assert agg.status()["open_windows"] == 0


def test_the_clock_closes_a_window_after_its_end_and_a_quiet_grace() -> None:
    agg = Aggregator(60, ["mean"], grace=2)
    agg.add(telemetry(reading("t", 1.0, T0 + 50)), T0 + 50)
    assert agg.due(T0 + 61.9) == []  # end + grace not reached
    agg.add(telemetry(reading("t", 3.0, T0 + 59)), T0 + 61.5)  # a late arrival, in time
    assert agg.due(T0 + 62.5) == []  # its last reading came less than grace ago
    (out,) = agg.due(T0 + 63.5)
    assert table([out]) == {"t.mean": (2.0, Quality.GOOD, T0, None, None)}
    assert agg.due(T0 + 100) == []  # a window is sent once
    # a reading of a window already sent is late: counted and dropped
    assert agg.add(telemetry(reading("t", 9.0, T0 + 30)), T0 + 101) == []
    assert agg.status() == {"windows": 1, "late": 1, "open_windows": 0}
    # so is one older than the open window
    agg.add(telemetry(reading("t", 5.0, T0 + 130)), T0 + 131)
    agg.add(telemetry(reading("t", 6.0, T0 + 70)), T0 + 131)
    assert agg.status() == {"windows": 1, "late": 2, "open_windows": 1}
    # old readings arriving in a burst are summarised whole, not cut at the first tick
    agg = Aggregator(60, ["count"], grace=2)
    for k in range(5):
        agg.add(telemetry(reading("t", k, T0 + k)), 1e10 + k)
        assert agg.due(1e10 + k + 1) == []
    assert table(agg.due(1e10 + 7)) == {"t.count": (5, Quality.GOOD, T0, None, None)}


def test_devices_have_their_own_windows_and_state_ends_with_them() -> None:
    agg = Aggregator(60, ["max"], grace=0)
    agg.add(telemetry(reading("t", 1, T0 + 1), device="a"), T0 + 1)
    agg.add(telemetry(reading("t", 2, T0 + 61), device="b"), T0 + 61)  # b's window, not a's
    assert agg.status()["open_windows"] == 2
    out = agg.due(T0 + 61)  # a's ended at T0 + 60
    assert [(m.device, table([m])) for m in out] == [
        ("a", {"t.max": (1, Quality.GOOD, T0, None, None)})
    ]
    assert agg.status()["open_windows"] == 1
    (out_b,) = agg.flush(T0 + 62)
    assert out_b.device == "b" and out_b.topic == "telemetry/b"
    assert table([out_b]) == {"t.max": (2, Quality.GOOD, T0 + 60, None, None)}
    assert (
        agg.status()["open_windows"] == 0 and agg.flush(T0 + 63) == []
    )  # nothing left, nothing sent


def test_text_and_unselected_points_pass_through_at_once() -> None:
    agg = Aggregator(60, ["mean"], points=["t*"], text=[("dev", "tmode")])
    mode = reading("tmode", "auto", T0 + 1)
    flag = reading("trip", True, T0 + 1)
    other = reading("p", 1.5, T0 + 1)
    failed = reading("tmode", None, T0 + 2, Quality.BAD, reason="timeout")
    (out,) = agg.add(telemetry(mode, reading("t", 1.0, T0 + 1), flag, other, failed), T0 + 2)
    assert out.samples == (mode, flag, other, failed)  # unchanged, in order
    assert out.device == "dev" and out.kind is MessageKind.TELEMETRY
    assert agg.status()["open_windows"] == 1
    # an OPC UA event's fields, and any event, pass whole
    record = Message(
        "telemetry/dev", MessageKind.EVENT, (reading("event.severity", 700, T0 + 2),), "dev",
        device="dev", meta={"record": "event"},
    )  # fmt: skip
    assert agg.add(record, T0 + 2) == [record]
    assert agg.add(replace(record, kind=MessageKind.TELEMETRY), T0 + 2) == [
        replace(record, kind=MessageKind.TELEMETRY)
    ]
    # a failed read of a point not declared as text is a bad reading of its window
    agg.add(telemetry(reading("t", None, T0 + 3, Quality.BAD)), T0 + 3)
    assert table(agg.flush(T0 + 4))["t.mean"][:2] == (1.0, Quality.UNCERTAIN)


def test_summary_points_as_a_target_sees_them() -> None:
    spec = PointSpec("d/temp", "temp", "int16", "degC", Access.READ_WRITE, "", 0, 100, 5)
    mean, count, high = summary_specs(spec, ["mean", "count", "max"], 60, Globs(("*",)))
    assert (mean.id, mean.name, mean.datatype, mean.unit) == (
        "d/temp.mean",
        "temp.mean",
        "float64",
        "degC",
    )
    assert (mean.low, mean.high, mean.access, mean.write_rate) == (0, 100, Access.READ, None)
    assert (count.datatype, count.unit, count.low, count.high) == ("uint32", None, None, None)
    assert (high.datatype, high.access, high.description) == (
        "int16",
        Access.READ,
        "max of temp per 60 s",
    )
    text = PointSpec("d/mode", "mode", "string")
    assert summary_specs(text, ["mean"], 60, Globs(("*",))) == [text]
    assert summary_specs(spec, ["mean"], 60, Globs(("flow",))) == [spec]
    agg = Aggregator(60, ["mean"], points=["te*"])
    assert agg.summary_of("temp.mean") == "temp"
    assert agg.summary_of("temp.max") is None and agg.summary_of("flow.mean") is None


# --- heartbeat, sans-IO ------------------------------------------------------------------------


def test_heartbeat_resends_a_quiet_point_unchanged_and_forgets_learnt_ones() -> None:
    beat = Heartbeat(10, kept=[("dev", "kept")], forget=100)
    a = reading("a", 1.5, T0, unit="degC")
    kept = reading("kept", None, T0, Quality.BAD, reason="timeout")
    beat.sent(telemetry(a, kept), 0)
    beat.sent(telemetry(reading("b", "x", T0), device="other"), 5)
    assert beat.due(9.9) == []
    (out,) = beat.due(10)
    assert out.samples == (a, kept) and out.device == "dev"  # the very samples, timestamps too
    assert beat.due(12) == []
    beat.sent(telemetry(reading("a", 2.0, T0 + 14)), 14)  # a fresh reading: a's clock restarts
    (other,) = beat.due(15)
    assert other.device == "other" and [s.value for s in other.samples] == ["x"]
    (out,) = beat.due(20)
    assert out.samples == (kept,)
    (out,) = beat.due(24)
    assert [(s.value, s.source_ts) for s in out.samples] == [(2.0, T0 + 14)]
    assert beat.status() == {"resent": 5, "forgotten": 0, "tracked": 3}
    # points learnt at run time stop after ``forget`` seconds without a reading; kept ones not
    beat.due(200)
    assert beat.status()["forgotten"] == 2 and beat.status()["tracked"] == 1
    (out,) = beat.due(210)
    assert out.samples == (kept,)
    # alarm events are not telemetry, and a record's fields (an OPC UA event) happened once:
    # never repeated
    beat.sent(Message("event/dev", MessageKind.EVENT, (a,), "dev", device="dev"), 300)
    record = Message("telemetry/dev", MessageKind.TELEMETRY, (a,), "dev", meta={"record": "event"})
    beat.sent(record, 300)
    assert beat.status()["tracked"] == 1


# --- config ------------------------------------------------------------------------------------


def plant_yaml(bridges: str) -> str:
    return f"""
devices:
  pump:
    protocol: modbus
    host: {HOST}
    port: 5020
    points:
      - {{name: temp, table: input, address: 0, type: int16, unit: degC}}
      - {{name: mode, table: holding, address: 2, type: string, length: 2}}
      - {{name: flow, table: input, address: 3}}
      - {{name: flow.mean, table: input, address: 4}}
endpoints:
  broker: {{protocol: mqtt, host: {HOST}}}
  regs: {{protocol: modbus, role: server, host: {HOST}, port: 5502}}
bridges:
{bridges}"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "plant.yaml")
    return [str(p) for p in info.value.problems]


def test_validate_names_each_bad_setting_where_it_is() -> None:
    bridges = """  - name: a
    from: pump
    to: broker
    aggregate: {every: 0, stats: [mean, avg]}
    heartbeat: -5
  - name: b
    from: pump
    to: broker
    aggregate: {every: 60, stats: [max, max], grace: -1}
  - name: c
    from: pump
    to: broker
    points: [temp, mode]
    aggregate: {every: 60, points: [tmp*, temp]}
  - {name: d, from: pump, to: broker, aggregate: {every: 60}}
"""
    assert problems(plant_yaml(bridges)) == [
        "plant.yaml:19:24: bridges[0].aggregate.every: found 0; expected a number > 0",
        "plant.yaml:19:41: bridges[0].aggregate.stats[1]: found 'avg'; expected one of 'mean',"
        " 'min', 'max', 'first', 'last', 'sum', 'count'",
        "plant.yaml:20:16: bridges[0].heartbeat: found -5; expected a number > 0",
        "plant.yaml:24:35: bridges[1].aggregate.stats: found ['max', 'max']; expected each"
        " statistic once ('max' twice or more)",
        "plant.yaml:24:54: bridges[1].aggregate.grace: found -1; expected a number >= 0",
        "plant.yaml:29:37: bridges[2].aggregate.points[0]: found 'tmp*', which matches no point"
        " bridge 'c' carries; expected a glob matching some of: temp, mode",
        "plant.yaml:30:50: bridges[3].aggregate.stats: found 'flow.mean', a summary of 'flow' and"
        " a point of pump too; expected statistics whose <point>.<stat> names no point the bridge"
        " carries (or aggregate: points leaving one of them out)",
    ]


def test_a_server_target_serves_the_summaries_and_not_the_points_they_replace() -> None:
    served = """  - name: regs
    from: pump
    points: [temp, mode]
    to: regs
    aggregate: {every: 60, stats: [mean, count]}
    map:
      - {point: temp.mean, table: input, address: 0, type: float32}
      - {point: temp.count, table: input, address: 2, type: uint32}
      - {point: mode, table: holding, address: 0, type: string, length: 2}
"""
    config = load_config_text(plant_yaml(served), "plant.yaml")
    (bridge,) = config.bridges
    assert bridge.aggregate is not None and bridge.aggregate.stats == ["mean", "count"]
    assert bridge.heartbeat is None
    raw = served.replace("temp.mean", "temp")
    assert problems(plant_yaml(raw)) == [
        "plant.yaml:22:17: bridges[0].map[0].point: found 'temp': the bridge carries no point"
        " 'temp'; expected a point the bridge carries: temp.mean, temp.count, mode"
    ]


# --- the bridge: stages in order ---------------------------------------------------------------


ALARM = Message(
    "event/pump", MessageKind.EVENT, (Sample("temp.anomaly", 0.9),), "up", device="pump"
)


class Scorer:
    """Stands in for the anomaly stage: records what it is given to score."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def process_batch_async(self, batch: list[Message]) -> list[tuple[Message, list[Any]]]:
        self.seen += [s.point for m in batch for s in m.samples]
        # the first reading raises an alarm: an event, sent as it comes
        return [(m, [ALARM] if m.samples[0].value == 68 else []) for m in batch]  # 20 degC

    def close(self) -> None:
        pass

    def status(self) -> dict[str, int]:
        return {}


async def test_anomaly_scores_raw_readings_and_a_stop_flushes_the_open_window() -> None:
    config = load_config_text(
        plant_yaml(
            "  - {name: up, from: pump, to: broker, units: {temp: degF},"
            " aggregate: {every: 60, stats: [max, count], points: [temp]}, heartbeat: 3600}"
        ),
        "plant.yaml",
    ).bridges[0]
    bus, target = Bus(), Recorder()
    pump = [
        PointSpec("pump/temp", "temp", "int16", "degC", Access.READ_WRITE),
        PointSpec("pump/mode", "mode", "string"),
    ]
    bridge = Bridge(config, bus, target, sources={"pump": pump})  # type: ignore[arg-type]
    scorer = Scorer()
    bridge.anomaly = scorer  # type: ignore[assignment]
    assert [p.name for p in bridge.points()["pump"]] == ["temp.max", "temp.count", "mode"]
    assert bridge.points()["pump"][0].unit == "degF"
    bridge.subscribe()
    task = asyncio.create_task(bridge.run())
    now = time.time() // 60 * 60 + 1  # a window the clock does not close meanwhile
    await bus.publish(Message.telemetry("pump", (reading("temp", 20, now, unit="degC"),)))
    await bus.publish(Message.telemetry("pump", (reading("temp", 25, now + 1, unit="degC"),)))
    await wait_for(lambda: scorer.seen == ["temp", "temp"])  # the readings, not summaries
    await wait_for(lambda: target.sent == [ALARM])  # the alarm at once, the window stays open
    refused = await bridge.write("pump", "temp.max", 1.0, origin="test")
    assert refused.status is WriteStatus.NOT_WRITABLE and "summary of temp" in refused.reason

    class History:  # the shadow keeps the device's readings, not the summaries
        def keeps_history(self, device: str) -> bool:
            return True

    bridge.use_history(History())  # type: ignore[arg-type]
    assert bridge.historized("pump", "mode") and not bridge.historized("pump", "temp.max")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    alarm, flushed = target.sent
    assert alarm is ALARM and bridge.status()["forwarded"] == 1  # the alarm is no telemetry
    assert table([flushed]) == {
        "temp.max": (77.0, Quality.GOOD, now // 60 * 60, "degF", None),
        "temp.count": (2, Quality.GOOD, now // 60 * 60, None, None),
    }
    assert bridge.status()["aggregate"] == {"windows": 1, "late": 0, "open_windows": 0}
    assert bridge.status()["heartbeat"]["tracked"] == 2


async def test_a_devices_events_pass_the_bridge_unscored_untranslated_and_uncomputed() -> None:
    """An OPC UA client's events come on its device's telemetry topic: they are not readings to score, inputs of computed points, names to rename or
    values to summarise."""
    config = load_config_text(
        plant_yaml(
            "  - {name: up, from: pump, to: broker,"
            " translate: {map: {temp: supply}}, computed: [{name: hot, expr: 'temp > 30'}, {name: rated, expr: '55'}],"
            " aggregate: {every: 60, stats: [max]}}"
        ),
        "plant.yaml",
    ).bridges[0]
    bus, target = Bus(), Recorder()
    pump = [PointSpec("pump/temp", "temp", "int16", "degC")]
    bridge = Bridge(config, bus, target, sources={"pump": pump})  # type: ignore[arg-type]
    scorer = Scorer()
    bridge.anomaly = scorer  # type: ignore[assignment]
    bridge.subscribe()
    task = asyncio.create_task(bridge.run())
    now = time.time() // 60 * 60 + 1
    fields = (reading("event.severity", 700, now), reading("event.message", "high level", now))
    event = Message("telemetry/pump", MessageKind.EVENT, fields, "pump", device="pump")
    try:
        await bus.publish(event)
        await bus.publish(Message.telemetry("pump", (reading("temp", 21, now + 1),)))
        await wait_for(lambda: scorer.seen == ["temp", "hot", "rated"])  # the reading only
        await wait_for(lambda: len(target.sent) == 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    sent, flushed = target.sent
    assert sent.kind is MessageKind.EVENT and sent.samples == fields  # as it came
    assert {s.point for s in flushed.samples} == {"supply.max", "hot.max", "rated.max"}


# --- end to end --------------------------------------------------------------------------------


def source_yaml(broker: MosquittoBroker) -> str:
    return f"""
gateway: {{name: agg}}
endpoints:
  src:
    protocol: mqtt
    host: {broker.host}
    port: {broker.port}
    reconnect: {{initial: 0.05, max: 0.2}}
    points:
      - {{name: t, topic: in/t, unit: degC}}
      - {{name: mode, topic: in/mode, format: text}}
  out:
    protocol: mqtt
    host: {broker.host}
    port: {broker.port}
bridges:
  - {{name: per-sample, from: src, to: out, topic: "s/{{device}}/{{point}}", payload: sample,
     aggregate: {{every: 60, stats: [mean, min, max, last, count], grace: 1}}}}
  - {{name: per-device, from: src, to: out, topic: "d/{{device}}", payload: device,
     aggregate: {{every: 60, stats: [mean, max], grace: 3600}}}}
  - {{name: bare, from: src, to: out, topic: "v/{{device}}/{{point}}", payload: value,
     aggregate: {{every: 60, stats: [mean], grace: 3600}}}}
"""


def by_topic(messages: list[tuple[str, str]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for topic, payload in messages:
        try:
            value = json.loads(payload)
        except ValueError:
            value = payload
        out.setdefault(topic, []).append(value)
    return out


def minute(k: int) -> str:
    return f"2024-05-01T12:0{k}:00.000Z"


async def test_mqtt_readings_become_exact_window_statistics_and_a_stop_sends_the_last(
    mosquitto: MosquittoBroker,
) -> None:
    port = mosquitto.port
    for name, topic in (("agg-s", "s/#"), ("agg-d", "d/#"), ("agg-v", "v/#")):
        await create_session(port, name, topic)
    bad = {"value": None, "quality": "bad", "reason": "sensor fault"}
    readings = [
        {"value": 10.0, "ts": T0 + 1},  # window 12:00: 10, 14, 12
        {"value": 14, "ts": T0 + 20},
        {"value": 12.0, "ts": T0 + 40},
        {"value": 20.0, "ts": T0 + 61},  # 12:01: 20, a bad one, 21
        {**bad, "ts": T0 + 70},
        {"value": 21.0, "ts": T0 + 80},
        {**bad, "ts": T0 + 125},  # 12:02: only a bad one
        {"value": 30.0, "ts": T0 + 181},  # 12:03: open until the clock or the stop closes it
    ]
    pub = [find_binary("mosquitto_pub"), "-h", HOST, "-p", str(port), "-q", "1"]
    async with running_gateway(source_yaml(mosquitto)) as gateway:
        await asyncio.wait_for(gateway.adapters["src"].wait_connected(), 10)  # type: ignore[attr-defined]
        rc, _, err = await run_cmd(*pub, "-t", "in/mode", "-m", "auto")
        assert rc == 0, err
        lines = "\n".join(json.dumps(r) for r in readings) + "\n"
        proc = await asyncio.create_subprocess_exec(
            *pub, "-t", "in/t", "-l", stdin=asyncio.subprocess.PIPE
        )
        await proc.communicate(lines.encode())
        assert proc.returncode == 0
        # 12:00 to 12:02 closed by the next reading, 12:03 by the clock (grace 1 s, quiet)
        got = by_topic(await collect(port, "agg-s", "s/#", count=21, wait_s=20))
        status = gateway.status()["bridges"]
        assert status["per-sample"]["aggregate"] == {"windows": 4, "late": 0, "open_windows": 0}
        # the grace of 3600 s keeps 12:03 open on the other two bridges until the stop
        assert status["per-device"]["aggregate"] == {"windows": 3, "late": 0, "open_windows": 1}
        assert status["bare"]["aggregate"] == {"windows": 3, "late": 0, "open_windows": 1}
    # what the other two bridges sent, the window the clean stop closed (12:03) last
    device = by_topic(await collect(port, "agg-d", "d/#", count=5, wait_s=10))
    bare = by_topic(await collect(port, "agg-v", "v/#", count=5, wait_s=10))

    (mode,) = got.pop("s/src/mode")  # text passes through, unchanged
    assert (mode["value"], mode["quality"]) == ("auto", "good")
    mean = got["s/src/t.mean"]
    assert [m["ts"] for m in mean] == [minute(0), minute(1), minute(2), minute(3)]
    assert [m["value"] for m in mean] == [12.0, 20.5, None, 30.0]
    assert [m["value"] for m in got["s/src/t.min"]] == [10.0, 20.0, None, 30.0]
    assert [m["value"] for m in got["s/src/t.max"]] == [14.0, 21.0, None, 30.0]
    assert [m["value"] for m in got["s/src/t.last"]] == [12.0, 21.0, None, 30.0]
    assert [m["value"] for m in got["s/src/t.count"]] == [3, 2, 0, 1]
    assert [m["quality"] for m in mean] == ["good", "uncertain", "bad", "good"]
    assert [m.get("reason") for m in mean] == [
        None,
        "1 of 3 readings bad (sensor fault)",
        "sensor fault",
        None,
    ]
    assert {m["unit"] for m in mean} == {"degC"}
    assert not [m for m in got["s/src/t.count"] if "unit" in m]

    summaries = [d for d in device["d/src"] if "mode" not in d["values"]]
    assert [(d["ts"], d["values"], d.get("quality")) for d in summaries] == [
        (minute(0), {"t.mean": 12.0, "t.max": 14.0}, None),
        (minute(1), {"t.mean": 20.5, "t.max": 21.0}, {"t.mean": "uncertain", "t.max": "uncertain"}),
        (minute(2), {"t.mean": None, "t.max": None}, {"t.mean": "bad", "t.max": "bad"}),
        (minute(3), {"t.mean": 30.0, "t.max": 30.0}, None),
    ]
    assert [d["values"] for d in device["d/src"] if "mode" in d["values"]] == [{"mode": "auto"}]
    assert bare == {"v/src/mode": ["auto"], "v/src/t.mean": [12.0, 20.5, None, 30.0]}


def heartbeat_yaml(broker: MosquittoBroker, port: int) -> str:
    return f"""
gateway: {{name: hb}}
devices:
{modbus_device_yaml(port)}
    points:
      - {{name: level, table: holding, address: 0, unit: m, poll: fast}}
endpoints:
  broker: {{protocol: mqtt, host: {broker.host}, port: {broker.port}}}
bridges:
  - {{name: beat, from: pump, to: broker, topic: "hb/{{device}}/{{point}}", heartbeat: 0.3}}
  - {{name: plain, from: pump, to: broker, topic: "plain/{{device}}/{{point}}"}}
"""


async def test_heartbeat_resends_a_steady_point_the_deadband_holds_back(
    mosquitto: MosquittoBroker, simulator: Simulator, tmp_path: Path
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 0, [7])
    port = mosquitto.port
    await create_session(port, "hb-beat", "hb/#")
    await create_session(port, "hb-plain", "plain/#")
    config = tmp_path / "gw.yaml"
    config.write_text(heartbeat_yaml(mosquitto, device.port))
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY, "run", str(config), stderr=asyncio.subprocess.PIPE
    )
    try:
        beats = [
            json.loads(p) for _, p in await collect(port, "hb-beat", "hb/#", count=4, wait_s=20)
        ]
        # the first send and three repeats of it: the very value and source timestamp
        assert {(b["value"], b["ts"], b["quality"], b["unit"]) for b in beats} == {
            (7, beats[0]["ts"], "good", "m")
        }
        device.set_registers("holding", 0, [8])
        changed = await collect_until(port, "hb-beat", lambda b: b["value"] == 8)
        again = [
            json.loads(p) for _, p in await collect(port, "hb-beat", "hb/#", count=2, wait_s=10)
        ]
        assert [(b["value"], b["ts"]) for b in again] == [(8, changed["ts"])] * 2
        assert changed["ts"] > beats[0]["ts"]
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    # polled every 0.1 s all along, yet without a heartbeat each value went once
    # everything queued for the plain session (the gateway has stopped: it all comes at once)
    _, out, _ = await run_cmd(
        find_binary("mosquitto_sub"), "-h", HOST, "-p", str(port), "-c", "-i", "hb-plain",
        "-q", "1", "-t", "plain/#", "-W", "2", limit_s=10,
    )  # fmt: skip
    assert [json.loads(line)["value"] for line in out.splitlines()] == [7, 8]


async def collect_until(port: int, session: str, done: Any, limit: int = 50) -> Any:
    """The first payload of ``session`` (hb/#) for which ``done`` is true, read one by one."""
    for _ in range(limit):
        ((_, payload),) = await collect(port, session, "hb/#", count=1, wait_s=10)
        found = json.loads(payload)
        if done(found):
            return found
    pytest.fail(f"no payload of {session} matched in {limit}")
