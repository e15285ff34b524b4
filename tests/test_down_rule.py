"""One rule for "down" (`gateway.down`): ``GET /ready``, the status line (`Gateway.summary`) and
``gateway status`` name the same devices and endpoints down, with the same reason, for every kind
of status entry; ``gateway status --check`` fails on none of them.

Each consumer is read through its real function (`health.readiness`, `Gateway.summary`,
``_gateway_lines`` on a status file read back by `livestatus.read`), and the last test runs a
gateway against the Modbus simulator and mosquitto and asks it over HTTP and ``gateway status``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, free_port, modbus_device_yaml, wait_for

from gateway import health, livestatus
from gateway.config import load_config_text
from gateway.down import down, why_down
from gateway.runtime import Gateway
from gateway.uplink.cli import _alive, _gateway_lines
from protocols.modbus.simulator import Simulator

# Each kind of entry, and why it is down (None: up).
KINDS: dict[str, tuple[dict[str, Any], str | None]] = {
    "connected": ({"connected": True, "last_error": "an old timeout"}, None),
    "reconnecting": (
        {"connected": False, "last_error": "connect failed: refused"},
        "connect failed: refused",
    ),
    "never_connected": ({"connected": False, "last_error": None}, ""),
    "no_session": ({"connected": False, "reason": "no session"}, "no session"),
    "restarting": (  # what the runtime makes of an adapter whose run() failed
        {
            "connected": False,
            "last_error": "run() failed, restarting: OSError()",
            "run_failures": 2,
        },
        "run() failed, restarting: OSError()",
    ),
    "status_bug": (  # a plugin's status() raised: it cannot say it is up
        {"status_error": "status() failed: KeyError('x')"},
        "status() failed: KeyError('x')",
    ),
    "server": ({"port": 5020, "connections": 0}, None),  # no connection of its own
    "no_connection_key": ({"registrations": 0, "last_error": "timeout"}, None),  # CoAP client
}

CONFIG = f"""
gateway: {{name: dr}}
devices:
{modbus_device_yaml(1, name="plc")}
    points: [{{name: t, address: 0, poll: fast}}]
  off: {{protocol: modbus, host: {HOST}, port: 1, enabled: false, points: [{{name: t, address: 0}}]}}
endpoints:
  cloud: {{protocol: mqtt, host: {HOST}, port: 1}}
  hmi: {{protocol: modbus, role: server, host: {HOST}, port: 0}}
bridges:
  - {{name: up, from: plc, to: cloud}}
"""
LINE = re.compile(r"^  (?:was )?down: (\S+)(?: \((.*)\))?$")


def ready_says(adapters: dict[str, Any], names: list[str]) -> dict[str, str]:
    """``/ready``'s down entries, asked for each name alone and for all at once."""
    code, doc = health.readiness({}, names, adapters)
    assert (code == 503) == bool(doc["down"]), doc
    for name in names:
        alone, answer = health.readiness({"only": name}, names, adapters)
        assert (alone == 503) == (name in doc["down"]) == (name not in answer["up"]), answer
    return dict(doc["down"])


def summary_says(line: str) -> tuple[str, list[str]]:
    """The status line's ``N/M connected`` and the names after ``; down:``."""
    counted = line.split(",")[0]
    named = line.split("; down: ")[1].split(";")[0].split(", ") if "; down: " in line else []
    return counted, named


def status_says(path: Path, gateway: str) -> dict[str, str]:
    """``gateway status``'s down lines, from the status file read back as it reads it."""
    doc = livestatus.read(path)
    assert doc is not None
    assert _alive(doc)  # --check: a device that is down never fails it
    found: dict[str, str] = {}
    for line in _gateway_lines(gateway, doc):
        match = LINE.match(line)
        if match:
            found[match[1]] = match[2] or ""
    return found


async def agreement(gateway: Gateway, status: dict[str, Any], path: Path) -> dict[str, str]:
    """What all three say is down in ``status``, asserted to be one answer."""
    names = list(status["adapters"])
    line = gateway.summary(status)
    snapshot = livestatus.snapshot(
        gateway="dr", config="c.yaml", started=0, state="running", summary=line,
        status=status, interval=60,
    )  # fmt: skip
    livestatus.write(path, snapshot)
    ready = ready_says(status["adapters"], names)
    said = status_says(path, "dr")
    counted, named = summary_says(line)
    assert said == ready, (said, ready)
    assert named == list(ready), line  # in the status's order
    assert counted == f"{len(names) - len(ready)}/{len(names)} connected", line
    assert ready == down(status["adapters"])
    return ready


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_of_entry_is_down_or_up_alike_everywhere(tmp_path: Path, kind: str) -> None:
    entry, why = KINDS[kind]
    gateway = Gateway(load_config_text(CONFIG))
    status = {**gateway.status(), "adapters": {kind: entry}}
    said = await agreement(gateway, status, tmp_path / "dr.json")
    assert said == ({} if why is None else {kind: why})
    assert why_down(entry) == why


async def test_all_kinds_at_once_a_disabled_device_and_a_bridge_whose_source_is_down(
    tmp_path: Path,
) -> None:
    """The real entries of a gateway that has not started (its client never connected, its
    server up), beside every other kind: the disabled device is no one's, and the bridge from
    the device that is down is not named down itself."""
    gateway = Gateway(load_config_text(CONFIG))
    real = gateway.status()
    assert set(real["adapters"]) == {"plc", "cloud", "hmi"} and set(real["bridges"]) == {"up"}
    assert real["adapters"]["plc"]["connected"] is False  # never connected
    assert "connected" not in real["adapters"]["hmi"]
    status = {**real, "adapters": {**real["adapters"], **{k: e for k, (e, _) in KINDS.items()}}}
    said = await agreement(gateway, status, tmp_path / "dr.json")
    expected = {k: why for k, (_, why) in KINDS.items() if why is not None}
    assert said == {"plc": "", "cloud": "", **expected}
    assert "off" not in said and "up" not in said
    assert why_down("not a status") is None  # a file's odd entry says nothing of a link
    code, doc = health.readiness({"only": "off"}, list(status["adapters"]), status["adapters"])
    assert code == 400 and "off" in doc["reason"]  # not an entry of this gateway's


def _ready(port: int) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/ready")
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


async def test_a_running_gateway_says_the_same_over_http_in_its_line_and_gateway_status(
    tmp_path: Path, simulator: Simulator, mosquitto: MosquittoBroker
) -> None:
    """Up: a device on the simulator and an endpoint on mosquitto; down: a device with
    nothing on its port, an endpoint with no broker, and a device whose status() raises
    (a plugin's bug); off: a disabled device. /ready (HTTP), the status file's line and
    ``gateway status`` (another process) settle on one answer, and ``--check`` passes."""
    device = await simulator.add_device()
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"gateway: {{name: dr, status_interval: 0.3, metrics: {{host: {HOST}, port: {port}}}}}\n"
        "devices:\n"
        f"{modbus_device_yaml(device.port, name='plc')}\n"
        "    points: [{name: t, address: 0, poll: fast}]\n"
        f"{modbus_device_yaml(device.port, name='buggy')}\n"
        "    points: [{name: t, address: 0, poll: fast}]\n"
        f"{modbus_device_yaml(free_port(), name='dead')}\n"
        "    points: [{name: t, address: 0, poll: fast}]\n"
        f"  off: {{protocol: modbus, host: {HOST}, port: {free_port()}, enabled: false,"
        " points: [{name: t, address: 0}]}\n"
        "endpoints:\n"
        f"  broker: {{protocol: mqtt, host: {mosquitto.host}, port: {mosquitto.port}}}\n"
        f"  lost: {{protocol: mqtt, host: {HOST}, port: {free_port()}}}\n"
        "bridges:\n"
        "  - {name: up, from: plc, to: broker}\n"
        "  - {name: stuck, from: dead, to: broker}\n"
    )
    gateway = Gateway(
        load_config_text(config.read_text()), status_file=livestatus.status_path("dr")
    )

    def broken() -> dict[str, Any]:
        raise KeyError("plugin bug")

    gateway.adapters["buggy"].status = broken  # type: ignore[method-assign]
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    seen: list[Any] = []

    async def agreed() -> bool:
        try:
            code, doc = await asyncio.to_thread(_ready, port)
        except OSError as exc:  # the listener opens a moment after the run begins
            seen[:] = [exc]
            return False
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "status", str(config), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [LINE.match(line) for line in out.stdout.splitlines()]
        said = {m[1]: m[2] or "" for m in lines if m}
        summary = out.stdout.splitlines()[1] if out.returncode == 0 else ""
        counted, named = summary_says(summary.strip())
        seen[:] = [code, doc, out.returncode, out.stdout, out.stderr[-500:]]
        ready = doc.get("down", {})
        return (
            code == 503
            and set(ready) == {"buggy", "dead", "lost"}
            and said == ready
            and sorted(named) == sorted(ready)
            and counted == "2/5 connected"
        )

    try:
        await wait_for(agreed, 45, 0.2, "/ready, the status line and gateway status agreeing")
        code, doc, *_ = seen
        assert doc["down"]["buggy"] == "status() failed: KeyError('plugin bug')"
        assert sorted(doc["up"]) == ["broker", "plc"]
    except pytest.fail.Exception:
        pytest.fail(f"they did not agree; last: {seen!r}")
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
