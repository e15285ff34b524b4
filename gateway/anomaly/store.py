"""Calibrations that outlive the process, so a restart does not learn normal again from whatever
a device does at that moment.

Without this file every restart (a reboot, an update, a config edit) calibrated each device
again on its first messages: a pump that was faulty then was learned as normal and never
alarmed, an alarm that was active was forgotten (no clear ever followed it), and a named
``calibration_period``, which lies in the past after a restart, was replaced by the first rows
after it. Each bridge keeps one JSON file in the state folder (``{state}/anomaly/<bridge>.json``),
written whole (temporary file, fsync, rename) when a device is calibrated, when its alarm rises
or clears, now and then while the level refresh moves its level, and when the bridge stops.

A record is used only if it was made with the same model bytes, window and calibration options,
and for the same points; otherwise the device calibrates again and the log says why. A file
that cannot be read is set aside (``.bad``, or ``.bad.1`` and on if taken) and logged; one that
cannot be written (a full disk) is logged, and scoring goes on from memory. One process per file
(an advisory lock, as for the outbox): a second gateway on the same state folder scores without
keeping calibrations.

Files are named by bridge, so a bridge renamed in the config finds nothing under its new name
and its devices calibrate again. The stage cannot tell a rename from a new bridge, so it says
what it sees: no file of its own, and files of bridges the gateway does not run (`orphaned`),
with their devices; `gateway anomaly status` lists them and `gateway anomaly carry` moves one
to the new name (`carry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.anomaly.core import Calibration
from gateway.config.anomaly import AnomalyOptions
from gateway.paths import state_dir
from gateway.storefiles import set_aside_said
from gateway.streak import FailureStreak
from gateway.uplink.lock import FileLock, OutboxInUse

log = logging.getLogger(__name__)

FORMAT = 1
FOLDER = "anomaly"
HINT = "give each gateway its own state folder ($PROTOCOL_BRAIN_STATE_DIR)"


def file_name(bridge: str) -> str:
    """The name of ``bridge``'s calibration file (any bridge name gives a plain file name)."""
    return (re.sub(r"[^A-Za-z0-9._-]", "_", bridge) or "_") + ".json"


def store_path(bridge: str) -> Path:
    """Where ``bridge`` keeps its calibrations."""
    return Path(state_dir()) / FOLDER / file_name(bridge)


def orphaned(folder: Path, bridges: Iterable[str]) -> dict[str, Path]:
    """The calibration files in ``folder`` that belong to none of ``bridges``, by the bridge
    name they were kept under: a renamed or removed bridge's, which nothing reads any more."""
    own = {file_name(b) for b in bridges}
    try:
        files = sorted(folder.glob("*.json"))
    except OSError:
        return {}
    return {p.name.removesuffix(".json"): p for p in files if p.name not in own and p.is_file()}


def devices_in(path: Path) -> str:
    """The devices a file keeps, for a message ("pump, tank"; why not, if unreadable)."""
    try:
        return ", ".join(sorted(read_records(path))) or "no device"
    except ValueError as exc:
        return f"unreadable: {exc}"


def fingerprint(model_bytes: bytes, window: int, options: AnomalyOptions) -> dict[str, Any]:
    """What a calibration depends on besides the readings: a record made under another
    fingerprint is not used. Alarm options (clear_ratio, hold) and refresh are not part of it:
    they act after calibration."""
    period = options.calibration_period
    return {
        "format": FORMAT,
        "model": hashlib.sha256(model_bytes).hexdigest()[:16],
        "window": window,
        "smooth": options.smooth,
        "calibration": options.calibration if period is None else None,
        "calibration_period": None if period is None else [p.isoformat() for p in period],
    }


@dataclass
class Record:
    """One device's calibration and what it learned since."""

    fingerprint: dict[str, Any]
    points: list[str]
    cal: Calibration
    rows: int  # readings the calibration was learned on
    calibrated_at: float  # unix time
    normal: float  # high quantile of its smoothed scores: threshold = normal x margin
    level: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None  # refresh
    alarm: bool = False  # active when written

    def mismatch(self, expected: dict[str, Any], points: list[str]) -> str | None:
        """Why this record cannot serve a device now (None: it can)."""
        changed = [k for k in expected if self.fingerprint.get(k) != expected[k]]
        if changed:
            return f"{', '.join(changed)} changed since it was calibrated"
        if set(points) != set(self.points):
            added = sorted(set(points) - set(self.points))
            gone = sorted(set(self.points) - set(points))
            parts = [f"new: {', '.join(added)}" if added else "", f"gone: {', '.join(gone)}"]
            return "its points changed (" + "; ".join(p for p in parts if p.strip(": ")) + ")"
        return None

    def ordered(self, points: list[str]) -> Record:
        """The same record with its per-point arrays in the order of ``points``."""
        if points == self.points:
            return self
        idx = [self.points.index(p) for p in points]
        per_point = {k: getattr(self.cal, k)[idx] for k in (*_ARRAYS, "slow")}
        level = None if self.level is None else (self.level[0][idx], self.level[1][idx])
        return replace(self, points=list(points), cal=replace(self.cal, **per_point), level=level)


_ARRAYS = ("mean", "scale", "slow_mean", "slow_scale", "error_scale")


def _floats(values: Any, n: int, what: str) -> npt.NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    if x.shape != (n,) or not np.isfinite(x).all():
        raise ValueError(f"{what}: expected {n} finite numbers")
    return x


def to_json(r: Record) -> dict[str, Any]:
    c = r.cal
    out: dict[str, Any] = {
        "fingerprint": r.fingerprint,
        "points": r.points,
        "rows": r.rows,
        "calibrated_at": r.calibrated_at,
        "normal": r.normal,
        "alarm": r.alarm,
        **{k: getattr(c, k).tolist() for k in _ARRAYS},
        "slow": c.slow.tolist(),
        "threshold": c.threshold,
        "smooth": c.smooth,
        "recent": list(c.recent),
    }
    if r.level is not None:
        out["level"] = {"mean": r.level[0].tolist(), "scale": r.level[1].tolist()}
    return out


def from_json(d: Any) -> Record:
    """A record from its JSON form; ValueError (or TypeError/KeyError) if it is not one."""
    points = d["points"]
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        raise ValueError("points: expected a list of names")
    n = len(points)
    arrays = {k: _floats(d[k], n, k) for k in _ARRAYS}
    slow = np.asarray(d["slow"], dtype=bool)
    threshold, normal = float(d["threshold"]), float(d["normal"])
    if slow.shape != (n,) or math.isnan(threshold) or not math.isfinite(normal):
        raise ValueError("slow/threshold/normal: malformed")
    cal = Calibration(
        arrays["mean"],
        arrays["scale"],
        slow,
        arrays["slow_mean"],
        arrays["slow_scale"],
        arrays["error_scale"],
        threshold,
        int(d["smooth"]),
        tuple(float(v) for v in d["recent"]),
    )
    level = None
    if d.get("level") is not None:
        level = (_floats(d["level"]["mean"], n, "level"), _floats(d["level"]["scale"], n, "level"))
    if not isinstance(d["fingerprint"], dict):
        raise ValueError("fingerprint: expected a mapping")
    return Record(
        d["fingerprint"],
        points,
        cal,
        int(d["rows"]),
        float(d["calibrated_at"]),
        normal,
        level,
        bool(d["alarm"]),
    )


def read_records(path: Path) -> dict[str, Record]:
    """The records of one file (for ``gateway anomaly status``); ValueError if unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a calibration file of format {FORMAT}")
        return {str(name): from_json(rec) for name, rec in doc["devices"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed record ({type(exc).__name__}: {exc})") from None


def _records_of(path: Path) -> dict[str, Record]:
    try:
        return read_records(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class CalibrationStore:
    """One bridge's file: opened (locked, read) once, written whole on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: FileLock | None = None
        self._writes = FailureStreak(log, f"anomaly calibrations {path}")
        self.usable = True
        self.saves = 0

    def open(self) -> dict[str, Record]:
        """Take the file and return its records; {} when there is none or it is unusable."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(self.path, hint=HINT)
        except OutboxInUse as exc:
            self.usable = False
            log.warning("%s; calibrations are not kept by this process", exc)
            return {}
        except OSError as exc:
            log.warning("%s: cannot create its folder (%s); calibrations not kept", self.path, exc)
            self.usable = False
            return {}
        if not self.path.exists():
            return {}
        try:
            return read_records(self.path)
        except ValueError as exc:
            where = set_aside_said(self.path)
            log.warning(
                "%s: cannot read the stored calibrations (%s), %s; devices calibrate again",
                self.path,
                exc,
                where,
            )
            return {}

    def save(self, records: dict[str, Record]) -> bool:
        """Write all records; False (logged once per failure streak) if the disk refuses."""
        if not self.usable:
            return False
        doc = {
            "format": FORMAT,
            "written": time.time(),
            "devices": {n: to_json(r) for n, r in records.items()},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            self._writes.failed(f"cannot write ({exc.strerror or exc}); scoring goes on")
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False
        self._writes.succeeded()
        self.saves += 1
        return True

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def forget(path: Path, devices: list[str] | None) -> list[str]:
    """Remove the records of ``devices`` (all if None) from a file no process holds; the names
    removed. OutboxInUse if a running gateway holds the file."""
    if not path.exists():
        return []
    lock = FileLock(path, hint=HINT)
    try:
        records = read_records(path)
        gone = [n for n in records if devices is None or n in devices]
        if gone:
            keep = {n: r for n, r in records.items() if n not in gone}
            store = CalibrationStore(path)
            if not store.save(keep):
                raise OSError(f"{path}: cannot write")
        return gone
    finally:
        lock.release()


def carry(source: Path, target: Path) -> tuple[list[str], list[str]]:
    """Move the records of ``source`` (a renamed bridge's file) into ``target`` and remove
    ``source``: (the devices carried, those of them that replaced a record of ``target``).
    OutboxInUse if a running gateway holds either file; ValueError if one cannot be read."""
    if not source.is_file():
        raise ValueError(f"{source}: no such file")
    source_lock = FileLock(source, hint=HINT)
    try:
        target_lock = FileLock(target, hint=HINT)
        try:
            records, kept = (
                _records_of(path) if path.exists() else {} for path in (source, target)
            )
            if not CalibrationStore(target).save({**kept, **records}):
                raise OSError(f"{target}: cannot write")
            source.unlink()
        finally:
            target_lock.release()
    finally:
        source_lock.release()
    source_lock.path.unlink(missing_ok=True)
    return sorted(records), sorted(set(records) & set(kept))
