"""OPC UA events and alarms (Part 9) as bus messages: the event filter and event -> `Message`.

Pure: no session, no asyncio. The client (`protocols.opcua.client`) creates one event monitored
item with `event_filter` on the configured notifier (the Server object by default), hands each
received field list to `EventFields.message`, and calls ConditionRefresh after every subscribe.

One event is one bus message of kind EVENT on the device's telemetry topic (bridges carry it like
its readings), with one sample per field, named ``event.<field>``: ``event.id`` (EventId, hex),
``event.type`` (the EventType's node id) and ``event.type_name`` (its standard name; None for a
vendor type), ``event.source``, ``event.source_node``, ``event.receive_time``,
``event.severity``, ``event.message``, and for conditions ``event.condition`` (ConditionName),
``event.condition_id``, ``event.active``, ``event.acked`` and ``event.retain`` (None where the
event type has no such field); then ``event.refresh``, true for an event the server sent again
because we called ConditionRefresh, and the configured extra ``fields``. Every sample's
source timestamp is the event's Time. ``meta["event"]`` is ``"opcua"`` (anomaly alarms say
``"anomaly"``: `gateway.anomaly.verdict` tells them apart by it) and ``meta["record"]`` is
``"event"``: an MQTT target publishes the message as one JSON object (`protocols.mqtt.codec`).

Where clause: the configured types (OfType, any of them) and min_severity, OR'ed with
RefreshStart, RefreshEnd and EventQueueOverflow so that the refresh's brackets and the word of
lost events arrive whatever the filter; those are counted, never forwarded.

Gone conditions (`LiveConditions`): after a reconnect, ConditionRefresh sends every condition
the server still retains between RefreshStart and RefreshEnd. A condition we had forwarded as
retained that does not come again between them is gone upstream (cleared and acknowledged while
we were away, or the server restarted without it): its last message goes out once more with
``event.retain`` false, so whoever keeps the alarm list (our OPC UA server, an MQTT consumer)
drops it.

Condition methods (`condition_call`): an operator's Acknowledge, Confirm or AddComment that
`gateway.conditions` brings down is called as Part 9 allows for any condition, the type's
method on the ConditionId, as node-opcua's ``acknowledgeCondition`` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.status_codes import StatusCodes

from gateway.conditions import ACKNOWLEDGE, ADD_COMMENT, CONFIRM, ConditionCall
from gateway.types import Message, MessageKind, Quality, Sample, Value, next_sequence
from gateway.types import telemetry_topic as device_topic

PREFIX = "event."
RECORD = "event"  # meta["record"]: the samples are the fields of one record of this name
ORIGIN_MARK = "opcua"  # meta["event"] of an OPC UA event
REFRESH_START = ObjectIds.RefreshStartEventType
REFRESH_END = ObjectIds.RefreshEndEventType
QUEUE_OVERFLOW = ObjectIds.EventQueueOverflowEventType
# Events let through whatever the where clause: the refresh's brackets, and the server's word
# that its queue for our item overflowed (events were lost).
ALWAYS = (REFRESH_START, REFRESH_END, QUEUE_OVERFLOW)
CONDITION_TYPE = ObjectIds.ConditionType
SUBSCRIBE_TO_EVENTS = 1  # EventNotifier bit
CONDITION_REFRESH = ObjectIds.ConditionType_ConditionRefresh
# the condition methods an operator calls, by name (`gateway.conditions`): the type's method ids
CONDITION_METHOD_IDS = {
    ACKNOWLEDGE: ObjectIds.AcknowledgeableConditionType_Acknowledge,
    CONFIRM: ObjectIds.AcknowledgeableConditionType_Confirm,
    ADD_COMMENT: ObjectIds.ConditionType_AddComment,
}


@dataclass(frozen=True, slots=True)
class Field:
    """One select clause: the sample it fills and where the server finds it."""

    sample: str  # sample name on the bus
    path: tuple[ua.QualifiedName, ...]  # browse path from the event
    type_id: int = ObjectIds.BaseEventType  # TypeDefinitionId (namespace 0)
    attribute: int = AttributeIds.Value

    def operand(self) -> ua.SimpleAttributeOperand:
        return ua.SimpleAttributeOperand(
            TypeDefinitionId=ua.NodeId(ua.Int32(self.type_id)),
            BrowsePath=list(self.path),
            AttributeId=ua.UInt32(self.attribute),
            IndexRange=None,
        )


def _std(sample: str, path: str, type_id: int = ObjectIds.BaseEventType) -> Field:
    names = tuple(ua.QualifiedName(name, 0) for name in path.split("/") if name)
    return Field(PREFIX + sample, names, type_id)


def _key(path: tuple[ua.QualifiedName, ...]) -> tuple[tuple[int, str], ...]:
    return tuple((q.NamespaceIndex, q.Name) for q in path)


# Time, EventType and the standard fields; the first two are read by `EventFields.message`.
TIME = _std("time", "Time")
EVENT_TYPE = _std("type", "EventType")
STANDARD: tuple[Field, ...] = (
    TIME,
    EVENT_TYPE,
    _std("id", "EventId"),
    _std("source", "SourceName"),
    _std("source_node", "SourceNode"),
    _std("receive_time", "ReceiveTime"),
    _std("severity", "Severity"),
    _std("message", "Message"),
    _std("condition", "ConditionName", ObjectIds.ConditionType),
    Field(PREFIX + "condition_id", (), ObjectIds.ConditionType, AttributeIds.NodeId),
    _std("active", "ActiveState/Id", ObjectIds.AlarmConditionType),
    _std("acked", "AckedState/Id", ObjectIds.AcknowledgeableConditionType),
    _std("retain", "Retain", ObjectIds.ConditionType),
)
STANDARD_PATHS = {_key(f.path): f.sample for f in STANDARD}
TYPE_NAME = PREFIX + "type_name"
REFRESH = PREFIX + "refresh"
# Sample names the standard fields take, and the derived ones: an extra field may not take them.
RESERVED = frozenset(
    {f.sample for f in STANDARD if f is not TIME} | {TYPE_NAME, REFRESH, PREFIX + "time"}
)


def parse_field_path(text: str) -> tuple[ua.QualifiedName, ...]:
    """``"2:Limits/2:High"`` (namespace 0 where no ``N:`` is given) as a browse path;
    ValueError when a name is empty or its namespace index is not a number."""
    out = []
    for part in text.split("/"):
        ns, sep, name = part.partition(":")
        if not sep:
            ns, name = "0", part
        if not name.strip() or not ns.isdigit():
            raise ValueError(
                f"bad field {text!r}: expected names such as 'Message' or '2:Limits/2:High'"
            )
        out.append(ua.QualifiedName(name, int(ns)))
    return tuple(out)


def field_name(path: tuple[ua.QualifiedName, ...]) -> str:
    """The sample name of an extra field: ``event.`` and its names joined with dots."""
    return PREFIX + ".".join(q.Name for q in path)


def extra_fields(texts: Sequence[str]) -> tuple[Field, ...]:
    """The configured extra ``fields`` (ValueError: malformed, repeated or a standard one)."""
    out: list[Field] = []
    seen: set[str] = set()
    for text in texts:
        path = parse_field_path(text)
        name = field_name(path)
        if name in RESERVED or _key(path) in STANDARD_PATHS:
            as_name = STANDARD_PATHS.get(_key(path), name)
            raise ValueError(f"field {text!r} is selected anyway (as {as_name})")
        if name in seen:
            raise ValueError(f"field {text!r} is given twice")
        seen.add(name)
        out.append(Field(name, path))
    return tuple(out)


def _of_type(type_id: ua.NodeId) -> ua.ContentFilterElement:
    return ua.ContentFilterElement(
        FilterOperator=ua.FilterOperator.OfType,
        FilterOperands=[ua.LiteralOperand(Value=ua.Variant(type_id, ua.VariantType.NodeId))],
    )


def _join(operator: ua.FilterOperator, elements: list[ua.ContentFilterElement], first: int) -> int:
    """Fold elements ``first..`` of ``elements`` with a binary ``operator`` (appended at the
    end); the index of the element that holds the result."""
    last = len(elements) - 1
    if last == first:
        return first
    result = first
    for i in range(first + 1, last + 1):
        result = _pair(elements, operator, result, i)
    return result


def _pair(
    elements: list[ua.ContentFilterElement], operator: ua.FilterOperator, a: int, b: int
) -> int:
    """Append ``a operator b`` (element indexes); its index."""
    elements.append(
        ua.ContentFilterElement(
            FilterOperator=operator,
            FilterOperands=[ua.ElementOperand(Index=a), ua.ElementOperand(Index=b)],
        )
    )
    return len(elements) - 1


def where_clause(types: Sequence[ua.NodeId], min_severity: int) -> ua.ContentFilter:
    """``(OfType t1 or ...) and Severity >= min`` (each part only when configured), or'ed
    with the `ALWAYS` types; empty (every event) when nothing is configured."""
    if not types and min_severity <= 1:  # severities are 1..1000: 1 lets every event through
        return ua.ContentFilter(Elements=[])
    # Element 0 holds the result: Or(refresh brackets, wanted). Operands are filled in last.
    elements: list[ua.ContentFilterElement] = [ua.ContentFilterElement()]
    brackets = len(elements)
    elements += [_of_type(ua.NodeId(ua.Int32(t))) for t in ALWAYS]
    bracket = _join(ua.FilterOperator.Or, elements, brackets)
    parts: list[int] = []
    if types:
        start = len(elements)
        elements += [_of_type(t) for t in types]
        parts.append(_join(ua.FilterOperator.Or, elements, start))
    if min_severity > 1:
        elements.append(
            ua.ContentFilterElement(
                FilterOperator=ua.FilterOperator.GreaterThanOrEqual,
                FilterOperands=[
                    _std("severity", "Severity").operand(),
                    ua.LiteralOperand(Value=ua.Variant(min_severity, ua.VariantType.UInt16)),
                ],
            )
        )
        parts.append(len(elements) - 1)
    wanted = parts[0]
    if len(parts) == 2:
        wanted = _pair(elements, ua.FilterOperator.And, parts[0], parts[1])
    _pair(elements, ua.FilterOperator.Or, bracket, wanted)
    elements[0] = elements.pop()  # the root is element 0
    return ua.ContentFilter(Elements=elements)


def type_name(type_id: Any) -> str | None:
    """The standard name of a namespace 0 event type (``OffNormalAlarmType``), else None."""
    if isinstance(type_id, ua.NodeId) and type_id.NamespaceIndex == 0:
        ident = type_id.Identifier
        if isinstance(ident, int):
            return ObjectIdNames.get(ident)
    return None


def field_value(value: Any) -> Value:
    """A bus value of one event field (a byte string such as EventId as hex, a node id as its
    string form, a time in ISO 8601)."""
    if value is None or type(value) in (bool, int, float, str):
        return value  # type: ignore[no-any-return]
    if isinstance(value, ua.NodeId):
        return value.to_string()
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.QualifiedName):
        return value.to_string()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ua.StatusCode):
        return value.name
    return str(value)


class EventFields:
    """The select clauses of one device's event item, and its field lists as messages."""

    def __init__(self, device: str, extra: Sequence[Field] = ()) -> None:
        self.device = device
        self.fields: tuple[Field, ...] = (*STANDARD, *extra)
        self.topic = device_topic(device)

    def event_filter(self, types: Sequence[ua.NodeId], min_severity: int) -> ua.EventFilter:
        return ua.EventFilter(
            SelectClauses=[f.operand() for f in self.fields],
            WhereClause=where_clause(types, min_severity),
        )

    def kind_of(self, values: Sequence[ua.Variant]) -> int | None:
        """The namespace 0 id of the event's type (RefreshStart...), None for another."""
        if len(values) != len(self.fields):
            return None
        type_id = values[1].Value if values[1] is not None else None
        if isinstance(type_id, ua.NodeId) and type_id.NamespaceIndex == 0:
            ident = type_id.Identifier
            return ident if isinstance(ident, int) else None
        return None

    def sample_names(self) -> list[str]:
        """The names of an event message's samples, in order (`message`)."""
        names = [f.sample for f in self.fields[1:]]
        names.insert(1, TYPE_NAME)
        return [*names, REFRESH]

    def message(
        self, values: Sequence[ua.Variant], *, refresh: bool, now: float | None = None
    ) -> Message | None:
        """One event's field list as a bus message; None when it does not have one value per
        select clause (a server that ignored part of the filter)."""
        if len(values) != len(self.fields):
            return None
        now = time.time() if now is None else now
        raw = [v.Value if v is not None else None for v in values]
        ts = raw[0].timestamp() if isinstance(raw[0], datetime) else now
        samples = [
            Sample(f.sample, field_value(value), Quality.GOOD, ts, now)
            for f, value in zip(self.fields[1:], raw[1:], strict=True)
        ]
        samples.insert(1, Sample(TYPE_NAME, type_name(raw[1]), Quality.GOOD, ts, now))
        samples.append(Sample(REFRESH, refresh, Quality.GOOD, ts, now))
        return Message(
            topic=self.topic,
            kind=MessageKind.EVENT,
            samples=tuple(samples),
            origin=self.device,
            seq=next_sequence(self.device),
            device=self.device,
            meta={"event": ORIGIN_MARK, "record": RECORD},
        )


def filter_problem(status: ua.StatusCode, result: Any, event_filter: ua.EventFilter) -> str | None:
    """Why an event item cannot serve as configured (None: it can): the item refused (no such
    node, not an event notifier, a filter the server will not take), or parts of the where
    clause refused (an event type that does not exist...). ``result``: the item's
    FilterResult (an EventFilterResult when the server sent one)."""
    if not status.is_good():
        return f"the server refused the event item: {status.name}"
    where = getattr(result, "WhereClauseResult", None)
    elements = event_filter.WhereClause.Elements
    for i, found in enumerate(getattr(where, "ElementResults", None) or ()):
        codes = [found.StatusCode, *(found.OperandStatusCodes or ())]
        bad = next((c for c in codes if c is not None and not c.is_good()), None)
        if bad is None:
            continue
        element = elements[i] if i < len(elements) else None
        if element is not None and element.FilterOperator == ua.FilterOperator.OfType:
            type_id = element.FilterOperands[0].Value.Value
            return f"where clause refused: event type {field_value(type_id)}: {bad.name}"
        return f"where clause refused: element {i}: {bad.name}"
    return None


def setup_problem(
    node: ua.NodeId, types: Sequence[ua.NodeId], read: Sequence[ua.DataValue]
) -> str | None:
    """Why the event item would not serve (None: it would), from one read of the notifier's
    EventNotifier and the ``types``' NodeClass (``read``, in that order). Checked before the
    item is created: some servers (node-opcua) accept an item on a node that is no notifier,
    or a where clause naming a type they do not have, and then stay silent for good."""
    notifier, classes = read[0], read[1:]
    code = notifier.StatusCode
    if code is not None and code.value == StatusCodes.BadAttributeIdInvalid:
        return f"node {node.to_string()} is no object (it has no EventNotifier)"
    if code is not None and not code.is_good():
        return f"node {node.to_string()}: {code.name}"
    bits = notifier.Value.Value if notifier.Value is not None else None
    if not isinstance(bits, int) or not bits & SUBSCRIBE_TO_EVENTS:
        return f"node {node.to_string()} is not an event notifier (EventNotifier {bits})"
    for type_id, dv in zip(types, classes, strict=True):
        code = dv.StatusCode
        if code is not None and not code.is_good():
            return f"event type {type_id.to_string()}: {code.name}"
        node_class = dv.Value.Value if dv.Value is not None else None
        if node_class != ua.NodeClass.ObjectType:
            return f"event type {type_id.to_string()} is not an ObjectType (an event type)"
    return None


def condition_refresh(subscription_id: int) -> ua.CallMethodRequest:
    """Part 9 ConditionRefresh: the server sends every retained condition again."""
    return ua.CallMethodRequest(
        ObjectId=ua.NodeId(ua.Int32(CONDITION_TYPE)),
        MethodId=ua.NodeId(ua.Int32(CONDITION_REFRESH)),
        InputArguments=[ua.Variant(subscription_id, ua.VariantType.UInt32)],
    )


def condition_call(call: ConditionCall) -> ua.CallMethodRequest:
    """Part 9's ``call.method`` on the condition ``call.condition`` (ValueError: not a NodeId)."""
    return ua.CallMethodRequest(
        ObjectId=ua.NodeId.from_string(call.condition),
        MethodId=ua.NodeId(ua.Int32(CONDITION_METHOD_IDS[call.method])),
        InputArguments=[
            ua.Variant(call.event_id, ua.VariantType.ByteString),
            ua.Variant(ua.LocalizedText(call.comment), ua.VariantType.LocalizedText),
        ],
    )


CONDITION_ID = PREFIX + "condition_id"
CONDITION = PREFIX + "condition"
RETAIN = PREFIX + "retain"
EVENT_ID = PREFIX + "id"


class LiveConditions:
    """The conditions we forwarded as retained, to tell which are gone after a refresh (the
    module docstring). Only a refresh that ends removes anything: one that never sends its
    RefreshEnd (the connection lost again meanwhile, a server without the brackets) removes
    nothing, since a condition it did not get to is not known to be gone; the next refresh
    starts afresh."""

    def __init__(self) -> None:
        self._kept: dict[str, Message] = {}  # condition -> its latest message, while retained
        self._seen: set[str] | None = None  # during a refresh: the conditions sent again

    def start(self) -> None:
        self._seen = set()

    def note(self, message: Message) -> None:
        """``message`` was forwarded."""
        values = {s.point: s.value for s in message.samples}
        key = values.get(CONDITION_ID) or values.get(CONDITION)
        if not isinstance(key, str):
            return
        if values.get(RETAIN) is True:
            self._kept[key] = message
        else:
            self._kept.pop(key, None)
        if self._seen is not None:
            self._seen.add(key)

    def end(self, now: float | None = None) -> list[Message]:
        """The refresh ended: the last messages of the conditions it did not send again, now
        with ``event.retain`` false (and no EventId: the upstream sent no such event)."""
        seen, self._seen = self._seen, None
        if seen is None:
            return []
        now = time.time() if now is None else now
        changed = {RETAIN: False, REFRESH: True, EVENT_ID: None}
        gone = []
        for key in [k for k in self._kept if k not in seen]:
            last = self._kept.pop(key)
            samples = tuple(
                replace(s, value=changed.get(s.point, s.value), source_ts=now, gateway_ts=now)
                for s in last.samples
            )
            gone.append(replace(last, samples=samples, seq=next_sequence(last.origin)))
        return gone


__all__ = [
    "STANDARD",
    "EventFields",
    "Field",
    "LiveConditions",
    "condition_call",
    "condition_refresh",
    "extra_fields",
    "field_value",
    "filter_problem",
    "parse_field_path",
    "type_name",
    "setup_problem",
    "where_clause",
]
