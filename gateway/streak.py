"""A run of the same failure, logged at its start and its end instead of once per attempt.

Some failures repeat on every message until something outside changes (a full disk under the
shadow store, a bridge target that rejects everything): a traceback per message would flood the
log, and on a full disk fill it further. A `FailureStreak` logs the first failure of a run (with
its traceback unless the caller says the message is enough) and, after a run of more than one,
logs once when an attempt succeeds again.
"""

from __future__ import annotations

import asyncio
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


class LogQuota:
    """Lines of one kind under a flood (a scanner's connections, a burst of refused
    certificates, dropped requests): the first ``quota`` of a window of ``interval`` seconds are
    logged, the rest counted, and ``say_dropped(count)`` writes one line for them when the window
    ends. The reader gets examples and a count instead of a line per event; the owner's counters
    keep every one.

    A window opens at the first line; it ends on a loop timer, so the count comes out even if
    nothing follows (called outside a running loop, at the next line instead). A count line is
    one of the next window's ``quota``, which opens at once: a flood gets at most ``quota`` lines
    a window. `close` ends the window now (at shutdown: no count lost) and the next line opens a
    fresh one.
    """

    def __init__(
        self,
        say_dropped: Callable[[int], None],
        *,
        quota: int,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say_dropped = say_dropped
        self.quota = quota
        self.interval = interval
        self.clock = clock  # of the window's start, for when no loop timer ends it
        self.dropped = 0  # counted in this window, not said yet
        self._used = 0  # lines this window logged, its count line included
        self._start: float | None = None  # None: no window open
        self._timer: asyncio.TimerHandle | None = None

    def allow(self) -> bool:
        """Whether to log this line now; if not, it is counted."""
        if self._start is not None and self.clock() - self._start >= self.interval:
            self._end()  # no loop to end it on time, or its timer is late
        if self._start is None:
            self._open(used=0)
        if self._used < self.quota:
            self._used += 1
            return True
        self.dropped += 1
        return False

    def close(self) -> None:
        """End the window now, saying what it counted."""
        self._stop()
        self._say()

    def _open(self, used: int) -> None:
        self._start, self._used = self.clock(), used
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a sync caller): the next line ends the window
            return
        self._timer = loop.call_later(self.interval, self._end)

    def _end(self) -> None:
        self._stop()
        if self.dropped:
            self._say()
            self._open(used=1)  # the count line is this window's first

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._start = None

    def _say(self) -> None:
        count, self.dropped = self.dropped, 0
        if count:
            self.say_dropped(count)


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
