"""The shadow at run time: device readings -> reported, desired -> device writes, MQTT topics.

Flow
----
- **Reported** follows the devices: the service subscribes to ``telemetry/#`` on the bus; good
  and uncertain samples set ``state.reported.<point>``, every sample sets the point's quality
  (``quality`` lists points that are not good), and each change is one history row. Readings
  never carry a version: they are applied whatever the version is.
- **Desired** changes come from MQTT (``{prefix}/{device}/shadow/update``), from
  `ShadowService.update` in-process, or from another process writing the same SQLite file
  (``gateway shadow set``), which the service notices by polling the desired revisions every
  ``poll_interval`` seconds (one small query). Each desired change is followed by a device
  write through ``router.write(device, point, value, origin="shadow")`` for every key in the
  delta, so the normal write path and all its safety rules apply (writable, range, rate).
- **Delta** clears by itself when the device reports the desired value (the delta is computed,
  never stored). A refused or failed write leaves desired and delta as they are and records the
  refusal under ``errors.<key>`` (``status`` as `WriteStatus`, ``reason``, ``value``,
  ``timestamp``); a later desired change for the key, or the device reaching the value, clears
  it. A desired key that is not a point of the device is refused the same way (unknown_point).
- Desired changes made while the gateway was not running are not written at start: a setpoint
  applied late is worse than none (see `gateway.commands`). Set it again to apply it.
- A write refused as unreachable (the device not connected yet: a persistent session's broker
  delivers its queued updates right after a restart, before the devices have connected; or
  down) is made again, once, when the device next reports a good or uncertain reading, if that
  comes within ``retry_unreachable`` seconds of the write and the key still wants that value
  (``retries`` in the status); later it stays refused, for the same reason.

Desired keys that are no points, and the cost of an update
----------------------------------------------------------
A desired key that is no point of the device is metadata (a site for topics): it is recorded
as ``unknown_point`` once per value and never written. Each write of an error loads and saves
the whole document, so one transaction per key made 60 updates of 500 new keys quadratic (a
2.3 MB document, 5 errors recorded a second, over an hour of work queued, a shutdown of 82 s).
Now an update costs a fixed number of transactions whatever its keys: the store refuses a
desired state past ``shadow.max_desired_keys`` / ``max_desired_bytes`` (413 over MQTT),
`_apply` skips the keys already recorded (or being recorded) as ``unknown_point`` with the same
value, and errors (and their clearing after a write that worked) are queued per device and
recorded by one task in one `ShadowStore.set_errors` transaction for all that queued up
meanwhile. At shutdown the writes are cancelled first (their queued store calls with them), the
readings still queued are recorded for at most `SHUTDOWN_RECORDING` seconds, and the errors
still queued in one transaction per device; desired state is in the file once accepted, so
nothing of it waits for shutdown.

MQTT (AWS IoT layout)
---------------------
With ``shadow.mqtt`` the config loader adds the subscriptions ``{prefix}/+/shadow/get`` and
``{prefix}/+/shadow/update`` (payload text) to the named MQTT endpoint; the adapter turns them into
bus messages ``mqtt/{endpoint}/{topic}``, which this service reads. Answers go out on
``.../get/accepted`` / ``.../get/rejected`` (404 when no shadow exists), ``.../update/accepted`` /
``.../update/rejected`` (400 bad request, 409 version conflict, 413 too large) and
``.../update/delta`` (after an accepted update whose delta is not empty). Reported state is the
device's to set, so an update with ``state.reported`` is rejected with 400.

With ``shadow.mqtt.max_age`` an update is checked for lateness first (`gateway.shadow.freshness`):
one whose ``timestamp`` is older than that, or ahead of the clock by more than ``max_skew``, or
(``require_timestamp``) without one is rejected with 400. A late update is not a client's error
but an outage's: after a reconnect they come in a burst, so each kind is counted and logged
through a `LogQuota` (a few examples and a count a minute), not the bad-request streak.

Requests wait in a bus subscription of their own (`REQUEST_QUEUE`). A persistent session's
broker delivers all it queued at once after a restart, and thousands of desired updates must
not lose any: the service asks the endpoint to stop reading from the broker while the queue
is half full (`hold_reading`, `protocols.mqtt.link`), so the backlog waits at the broker
instead. Should requests be dropped all the same (an endpoint without that hold), they are
counted (``requests_dropped``) and logged.

SQLite is blocking: every store call runs on one dedicated thread (the connection stays in
that thread's hands), never on the event loop.

Keeping up
----------
Readings wait in the bus subscription (`TELEMETRY_QUEUE` messages, drop-oldest). Each time the
service wakes up it takes every reading queued (up to `MAX_BATCH`) and the store records them
in one transaction (`ShadowStore.report_many`: one commit and one sync instead of one per
message, and the pages they share written once), so a backlog is worked off faster than it
builds. If the store still cannot keep up, the queue drops its oldest readings: the log says so
once when drops start (how many, and why) and once when the queue has room again, and the status
counts them (``dropped``), so that a shadow falling behind is never silent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from gateway.bus import Bus, Subscription
from gateway.commands import CommandRouter, WriteStatus
from gateway.config.model import ShadowSection
from gateway.payloads import load_json
from gateway.shadow import shadow_topic
from gateway.shadow.freshness import Refusal, check_age, guard_warnings
from gateway.shadow.store import (
    HistoryRow,
    ShadowDocument,
    ShadowError,
    ShadowLimitError,
    ShadowStore,
    VersionConflict,
)
from gateway.streak import FailureStreak, LogQuota
from gateway.text import counted
from gateway.types import Message, MessageKind

log = logging.getLogger(__name__)
TELEMETRY = MessageKind.TELEMETRY

T = TypeVar("T")
Reported = tuple[str, dict[str, tuple[Any, str, float]]]  # device, point -> value, quality, ts
PRUNE_INTERVAL = 60.0
TELEMETRY_QUEUE = 10_000  # readings waiting for the store; drop-oldest beyond
MAX_BATCH = 500  # readings recorded in one transaction (the CLI waits at most that long)
# Limits on one MQTT request, in the spirit of AWS IoT's on shadow size and depth: a device's
# desired state is a few setpoints, and one 20,000-key update kept the store busy for minutes.
MAX_REQUEST_BYTES = 65_536
MAX_DESIRED_KEYS = 500
MAX_DEPTH = 6
SHUTDOWN_RECORDING = 2.0  # s the readings still queued at shutdown may take to be recorded
REQUEST_QUEUE = 1_000  # MQTT requests waiting; the endpoint stops reading at half of it
REQUEST_DROPS_LOG_S = 10.0  # requests dropped all the same: a line at most this often
LATE_LOG_QUOTA = 5  # late updates logged a minute (`LogQuota`); the rest counted
#: An error to record for a key, (value, status, reason), or None: clear the key's error.
Error = tuple[Any, str, str] | None


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


class _Publisher(Protocol):
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        reply_to: Mapping[str, Any] | None = None,
    ) -> None: ...


class ShadowService:
    """Connects a `ShadowStore` to the bus, the write path and (optionally) MQTT.

    ``async with service:`` opens the store and subscribes; ``await service.run()`` serves until
    cancelled. `state` gives bridges and transforms the last known document of a device without
    waiting (``gateway.shadow.state("pump").desired.get("speed")``).
    """

    def __init__(
        self,
        config: ShadowSection,
        bus: Bus,
        router: CommandRouter,
        adapters: Mapping[str, Any],
        *,
        telemetry: Subscription | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.router = router
        self.adapters = adapters
        points = {d for d, _ in router.points}
        self.devices = set(config.devices) if config.devices is not None else points
        self.store: ShadowStore | None = None
        self.documents: dict[str, ShadowDocument] = {}
        self._executor: ThreadPoolExecutor | None = None
        # The readings of a reload's kept sources, queued since the shadow before it stopped
        # taking them (`pass_on`): recorded first, so no reading falls between the two.
        self._feed = telemetry
        self._telemetry: Subscription | None = None
        self._requests: Subscription | None = None
        self._seen: dict[str, int] = {}
        self._writes: set[asyncio.Task[None]] = set()
        # device -> key -> error queued for the store, and those being recorded now (one
        # task per device records them all at once: `_note`, `_record_errors`)
        self._errors: dict[str, dict[str, Error]] = {}
        self._recording_errors: dict[str, dict[str, Error]] = {}
        self._error_tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        # device -> key -> (value, monotonic deadline): writes refused as unreachable, made
        # again at the device's next usable reading before the deadline (`_retry_unreached`)
        self._unreached: dict[str, dict[str, tuple[Any, float]]] = {}
        self.counters = {
            "reported": 0,
            "updates": 0,
            "rejected": 0,
            "writes": 0,
            "refused": 0,
            "retries": 0,
            "record_errors": 0,
            # the late-update guard (shadow.mqtt.max_age): updates rejected as older than it
            # or ahead of the clock, and updates without a timestamp (rejected or not)
            "stale_updates": 0,
            "future_updates": 0,
            "untimed_updates": 0,
        }
        self._recording = FailureStreak(log, "shadow")
        self._dropped_seen = 0  # the telemetry queue's drops when last looked at
        self._dropping_since = 0  # its drops when the current run of drops started
        self._dropping = False
        self._rejections = FailureStreak(log, "shadow", level=logging.INFO)
        self._late_log = LogQuota(self._say_late, quota=LATE_LOG_QUOTA, interval=60.0)
        self._request_drops_said = 0  # the request queue's drops when last logged
        self._request_drops_at = 0.0  # monotonic: not logged again before this

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> ShadowService:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shadow-store")
        history = self.config.history
        self.store = await self._call(
            partial(
                ShadowStore,
                self.config.file(),
                max_age=history.max_age,
                max_rows=history.max_rows,
                min_free=history.min_free,
                max_bytes=history.max_bytes,
                max_desired_keys=self.config.max_desired_keys,
                max_desired_bytes=self.config.max_desired_bytes,
                set_aside=True,  # a damaged file must not stop the gateway: moved aside, logged
            )
        )
        self._seen = await self._call(self.store.desired_revisions)
        self._telemetry = self._feed if self._feed is not None else _subscribe(self.bus)
        mqtt = self.config.mqtt
        if mqtt is not None:
            pattern = f"mqtt/{mqtt.endpoint}/{mqtt.prefix}/+/shadow/+"
            self._requests = self.bus.subscribe(
                pattern, maxsize=REQUEST_QUEUE, name="shadow:requests"
            )
            hold = getattr(self.adapters.get(mqtt.endpoint), "hold_reading", None)
            if callable(hold):  # a backlog waits at the broker, not dropped here
                hold(self._requests, REQUEST_QUEUE // 2)
            writable = [
                (device, point)
                for (device, point), spec in self.router.points.items()
                if device in self.devices and spec.access.writable
            ]
            broker = getattr(self.adapters.get(mqtt.endpoint), "config", None)
            warning = self.config.update_warning(writable, broker)
            if warning is not None:
                log.warning("shadow: %s", warning)
            for key, text in guard_warnings(mqtt, broker):
                log.warning("shadow.mqtt%s: %s", f".{key}" if key else "", text)
        return self

    async def __aexit__(self, *exc: object) -> None:
        # First the device writes and error recordings: cancelled, their store calls not yet
        # started go with them, so nothing below waits behind a backlog (module docstring).
        self._closing = True  # a write that outlives its cancel records nothing more (`_note`)
        for task in list(self._writes):
            task.cancel()
        if self._writes:
            await asyncio.wait(self._writes, timeout=1.0)
        if self._telemetry is not None and self.store is not None:
            try:  # what is still queued (write_delay holds up to that much) is recorded
                await self._record_left(self._telemetry)
            except Exception:  # the file closes below all the same
                log.exception("shadow: recording the last readings at shutdown failed")
        for sub in (self._telemetry, self._requests):
            if sub is not None:
                sub.close()
        self._late_log.close()  # the count of late updates not logged yet
        if self.store is not None:
            for device in list(self._errors):  # one transaction each
                try:
                    await self._call(partial(self.store.set_errors, device, self._errors[device]))
                except Exception as exc:
                    log.warning("shadow: errors of %s not recorded at shutdown: %s", device, exc)
            self._errors.clear()
            await self._call(self.store.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def replay(self, message: Message) -> None:
        """Queue a running source's latest readings (`Bus.last`) as if just published: a
        service a reload adds, with no queue handed on, would learn a source that kept running
        only at its next reading, which for an on-change source may be hours away."""
        if self._telemetry is not None:
            self._telemetry.offer(message)

    def pass_on(self) -> Subscription:
        """A reload keeps sources running: from now on their readings queue for the next
        shadow service (``telemetry=``), and this one records only what it has queued (its
        ``__aexit__``). Both happen at once, so each reading is in exactly one queue. Call it
        after cancelling `run` (a closed queue would end it), before ``__aexit__``."""
        feed = _subscribe(self.bus)
        if self._telemetry is not None:
            self._telemetry.close()
        return feed

    async def _record_left(self, queue: Subscription) -> None:
        """Record the readings queued at shutdown, for at most `SHUTDOWN_RECORDING` seconds
        (a backlog must not hold up a stop: systemd kills after its stop timeout)."""
        end = time.monotonic() + SHUTDOWN_RECORDING
        for _ in range(len(queue) // MAX_BATCH + 1):  # not what arrives meanwhile
            if time.monotonic() >= end:
                log.warning(
                    "shadow: up to %s still queued at shutdown not recorded (stopped after "
                    "%.0f s); reported state and history miss them",
                    counted(len(queue), "reading"),
                    SHUTDOWN_RECORDING,
                )
                return
            if not (batch := self._take_batch(queue.get_nowait())):
                return
            await self._record(batch)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow_telemetry())
            tg.create_task(self._poll_desired())
            tg.create_task(self._prune())
            if self._requests is not None:
                tg.create_task(self._serve_requests(self._requests))

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    def _store(self) -> ShadowStore:
        if self.store is None:
            raise RuntimeError("use 'async with ShadowService(...)' first")
        return self.store

    # -- public API -----------------------------------------------------------------------------

    def state(self, device: str) -> ShadowDocument | None:
        """The last document this service saw for ``device`` (no I/O; may lag the file)."""
        return self.documents.get(device)

    def keeps_history(self, device: str) -> bool:
        """Whether ``device``'s readings are kept in the history (it has a shadow)."""
        return device in self.devices

    async def history_page(self, device: str, point: str, **query: Any) -> list[HistoryRow]:
        """`ShadowStore.history_page`, in the store's thread (for a server's history reads)."""
        return await self._call(partial(self._store().history_page, device, point, **query))

    async def get(self, device: str) -> ShadowDocument:
        doc = await self._call(partial(self._store().get, device))
        self.documents[device] = doc
        return doc

    async def update(
        self, device: str, desired: Mapping[str, Any], version: int | None = None
    ) -> ShadowDocument:
        """Change desired state (`VersionConflict` if ``version`` is stale, `ShadowLimitError`
        past the desired state's limits); write the delta."""
        doc = await self._call(
            partial(self._store().update, device, desired=desired, version=version)
        )
        self.counters["updates"] += 1
        self.documents[device] = doc
        self._seen[device] = doc.desired_rev
        self._apply(doc)
        return doc

    # -- reported -------------------------------------------------------------------------------

    async def _follow_telemetry(self) -> None:
        queue = self._telemetry
        assert queue is not None
        delay = self.config.write_delay
        async for first in queue:
            batch = self._take_batch(first)
            self._watch_drops(queue)
            if not batch:
                continue
            await self._record(batch)
            self._watch_drops(queue)  # again: what queued up while the store was busy
            if delay > 0 and len(batch) < MAX_BATCH:  # no backlog: let readings gather
                await self._gather(queue, delay)

    @staticmethod
    async def _gather(queue: Subscription, delay: float) -> None:
        """Wait ``delay`` seconds, or less once a batch's worth is queued (the queue takes all
        telemetry, not only the shadow's devices, and drops its oldest when full)."""
        end = time.monotonic() + delay
        while True:  # the bus has no "this many queued" event; a 50 ms look is cheap
            left = end - time.monotonic()
            if left <= 0 or len(queue) >= MAX_BATCH:
                return
            await asyncio.sleep(min(left, 0.05))

    def _take_batch(self, first: Message | None) -> list[Reported]:
        """``first`` and the readings queued after it, up to `MAX_BATCH` of shadow devices."""
        queue = self._telemetry
        assert queue is not None
        batch: list[Reported] = []
        message = first
        while message is not None:
            device = message.device or message.origin
            # a device's events (an OPC UA client's alarms) are no reported state
            if device in self.devices and message.samples and message.kind is TELEMETRY:
                samples = {
                    s.point: (s.value, s.quality.value, s.source_ts or s.gateway_ts)
                    for s in message.samples
                }
                batch.append((device, samples))
            message = queue.get_nowait() if len(batch) < MAX_BATCH else None
        return batch

    async def _record(self, batch: list[Reported]) -> None:
        """One transaction for ``batch``; a failed reading is counted and logged, not raised."""
        try:
            results = await self._call(partial(self._store().report_many, batch))
        except Exception as exc:  # a lone reading's database error (or a bug)
            results = [exc] * len(batch)
        for (device, _), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self._record_failed(device, result)
                continue
            self._recording.succeeded()
            if result is not None:
                self.counters["reported"] += 1
                self.documents[device] = result
        for device, samples in batch:
            if device in self._unreached and any(q != "bad" for _, q, _ in samples.values()):
                self._retry_unreached(device)

    def _retry_unreached(self, device: str) -> None:
        """The device reads again: write what it was unreachable for, where still wanted."""
        pending = self._unreached.pop(device)
        doc = self.documents.get(device)
        now = time.monotonic()
        for key, (value, until) in pending.items():
            if doc is None or key not in doc.unreached or doc.unreached[key] != value:
                continue  # reached, or desired changed since (that change was written)
            if now > until:
                log.info(
                    "shadow: %s/%s = %r not written: %s was unreachable for longer than"
                    " retry_unreachable (%gs); set it again to apply it",
                    device, key, value, device, self.config.retry_unreachable,
                )  # fmt: skip
                continue
            self.counters["retries"] += 1
            self._spawn_write(device, key, value, again=True)

    def _watch_drops(self, queue: Subscription) -> None:
        """Log once when the queue starts dropping readings and once when it has room again."""
        dropped = queue.counters.dropped
        if dropped > self._dropped_seen:
            if not self._dropping:
                self._dropping = True
                self._dropping_since = self._dropped_seen
                log.warning(
                    "shadow: %s dropped: the shadow store %s cannot keep up with the readings "
                    "(%s queued); reported state and history miss them (counted in the "
                    "status, shadow.dropped, until the queue has room again)",
                    counted(dropped - self._dropped_seen, "reading"),
                    self.config.file(),
                    len(queue),
                )
            self._dropped_seen = dropped
        elif self._dropping and len(queue) < queue.maxsize // 2:
            self._dropping = False
            log.warning(
                "shadow: keeps up again (%s queued); %s dropped while it could not",
                len(queue),
                counted(dropped - self._dropping_since, "reading"),
            )

    def _record_failed(self, device: str, exc: Exception) -> None:
        # A full disk fails every reading: the streak logs its start and end, not each one.
        # The readings themselves still reach the bridges; only their shadow copy is missed.
        self.counters["record_errors"] += 1
        disk = isinstance(exc, sqlite3.Error)  # the message says it all; else a bug: traceback
        self._recording.failed(
            f"cannot record readings of {device} in {self.config.file()}: {exc}; readings still "
            "flow, the shadow misses them",
            traceback=False if disk else exc,
        )

    # -- desired --------------------------------------------------------------------------------

    async def _poll_desired(self) -> None:
        store = self._store()
        while True:
            await asyncio.sleep(self.config.poll_interval)
            revisions = await self._call(store.desired_revisions)
            for device, rev in revisions.items():
                if self._seen.get(device, 0) != rev:  # 0: a new document, desired unset
                    self._seen[device] = rev
                    doc = await self.get(device)
                    log.info("shadow: desired state of %s changed elsewhere", device)
                    self._apply(doc)

    def _apply(self, doc: ShadowDocument) -> None:
        """Write every key of the delta to the device, each in its own task; record the keys
        that are no points (metadata) as such, those not recorded yet with this value."""
        device = doc.device
        points = self.router.points
        queued = {**self._recording_errors.get(device, {}), **self._errors.get(device, {})}
        # unreached, not delta: a metadata key is checked again (once a point, it is written)
        for key, value in doc.unreached.items():
            if (device, key) in points:
                self._spawn_write(device, key, value)
                continue
            # Metadata (a site for topics, say): recorded as unknown_point once per value, not
            # sent down the write path (a warning per key on every later update).
            status = str(WriteStatus.UNKNOWN_POINT)
            known = doc.errors.get(key)
            if known is not None and known.get("status") == status and known["value"] == value:
                continue
            waiting = queued.get(key)
            if waiting is not None and waiting[1] == status and waiting[0] == value:
                continue
            self._note(
                device, key, (value, status, f"{device} has no point {key!r}: kept as metadata")
            )

    def _spawn_write(self, device: str, key: str, value: Any, again: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(
            self._write(device, key, value, again), name=f"shadow-write:{device}/{key}"
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, device: str, key: str, value: Any, again: bool = False) -> None:
        """Write ``value``; refused as unreachable, keep it for `_retry_unreached` (once:
        ``again`` is that retry)."""
        self.counters["writes"] += 1
        if isinstance(value, dict | list):
            status, reason = "bad_value", f"{device}/{key}: a point takes a scalar value"
        else:
            result = await self.router.write(device, key, value, origin="shadow")
            retry = self.config.retry_unreachable
            if result.status is WriteStatus.UNREACHABLE and retry > 0 and not again:
                self._unreached.setdefault(device, {})[key] = (value, time.monotonic() + retry)
            if result.ok:
                self._note(device, key, None)
                return
            status, reason = str(result.status), result.reason
        self.counters["refused"] += 1
        self._note(device, key, (value, status, reason))

    def _note(self, device: str, key: str, error: Error) -> None:
        """Queue an error to record for ``key`` (None: clear it); one task per device records
        all that are queued in one transaction (`_record_errors`)."""
        if self._closing:  # the store is closing or closed
            return
        self._errors.setdefault(device, {})[key] = error
        if device not in self._error_tasks:
            task = asyncio.get_running_loop().create_task(
                self._record_errors(device), name=f"shadow-errors:{device}"
            )
            self._error_tasks[device] = task
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _record_errors(self, device: str) -> None:
        store = self._store()
        try:
            while errors := self._errors.pop(device, None):
                self._recording_errors[device] = errors
                try:
                    doc = await self._call(partial(store.set_errors, device, errors))
                except asyncio.CancelledError:  # shutdown: recorded there, with what is newer
                    self._errors[device] = {**errors, **self._errors.get(device, {})}
                    raise
                except Exception as exc:  # a full disk: the errors are lost, desired is kept
                    log.warning(
                        "shadow: cannot record write errors of %s in %s: %s",
                        device,
                        self.config.file(),
                        exc,
                        exc_info=not isinstance(exc, sqlite3.Error),
                    )
                    continue
                finally:
                    self._recording_errors.pop(device, None)
                self.documents[device] = doc
        finally:
            self._error_tasks.pop(device, None)

    async def _prune(self) -> None:
        store = self._store()
        while True:
            deleted = await self._call(store.prune)
            if deleted:
                log.debug("shadow: history retention deleted %s", counted(deleted, "row"))
            await asyncio.sleep(PRUNE_INTERVAL)

    # -- MQTT -----------------------------------------------------------------------------------

    async def _serve_requests(self, requests: Subscription) -> None:
        mqtt = self.config.mqtt
        assert mqtt is not None
        base = f"mqtt/{mqtt.endpoint}/{mqtt.prefix}/"
        async for message in requests:
            self._watch_request_drops(requests)
            parts = message.topic[len(base) :].split("/")
            if len(parts) != 3 or parts[1] != "shadow" or parts[2] not in ("get", "update"):
                continue
            device, action = parts[0], parts[2]
            try:
                await self._request(device, action, message)
            except Exception:
                log.exception("shadow: %s request for %s failed", action, device)

    def _watch_request_drops(self, requests: Subscription) -> None:
        """Say requests the queue dropped (it drops its oldest when full): a line at most every
        `REQUEST_DROPS_LOG_S`, with the count since the last."""
        dropped = requests.counters.dropped
        now = time.monotonic()
        if dropped > self._request_drops_said and now >= self._request_drops_at:
            self._request_drops_at = now + REQUEST_DROPS_LOG_S
            log.warning(
                "shadow: %s dropped, the request queue (%d) was full: the desired state they"
                " carried is lost (counted in the status, shadow.requests_dropped)",
                counted(dropped - self._request_drops_said, "MQTT request"),
                requests.maxsize,
            )
            self._request_drops_said = dropped

    async def _request(self, device: str, action: str, message: Message) -> None:
        text = message.samples[0].value if message.samples else ""
        body: Any = {}
        if action == "get":
            # A get takes any payload (docs/shadow.md): only a clientToken, when the payload
            # is a JSON object that has one, is used (echoed); anything else is ignored.
            body = _lenient_body(text)
        elif isinstance(text, str) and text.strip():
            if len(text) > MAX_REQUEST_BYTES:
                self._reject(message, device, action, None, 413, f"over {MAX_REQUEST_BYTES} bytes")
                return
            try:
                # NaN, 1e999 and huge integers refused: the document is echoed back as JSON.
                body = load_json(text)
            except ValueError as exc:  # json.JSONDecodeError or PayloadError
                self._reject(message, device, action, None, 400, f"invalid JSON: {exc}")
                return
        token = body.get("clientToken") if isinstance(body, dict) else None
        if not isinstance(body, dict):
            self._reject(message, device, action, token, 400, "the request must be a JSON object")
            return
        if device not in self.devices:
            self._reject(message, device, action, token, 404, f"no shadow for {device!r}")
            return
        if action == "get":
            doc = await self.get(device)
            topic = shadow_topic(self._prefix, device, "get/accepted")
            self._publish(topic, doc.to_json(), token, message.meta)
            return
        if (late := self._check_late(body)) is not None:
            quota = late.kind != "bad"  # else a malformed request, as any other
            self._reject(message, device, action, token, 400, late.message, late=quota)
            return
        state = body.get("state")
        if not isinstance(state, dict) or set(state) - {"desired", "reported"}:
            self._reject(
                message, device, action, token, 400, "expected {'state': {'desired': {...}}}"
            )
            return
        if "reported" in state:
            self._reject(
                message, device, action, token, 400, "reported state comes from the device"
            )
            return
        desired = state.get("desired")
        if not isinstance(desired, dict):
            self._reject(message, device, action, token, 400, "state.desired must be an object")
            return
        if len(desired) > MAX_DESIRED_KEYS or _depth(desired) > MAX_DEPTH:
            why = f"state.desired: at most {MAX_DESIRED_KEYS} keys, nested at most {MAX_DEPTH} deep"
            self._reject(message, device, action, token, 400, why)
            return
        try:
            doc = await self.update(device, desired, body.get("version"))
        except VersionConflict:
            self._reject(message, device, action, token, 409, "Version conflict")
            return
        except ShadowLimitError as exc:  # the document would be too large, as AWS IoT says it
            self._reject(message, device, action, token, 413, str(exc))
            return
        except ShadowError as exc:
            self._reject(message, device, action, token, 400, str(exc))
            return
        meta = {k: doc.metadata["desired"].get(k) for k in desired if k in doc.metadata["desired"]}
        accepted = {
            "state": {"desired": desired},
            "metadata": {"desired": meta},
            "version": doc.version,
            "timestamp": doc.timestamp,
        }
        self._rejections.succeeded()
        topic = shadow_topic(self._prefix, device, "update/accepted")
        self._publish(topic, accepted, token, message.meta)
        # Not the keys that are no point of the device (metadata): its unknown_point error may
        # not be recorded yet (that write is a task of its own).
        points = self.router.points
        delta = {k: v for k, v in doc.delta.items() if (device, k) in points}
        if delta:
            out = {"state": delta, "version": doc.version, "timestamp": doc.timestamp}
            self._publish(shadow_topic(self._prefix, device, "update/delta"), out, None)

    @property
    def _prefix(self) -> str:
        assert self.config.mqtt is not None
        return self.config.mqtt.prefix

    def _check_late(self, body: Mapping[str, Any]) -> Refusal | None:
        """Why an update is refused by the late-update guard, or None (also when it is off)."""
        mqtt = self.config.mqtt
        if mqtt is None or mqtt.max_age is None:
            return None
        if body.get("timestamp") is None:
            self.counters["untimed_updates"] += 1  # taken or not: who require_timestamp stops
        refusal = check_age(
            body,
            time.time(),
            max_age=mqtt.max_age,
            max_skew=mqtt.max_skew,
            require=mqtt.require_timestamp,
        )
        if refusal is not None and refusal.kind in ("stale", "future"):
            self.counters[f"{refusal.kind}_updates"] += 1
        return refusal

    def _say_late(self, count: int) -> None:
        log.warning(
            "shadow: %s rejected by the late-update guard in the last minute (counted in the "
            "status: stale_updates, future_updates, untimed_updates)",
            counted(count, "more update"),
        )

    def _reject(
        self,
        request: Message,
        device: str,
        action: str,
        token: Any,
        code: int,
        text: str,
        *,
        late: bool = False,
    ) -> None:
        self.counters["rejected"] += 1  # a client sending garbage in a loop: not a log line each
        what = f"{action} of {device} rejected: {code} {text}"
        if not late:
            self._rejections.failed(what, traceback=False)
        elif self._late_log.allow():  # an outage's backlog, not a client's mistake
            log.warning("shadow: %s", what)
        body = {"code": code, "message": text, "timestamp": time.time()}
        topic = shadow_topic(self._prefix, device, f"{action}/rejected")
        self._publish(topic, body, token, request.meta)

    def _publish(
        self,
        topic: str,
        body: dict[str, Any],
        token: Any,
        reply_to: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish a reply (``reply_to``: the request's meta, so that an MQTT 5 request naming
        a Response Topic gets it there) or a notification (update/delta: None)."""
        mqtt = self.config.mqtt
        assert mqtt is not None
        if token is not None:
            body = {**body, "clientToken": token}
        payload = json.dumps(body, separators=(",", ":")).encode()
        adapter = self.adapters[mqtt.endpoint]
        # The config loader made sure the endpoint is an MQTT client, which has publish().
        cast(_Publisher, adapter).publish(topic, payload, mqtt.qos, False, reply_to=reply_to)

    def status(self) -> dict[str, Any]:
        store, requests = self.store, self._requests
        return {
            **self.counters,
            "devices": len(self.devices),
            "writing": len(self._writes),
            "history_paused": store is not None and store.history_paused,
            "history_skipped": store.history_skipped if store is not None else 0,
            # staged rows wait unindexed for the next merge; a failing merge leaves them there
            "history_staged": store.staged_rows if store is not None else 0,
            "history_merges": store.merges if store is not None else 0,
            "history_merge_failing": store is not None and store.merge_failing,
            # oldest rows deleted to keep the file under shadow.history.max_bytes
            "history_capped": store.history_capped if store is not None else 0,
            # below the outbox's room on the disk: documents wait in memory (see the store)
            "documents_paused": store is not None and store.documents_paused,
            "documents_unsaved": store.unsaved if store is not None else 0,
            # readings the store could not keep up with (the telemetry queue's drop-oldest)
            "dropped": self._telemetry.counters.dropped if self._telemetry is not None else 0,
            "queued": len(self._telemetry) if self._telemetry is not None else 0,
            # MQTT requests (get, update) the request queue dropped: none while the endpoint
            # holds the broker back (`REQUEST_QUEUE`)
            "requests_dropped": requests.counters.dropped if requests is not None else 0,
            "requests_queued": len(requests) if requests is not None else 0,
        }


def _subscribe(bus: Bus) -> Subscription:
    return bus.subscribe("telemetry/#", maxsize=TELEMETRY_QUEUE, name="shadow:telemetry")


def _lenient_body(text: Any) -> dict[str, Any]:
    """The JSON object of a get request's payload, or {} when it is none (not JSON, not an
    object, too large): a get is answered whatever its payload."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_REQUEST_BYTES:
        return {}
    try:
        body = load_json(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
