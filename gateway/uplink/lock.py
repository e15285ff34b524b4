"""One process per outbox file: an advisory lock beside it, taken when the outbox opens.

Two gateways on one outbox would each replay and send the other's rows, and under
``drop_oldest`` delete rows the other has not delivered. A second opener gets `OutboxInUse`
with the holder's pid at once; the MQTT adapter opens its outbox while the gateway starts, so a
second gateway on the same state stops with that one line and the first runs on. The kernel
drops the lock when its owner exits, even on SIGKILL, so a restart after a crash is not blocked.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


OUTBOX_HINT = "give each gateway its own state folder ($PROTOCOL_BRAIN_STATE_DIR) or outbox path"


class OutboxInUse(RuntimeError):
    """The outbox file is held by another process (or another open outbox in this one)."""

    def __init__(self, message: str, holder: str = "unknown") -> None:
        super().__init__(message)
        self.holder = holder  # the pid written by the process that holds the lock


class FileLock:
    """An exclusive ``flock`` on ``<path>.lock`` holding the owner's pid, or an error at once."""

    def __init__(self, path: Path, *, hint: str = OUTBOX_HINT) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a full or read-only disk: the outbox reports those itself
            log.warning("%s: cannot create the lock file (%s); not locked", self.path, exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutboxInUse(
                f"{path}: in use by another gateway process (pid {holder}); {hint}", holder
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for the message; the lock is what counts
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
