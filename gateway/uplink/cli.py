"""``gateway status CONFIG``: the outbox of every MQTT endpoint, read from its file.

Reads the SQLite files directly (read-only), so it works while the gateway runs or after it
died. Paths are resolved as ``gateway run`` resolves them (``{state}``:
``$PROTOCOL_BRAIN_STATE_DIR``, else ``.protocol-brain`` next to the config file).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.paths import use_config_state_dir
    from gateway.uplink.outbox import OutboxConfig, read_status

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    use_config_state_dir(args.file)
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
    failed = 1 if any("error" in r for r in rows) else 0
    if args.json:
        print(json.dumps({"outboxes": rows}, indent=2))
        return failed
    if not rows:
        print(f"{args.file}: no endpoint with a durable outbox")
        return 0
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


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="outbox backlog, oldest age, drops of a config",
        description="Show the durable outbox of every MQTT endpoint of a config: backlog, age "
        "of the oldest message, drops, drain rate and file. The files are read read-only, as "
        "gateway run finds them, so it works while the gateway runs or after it stopped. Exit "
        "1 if a file cannot be read.",
    )
    p.add_argument("file", help="the gateway's YAML config")
    p.add_argument("--json", action="store_true", help="print the outboxes as JSON")
    p.set_defaults(func=cmd_status)
