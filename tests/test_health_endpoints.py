"""Container probes on the metrics listener (`gateway.health`): ``/health``, ``/ready`` and
``/status`` of a gateway polling the Modbus simulator and publishing to mosquitto, asked by
http.client and curl (and the README's python one-liner for Docker's HEALTHCHECK)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HOST,
    MosquittoBroker,
    find_binary,
    free_port,
    modbus_device_yaml,
    port_open,
    reaped,
    sigterm,
    wait_for,
)

from gateway import health, livestatus, metrics
from gateway.config import ConfigError, load_config_text
from gateway.looplag import LoopMonitor
from gateway.runtime import Gateway
from protocols.modbus.simulator import Simulator

PATHS = "/metrics /health /ready /status"
# The README's HEALTHCHECK without curl or wget: exit 0 on a 2xx answer, 1 otherwise.
PROBE = "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)"

Reply = tuple[int, dict[str, str], bytes]


def _ask(port: int, path: str, method: str = "GET") -> Reply:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


async def _get(port: int, path: str, method: str = "GET") -> Reply:
    """Asked from a thread: the gateway under test serves on this test's loop."""
    return await asyncio.to_thread(_ask, port, path, method)


def _raw(port: int, request: bytes) -> bytes:
    """All the server sends for ``request`` until it closes the connection."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@contextlib.asynccontextmanager
async def _running(gateway: Gateway) -> AsyncIterator[None]:
    """``gateway`` running (or starting) for the block, stopped after it."""
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)


async def _json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    code, headers, body = await _get(port, path)
    assert headers["Content-Type"] == "application/json", (code, body)
    return code, json.loads(body)


async def _answers(port: int, path: str, code: int) -> dict[str, Any]:
    """The JSON of ``path`` once it answers ``code`` (answers are cached for a second; the
    gateway starting listens a moment after its run begins)."""
    last: list[Any] = [None]

    async def answered() -> bool:
        try:
            last[0] = await _json(port, path)
        except OSError as exc:
            last[0] = exc
            return False
        return bool(last[0][0] == code)

    try:
        await wait_for(answered, 15, 0.1)
    except pytest.fail.Exception:
        pytest.fail(f"{path} did not answer {code} in 15 s; last: {last[0]!r}")
    return dict(last[0][1])


def _config(port: int, device_port: int, broker: MosquittoBroker) -> str:
    return f"""
gateway: {{name: hx, metrics: {{host: {HOST}, port: {port}}}}}
devices:
{modbus_device_yaml(device_port, name="plc")}
    points: [{{name: t, address: 0, poll: fast}}]
endpoints:
  broker: {{protocol: mqtt, host: {broker.host}, port: {broker.port}}}
bridges:
  - {{name: up, from: plc, to: broker}}
"""


async def test_ready_follows_the_start_and_each_device_going_down_and_back(
    simulator: Simulator, mosquitto: MosquittoBroker
) -> None:
    device = await simulator.add_device(port=free_port())  # stopped and started on its port
    port = free_port()
    gateway = Gateway(load_config_text(_config(port, device.port, mosquitto)))
    # The start held at the device until the test says: /ready must say "starting" meanwhile.
    plc = gateway.adapters["plc"]
    enter, go = plc.__aenter__, asyncio.Event()

    async def held() -> Any:
        await go.wait()
        return await enter()

    plc.__aenter__ = held  # type: ignore[method-assign]
    async with _running(gateway):
        live = await _answers(port, "/health", 200)
        assert live["status"] == "ok" and live["state"] == "starting" and live["gateway"] == "hx"
        ready = await _answers(port, "/ready", 503)
        assert ready["status"] == "starting", ready
        code, doc = await _json(port, "/status")
        assert code == 200 and doc["state"] == "starting" and doc["status"] == {}
        code, _, page = await _get(port, "/metrics")
        assert code == 200 and b"protocol_brain_info{" in page and b"adapter_" not in page
        assert not gateway.started.is_set()

        go.set()
        ready = await _answers(port, "/ready", 200)
        assert ready["status"] == "ready"
        assert sorted(ready["up"]) == ["broker", "plc"] and ready["down"] == {}
        code, doc = await _json(port, "/status")
        assert code == 200 and doc["state"] == "running" and doc["gateway"] == "hx"
        assert set(doc["status"]["adapters"]) == {"plc", "broker"}
        assert doc["status"]["adapters"]["plc"]["polls"] > 0
        assert set(doc) >= {"pid", "started", "written", "summary", "interval_s"}

        await simulator.stop_device(device)
        ready = await _answers(port, "/ready", 503)
        assert ready["status"] == "not ready" and ready["up"] == ["broker"]
        assert list(ready["down"]) == ["plc"] and ready["down"]["plc"], ready
        assert ready["reason"] == f"down: plc: {ready['down']['plc']}"
        live = await _answers(port, "/health", 200)  # a device down is no reason to restart
        assert live["state"] == "running"
        # the status line and gateway status say the same: down is down
        assert "down: plc" in gateway.summary()
        relaxed = {"only=broker": ["broker"], "require=any": ["broker"], "require=none": None}
        for query, up in relaxed.items():
            code, doc = await _json(port, f"/ready?{query}")
            assert code == 200 and doc["status"] == "ready", (query, doc)
            assert up is None or doc["up"] == up
        code, doc = await _json(port, "/ready?only=plc,broker&require=any")
        assert code == 200 and doc["only"] == ["plc", "broker"]
        code, doc = await _json(port, "/ready?only=plc")
        assert code == 503 and doc["down"].keys() == {"plc"}
        code, doc = await _json(port, "/ready?only=plc,nope")
        assert code == 400 and "nope" in doc["reason"] and "broker, plc" in doc["reason"]
        code, doc = await _json(port, "/ready?require=most")
        assert code == 400 and "all, any, none" in doc["reason"]

        await simulator.start_device(device)
        ready = await _answers(port, "/ready", 200)
        assert sorted(ready["up"]) == ["broker", "plc"]
    assert not await asyncio.to_thread(port_open, HOST, port), "closed with the run"


async def test_http_head_404_405_and_the_connection_limits(
    simulator: Simulator, mosquitto: MosquittoBroker
) -> None:
    device = await simulator.add_device()
    port = free_port()
    monitor = LoopMonitor()  # not started: its figures are the test's
    figures: dict[str, float] = {"lag_ms_p50": 1.0, "lag_ms_p99": 40.0, "stalls": 0}
    monitor.figures = lambda: figures  # type: ignore[method-assign]
    gateway = Gateway(load_config_text(_config(port, device.port, mosquitto)), loop_monitor=monitor)
    async with _running(gateway):
        await asyncio.wait_for(gateway.started.wait(), 10)
        await _answers(port, "/ready", 200)
        for path in ("/health", "/ready", "/status", "/metrics"):
            code, headers, body = await _get(port, path)
            head_code, head_headers, head_body = await _get(port, path, "HEAD")
            assert (head_code, head_body) == (code, b""), path
            assert head_headers["Content-Type"] == headers["Content-Type"]
            assert int(head_headers["Content-Length"]) == len(body) > 0
            assert headers["Cache-Control"] == "no-store"  # a probe's answer is about now
        # on the wire: the head and not a byte more (http.client would not read a body)
        raw = await asyncio.to_thread(_raw, port, b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n"), raw
        assert raw.count(b"\r\n\r\n") == 1
        code, headers, body = await _get(port, "/nothing?x=1")
        assert code == 404 and body.decode() == f"not found; here: {PATHS}\n"
        for path in ("/ready", "/health"):
            code, headers, body = await _get(port, path, "POST")
            assert (code, headers["Allow"]) == (405, "GET, HEAD"), body
        # curl, a client we did not write, sees the same
        curl = find_binary("curl")
        url = f"http://{HOST}:{port}"
        out = await asyncio.to_thread(
            subprocess.run,
            [curl, "-sS", "-I", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/ready"],
            capture_output=True,
            text=True,
        )
        assert out.stdout == "200", out.stderr

        # the loop's lag, as the loop monitor figures it: only a pathological one fails
        code, doc = await _json(port, "/health")
        assert code == 200 and doc["loop"]["lag_ms_p99"] == 40.0
        figures["lag_ms_p99"] = health.LIVE_LAG_MS
        doc = await _answers(port, "/health", 503)
        assert doc["status"] == "unhealthy" and "10000 ms" in doc["reason"], doc
        assert (await _json(port, "/ready"))[0] == 200  # ready is not about the loop

        # connections that send nothing, as many as there are places, do not lock probes out
        idle = [socket.create_connection((HOST, port)) for _ in range(metrics.MAX_CLIENTS)]
        try:
            await asyncio.sleep(0.2)  # all of them accepted and waiting
            assert (await _get(port, "/ready"))[0] == 200
        finally:
            for sock in idle:
                sock.close()


async def test_answers_are_cached_per_query_and_a_failing_route_is_a_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "CACHE_S", 60.0)
    asked: list[Mapping[str, str]] = []

    def ready(query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        asked.append(query)
        return 503, {"asked": len(asked)}

    def broken(query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        raise KeyError("adapters")

    routes: dict[str, metrics.Route] = {"/ready": ready, "/broken": broken}
    async with metrics.MetricsServer(HOST, 0, lambda: "x 1\n", routes) as server:
        first = await _get(server.port, "/ready?only=a")
        assert await _get(server.port, "/ready?only=a") == first  # computed once
        assert [json.loads(r[2])["asked"] for r in [first]] == [1]
        other = await _get(server.port, "/ready?only=b&require=any")
        assert json.loads(other[2]) == {"asked": 2} and other[0] == 503
        assert asked == [{"only": "a"}, {"only": "b", "require": "any"}]
        for _ in range(2):
            code, _, body = await _get(server.port, "/broken")
            assert code == 500 and b"log" in body
        assert (await _get(server.port, "/ready?only=a"))[0] == 503  # the server goes on
    failed = [r for r in caplog.records if "GET /broken failed" in r.getMessage()]
    assert len(failed) == 1, caplog.text  # once, not once per probe


async def test_a_start_stopped_midway_closes_the_listener() -> None:
    port = free_port()
    config = f"""
gateway: {{name: hx, metrics: {{host: {HOST}, port: {port}}}}}
devices:
{modbus_device_yaml(free_port(), name="plc")}
    points: [{{name: t, address: 0, poll: fast}}]
"""
    gateway = Gateway(load_config_text(config))
    never = asyncio.Event()
    plc = gateway.adapters["plc"]
    plc.__aenter__ = never.wait  # type: ignore[method-assign,assignment]
    async with _running(gateway):
        assert (await _answers(port, "/ready", 503))["status"] == "starting"
    assert not gateway.started.is_set()
    assert not await asyncio.to_thread(port_open, HOST, port), "closed with the start"


def test_the_verdicts_and_what_counts_as_down() -> None:
    adapters = {
        "plc": {"connected": False, "last_error": "timeout"},
        "ua": {"connected": False, "reason": "no session"},
        "hmi": {"clients": 2},  # a server: no "connected", so up
        "bad": {"status_error": "status() failed: KeyError('x')"},
        "co": {"connected": False},
        "broker": {"connected": True},
    }
    assert health.down(adapters) == {
        "plc": "timeout",
        "ua": "no session",
        "bad": "status() failed: KeyError('x')",
        "co": "",
    }
    names = list(adapters)
    code, doc = health.readiness({}, names, adapters)
    assert code == 503 and doc["up"] == ["hmi", "broker"]
    assert doc["reason"] == (
        "down: plc: timeout; ua: no session; bad: status() failed: KeyError('x'); co"
    )
    assert health.readiness({"only": "hmi,broker"}, names, adapters)[0] == 200
    assert health.readiness({"only": "hmi,plc", "require": "any"}, names, adapters)[0] == 200
    assert health.readiness({"only": "plc,co", "require": "any"}, names, adapters)[0] == 503
    assert health.readiness({"require": "none"}, names, adapters)[0] == 200
    assert health.readiness({"require": "any"}, [], {})[0] == 200  # nothing to wait for
    assert health.readiness({"only": ","}, names, adapters)[0] == 503  # no name: all count
    code, doc = health.readiness({"require": "any", "only": "x"}, names, None)
    assert code == 400  # a wrong probe is said at once, not after the start
    assert health.readiness({}, names, None) == (
        503,
        {"status": "starting", "require": "all", "reason": "the gateway is starting"},
    )

    limit = health.LIVE_LAG_MS
    assert health.liveness(True, None) == (200, {"status": "ok", "state": "running"})
    assert health.liveness(False, {"stalls": 0})[1]["state"] == "starting"
    assert health.liveness(True, {"lag_ms_p99": limit - 0.1, "lag_ms_max": 60_000})[0] == 200
    code, doc = health.liveness(True, {"lag_ms_p99": limit, "lag_ms_p50": 1.0})
    assert code == 503 and doc["loop"]["lag_ms_p99"] == limit
    assert health.liveness(True, {"lag_ms_p99": 249.9}, 250.0)[0] == 200  # a limit of its own
    code, doc = health.liveness(True, {"lag_ms_p99": 250.0}, 250.0)
    assert code == 503 and "the limit is 250 ms" in doc["reason"]


async def test_gateway_run_answers_probes_as_gateway_status_sees_it(tmp_path: Path) -> None:
    """`gateway run` with its loop monitor, its device's port dead: /ready names it with the
    reason `gateway status` prints, and the README's probe command exits 1 on it, 0 on
    /health."""
    port, dead = free_port(), free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"gateway: {{name: hx, status_interval: 0.5, metrics: {{host: {HOST}, port: {port}}}}}\n"
        "devices:\n"
        f"{modbus_device_yaml(dead, name='plc')}\n"
        "    points: [{name: t, address: 0, poll: fast}]\n"
    )
    cmd = [sys.executable, "-m", "gateway", "run", str(config)]
    started = await asyncio.to_thread(subprocess.Popen, cmd, stderr=subprocess.PIPE, text=True)
    with reaped(started) as proc:

        async def lag_figured() -> dict[str, Any] | None:
            doc = await _answers(port, "/health", 200)
            return doc if "lag_ms_p99" in doc.get("loop", {}) else None

        live = await wait_for(lag_figured, 30, 0.1, "/health with the loop's lag")
        assert live["loop"]["lag_ms_p99"] < health.LIVE_LAG_MS
        ready = await _answers(port, "/ready", 503)
        why = ready["down"]["plc"]
        assert why.startswith("connect failed"), ready

        async def said_by_status() -> str:
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway", "status", str(config)],
                capture_output=True,
                text=True,
            )
            return out.stdout if f"  down: plc ({why})" in out.stdout else ""

        await wait_for(said_by_status, 20, 0.2, "gateway status naming plc down")
        code, doc = await _json(port, "/status")
        written = livestatus.read(livestatus.status_path("hx"))
        assert written is not None and code == 200
        assert set(doc) == set(written) - {"age_s", "stale"}  # the status file's document
        assert doc["pid"] == proc.pid and doc["status"]["adapters"]["plc"]["connected"] is False

        for path, exit_code in (("/health", 0), ("/ready", 1), ("/ready?require=none", 0)):
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", PROBE, f"http://{HOST}:{port}{path}"],
                capture_output=True,
                text=True,
            )
            assert out.returncode == exit_code, (path, out.stderr[-500:])
        err = await asyncio.to_thread(sigterm, proc, 30)
        assert proc.returncode == 0, err


async def test_the_liveness_limit_is_metrics_liveness_lag(simulator: Simulator) -> None:
    """``metrics: {liveness_lag: S}``: /health fails from S s of lag at the 99th percentile
    (10 s unless said); 0, a negative or an infinite limit is refused, naming the key."""
    default = load_config_text("gateway: {metrics: {}}\n").gateway.metrics
    assert default is not None and default.liveness_lag * 1000 == health.LIVE_LAG_MS
    for bad, expected in (("0", "a number > 0"), ("-1", "a number > 0"), (".inf", "finite")):
        with pytest.raises(ConfigError) as said:
            load_config_text(f"gateway: {{metrics: {{liveness_lag: {bad}}}}}\n")
        assert "gateway.metrics.liveness_lag: found " in str(said.value), said.value
        assert expected in str(said.value), said.value

    device = await simulator.add_device()
    port = free_port()
    monitor = LoopMonitor()  # not started: its figures are the test's
    figures: dict[str, float] = {"lag_ms_p50": 1.0, "lag_ms_p99": 499.0, "stalls": 0}
    monitor.figures = lambda: figures  # type: ignore[method-assign]
    config = f"""
gateway: {{name: hx, metrics: {{host: {HOST}, port: {port}, liveness_lag: 0.5}}}}
devices:
{modbus_device_yaml(device.port, name="plc")}
    points: [{{name: t, address: 0, poll: fast}}]
"""
    gateway = Gateway(load_config_text(config), loop_monitor=monitor)
    async with _running(gateway):
        doc = await _answers(port, "/health", 200)
        assert doc["loop"]["lag_ms_p99"] == 499.0
        figures["lag_ms_p99"] = 500.0
        doc = await _answers(port, "/health", 503)
        assert doc["status"] == "unhealthy" and "the limit is 500 ms" in doc["reason"], doc
