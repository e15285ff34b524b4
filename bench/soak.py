"""Soak: a long-running `gateway run` under disturbances, checked for leaks and for loss.

    python bench/soak.py --minutes 3                     # a smoke run
    taskset -c 1 python bench/soak.py --minutes 30 --keep soak-out  # one core; keep its logs

Real processes, all on 127.0.0.1 and free ports: mosquitto (persistence on, so a restart keeps
what it accepted for the counting subscriber), one Modbus simulator process per device (so one
device can be stopped alone) and ``gateway run`` on a generated config: every device's points
polled ``--hz`` times a second (``publish: always``) and bridged to MQTT (``payload: sample``,
QoS 1, the durable SQLite outbox), to the gateway's OPC UA server and to its CoAP server (with
an ``anomaly:`` option on a few points), with a device shadow.

The counting subscriber (paho, persistent session, QoS 1, ``#``) reads each message's outbox id
(``"id":"soak/broker/<n>"``; the outbox numbers every message it accepts 1, 2, 3...), so at
the end "nothing accepted was lost" is exact: every id from 1 to the outbox's newest (read from
the file) arrived, or the outbox counted it as dropped. Duplicates (a replay after a broker
restart; what the id is for) are counted apart.

Every ``--sample-every`` seconds it records the gateway process's RSS (VmRSS), open fds,
threads, CPU, the files' sizes and the counters of its status file; in between it disturbs it
on a rotating schedule, one step every ``--every`` seconds: restart mosquitto (down
``--broker-down`` s), stop one Modbus device and start it again, SIGHUP with the same config and
with a changed one (a Modbus server endpoint and a bridge to it added, then removed), and
bursts of OPC UA sessions (asyncua: browse, read, a short subscription) and CoAP requests
(coap-client: GET, discovery, a short observe). The last 30 s are quiet, then the devices stop
and the subscriber is given time to catch up.

Leak figures: RSS first/last/max and a least-squares slope in MB/hour over the second half of
the run (the first half is warm-up: caches, the shadow's history, the OPC UA address space);
fds and threads first/last/max. The gateway's log is scanned for ERROR lines (counted, and
the distinct messages with numbers masked) and tracebacks.

Prints one line per sample and a summary on stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_folder,
    free_port,
    modbus_devices_yaml,
    mosquitto_binary,
    print_result,
    run_bench,
    start_gateway,
    start_simulator,
    stop,
    stop_gateway,
    wait_port,
)

HOST = "127.0.0.1"
GATEWAY = "soak"
QUIET_TAIL_S = 30.0  # no disturbance in the last seconds, so the counts can settle
SETTLE_S = 90.0  # the most the subscriber is given to catch up at the end
STEPS = (  # the rotating schedule: every kind comes once in the first eight steps
    "broker_restart",
    "opcua_sessions",
    "hup_same",
    "coap_requests",
    "device_restart",
    "opcua_sessions",
    "hup_changed",
    "coap_requests",
)


# -- peers --------------------------------------------------------------------------------------


class Broker:
    """mosquitto with persistence on one port, stopped and started again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_queued_messages 0\n"
            "max_inflight_messages 0\n"
            # Started as root it would drop to user mosquitto, which cannot save its state here.
            "user root\nlog_type error\nlog_type warning\n"
        )
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        wait_port(self.port)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop([process])


class Devices:
    """One simulator process per device (``--animate``), each restartable on its port."""

    def __init__(self, count: int, registers: int) -> None:
        self.registers = registers
        self.procs: list[subprocess.Popen[str] | None] = []
        self.ports: list[int] = []
        for _ in range(count):
            proc, ports = start_simulator(1, registers, "--animate")
            self.procs.append(proc)
            self.ports.append(ports[0])

    def stop_one(self, n: int) -> None:
        proc, self.procs[n] = self.procs[n], None
        if proc is not None:
            stop([proc])

    def start_one(self, n: int) -> None:
        if self.procs[n] is None:  # the same port again: a later argument wins
            self.procs[n] = start_simulator(
                1, self.registers, "--animate", "--base-port", str(self.ports[n])
            )[0]

    def stop_all(self) -> None:
        for n in range(len(self.procs)):
            self.stop_one(n)


# -- the gateway's config ------------------------------------------------------------------------


def gateway_config(
    ports: list[int],
    per_device: int,
    hz: float,
    mqtt_port: int,
    opcua_port: int,
    coap_port: int,
    *,
    anomaly_points: int,
    extra_port: int | None = None,
) -> str:
    """The soak's config; ``extra_port`` adds a Modbus server endpoint and a bridge to it (what
    the changed-config reloads add and remove)."""
    lines = [f"gateway: {{name: {GATEWAY}, status_interval: 5}}"]
    lines += modbus_devices_yaml(ports, per_device, 1.0 / hz, ", publish: always")
    names = ", ".join(f"d{n}" for n in range(len(ports)))
    lines += [
        "shadow: {path: shadow.db, history: {max_rows: 200000}}",
        "endpoints:",
        f"  broker: {{protocol: mqtt, host: {HOST}, port: {mqtt_port},"
        " reconnect: {initial: 0.2, max: 2}, outbox: {path: outbox.db, drain_rate: 5000}}",
        f"  uas: {{protocol: opcua, role: server, host: {HOST}, port: {opcua_port},"
        " security: {allow_none: true}, anonymous: true}",
        f"  coap: {{protocol: coap, role: server, host: {HOST}, port: {coap_port}}}",
    ]
    if extra_port is not None:
        lines.append(f"  mbs: {{protocol: modbus, role: server, host: {HOST}, port: {extra_port}}}")
    scored = ", ".join(f"r{i}" for i in range(min(anomaly_points, per_device)))
    anomaly = f", anomaly: {{points: [{scored}], calibration: 100}}" if anomaly_points else ""
    lines += [
        "bridges:",
        f"  - {{name: up, from: [{names}], to: broker, topic: 'soak/{{device}}/{{point}}',"
        " payload: sample, qos: 1}",
        f"  - {{name: ua, from: [{names}], to: uas}}",
        f"  - {{name: co, from: [{names}], to: coap, path: '{{device}}/{{point}}'{anomaly}}}",
    ]
    if extra_port is not None:
        mapped = ", ".join(f"{{point: r{i}, address: {i}}}" for i in range(min(8, per_device)))
        lines.append(f"  - {{name: mb, from: d0, to: mbs, map: [{mapped}]}}")
    return "\n".join(lines) + "\n"


# -- the counting subscriber -----------------------------------------------------------------------

_ID = re.compile(rb'^\{"id":"[^"/]+/[^"/]+/(\d+)"')


class Subscriber:
    """Which outbox ids arrived (a bytearray indexed by id), duplicates, and messages without
    one. A persistent session at QoS 1, so a broker restart loses nothing it accepted."""

    def __init__(self, port: int) -> None:
        self.seen = bytearray(1 << 20)
        self.distinct = 0
        self.duplicates = 0
        self.messages = 0
        self.without_id: dict[str, int] = {}  # topic -> messages (status, alarms)
        self.max_id = 0
        self.lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="soak-counter", clean_session=False)
        c.on_connect = lambda cl, *_: cl.subscribe("#", qos=1)
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 1)  # back before the gateway drains its backlog
        c.connect(HOST, port)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        found = _ID.match(msg.payload)
        with self.lock:
            self.messages += 1
            if found is None:
                self.without_id[msg.topic] = self.without_id.get(msg.topic, 0) + 1
                return
            n = int(found.group(1))
            if n >= len(self.seen):
                self.seen.extend(bytes(max(n + 1 - len(self.seen), len(self.seen))))
            if self.seen[n]:
                self.duplicates += 1
                return
            self.seen[n] = 1
            self.distinct += 1
            self.max_id = max(self.max_id, n)

    def missing(self, last_id: int) -> list[int]:
        with self.lock:
            return [n for n in range(1, last_id + 1) if n >= len(self.seen) or not self.seen[n]]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def outbox_figures(db: Path) -> tuple[int, int, int]:
    """The outbox file, read-only: its newest id given out, backlog rows, dropped in all."""
    if not db.exists():
        return 0, 0, 0
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    try:
        last = con.execute(
            "SELECT max(coalesce((SELECT max(id) FROM outbox), 0),"
            " coalesce((SELECT value FROM meta WHERE key = 'last_id'), 0))"
        ).fetchone()[0]
        backlog = con.execute("SELECT count(*) FROM outbox").fetchone()[0]
        dropped = con.execute(
            "SELECT coalesce(sum(value), 0) FROM meta WHERE key IN ('full', 'expired', 'disk_full')"
        ).fetchone()[0]
    except sqlite3.Error:
        return 0, 0, 0
    finally:
        con.close()
    return int(last), int(backlog), int(dropped)


# -- the process's figures ---------------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MB), threads, open fds and CPU seconds of ``pid``, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 2),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
    }


class Totals:
    """Counters of the status file summed across resets (a part a reload restarts starts at 0)."""

    def __init__(self) -> None:
        self.prev: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def add(self, key: str, value: int) -> int:
        prev = self.prev.get(key, 0)
        self.total[key] = self.total.get(key, 0) + (value if value < prev else value - prev)
        self.prev[key] = value
        return self.total[key]


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) pairs, per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return None
    return 3600 * sum((t - mt) * (v - mv) for t, v in points) / den


# -- the disturbances --------------------------------------------------------------------------


async def _opcua_sessions(port: int, sessions: int) -> int:
    """``sessions`` asyncua clients one after another: browse, read, a 1 s subscription."""
    from asyncua.client.client import Client

    done = 0
    for _ in range(sessions):
        client = Client(f"opc.tcp://{HOST}:{port}/protocol-brain", timeout=10)
        async with client:
            nodes = []
            for child in await client.nodes.objects.get_children():
                nodes += await child.get_children()
            variables = [n for n in nodes[:200] if (await n.read_node_class()).value == 2]
            if variables:
                await client.read_values(variables[:50])
                sub = await client.create_subscription(100, None)
                await sub.subscribe_data_change(variables[:10])
                await asyncio.sleep(1.0)
                await sub.delete()
        done += 1
    return done


def coap_binary() -> str | None:
    for name in ("coap-client", "coap-client-notls", "coap-client-openssl", "coap-client-gnutls"):
        found = shutil.which(name)
        if found:
            return found
    return None


def coap_requests(binary: str, port: int, devices: int, rounds: int) -> tuple[int, int]:
    """GETs of a point of each device, a discovery and a 3 s observe; (done, failed)."""
    base = f"coap://{HOST}:{port}"
    done = failed = 0
    for r in range(rounds):
        for d in range(devices):
            argv = [binary, "-m", "get", "-B", "5", f"{base}/d{d}/r{r % 4}"]
            ok = subprocess.run(argv, capture_output=True, timeout=15).returncode == 0
            done, failed = done + ok, failed + (not ok)
    argv = [binary, "-m", "get", "-B", "5", f"{base}/.well-known/core"]
    ok = subprocess.run(argv, capture_output=True, timeout=15).returncode == 0
    done, failed = done + ok, failed + (not ok)
    argv = [binary, "-m", "get", "-s", "3", "-B", "6", f"{base}/d0/r0"]
    ok = subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    return done + ok, failed + (not ok)


# -- the log ------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(\.\d+)?")
_LEVEL = re.compile(r"^\S+ \S+ (ERROR|CRITICAL|WARNING)\s+(\S+): (.*)$")


def log_findings(log: Path) -> dict[str, Any]:
    """ERROR (and CRITICAL) lines counted, their distinct messages with numbers masked; the
    same for WARNING lines; tracebacks counted."""
    errors: dict[str, int] = {}
    warnings: dict[str, int] = {}
    error_lines = warning_lines = tracebacks = 0
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        found = _LEVEL.match(line)
        if found is None:
            continue
        level, logger, text = found.groups()
        key = f"{logger}: {_NUMBER.sub('N', text)[:200]}"
        if level == "WARNING":
            warning_lines += 1
            warnings[key] = warnings.get(key, 0) + 1
        else:
            error_lines += 1
            errors[key] = errors.get(key, 0) + 1
    return {
        "error_lines": error_lines,
        "errors": errors,
        "warning_lines": warning_lines,
        "warnings": warnings,
        "tracebacks": tracebacks,
    }


# -- the run -------------------------------------------------------------------------------------


@contextlib.contextmanager
def work_folder(keep: Path | None) -> Iterator[Path]:
    """The run's temporary folder (removed however the run ends); with ``keep``, its logs,
    samples and events are copied there first."""
    with bench_folder("pb-soak-") as folder:
        try:
            yield folder
        finally:
            if keep is not None:
                shutil.copytree(
                    folder,
                    keep,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("state", "*.db", "*.db-*", "*.lock"),
                )
                print(f"logs, samples and events copied to {keep}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (10)")
    parser.add_argument("--points", type=int, default=100, help="points in all (100)")
    parser.add_argument("--devices", type=int, default=2, help="Modbus devices (2)")
    parser.add_argument("--hz", type=float, default=10.0, help="polls per second (10)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between disturbances")
    parser.add_argument("--broker-down", type=float, default=15.0, help="seconds (15)")
    parser.add_argument("--device-down", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--opcua-sessions", type=int, default=5, help="per OPC UA step (5)")
    parser.add_argument("--anomaly-points", type=int, default=8, help="scored points (8; 0: off)")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="copy the logs, samples and events to DIR"
    )
    args = parser.parse_args()
    per_device = max(1, args.points // args.devices)
    duration = args.minutes * 60.0
    coap = coap_binary()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # "session timeout ..." per session

    with work_folder(args.keep) as folder:
        os.environ["PROTOCOL_BRAIN_STATE_DIR"] = str(folder / "state")
        procs: list[subprocess.Popen[str]] = []
        broker = Broker(folder)
        devices: Devices | None = None
        sub: Subscriber | None = None
        try:
            broker.start()
            devices = Devices(args.devices, max(per_device, 8))
            opcua_port, coap_port = free_port(), free_port()
            config = folder / "gateway.yaml"

            def write_config(extra: int | None = None) -> None:
                assert devices is not None
                config.write_text(
                    gateway_config(
                        devices.ports,
                        per_device,
                        args.hz,
                        broker.port,
                        opcua_port,
                        coap_port,
                        anomaly_points=args.anomaly_points,
                        extra_port=extra,
                    )
                )

            write_config()
            sub = Subscriber(broker.port)
            log = folder / "gateway.log"
            gw = start_gateway(config, log)
            procs.append(gw)
            status_file = folder / "state" / "status" / f"{GATEWAY}.json"
            print(
                f"soak: {args.devices} devices x {per_device} points at {args.hz} Hz "
                f"({args.devices * per_device * args.hz:.0f} samples/s to MQTT, OPC UA, CoAP), "
                f"{args.minutes} min; work folder {folder}",
                file=sys.stderr,
            )

            deadline = time.monotonic() + 120
            while sub.distinct == 0 or (read_status(status_file) or {}).get("state") != "running":
                if gw.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the gateway did not start publishing: see {log}")
                time.sleep(0.2)
            t0 = time.monotonic()
            samples: list[dict[str, Any]] = []
            totals = Totals()
            events: list[dict[str, Any]] = []
            pending: list[tuple[float, str, Callable[[], None]]] = []  # (when, what, action)
            counts: dict[str, int] = {}
            extra_port: int | None = None
            reloads = 0
            step = 0
            next_sample = 0.0
            next_step = args.every
            samples_file = (folder / "samples.jsonl").open("w")

            def note(what: str, **info: Any) -> None:
                at = round(time.monotonic() - t0, 1)
                events.append({"t": at, "event": what, **info})
                counts[what] = counts.get(what, 0) + 1
                extra = " ".join(f"{k}={v}" for k, v in info.items())
                print(f"  [{at:7.1f} s] {what} {extra}", file=sys.stderr)

            def take_sample(now: float) -> None:
                assert sub is not None
                figures = proc_figures(gw.pid)
                last_id, backlog, dropped = outbox_figures(folder / "outbox.db")
                row: dict[str, Any] = {"t": round(now, 1), **figures}
                row.update(outbox_last_id=last_id, backlog=backlog, outbox_dropped=dropped)
                row.update(received=sub.distinct, duplicates=sub.duplicates)
                for name in ("outbox.db", "shadow.db"):
                    files = folder.glob(f"{name}*")
                    row[f"{name.split('.')[0]}_mb"] = round(
                        sum(f.stat().st_size for f in files) / 2**20, 2
                    )
                status = read_status(status_file)
                if status is not None:
                    adapters = status.get("status", {}).get("adapters", {})
                    read = sum(
                        totals.add(f"{n}.samples", int(a.get("samples", 0)))
                        for n, a in adapters.items()
                        if n.startswith("d")
                    )
                    missed = sum(
                        totals.add(f"{n}.polls_missed", int(a.get("polls_missed", 0)))
                        for n, a in adapters.items()
                        if n.startswith("d")
                    )
                    mqtt = adapters.get("broker", {})
                    row.update(
                        samples_read=read,
                        polls_missed=missed,
                        published=totals.add("broker.published", int(mqtt.get("published", 0))),
                        uas_sessions=adapters.get("uas", {}).get("sessions"),
                        coap_observations=adapters.get("coap", {}).get("observations"),
                        lag_p99_ms=status.get("status", {}).get("loop", {}).get("lag_ms_p99"),
                    )
                samples.append(row)
                samples_file.write(json.dumps(row) + "\n")
                samples_file.flush()
                print(
                    f"  [{now:7.1f} s] rss {row['rss_mb']:.1f} MB, fds {row['fds']}, "
                    f"threads {row['threads']}, cpu {row['cpu_s']:.0f} s, outbox id {last_id} "
                    f"backlog {backlog}, received {sub.distinct} (+{sub.duplicates} dup)",
                    file=sys.stderr,
                )

            def disturb(kind: str, now: float) -> None:
                nonlocal extra_port, reloads
                assert devices is not None
                if kind == "broker_restart":
                    broker.stop()
                    note("broker down")
                    pending.append((now + args.broker_down, "broker up", broker.start))
                elif kind == "device_restart":
                    n, sims = len(devices.ports) - 1, devices
                    sims.stop_one(n)
                    note("device down", device=f"d{n}")
                    pending.append((now + args.device_down, "device up", lambda: sims.start_one(n)))
                elif kind == "hup_same":
                    gw.send_signal(signal.SIGHUP)
                    reloads += 1
                    note("SIGHUP, same config")
                elif kind == "hup_changed":
                    extra_port = free_port() if extra_port is None else None
                    write_config(extra_port)
                    gw.send_signal(signal.SIGHUP)
                    reloads += 1
                    note(
                        "SIGHUP, changed config", bridge="mb added" if extra_port else "mb removed"
                    )
                elif kind == "opcua_sessions":
                    try:
                        done = asyncio.run(_opcua_sessions(opcua_port, args.opcua_sessions))
                        note("OPC UA sessions", done=done)
                    except Exception as exc:  # the gateway may be reloading: say so, go on
                        note("OPC UA sessions failed", error=f"{type(exc).__name__}: {exc}"[:160])
                elif kind == "coap_requests":
                    if coap is None:
                        note("CoAP requests skipped", why="no coap-client")
                        return
                    done, failed = coap_requests(coap, coap_port, len(devices.ports), 3)
                    note("CoAP requests", done=done, failed=failed)

            # -- the run: samples, disturbances, the steps' second halves --------------------
            while True:
                now = time.monotonic() - t0
                if gw.poll() is not None:
                    raise SystemExit(f"gateway exited with {gw.returncode}: see {log}")
                for item in sorted(pending):
                    if item[0] <= now:
                        pending.remove(item)
                        item[2]()
                        note(item[1])
                if now >= next_sample:
                    take_sample(now)
                    next_sample += args.sample_every
                if now >= duration:
                    break
                if now >= next_step and now < duration - QUIET_TAIL_S:
                    disturb(STEPS[step % len(STEPS)], now)
                    step += 1
                    next_step = max(next_step + args.every, time.monotonic() - t0 + 1.0)
                time.sleep(0.2)
            for _when, what, action in sorted(pending):  # a restart due after the end
                action()
                note(what)

            # -- the end: stop the devices, let the subscriber catch up -----------------------
            devices.stop_all()
            note("devices stopped")
            settle_start = time.monotonic()
            last_id, backlog, dropped = outbox_figures(folder / "outbox.db")
            stable_since = time.monotonic()
            while time.monotonic() - settle_start < SETTLE_S:
                time.sleep(1.0)
                now_last, backlog, dropped = outbox_figures(folder / "outbox.db")
                if now_last != last_id:
                    last_id, stable_since = now_last, time.monotonic()
                if sub.distinct + dropped >= last_id and time.monotonic() - stable_since > 3:
                    break
            settle_s = time.monotonic() - settle_start
            time.sleep(6)  # one more status write: the counters at the end
            take_sample(time.monotonic() - t0)
            missing = sub.missing(last_id)
            final_status = read_status(status_file) or {}

            gw_rc, shutdown_s = stop_gateway(gw)
            samples_file.close()
            (folder / "events.json").write_text(json.dumps(events, indent=1))

            findings = log_findings(log)
            text = log.read_text(errors="replace")
            reloads_logged = text.count("reload: ")
            refused = text.count("reload refused")
            first, last = samples[0], samples[-1]
            half = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= duration / 2]
            after_warmup = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= 60]
            slope = slope_per_hour(half)
            slope_all = slope_per_hour(after_warmup)
            cpu_pct = 100 * (last["cpu_s"] - first["cpu_s"]) / max(last["t"] - first["t"], 1)
            mqtt_status = final_status.get("status", {}).get("adapters", {}).get("broker", {})
            result: dict[str, Any] = {
                "duration_s": round(last["t"], 1),
                "samples": len(samples),
                "devices": args.devices,
                "points": args.devices * per_device,
                "hz": args.hz,
                "rss_mb_first": first["rss_mb"],
                "rss_mb_last": last["rss_mb"],
                "rss_mb_max": max(s["rss_mb"] for s in samples),
                "rss_slope_mb_per_h_second_half": None if slope is None else round(slope, 2),
                "rss_slope_mb_per_h_after_60s": None if slope_all is None else round(slope_all, 2),
                "fds_first": first["fds"],
                "fds_last": last["fds"],
                "fds_max": max(s["fds"] for s in samples),
                "threads_first": first["threads"],
                "threads_last": last["threads"],
                "threads_max": max(s["threads"] for s in samples),
                "gateway_cpu_pct_of_one_core": round(cpu_pct, 1),
                # Poll ticks skipped because a poll came late (a reload pauses the loop).
                "polls_missed": last.get("polls_missed"),
                "loop_lag_ms_max_since_last_start": final_status.get("status", {})
                .get("loop", {})
                .get("lag_ms_max"),
                "samples_read_by_devices": last.get("samples_read"),
                "outbox_accepted": last_id,
                "outbox_dropped": dropped,
                "outbox_backlog_at_end": backlog,
                "mqtt_published": last.get("published"),
                "mqtt_lost_counter": mqtt_status.get("lost"),
                "mqtt_received": sub.distinct,
                "mqtt_expected": last_id - dropped,
                "mqtt_missing": len(missing),
                "mqtt_missing_first": missing[:10],
                "mqtt_duplicates": sub.duplicates,
                "mqtt_without_id": sub.without_id,
                "settle_s": round(settle_s, 1),
                "broker_restarts": counts.get("broker down", 0),
                "device_restarts": counts.get("device down", 0),
                "opcua_sessions": sum(
                    e.get("done", 0) for e in events if e["event"] == "OPC UA sessions"
                ),
                "opcua_steps_failed": counts.get("OPC UA sessions failed", 0),
                "coap_requests": sum(
                    e.get("done", 0) for e in events if e["event"] == "CoAP requests"
                ),
                "coap_failed": sum(
                    e.get("failed", 0) for e in events if e["event"] == "CoAP requests"
                ),
                "reloads": reloads,
                "reloads_logged": reloads_logged,
                "reloads_refused": refused,
                "shadow_mb_last": last.get("shadow_mb"),
                "outbox_mb_last": last.get("outbox_mb"),
                "log_error_lines": findings["error_lines"],
                "log_errors": findings["errors"],
                "log_warning_lines": findings["warning_lines"],
                "log_warnings": findings["warnings"],
                "log_tracebacks": findings["tracebacks"],
                "gateway_exit_code": gw_rc,
                "gateway_shutdown_s": round(shutdown_s, 2),
                "load_average": os.getloadavg(),
                "cores": os.cpu_count(),
            }
            print("soak summary:", file=sys.stderr)
            print_result(result)
        finally:
            if sub is not None:
                sub.close()
            stop(procs)
            if devices is not None:
                devices.stop_all()
            broker.stop()


if __name__ == "__main__":
    sys.exit(run_bench(main))
