"""Sparkplug B edge node against a host we did not write: Eclipse Tahu's JavaScript codec
(sparkplug-payload, with the mqtt package) in tests/interop/node/sparkplug_host.js, a real
mosquitto, the real `gateway run` process and the Modbus simulator, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import HOST, MosquittoBroker, wait_for
from sparkplug_peers import GATEWAY, GROUP, NODE, Host, Msg, Proxy, running, write_config

from protocols.modbus.codec import DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator


@pytest.fixture
async def plc(simulator: Simulator) -> SimulatedDevice:
    dev = await simulator.add_device(name="plc")
    dev.set_value("holding", 0, -5, DataType.INT16)
    dev.set_value("holding", 2, 70000, DataType.UINT32)
    dev.set_value("holding", 4, -100000, DataType.INT32)
    dev.set_value("holding", 6, 12.5, DataType.FLOAT32)
    dev.set_value("holding", 8, -7, DataType.INT64)
    dev.set_bits("coil", 0, [True])
    dev.set_value("holding", 20, "PB-7", DataType.STRING, length=4)
    dev.set_registers("holding", 30, [10])
    return dev


@contextlib.asynccontextmanager
async def host_on(port: int, primary: str | None = None) -> AsyncIterator[Host]:
    host = Host(port, primary)
    try:
        await wait_for(host.ready, timeout=15, message="the Tahu JS host to subscribe")
        yield host
    finally:
        host.close()


def metrics_by_name(message: Msg) -> dict[str, Msg]:
    return {m["name"]: m for m in message["payload"]["metrics"]}


def ddata_with(
    host: Host, alias: int, pred: Callable[[Any], bool], device: str = "plc"
) -> Callable[[], Msg | None]:
    def find() -> Msg | None:
        for m in host.messages("DDATA", device):
            for metric in m["payload"]["metrics"]:
                if metric.get("alias") == alias and pred(metric.get("value")):
                    return metric
        return None

    return find


def seqs(host: Host) -> list[tuple[str, int]]:
    return [
        (m["type"], m["payload"]["seq"])
        for m in host.messages()
        if m["type"] in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH")
    ]


def assert_seq_continuity(pairs: list[tuple[str, int]]) -> None:
    assert pairs and pairs[0] == ("NBIRTH", 0), pairs[:3]
    for (_, a), (kind, b) in zip(pairs, pairs[1:], strict=False):
        if kind == "NBIRTH":
            assert b == 0
        else:
            assert b == (a + 1) % 256, pairs


async def test_births_data_rebirth_writes_and_will(
    tmp_path: Path, mosquitto: MosquittoBroker, plc: SimulatedDevice
) -> None:
    async with host_on(mosquitto.port) as host:
        config = write_config(tmp_path / "gw.yaml", mosquitto.port, plc)
        async with running(config) as proc:
            dbirth = await wait_for(
                lambda: next(iter(host.messages("DBIRTH", "plc")), None), timeout=20
            )
            nbirth = host.messages("NBIRTH")[0]
            assert nbirth["node"] == NODE and nbirth["group"] == GROUP
            assert nbirth["payload"]["seq"] == 0
            node_metrics = metrics_by_name(nbirth)
            assert node_metrics["bdSeq"]["type"] == "Int64"
            bd_seq = node_metrics["bdSeq"]["value"]
            assert node_metrics["Node Control/Rebirth"] == {
                **node_metrics["Node Control/Rebirth"],
                "type": "Boolean",
                "value": False,
            }
            assert dbirth["payload"]["seq"] == 1
            born = metrics_by_name(dbirth)
            assert {n: m["type"] for n, m in born.items()} == {
                "temp": "Int16",
                "total": "UInt32",
                "offset": "Int32",
                "flow": "Float",
                "big": "Int64",
                "running": "Boolean",
                "model": "String",
                "setpoint": "UInt16",
            }
            aliases = {n: m["alias"] for n, m in born.items()}
            assert len(set(aliases.values())) == len(aliases)
            assert born["temp"]["properties"]["engUnit"] == {"type": "String", "value": "degC"}

            # Current values: in the DBIRTH if the first poll came first, else in DDATA.
            expected = {
                "temp": -5,
                "total": 70000,
                "offset": -100000,
                "flow": 12.5,
                "big": -7,
                "running": True,
                "model": "PB-7",
                "setpoint": 10,
            }
            for name, value in expected.items():
                if born[name]["value"] != value:
                    await wait_for(
                        ddata_with(host, aliases[name], lambda v, value=value: v == value),
                        timeout=10,
                        message=f"{name} = {value!r}",
                    )
                else:
                    assert born[name]["properties"]["Quality"] == {"type": "Int32", "value": 192}

            # A change on the device: DDATA by alias only, the source timestamp in ms.
            before = time.time() * 1000
            plc.set_value("holding", 0, -321, DataType.INT16)
            metric = await wait_for(ddata_with(host, aliases["temp"], lambda v: v == -321))
            assert "name" not in metric and metric["type"] == "Int16"
            assert before - 1000 <= metric["timestamp"] <= time.time() * 1000 + 1000

            # Rebirth on NCMD: NBIRTH with the same bdSeq and seq 0, then the DBIRTH again.
            host.command(cmd="rebirth")
            await wait_for(lambda: len(host.messages("NBIRTH")) == 2, timeout=10)
            await wait_for(lambda: len(host.messages("DBIRTH")) == 2, timeout=10)
            again = host.messages("NBIRTH")[1]
            assert again["payload"]["seq"] == 0
            assert metrics_by_name(again)["bdSeq"]["value"] == bd_seq
            reborn = metrics_by_name(host.messages("DBIRTH")[1])
            assert reborn["temp"]["value"] == -321  # current values
            assert {n: m["alias"] for n, m in reborn.items()} == aliases  # stable

            # DCMD by name to an rw point reaches the register; by alias too.
            host.command(
                cmd="dcmd",
                device="plc",
                metrics=[{"name": "setpoint", "type": "UInt16", "value": 77}],
            )
            await wait_for(lambda: plc.get_registers("holding", 30) == [77], timeout=10)
            await wait_for(ddata_with(host, aliases["setpoint"], lambda v: v == 77), timeout=10)
            host.command(
                cmd="dcmd",
                device="plc",
                metrics=[{"alias": aliases["setpoint"], "type": "UInt16", "value": 78}],
            )
            await wait_for(lambda: plc.get_registers("holding", 30) == [78], timeout=10)
            # A read-only point is refused: the register keeps its value.
            host.command(
                cmd="dcmd", device="plc", metrics=[{"name": "temp", "type": "Int16", "value": 1}]
            )
            await asyncio.sleep(1.0)
            assert plc.get_registers("holding", 0) == [(-321) & 0xFFFF]

            assert_seq_continuity(seqs(host))

            # SIGKILL: the broker publishes the will, NDEATH with the NBIRTH's bdSeq.
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            ndeath = await wait_for(
                lambda: next(iter(host.messages("NDEATH")), None),
                timeout=20,  # keepalive 5 s: the broker notices at once on a closed socket
            )
            assert metrics_by_name(ndeath)["bdSeq"] == {
                **metrics_by_name(ndeath)["bdSeq"],
                "type": "Int64",
                "value": bd_seq,
            }


async def test_device_down_is_ddeath_and_back_is_dbirth(
    tmp_path: Path, mosquitto: MosquittoBroker, plc: SimulatedDevice, simulator: Simulator
) -> None:
    async with host_on(mosquitto.port) as host:
        config = write_config(tmp_path / "gw.yaml", mosquitto.port, plc)
        async with running(config):
            await wait_for(lambda: host.messages("DBIRTH", "plc"), timeout=20)
            await asyncio.sleep(0.5)  # first polls
            await simulator.stop_device(plc)
            await wait_for(lambda: host.messages("DDEATH", "plc"), timeout=10)
            deaths = len(host.messages())
            plc.set_value("holding", 0, 42, DataType.INT16)
            await simulator.start_device(plc)
            await wait_for(lambda: len(host.messages("DBIRTH", "plc")) == 2, timeout=10)
            after = host.messages()[deaths:]
            # nothing for the device between its DDEATH and its new DBIRTH
            first = next(i for i, m in enumerate(after) if m["device"] == "plc")
            assert after[first]["type"] == "DBIRTH"
            reborn = metrics_by_name(after[first])
            assert reborn["temp"]["value"] == 42
            alias = reborn["temp"]["alias"]
            plc.set_value("holding", 0, 43, DataType.INT16)
            await wait_for(ddata_with(host, alias, lambda v: v == 43), timeout=10)
            assert_seq_continuity(seqs(host))


async def test_broker_lost_then_back_sends_births_then_historical_data(
    tmp_path: Path, mosquitto: MosquittoBroker, plc: SimulatedDevice
) -> None:
    proxy = Proxy(mosquitto.port)
    await proxy.up()
    async with host_on(mosquitto.port) as host:
        config = write_config(tmp_path / "gw.yaml", proxy.port, plc)
        async with running(config):
            await wait_for(lambda: host.messages("DBIRTH", "plc"), timeout=20)
            bd_first = metrics_by_name(host.messages("NBIRTH")[0])["bdSeq"]["value"]
            await proxy.down()
            # the broker publishes the will of the lost session
            await wait_for(lambda: host.messages("NDEATH"), timeout=20)
            for value in (501, 502, 503):
                plc.set_value("holding", 0, value, DataType.INT16)
                await asyncio.sleep(0.4)
            seen = len(host.messages())
            await proxy.up()
            await wait_for(lambda: len(host.messages("NBIRTH")) == 2, timeout=20)
            await wait_for(
                lambda: any(
                    any(x.get("isHistorical") for x in m["payload"]["metrics"])
                    for m in host.messages("DDATA")
                ),
                timeout=10,
            )
            await asyncio.sleep(0.5)
            after = host.messages()[seen:]
            kinds = [m["type"] for m in after]
            assert kinds[:2] == ["NBIRTH", "DBIRTH"], kinds
            nbirth = metrics_by_name(after[0])
            assert nbirth["bdSeq"]["value"] > bd_first  # a new session, a new bdSeq
            assert metrics_by_name(after[1])["temp"]["value"] == 503  # births: current
            alias = metrics_by_name(after[1])["temp"]["alias"]
            historical = [
                x["value"]
                for m in after[2:]
                for x in m["payload"]["metrics"]
                if x.get("isHistorical") and x.get("alias") == alias
            ]
            # before them at most the first poll, held before the first session was up: sent
            # again when the link was cut before the broker had confirmed it (at least once)
            assert historical[-3:] == [501, 502, 503] and set(historical[:-3]) <= {-5}
            assert_seq_continuity(seqs(host)[len(seqs(host)) - len(after) :])
    await proxy.down()


async def test_sigterm_publishes_ndeath_itself(
    tmp_path: Path, mosquitto: MosquittoBroker, plc: SimulatedDevice
) -> None:
    async with host_on(mosquitto.port) as host:
        config = write_config(tmp_path / "gw.yaml", mosquitto.port, plc)
        async with running(config) as proc:
            await wait_for(lambda: host.messages("DBIRTH", "plc"), timeout=20)
            bd_seq = metrics_by_name(host.messages("NBIRTH")[0])["bdSeq"]["value"]
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            ndeath = await wait_for(lambda: host.messages("NDEATH"), timeout=5)
            assert len(ndeath) == 1  # ours; the broker drops the will on DISCONNECT
            assert metrics_by_name(ndeath[0])["bdSeq"]["value"] == bd_seq


def adapter_status(tmp_path: Path) -> dict[str, Any]:
    """The Sparkplug endpoint's status from the gateway's status file ({} until the file is
    there)."""
    path = tmp_path / "state" / "status" / "gw-sparkplug.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cast("dict[str, Any]", doc["status"].get("adapters", {}).get("ignition", {}))


def node_status(tmp_path: Path) -> dict[str, Any]:
    """The endpoint's primary host status ({} until the status file is there)."""
    return cast("dict[str, Any]", adapter_status(tmp_path).get("primary_host", {}))


async def test_a_primary_host_gates_the_births_and_its_offline_state_ends_the_session(
    tmp_path: Path, mosquitto: MosquittoBroker, plc: SimulatedDevice
) -> None:
    config = write_config(tmp_path / "gw.yaml", mosquitto.port, plc, more="    primary_host: scada")
    config.write_text(
        config.read_text().replace(
            "gateway: {name: gw-sparkplug}", "gateway: {name: gw-sparkplug, status_interval: 0.3}"
        )
    )
    async with host_on(mosquitto.port) as watcher, running(config):
        # Connected, but no primary host has said online: no births.
        await wait_for(lambda: node_status(tmp_path).get("waiting") is True, timeout=20)
        waiting = adapter_status(tmp_path)
        assert waiting["connected"] is False  # down for the status line: nothing published
        assert "waiting for primary host scada" in waiting["last_error"]
        # 2.2's word on 3.0's topic: unreadable
        watcher.command(cmd="raw", topic="spBv1.0/STATE/scada", text="ONLINE")
        await wait_for(lambda: node_status(tmp_path).get("bad_states") == 1, timeout=10)
        assert not watcher.messages("NBIRTH")

        async with host_on(mosquitto.port, primary="scada") as first:
            nbirth = await wait_for(lambda: watcher.messages("NBIRTH"), timeout=20)
            await wait_for(lambda: watcher.messages("DBIRTH", "plc"), timeout=10)
            bd_first = metrics_by_name(nbirth[0])["bdSeq"]["value"]
            await wait_for(lambda: adapter_status(tmp_path).get("connected") is True, timeout=5)
            assert adapter_status(tmp_path)["last_error"] is None
            assert node_status(tmp_path)["online"] is True
            alias = metrics_by_name(watcher.messages("DBIRTH", "plc")[0])["temp"]["alias"]

            # An offline STATE older than the one accepted (a replay) is ignored.
            stale = json.dumps({"online": False, "timestamp": 1})
            watcher.command(cmd="raw", topic="spBv1.0/STATE/scada", text=stale)
            await wait_for(lambda: node_status(tmp_path).get("stale_states") == 1, timeout=10)
            plc.set_value("holding", 0, 42, DataType.INT16)
            await wait_for(ddata_with(watcher, alias, lambda v: v == 42), timeout=10)
            assert not watcher.messages("NDEATH")

            # The primary host dies: the broker publishes its will (STATE offline, retained).
            first.proc.kill()
            ndeath = await wait_for(lambda: watcher.messages("NDEATH"), timeout=20)
            assert metrics_by_name(ndeath[0])["bdSeq"]["value"] == bd_first  # the node's own
        await wait_for(
            lambda: (
                node_status(tmp_path).get("sessions_ended") == 1
                and node_status(tmp_path).get("waiting") is True
            ),
            timeout=20,
        )  # a new session, waiting for the host again: the retained STATE says offline
        for value in (501, 502):
            plc.set_value("holding", 0, value, DataType.INT16)
            await asyncio.sleep(0.4)
        assert len(watcher.messages("NBIRTH")) == 1
        seen = len(watcher.messages())

        async with host_on(mosquitto.port, primary="scada"):
            await wait_for(lambda: len(watcher.messages("NBIRTH")) == 2, timeout=20)
            await wait_for(
                lambda: any(
                    x.get("isHistorical") and x.get("alias") == alias and x.get("value") == 502
                    for m in watcher.messages("DDATA")
                    for x in m["payload"]["metrics"]
                ),
                timeout=10,
            )
            after = [m for m in watcher.messages()[seen:] if m["type"] != "STATE"]
            assert [m["type"] for m in after[:2]] == ["NBIRTH", "DBIRTH"]
            assert metrics_by_name(after[0])["bdSeq"]["value"] != bd_first  # a new session
            historical = [
                x["value"]
                for m in after[2:]
                for x in m["payload"]["metrics"]
                if x.get("isHistorical") and x.get("alias") == alias
            ]
            assert historical[-2:] == [501, 502]
            assert len(watcher.messages("NDEATH")) == 1  # the will of the node never went out


async def test_points_a_source_names_at_run_time_are_born_and_sent(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    # An MQTT source with `points: keys` names its points only when JSON comes; the node gives
    # each new one an alias and births the device again (validate and run accept the bridge).
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"""
gateway: {{name: gw-sparkplug}}
endpoints:
  broker:
    protocol: mqtt
    host: {HOST}
    port: {mosquitto.port}
    outbox: null
    subscriptions: [{{topic: "plant/#", points: keys}}]
  ignition:
    protocol: sparkplug
    host: {HOST}
    port: {mosquitto.port}
    group: {GROUP}
    node: {NODE}
bridges:
  - {{name: up, from: broker, to: ignition}}
"""
    )
    checked = await asyncio.create_subprocess_exec(
        *GATEWAY, "validate", str(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(checked.communicate(), 60)
    assert checked.returncode == 0, out.decode()
    async with host_on(mosquitto.port) as host, running(config):
        await wait_for(lambda: host.messages("NBIRTH"), timeout=20)
        text = json.dumps({"temp": 21.5, "fan": {"on": True}})
        # the subscription may not be there yet: publish until the device is born
        for _ in range(40):
            host.command(cmd="raw", topic="plant/ahu1", text=text)
            if host.messages("DBIRTH", "broker"):
                break
            await asyncio.sleep(0.25)
        births = await wait_for(lambda: host.messages("DBIRTH", "broker"), timeout=5)
        # no DBIRTH before the device has a metric (the source names none before its data)
        assert all(b["payload"]["metrics"] for b in births), births
        metrics = metrics_by_name(births[-1])
        assert metrics["temp"]["type"] == "Double" and metrics["temp"]["value"] == 21.5
        assert metrics["fan.on"]["type"] == "Boolean" and metrics["fan.on"]["value"] is True
        alias = metrics["temp"]["alias"]
        host.command(cmd="raw", topic="plant/ahu1", text=json.dumps({"temp": 22.0}))
        await wait_for(ddata_with(host, alias, lambda v: v == 22.0, "broker"), timeout=10)
