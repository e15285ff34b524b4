"""The bridge stage: score every numeric sample of the bridge's source devices.

Per device: the first ``calibration`` messages (or the messages inside ``calibration_period``)
are the clean period; when it is over the device is calibrated (`core.calibrate`) and its alarm
threshold set. From then on each message adds one row to the device's window, one ONNX call
scores all its points at once, and:

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
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gateway.anomaly.alarm import Hysteresis, Transition
from gateway.anomaly.core import (
    QUANTILE,
    Calibration,
    Preprocessor,
    calibrate,
    device_scores,
)
from gateway.anomaly.model import OnnxScorer, shipped
from gateway.anomaly.options import AnomalyOptions
from gateway.bus import Bus
from gateway.types import Message, MessageKind, Sample

log = logging.getLogger(__name__)

SCORE_POINT = "anomaly_score"
ALARM_POINT = "anomaly"


def anomaly_topic(device: str) -> str:
    return f"telemetry/{device}/anomaly"


def event_topic(device: str) -> str:
    return f"event/{device}/anomaly"


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class _Device:
    points: list[str]
    rows: list[list[float]] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    cal: Calibration | None = None
    pre: Preprocessor | None = None
    window: np.ndarray[Any, np.dtype[np.float32]] | None = None  # [C, 1, W], newest last
    scores: deque[float] = field(default_factory=deque)
    alarm: Hysteresis | None = None
    scored: int = 0


class AnomalyStage:
    def __init__(self, options: AnomalyOptions, bus: Bus, name: str) -> None:
        self.options = options
        self.bus = bus
        self.name = name
        self.model = OnnxScorer(shipped(options.model), window=options.window)
        self.devices: dict[str, _Device] = {}
        self.samples = 0
        self.alarms = 0

    # -- per message ----------------------------------------------------------------------------

    def process(self, message: Message) -> tuple[Message, list[Message]]:
        """Score one telemetry message: (the message with its score, events to send)."""
        device_name = message.device or message.origin
        values = {s.point: float(s.value) for s in message.samples if _numeric(s.value)}  # type: ignore[arg-type]
        if not values:
            return message, []
        dev = self.devices.get(device_name)
        if dev is None:
            dev = self.devices[device_name] = _Device(list(values))
            dev.last = [values[p] for p in dev.points]
        row = [values.get(p, dev.last[i]) for i, p in enumerate(dev.points)]
        dev.last = row
        if dev.cal is None:
            if self._calibrating(message, dev, row):
                return message, []
            self._calibrate(device_name, dev)
            return message, []
        return self._score(device_name, dev, row, message)

    def _calibrating(self, message: Message, dev: _Device, row: list[float]) -> bool:
        """Collect clean rows; False when the clean period is over."""
        period = self.options.calibration_period
        if period is None:
            dev.rows.append(row)
            return len(dev.rows) < self.options.calibration
        ts = max((s.source_ts or s.gateway_ts) for s in message.samples)
        start, end = (p.timestamp() for p in period)
        if ts < start:
            return True
        if ts <= end:
            dev.rows.append(row)
            return True
        return len(dev.rows) < self.model.window + self.options.smooth

    def _calibrate(self, device: str, dev: _Device) -> None:
        o = self.options
        rows = np.asarray(dev.rows, dtype=np.float64)
        cal = calibrate(self.model, rows, smooth=o.smooth, quantile=QUANTILE, margin=o.margin)
        if o.threshold is not None:
            cal.threshold = o.threshold
        dev.cal = cal
        dev.pre = Preprocessor(cal, start=rows[0])
        z = dev.pre.transform(rows)  # warms the running means up, fills the window
        w = self.model.window
        dev.window = np.ascontiguousarray(z[-w:].T[:, None, :])
        dev.scores = deque(maxlen=o.smooth)
        dev.alarm = Hysteresis(cal.threshold, clear_ratio=o.clear_ratio, hold=o.hold)
        dev.rows = []
        log.info(
            "anomaly %s: %s calibrated on %d samples of %d points, threshold %.3g",
            self.name,
            device,
            len(rows),
            len(dev.points),
            cal.threshold,
        )

    def _score(
        self, device: str, dev: _Device, row: list[float], message: Message
    ) -> tuple[Message, list[Message]]:
        assert dev.cal is not None and dev.pre is not None and dev.window is not None
        assert dev.alarm is not None
        z = dev.pre.transform(np.asarray([row], dtype=np.float64))[0]
        win = dev.window
        win[:, 0, :-1] = win[:, 0, 1:]
        win[:, 0, -1] = z
        errors = self.model.errors(win)
        normalised = errors / dev.cal.error_scale
        raw = float(device_scores(errors[None, :], dev.cal.error_scale)[0])
        dev.scores.append(raw)
        score = sum(dev.scores) / len(dev.scores)
        dev.scored += 1
        self.samples += len(row)
        change = dev.alarm.update(score)
        meta = {
            **message.meta,
            "anomaly_score": score,
            "anomaly": dev.alarm.active,
            "anomaly_points": dict(zip(dev.points, normalised.tolist(), strict=True)),
        }
        message = replace(message, meta=meta)
        origin = f"anomaly:{self.name}"
        ts = max((s.source_ts for s in message.samples), default=0.0)
        report = Message(
            topic=anomaly_topic(device),
            kind=MessageKind.TELEMETRY,
            samples=(Sample.now(SCORE_POINT, round(score, 6), source_ts=ts or None),),
            origin=origin,
            device=device,
        )
        self.bus.publish_nowait(report)
        if change is None:
            return message, []
        if change is Transition.RAISED:
            self.alarms += 1
            log.warning(
                "anomaly %s: %s alarm (score %.3g > %.3g)",
                self.name,
                device,
                score,
                dev.cal.threshold,
            )
        else:
            log.info("anomaly %s: %s alarm cleared (score %.3g)", self.name, device, score)
        event = Message(
            topic=event_topic(device),
            kind=MessageKind.EVENT,
            samples=(
                Sample.now(ALARM_POINT, change is Transition.RAISED, source_ts=ts or None),
                Sample.now(SCORE_POINT, round(score, 6), source_ts=ts or None),
            ),
            origin=origin,
            device=device,
            meta={
                "event": "anomaly" if change is Transition.RAISED else "anomaly_cleared",
                "threshold": dev.cal.threshold,
            },
        )
        self.bus.publish_nowait(event)
        return message, [event]

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "scored_samples": self.samples,
            "alarms": self.alarms,
            "active": sorted(n for n, d in self.devices.items() if d.alarm and d.alarm.active),
            "calibrating": sorted(n for n, d in self.devices.items() if d.cal is None),
        }
