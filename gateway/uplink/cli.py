"""``gateway status CONFIG``: the running gateway's status, and the outbox of every MQTT endpoint
(and Sparkplug edge node) that has one.

The gateway's part is the file ``gateway run`` rewrites every status interval
(`gateway.livestatus`); the outboxes are read from their SQLite files directly (read-only). Both
work while the gateway runs or after it died. Paths are resolved as ``gateway run`` resolves them
(``{state}``: ``$PROTOCOL_BRAIN_STATE_DIR``, else ``.protocol-brain`` next to the config file).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any

from gateway.cliargs import path_text


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.paths import use_config_state_dir
    from gateway.uplink.outbox import OutboxConfig, read_status

    try:
        config = load_config(args.file, keep_unresolved=True)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    use_config_state_dir(args.file)
    gateway, gateway_error = _gateway_status(config.gateway.name)
    rows: list[dict[str, Any]] = []
    for name, entry in sorted(config.devices.items()):
        outbox = getattr(entry.config, "outbox", None)
        if not isinstance(outbox, OutboxConfig) or not outbox.enabled:
            continue
        path = outbox.file_for(name)
        row: dict[str, Any] = {"endpoint": name, "drain_rate": outbox.drain_rate}
        if path.exists():
            try:
                row.update(read_status(path))
            except sqlite3.Error as exc:  # damaged (a crash, a full disk) or not an outbox
                row.update(path=str(path), backlog=None, oldest_age_s=None, dropped=None)
                row["error"] = f"cannot read: {exc}"
        else:
            row.update(path=str(path), backlog=0, oldest_age_s=None, dropped=0, missing=True)
        rows.append(row)
    failed = 1 if gateway_error or any("error" in r for r in rows) else 0
    if args.check and not _alive(gateway):
        failed = 1
    if args.json:
        doc: dict[str, Any] = {"gateway": gateway, "outboxes": rows}
        if gateway_error:
            doc["gateway_error"] = gateway_error
        print(json.dumps(doc, indent=2, default=str))
        return failed
    if gateway_error:
        print(f"error: {gateway_error}", file=sys.stderr)
    else:
        for line in _gateway_lines(config.gateway.name, gateway):
            print(line)
    if not rows:
        print(f"{args.file}: no endpoint with a durable outbox")
        return failed
    print(f"{'endpoint':<16} {'backlog':>9} {'oldest_s':>10} {'dropped':>8} {'drain/s':>8} path")
    for r in rows:
        if "error" in r:
            print(f"{r['endpoint']:<16} {'-':>9} {'-':>10} {'-':>8} {'-':>8} {r['path']}")
            print(f"error: {r['endpoint']}: {r['path']}: {r['error']}", file=sys.stderr)
            continue
        age = "-" if r["oldest_age_s"] is None else f"{r['oldest_age_s']:.1f}"
        rate = "-" if r["drain_rate"] is None else f"{r['drain_rate']:g}"
        print(
            f"{r['endpoint']:<16} {r['backlog']:>9} {age:>10} {r['dropped']:>8} {rate:>8} "
            f"{r['path']}{' (not created yet)' if r.get('missing') else ''}"
        )
    return failed


def _alive(status: dict[str, Any] | None) -> bool:
    """``--check``: the gateway is starting or running, and rewrote its file in time (a
    service manager's or a container's health check: a killed, stopped, failed or stuck
    gateway fails it; a device that is down does not, as a restart would not bring it up)."""
    return status is not None and status["state"] in ("starting", "running") and not status["stale"]


def _gateway_status(name: str) -> tuple[dict[str, Any] | None, str | None]:
    """The gateway's status file (None if there is none), and an error if it cannot be read."""
    from gateway import livestatus

    path = livestatus.status_path(name)
    try:
        return livestatus.read(path), None
    except (OSError, ValueError) as exc:
        return None, f"gateway {name}: {path}: cannot read: {exc}"


def _gateway_lines(name: str, status: dict[str, Any] | None) -> list[str]:
    """What ``gateway status`` prints about the gateway itself."""
    from gateway import livestatus
    from gateway.down import down
    from gateway.text import duration

    if status is None:
        path = livestatus.status_path(name)
        return [f"gateway {name}: never run with this state folder ({path} does not exist)"]
    ago = f"written {duration(status['age_s'])} ago"
    state = status["state"]
    if state == "running":
        up = duration(status["written"] + status["age_s"] - status["started"])
        head = f"gateway {name}: running, pid {status['pid']}, up {up}; status {ago}"
        if status["stale"]:
            head += (
                f" (expected every {status['interval_s']:g} s: the gateway may be stuck, or its"
                " disk refuses the file)"
            )
    elif state == "starting":
        up = duration(status["written"] + status["age_s"] - status["started"])
        head = f"gateway {name}: starting, pid {status['pid']}, for {up}"
    elif state == "stopped":
        head = f"gateway {name}: stopped (clean shutdown); last status {ago}"
    elif state == "failed":
        head = f"gateway {name}: not running: it failed; status {ago}"
    else:
        head = (
            f"gateway {name}: not running: pid {status['pid']} is gone without a clean shutdown"
            f" (killed, crashed or the machine restarted); last status {ago}"
        )
    running = state in ("starting", "running")
    label = "" if running else "why: " if state == "failed" else "last status line: "
    lines = [head, f"  {label}{status['summary']}"]
    said = "down" if running else "was down"
    for adapter, why in sorted(down(status.get("status", {}).get("adapters", {})).items()):
        lines.append(f"  {said}: {adapter}" + (f" ({why})" if why else ""))
    return lines


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="whether the gateway runs, what is down, and its outboxes",
        description="Show whether the gateway of a config runs, its last status line and which "
        "devices and endpoints are down (from the file gateway run rewrites every "
        "gateway.status_interval), then the durable outbox of every MQTT endpoint: backlog, "
        "age of the oldest message, drops, drain rate and file. Files are read read-only, as "
        "gateway run finds them, so it works while the gateway runs or after it stopped. Exit "
        "1 if a file cannot be read (and with --check if the gateway is not running).",
    )
    p.add_argument("file", type=path_text, help="the gateway's YAML config")
    p.add_argument("--json", action="store_true", help="print the gateway and outboxes as JSON")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless the gateway is starting or running and its status file is fresh"
        " (a health check without HTTP; a device that is down does not fail it)",
    )
    p.set_defaults(func=cmd_status)
