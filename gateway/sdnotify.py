"""systemd's notify protocol (``man sd_notify``) without libsystemd: readiness, status and the
watchdog for ``gateway run`` under a ``Type=notify`` unit.

The protocol is one datagram per notification, ``KEY=VALUE`` lines separated by newlines, sent
to the AF_UNIX socket named by ``$NOTIFY_SOCKET``: a path, or an abstract-namespace name
written with a leading ``@`` (``@`` stands for the NUL byte). Without ``$NOTIFY_SOCKET`` (not
under systemd, or a unit of another type) every call here does nothing.

Notifying is never allowed to hurt the gateway: a send that fails (the socket gone, its queue
full) is logged once, as a warning, and then only at debug level; nothing raises. The socket is
non-blocking, so a stuck receiver cannot hold up the event loop either.

The watchdog (``WatchdogSec=`` in the unit: systemd sets ``$WATCHDOG_USEC``) is a task on the
gateway's own event loop, pinging at half the interval. That is the point of it: a thread
would go on pinging while the loop is blocked (a blocking call in a plugin, a deadlock) and
the gateway moves no data; a task stops pinging exactly then, and systemd restarts the
service. It says the loop turns, not that every device is reachable: a dead device is the
adapters' business (they retry), and it shows in ``STATUS=``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


class Notifier:
    """Sends notifications to ``address`` (``$NOTIFY_SOCKET``'s form); ``None``: does nothing.

    ``watchdog_usec`` is the watchdog interval systemd asked for, or ``None`` if there is none
    for this process (see :meth:`from_environ`).
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if self.address is not None else None
        self._target: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        self._reloading = False
        self.sent = 0
        self.failed = 0
        if self.address is not None:
            if self.address.startswith("@"):
                # Abstract namespace: a leading NUL instead of '@', no NUL at the end.
                self._target = b"\0" + self.address[1:].encode()
            elif self.address.startswith("/"):
                self._target = self.address
            else:  # systemd's vsock: form and relative paths: not a socket we can reach
                self._warn(f"${NOTIFY_ENV}={self.address!r} is not an AF_UNIX path or @name")

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd set up for this process: ``$NOTIFY_SOCKET``, and the watchdog
        when ``$WATCHDOG_USEC`` is a positive number and ``$WATCHDOG_PID`` is unset or ours
        (a process started by the service's main process inherits the variables, not the
        watchdog)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw = env.get(WATCHDOG_USEC_ENV)
        if raw:
            owner = env.get(WATCHDOG_PID_ENV)
            mine = str(os.getpid() if pid is None else pid)
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring $%s=%r: not a number", WATCHDOG_USEC_ENV, raw)
            if usec is not None and (usec <= 0 or (owner and owner.strip() != mine)):
                usec = None
        return cls(env.get(NOTIFY_ENV), watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects a ``WATCHDOG=1``, or None."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 1e6

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram (``notify(READY=1, STATUS="...")``); True if
        sent. Newlines in values become spaces: each field is one line."""
        if self._target is None:
            return False
        text = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ').replace(chr(13), ' ')}"
            for key, value in fields.items()
        )
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(text.encode("utf-8", "replace"), self._target)
        except OSError as exc:
            self.failed += 1
            self._warn(f"could not notify the service manager at {self.address}: {exc}")
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        self._reloading = False
        return self.notify(READY=1, **({"STATUS": status} if status is not None else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        if self._reloading:  # the run that ends is replaced: the service is not stopping
            return self.status(status) if status is not None else False
        return self.notify(STOPPING=1, **({"STATUS": status} if status is not None else {}))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 until the next `ready`; MONOTONIC_USEC as Type=notify-reload wants."""
        self._reloading = True
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields: dict[str, str | int] = {"RELOADING": 1, "MONOTONIC_USEC": usec}
        return self.notify(**fields, **({"STATUS": status} if status is not None else {}))

    def cancel_reload(self) -> None:
        """A stop for good came during a reload: `stopping` says STOPPING=1 again."""
        self._reloading = False

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _warn(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s (said once; the gateway runs on without notifying)", text)
        else:
            log.debug("%s", text)


async def ping_watchdog(notifier: Notifier, interval: float | None = None) -> None:
    """Send ``WATCHDOG=1`` now and then every half ``interval`` (default: the notifier's
    watchdog interval) until cancelled. Run it as a task on the loop it vouches for."""
    seconds = notifier.watchdog_interval if interval is None else interval
    if seconds is None or not notifier.enabled:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(seconds / 2)


def start_watchdog(notifier: Notifier) -> asyncio.Task[None] | None:
    """A task on the running loop that pings the watchdog, or None without one."""
    if notifier.watchdog_interval is None or not notifier.enabled:
        return None
    log.debug("systemd watchdog: a ping every %.3f s", notifier.watchdog_interval / 2)
    return asyncio.create_task(ping_watchdog(notifier), name="systemd-watchdog")
