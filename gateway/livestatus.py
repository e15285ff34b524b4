"""The running gateway's status, as a file another process can read (``gateway status``).

``gateway run`` keeps ``{state}/status/{gateway}.json`` up to date: its pid, when it started, when
the file was written, the status line it logs and the status of every adapter and bridge. Written
to a temporary name and renamed, so a reader never sees half a file; no fsync, since it is
rewritten every status interval and losing the last one to a power cut costs nothing.

A reader cannot trust the file alone: a gateway killed by SIGKILL or a power cut leaves one that
says "running". So `read` checks the pid too (on this machine) and says how old the file is.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from gateway.paths import state_dir
from gateway.uplink.lock import FileLock, OutboxInUse

FOLDER = "status"
STALE_GRACE_S = 5.0  # a loaded box may write a little late
# What a reader relies on, and its type.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "written": (int, float),
    "started": (int, float),
    "pid": int,
    "state": str,
    "summary": str,
}


def status_path(gateway: str) -> Path:
    """Where the gateway named ``gateway`` keeps its status (in the current state folder)."""
    return Path(state_dir()) / FOLDER / f"{gateway}.json"


def write(path: Path, snapshot: dict[str, Any]) -> None:
    """Replace ``path`` with ``snapshot`` as JSON (values JSON cannot hold are written as text).

    Raises OSError (a full or read-only disk): the caller logs it and the gateway goes on.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Per thread: a write still running in a cancelled report's thread must not share it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(snapshot, default=str, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def snapshot(
    *,
    gateway: str,
    config: str,
    started: float,
    state: str,
    summary: str,
    status: dict[str, Any],
    interval: float,
) -> dict[str, Any]:
    """What the file holds. ``state``: ``starting``, ``running``, ``stopped`` (a clean stop)
    or ``failed`` (could not start, or ended on an error; ``summary`` says why)."""
    return {
        "gateway": gateway,
        "pid": os.getpid(),
        "config": config,
        "state": state,
        "started": started,
        "written": time.time(),
        "interval_s": interval,
        "summary": summary,
        "status": status,
    }


def lock(path: Path) -> FileLock:
    """This process's hold on the status file at ``path``: one gateway process writes it.
    Raises OutboxInUse (with the holder's pid) or OSError (a disk that refuses the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, hint="gateway status shows that one")


def record_refused(path: Path, *, gateway: str, config: str, reason: str) -> None:
    """A run refused before it could start (a plugin or a model that cannot load): the file
    says ``failed`` and why, instead of what an earlier run left there. Not when a running
    gateway of the same name holds the file, and silently when the disk refuses it (the
    refusal itself is on stderr)."""
    try:
        held = lock(path)
    except (OutboxInUse, OSError):
        return
    try:
        snap = snapshot(
            gateway=gateway,
            config=config,
            started=time.time(),
            state="failed",
            summary=reason,
            status={},
            interval=0.0,
        )
        write(path, snap)
    except OSError:
        pass
    finally:
        held.release()


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists here (another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(path: Path, now: float | None = None) -> dict[str, Any] | None:
    """The file's snapshot with ``age_s`` and a ``state`` the reader can trust, or None if the
    file does not exist.

    ``state``: ``starting``; ``running``; ``stopped`` (a clean shutdown wrote it); ``failed``;
    ``gone`` (the file says starting or running but no process has its pid: killed, crashed,
    or the machine restarted). ``stale``
    is true when a running gateway has not rewritten the file for over two intervals: its event
    loop is stuck, or the disk refuses the file. A file that is not a snapshot raises ValueError.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a status file ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), kind) for key, kind in _FIELDS.items()
    ):
        raise ValueError(f"{path}: not a status file")
    data["age_s"] = max(0.0, (time.time() if now is None else now) - data["written"])
    pid = data.get("pid")
    if data["state"] in ("starting", "running") and not (isinstance(pid, int) and pid_alive(pid)):
        data["state"] = "gone"
    interval = data.get("interval_s")
    data["stale"] = (
        data["state"] == "running"
        and isinstance(interval, int | float)
        and interval > 0
        and data["age_s"] > 2 * interval + STALE_GRACE_S
    )
    return data
