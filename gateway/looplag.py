"""Event-loop stalls: notice when something blocks the loop, and name the code that did.

One blocking call on the loop (``time.sleep`` in an adapter, a serial or SDK call without
``asyncio.to_thread``) stops every device, the bridges, the shadow and the status line at once,
and asyncio itself says nothing. `LoopMonitor` makes that visible at a cost a Raspberry-class
box does not notice (no asyncio debug mode):

- a heartbeat task on the loop wakes every ``interval`` (0.1 s) and records how late it woke
  (the lag, which is what every timer and socket on the loop waited too);
- a daemon thread checks the heartbeat every ``check`` seconds; once it is later than
  ``threshold``, the loop is stuck (in one callback, or busy), and the thread samples the loop
  thread's stack (`sys._current_frames`) to find the innermost frame that is neither the standard
  library nor the loop driving code: the plugin's file, line and function.

The heartbeat logs one warning when a stall ends, with its length; a stall still going after
``long_stall`` seconds is logged by the thread then (the loop may never come back, and systemd's
watchdog kills it in 30 s) whatever the throttle, and its end is one more line. Shorter
repeats at one place are throttled to one line a minute, with a count of those left out.

The thread only observes: it never pings systemd's watchdog (sdnotify pings from a loop task on
purpose, so that a blocked loop is killed).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import sys
import sysconfig
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import gateway

__all__ = ["LoopMonitor", "Stall", "blocking_code", "start_loop_monitor"]

log = logging.getLogger(__name__)

ADVICE = "a blocking call on the event loop stops every device; run it with asyncio.to_thread"

_STDLIB = tuple(
    {
        os.path.normcase(os.path.realpath(sysconfig.get_paths()[key])) + os.sep
        for key in ("stdlib", "platstdlib")
    }
)
_GATEWAY = os.path.normcase(os.path.realpath(os.path.dirname(gateway.__file__))) + os.sep
# gateway frames that only start the loop or watch it: never what blocked it
_DRIVERS = frozenset({"cli.py", "__main__.py", "looplag.py"})


@functools.lru_cache(maxsize=1024)
def _kind(filename: str) -> str:
    """'stdlib', 'driver' (the gateway's own loop starting code), 'gateway' or 'other'."""
    if filename.startswith("<"):  # <frozen ...>, <string>
        return "stdlib"
    path = os.path.normcase(os.path.realpath(filename))
    if path.startswith(_GATEWAY):
        return "driver" if path[len(_GATEWAY) :] in _DRIVERS else "gateway"
    parts = path.split(os.sep)
    if path.startswith(_STDLIB) and "site-packages" not in parts and "dist-packages" not in parts:
        return "stdlib"
    return "other"


@functools.lru_cache(maxsize=1024)
def _short(filename: str) -> str:
    """``filename`` relative to the sys.path entry it was imported from (``pkg/mod.py``)."""
    path = os.path.realpath(filename)
    best = ""
    for entry in sys.path:
        root = os.path.realpath(entry or os.curdir) + os.sep
        if path.startswith(root) and len(root) > len(best):
            best = root
    if best:
        return path[len(best) :]
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


@dataclass(frozen=True)
class _Frame:
    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        import linecache

        text = linecache.getline(self.filename, self.lineno).strip()
        where = f"{_short(self.filename)}:{self.lineno} {self.function}()"
        return f"{where}: {text}" if text else where


def _loop_frames(frame: types.FrameType | None) -> list[_Frame]:
    """The frames of one loop callback, innermost first: those inside the innermost
    ``BaseEventLoop._run_once`` (all of them on a loop without one)."""
    out: list[_Frame] = []
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_run_once" and _kind(code.co_filename) == "stdlib":
            break
        out.append(_Frame(code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return out


def blocking_code(frame: types.FrameType | None) -> str | None:
    """Name the code that a thread stuck at ``frame`` (its innermost frame) is running:
    ``pkg/mod.py:42 run(): time.sleep(5)``, the innermost frame that is neither the standard
    library nor the gateway's loop-starting code, with ``(called from ...)`` naming the
    outermost frame outside the gateway package when that is another file (the plugin whose
    ``run()`` called a blocking library). None when no such frame is on the stack."""
    frames = [f for f in _loop_frames(frame) if _kind(f.filename) in ("gateway", "other")]
    if not frames:
        return None
    inner = frames[0]
    entry = next((f for f in reversed(frames) if _kind(f.filename) == "other"), None)
    if entry is None or entry.filename == inner.filename:
        return str(inner)
    return f"{inner} (called from {_short(entry.filename)}:{entry.lineno} {entry.function}())"


@dataclass
class Stall:
    """One time the loop was stuck for longer than the threshold."""

    started: float  # time.monotonic() the loop was last seen running before it
    where: list[str | None] = field(default_factory=list)  # distinct places it was sampled in
    length: float | None = None  # seconds, once it ended
    said: bool = False  # its place was logged while it went on

    def place(self) -> str | None:
        """Where it blocked; for a loop that was seen in several places (busy, not blocked
        by one call) they are all named."""
        seen = [w for w in self.where if w is not None]
        if not seen:
            return None
        if len(seen) == 1:
            return seen[0]
        return "several places in turn (busy, no single call): " + "; ".join(seen)

    def describe(self) -> str:
        place = self.place()
        if place is not None:
            return place
        if not self.where:  # ended between two looks of the thread
            return "code that was not sampled (the stall ended before the monitor looked)"
        return "no code outside the standard library on the loop's stack (or an overloaded box)"


class LoopMonitor:
    """Watches the running loop for stalls; `start` on the loop, `stop` before it closes."""

    def __init__(
        self,
        threshold: float = 1.0,
        *,
        interval: float = 0.1,
        check: float = 0.25,
        long_stall: float = 5.0,
        throttle: float = 60.0,
        report: bool = True,
        keep: int = 20,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.threshold = threshold
        self.interval = interval
        self.check = check
        self.long_stall = long_stall
        self.throttle = throttle
        self.report = report  # False: record stalls (`stalls`) without logging (a test kit)
        # When stalls count: `gateway run` starts and stops adapters, loads models and builds
        # address spaces in the loop by design; only a running gateway's stalls are news.
        self.active = active or (lambda: True)
        self.stalls: list[Stall] = []  # the last `keep`
        self.stall_count = 0  # all of them
        # the lags of an active loop's last minute of heartbeats (seconds), for the status
        self._lags: collections.deque[float] = collections.deque(
            maxlen=max(1, round(60 / interval))
        )
        self._keep = keep
        self._beat = time.monotonic()
        self._current: Stall | None = None
        self._armed = False  # active() when the heartbeat's current wait began
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        # per place: (monotonic of its last line, stalls left out since, their seconds)
        self._said: dict[str | None, tuple[float, int, float]] = {}
        self._said_lock = threading.Lock()

    @property
    def worst(self) -> Stall | None:
        """The longest stall that ended."""
        ended = [s for s in self.stalls if s.length is not None]
        return max(ended, key=lambda s: s.length or 0.0, default=None)

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = asyncio.create_task(self._heartbeat(), name="loop-lag-monitor")
        self._thread = threading.Thread(target=self._watch, name="loop-lag-monitor", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        if self.report:
            for place, (_, left_out, seconds) in self._said.items():
                if left_out:
                    log.warning(
                        "event loop blocked %d more time(s) for %.1f s in all in %s "
                        "since the last line about it",
                        left_out,
                        seconds,
                        place or "code that could not be named",
                    )
            self._said.clear()

    async def _heartbeat(self) -> None:
        while True:
            due = time.monotonic() + self.interval
            # Active at both ends of the wait: a stretch that ends by starting the gateway
            # (gc.collect, then started.set()) is start-up, not a stall of a running gateway.
            with self._lock:
                self._armed = self.active()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            with self._lock:
                self._beat = now
                lag = now - due
                stall, self._current = self._current, None
                if not (self._armed and self.active()):
                    stall = None
                else:
                    self._lags.append(max(lag, 0.0))
                    if stall is None and lag > self.threshold:
                        stall = self._record(Stall(due))  # too short for the thread to catch
                if stall is not None:
                    stall.length = lag
            if stall is not None and self.report and lag > self.threshold:
                self._log_end(stall)

    def figures(self) -> dict[str, float | int]:
        """How late the loop ran in the last minute (ms: median, 99th percentile, most) and
        how many stalls over the threshold there were since the start (the status file)."""
        with self._lock:
            lags = sorted(self._lags)
        if not lags:
            return {"stalls": self.stall_count}
        return {
            "lag_ms_p50": round(lags[len(lags) // 2] * 1000, 1),
            "lag_ms_p99": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000, 1),
            "lag_ms_max": round(lags[-1] * 1000, 1),
            "stalls": self.stall_count,
        }

    def _record(self, stall: Stall) -> Stall:
        self.stall_count += 1
        self.stalls.append(stall)
        del self.stalls[: -self._keep]
        return stall

    def _watch(self) -> None:
        """The thread: sample the loop's stack while the heartbeat is late."""
        while not self._stop.wait(self.check):
            now = time.monotonic()
            with self._lock:
                late = now - self._beat - self.interval
                if late <= self.threshold or not (self._armed and self.active()):
                    continue
                frame = sys._current_frames().get(self._loop_thread)
                place = blocking_code(frame)
                del frame
                stall = self._current
                if stall is None:
                    stall = self._current = self._record(Stall(self._beat + self.interval))
                if place not in stall.where and len(stall.where) < 3:
                    stall.where.append(place)
                say_now = self.report and late >= self.long_stall
                if say_now and stall.said:
                    continue
                if say_now:
                    stall.said = True  # under the lock: the heartbeat's end line knows it
            if say_now:
                # The loop may never come back (systemd's watchdog kills it then): where it is
                # stuck is said now, whatever the minute's throttle held back.
                log.warning(
                    "event loop blocked for %.1f s so far in %s: %s", late, stall.describe(), ADVICE
                )

    def _may_say(self, place: str | None, seconds: float) -> bool:
        """One line a minute per place; the rest are counted for the next line."""
        now = time.monotonic()
        with self._said_lock:  # the heartbeat and the thread both log
            last, left_out, total = self._said.get(place, (-self.throttle, 0, 0.0))
            if now - last < self.throttle:
                self._said[place] = (last, left_out + 1, total + seconds)
                return False
            self._said[place] = (now, 0, 0.0)
        if left_out:
            log.warning(
                "event loop blocked %d more time(s) for %.1f s in all in %s in the last %.0f s",
                left_out,
                total,
                place or "code that could not be named",
                now - last,
            )
        return True

    def _log_end(self, stall: Stall) -> None:
        length = stall.length or 0.0
        if stall.said:
            log.warning("event loop ran again after %.1f s blocked", length)
        elif self._may_say(stall.place(), length):
            log.warning("event loop blocked for %.1f s in %s: %s", length, stall.describe(), ADVICE)


def start_loop_monitor(
    threshold: float = 1.0, active: Callable[[], bool] | None = None
) -> LoopMonitor:
    """A `LoopMonitor` on the running loop that logs stalls longer than ``threshold`` (while
    ``active()``, if given)."""
    monitor = LoopMonitor(threshold, active=active)
    monitor.start()
    return monitor
