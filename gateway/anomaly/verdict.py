"""What a bridge's target makes of the anomaly stage's messages: the alarm as two points.

A bridge with ``anomaly:`` hands its target each scored message (``meta["anomaly"]``, alarm
active, and ``meta["anomaly_score"]``) and, on each rise or clear, an EVENT message on
``event/<device>/anomaly`` whose samples are ``anomaly`` and ``anomaly_score``
(`gateway.anomaly.stage`). A server target (OPC UA, Modbus, CoAP, Sparkplug) serves them as two
read-only points of the device: `verdict` reads either kind of message, `alarm_samples` turns it
into the points' samples, and `add_alarm_points` declares the points next to the device's own
(``gateway validate`` and the targets share it). Pure: no numpy, no I/O, so any target and the
config checks may import it.

A source point already named ``anomaly`` or ``anomaly_score`` keeps its name: the alarm's point
of that name is left out for that device (the caller warns), so that a bridged value is never
shadowed by the alarm's.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from gateway.types import Message, MessageKind, PointSpec, Sample

log = logging.getLogger(__name__)

ALARM_POINT = "anomaly"  # bool: the alarm is active
SCORE_POINT = "anomaly_score"  # float: the device's latest score
ALARM_POINTS = (ALARM_POINT, SCORE_POINT)
ANOMALY_EVENTS = frozenset({"anomaly", "anomaly_cleared"})  # meta["event"] of the stage's EVENTs

_DESCRIPTIONS = {
    ALARM_POINT: "anomaly alarm active (the gateway's anomaly scorer)",
    SCORE_POINT: "anomaly score of the device's latest readings (the alarm rises over its "
    "threshold)",
}
_DATATYPES = {ALARM_POINT: "bool", SCORE_POINT: "float64"}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one message says of its device's alarm."""

    active: bool | None  # None: the message says nothing of the alarm (a score only)
    score: float | None
    ts: float | None  # the readings' source time (None: unknown)
    event: bool  # an EVENT: the alarm rose (active) or cleared just now
    threshold: float | None = None  # an EVENT's


def is_anomaly_event(message: Message) -> bool:
    """Whether ``message`` is the anomaly stage's rise/clear EVENT (its ``meta["event"]``
    says so). Other EVENTs travel too (an OPC UA client's events and alarms, translate's
    reviews): whatever their samples are named, they are never taken for the alarm."""
    return message.kind is MessageKind.EVENT and message.meta.get("event") in ANOMALY_EVENTS


def verdict(message: Message) -> Verdict | None:
    """The verdict of a scored message or of an anomaly EVENT; None for any other message
    (a device not scored yet, still calibrating, or another kind of event)."""
    if message.kind is MessageKind.EVENT:
        if not is_anomaly_event(message):
            return None
        active: bool | None = None
        score: float | None = None
        ts: float | None = None
        for sample in message.samples:
            if sample.point == ALARM_POINT and isinstance(sample.value, bool):
                active, ts = sample.value, sample.source_ts or None
            elif sample.point == SCORE_POINT and _number(sample.value):
                score = float(sample.value)
        if active is None:
            return None
        threshold = message.meta.get("threshold")
        return Verdict(active, score, ts, True, float(threshold) if _number(threshold) else None)
    raw = message.meta.get("anomaly_score")
    if not _number(raw):
        return None
    flag = message.meta.get("anomaly")
    ts = max((s.source_ts for s in message.samples), default=0.0) or None
    return Verdict(flag if isinstance(flag, bool) else None, float(raw), ts, False)


def alarm_samples(message: Message, names: Collection[str] = ALARM_POINTS) -> tuple[Sample, ...]:
    """The samples of the alarm's points (those of ``names``) that ``message`` gives a value."""
    found = verdict(message)
    if found is None:
        return ()
    out: list[Sample] = []
    if found.active is not None and ALARM_POINT in names:
        out.append(Sample.now(ALARM_POINT, found.active, source_ts=found.ts))
    if found.score is not None and SCORE_POINT in names:
        out.append(Sample.now(SCORE_POINT, found.score, source_ts=found.ts))
    return tuple(out)


class ForeignEvents:
    """The EVENTs a server target drops that are not the anomaly alarm's (an OPC UA client's
    events and alarms): a register or a variable holds a value, and an event is no value.
    Counted (``events_dropped`` in the target's status); why is logged once per device."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.dropped = 0
        self._told: set[str] = set()

    def dropped_if_foreign(self, message: Message) -> bool:
        """Whether ``message`` is such an event (then counted, and the target drops it)."""
        if message.kind is not MessageKind.EVENT or is_anomaly_event(message):
            return False
        self.dropped += 1
        device = message.device or message.origin
        if device in self._told:
            return True
        self._told.add(device)
        log.warning(
            "%s: drops the events of %s (%s): this target serves values, not events; bridge "
            "them to an MQTT endpoint (counted as events_dropped)",
            self.target,
            device,
            message.meta.get("event", "event"),
        )
        return True


def served_samples(message: Message, names: Collection[str]) -> tuple[Sample, ...]:
    """What a server target sets from ``message`` for one device: its samples (none for an
    EVENT, whose samples are no point's values) and, for the alarm's points it serves
    (``names``; empty: none), their samples from the message's verdict (`alarm_samples`)."""
    own = () if message.kind is MessageKind.EVENT else message.samples
    return (*own, *alarm_samples(message, names)) if names else own


def alarm_specs(device: str, names: Collection[str] = ALARM_POINTS) -> list[PointSpec]:
    """The alarm's points of ``device`` (read-only), those of ``names``."""
    return [
        PointSpec(f"{device}/{name}", name, _DATATYPES[name], description=_DESCRIPTIONS[name])
        for name in ALARM_POINTS
        if name in names
    ]


def add_alarm_points(
    points: Mapping[str, Sequence[PointSpec]], target: str | None = None
) -> tuple[dict[str, list[PointSpec]], dict[str, frozenset[str]]]:
    """``points`` (device -> its points) with the alarm's points added to each device, and,
    per device, the names of the alarm points added: not those a point of the device has
    already, which a ``target`` (its name) warns about."""
    out: dict[str, list[PointSpec]] = {}
    added: dict[str, frozenset[str]] = {}
    for device, specs in points.items():
        own = {p.name for p in specs}
        taken = [n for n in ALARM_POINTS if n in own]
        if taken and target is not None:
            both = " and ".join(repr(n) for n in taken)
            log.warning(
                "%s: %s has a point named %s: that point is served, and the anomaly alarm's"
                " point of that name is left out (rename the point, e.g. with the bridge's"
                " translate map, to have both)",
                target,
                device,
                both,
            )
        names = frozenset(n for n in ALARM_POINTS if n not in own)
        added[device] = names
        out[device] = [*specs, *alarm_specs(device, names)]
    return out, added


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
