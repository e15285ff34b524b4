"""``gateway shadow get|set|history``: the device shadow store of a config, from the shell.

Light at import (the CLI builds its parser on every command): the store and the config loader
are imported inside the command. ``set`` writes desired state into the SQLite file; a running
gateway notices within its ``shadow.poll_interval`` and writes the delta to the device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.cli import CommandError
from gateway.cliargs import path_text

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

__all__ = ["register"]


CONFIG_HELP = "the gateway's YAML config (with a shadow: section)"
TIME_HELP = "epoch seconds or ISO 8601 (UTC if no zone)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "shadow",
        help="read or change device shadows (reported/desired)",
        description="Read or change the device shadows a config's shadow: section keeps in its "
        "SQLite store. A running gateway notices a change of desired state within "
        "shadow.poll_interval and writes it to the device through the write rules.",
    )
    sub = p.add_subparsers(dest="shadow_command", required=True)

    g = sub.add_parser(
        "get",
        help="print a device's shadow document (JSON)",
        description="Print a device's shadow document as JSON: reported, desired and delta "
        "state, per-key metadata, version and timestamp (and errors and quality if any).",
    )
    g.add_argument("device", help="a device with a shadow")
    g.add_argument("--config", required=True, type=path_text, metavar="FILE", help=CONFIG_HELP)
    g.set_defaults(func=cmd_get)

    s = sub.add_parser(
        "set",
        help="change desired state: KEY=VALUE (JSON; null deletes)",
        description="Change a device's desired state and print the new document. A VALUE is "
        "read as JSON (42, true, null), else as a string; null deletes the key. A value the "
        "write rules would refuse is refused now; a key that is not a point of the device is "
        "kept as metadata and never written to it.",
    )
    s.add_argument("device", help="a device with a shadow")
    s.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="desired values (JSON or text)")
    s.add_argument("--config", required=True, type=path_text, metavar="FILE", help=CONFIG_HELP)
    s.add_argument("--version", type=int, help="apply only if the shadow is at this version")
    s.set_defaults(func=cmd_set)

    h = sub.add_parser(
        "history",
        help="reported values of one point, oldest first",
        description="Print the reported values of one point of a device, oldest first, with "
        "time and quality: all the history kept, the last N, or those in a time range.",
    )
    h.add_argument("device", help="a device with a shadow")
    h.add_argument("point", help="one of its points")
    h.add_argument("--config", required=True, type=path_text, metavar="FILE", help=CONFIG_HELP)
    h.add_argument("--last", type=int, metavar="N", help="the last N values")
    h.add_argument("--since", metavar="T", help=f"from this time: {TIME_HELP}")
    h.add_argument("--until", metavar="T", help=f"up to this time: {TIME_HELP}")
    h.add_argument("--json", action="store_true", help="one JSON object per line")
    h.set_defaults(func=cmd_history)


def _config(config_file: str) -> GatewayConfig:
    """The config, which must have a shadow: section."""
    from gateway.config import ConfigError, load_config
    from gateway.paths import keep_from_others, use_config_state_dir

    use_config_state_dir(config_file)  # {state} in shadow.path: the folder gateway run uses
    keep_from_others()  # a store this command creates is as private as gateway run's
    try:
        config = load_config(config_file, keep_unresolved=True)
    except ConfigError as exc:
        raise CommandError(str(exc), 1) from None
    if config.shadow is None:
        raise CommandError(f"{config_file} has no shadow: section", 1)
    return config


def _open(config: GatewayConfig, *, must_exist: bool) -> Any:
    from gateway.shadow.store import ShadowStore

    assert config.shadow is not None  # _config checked it
    path = config.shadow.file()
    if must_exist and not os.path.exists(path):
        raise CommandError(
            f"no shadow store at {path} yet (the gateway creates it when it runs)", 1
        )
    try:  # the same limits on desired state as the gateway's (refused: ShadowLimitError)
        return ShadowStore(
            path,
            max_desired_keys=config.shadow.max_desired_keys,
            max_desired_bytes=config.shadow.max_desired_bytes,
        )
    except Exception as exc:  # sqlite3 errors: not a database, no permission, ...
        raise CommandError(f"cannot open the shadow store {path}: {exc}", 1) from None


def cmd_get(args: argparse.Namespace) -> int:
    store = _open(_config(args.config), must_exist=True)
    doc = store.get(args.device)
    if not doc.exists:
        raise CommandError(
            f"no shadow for {args.device!r} (devices: {', '.join(store.devices())})", 1
        )
    print(json.dumps(doc.to_json(), indent=2))
    return 0


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs: each key's value as typed."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"{pair!r}: expected KEY=VALUE", 1)
        out[key] = text
    return out


def check_desired(
    config: GatewayConfig, device: str, texts: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """The desired values of ``texts`` (each key's value as typed), refusing now what the
    gateway would refuse to write (CommandError), and the keys that are not points of the
    device (kept as metadata, e.g. a site for topics). A value reads as JSON (``42``, ``true``,
    ``null``: deletes the key) or else as a plain string; for a ``string`` point it is the text
    as typed unless JSON reads it as a string or null (``label=42`` is "42")."""
    from gateway.runtime import Gateway

    gateway = Gateway(config)  # builds the points as `run` does; no I/O
    assert gateway.shadow is not None  # _config checked the shadow: section
    if device not in gateway.shadow.devices:
        known = ", ".join(sorted(gateway.shadow.devices)) or "none"
        raise CommandError(f"{device!r} has no shadow in {config.path} (devices: {known})", 1)
    desired: dict[str, Any] = {}
    metadata = []
    for key, text in texts.items():
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        spec = gateway.router.points.get((device, key))
        if spec is not None and spec.datatype == "string":
            if value is not None and not isinstance(value, str):
                value = text  # label=NaN is the text "NaN" too
        if isinstance(value, float) and not math.isfinite(value):  # NaN, 1e999
            raise CommandError(f"{key}={text}: {text} is not a finite number", 1)
        desired[key] = value
        if spec is None:
            metadata.append(key)
        elif value is not None:  # null deletes the key
            result = gateway.router.check(device, key, value)
            if not result.ok:
                raise CommandError(f"{key}={json.dumps(value)}: {result.reason}", 1)
    return desired, metadata


def cmd_set(args: argparse.Namespace) -> int:
    from gateway.shadow.store import ShadowError

    texts = parse_pairs(args.pairs)
    config = _config(args.config)
    desired, metadata = check_desired(config, args.device, texts)
    for key in metadata:
        print(
            f"note: {key} is not a point of {args.device}: kept in desired as metadata, "
            "never written to the device",
            file=sys.stderr,
        )
    store = _open(config, must_exist=False)
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
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise CommandError(f"{text!r}: expected epoch seconds or an ISO 8601 time", 1)
        return seconds
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
    if since is not None and until is not None and since > until:
        raise CommandError(f"--since {args.since} is after --until {args.until}", 1)
    store = _open(_config(args.config), must_exist=True)
    rows = store.history(args.device, args.point, last=args.last, since=since, until=until)
    if not rows:  # say why there is nothing: a name that is not there, or just no change
        doc = store.get(args.device)
        if not doc.exists:
            known = ", ".join(store.devices())
            raise CommandError(f"no shadow for {args.device!r} (devices: {known})", 1)
        if args.point not in doc.reported and args.point not in doc.quality:
            points = ", ".join(sorted(doc.reported)) or "none yet"
            raise CommandError(
                f"no history of {args.device}/{args.point}: it was never reported "
                f"(reported points: {points})",
                1,
            )
    for r in rows:
        if args.json:
            print(json.dumps({"ts": r.ts, "value": r.value, "quality": r.quality}))
        else:
            ts = datetime.fromtimestamp(r.ts, UTC).isoformat(timespec="milliseconds")
            print(f"{ts}  {json.dumps(r.value)}  {r.quality}")
    return 0
