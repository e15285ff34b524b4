"""What a reload keeps running: the parts of the new config that are the same as the old's.

``gateway run`` on SIGHUP used to stop every part and start them all again, so adding one
bridge dropped every session to the gateway's servers and paused every poll. Now a device or
endpoint whose settings are unchanged keeps running, with its connections and sessions, and
only what changed is stopped and started again. A part is kept when all of this holds:

- the ``gateway:`` section is the same, apart from ``log_level``, ``status_interval`` and
  ``metrics`` (which each run applies itself); otherwise everything restarts;
- its entry resolves to the same settings (a `${file:...}` that now reads another password
  changes them), and no file or folder the settings name changed (size, time or, for a
  folder, the files in it; an empty folder is as good as none): a new certificate or trust
  list needs a new start. The settings that hold the part's own state (`Strict.state_paths`:
  an outbox, a PKI or OSCORE folder), wherever they point, change while it runs and do not
  count, but for the trust list in them (a ``trusted`` folder). Files a part reads again by
  itself (`Strict.live_paths`: the OPC UA server's trust list) do not count either: the
  part is kept and told of the reload (`Adapter.reloaded`);
- every bridge into it is the same (settings and files, in the same order), and so is every
  source those bridges read: a target builds what it serves (an OPC UA address space, a
  register map) from its bridges' points when it starts.

A bridge keeps running when its target does. The shadow service is always started again (a
local file: no session drops with it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.config import GatewayConfig
from gateway.config.common import config_relative
from gateway.paths import state_path

# A folder is stamped by the files in it; past this many it is taken as changed (a folder
# that large is no trust list) rather than listed on every reload.
MAX_FOLDER_FILES = 2_000
TRUST_FOLDER = "trusted"
# Settings a run applies without restarting anything (`gateway run` sets the log level; the
# metrics listener is opened again by every run).
LIVE_KEYS = ("log_level", "status_interval", "metrics")

Stamp = tuple[str, object]  # (path, what it looked like)


@dataclass(frozen=True)
class Stamps:
    """What the files each part names looked like when its config was loaded."""

    entries: dict[str, tuple[Stamp, ...]] = field(default_factory=dict)
    bridges: dict[str, tuple[Stamp, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a reload does: devices and endpoints kept running, restarted (with why), new and
    removed."""

    kept: frozenset[str]
    restarted: dict[str, str]
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def line(self) -> str:
        """One log line: ``kept running: plc, broker; restarted: hmi (its settings changed)``."""
        parts = []
        if self.kept:
            parts.append("kept running: " + ", ".join(sorted(self.kept)))
        if self.restarted:
            parts.append(
                "restarted: " + "; ".join(f"{n} ({why})" for n, why in self.restarted.items())
            )
        if self.added:
            parts.append("new: " + ", ".join(self.added))
        if self.removed:
            parts.append("removed: " + ", ".join(self.removed))
        return "; ".join(parts) or "nothing to run"


def stamps(config: GatewayConfig) -> Stamps:
    """The stamps of every enabled entry's and bridge's files, as they are now."""
    return Stamps(
        entries={
            name: _stamps(config.path, entry.config, name) for name, entry in config.devices.items()
        },
        bridges={b.name: _stamps(config.path, b, b.name) for b in config.bridges},
    )


def plan(old: GatewayConfig, old_stamps: Stamps, new: GatewayConfig, new_stamps: Stamps) -> Plan:
    """What a reload from ``old`` (running, its files as ``old_stamps`` saw them) to ``new``
    keeps, restarts, adds and removes (module docstring for the rules)."""
    added = tuple(n for n in new.devices if n not in old.devices)
    removed = tuple(n for n in old.devices if n not in new.devices)
    common = [n for n in new.devices if n in old.devices]
    if _section(old) != _section(new):
        return Plan(
            frozenset(), {n: "the gateway: section changed" for n in common}, added, removed
        )
    settings = {n: _entry_change(old, old_stamps, new, new_stamps, n) for n in common}
    changed = {n: why for n, why in settings.items() if why is not None}
    old_bridges = {b.name: b for b in old.bridges}
    for name in common:
        if name in changed:
            continue
        why = _bridges_change(old, old_bridges, old_stamps, new, new_stamps, settings, name)
        if why is not None:
            changed[name] = why
    kept = frozenset(n for n in common if n not in changed)
    return Plan(kept, changed, added, removed)


def _section(config: GatewayConfig) -> dict[str, Any]:
    return config.gateway.model_dump(exclude=set(LIVE_KEYS))


def _entry_change(
    old: GatewayConfig, old_stamps: Stamps, new: GatewayConfig, new_stamps: Stamps, name: str
) -> str | None:
    a, b = old.devices[name], new.devices[name]
    if (a.protocol, a.role, a.section) != (b.protocol, b.role, b.section) or a.config != b.config:
        return "its settings changed"
    return _files_change(old_stamps.entries.get(name, ()), new_stamps.entries.get(name, ()))


def _bridges_change(
    old: GatewayConfig,
    old_bridges: dict[str, Any],
    old_stamps: Stamps,
    new: GatewayConfig,
    new_stamps: Stamps,
    settings: dict[str, str | None],
    name: str,
) -> str | None:
    """Why the bridges into ``name`` restart it, or None; ``settings``: each common entry's
    own change (`_entry_change`)."""
    into_old = [b.name for b in old.bridges if b.target == name]
    into_new = [b for b in new.bridges if b.target == name]
    if into_old != [b.name for b in into_new]:
        return "the bridges into it changed"
    for bridge in into_new:
        if bridge != old_bridges[bridge.name]:
            return f"bridge {bridge.name!r} into it changed"
        why = _files_change(
            old_stamps.bridges.get(bridge.name, ()), new_stamps.bridges.get(bridge.name, ())
        )
        if why is not None:
            return f"bridge {bridge.name!r} into it: {why}"
        for source in bridge.sources:
            if source not in settings:
                return f"source {source!r} of bridge {bridge.name!r} came or went"
            why = settings[source]
            if why is not None:
                return f"source {source!r} of bridge {bridge.name!r}: {why}"
    return None


def _files_change(old: tuple[Stamp, ...], new: tuple[Stamp, ...]) -> str | None:
    if old == new:
        return None
    before = dict(old)
    for path, stamp in new:
        if before.get(path) != stamp:
            return f"{path} changed"
    return "a file it names changed"


def _stamps(config_file: str, settings: Any, name: str) -> tuple[Stamp, ...]:
    """The stamps of the existing files and folders ``settings``' text values name."""
    found: dict[str, object] = {}
    home = os.path.dirname(os.path.abspath(config_file))
    for text, own in _texts(settings):
        if not text or len(text) > 4096 or "\n" in text or "\0" in text:
            continue
        where = str(state_path(config_relative(config_file, text), name))
        where = os.path.abspath(where)
        # The config's own folder (or one above it) holds the config file and the state:
        # a value naming it ("." as a prefix, say) is no file the part reads.
        if where == home or home.startswith(where.rstrip(os.sep) + os.sep):
            continue
        if own:  # the part's own state: only a trust list in it is the integrator's
            where = os.path.join(where, TRUST_FOLDER)
        if where in found or not os.path.exists(where):
            continue
        stamp = _stamp(where)
        if stamp != ():  # an empty folder, as a part makes at its start, is none
            found[where] = stamp
    return tuple(sorted(found.items()))


def _stamp(path: str) -> object:
    try:
        if not os.path.isdir(path):
            info = os.stat(path)
            return (info.st_size, info.st_mtime_ns)
        listing = []
        for root, _dirs, files in os.walk(path):
            for file in files:
                full = os.path.join(root, file)
                try:
                    info = os.stat(full)
                except OSError:
                    continue
                listing.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
                if len(listing) > MAX_FOLDER_FILES:
                    return ("too many files", os.stat(path).st_mtime_ns, len(listing))
        return tuple(sorted(listing))
    except OSError as exc:  # gone or unreadable since it was found: a change if it was not
        return ("unreadable", type(exc).__name__)


def _texts(value: Any, own: bool = False) -> Iterator[tuple[str, bool]]:
    """Every text value in a config model, dataclass, mapping or sequence, and whether it is
    a `Strict.state_paths` field (the part's own state)."""
    if isinstance(value, str):
        yield value, own
    elif isinstance(value, Path):
        yield str(value), own
    elif isinstance(value, BaseModel):
        state = getattr(value, "state_paths", ())
        live = getattr(value, "live_paths", ())
        for key in type(value).model_fields:
            if key not in live:
                yield from _texts(getattr(value, key), key in state)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _texts(getattr(value, f.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item, own)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _texts(item, own)
