"""A run of the same failure, logged at its start and its end instead of once per attempt.

Some failures repeat on every message until something outside changes (a full disk under the
shadow store, a bridge target that rejects everything): a traceback per message would flood the
log, and on a full disk fill it further. A `FailureStreak` logs the first failure of a run (with
its traceback unless the caller says the message is enough) and, after a run of more than one,
logs once when an attempt succeeds again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class FailureStreak:
    def __init__(self, log: logging.Logger, what: str, *, level: int = logging.ERROR) -> None:
        self.log = log
        self.what = what  # who fails, as the log line starts: "shadow", "bridge up"
        self.level = level  # of the first line (a client's bad request is not our error)
        self.in_run = 0  # failures since the last success (callers keep their own totals)

    def failed(self, message: str, *, traceback: bool | BaseException = True) -> None:
        """Call from an ``except`` block (or give the exception: ``traceback=exc``);
        ``message`` says what failed and why."""
        self.in_run += 1
        if self.in_run == 1:
            self.log.log(
                self.level,
                "%s: %s (until it works again, further failures are counted, not logged)",
                self.what,
                message,
                exc_info=traceback,
            )

    def succeeded(self) -> None:
        if self.in_run > 1:  # after a lone failure the first line said all there is
            self.log.warning("%s: works again after %d failures", self.what, self.in_run)
        self.in_run = 0


class Throttle(logging.Filter):
    """For libraries that log each bad peer themselves (asyncua a traceback per broken
    connection, aiocoap a line per unparsable datagram): at most one record per message
    template and ``interval`` seconds, without its traceback, saying how many were dropped."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # The template's start: asyncio bakes object addresses into its messages.
        key = (record.name, str(record.msg)[:30])
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        text = record.getMessage()  # formatted now: what is appended may hold a '%'
        if record.exc_info is not None and record.exc_info[1] is not None:
            text = f"{text} ({record.exc_info[1]!r})"
        if dropped:
            text = f"{text} [{dropped} more like it in the last {self.interval:g} s]"
        record.msg, record.args = text, ()
        record.exc_info, record.exc_text = None, None
        return True


# Loggers of the libraries under our adapters that log per bad packet or connection.
NOISY = (
    "asyncua.server.binary_server_asyncio",
    "asyncua.server.uaprocessor",  # a line per client connection closed
    "asyncua.server.internal_session",  # lines per session: a scan of certificates, 5 each
    "asyncua.server.internal_server",
    "protocols.opcua.transport",  # a line per oversized chunk refused
    "coap-server",
    "asyncio",
)


def throttle_noisy_loggers(interval: float = 10.0) -> None:
    for name in NOISY:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Throttle) for f in logger.filters):
            logger.addFilter(Throttle(interval))
