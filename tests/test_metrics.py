"""Prometheus metrics (``gateway.metrics:``): the page as Prometheus' own parser reads it, and a
running gateway scraped by curl, a client we did not write."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import HOST, MosquittoBroker, find_binary, free_port, port_open, wait_for
from prometheus_client.parser import text_string_to_metric_families

from gateway import handover, metrics
from gateway.config import GatewayConfig, load_config
from gateway.runtime import Carried, Gateway
from protocols.modbus.simulator import Simulator


def _families(page: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus' parser's reading: sample name -> [(labels, value)] (it raises on a bad
    page)."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _types(page: str) -> dict[str, str]:
    """Prometheus' parser's reading: sample name -> its family's type ("unknown": untyped)."""
    return {s.name: f.type for f in text_string_to_metric_families(page) for s in f.samples}


def test_every_number_of_the_status_becomes_a_sample_prometheus_reads() -> None:
    status = {
        "adapters": {
            'plc "7"\\': {"connected": True, "polls": 12, "last_error": "timeout", "hosts": [1]},
            "broker": {"published": 3, "outbox": {"backlog": 5, "bytes": 1.5e9}, "optimizer": None},
        },
        "bridges": {"up": {"forwarded": 9, "computed": {"computed": 2}}},
        "bus": {"published": 20},
        "writes": {"refused": {"Bad-Type": 1, "9lives": 2}},
        "loop": {"lag_s": float("nan")},
    }
    page = metrics.exposition(
        status,
        gateway="gw",
        version="1.2",
        started=1700000000.5,
        entries={"broker": ("mqtt", "client")},
        process={"process_open_fds": 7},
    )
    found = _families(page)
    plc = {"adapter": 'plc "7"\\', "protocol": "", "role": ""}  # escaped, read back whole
    broker = {"adapter": "broker", "protocol": "mqtt", "role": "client"}
    assert found["protocol_brain_info"] == [({"gateway": "gw", "version": "1.2"}, 1.0)]
    assert found["protocol_brain_start_time_seconds"] == [({}, 1700000000.5)]
    assert found["protocol_brain_adapter_connected"] == [(plc, 1.0)]
    assert found["protocol_brain_adapter_polls_total"] == [(plc, 12.0)]
    assert found["protocol_brain_adapter_outbox_backlog"] == [(broker, 5.0)]
    assert found["protocol_brain_adapter_outbox_bytes"] == [(broker, 1.5e9)]
    assert found["protocol_brain_bridge_computed_computed_total"] == [({"bridge": "up"}, 2.0)]
    assert found["protocol_brain_bus_published_total"] == [({}, 20.0)]
    assert found["protocol_brain_writes_refused_Bad_Type_total"] == [({}, 1.0)]
    assert found["protocol_brain_writes_refused__9lives_total"] == [({}, 2.0)]
    assert found["process_open_fds"] == [({}, 7.0)]
    (nan,) = found["protocol_brain_loop_lag_s"]
    assert nan[1] != nan[1]
    # texts, lists and nulls are no samples
    names = set(found)
    assert not {n for n in names if "last_error" in n or "hosts" in n or "optimizer" in n}
    # one TYPE line per family, its samples together (the format requires it)
    assert page.count("# TYPE protocol_brain_adapter_connected ") == 1
    # counters are named with _total on the page itself (the parser would add it if not)
    assert "\n# TYPE protocol_brain_adapter_polls_total counter\n" in page
    assert "\nprotocol_brain_adapter_polls_total{" in page
    assert "\nprotocol_brain_adapter_connected{" in page
    types = _types(page)
    assert types["protocol_brain_adapter_polls_total"] == "counter"
    assert types["protocol_brain_adapter_connected"] == "gauge"
    assert types["protocol_brain_adapter_outbox_backlog"] == "gauge"  # outbox: by its keys
    assert types["protocol_brain_adapter_outbox_bytes"] == "unknown"  # no key of ours
    assert types["protocol_brain_writes_refused_Bad_Type_total"] == "counter"  # by writes
    assert types["protocol_brain_bridge_computed_computed_total"] == "counter"
    assert types["protocol_brain_info"] == types["protocol_brain_start_time_seconds"] == "gauge"
    assert types["process_open_fds"] == "gauge"


def test_a_plugin_types_its_own_keys_and_a_family_that_disagrees_is_untyped() -> None:
    status = {
        "adapters": {
            "a": {"frames": 4, "depth": 2, "misc": 1, "queued": 3},
            "b": {"frames": 5, "queued": 1},
        }
    }
    page = metrics.exposition(
        status,
        gateway="gw",
        version="1",
        started=0,
        entries={},
        kinds={"a": {"frames": "counter", "depth": "gauge", "queued": "counter", "misc": "hist"}},
    )
    types = _types(page)
    assert types["protocol_brain_adapter_depth"] == "gauge"
    assert types["protocol_brain_adapter_misc"] == "unknown"  # no such kind: not on the page
    # a's frames are a counter, b says nothing of its own: one family, two kinds of sample
    assert types["protocol_brain_adapter_frames"] == "unknown"
    assert "\nprotocol_brain_adapter_frames{" in page  # so no _total
    assert types["protocol_brain_adapter_queued"] == "unknown"  # a's word against ours


def test_the_process_figures_are_read_from_proc() -> None:
    found = metrics.process_metrics()
    assert found["process_resident_memory_bytes"] > 10 * 2**20
    assert found["process_open_fds"] >= 3 and found["process_max_fds"] >= found["process_open_fds"]
    assert found["process_threads"] >= 1 and found["process_cpu_seconds_total"] > 0


def _config(tmp_path: Path, device_port: int, metrics_port: int, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"gateway: {{name: mx, metrics: {{host: {HOST}, port: {metrics_port}}}}}\n"
        "devices:\n"
        f"  plc: {{protocol: modbus, host: {HOST}, port: {device_port},"
        " poll_groups: {fast: {interval: 0.05}}, points: [{name: t, address: 0, poll: fast}]}\n"
    )
    return path


@pytest.fixture
async def device_port(simulator: Simulator) -> AsyncIterator[int]:
    device = await simulator.add_device()
    yield device.port


async def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    curl = find_binary("curl")
    return await asyncio.to_thread(
        subprocess.run, [curl, "-sS", "--max-time", "10", *args], capture_output=True, text=True
    )


async def _started(
    config: GatewayConfig, carried: Carried | None = None
) -> tuple[Gateway, asyncio.Event, asyncio.Task[None]]:
    gateway = Gateway(config, carried=carried)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.started.wait(), 10)
    return gateway, stop, run


async def test_a_running_gateway_serves_its_counters_to_curl(
    tmp_path: Path, device_port: int
) -> None:
    port = free_port()
    gateway, stop, run = await _started(load_config(_config(tmp_path, device_port, port)))
    url = f"http://{HOST}:{port}/metrics"
    try:
        first = await _curl("-D", "-", url)
        assert first.returncode == 0, first.stderr
        head, _, body = first.stdout.partition("\n\n")  # text mode: \r\n read as \n
        assert head.startswith("HTTP/1.1 200")
        assert "Content-Type: text/plain; version=0.0.4" in head
        polls = _families(body)["protocol_brain_adapter_polls_total"]
        labels = {"adapter": "plc", "protocol": "modbus", "role": "client"}
        assert [lab for lab, _ in polls] == [labels]
        await asyncio.sleep(metrics.CACHE_S + 0.3)
        later = _families((await _curl(url)).stdout)
        assert later["protocol_brain_adapter_polls_total"][0][1] > polls[0][1], "counters move"
        assert later["protocol_brain_adapter_connected"] == [(labels, 1.0)]
        assert later["process_resident_memory_bytes"][0][1] > 0
        assert later["process_cpu_seconds_total"][0][1] > 0
        assert _types(body)["process_cpu_seconds_total"] == "counter"
        # anything but GET /metrics
        other = await _curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{HOST}:{port}/")
        posted = await _curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", url)
        assert (other.stdout, posted.stdout) == ("404", "405")
        # connections that send nothing, as many as there are places, do not lock curl out
        idle = [socket.create_connection((HOST, port)) for _ in range(metrics.MAX_CLIENTS)]
        try:
            await asyncio.sleep(0.2)  # all of them accepted and waiting
            assert (await _curl(url)).returncode == 0
        finally:
            for sock in idle:
                sock.close()
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
    assert not port_open(HOST, port), "closed with the run"
    assert gateway.status()["adapters"]["plc"]["polls"] > 0


async def test_a_taken_metrics_port_is_an_error_and_the_gateway_runs_on(
    tmp_path: Path, device_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    taken = socket.create_server((HOST, 0))
    port = taken.getsockname()[1]
    try:
        gateway, stop, run = await _started(load_config(_config(tmp_path, device_port, port)))
        try:
            await asyncio.sleep(0.3)
            assert gateway.status()["adapters"]["plc"]["polls"] > 0
            assert f"metrics: cannot listen on {HOST}:{port}" in caplog.text
        finally:
            stop.set()
            await asyncio.wait_for(run, 30)
    finally:
        taken.close()


async def test_a_reload_moving_the_metrics_port_keeps_the_devices(
    tmp_path: Path, device_port: int
) -> None:
    old_port, new_port = free_port(), free_port()
    first = load_config(_config(tmp_path, device_port, old_port, "first.yaml"))
    second = load_config(_config(tmp_path, device_port, new_port, "second.yaml"))
    assert handover.plan(first, handover.stamps(first), second, handover.stamps(second)).kept == {
        "plc"
    }
    gateway = Gateway(first)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop, lambda: second))
    await asyncio.wait_for(gateway.started.wait(), 10)
    assert port_open(HOST, old_port)
    stop.set()
    await asyncio.wait_for(run, 30)
    carried = gateway.handed
    assert carried is not None and set(carried.parts.adapters) == {"plc"}
    assert not port_open(HOST, old_port)
    _, stop, run = await _started(second, carried)
    try:
        scraped = await _curl(f"http://{HOST}:{new_port}/metrics")
        assert "protocol_brain_adapter_polls_total" in _families(scraped.stdout)
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)


async def test_clients_that_do_not_take_their_answer_are_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that asks and never reads held its place for good (a review: 8 of them, a
    3 MB page, every scrape refused); and stopping with clients on logged asyncio errors."""
    monkeypatch.setattr(metrics, "WRITE_TIMEOUT", 0.5)
    page = "x 1\n" * 1_000_000  # 4 MB: more than the socket buffers take
    async with metrics.MetricsServer(HOST, 0, lambda: page) as server:
        stuck = []
        for _ in range(metrics.MAX_CLIENTS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((HOST, server.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stuck.append(sock)
        await asyncio.sleep(1.5)  # past WRITE_TIMEOUT: their places are free again
        scraped = await _curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                              f"http://{HOST}:{server.port}/metrics")  # fmt: skip
        assert scraped.stdout == f"200 {len(page)}", scraped.stderr
        idle = socket.create_connection((HOST, server.port))
        await asyncio.sleep(0.1)
    for sock in [*stuck, idle]:
        sock.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def _everything_config(tmp_path: Path, device_port: int, broker: MosquittoBroker) -> str:
    """A gateway with every part of ours that has a status: its peers may be down, the keys
    are there all the same."""
    dead = free_port()
    mqtt = f"host: {broker.host}, port: {broker.port}"
    return f"""
gateway: {{name: every, status_interval: 0}}
devices:
  plc:
    protocol: modbus
    host: {HOST}
    port: {device_port}
    poll_groups: {{default: {{interval: 0.05}}}}
    points: [{{name: t, address: 0, unit: degC}}, {{name: sp, address: 1, access: rw}}]
  ua: {{protocol: opcua, url: "opc.tcp://{HOST}:{dead}", points: [{{name: x, node_id: "i=1"}}],
       security: {{policy: "None", mode: "None", pki_dir: "{tmp_path}/ua"}}}}
  co: {{protocol: coap, url: "coap://{HOST}:{dead}", points: [{{name: x, path: x}}]}}
  spb: {{protocol: sparkplug, role: host, {mqtt}, group: g1, host_id: scada}}
endpoints:
  cloud: {{protocol: mqtt, {mqtt}, outbox: {{path: "{tmp_path}/outbox.db"}},
          optimizer: {{model: heuristic, interval: 0.2}}}}
  node: {{protocol: sparkplug, {mqtt}, group: g1, node: n1, primary_host: scada}}
  uas: {{protocol: opcua, role: server, host: {HOST}, port: {free_port()},
        security: {{allow_none: true, pki_dir: "{tmp_path}/uas"}}, anonymous: true}}
  cos: {{protocol: coap, role: server, host: {HOST}, port: {free_port()}}}
  mbs: {{protocol: modbus, role: server, host: {HOST}, port: {free_port()}}}
shadow: {{path: "{tmp_path}/shadow.db"}}
bridges:
  - name: up
    from: plc
    to: cloud
    topic: "m/{{device}}/{{point}}"
    computed: [{{name: f, expr: "t * 2"}}]
    anomaly: {{model: student, calibration: 50}}
  - {{name: spb, from: plc, to: node}}
  - {{name: ua, from: plc, to: uas}}
  - {{name: co, from: plc, to: cos}}
  - {{name: mb, from: plc, to: mbs, map: [{{point: t, address: 0}}]}}
"""


async def test_every_figure_of_the_gateways_own_parts_has_a_type(
    tmp_path: Path, device_port: int, mosquitto: MosquittoBroker
) -> None:
    """Every number a part of ours puts in its status is typed counter or gauge: a key added
    without a kind in gateway.metrics.KINDS fails here."""
    from gateway.config import load_config_text

    config = load_config_text(_everything_config(tmp_path, device_port, mosquitto))
    gateway, stop, run = await _started(config)
    try:
        await wait_for(lambda: gateway.status()["adapters"]["plc"]["polls"] > 5, 20)
        status = gateway.status()
        page = metrics.exposition(
            status,
            gateway="every",
            version="1",
            started=0,
            entries={n: (e.protocol, e.role) for n, e in config.devices.items()},
            process=metrics.process_metrics(),
        )
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
    assert set(status["adapters"]) == {
        "plc",
        "ua",
        "co",
        "spb",
        "cloud",
        "node",
        "uas",
        "cos",
        "mbs",
    }
    assert {"outbox", "optimizer"} <= set(status["adapters"]["cloud"])
    assert {"anomaly", "computed"} <= set(status["bridges"]["up"])
    assert "primary_host" in status["adapters"]["node"]
    types = _types(page)
    untyped = sorted(name for name, kind in types.items() if kind not in ("counter", "gauge"))
    assert not untyped, untyped
    assert len(types) > 100  # the whole of it, not a page that came out short
