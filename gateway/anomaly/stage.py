"""The bridge stage: score every numeric sample of the bridge's source devices.

Per device: the first ``calibration`` messages (or the messages inside ``calibration_period``)
whose readings are all Good are the clean period; when it is over the device is calibrated
(`core.calibrate`) and its alarm threshold set. From then on each message adds one row to the
device's window, one ONNX call scores all its points at once (`process_batch` scores what
queued up in the bridge, all devices, in one call), and:

- the message goes on with ``meta["anomaly_score"]`` (the device score), ``meta["anomaly"]``
  (alarm active) and ``meta["anomaly_points"]`` (each point's normalised error);
- the score is published as telemetry on ``telemetry/<device>/anomaly`` (point
  ``anomaly_score``), which the shadow service records as reported state and history (bridges
  subscribe to ``telemetry/<device>`` exactly, so they do not see it);
- when the alarm rises or clears (`alarm.Hysteresis`) an EVENT message on
  ``event/<device>/anomaly`` is published on the bus and returned to the bridge, which sends it
  to its target like any other message (an MQTT bridge carries it as ``.../anomaly``).

A point missing from a message keeps its last value; points that appear after calibration are
not scored (the device must be recalibrated to include them).

Calibrating a device runs the model over every window of its clean period (half a second of
CPU for 250 points): the bridge's pump calls `process_batch_async`, which does that in a worker
thread so the event loop goes on polling and sending meanwhile. The pump waits for it, so the
messages that arrive meanwhile queue up behind it and are scored in order as before; the
bridge's other pumps wait their turn (one call of the stage at a time). A stop or reload while a
device calibrates waits for the thread, so the calibration is kept and written when the stage
closes.

Calibrations are kept across restarts (`store`): a device whose stored calibration still fits
(same model, options and points) skips its clean period and is scored again once a window of
fresh readings has arrived, with its alarm state as it was. Calibrations are kept under the
bridge's name: a bridge that finds none of its own while the state folder keeps some of a
bridge this process does not run (renamed in the config, most likely) says so once, naming
them, instead of calibrating again from scratch in silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway.anomaly.alarm import Transition
from gateway.anomaly.core import Calibration
from gateway.anomaly.device import DeviceScorer, Scored
from gateway.anomaly.model import ModelError, shared, shipped
from gateway.anomaly.store import CalibrationStore, Record, devices_in, fingerprint, orphaned
from gateway.anomaly.verdict import ALARM_POINT, SCORE_POINT
from gateway.bus import Bus
from gateway.config.anomaly import AnomalyOptions
from gateway.globs import Globs
from gateway.runtime import StartError
from gateway.text import counted
from gateway.types import Message, MessageKind, Quality, Sample

log = logging.getLogger(__name__)

SAVE_EVERY = 600  # scored rows between saves of a device's refreshed level
# point names whose points/exclude verdict is kept; names can come from data (MQTT
# points: keys), so past this the cache starts again rather than grow without limit
SELECTED_CACHE_MAX = 4096
# The stages of this process: all bridges are built before any scores, so at a bridge's first
# message this says which calibration files belong to a bridge of the running config.
_STAGES: weakref.WeakSet[AnomalyStage] = weakref.WeakSet()

Scoring = list[tuple[Message, list[Message]]]
# `AnomalyStage._batch`: yields each calibration to run (where the caller likes: here or in a
# worker thread), is sent its result, and returns the batch's scored messages.
_Batch = Generator[Callable[[], Calibration], Calibration, Scoring]


def anomaly_topic(device: str) -> str:
    return f"telemetry/{device}/anomaly"


def event_topic(device: str) -> str:
    return f"event/{device}/anomaly"


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class _Device:
    points: list[str]
    scorer: DeviceScorer
    rows: list[list[float]] = field(default_factory=list)  # the clean period, until calibrated
    last: list[float] = field(default_factory=list)
    calibrated: bool = False
    scored: int = 0
    stored: Record | None = None  # a stored calibration to go on from, until restored
    calibrated_rows: int = 0
    calibrated_at: float = 0.0
    # Calibrating: points whose latest reading is not Good (out of range, a device's own
    # Uncertain, a failed read), and how many readings were left out for that.
    unclean: set[str] = field(default_factory=set)
    left_out: int = 0
    period_short_told: bool = False


class AnomalyStage:
    def __init__(
        self, options: AnomalyOptions, bus: Bus, name: str, *, store: Path | None = None
    ) -> None:
        """``store``: the file that keeps calibrations across restarts (None: memory only)."""
        self.options = options
        self.bus = bus
        self.name = name
        try:
            self.model = shared(shipped(options.model), window=options.window)
        except ModelError as exc:  # no onnxruntime, or a file that is not a window model
            raise StartError(f"bridge {name!r}", exc) from None
        self.devices: dict[str, _Device] = {}
        self.samples = 0
        self.alarms = 0
        self.fingerprint = fingerprint(self.model.path.read_bytes(), self.model.window, options)
        self._store = CalibrationStore(store) if store is not None else None
        self._stored: dict[str, Record] | None = None  # read at the first message
        self.restored: list[str] = []
        self._orphans_told = False
        _STAGES.add(self)
        self._selected: dict[str, bool] = {}  # point name -> scored (points/exclude globs)
        self._globs, self._excluded = Globs(options.points), Globs(options.exclude)
        self._unselected: set[str] = set()  # devices with numeric points, none selected
        self._turn = asyncio.Lock()  # process_batch_async: one call at a time, in order

    def _selects(self, point: str) -> bool:
        known = self._selected.get(point)
        if known is None:
            known = point in self._globs and point not in self._excluded
            if len(self._selected) >= SELECTED_CACHE_MAX:
                self._selected.clear()
            self._selected[point] = known
        return known

    def _new_device(self, points: list[str]) -> _Device:
        o = self.options
        scorer = DeviceScorer(
            self.model,
            smooth=o.smooth,
            margin=o.margin,
            threshold=o.threshold,
            clear_ratio=o.clear_ratio,
            hold=o.hold,
            refresh=o.refresh,
        )
        return _Device(points, scorer)

    def _stored_for(self, device: str, points: list[str]) -> Record | None:
        """The stored calibration ``device`` can go on from, if any (logged either way)."""
        record = self._open().get(device)
        if record is None:
            return None
        why = record.mismatch(self.fingerprint, points)
        if why is not None:
            log.info("anomaly %s: %s calibrates again: %s", self.name, device, why)
            return None
        return record.ordered(points)

    # -- keeping calibrations -------------------------------------------------------------------

    def _open(self) -> dict[str, Record]:
        """The stored records, the file taken at first use (again after a bridge restart)."""
        if self._stored is None:
            self._stored = self._store.open() if self._store is not None else {}
            if not self._stored and not self._orphans_told:
                self._orphans_told = True
                self._tell_orphans()
        return self._stored

    def _tell_orphans(self) -> None:
        """Nothing kept under this bridge's name: warn if the folder keeps calibrations of
        bridges this process does not run (a rename loses them without a word otherwise)."""
        if self._store is None or not self._store.usable:
            return
        folder = self._store.path.parent
        running = [
            s.name for s in _STAGES if s._store is not None and s._store.path.parent == folder
        ]
        others = orphaned(folder, running)
        if not others:
            return
        old = next(iter(others)) if len(others) == 1 else "OLD"
        files = ", ".join(str(p) for p in others.values())
        log.warning(
            "anomaly %s: no calibration kept under this bridge's name, but %s keeps some of %s"
            " not run by this gateway (renamed, removed or switched off): %s. This bridge's"
            " devices calibrate again, without alarms until they have. If it was renamed, stop"
            " the gateway and run: gateway anomaly carry CONFIG --from %s --to %s; otherwise"
            " delete %s",
            self.name,
            folder,
            "a bridge" if len(others) == 1 else "bridges",
            "; ".join(f"{name} ({devices_in(path)})" for name, path in others.items()),
            old,
            self.name,
            files,
        )

    def _records(self) -> dict[str, Record]:
        out = dict(self._open())
        for name, dev in self.devices.items():
            scorer = dev.scorer
            if not dev.calibrated or scorer.cal is None or scorer.alarm is None:
                continue
            out[name] = Record(
                self.fingerprint,
                dev.points,
                scorer.cal,
                dev.calibrated_rows,
                dev.calibrated_at,
                scorer.normal,
                scorer.level(),
                scorer.alarm.active,
            )
        return out

    def save(self) -> bool:
        """Write every calibrated device's record (False: not kept, already logged)."""
        if self._store is None:
            return False
        return self._store.save(self._records())

    def close(self) -> None:
        """Save and let go of the file (the bridge stops)."""
        if self._store is not None and self._stored is not None:
            self.save()
            self._store.close()
            self._stored = None

    # -- per message ----------------------------------------------------------------------------

    def process(self, message: Message) -> tuple[Message, list[Message]]:
        """Score one telemetry message: (the message with its score, events to send)."""
        return self.process_batch([message])[0]

    def process_batch(self, messages: list[Message]) -> Scoring:
        """Score messages in order, all calibrated devices' windows in one model call."""
        batch = self._batch(messages)
        try:
            job = next(batch)
            while True:
                job = batch.send(job())
        except StopIteration as done:
            scored: Scoring = done.value
            return scored

    async def process_batch_async(self, messages: list[Message]) -> Scoring:
        """`process_batch` for the event loop: a device's calibration runs in a worker thread.
        Calls are taken one at a time, in the order they come. Cancelled while a device
        calibrates, it waits for the thread and keeps that calibration (`close` writes it), then
        leaves the rest of the batch and raises `CancelledError`."""
        async with self._turn:
            batch = self._batch(messages)
            try:
                job = next(batch)
                while True:
                    work = asyncio.ensure_future(asyncio.to_thread(job))
                    try:
                        result = await asyncio.shield(work)
                    except asyncio.CancelledError:
                        while not work.done():  # a second cancel (a reload during a stop)
                            try:
                                await asyncio.wait([work])
                            except asyncio.CancelledError:
                                pass
                        if not work.cancelled() and work.exception() is None:
                            try:
                                batch.send(work.result())
                            except StopIteration:
                                pass
                        batch.close()
                        raise
                    job = batch.send(result)
            except StopIteration as done:
                scored: Scoring = done.value
                return scored

    def _batch(self, messages: list[Message]) -> _Batch:
        out: Scoring = [(m, []) for m in messages]
        pending: dict[str, list[tuple[int, list[float]]]] = {}
        for i, message in enumerate(messages):
            name = message.device or message.origin
            values: dict[str, Any] = {
                s.point: s.value
                for s in message.samples
                if _numeric(s.value) and self._selects(s.point)
            }
            if not values:
                if name not in self.devices and name not in self._unselected:
                    if any(_numeric(s.value) for s in message.samples):
                        self._unselected.add(name)
                        log.warning(
                            "anomaly %s: no numeric point of %s is selected by points/exclude;"
                            " it is not scored",
                            self.name,
                            name,
                        )
                continue
            dev = self.devices.get(name)
            if dev is None:
                dev = self.devices[name] = self._new_device(list(values))
                dev.last = [float(values[p]) for p in dev.points]
                dev.stored = self._stored_for(name, dev.points)
            row = [float(values.get(p, dev.last[j])) for j, p in enumerate(dev.points)]
            dev.last = row
            if dev.calibrated:
                pending.setdefault(name, []).append((i, row))
            elif not self._calibrating(message, name, dev, row, self._clean(message, values, dev)):
                yield from self._calibrate(name, dev)
        if not pending:
            return out
        windows = [
            self.devices[name].scorer.windows(np.asarray([r for _, r in items]))
            for name, items in pending.items()
        ]
        errors = self.model.errors(np.ascontiguousarray(np.concatenate(windows)))
        at = 0
        for name, items in pending.items():
            dev = self.devices[name]
            n = len(items) * len(dev.points)
            results = dev.scorer.finish(errors[at : at + n])
            at += n
            for (i, row), result in zip(items, results, strict=True):
                out[i] = self._publish(name, dev, row, result, messages[i])
        return out

    def _clean(self, message: Message, values: dict[str, Any], dev: _Device) -> bool:
        """Whether the row ``message`` completes is fit to calibrate on: the latest reading of
        every point Good. A reading outside the point's low..high, a device's Uncertain, or a
        failed read (its last value carried on) is not what normal looks like."""
        for s in message.samples:  # only the row's points decide
            if s.point in dev.points and (s.point in values or s.value is None):
                if s.quality == Quality.GOOD:
                    dev.unclean.discard(s.point)
                else:
                    dev.unclean.add(s.point)
        return not dev.unclean

    def _calibrating(
        self, message: Message, device: str, dev: _Device, row: list[float], clean: bool
    ) -> bool:
        """Collect clean rows; False when the clean period is over."""
        if dev.stored is not None:  # only a window of fresh readings (to score from) is needed
            dev.rows.append(row)
            return len(dev.rows) < self.model.window
        period = self.options.calibration_period
        if period is None:
            self._collect(device, dev, row, clean)
            return len(dev.rows) < self.options.calibration
        ts = max((s.source_ts or s.gateway_ts) for s in message.samples)
        start, end = (p.timestamp() for p in period)
        if ts < start:
            return True
        if ts <= end:
            self._collect(device, dev, row, clean)
            return True
        short = len(dev.rows) < self.model.window + self.options.smooth
        if short and not dev.period_short_told:  # it would wait for ever, silently
            dev.period_short_told = True
            log.warning(
                "anomaly %s: %s: its calibration_period is over with %s of the %s it"
                " needs (%s left out as not Good%s); it is not scored until it is recalibrated"
                " with another period",
                self.name,
                device,
                counted(len(dev.rows), "Good row"),
                self.model.window + self.options.smooth,
                counted(dev.left_out, "reading"),
                f": {', '.join(sorted(dev.unclean)[:5])}" if dev.unclean else "",
            )
        return short

    def _collect(self, device: str, dev: _Device, row: list[float], clean: bool) -> None:
        if clean:
            dev.rows.append(row)
            return
        dev.left_out += 1
        if dev.left_out == self.options.calibration:  # once: a point stuck out of range
            log.warning(
                "anomaly %s: %s: %s left out of its calibration: %s not Good (out of range,"
                " uncertain or failed); it calibrates on Good readings only",
                self.name,
                device,
                counted(dev.left_out, "reading"),
                ", ".join(sorted(dev.unclean)[:5]) or "a point",
            )

    def _calibrate(
        self, device: str, dev: _Device
    ) -> Generator[Callable[[], Calibration], Calibration, None]:
        rows = np.asarray(dev.rows, dtype=np.float64)
        stored = dev.stored
        if stored is None:
            # The heavy part, the model over every window of the clean period: the caller runs
            # it (`process_batch_async`: in a thread). The device is calibrating until it is done.
            cal = yield lambda: dev.scorer.calibrate(rows)
        dev.rows = []
        dev.calibrated = True
        dev.stored = None
        if stored is not None:
            dev.scorer.restore(
                stored.cal, rows, normal=stored.normal, level=stored.level, active=stored.alarm
            )
            dev.calibrated_rows, dev.calibrated_at = stored.rows, stored.calibrated_at
            self.restored.append(device)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stored.calibrated_at))
            log.info(
                "anomaly %s: %s goes on with its calibration of %s, threshold %.3g%s",
                self.name,
                device,
                when,
                dev.scorer.alarm.threshold if dev.scorer.alarm is not None else float("nan"),
                " (alarm active)" if stored.alarm else "",
            )
            return
        dev.calibrated_rows, dev.calibrated_at = len(rows), time.time()
        log.info(
            "anomaly %s: %s calibrated on %s of %s, threshold %.3g%s",
            self.name,
            device,
            counted(len(rows), "sample"),
            counted(len(dev.points), "point"),
            cal.threshold,
            f" ({counted(dev.left_out, 'reading')} not Good left out)" if dev.left_out else "",
        )
        self.save()

    def _publish(
        self, device: str, dev: _Device, row: list[float], result: Scored, message: Message
    ) -> tuple[Message, list[Message]]:
        """The score on the message, the score for the shadow, an event on a transition."""
        dev.scored += 1
        self.samples += len(row)
        score = result.score
        meta = {
            **message.meta,
            "anomaly_score": score,
            "anomaly": result.active,
            "anomaly_points": dict(zip(dev.points, result.points.tolist(), strict=True)),
        }
        message = replace(message, meta=meta)
        origin = f"anomaly:{self.name}"
        ts = max((s.source_ts for s in message.samples), default=0.0) or None
        report = Message(
            topic=anomaly_topic(device),
            kind=MessageKind.TELEMETRY,
            samples=(Sample.now(SCORE_POINT, round(score, 6), source_ts=ts),),
            origin=origin,
            device=device,
        )
        self.bus.publish_nowait(report)
        change = result.change
        if change is None:
            if dev.scorer.refresh is not None and dev.scored % SAVE_EVERY == 0:
                self.save()  # the level it has learned
            return message, []
        threshold = dev.scorer.cal.threshold if dev.scorer.cal is not None else float("nan")
        if change is Transition.RAISED:
            self.alarms += 1
            log.warning(
                "anomaly %s: %s alarm (score %.3g > %.3g)", self.name, device, score, threshold
            )
        else:
            log.info("anomaly %s: %s alarm cleared (score %.3g)", self.name, device, score)
        event = Message(
            topic=event_topic(device),
            kind=MessageKind.EVENT,
            samples=(
                Sample.now(ALARM_POINT, change is Transition.RAISED, source_ts=ts),
                Sample.now(SCORE_POINT, round(score, 6), source_ts=ts),
            ),
            origin=origin,
            device=device,
            meta={
                "event": "anomaly" if change is Transition.RAISED else "anomaly_cleared",
                "threshold": threshold,
            },
        )
        self.bus.publish_nowait(event)
        self.save()  # a restart goes on with the alarm as it is now
        return message, [event]

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "scored_samples": self.samples,
            "alarms": self.alarms,
            "active": sorted(
                n for n, d in self.devices.items() if d.scorer.alarm and d.scorer.alarm.active
            ),
            "calibrating": sorted(
                n for n, d in self.devices.items() if not d.calibrated and d.stored is None
            ),
            "restored": sorted(self.restored),
        }
