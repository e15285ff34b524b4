"""The gateway as an OPC UA server: bridged points become variables, client writes go back to
the devices through the bridge and its safety rules.

Address space: our namespace, under Objects one folder per device (``route.folder``; ``/``
nests), one variable per point with NodeId ``ns=<ns>;s=<device>.<point>``, its DataType,
Description, AccessLevel and, for numbers, the EngineeringUnits and EURange properties. A value
is ``BadWaitingForInitialData`` until the first sample arrives.

Values (the hot path): `send` keeps, per point, asyncua's ``AttributeValue`` of the Value
attribute, sets a new ``DataValue`` on it and awaits the monitored items' data-change callbacks
itself. That is what ``Server.write_attribute_value`` does, without its node lookup, type check
and ``dataclasses.replace``. Measured with 10,000 points at 10,000 updates/s: about 2-4 µs of
server CPU per update with nobody subscribed, about 25 µs when a client monitors every point
(asyncua's monitored-item bookkeeping and the Publish encoding, which we do not touch).

Status of a bad sample, from ``Sample.reason``: "timeout" -> BadTimeout; "not connected" (never
got through) -> BadNoCommunication; "connection lost", "connection error", "unreachable" and
other connection trouble -> BadCommunicationError; anything else (a Modbus exception, a value
that does not decode) -> BadDeviceFailure. An uncertain sample is Uncertain. A bad value is
null, as OPC UA requires, so a client never sees a stale number marked Good.

A reading outside its point's low..high (`gateway.limits`: a reason "above high 100" or
"below low 0") is UncertainEngineeringUnitsExceeded, the code OPC UA Part 8 (Data Access) gives
a value outside the range defined for it, with the value as read. One the point marks bad
(``out_of_range: bad``) is BadOutOfRange, value null: Part 8 has no Bad code for it, and Part
4's "the value was out of range" says what happened where BadDeviceFailure or BadSensorFailure
would claim a failure nobody saw.

Learned types: a source may learn a point's type only once connected (an OPC UA device point
without ``type:`` is float64 until the client reads the node's DataType, then re-declares it).
The router tells the server when a device declares its points again
(`CommandRouter.on_declare`); a variable whose type changed gets the new DataType, and its
values and writes the new Variant type.

Writes: asyncua handles a Write request in ``InternalSession.write``, which hands it to
``AttributeService.write`` and on to the address space's synchronous setters; nothing there can
wait for a device. We give the server our own session
class (through ``InternalServer.create_session``): its ``write`` takes the items that address
our variables, awaits ``Bridge.write`` for each (concurrently) and answers with the status the
device round trip produced, Good only after the device acknowledged; every other item goes
through asyncua, once past the checks below. A write is never queued: it succeeds now or is
refused now.

Unknown nodes: asyncua answers a write it would not do with BadUserAccessDenied, a node that does
not exist or that nobody may write included, and a Browse, TranslateBrowsePaths or Call naming a
node that does not exist with BadNodeIdInvalid (a NodeId that is malformed). Our session answers
those as OPC UA Part 4 does: BadNodeIdUnknown, BadAttributeIdInvalid (an attribute the node does
not have, our variables' included), BadNotWritable (one it has but nobody may write),
BadMethodInvalid, and BadUserAccessDenied only where the node is writable, or the method
callable, but not by this user.

Security: the secure endpoints from the config, the None endpoint only with ``allow_none``.
The peer certificate of a secure channel must be in the trust list; asyncua only checks the
certificate a client repeats in CreateSession, and only if it does, so we check the channel's own
certificate (a client that leaves it out gets no session either; see below).
Users log in with a name and a password checked against its scrypt hash, in a worker thread,
with a backoff per peer address after failed logins (`protocols.opcua.logins`); anonymous clients,
when allowed, may read, browse and subscribe but not write or call methods. Their Write and Call
requests are refused item by item (BadUserAccessDenied), not with a service fault: Part 4 gives
operation-level errors per item, and so they too learn which nodes do not exist. The
UserAccessLevel a client reads is that of its own user: without CurrentWrite for anonymous and
read-only users.

An untrusted channel certificate is refused at CreateSession, before a session exists
(`_Processor`, with the status of the trust list: BadCertificateUntrusted, ...), and checked
again at activation, in case the trust list changed meanwhile. Not earlier: asyncua has no hook
when a secure channel opens (its ``certificate_validator`` runs in CreateSession, on the
certificate a client repeats there), and an answer there would have to suit two kinds of
clients: asyncua's client reports a refused OpenSecureChannel only from an Error message,
node-opcua's only from a ServiceFault in an OpenSecureChannel response. So a client with any
certificate still gets a secure channel; what it can make the server hold is bounded by the
limits below.

Resource limits (an audit: one Read of 95 MB held as much per connection, 12 of them 1.4 GB;
1,100 idle connections took every file descriptor; a Read of 1,000,000 items stalled the event
loop 11 s): a request is at most `MAX_MESSAGE` bytes (asyncua's default: 100 MB; the largest
legitimate messages of a 10,000-point server measure 0.3-2.1 MB, see `MAX_MESSAGE`), a larger
one is answered BadRequestTooLarge and its connection closed as soon as its chunks pass the
limit; at most ``max_connections`` TCP connections at once (asyncua's: 1,000), more are closed
as they are accepted; and the OperationLimits the server advertises (MaxNodesPerRead and the
others, 10,000 each, which asyncua advertises but does not enforce) are enforced before the
request is decoded: `_Processor` reads the count of a request's operations from its encoding
and answers BadTooManyOperations without decoding the items (decoding alone cost 0.45 s per MB
of small items), so what a logged-in client can make the server decode is bounded too.

Anomaly alarms: each device of a bridge with ``anomaly:`` also gets the variables
``<device>.anomaly`` and ``<device>.anomaly_score`` and fires an OffNormalAlarmType event when
its alarm rises or clears, from its object and the Server object (`protocols.opcua.alarms`).
`send` hands the bridge's EVENT messages and the verdict of scored messages
(``meta["anomaly"]``) to it; an EVENT's samples never land in a point's variable. Built after
the points: a point named like one of these variables keeps its node. A Call on one of the
alarms' ConditionIds (Acknowledge, AddComment, Confirm, and the shelving methods TimedShelve,
OneShotShelve, Unshelve) goes to the alarms, with the caller's user and whether they may
write. Servers without such bridges get none of this.

Re-served events (an aggregating server): an OPC UA client device with ``events:`` puts each
upstream event and alarm on the bus (`protocols.opcua.events`); a bridge from it to this server
makes `send` fire it again from the device's object and from the Server object, with the
upstream's EventType (when standard), SourceName, Time, Severity, Message and, for a
condition, ConditionName, ActiveState/Id, AckedState/Id and Retain as fields
(`protocols.opcua.served_events`; the condition is no node of ours: its ConditionId is
``<device>#<upstream ConditionId>``). At start, the object of each device whose events a
bridge carries (`Bridge.event_devices`) becomes an event notifier (EventNotifier
SubscribeToEvents, HasNotifier from the Server), the where clauses subtype-aware
(`alarms.install`, existing items too) and ConditionRefresh ours (the retained upstream
conditions, with the anomaly alarms if any); an event of a device not known so (a plugin's
events) does so at its first event. A server that gets no such event changes nothing (no
notifier, no evaluator swap).

Acknowledge, Confirm and AddComment on a re-served condition go down to the device, as writes
do (`call_served`): the caller needs write access (else BadUserAccessDenied) and the bridge's
route must let clients write (else BadNotExecutable); then `Bridge.call_condition` has the
device's adapter call the same method on the upstream's ConditionId with the upstream's EventId
(`served_events.Condition`) and the comment, and the caller gets the upstream's status, or the
write path's (BadCommunicationError when the device is down, BadTimeout after
``write_timeout``). The upstream's next event (AckedState true) updates the condition as any
event does. Counted as ``acks_forwarded`` (the upstream said Good) and ``acks_refused``; a
refusal is logged at warning level once per status, then at debug level.

Publish responses: asyncua sends all a subscription has queued in one Publish response,
whatever the client's MaxNotificationsPerPublish; a backlog could outgrow the client's message
size and cost it its connection, again on every reconnect. Our session's subscriptions send at
most that many notifications per response (at most `publish.PUBLISH_CAP`, 0 included), with
MoreNotifications, and the rest in the next responses (`protocols.opcua.publish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from asyncua import ua
from asyncua.common import event_objects
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.server import binary_server_asyncio
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.server.subscription_service import SubscriptionService
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import extensionobject_from_binary, struct_from_binary
from cryptography import x509

from gateway.adapter import Adapter, AdapterContext
from gateway.anomaly.verdict import ForeignEvents
from gateway.bridge import respecified
from gateway.commands import WriteStatus
from gateway.conditions import ConditionCall
from gateway.limits import exceeded
from gateway.paths import state_path
from gateway.streak import Throttle
from gateway.text import counted
from gateway.types import Message, MessageKind, PointSpec, Quality, Sample, Value
from protocols.opcua import alarms, logins, publish, served_events, transport
from protocols.opcua.aggregates import DEFAULT, Aggregate
from protocols.opcua.alarms import ALARM_VARIABLE, SCORE_VARIABLE, Alarms, DeviceAlarm
from protocols.opcua.config import OpcuaServer, OpcuaServerRoute
from protocols.opcua.historian import Historian
from protocols.opcua.history import MAX_VALUES
from protocols.opcua.pki import (
    TrustList,
    ensure_certificate,
    load_certificate,
    load_private_key,
    load_trust_store,
)
from protocols.opcua.types import INT_RANGES, NUMBERS, VARIANT_TYPES
from protocols.opcua.units import eu_information

if TYPE_CHECKING:
    from gateway.bridge import Bridge

log = logging.getLogger(__name__)

SESSION_TIMEOUT_S = 60  # longest session timeout a client is granted (asyncua's: 600 s)
ITEM_QUEUE = 100  # data changes queued per monitored item at most (asyncua's: 10,000)
# The largest request we accept (`_RequestLimits`: only requests; a client's own Hello bounds
# our responses). Measured for 10,000 points (`OPERATIONS_MAX` items in
# one request, NodeIds of 40 characters): Read request 0.62 MB, its response 0.30 MB (Doubles),
# 2.1 MB (10,000 Descriptions of 200 characters); CreateMonitoredItems 0.86 MB; a Browse of one
# folder holding all 10,000 1.2 MB. asyncua's default is 100 MB.
MAX_MESSAGE = 4 * 1024 * 1024
# Chunks per message: enough for MAX_MESSAGE in chunks of the smallest buffer OPC UA allows
# (8,192 bytes), so that the message size is the limit whatever buffer a client negotiates.
MAX_CHUNKS = MAX_MESSAGE // 8192
RECEIVE_BUFFER = 65535  # bytes per chunk (asyncua's default)

Codes = StatusCodes
VT = ua.VariantType


SECURITY_POLICIES: dict[tuple[str, str], ua.SecurityPolicyType] = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): (
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt
    ),
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): (
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt
    ),
}

WRITE_STATUS: dict[WriteStatus, int] = {
    WriteStatus.GOOD: Codes.Good,
    WriteStatus.UNKNOWN_POINT: Codes.BadNodeIdUnknown,
    WriteStatus.NOT_WRITABLE: Codes.BadNotWritable,
    WriteStatus.OUT_OF_RANGE: Codes.BadOutOfRange,
    WriteStatus.BAD_VALUE: Codes.BadTypeMismatch,
    WriteStatus.RATE_LIMITED: Codes.BadTooManyOperations,
    WriteStatus.UNREACHABLE: Codes.BadCommunicationError,
    WriteStatus.TIMEOUT: Codes.BadTimeout,
    WriteStatus.DEVICE_ERROR: Codes.BadDeviceFailure,
}

# Shared, never mutated: one StatusCode object per code instead of one per update.
_STATUS: dict[int, ua.StatusCode] = {}


def status(code: int) -> ua.StatusCode:
    found = _STATUS.get(code)
    if found is None:
        found = _STATUS[code] = ua.StatusCode(cast("ua.UInt32", code))
    return found


def _node_id(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    """``ua.NodeId(identifier, namespace)``: asyncua annotates the fields with its own int and
    str subclasses (``ua.Int32``, ``ua.Int16``) but stores and compares plain ones alike."""
    return ua.NodeId(cast("ua.Int32 | ua.String", identifier), cast("ua.Int16", namespace))


class SharedValue(ua.DataValue):
    """A DataValue that nobody mutates, so copies of it may be the value itself.

    asyncua deep-copies the value for every monitored item on every change (``copy.deepcopy``
    of a DataValue costs ~30 µs, most of an update's cost). Ours are made fresh for each sample
    and never changed afterwards, so sharing them is safe.
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedValue:
        return self


def _variant(value: Any, vtype: ua.VariantType) -> ua.Variant:
    """``ua.Variant(value, vtype)`` for a scalar already of the right Python type, without
    the type guessing of ``Variant.__post_init__`` (a third of an update's cost)."""
    variant = _new(ua.Variant)
    variant.Value = value
    variant.VariantType = vtype
    variant.Dimensions = None
    variant.is_array = False
    return variant


_new = object.__new__


def sample_status(sample: Sample) -> ua.StatusCode:
    """The StatusCode of a sample; see the module docstring for the bad reasons."""
    if sample.quality is Quality.GOOD:
        return status(Codes.Good)
    if sample.quality is Quality.UNCERTAIN:
        if exceeded(sample.reason):
            return status(Codes.UncertainEngineeringUnitsExceeded)
        return status(Codes.Uncertain)
    if exceeded(sample.reason):
        return status(Codes.BadOutOfRange)
    reason = (sample.reason or "").lower()
    if "timeout" in reason or "timed out" in reason:
        return status(Codes.BadTimeout)
    if "not connected" in reason:
        return status(Codes.BadNoCommunication)
    if any(w in reason for w in ("connect", "unreachable", "refused", "reset", "closed")):
        return status(Codes.BadCommunicationError)
    return status(Codes.BadDeviceFailure)


def _coercer(vtype: ua.VariantType) -> Callable[[Any], Any]:
    if vtype is VT.Boolean:
        return bool
    if vtype in INT_RANGES:
        return lambda v: v if type(v) is int else int(round(v))
    if vtype in (VT.Float, VT.Double):
        return float
    return str


@dataclass(slots=True)
class _Var:
    """One served point: where its value lives in asyncua and how to write it back."""

    nodeid: ua.NodeId
    device: str
    spec: PointSpec
    bridge: Bridge
    vtype: ua.VariantType
    coerce: Callable[[Any], Any]
    writable: bool
    historized: bool = False  # HistoryRead answered from the shadow's history
    attr: AttributeValue | None = None


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _float32(x: float) -> float:
    """The shortest decimal that is the same float32 (a Float 0.1 arrives as 0.1000000015)."""
    packed = struct.pack("<f", x)
    for digits in range(6, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack("<f", y) == packed:
            return y
    return x


def accept_value(var: _Var, variant: ua.Variant) -> Value:
    """A client's Variant as the point's Python value; raises `_Refused`.

    Clients should send the variable's own DataType, but many send Double for any number;
    another numeric type is accepted when the value converts exactly (an integral value that
    fits the integer type, any number for a float).
    """
    vt, value = variant.VariantType, variant.Value
    if variant.is_array or value is None:
        raise _Refused(Codes.BadTypeMismatch, f"{vt.name} array or null for a scalar")
    if var.vtype is VT.Boolean or var.vtype is VT.String:
        if vt is not var.vtype:
            raise _Refused(Codes.BadTypeMismatch, f"{vt.name} for a {var.vtype.name}")
        return bool(value) if vt is VT.Boolean else str(value)
    if vt not in NUMBERS:
        raise _Refused(Codes.BadTypeMismatch, f"{vt.name} for a {var.vtype.name}")
    number = _float32(value) if vt is VT.Float else value
    if var.vtype in INT_RANGES:
        if isinstance(number, float):
            if not number.is_integer():
                raise _Refused(Codes.BadTypeMismatch, f"{number} for a {var.vtype.name}")
            number = int(number)
        low, high = INT_RANGES[var.vtype]
        if not low <= number <= high:
            raise _Refused(Codes.BadOutOfRange, f"{number} does not fit a {var.vtype.name}")
        return int(number)
    return float(number)


# -- address space -------------------------------------------------------------------------


def _render(template: str, **names: str) -> str:
    for key, value in names.items():
        template = template.replace("{" + key + "}", value)
    return template


class _Builder:
    """Creates our folders and variables directly in asyncua's address space.

    asyncua's AddNodes service checks every new node against all references of its parent,
    which makes a folder of n variables cost O(n²): 10,000 points took 15 s to start. Our
    nodes are new by construction (fresh namespace, unique NodeIds), so the builder makes the
    same ``NodeData`` entries, attributes and both directions of each reference itself.
    """

    def __init__(self, aspace: AddressSpace, idx: int) -> None:
        self.aspace = aspace
        self.idx = idx
        self.folders: dict[str, ua.NodeId] = {}
        self._described: dict[ua.NodeId, ua.ReferenceDescription] = {}

    def folder(self, path: str) -> ua.NodeId:
        parent = _node_id(ObjectIds.ObjectsFolder)
        so_far = ""
        for part in (p for p in path.split("/") if p):
            so_far = f"{so_far}/{part}" if so_far else part
            found = self.folders.get(so_far)
            if found is None:
                found = self.folders[so_far] = _node_id(so_far, self.idx)
                extra = {AttributeIds.EventNotifier: _const(0, VT.Byte)}
                self._node(found, ua.NodeClass.Object, part, part, ObjectIds.FolderType, extra)
                self._link(parent, found, ObjectIds.Organizes)
            parent = found
        return parent

    def variable(self, var: _Var, parent: ua.NodeId) -> AttributeValue:
        """Add ``var`` under ``parent``; returns the attribute its values go to."""
        spec = var.spec
        access = ua.AccessLevel.CurrentRead.mask if spec.access.readable else 0
        if var.writable:
            access |= ua.AccessLevel.CurrentWrite.mask
        if var.historized:
            access |= ua.AccessLevel.HistoryRead.mask
        eu = eu_information(spec.unit) if var.vtype in NUMBERS else None
        has_range = var.vtype in NUMBERS and spec.low is not None and spec.high is not None
        analog = eu is not None or has_range
        kind = ObjectIds.BaseAnalogType if analog else ObjectIds.BaseDataVariableType
        waiting = ua.DataValue(ua.Variant(None, VT.Null), status(Codes.BadWaitingForInitialData))
        value = AttributeValue(waiting)
        self._node(
            var.nodeid,
            ua.NodeClass.Variable,
            spec.name,
            spec.description or spec.name,
            kind,
            self._variable_attributes(_node_id(var.vtype.value), access, value, var.historized),
        )
        self._link(parent, var.nodeid, ObjectIds.Organizes)
        if eu is not None:
            self._property(var.nodeid, "EngineeringUnits", eu, ObjectIds.EUInformation)
        if has_range:
            eurange = ua.Range(Low=float(spec.low or 0.0), High=float(spec.high or 0.0))
            self._property(var.nodeid, "EURange", eurange, ObjectIds.Range)
        return value

    def status_variable(
        self,
        nodeid: ua.NodeId,
        description: str,
        vtype: ua.VariantType,
        initial: ua.DataValue,
        parent: ua.NodeId,
    ) -> AttributeValue:
        """A read-only variable the gateway sets itself (an alarm's), under ``parent``; its
        browse name is what follows the device in its NodeId."""
        assert isinstance(nodeid.Identifier, str), "our variables have string NodeIds"
        name = nodeid.Identifier.rpartition(".")[2]
        value = AttributeValue(initial)
        attrs = self._variable_attributes(
            _node_id(vtype.value), ua.AccessLevel.CurrentRead.mask, value
        )
        self._node(
            nodeid, ua.NodeClass.Variable, name, description, ObjectIds.BaseDataVariableType, attrs
        )
        self._link(parent, nodeid, ObjectIds.Organizes)
        return value

    def notifier(self, server: ua.NodeId, source: ua.NodeId) -> None:
        """Make ``source`` an event notifier below the Server object."""
        subscribe = ua.EventNotifier.SubscribeToEvents.mask
        self.aspace[source].attributes[AttributeIds.EventNotifier] = _const(subscribe, VT.Byte)
        self._link(server, source, ObjectIds.HasNotifier)

    def _property(self, owner: ua.NodeId, name: str, value: Any, datatype: int) -> None:
        assert isinstance(owner.Identifier, str), "our variables have string NodeIds"
        nodeid = _node_id(f"{owner.Identifier}.{name}", self.idx)
        read = ua.AccessLevel.CurrentRead.mask
        attrs = self._variable_attributes(
            _node_id(datatype), read, _attr(value, VT.ExtensionObject)
        )
        # standard property names live in namespace 0
        self._node(nodeid, ua.NodeClass.Variable, name, name, ObjectIds.PropertyType, attrs, 0)
        self._link(owner, nodeid, ObjectIds.HasProperty)

    @staticmethod
    def _variable_attributes(
        datatype: ua.NodeId, access: int, value: AttributeValue, historizing: bool = False
    ) -> dict[AttributeIds, AttributeValue]:
        A = AttributeIds
        return {
            A.Value: value,
            A.DataType: _const(datatype, VT.NodeId),
            A.ValueRank: _const(ua.ValueRank.Scalar, VT.Int32),
            A.AccessLevel: _const(access, VT.Byte),
            A.UserAccessLevel: _const(access, VT.Byte),
            A.MinimumSamplingInterval: _const(0.0, VT.Double),
            A.Historizing: _const(historizing, VT.Boolean),
        }

    def _node(
        self,
        nodeid: ua.NodeId,
        node_class: ua.NodeClass,
        name: str,
        description: str,
        type_definition: int,
        extra: dict[AttributeIds, AttributeValue],
        browse_ns: int | None = None,
    ) -> None:
        if nodeid in self.aspace:
            raise ValueError(f"node {nodeid.to_string()} exists already")
        A = AttributeIds
        node = NodeData(nodeid)
        node.attributes = {
            A.NodeId: _attr(nodeid, VT.NodeId),
            A.NodeClass: _const(node_class, VT.Int32),
            A.BrowseName: _attr(
                ua.QualifiedName(name, self.idx if browse_ns is None else browse_ns),
                VT.QualifiedName,
            ),
            A.DisplayName: _attr(ua.LocalizedText(name), VT.LocalizedText),
            A.Description: _attr(ua.LocalizedText(description), VT.LocalizedText),
            A.WriteMask: _const(0, VT.UInt32),
            A.UserWriteMask: _const(0, VT.UInt32),
            **extra,
        }
        type_id = _node_id(type_definition)
        node.references.append(self._reference(type_id, ObjectIds.HasTypeDefinition, True))
        self.aspace[nodeid] = node

    def _link(self, parent: ua.NodeId, child: ua.NodeId, reference: int) -> None:
        self.aspace[parent].references.append(self._reference(child, reference, True))
        self.aspace[child].references.append(self._reference(parent, reference, False))

    def _reference(
        self, target: ua.NodeId, reference: int, forward: bool
    ) -> ua.ReferenceDescription:
        """What asyncua's AddReferences would store: the target's names, class and type."""
        about = self._described.get(target)
        if about is None:
            node = self.aspace[target]
            A = AttributeIds
            typedef = next(
                (
                    r.NodeId
                    for r in node.references
                    if r.IsForward and r.ReferenceTypeId == _node_id(ObjectIds.HasTypeDefinition)
                ),
                ua.NodeId(),
            )
            about = ua.ReferenceDescription(
                NodeId=target,
                BrowseName=_value_of(node, A.BrowseName),
                DisplayName=_value_of(node, A.DisplayName),
                NodeClass=ua.NodeClass(_value_of(node, A.NodeClass)),
                TypeDefinition=typedef,
            )
            if about.NodeClass not in (
                ua.NodeClass.Variable,
            ):  # variables change; types and folders are few
                self._described[target] = about
        return ua.ReferenceDescription(
            ReferenceTypeId=_node_id(reference),
            IsForward=forward,
            NodeId=target,
            BrowseName=about.BrowseName,
            DisplayName=about.DisplayName,
            NodeClass=about.NodeClass,
            TypeDefinition=about.TypeDefinition,
        )


def _attr(value: Any, vtype: ua.VariantType) -> AttributeValue:
    return AttributeValue(ua.DataValue(ua.Variant(value, vtype)))


_CONSTANTS: dict[tuple[Any, ua.VariantType], ua.DataValue] = {}


def _const(value: Any, vtype: ua.VariantType) -> AttributeValue:
    """An attribute whose value many nodes share (access levels, masks, data types): one
    DataValue for all of them, fewer objects for a start-up that makes 400,000 of them."""
    return AttributeValue(_shared(value, vtype))


def _shared(value: Any, vtype: ua.VariantType) -> ua.DataValue:
    found = _CONSTANTS.get((value, vtype))
    if found is None:
        found = _CONSTANTS[(value, vtype)] = ua.DataValue(ua.Variant(value, vtype))
    return found


def _value_of(node: NodeData, attribute: AttributeIds) -> Any:
    found = node.attributes[attribute].value
    return None if found is None or found.Value is None else found.Value.Value


# The alarm's variables: name, type, value and status before the first scored message, and
# description.
_ALARM_VARIABLES: tuple[tuple[str, ua.VariantType, bool | None, int, str], ...] = (
    (
        ALARM_VARIABLE,
        VT.Boolean,
        False,
        Codes.UncertainInitialValue,
        "anomaly alarm active (the gateway's anomaly scorer; see the device's events)",
    ),
    (
        SCORE_VARIABLE,
        VT.Double,
        None,
        Codes.BadWaitingForInitialData,
        "anomaly score of the device's latest readings (the alarm rises over its threshold)",
    ),
)


# -- sessions, users, permissions ----------------------------------------------------------


SESSION_SERVICES = frozenset(_node_id(t) for t in USER_TYPES)


ANONYMOUS = User(role=UserRole.Anonymous)


class _Permissions(PermissionRuleset):
    """Every session may use every session service; what a user may do with it is decided per
    item (anonymous Write and Call items are refused in `OpcuaServerAdapter.client_write` and
    `_Session.call`), since a service fault would refuse the items that are not the user's
    fault too. Nobody from outside may add or delete nodes (no remote Admin role is ever
    handed out)."""

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        return user.role is UserRole.Admin or action_type_id in SESSION_SERVICES


def _may_call(user: User) -> bool:
    """Whether ``user`` may call methods (anonymous clients may not)."""
    return user.role is UserRole.Admin or user.role is UserRole.User


class _Users(UserManager):
    """asyncua's user manager: names and passwords checked by `logins.Logins` (which sees the
    peer's address and, for requests `_Processor` checked first, has the verdict already)."""

    def __init__(self, config: OpcuaServer) -> None:
        self.logins = logins.Logins({u.username: u.password_hash for u in config.users})
        self.anonymous = config.anonymous

    @property
    def refused(self) -> int:
        return self.logins.refused

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            return User(role=UserRole.Anonymous) if self.anonymous else None
        if not self.logins.login(username, password):
            return None
        return User(role=UserRole.User, name=username)


class _Session(InternalSession):
    adapter: OpcuaServerAdapter

    async def create_session(
        self, params: ua.CreateSessionParameters, sockname: tuple[str, int] | None = None
    ) -> ua.CreateSessionResult:
        result = await super().create_session(params, sockname=sockname)
        result.MaxRequestMessageSize = cast("ua.UInt32", MAX_MESSAGE)  # asyncua says 65,536
        return result

    async def create_subscription(
        self,
        params: ua.CreateSubscriptionParameters,
        callback: Callable[..., Any],
        request_callback: Callable[..., Any] | None = None,
    ) -> ua.CreateSubscriptionResult:
        result = await super().create_subscription(params, callback, request_callback)
        subscriptions = getattr(self.subscription_service, "subscriptions", None)
        publish.limit(subscriptions, result.SubscriptionId, params.MaxNotificationsPerPublish)
        return result

    def modify_subscription(
        self, params: ua.ModifySubscriptionParameters
    ) -> ua.ModifySubscriptionResult:
        result = super().modify_subscription(params)
        subscriptions = getattr(self.subscription_service, "subscriptions", None)
        publish.limit(subscriptions, params.SubscriptionId, params.MaxNotificationsPerPublish)
        return result

    def activate_session(
        self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
    ) -> ua.ActivateSessionResult:
        if peer_certificate:  # None on the None endpoint, which checks nothing
            trust = self.adapter.trust
            assert trust is not None, "sessions exist only after the server started"
            trust.check(x509.load_der_x509_certificate(peer_certificate))
        return super().activate_session(params, peer_certificate)

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        return await self.adapter.client_write(self, params, super().write)

    async def history_read(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        return await self.adapter.history_read(params)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        results = await super().read(params)
        if not self.adapter.may_write(self.user):
            _without_write_access(params, results)
        return results

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        results = await super().browse(params)
        return self._unknown([d.NodeId for d in params.NodesToBrowse], results)

    async def translate_browsepaths_to_nodeids(
        self, params: list[ua.BrowsePath]
    ) -> list[ua.BrowsePathResult]:
        results = await super().translate_browsepaths_to_nodeids(params)
        return self._unknown([p.StartingNode for p in params], results)

    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        refused = [await self._answer_call(m) for m in params]
        allowed = [m for m, r in zip(params, refused, strict=True) if r is None]
        answered = iter(await super().call(allowed) if allowed else [])
        return [r if r is not None else next(answered) for r in refused]

    async def _answer_call(self, method: ua.CallMethodRequest) -> ua.CallMethodResult | None:
        """Our answer to a call, or None to let asyncua run it. A condition's Acknowledge and
        AddComment are ours (`protocols.opcua.alarms`: its ConditionId is no node)."""
        found, served = self.adapter.alarms, self.adapter.served
        if served is not None and (kept := served.conditions.get(method.ObjectId)) is not None:
            return await self.adapter.call_served(self, method, kept)
        if found is not None and found.serves(method):
            user = self.user.name or self.user.role.name.lower()
            return await found.call(method, user, self.adapter.may_write(self.user))
        refused = self._refuse_call(method)
        if refused is None and found is not None and method.MethodId in alarms.CONDITION_ONLY:
            # on another object (the Server, the condition's type): asyncua says BadNothingToDo
            return ua.CallMethodResult(StatusCode=status(Codes.BadMethodInvalid))
        return refused

    def _refuse_call(self, method: ua.CallMethodRequest) -> ua.CallMethodResult | None:
        """The result of a call that must not run, or None to let asyncua run it."""
        target = self.aspace.get(method.MethodId)
        if method.ObjectId not in self.aspace:
            code = Codes.BadNodeIdUnknown
        elif target is None or _value_of(target, AttributeIds.NodeClass) != ua.NodeClass.Method:
            code = Codes.BadMethodInvalid
        elif not _may_call(self.user) and not self._refresh(method):
            code = Codes.BadUserAccessDenied
        else:
            return None
        return ua.CallMethodResult(StatusCode=status(code))

    def _refresh(self, method: ua.CallMethodRequest) -> bool:
        """Whether ``method`` is a ConditionRefresh served by our alarms, which only sends the
        caller's subscription its events again: read-only clients may call it."""
        ours = self.adapter.alarms is not None or self.adapter.served is not None
        return ours and method.MethodId in _REFRESH_METHODS

    def _unknown(self, nodes: list[ua.NodeId], results: list[_R]) -> list[_R]:
        """asyncua says BadNodeIdInvalid (malformed) where the node does not exist."""
        for node, result in zip(nodes, results, strict=True):
            if result.StatusCode.value == Codes.BadNodeIdInvalid and node not in self.aspace:
                result.StatusCode = status(Codes.BadNodeIdUnknown)
        return results


_R = TypeVar("_R", ua.BrowseResult, ua.BrowsePathResult)
_REFRESH_METHODS = frozenset(_node_id(m) for m in alarms.REFRESH_METHODS)
_CURRENT_WRITE = ua.AccessLevel.CurrentWrite.mask


def _origin(session: InternalSession) -> str:
    """Who writes or calls, for the log: ``opcua:<user>@<host>:<port>``."""
    host, port = (list(session.name) + ["?", "?"])[:2] if session.name else ("?", "?")
    return f"opcua:{session.user.name or 'anonymous'}@{host}:{port}"


def _without_write_access(params: ua.ReadParameters, results: list[ua.DataValue]) -> None:
    """The UserAccessLevel of a user who may write nothing has no CurrentWrite bit (the nodes
    store the AccessLevel there, which is right only for those who may write)."""
    for i, item in enumerate(params.NodesToRead):
        if item.AttributeId != AttributeIds.UserAccessLevel:
            continue
        variant = results[i].Value
        level = variant.Value if variant is not None else None
        if isinstance(level, int) and level & _CURRENT_WRITE:
            results[i] = _shared(level & ~_CURRENT_WRITE, VT.Byte)


class _InternalServer(InternalServer):
    def __init__(self, adapter: OpcuaServerAdapter, user_manager: UserManager) -> None:
        super().__init__(user_manager=user_manager)
        self.adapter = adapter
        # request encoding id -> (most operations, how to reach their count); see `_Processor`
        self.operation_limits: dict[int, tuple[int, _Skip]] = {}

    def enforce_operation_limits(self) -> None:
        """Enforce the OperationLimits the address space advertises (0: no limit)."""
        self.operation_limits = {}
        for request, (limit_node, skip) in OPERATIONS.items():
            node = self.aspace.get(_node_id(limit_node))
            limit = _value_of(node, AttributeIds.Value) if node is not None else None
            if isinstance(limit, int) and limit > 0:
                self.operation_limits[request] = (limit, skip)

    def create_session(
        self, name: str, user: User = ANONYMOUS, external: bool = False
    ) -> InternalSession:
        if not external:
            return super().create_session(name, user, external)
        session = _Session(self, self.aspace, self.subscription_service, name, user, external)
        session.adapter = self.adapter
        self.adapter.sessions.add(session)
        return session


class _RequestLimits(TransportLimits):
    """asyncua's transport limits, with the Acknowledge telling the client only what it asked.

    The Acknowledge's MaxMessageSize and MaxChunkCount bound the client's requests (OPC UA Part
    6, 7.1.2.4), but node-opcua and asyncua clients take them as the bound of our responses
    too: with 4 MiB there, a Publish catching up a backlog (10,000 items, 40 s) was 4.26 MB and
    the client cut the connection. So the client is told its own values (its Hello's, which
    bound our responses; 0: none), while requests are still held to ours here, as asyncua
    enforces what this object keeps (the smaller of the two), and our CreateSession answer
    states MaxRequestMessageSize. A deviation: a stack that checked its requests against the
    Acknowledge would send one over 4 MiB and see the connection closed (BadRequestTooLarge)
    rather than fail on its side; the largest legitimate request measured is 0.86 MB."""

    def create_acknowledge_and_set_limits(self, msg: ua.Hello) -> ua.Acknowledge:
        ack = super().create_acknowledge_and_set_limits(msg)
        ack.MaxMessageSize = msg.MaxMessageSize
        ack.MaxChunkCount = msg.MaxChunkCount
        return ack


# -- certificates at CreateSession, limits of a request -------------------------------------


_Skip = Callable[[Buffer], None]


def _fixed(size: int) -> _Skip:
    return lambda buf: buf.skip(size)


def _after_view(buf: Buffer) -> None:
    struct_from_binary(ua.ViewDescription, buf)  # View, then RequestedMaxReferencesPerNode
    buf.skip(4)


def _after_details(buf: Buffer) -> None:
    extensionobject_from_binary(buf)  # HistoryReadDetails, TimestampsToReturn, Release...
    buf.skip(5)


_O = ObjectIds
_LIMIT = "Server_ServerCapabilities_OperationLimits_"
# request encoding id -> (the OperationLimits node that limits it, what precedes the array of
# its operations in the request's parameters)
OPERATIONS: dict[int, tuple[int, _Skip]] = {
    _O.ReadRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        _fixed(12),  # MaxAge, TimestampsToReturn
    ),
    _O.HistoryReadRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
        _after_details,
    ),
    _O.WriteRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite,
        _fixed(0),
    ),
    _O.HistoryUpdateRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryUpdateData,
        _fixed(0),
    ),
    _O.CallRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerMethodCall,
        _fixed(0),
    ),
    _O.BrowseRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
        _after_view,
    ),
    _O.BrowseNextRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
        _fixed(1),  # ReleaseContinuationPoints
    ),
    _O.RegisterNodesRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerRegisterNodes,
        _fixed(0),
    ),
    _O.UnregisterNodesRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerRegisterNodes,
        _fixed(0),
    ),
    _O.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary: (
        _O.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
        _fixed(0),
    ),
    **{
        request: (_O.Server_ServerCapabilities_OperationLimits_MaxNodesPerNodeManagement, _fixed(0))
        for request in (
            _O.AddNodesRequest_Encoding_DefaultBinary,
            _O.AddReferencesRequest_Encoding_DefaultBinary,
            _O.DeleteNodesRequest_Encoding_DefaultBinary,
            _O.DeleteReferencesRequest_Encoding_DefaultBinary,
        )
    },
    **{
        request: (_O.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall, skip)
        for request, skip in (
            # SubscriptionId, then TimestampsToReturn or MonitoringMode where there is one
            (_O.CreateMonitoredItemsRequest_Encoding_DefaultBinary, _fixed(8)),
            (_O.ModifyMonitoredItemsRequest_Encoding_DefaultBinary, _fixed(8)),
            (_O.SetMonitoringModeRequest_Encoding_DefaultBinary, _fixed(8)),
            (_O.DeleteMonitoredItemsRequest_Encoding_DefaultBinary, _fixed(4)),
        )
    },
}
_COUNT = struct.Struct("<i")


def operation_count(skip: _Skip, parameters: Buffer) -> int:
    """How many operations a request's encoded parameters hold, without decoding them (a null
    array: 0). ``parameters`` is not consumed."""
    buf = parameters.copy()
    skip(buf)
    return max(0, int(_COUNT.unpack(buf.read(4))[0]))


def _address(peername: Any) -> str:
    """The peer's address of a connection's ``peername`` (host, port[, ...])."""
    return str(peername[0]) if isinstance(peername, tuple) and peername else str(peername)


class _Processor(UaProcessor):
    """asyncua's message processor (one per connection), with the certificate of the secure
    channel checked at CreateSession and the operation limits checked on the encoded request.
    asyncua's binary server makes its processors by a module-level name, which
    `OpcuaServerAdapter.__aenter__` points here (for every asyncua server in the process; the
    additions only act for our `_InternalServer`)."""

    def __init__(self, internal_server: InternalServer, transport: Any, limits: Any) -> None:
        super().__init__(internal_server, transport, limits)
        if isinstance(internal_server, _InternalServer):  # `OpcuaServerAdapter.reloaded`
            internal_server.adapter.connections.add(self)

    def distrusted(self, trust: TrustList) -> bool:
        """Whether this connection's secure channel has a certificate ``trust`` now refuses;
        ``check`` logs why and keeps a copy in rejected/, as for a newcomer."""
        peer = self._connection.security_policy.peer_certificate
        if self._closing or not peer:  # gone, or on the None endpoint, which checks nothing
            return False
        try:
            trust.check(x509.load_der_x509_certificate(peer))
        except ServiceError:
            return True
        return False

    async def drop(self) -> None:
        """Close this connection and its session, subscriptions included (a session with
        subscriptions would otherwise outlive its connection, Part 4 6.7)."""
        session = self.session
        self._transport.close()
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close_session(delete_subs=True)

    async def _process_message(
        self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any, body: Buffer
    ) -> Any:
        iserver = self.iserver
        if not isinstance(iserver, _InternalServer) or typeid.NamespaceIndex != 0:
            return await super()._process_message(  # type: ignore[no-untyped-call]
                typeid, requesthdr, seqhdr, body
            )
        session = self.session
        if typeid.Identifier == _O.CreateSessionRequest_Encoding_DefaultBinary:
            # raises ServiceError, which asyncua answers with a service fault
            self._check_certificate(iserver)
        elif typeid.Identifier == _O.ActivateSessionRequest_Encoding_DefaultBinary:
            verdict = await self._check_password(iserver, body)
            with logins.activating(verdict):
                return await super()._process_message(  # type: ignore[no-untyped-call]
                    typeid, requesthdr, seqhdr, body
                )
        elif session is not None:
            found = iserver.operation_limits.get(cast("int", typeid.Identifier))
            if found is not None and session.is_activated():
                limit, skip = found
                count = operation_count(skip, body)
                if count > limit:
                    log.warning(
                        "refused a request of %d operations from %s (at most %d)",
                        count,
                        self.name,
                        limit,
                    )
                    # a service fault, answered by asyncua's process_message
                    raise ServiceError(Codes.BadTooManyOperations)
        return await super()._process_message(  # type: ignore[no-untyped-call]
            typeid, requesthdr, seqhdr, body
        )

    async def _check_password(self, iserver: _InternalServer, body: Buffer) -> logins.Verdict:
        """The password of an ActivateSession request, checked in a worker thread before
        asyncua asks the user manager for it synchronously (see `logins`); in any case the
        peer's address, which asyncua does not pass the user manager."""
        peer = _address(self.name)
        users, session = iserver.user_manager, self.session
        if not isinstance(users, _Users) or session is None:
            return logins.Verdict(peer)
        try:
            token = struct_from_binary(ua.ActivateSessionParameters, body.copy()).UserIdentityToken
            if not isinstance(token, ua.UserNameIdentityToken):
                return logins.Verdict(peer)
            if users.logins.blocked_for(peer):
                return logins.Verdict(peer, blocked=True)
            username, password = iserver.decrypt_user_token(session, token)
        except Exception:  # asyncua decodes it again and answers what is wrong with it
            return logins.Verdict(peer)
        if username is None:  # anonymous, to asyncua
            return logins.Verdict(peer)
        return await users.logins.check(peer, username, password)

    def _check_certificate(self, iserver: _InternalServer) -> None:
        """Refuse a session to a secure channel whose certificate is not trusted."""
        peer = self._connection.security_policy.peer_certificate
        trust = iserver.adapter.trust
        if peer and trust is not None:  # none on the None endpoint, which checks nothing
            trust.check(x509.load_der_x509_certificate(peer))


# -- the adapter ---------------------------------------------------------------------------


class _ServedEvents:
    """The OPC UA client devices' events this server fires again
    (`protocols.opcua.served_events`): their notifiers, conditions and retained events."""

    def __init__(self, server_object: ua.NodeId, namespace: int) -> None:
        self.server_object = server_object
        self.namespace = namespace
        self.notifiers: set[ua.NodeId] = set()
        # our ConditionIds (no node) -> the upstream condition
        self.conditions: dict[ua.NodeId, served_events.Condition] = {}
        self.kept = served_events.Retained()
        self.count = 0

    async def fire(
        self,
        event: served_events.Upstream,
        source: ua.NodeId,
        subs: SubscriptionService,
        route: object,
    ) -> None:
        condition = None
        kept = None
        if event.condition is not None:
            condition = _node_id(f"{event.device}#{event.key}", self.namespace)
            kept = self.conditions.get(condition)
            if kept is None:
                kept = served_events.Condition(event.device, event.condition_id, route)
                self.conditions[condition] = kept
            kept.route = route  # the bridge it came through last
        made = _BASE_EVENT(sourcenode=source)
        made.emitting_node = source
        made.add_property("NodeId", None, VT.NodeId)  # asyncua's BaseEvent has no ConditionId
        fields = served_events.fields(event, source, condition)
        for name in fields:
            if not hasattr(made, name):
                made.add_property(name, None, _FIELD_TYPES.get(name, VT.Boolean))
        alarms.set_fields(made, fields)
        made.EventId = os.urandom(16)
        if kept is not None:
            kept.served(made.EventId, event)
        copies = alarms.both(made, self.server_object)
        self.kept.update(event, copies)
        self.count += 1
        await alarms.trigger(subs, copies)

    def sources(self) -> list[ua.NodeId]:
        return sorted(self.notifiers, key=lambda n: str(n.Identifier))

    def retained(self) -> list[Any]:
        return [e for copies in self.kept for e in copies]


# asyncua's generated event classes are not annotated: made through this, they are Any.
_BASE_EVENT: Callable[..., Any] = event_objects.BaseEvent
_FIELD_TYPES = {
    "ConditionName": VT.String,
    "BranchId": VT.NodeId,
    "ActiveState": VT.LocalizedText,
    "AckedState": VT.LocalizedText,
}


class OpcuaServerAdapter(Adapter):
    """Serves the points of every bridge that targets it."""

    config: OpcuaServer

    def __init__(self, name: str, config: OpcuaServer, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self.bridges: list[Bridge] = []
        self.vars: dict[ua.NodeId, _Var] = {}
        self._aspace: AddressSpace | None = None
        context.router.on_declare(self.retype)  # a type a source learns once connected
        # id(route) -> device -> point -> _Var: a bridge's samples reach only its own nodes
        self._tables: dict[int, dict[str, dict[str, _Var]]] = {}
        self.sessions: weakref.WeakSet[InternalSession] = weakref.WeakSet()
        self.connections: weakref.WeakSet[_Processor] = weakref.WeakSet()
        self.server: Server | None = None
        self.trust: TrustList | None = None
        self._users: _Users | None = None
        self.endpoint_url = self._url()
        self.namespace_index = 0
        self.updates = 0
        self.writes_ok = 0
        self.writes_refused: dict[str, int] = {}
        self.acks_forwarded = 0  # condition calls on re-served alarms the upstream took
        self.acks_refused = 0  # ...refused, by us or by the upstream
        self._refusals_said: set[str] = set()  # their statuses logged at warning level
        self.historian = Historian(name, self.vars)
        self.alarms: Alarms | None = None  # bridges with ``anomaly:`` (`protocols.opcua.alarms`)
        self.foreign_events = ForeignEvents(f"OPC UA server {name}")  # an OPC UA client's events
        # id(route) -> device -> its object; an OPC UA client's events are re-served from it
        self._objects: dict[int, dict[str, ua.NodeId]] = {}
        self.served: _ServedEvents | None = None  # made at the first such event
        self._read_only = frozenset(u.username for u in config.users if u.access == "read")
        self._ts_cache: tuple[float, ua.DateTime] = (
            0.0,
            cast("ua.DateTime", datetime.fromtimestamp(0, UTC)),
        )

    def attach(self, bridge: Bridge) -> None:
        self.bridges.append(bridge)

    # -- lifecycle

    async def __aenter__(self) -> OpcuaServerAdapter:
        cfg = self.config
        gateway = self.context.gateway_name
        self._users = _Users(cfg)
        iserver = _InternalServer(self, self._users)
        server = Server(iserver=iserver)
        iserver.allow_remote_admin = False
        # See "Resource limits" in the module docstring.
        server.limits = _RequestLimits(
            max_recv_buffer=RECEIVE_BUFFER,
            max_send_buffer=RECEIVE_BUFFER,
            max_chunk_count=MAX_CHUNKS,
            max_message_size=MAX_MESSAGE,
        )
        iserver.max_connections = cfg.max_connections
        # A client that vanishes without CloseSession keeps its session, and the data changes
        # of its subscriptions queue for it, until the session timeout: asyncua's 600 s and
        # 10,000 per item grew the gateway by 16 MB a minute for 50 abandoned sessions of 20
        # items at 10 Hz. A live client's Publish requests keep its session whatever the
        # timeout; one that only reads now and then must do so within it.
        server.iserver.max_session_timeout_ms = SESSION_TIMEOUT_S * 1000
        server.iserver.max_monitored_item_queue_size = ITEM_QUEUE
        await server.init()
        iserver.enforce_operation_limits()
        app_uri = _render(cfg.application_uri, gateway=gateway, name=self.name)
        await server.set_application_uri(app_uri)
        server.set_server_name(f"Protocol Brain {gateway} ({self.name})")
        server.product_uri = "urn:protocol-brain"
        server.set_endpoint(self.endpoint_url)
        server.socket_address = (cfg.host, cfg.port)
        await self._security(server, app_uri)
        self.namespace_index = await server.register_namespace(
            _render(cfg.namespace, gateway=gateway, name=self.name)
        )
        self._build(server.iserver)
        if self.alarms is not None:
            self.alarms.start(iserver.subscription_service, iserver.aspace)
            alarms.install()
        self._serve_events_of_bridges(iserver)
        # asyncua logs a failed start (a port in use) with its traceback, then raises the
        # error, which the gateway reports in one line (runtime.StartError): keep the message.
        quiet = Throttle(interval=0.0)
        logging.getLogger("asyncua.server.server").addFilter(quiet)
        transport.install()
        binary_server_asyncio.UaProcessor = _Processor  # type: ignore[attr-defined]
        try:
            await server.start()
        finally:
            logging.getLogger("asyncua.server.server").removeFilter(quiet)
        self.server = server
        log.info(
            "%s: OPC UA server on %s with %s (%s)",
            self.name,
            self.endpoint_url,
            counted(len(self.vars), "variable"),
            ", ".join(self._endpoint_names()),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self.server = self.server, None
        if self.alarms is not None:
            self.alarms.close()  # shelves' timers; their ends are kept in the alarm state
        if server is not None:
            # asyncua's stop leaves client sessions (and their subscriptions' queues) alive
            # until they time out: across a reload, the old server with them. A private
            # attribute: should a later asyncua rename it, stopping still works (the sessions
            # then time out, within SESSION_TIMEOUT_S), and tests/test_opcua_server.py fails.
            sessions = getattr(server.iserver, "_external_sessions", {})
            for session in list(sessions.values()):
                with contextlib.suppress(Exception):
                    await session.close_session(delete_subs=True)
            await server.stop()
        if self.trust is not None:
            self.trust.close()
        if self._users is not None:
            self._users.logins.close()

    async def run(self) -> None:
        await asyncio.Event().wait()  # asyncua serves from its own tasks; nothing to poll

    async def reloaded(self) -> None:
        """Close the connections whose client certificate the trust list no longer holds.

        A client added to the trust list needs nothing (the list is read at every session's
        check); one removed would keep its session until it reconnects: a reload (SIGHUP)
        applies the removal now, and the other sessions go on."""
        trust = self.trust
        if trust is None:
            return
        for connection in list(self.connections):
            if connection.distrusted(trust):
                log.warning(
                    "%s: closed the connection from %s: its certificate is no longer trusted",
                    self.name,
                    _address(connection.name),
                )
                await connection.drop()

    def _url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        path = self.config.path if self.config.path.startswith("/") else f"/{self.config.path}"
        return f"opc.tcp://{host}:{self.config.port}{path}"

    def _endpoint_names(self) -> list[str]:
        sec = self.config.security
        names = [f"{e.policy}/{e.mode}" for e in sec.endpoints]
        return (["None"] if sec.allow_none else []) + names

    async def _security(self, server: Server, app_uri: str) -> None:
        sec = self.config.security
        pki_dir = state_path(sec.pki_dir, self.name)
        if sec.certificate is not None and sec.private_key is not None:
            cert, key = Path(sec.certificate), Path(sec.private_key)
        else:
            cert, key = await ensure_certificate(pki_dir, app_uri, socket.gethostname())
        # PEM or DER by content, not by file name (a PEM ".crt" is common)
        server.iserver.certificate = load_certificate(cert)
        server.iserver.private_key = load_private_key(key)
        self.trust = load_trust_store(pki_dir, sec.trusted_clients, peer="client")
        policies = [SECURITY_POLICIES[(e.policy, e.mode)] for e in sec.endpoints]
        if sec.allow_none:
            log.warning(
                "%s: the unsecured None endpoint is on (allow_none): every value and every "
                "write crosses the network unsigned and unencrypted, and no client certificate "
                "is checked; never use this in production",
                self.name,
            )
            policies.insert(0, ua.SecurityPolicyType.NoSecurity)
        # asyncua annotates SimpleRoleRuleset but only calls check_validity, which every
        # PermissionRuleset has
        rules = _Permissions()
        server.set_security_policy(policies, permission_ruleset=rules)  # type: ignore[arg-type]
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.config.anonymous:
            tokens.insert(0, ua.AnonymousIdentityToken)
        elif not self.config.users:
            log.warning("%s: no users and anonymous: false, so no client can log in", self.name)
        server.set_identity_tokens(tokens)

    def _build(self, iserver: InternalServer) -> None:
        """Build our nodes, then take the whole address space out of the garbage collector's
        sight.

        An address space is millions of long-lived objects (1.9 million for 10,000 points). Built
        with the collector on, full collections of an ever larger heap run over and over (4 of
        6 s for 10,000 points). Left tracked afterwards, every full collection walks all of
        them (1.2 s, the event loop stalled, Modbus timeouts firing), and at 10,000 updates/s
        one comes every few seconds. The gateway runtime calls ``gc.freeze()`` once every
        adapter has started, which moves what exists then to the permanent generation that
        collections skip (`gateway.runtime.Gateway.run`).
        """
        gc.collect()  # what is garbage now would otherwise be frozen for good
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._aspace = iserver.aspace
            builder = _Builder(iserver.aspace, self.namespace_index)
            self._build_nodes(builder)
            self._build_alarms(builder)
            self._history_capabilities(builder)
        finally:
            if enabled:
                gc.enable()

    def _build_nodes(self, builder: _Builder) -> None:
        for bridge in self.bridges:
            route = bridge.config.route
            if not isinstance(route, OpcuaServerRoute):
                route = OpcuaServerRoute()
            table = self._tables.setdefault(id(bridge.config.route), {})
            for device, specs in bridge.points().items():
                folder = builder.folder(
                    _render(route.folder, device=device, gateway=self.context.gateway_name)
                )
                self._objects.setdefault(id(bridge.config.route), {})[device] = folder
                points = table.setdefault(device, {})
                for spec in specs:
                    var = self._var(bridge, route, device, spec)
                    if var.nodeid in self.vars:
                        log.warning(
                            "%s: %s/%s is served by an earlier bridge; bridge %s skips it",
                            self.name,
                            device,
                            spec.name,
                            bridge.name,
                        )
                        continue
                    var.attr = builder.variable(var, folder)
                    self.vars[var.nodeid] = points[spec.name] = var

    def _build_alarms(self, builder: _Builder) -> None:
        """The anomaly alarm of each device of a bridge with ``anomaly:``
        (`protocols.opcua.alarms`). Built after every point: a bridged point named ``anomaly``
        or ``anomaly_score`` keeps its node, and the alarm goes without that variable."""
        server_object = _node_id(ObjectIds.Server)
        for bridge in self.bridges:
            if bridge.config.anomaly is None:
                continue
            route = bridge.config.route
            if not isinstance(route, OpcuaServerRoute):
                route = OpcuaServerRoute()
            if self.alarms is None:
                self.alarms = Alarms(self.name, server_object, self.config.alarms)
            for device in bridge.points():
                folder = builder.folder(
                    _render(route.folder, device=device, gateway=self.context.gateway_name)
                )
                ns = self.namespace_index
                alarm = DeviceAlarm(device, folder, device, _node_id(f"{device}#anomaly", ns))
                if not self.alarms.add(bridge.config.route, alarm):
                    log.warning(
                        "%s: the anomaly alarm of %s comes from an earlier bridge; bridge %s's"
                        " is not served",
                        self.name,
                        device,
                        bridge.name,
                    )
                    continue
                builder.notifier(server_object, folder)
                for name, vtype, value, code, description in _ALARM_VARIABLES:
                    nodeid = _node_id(f"{device}.{name}", ns)
                    if nodeid in builder.aspace:
                        log.warning(
                            "%s: %s has a point named %r: its variable keeps the NodeId %s and"
                            " the anomaly alarm's %r variable is left out (rename the point,"
                            " e.g. with the bridge's translate map, to have both)",
                            self.name,
                            device,
                            name,
                            nodeid.to_string(),
                            name,
                        )
                        continue
                    variant = ua.Variant(value, vtype if value is not None else VT.Null)
                    initial = ua.DataValue(variant, status(code))
                    attr = builder.status_variable(nodeid, description, vtype, initial, folder)
                    if name == ALARM_VARIABLE:
                        alarm.active_attr, alarm.input_node = attr, nodeid
                    else:
                        alarm.score_attr = attr

    def _var(self, bridge: Bridge, route: OpcuaServerRoute, device: str, spec: PointSpec) -> _Var:
        vtype = VARIANT_TYPES.get(spec.datatype, VT.Double)
        return _Var(
            nodeid=_node_id(f"{device}.{spec.name}", self.namespace_index),
            device=device,
            spec=spec,
            bridge=bridge,
            vtype=vtype,
            coerce=_coercer(vtype),
            writable=route.writable and spec.access.writable,
            historized=spec.access.readable and bridge.historized(device, spec.name),
        )

    async def history_read(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        """HistoryRead (`protocols.opcua.historian`)."""
        aspace = self._aspace
        return await self.historian.read(params, lambda n: aspace is not None and n in aspace)

    def _history_capabilities(self, builder: _Builder) -> None:
        """Say in the Server object what HistoryRead serves: raw data, a page's size, no limit
        of continuation points (they hold nothing: `protocols.opcua.history`), the aggregates
        of processed reads in the AggregateFunctions folders, and in DefaultHAConfiguration
        (Part 11, 5.7.3: our variables have no configuration of their own) that they are
        Stepped and the AggregateConfiguration a processed read gets by default."""
        aspace = builder.aspace
        raw = any(v.historized for v in self.vars.values())
        uncertain, bad, good, sloped = (
            getattr(ObjectIds, f"DefaultHAConfiguration_AggregateConfiguration_{name}")
            for name in (
                "TreatUncertainAsBad",
                "PercentDataBad",
                "PercentDataGood",
                "UseSlopedExtrapolation",
            )
        )
        for node, value, vtype in (
            (ObjectIds.HistoryServerCapabilities_AccessHistoryDataCapability, raw, VT.Boolean),
            (ObjectIds.HistoryServerCapabilities_MaxReturnDataValues, MAX_VALUES, VT.UInt32),
            (ObjectIds.Server_ServerCapabilities_MaxHistoryContinuationPoints, 0, VT.UInt16),
            (ObjectIds.DefaultHAConfiguration_Stepped, True, VT.Boolean),
            (uncertain, DEFAULT.uncertain_bad, VT.Boolean),
            (bad, DEFAULT.percent_bad, VT.Byte),
            (good, DEFAULT.percent_good, VT.Byte),
            (sloped, DEFAULT.sloped, VT.Boolean),
        ):
            found = aspace.get(_node_id(node))
            if found is not None:
                found.attributes[AttributeIds.Value] = _const(value, vtype)
        if not raw:
            return
        for folder in (
            ObjectIds.Server_ServerCapabilities_AggregateFunctions,
            ObjectIds.HistoryServerCapabilities_AggregateFunctions,
            ObjectIds.DefaultHAConfiguration_AggregateFunctions,
        ):
            found = aspace.get(_node_id(folder))
            if found is None:
                continue
            listed = {r.NodeId for r in found.references if r.IsForward}
            for aggregate in Aggregate:
                function = _node_id(aggregate.value)
                if function in aspace and function not in listed:
                    builder._link(_node_id(folder), function, ObjectIds.Organizes)

    # -- learned types

    def retype(self, device: str) -> None:
        """Give ``device``'s variables whose type it has declared anew their new DataType
        (see "Learned types" in the module docstring)."""
        for var, spec in respecified(self.bridges, self._tables, device):
            self._retype_var(var, spec)

    def _retype_var(self, var: _Var, spec: PointSpec) -> None:
        var.spec = spec
        vtype = VARIANT_TYPES.get(spec.datatype, VT.Double)
        if vtype is var.vtype:
            return
        log.info("%s: %s/%s is now %s", self.name, var.device, spec.name, vtype.name)
        var.vtype, var.coerce = vtype, _coercer(vtype)
        if self._aspace is not None:
            node = self._aspace[var.nodeid]
            node.attributes[AttributeIds.DataType] = _const(_node_id(vtype.value), VT.NodeId)

    # -- values (hot path)

    async def send(self, message: Message, route: Any) -> None:
        if served_events.is_served(message):
            await self._serve_event(message, route)
            return
        if self.foreign_events.dropped_if_foreign(message):
            return
        if self.alarms is not None and (alarm := self.alarms.find(route, message.device or "")):
            if message.kind is MessageKind.EVENT:
                await self.alarms.event(alarm, message)
                return
            if "anomaly_score" in message.meta:
                await self.alarms.scored(alarm, message)
        if message.kind is MessageKind.EVENT:  # its samples are no point's values
            return
        table = self._tables.get(id(route))
        points = table.get(message.device or "") if table is not None else None
        if not points:
            return
        # asyncua annotates DataValue times as its datetime subclass; it takes plain ones
        now = cast("ua.DateTime", datetime.now(UTC))
        good = status(Codes.Good)
        for sample in message.samples:
            var = points.get(sample.point)
            if var is None:
                continue
            code = good if sample.quality is Quality.GOOD else sample_status(sample)
            value = sample.value
            if value is None or code.value & 0x80000000:
                variant = ua.Variant(None, VT.Null)
            else:
                try:
                    variant = _variant(var.coerce(value), var.vtype)
                except (TypeError, ValueError, OverflowError):
                    variant, code = ua.Variant(None, VT.Null), status(Codes.BadTypeMismatch)
            dv = SharedValue(variant, code, self._source_time(sample.source_ts), now)
            attr = var.attr
            assert attr is not None
            attr.value = dv
            if attr.datachange_callbacks:
                for handle, callback in list(attr.datachange_callbacks.items()):
                    await callback(handle, dv)
            self.updates += 1

    async def _serve_event(self, message: Message, route: Any) -> None:
        """An OPC UA client's event, fired again from the device's object and the Server
        (`protocols.opcua.served_events`; the module docstring)."""
        event = served_events.upstream(message)
        source = self._objects.get(id(route), {}).get(event.device) if event else None
        iserver = self.server.iserver if self.server is not None else None
        if event is None or source is None or iserver is None:
            self.foreign_events.dropped_if_foreign(message)  # not ours to serve: counted
            return
        served = self._notifying(iserver, source)
        await served.fire(event, source, iserver.subscription_service, route)

    def _notifying(self, iserver: InternalServer, source: ua.NodeId) -> _ServedEvents:
        """``source`` (a device's object) as an event notifier; the first one makes the where
        clauses subtype-aware and ConditionRefresh ours."""
        served = self.served
        if served is None:
            served = self.served = _ServedEvents(_node_id(ObjectIds.Server), self.namespace_index)
            self._refresh_both(iserver)
            alarms.install(iserver.subscription_service)
        if source not in served.notifiers:
            _Builder(iserver.aspace, self.namespace_index).notifier(served.server_object, source)
            served.notifiers.add(source)
        return served

    def _serve_events_of_bridges(self, iserver: InternalServer) -> None:
        """The objects of the devices whose events the bridges carry are notifiers from the
        start: a client may subscribe to one before its first event."""
        for bridge in self.bridges:
            objects = self._objects.get(id(bridge.config.route), {})
            for device in bridge.event_devices():
                if (source := objects.get(device)) is not None:
                    self._notifying(iserver, source)

    def _refresh_both(self, iserver: InternalServer) -> None:
        """ConditionRefresh of the anomaly alarms' and the re-served conditions together."""
        parts = [p for p in (self.alarms, self.served) if p is not None]

        async def refresh(parent: ua.NodeId, *args: ua.Variant) -> ua.StatusCode:
            return await alarms.refresh(parts, iserver.subscription_service, *args)

        for method in alarms.REFRESH_METHODS:
            iserver.aspace.add_method_callback(_node_id(method), refresh)

    def _source_time(self, ts: float) -> ua.DateTime:
        # The samples of one poll share a timestamp: convert it once.
        cached_ts, cached = self._ts_cache
        if ts != cached_ts:
            cached = cast("ua.DateTime", datetime.fromtimestamp(ts, UTC))
            self._ts_cache = (ts, cached)
        return cached

    # -- writes

    async def client_write(
        self,
        session: InternalSession,
        params: ua.WriteParameters,
        others: Callable[[ua.WriteParameters], Any],
    ) -> list[ua.StatusCode]:
        """Answer a Write request: our variables through the bridges, what asyncua would answer
        wrongly here, the rest via asyncua."""
        items = params.NodesToWrite
        results: list[ua.StatusCode] = [status(Codes.Good)] * len(items)
        ours: list[int] = []
        theirs: list[int] = []
        for i, wv in enumerate(items):
            if wv.NodeId in self.vars:
                ours.append(i)
            elif (refused := self._refuse_other(session, wv)) is not None:
                results[i] = status(refused)
            else:
                theirs.append(i)
        if theirs:
            answered = await others(ua.WriteParameters(NodesToWrite=[items[i] for i in theirs]))
            for i, code in zip(theirs, answered, strict=True):
                results[i] = code
        codes = await asyncio.gather(*(self._write_one(session, items[i]) for i in ours))
        for i, code in zip(ours, codes, strict=True):
            results[i] = status(code)
        return results

    def _refuse_other(self, session: InternalSession, wv: ua.WriteValue) -> int | None:
        """The status of a write to a node that is not one of our variables, or None to let
        asyncua try it (only a Value that this user could write)."""
        node = session.aspace.get(wv.NodeId)
        if node is None:
            return Codes.BadNodeIdUnknown
        if wv.AttributeId not in node.attributes:
            return Codes.BadAttributeIdInvalid
        # asyncua writes other attributes only for its Admin role, which no remote client has
        if wv.AttributeId != AttributeIds.Value:
            return Codes.BadNotWritable
        if not (_value_of(node, AttributeIds.AccessLevel) or 0) & _CURRENT_WRITE:
            return Codes.BadNotWritable
        user_level = _value_of(node, AttributeIds.UserAccessLevel) or 0
        if not self.may_write(session.user) or not user_level & _CURRENT_WRITE:
            return Codes.BadUserAccessDenied
        return None

    def may_write(self, user: User) -> bool:
        """Whether ``user`` may write at all (anonymous and read-only users may not)."""
        return user.role is UserRole.Admin or (
            user.role is UserRole.User and user.name not in self._read_only
        )

    async def _write_one(self, session: InternalSession, wv: ua.WriteValue) -> int:
        var = self.vars[wv.NodeId]
        try:
            value = self._check_write(session, var, wv)
        except _Refused as refused:
            log.warning(
                "%s: write %s/%s refused: %s", self.name, var.device, var.spec.name, refused
            )
            return self._count(refused.code)
        origin = _origin(session)
        try:
            # The router times the device out itself, and the command carries the same deadline,
            # so a write reported as timed out is never applied later.
            result = await var.bridge.write(
                var.device,
                var.spec.name,
                value,
                origin=origin,
                ack_timeout=self.config.write_timeout,
            )
        except Exception:  # a bug behind the bridge must not fail the other items of the request
            log.exception("%s: write %s/%s failed", self.name, var.device, var.spec.name)
            return self._count(Codes.BadInternalError)
        return self._count(WRITE_STATUS.get(result.status, Codes.BadInternalError))

    async def call_served(
        self, session: InternalSession, method: ua.CallMethodRequest, kept: served_events.Condition
    ) -> ua.CallMethodResult:
        """A condition method on a re-served alarm, made by its device (the module docstring)."""
        name = alarms.CONDITION_METHODS.get(method.MethodId)
        if name is None:
            return self._call_refused(Codes.BadMethodInvalid, "that method", kept, "")
        user = session.user.name or session.user.role.name.lower()
        if not self.may_write(session.user):
            why = f"{user} may only read"
            return self._call_refused(Codes.BadUserAccessDenied, name, kept, why)
        route = kept.route
        bridge = next((b for b in self.bridges if b.config.route is route), None)
        writable = route.writable if isinstance(route, OpcuaServerRoute) else True  # its default
        if bridge is None or not writable:
            why = "its bridge's route has writable: false"
            return self._call_refused(Codes.BadNotExecutable, name, kept, why)
        args = alarms.arguments(method.InputArguments)
        if isinstance(args, ua.CallMethodResult):
            return args
        event_id, comment = args
        upstream_event = kept.upstream_event(event_id)
        origin = _origin(session)
        call = ConditionCall(name, kept.upstream_id, upstream_event, comment.Text or "", origin)
        try:
            result = await bridge.call_condition(
                kept.device, call, ack_timeout=self.config.write_timeout
            )
        except Exception:  # a bug behind the bridge must not fail the other calls
            log.exception("%s: %s on %s failed", self.name, name, kept.device)
            return self._call_refused(Codes.BadInternalError, name, kept, "internal error")
        if not result.ok:  # the device's own status, else the write path's
            code = result.code if result.code is not None else WRITE_STATUS[result.status]
            return self._call_refused(code, name, kept, result.reason)
        self.acks_forwarded += 1
        log.info(
            "%s: %s by %s on %s/%s forwarded: Good", self.name, name, user, kept.device,
            kept.upstream_id,
        )  # fmt: skip
        return ua.CallMethodResult(StatusCode=status(Codes.Good))

    def _call_refused(
        self, code: int, name: str, kept: served_events.Condition, why: str
    ) -> ua.CallMethodResult:
        """Count and log (at warning level once per status) a refused condition call."""
        self.acks_refused += 1
        text = status(code).name
        level = logging.DEBUG if text in self._refusals_said else logging.WARNING
        self._refusals_said.add(text)
        log.log(
            level, "%s: %s on %s/%s refused: %s%s", self.name, name, kept.device,
            kept.upstream_id, text, f" ({why})" if why else "",
        )  # fmt: skip
        return ua.CallMethodResult(StatusCode=status(code))

    def _check_write(self, session: InternalSession, var: _Var, wv: ua.WriteValue) -> Value:
        if wv.AttributeId not in session.aspace[var.nodeid].attributes:
            raise _Refused(Codes.BadAttributeIdInvalid, f"no attribute {wv.AttributeId}")
        if wv.AttributeId != AttributeIds.Value or not var.writable:
            raise _Refused(Codes.BadNotWritable, "not writable")
        user = session.user
        if not self.may_write(user):
            raise _Refused(Codes.BadUserAccessDenied, f"user {user.name!r} may only read")
        if wv.IndexRange:
            raise _Refused(Codes.BadWriteNotSupported, "index ranges on a scalar")
        dv = wv.Value
        if dv is None or dv.Value is None:
            raise _Refused(Codes.BadTypeMismatch, "no value")
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            raise _Refused(Codes.BadWriteNotSupported, "writing a status code")
        return accept_value(var, dv.Value)

    def _count(self, code: int) -> int:
        if code == Codes.Good:
            self.writes_ok += 1
        else:
            name = status(code).name
            self.writes_refused[name] = self.writes_refused.get(name, 0) + 1
        return code

    # -- status

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint_url,
            "sessions": sum(1 for s in self.sessions if s.is_activated()),
            "variables": len(self.vars),
            "updates": self.updates,
            "writes_ok": self.writes_ok,
            "writes_refused": dict(self.writes_refused),
            "logins_refused": self._users.refused if self._users is not None else 0,
            "certificates_refused": self.trust.refused if self.trust is not None else 0,
            "events_dropped": self.foreign_events.dropped,  # events it cannot serve
            "events_served": self.served.count if self.served is not None else 0,
            "acks_forwarded": self.acks_forwarded,
            "acks_refused": self.acks_refused,
            **self.historian.status(),
            **(self.alarms.status() if self.alarms is not None else {}),
        }
