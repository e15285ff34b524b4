"""Other devices' events, re-served by our OPC UA server: a bus EVENT as our event's fields.

An OPC UA client device with ``events:`` puts each upstream event on the bus as one EVENT
message whose samples are its fields (``event.type``, ``event.severity``...,
`protocols.opcua.events`). An aggregating server fires each again, from the device's object and
the Server object (`protocols.opcua.server`). Pure: no asyncua server, no I/O; `upstream` reads a
message, `fields` names our event's fields, `Retained` keeps each device's retained conditions
for ConditionRefresh.

EventType: the upstream's when it is a standard namespace-0 type (``event.type_name`` is set:
our server knows it, so a where clause OfType on it or a supertype works), else BaseEventType
(a vendor type of the PLC's namespace means nothing here). A condition (``event.condition``
set) is not a node of ours: its ConditionId is ``<device>#<upstream ConditionId>`` in our
namespace, and its state travels as event fields (ConditionName, ActiveState/Id, AckedState/Id,
Retain).

Condition methods (Acknowledge, Confirm, AddComment) on such a ConditionId go to the device
(`gateway.conditions`): a client acknowledges with the EventId we served, and the upstream
knows its own, so `Condition` keeps, per condition, which upstream EventId each of ours stands
for (the newest `RECENT_EVENTS`; an EventId we never served goes up unchanged, and the upstream
answers it as unknown).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds

from gateway.types import Message, MessageKind
from protocols.opcua.events import ORIGIN_MARK, PREFIX

BASE_EVENT = ua.NodeId(ua.Int32(ObjectIds.BaseEventType))
SEVERITY_DEFAULT = 100  # an upstream event without one (Part 5: 1..1000, "low")
RECENT_EVENTS = 32  # EventIds of a condition still taken by its methods (as our own alarms')


def is_served(message: Message) -> bool:
    """Whether ``message`` is an OPC UA client's event (what this module re-serves)."""
    return message.kind is MessageKind.EVENT and message.meta.get("event") == ORIGIN_MARK


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream event, as the bus message carries it."""

    device: str
    event_type: ua.NodeId  # ours: the upstream's standard type, else BaseEventType
    source_name: str
    time: datetime  # the upstream's Time
    severity: int
    message: str
    condition: str | None  # ConditionName; None: a plain event
    condition_id: str  # the upstream's ConditionId ("" without one)
    active: bool | None
    acked: bool | None
    retain: bool
    refresh: bool  # sent again by the upstream's ConditionRefresh
    event_id: bytes | None = None  # the upstream's EventId

    @property
    def key(self) -> str:
        """The condition's identity upstream (its ConditionId, else its name)."""
        return self.condition_id or self.condition or ""


def upstream(message: Message) -> Upstream | None:
    """The event ``message`` carries; None when it is no OPC UA client's event."""
    if not is_served(message):
        return None
    values = {s.point.removeprefix(PREFIX): s.value for s in message.samples}
    ts = max((s.source_ts for s in message.samples), default=0.0)
    device = message.device or message.origin
    type_id = values.get("type")
    event_type = BASE_EVENT
    if values.get("type_name") and isinstance(type_id, str):
        try:
            event_type = ua.NodeId.from_string(type_id)
        except (ValueError, TypeError):  # not the client's own form: keep BaseEventType
            event_type = BASE_EVENT
    severity = values.get("severity")
    condition = values.get("condition")
    return Upstream(
        device=device,
        event_type=event_type,
        source_name=_text(values.get("source")) or device,
        time=datetime.fromtimestamp(ts, UTC) if ts else datetime.now(UTC),
        severity=_severity(severity),
        message=_text(values.get("message")),
        condition=_text(condition) or None if condition is not None else None,
        condition_id=_text(values.get("condition_id")),
        active=_flag(values.get("active")),
        acked=_flag(values.get("acked")),
        retain=values.get("retain") is True,
        refresh=values.get("refresh") is True,
        event_id=_event_id(values.get("id")),
    )


def fields(event: Upstream, source: ua.NodeId, condition_id: ua.NodeId | None) -> dict[str, Any]:
    """Our event's fields (asyncua's names), from the device's object ``source``; the
    condition's (``condition_id``: ours) only for a condition."""
    out: dict[str, Any] = {
        "EventType": event.event_type,
        "SourceName": event.source_name,
        "SourceNode": source,
        "Time": event.time,
        "ReceiveTime": datetime.now(UTC),
        "Severity": event.severity,
        "Message": ua.LocalizedText(event.message),
    }
    if event.condition is None or condition_id is None:
        return out
    out |= {
        "NodeId": condition_id,  # the ConditionId (Part 9: the NodeId attribute of the event)
        "ConditionName": event.condition,
        "Retain": event.retain,
        "BranchId": ua.NodeId(),
    }
    if event.active is not None:
        out["ActiveState"] = ua.LocalizedText("Active" if event.active else "Inactive")
        out["ActiveState/Id"] = event.active
    if event.acked is not None:
        out["AckedState"] = ua.LocalizedText("Acknowledged" if event.acked else "Unacknowledged")
        out["AckedState/Id"] = event.acked
    return out


class Retained:
    """Per device, the latest event of each upstream condition while it is retained (what a
    ConditionRefresh on our server sends again), as whatever the server keeps of it."""

    def __init__(self) -> None:
        self._by_device: dict[str, dict[str, Any]] = {}

    def update(self, event: Upstream, kept: Any) -> None:
        """``kept`` is now ``event``'s condition's latest, or, when not retained, nothing."""
        if event.condition is None:
            return
        conditions = self._by_device.setdefault(event.device, {})
        if event.retain:
            conditions[event.key] = kept
        else:
            conditions.pop(event.key, None)

    def __iter__(self) -> Iterator[Any]:
        for conditions in self._by_device.values():
            yield from conditions.values()

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_device.values())


class Condition:
    """An upstream condition we serve: whose it is, through which route, and the upstream
    EventId of each of the events we fired for it."""

    def __init__(self, device: str, upstream_id: str, route: object) -> None:
        self.device = device
        self.upstream_id = upstream_id  # the upstream's ConditionId ("": it sent none)
        self.route = route
        self._event_ids: OrderedDict[bytes, bytes] = OrderedDict()

    def served(self, ours: bytes, event: Upstream) -> None:
        """We fired ``event`` with EventId ``ours``."""
        if event.event_id is None:
            return
        self._event_ids[ours] = event.event_id
        while len(self._event_ids) > RECENT_EVENTS:
            self._event_ids.popitem(last=False)

    def upstream_event(self, ours: bytes) -> bytes:
        """The upstream's EventId for our ``ours`` (unchanged when we never served it)."""
        return self._event_ids.get(ours, ours)


def _event_id(value: object) -> bytes | None:
    """The EventId an event message carries (hex, `protocols.opcua.events.field_value`)."""
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _severity(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, 1), 1000)
    return SEVERITY_DEFAULT
