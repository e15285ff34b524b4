"""What the state files (outbox, shadow, anomaly calibrations) share about the disk they live on.

Free space
----------
The MQTT outbox holds accepted data, so it has the first claim on a filling disk: it keeps a
spare file of `OUTBOX_RESERVE` bytes that it gives back when the disk is full, and the shadow
stops writing before the free space comes down to that room (see `gateway.shadow.store`). Every
floor here has the same hysteresis: below ``floor`` it is low, and it is high again only at
``floor`` plus an eighth (`resume_level`), so that a disk that hovers at the floor does not flip
the store on and off on every look.

Bad files
---------
A store that finds a file it cannot read does not delete it: `set_aside` renames it to
``NAME.bad`` (``NAME.bad.1``, ``NAME.bad.2``, ... when that is taken: an earlier bad file is
never overwritten), its SQLite companions (``-wal``, ``-shm``) along with it, so that the file
can still be looked at, and the store starts again with a new one.

Files written whole
-------------------
`write_atomic` writes a small file (a key, a certificate, OSCORE settings) in full or not at
all, with the mode asked for whatever file was there before: a new file in the same folder,
created with that mode (never a wider one in between), synced, then renamed over the old one.
Rewriting an existing file in place would keep its mode: a copied or restored 0644 file would
stay world-readable with a secret in it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = [
    "OUTBOX_RESERVE",
    "Floor",
    "free_bytes",
    "free_name",
    "resume_level",
    "set_aside",
    "wal_kept",
    "write_atomic",
]

OUTBOX_RESERVE = 2 << 20  # the outbox's spare file, given back when the disk fills
SQLITE_COMPANIONS = ("-wal", "-shm")


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged writer can still use on the filesystem of ``path`` (a folder);
    None if it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def resume_level(floor: int) -> int:
    """Where a store paused below ``floor`` starts again: an eighth above it."""
    return floor + floor // 8


class Floor:
    """Low below ``floor`` bytes free, high again at `resume_level` (hysteresis)."""

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.low = False

    @property
    def resume(self) -> int:
        return resume_level(self.floor)

    def update(self, free: int) -> bool:
        """Feed a look at the free space; True if that changed `low`."""
        if self.floor <= 0:
            return False
        if not self.low and free < self.floor:
            self.low = True
            return True
        if self.low and free >= self.resume:
            self.low = False
            return True
        return False


def free_name(path: Path, suffix: str, companions: Sequence[str] = ()) -> Path:
    """``path`` + ``suffix``, or + ``suffix.N`` for the first N with no such file (nor any of
    ``companions`` appended to it)."""
    n = 0
    while True:
        name = path.name + suffix + (f".{n}" if n else "")
        candidate = path.with_name(name)
        taken = [candidate] + [candidate.with_name(name + c) for c in companions]
        if not any(os.path.lexists(p) for p in taken):
            return candidate
        n += 1


@contextmanager
def wal_kept(path: Path) -> Iterator[None]:
    """Around opening the SQLite file ``path``: if the open fails, its log (``-wal``) is still
    there afterwards. (SQLite deletes the log when the last connection to the file closes,
    even one that found the file unreadable: the log may hold the newest data.)"""
    wal = path.with_name(path.name + "-wal")
    try:
        keep: Path | None = free_name(wal, ".keep")
        if os.path.getsize(wal) == 0:
            keep = None
        else:
            os.link(wal, keep)  # type: ignore[arg-type]
    except OSError:  # no log, or no second name for it: nothing to keep
        keep = None
    try:
        yield
    except BaseException:
        if keep is not None and not os.path.lexists(wal):
            with suppress(OSError):
                os.replace(keep, wal)
        raise
    finally:
        if keep is not None:
            with suppress(OSError):
                os.unlink(keep)


def set_aside(path: Path, companions: Sequence[str] = ()) -> Path:
    """Rename ``path`` to a free ``NAME.bad[.N]``, and each existing ``path + companion`` to the
    new name + companion; returns the new path. OSError if the main file cannot be renamed."""
    aside = free_name(path, ".bad", companions)
    os.rename(path, aside)
    for companion in companions:
        old = path.with_name(path.name + companion)
        if os.path.lexists(old):
            os.rename(old, aside.with_name(aside.name + companion))
    return aside


def set_aside_said(path: Path) -> str:
    """`set_aside` for a log line: "moved to NAME.bad[.N]", or "left in place" when even the
    rename fails (never over an earlier bad file: that one may be the one worth a look)."""
    try:
        return f"moved to {set_aside(path)}"
    except OSError:
        return "left in place"


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``, in full or not at all, as a file of ``mode`` (less what
    the umask takes away) whatever the mode of the file it replaces (see the module docstring).
    The temporary file (``.NAME.RANDOM.tmp`` beside it) is removed if anything fails."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
