"""``gateway shadow get|set|history``: the device shadow store of a config, from the shell.

Light at import (the CLI builds its parser on every command): the store and the config loader
are imported inside the command. ``set`` writes desired state into the SQLite file; a running
gateway notices within its ``shadow.poll_interval`` and writes the delta to the device.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import Any

from gateway.cli import CommandError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("shadow", help="read or change device shadows (reported/desired)")
    sub = p.add_subparsers(dest="shadow_command", required=True)

    g = sub.add_parser("get", help="print a device's shadow document (JSON)")
    g.add_argument("device")
    g.add_argument("--config", required=True, metavar="FILE")
    g.set_defaults(func=cmd_get)

    s = sub.add_parser("set", help="change desired state: KEY=VALUE (JSON; null deletes)")
    s.add_argument("device")
    s.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    s.add_argument("--config", required=True, metavar="FILE")
    s.add_argument("--version", type=int, help="apply only if the shadow is at this version")
    s.set_defaults(func=cmd_set)

    h = sub.add_parser("history", help="reported values of one point, oldest first")
    h.add_argument("device")
    h.add_argument("point")
    h.add_argument("--config", required=True, metavar="FILE")
    h.add_argument("--last", type=int, metavar="N", help="the last N values")
    h.add_argument("--since", metavar="T", help="epoch seconds or ISO 8601 (UTC if no zone)")
    h.add_argument("--until", metavar="T", help="epoch seconds or ISO 8601 (UTC if no zone)")
    h.add_argument("--json", action="store_true", help="one JSON object per line")
    h.set_defaults(func=cmd_history)


def _store_path(config_file: str, *, must_exist: bool) -> str:
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise CommandError(str(exc), 1) from None
    if config.shadow is None:
        raise CommandError(f"{config_file} has no shadow: section", 1)
    path = config.shadow.path
    if must_exist and not os.path.exists(path):
        raise CommandError(
            f"no shadow store at {path} yet (the gateway creates it when it runs)", 1
        )
    return path


def _open(args: argparse.Namespace, *, must_exist: bool) -> Any:
    from gateway.shadow.store import ShadowStore

    path = _store_path(args.config, must_exist=must_exist)
    try:
        return ShadowStore(path)
    except Exception as exc:  # sqlite3 errors: not a database, no permission, ...
        raise CommandError(f"cannot open the shadow store {path}: {exc}", 1) from None


def cmd_get(args: argparse.Namespace) -> int:
    store = _open(args, must_exist=True)
    doc = store.get(args.device)
    if not doc.exists:
        raise CommandError(
            f"no shadow for {args.device!r} (devices: {', '.join(store.devices())})", 1
        )
    print(json.dumps(doc.to_json(), indent=2))
    return 0


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` with VALUE as JSON (``42``, ``true``, ``null``) or else a plain string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"{pair!r}: expected KEY=VALUE", 1)
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def cmd_set(args: argparse.Namespace) -> int:
    from gateway.shadow.store import ShadowError

    desired = parse_pairs(args.pairs)
    store = _open(args, must_exist=False)
    try:
        doc = store.update(args.device, desired=desired, version=args.version)
    except ShadowError as exc:
        raise CommandError(str(exc), 1) from None
    print(json.dumps(doc.to_json(), indent=2))
    return 0


def parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{text!r}: expected epoch seconds or an ISO 8601 time", 1) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def cmd_history(args: argparse.Namespace) -> int:
    if args.last is not None and (args.since or args.until):
        raise CommandError("use either --last or --since/--until", 1)
    if args.last is not None and args.last < 1:
        raise CommandError("--last must be at least 1", 1)
    since, until = parse_time(args.since), parse_time(args.until)
    store = _open(args, must_exist=True)
    rows = store.history(args.device, args.point, last=args.last, since=since, until=until)
    for r in rows:
        if args.json:
            print(json.dumps({"ts": r.ts, "value": r.value, "quality": r.quality}))
        else:
            ts = datetime.fromtimestamp(r.ts, UTC).isoformat(timespec="milliseconds")
            print(f"{ts}  {json.dumps(r.value)}  {r.quality}")
    return 0
