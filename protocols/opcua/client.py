"""OPC UA client adapter: a remote server's variables become points, by subscription.

One session, one subscription, one monitored item per point. The parts worth knowing:

Fast path. asyncua's high-level ``Subscription`` turns every changed value into an event object
and, with a handler, an asyncio task; at thousands of items per second that per-value machinery
is the lag users report. This adapter talks to the session's raw services instead
(``create_subscription`` with our own publish callback, ``create_monitored_items``): the client
handle of a monitored item is the index of its point, and one publish response becomes one bus
message, built in one loop with no await per value. The callback awaits the bus once per
response, so a full ``block`` subscriber slows the publish loop (the server then queues, and
its queues drop the oldest values) instead of growing memory here.

Batches. Items are created ``subscription.batch_size`` per CreateMonitoredItems request (servers
cap the operations per call, and one request for 10,000 items can outgrow the server's message
size or the request timeout). Browse paths are translated and DataTypes read in batches of the
same size.

Types. Each node's DataType is read once per connection: writes use its Variant type, and a
point without a configured ``type`` takes the matching bus type (Double -> float64, Boolean ->
bool, ...). ``points()`` says float64 until then; its list is updated in place and re-declared
to the command router, so that a bool write to a Boolean node passes the router's type check.

Losing the server. Three signals, whichever comes first: asyncua's connection supervisor
(socket closed, or its periodic read of ServerStatus failing), a bad StatusChangeNotification in
a publish response (the server dropped the subscription), and our own watchdog: no publish
response at all, data or keep-alive, for twice the keep-alive interval plus a request timeout.
The loss marks every point bad once ("connection lost"); reconnecting uses the shared capped,
jittered backoff and builds everything again from a new session: a new subscription always
sends each item's current value first, so a change made while we were away, or right after the
server came back, is not missed. asyncua's own auto-reconnect is off: it would retry on its own
schedule, outside our backoff and our view of the points' quality.

Events. With ``events:`` one more monitored item, on the notifier node's EventNotifier, with
the event filter of `protocols.opcua.events`: each event is one EVENT message on the device's
telemetry topic. After each subscribe ConditionRefresh has the server send its retained alarms
again, marked ``event.refresh`` (RefreshStart..RefreshEnd); a condition retained before that
the refresh did not send again is gone, and goes out once more with ``event.retain`` false
(`events.LiveConditions`, counted as ``conditions_gone``). An item or where clause the server
refuses is ``events_error`` in the status and a warning; the points go on without it. An
operator's Acknowledge, Confirm or AddComment on a re-served alarm (`gateway.conditions`) is
called on the server's condition, with its answer; refused at once while disconnected.

Security. ``verify_server`` (the default) hands asyncua the trust list of ``protocols.opcua.pki``
as its certificate validator: the session is refused before our user credentials are sent if
the server's certificate is not in the trusted folder (a copy lands in ``rejected`` for an
operator to move). Turning it off logs a warning once. The trust list warns once per refused
certificate (the retries with it go to debug level) until it accepts that certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from gateway.adapter import Adapter, AdapterContext, raise_if_cancelling
from gateway.backoff import BackoffTimer
from gateway.commands import WriteRefused, WriteStatus, serve_commands
from gateway.conditions import CallResult, ConditionCall
from gateway.conditions import serve as serve_condition_calls
from gateway.limits import Limits
from gateway.paths import state_path
from gateway.text import counted
from gateway.transform import DeadbandFilter
from gateway.types import Message, PointSpec, Quality, Sample, Value
from protocols.opcua.config import OpcuaClient, OpcuaPoint
from protocols.opcua.events import (
    QUEUE_OVERFLOW,
    REFRESH_END,
    REFRESH_START,
    EventFields,
    LiveConditions,
    condition_call,
    condition_refresh,
    extra_fields,
    filter_problem,
    setup_problem,
)
from protocols.opcua.pki import (
    TrustList,
    ensure_certificate,
    load_certificate,
    load_private_key,
    load_trust_store,
)
from protocols.opcua.types import INT_RANGES
from protocols.opcua.types import VARIANT_TYPES as DECLARED_TYPES

log = logging.getLogger(__name__)


class _Expected(logging.Filter):
    """Drop asyncua's error lines for what this adapter handles and reports itself, once, with
    the device name: the publish loop's traceback when the connection drops, and a session
    refused by our own certificate check."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("create_session fault response"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            str(record.msg).startswith("Publish iteration crashed")
            and isinstance(exc, (ConnectionError, OSError, UaStatusCodeError))
        )


# asyncua logs every failed connect, dropped socket and retry at info or warning level; this
# adapter reports them itself. Errors of the library still show, but not the expected ones.
if logging.getLogger("asyncua").level == logging.NOTSET:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
for _name in ("asyncua.client.ua_session.UaSession", "asyncua.client.client"):
    logging.getLogger(_name).addFilter(_Expected())

T = TypeVar("T")

VT = ua.VariantType
# Built-in DataType node ids (namespace 0) -> (type on the bus, Variant type of writes).
BUILTIN_TYPES: dict[int, tuple[str, ua.VariantType]] = {
    ObjectIds.Boolean: ("bool", VT.Boolean),
    ObjectIds.SByte: ("int16", VT.SByte),
    ObjectIds.Byte: ("uint16", VT.Byte),
    ObjectIds.Int16: ("int16", VT.Int16),
    ObjectIds.UInt16: ("uint16", VT.UInt16),
    ObjectIds.Int32: ("int32", VT.Int32),
    ObjectIds.UInt32: ("uint32", VT.UInt32),
    ObjectIds.Int64: ("int64", VT.Int64),
    ObjectIds.UInt64: ("uint64", VT.UInt64),
    ObjectIds.Float: ("float32", VT.Float),
    ObjectIds.Double: ("float64", VT.Double),
    ObjectIds.String: ("string", VT.String),
    ObjectIds.DateTime: ("string", VT.DateTime),
    ObjectIds.LocalizedText: ("string", VT.LocalizedText),
}
FLOAT32_MAX = 3.4028234663852886e38

SC = StatusCodes
WRITE_STATUS: dict[int, WriteStatus] = {
    SC.BadNotWritable: WriteStatus.NOT_WRITABLE,
    SC.BadUserAccessDenied: WriteStatus.NOT_WRITABLE,
    SC.BadOutOfRange: WriteStatus.OUT_OF_RANGE,
    SC.BadTypeMismatch: WriteStatus.BAD_VALUE,
    SC.BadTimeout: WriteStatus.TIMEOUT,
    SC.BadRequestTimeout: WriteStatus.TIMEOUT,
    SC.BadServerNotConnected: WriteStatus.UNREACHABLE,
    SC.BadConnectionClosed: WriteStatus.UNREACHABLE,
    SC.BadSecureChannelClosed: WriteStatus.UNREACHABLE,
    SC.BadSessionClosed: WriteStatus.UNREACHABLE,
    SC.BadSessionIdInvalid: WriteStatus.UNREACHABLE,
    SC.BadNotConnected: WriteStatus.UNREACHABLE,
}
# A monitored item whose deadband filter the server will not take is created without it and
# filtered here instead (a percent deadband needs an EURange many servers do not have).
FILTER_REFUSED = {
    SC.BadFilterNotAllowed,
    SC.BadMonitoredItemFilterUnsupported,
    SC.BadMonitoredItemFilterInvalid,
    SC.BadDeadbandFilterInvalid,
}
SEVERITY = 0xC0000000
UNCERTAIN = 0x40000000
KEEPALIVE_SECONDS = 5.0  # a publish response (data or keep-alive) at least this often
LIFETIME_KEEPALIVES = 6  # the server drops a subscription nobody asked about for this many
PLAIN = frozenset({bool, int, float, str, type(None)})
_F32 = struct.Struct("<f")


def status_name(code: int) -> str:
    return ua.StatusCode(ua.UInt32(code)).name


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def parse_browse_path(path: str) -> ua.RelativePath:
    """``"2:Plant/2:Boiler/2:Temp"`` (from Objects, hierarchical references) as a RelativePath."""
    elements = []
    for part in path.strip("/").split("/"):
        elements.append(
            ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences)),
                IsInverse=False,  # type: ignore[arg-type]
                IncludeSubtypes=True,  # type: ignore[arg-type]
                TargetName=ua.QualifiedName.from_string(part),
            )
        )
    return ua.RelativePath(Elements=elements)


def shorten_float32(value: float) -> float:
    """A Float widened to a Python float has digits the device never had (1.1 arrives as
    1.100000023841858): return the shortest decimal that is still the same float32."""
    if not math.isfinite(value):
        return value
    raw = _F32.pack(value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if _F32.pack(candidate) == raw:
            return candidate
    return value


def plain(value: Any) -> Value:
    """A value the bus carries (bool, int, float, str or None) from any Variant content."""
    if type(value) in PLAIN:
        return value  # type: ignore[no-any-return]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ua.StatusCode):
        return value.name
    return str(value)


class OpcuaWriteError(WriteRefused):
    """A write was refused by the server or could not be delivered."""


@dataclass(slots=True)
class _Point:
    config: OpcuaPoint
    handle: int  # client handle of its monitored item: its index in the adapter's list
    node_id: ua.NodeId | None = None  # resolved (browse paths: after each connect)
    variant: ua.VariantType | None = None  # from the node's DataType, for writes
    float32: bool = False
    local: DeadbandFilter | None = None  # only when the server refused the deadband filter
    monitored: bool = False
    error: str | None = field(default=None)  # why this point alone cannot be monitored
    limits: Limits | None = None  # low..high check of readings; None: nothing to check

    @property
    def name(self) -> str:
        return self.config.name


class ConnectFailed(Exception):
    """`OpcuaClientAdapter.connected` could not connect; the message says why and what to do."""


class _Session:
    """One connection's state; callbacks of an old client find their session closed."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lost = asyncio.Event()
        self.reason = "connection lost"
        self.subscription_id: int | None = None
        self.closed = False

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()


class OpcuaClientAdapter(Adapter):
    config: OpcuaClient

    def __init__(self, name: str, config: OpcuaClient, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self._points = [_Point(p, i, limits=Limits.of(p)) for i, p in enumerate(config.points)]
        self._by_name = {p.name: p for p in self._points}
        for p in self._points:
            if p.config.node_id is not None:
                try:
                    p.node_id = ua.NodeId.from_string(p.config.node_id)
                except (ValueError, UaError) as exc:
                    p.error = f"bad node id {p.config.node_id!r}: {exc}"
            if p.config.type is not None:
                p.variant = DECLARED_TYPES[p.config.type]
                p.float32 = p.config.type == "float32"
        # One list, updated in place when the nodes' DataTypes are learned, so that whoever
        # kept it (the command router, bridges) sees the types too.
        self._specs = [self._spec(p, p.config.type or "float64") for p in self._points]
        self._writable = any(
            p.config.access is not None and p.config.access.writable for p in self._points
        )
        sub = config.subscription
        self._keepalive_count = max(1, math.ceil(KEEPALIVE_SECONDS / sub.publishing_interval))
        keepalive_s = self._keepalive_count * sub.publishing_interval
        self._stale_after = 2 * keepalive_s + config.timeout
        self._session: _Session | None = None
        self._connected = False
        self._all_bad = False
        self._down_reason = "not connected yet"
        self._last_publish = 0.0
        self._trust: TrustList | None = None
        self._application_uri = f"urn:protocol-brain:{context.gateway_name}:{name}"
        self._warned_insecure = False
        self._events: EventFields | None = None
        self._event_handle = len(self._points)  # after the points' handles
        self._refreshing = False  # between a ConditionRefresh's RefreshStart and RefreshEnd
        self._live = LiveConditions()  # the retained conditions forwarded, for the refresh
        if config.events is not None:
            self._events = EventFields(name, extra_fields(config.events.fields))
        self.counters = {
            "items": 0,  # monitored items: the points' and the event item
            "create_requests": 0,
            "publishes": 0,
            "notifications": 0,
            "reconnects": 0,
            "writes": 0,
            "events": 0,  # forwarded to the bus
            "events_dropped": 0,  # lost: the server's queue overflowed, or malformed
            "condition_refreshes": 0,
            "conditions_gone": 0,  # retained before a reconnect, not sent again by its refresh
            "condition_calls": 0,  # operators' Acknowledge/Confirm/AddComment made upstream
        }
        self.last_error: str | None = None
        self.events_error: str | None = None  # why events are not subscribed

    # -- metadata -------------------------------------------------------------------------

    def _spec(self, p: _Point, datatype: str) -> PointSpec:
        cfg = p.config
        return PointSpec.of(self.name, cfg, datatype)

    def points(self) -> list[PointSpec]:
        return self._specs

    def status(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "url": self.config.url,
            "last_error": self.last_error,
            **self.counters,
            "events_error": self.events_error,
        }

    # -- lifecycle ------------------------------------------------------------------------

    async def __aexit__(self, *exc: object) -> None:
        await self._end_session(self._session)
        if self._trust is not None:
            self._trust.close()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_subscribed())
            if self._writable:
                tg.create_task(serve_commands(self.bus, self.name, self.write_and_read_back))
            if self._events is not None:
                tg.create_task(serve_condition_calls(self.bus, self.name, self.call_condition))

    async def _keep_subscribed(self) -> None:
        backoff = BackoffTimer(self.config.reconnect)
        url = self.config.url
        quiet = False  # after the first failure of an outage, retries log at debug level
        while True:
            refused = self._trust.refused if self._trust is not None else 0
            try:
                session = await self._start_session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelling()  # a cancel that asyncio.wait_for swallowed
                ours = self._trust is not None and self._trust.refused > refused
                short, detail = self._explain(exc, refused_by_us=ours)
                self.last_error = detail
                self._down_reason = short
                await self._mark_all_bad(short)
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "%s: cannot connect to %s: %s; retrying with backoff",
                    self.name,
                    url,
                    detail,
                )
                quiet = True
                await asyncio.sleep(backoff.next_delay())
                self.counters["reconnects"] += 1
                continue
            if quiet:
                log.info("%s: connected to %s", self.name, url)
            quiet = False
            backoff.reset()
            try:
                reason = await self._watch(session)
            except BaseException:
                # A crash here, or a cancel because the command task crashed, ends run(), and
                # the runtime starts it again: this session must not stay open on the server
                # beside the next one (its client's watchdog would keep it alive for good).
                # Closed in this task, not in run()'s: on Python 3.11 a TaskGroup whose child
                # failed leaves its parent task "cancelling", which `_close` would take for a
                # cancel of its own.
                await self._end_session(session)
                raise
            self._down_reason = reason
            self.last_error = reason
            log.warning("%s: %s (%s); reconnecting", self.name, reason, url)
            await self._end_session(session)
            await self._mark_all_bad("connection lost")
            quiet = True
            self.counters["reconnects"] += 1

    async def _start_session(self) -> _Session:
        client = await self._new_client()
        session = _Session(client)

        async def on_lost(exc: Exception) -> None:
            if isinstance(exc, TimeoutError):
                why = f"no answer to the watchdog in {self.config.timeout + 1:g} s"
            else:
                why = str(exc) or type(exc).__name__
            session.lose(f"connection lost: {why}")

        client.connection_lost_callback = on_lost
        try:
            await asyncio.wait_for(client.connect(), self.config.timeout * 2)
            raise_if_cancelling()
            self._session = session
            self._down_reason = "connecting"
            await self._resolve(client)
            await self._learn_types(client)
            self._connected = True  # writes may go from here on
            await self._subscribe(session)
        except BaseException:
            await self._end_session(session)
            raise
        self._all_bad = False
        self.last_error = None
        return session

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[Client]:
        """A client connected exactly as ``run()`` connects (security policy and mode, our
        certificate, the server trust list, the user), for one-off use such as onboarding's
        browse; disconnected on exit. A failure is `ConnectFailed` with the words ``run()``
        would log (how to trust a rejected server certificate, a refused user...)."""
        session: _Session | None = None
        try:
            try:
                session = _Session(await self._new_client())
                await asyncio.wait_for(session.client.connect(), self.config.timeout * 2)
            except Exception as exc:
                refused_by_us = self._trust is not None and self._trust.refused > 0
                raise ConnectFailed(self._explain(exc, refused_by_us=refused_by_us)[1]) from None
            yield session.client
        finally:
            if session is not None:
                await self._close(session)

    async def __aenter__(self) -> OpcuaClientAdapter:
        # A damaged certificate or key is a start error naming the file, not a connect error
        # retried for ever.
        if self.config.security.policy != "None":
            await self._own_keys()
        clear = self.config.password_in_clear()
        if clear is not None:
            log.warning("%s: security.%s", self.name, clear)
        return self

    async def _own_keys(self) -> tuple[Path, Path, str]:
        """Our certificate and key files (checked readable) and the application URI to use:
        the configured certificate's own, or ours for the generated one."""
        sec = self.config.security
        if sec.certificate is not None and sec.private_key is not None:
            cert, key = Path(sec.certificate), Path(sec.private_key)
            uris = _certificate_uris(load_certificate(cert))
            load_private_key(key)  # asyncua's own message would name no file
            return cert, key, uris[0] if uris else self._application_uri
        cert, key = await ensure_certificate(
            state_path(sec.pki_dir, self.name), self._application_uri, socket.gethostname()
        )
        return cert, key, self._application_uri

    async def _new_client(self) -> Client:
        cfg = self.config
        # The watchdog reads ServerStatus every interval, with the interval as its timeout: a
        # hung server is noticed within two, and a slow request still gets its own timeout
        # (a write says "timeout", not "connection lost").
        client = Client(cfg.url, timeout=cfg.timeout, watchdog_intervall=cfg.timeout + 1)
        client.name = f"Protocol Brain {self.context.gateway_name}/{self.name}"
        client.description = client.name
        client.product_uri = "urn:protocol-brain"
        client.application_uri = self._application_uri
        client.session_timeout = 60_000
        if cfg.username is not None:
            client.set_user(cfg.username)
            client.set_password(cfg.password or "")
        sec = cfg.security
        if sec.policy == "None":
            return client
        pki_dir = state_path(sec.pki_dir, self.name)
        cert, key, uri = await self._own_keys()
        client.application_uri = uri
        if sec.verify_server:
            if self._trust is None:
                self._trust = load_trust_store(pki_dir, sec.trusted_servers, peer="server")
            client.certificate_validator = self._trust
        elif not self._warned_insecure:
            self._warned_insecure = True
            log.warning(
                "%s: security.verify_server is false: the certificate of %s is NOT checked, "
                "so anyone who can reach this network can pose as that server",
                self.name,
                cfg.url,
            )
        policy = getattr(security_policies, "SecurityPolicy" + sec.policy.replace("_", ""))
        mode = getattr(ua.MessageSecurityMode, sec.mode)
        # Without a server certificate asyncua fetches it from the endpoints (a connection to
        # the server, hence here and not in __aenter__); the trust list checks it at session
        # creation, before anything secret is sent.
        await asyncio.wait_for(
            client.set_security(policy, str(cert), str(key), mode=mode), cfg.timeout * 2
        )
        raise_if_cancelling()
        der = getattr(client.security_policy, "peer_certificate", None)
        if self._trust is not None and sec.verify_server and der:
            # Checked before the session as well: a server that refuses our certificate at
            # CreateSession (ours does) answers before asyncua's check of its own, and the
            # operator would not learn that we refuse it too, nor find it in rejected/.
            try:
                self._trust.check(x509.load_der_x509_certificate(der))
            except ServiceError as exc:
                raise UaStatusCodeError(exc.code) from None  # type: ignore[no-untyped-call]
        return client

    async def _end_session(self, session: _Session | None) -> None:
        """No session from here on (writes are refused as unreachable); close ``session``,
        on the server too."""
        self._connected = False
        self._session = None
        if session is not None:
            await self._close(session)

    async def _close(self, session: _Session) -> None:
        if session.closed:
            return
        session.closed = True
        try:
            await asyncio.wait_for(session.client.disconnect(), self.config.timeout)
        except asyncio.CancelledError:
            session.client.disconnect_socket()
            raise
        except Exception as exc:  # a dead peer: the socket is gone either way
            log.debug("%s: disconnect: %r", self.name, exc)
            session.client.disconnect_socket()
        raise_if_cancelling()

    def _explain(self, exc: BaseException, *, refused_by_us: bool) -> tuple[str, str]:
        """(short reason for the points, detail for last_error and the log)."""
        sec = self.config.security
        if isinstance(exc, UaStatusCodeError):
            code = exc.code
            name = status_name(code)
            if refused_by_us and self._trust is not None:
                return "certificate untrusted", (
                    f"server certificate untrusted ({name}): to trust it, copy it from "
                    f"{self._trust.rejected} into {self._trust.trusted}"
                )
            if code in (
                SC.BadIdentityTokenRejected,
                SC.BadIdentityTokenInvalid,
                SC.BadUserAccessDenied,
            ):
                return "user refused", f"server refused user {self.config.username!r} ({name})"
            if name.startswith("BadCertificate") or code == SC.BadSecurityChecksFailed:
                return "security refused", (
                    f"server refused our certificate or security settings ({name}); the server "
                    f"may need ours in its trust list ({state_path(sec.pki_dir, self.name)}/own)"
                )
            return name, f"{name}: {exc}"
        if isinstance(exc, TimeoutError):
            return "timeout", f"no answer in {self.config.timeout * 2:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused", f"connection refused: {exc}"
        if isinstance(exc, OSError):
            return "unreachable", f"{type(exc).__name__}: {exc}"
        text = str(exc) or type(exc).__name__
        if "No matching endpoints" in text:
            return "no such endpoint", f"server offers no {sec.policy} {sec.mode} endpoint"
        return "connect failed", f"{type(exc).__name__}: {text}"

    async def _watch(self, session: _Session) -> str:
        """Wait until the session is lost; return why."""
        loop = asyncio.get_running_loop()
        self._last_publish = loop.time()
        while True:
            try:
                await asyncio.wait_for(session.lost.wait(), 1.0)
            except TimeoutError:
                pass
            raise_if_cancelling()
            if session.lost.is_set():
                return session.reason
            silent = loop.time() - self._last_publish
            if silent > self._stale_after:
                return f"no publish response for {silent:.0f} s"

    # -- setting up ----------------------------------------------------------------------

    async def _resolve(self, client: Client) -> None:
        """Translate browse paths to node ids (every connect: a restarted server may differ)."""
        todo = [p for p in self._points if p.config.browse_path is not None]
        objects = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
        for chunk in batched(todo, self.config.subscription.batch_size):
            paths = []
            for p in chunk:
                try:
                    rel = parse_browse_path(p.config.browse_path or "")
                except (ValueError, UaError) as exc:
                    rel = ua.RelativePath()
                    p.error = f"bad browse path {p.config.browse_path!r}: {exc}"
                paths.append(ua.BrowsePath(StartingNode=objects, RelativePath=rel))
            results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
            raise_if_cancelling()
            for p, result in zip(chunk, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    p.node_id = result.Targets[0].TargetId
                    p.error = None
                elif p.error is None or p.error.startswith("browse path"):
                    p.node_id = None
                    p.error = f"browse path {p.config.browse_path!r}: {result.StatusCode.name}"

    async def _learn_types(self, client: Client) -> None:
        """Read every node's DataType: the Variant type of writes, the bus type of values."""
        todo = [p for p in self._points if p.node_id is not None]
        changed = False
        for chunk in batched(todo, self.config.subscription.batch_size):
            params = ua.ReadParameters(
                NodesToRead=[
                    ua.ReadValueId(NodeId=p.node_id, AttributeId=AttributeIds.DataType)
                    for p in chunk
                ]
            )
            values = await client.uaclient.read(params)
            raise_if_cancelling()
            for p, dv in zip(chunk, values, strict=True):
                status = dv.StatusCode
                if status is not None and not status.is_good():
                    p.error = f"node {p.config.node_id or p.config.browse_path}: {status.name}"
                    continue
                p.error = None
                type_id = dv.Value.Value if dv.Value is not None else None
                known = None
                if isinstance(type_id, ua.NodeId) and type_id.NamespaceIndex == 0:
                    ident = type_id.Identifier
                    known = BUILTIN_TYPES.get(ident) if isinstance(ident, int) else None
                if known is None:
                    continue  # keep the declared type; a write reads the value's own type
                datatype, variant = known
                if p.config.type is not None and p.config.type != datatype:
                    log.warning(
                        "%s/%s: declared type %s, but the node's DataType is %s (%s)",
                        self.name,
                        p.name,
                        p.config.type,
                        variant.name,
                        datatype,
                    )
                p.variant = variant
                p.float32 = variant is VT.Float
                if p.config.type is None and self._specs[p.handle].datatype != datatype:
                    self._specs[p.handle] = replace(self._specs[p.handle], datatype=datatype)
                    changed = True
        if changed:
            # The router checks writes against the point types (a bool goes only to a bool).
            self.context.router.declare(self.name, self._specs)

    def _item_request(self, p: _Point, with_filter: bool) -> ua.MonitoredItemCreateRequest:
        cfg = p.config
        sub = self.config.subscription
        flt = None
        db = cfg.deadband
        if with_filter and db is not None and (db.absolute or db.percent):
            absolute = db.absolute is not None and db.absolute > 0
            flt = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute if absolute else ua.DeadbandType.Percent,
                DeadbandValue=float(db.absolute if absolute else db.percent),  # type: ignore[arg-type]
            )
        sampling = -1.0 if cfg.sampling_interval is None else cfg.sampling_interval * 1000
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=p.node_id, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=p.handle,
                SamplingInterval=sampling,
                Filter=flt,
                QueueSize=sub.queue_size,
                DiscardOldest=True,
            ),
        )

    async def _subscribe(self, session: _Session) -> None:
        """One subscription; monitored items in batches; per-point failures mark that point."""
        client = session.client
        sub = self.config.subscription
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=sub.publishing_interval * 1000,
            RequestedLifetimeCount=self._keepalive_count * LIFETIME_KEEPALIVES,
            RequestedMaxKeepAliveCount=self._keepalive_count,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )

        async def on_publish(result: ua.PublishResult) -> None:
            if session is self._session:
                await self._on_publish(session, result)

        created = await client.uaclient.create_subscription(params, on_publish)
        raise_if_cancelling()
        session.subscription_id = created.SubscriptionId
        for p in self._points:
            p.monitored = False
            p.local = None
        todo = [p for p in self._points if p.node_id is not None and p.error is None]
        refused_filter: list[_Point] = []
        for p, status in await self._create_items(session, todo, with_filter=True):
            if status.is_good():
                p.monitored = True
            elif status.value in FILTER_REFUSED:
                refused_filter.append(p)
            else:
                p.error = f"monitored item refused: {status.name}"
        for p, status in await self._create_items(session, refused_filter, with_filter=False):
            if status.is_good():
                p.monitored = True
                p.local = _local_deadband(p.config)
                log.info(
                    "%s/%s: server refused the deadband filter; filtering here", self.name, p.name
                )
            else:
                p.error = f"monitored item refused: {status.name}"
        self.counters["items"] = sum(p.monitored for p in self._points)
        failed = [p for p in self._points if p.error is not None]
        if failed:
            now = time.time()
            await self.bus.publish(
                Message.telemetry(
                    self.name,
                    tuple(
                        Sample(p.name, None, Quality.BAD, now, now, p.config.unit, p.error)
                        for p in failed
                    ),
                )
            )
            log.warning(
                "%s: %d of %s cannot be monitored, e.g. %s: %s",
                self.name,
                len(failed),
                counted(len(self._points), "point"),
                failed[0].name,
                failed[0].error,
            )
        await self._subscribe_events(session)

    async def _subscribe_events(self, session: _Session) -> None:
        """The event item, then ConditionRefresh. What the server refuses is reported in
        ``events_error``, not raised: the points go on without events."""
        cfg, fields = self.config.events, self._events
        if cfg is None or fields is None:
            return
        self._refreshing = False
        node = ua.NodeId.from_string(cfg.node)
        types = [ua.NodeId.from_string(t) for t in cfg.types]
        uaclient = session.client.uaclient
        read = await uaclient.read(
            ua.ReadParameters(
                NodesToRead=[
                    ua.ReadValueId(NodeId=node, AttributeId=AttributeIds.EventNotifier),
                    *(ua.ReadValueId(NodeId=t, AttributeId=AttributeIds.NodeClass) for t in types),
                ]
            )
        )
        raise_if_cancelling()
        problem = setup_problem(node, types, read)
        if problem is not None:
            self._events_failed(problem)
            return
        event_filter = fields.event_filter(types, cfg.min_severity)
        request = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=AttributeIds.EventNotifier),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=self._event_handle,
                SamplingInterval=0.0,
                Filter=event_filter,
                QueueSize=cfg.queue_size,
                DiscardOldest=True,
            ),
        )
        params = ua.CreateMonitoredItemsParameters(
            SubscriptionId=session.subscription_id,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ItemsToCreate=[request],
        )
        self.counters["create_requests"] += 1
        try:
            (result,) = await uaclient.create_monitored_items(params)
        except UaStatusCodeError as exc:  # the whole request refused
            raise_if_cancelling()
            self._events_failed(f"the server refused the event item: {status_name(exc.code)}")
            return
        raise_if_cancelling()
        problem = filter_problem(result.StatusCode, result.FilterResult, event_filter)
        if problem is not None:
            if result.StatusCode.is_good():  # it would deliver what the filter should keep out
                with contextlib.suppress(UaStatusCodeError):
                    await uaclient.delete_monitored_items(
                        ua.DeleteMonitoredItemsParameters(
                            SubscriptionId=session.subscription_id,
                            MonitoredItemIds=[result.MonitoredItemId],
                        )
                    )
                raise_if_cancelling()
            self._events_failed(problem)
            return
        if self.events_error is not None:
            log.info("%s: events of %s subscribed", self.name, cfg.node)  # again, after an error
        self.events_error = None
        self.counters["items"] += 1
        if cfg.refresh:
            await self._condition_refresh(session)

    def _events_failed(self, problem: str) -> None:
        text = f"events: {problem}"
        # every reconnect finds it again: said once until it changes
        level = logging.DEBUG if text == self.events_error else logging.WARNING
        log.log(level, "%s: %s; the points go on without events", self.name, text)
        self.events_error = text

    async def _condition_refresh(self, session: _Session) -> None:
        """Part 9 ConditionRefresh: the server's retained alarms come again (marked refresh)."""
        assert session.subscription_id is not None
        request = condition_refresh(session.subscription_id)
        try:
            (result,) = await session.client.uaclient.call([request])
            code: ua.StatusCode = result.StatusCode
        except UaStatusCodeError as exc:
            code = ua.StatusCode(ua.UInt32(exc.code))
        raise_if_cancelling()
        if code.is_good():
            self.counters["condition_refreshes"] += 1
        else:
            log.info(
                "%s: ConditionRefresh refused (%s): alarms active before the subscription are "
                "not sent again",
                self.name,
                code.name,
            )

    async def _create_items(
        self, session: _Session, points: list[_Point], *, with_filter: bool
    ) -> list[tuple[_Point, ua.StatusCode]]:
        """CreateMonitoredItems, ``batch_size`` items per request."""
        out: list[tuple[_Point, ua.StatusCode]] = []
        for chunk in batched(points, self.config.subscription.batch_size):
            params = ua.CreateMonitoredItemsParameters(
                SubscriptionId=session.subscription_id,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=[self._item_request(p, with_filter) for p in chunk],
            )
            self.counters["create_requests"] += 1
            results: list[
                ua.MonitoredItemCreateResult
            ] = await session.client.uaclient.create_monitored_items(params)
            raise_if_cancelling()
            out.extend((p, r.StatusCode) for p, r in zip(chunk, results, strict=True))
        return out

    # -- the fast path --------------------------------------------------------------------

    async def _on_publish(self, session: _Session, result: ua.PublishResult) -> None:
        """One publish response -> one bus message. No await per value, no task per value."""
        self._last_publish = asyncio.get_running_loop().time()
        data = result.NotificationMessage.NotificationData
        if not data:
            return  # keep-alive
        samples: list[Sample] = []
        events: list[ua.EventFieldList] = []
        for notification in data:
            if type(notification) is ua.DataChangeNotification:
                self._convert(notification.MonitoredItems, samples)
            elif isinstance(notification, ua.EventNotificationList):
                events.extend(notification.Events)
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and not status.is_good():
                    session.lose(f"subscription ended by the server ({status.name})")
        if samples:
            self.counters["publishes"] += 1
            self.counters["notifications"] += len(samples)
            await self.bus.publish(Message.telemetry(self.name, tuple(samples)))
        for event in events:
            await self._on_event(event)

    async def _on_event(self, event: ua.EventFieldList) -> None:
        """One event: forwarded, or a refresh bracket, or word of lost events."""
        fields = self._events
        if fields is None or event.ClientHandle != self._event_handle:
            return
        values = event.EventFields
        kind = fields.kind_of(values)
        if kind == REFRESH_START:
            self._refreshing = True
            self._live.start()
            return
        if kind == REFRESH_END:
            self._refreshing = False
            for gone in self._live.end():
                self.counters["conditions_gone"] += 1
                await self.bus.publish(gone)
            return
        if kind == QUEUE_OVERFLOW:
            self.counters["events_dropped"] += 1
            log.warning(
                "%s: the server's event queue overflowed: events were lost (raise "
                "events.queue_size, or publish more often)",
                self.name,
            )
            return
        message = fields.message(values, refresh=self._refreshing)
        if message is None:
            self.counters["events_dropped"] += 1
            log.warning(
                "%s: an event with %d fields instead of the %d selected: dropped",
                self.name,
                len(values),
                len(fields.fields),
            )
            return
        self.counters["events"] += 1
        self._live.note(message)
        await self.bus.publish(message)

    def _convert(self, items: list[ua.MonitoredItemNotification], out: list[Sample]) -> None:
        """Monitored item values -> samples (the per-value work: keep it flat and cheap)."""
        now = time.time()
        points = self._points
        append = out.append
        for item in items:
            try:
                p = points[item.ClientHandle]
            except IndexError:
                continue
            dv = item.Value
            code = dv.StatusCode.value if dv.StatusCode is not None else 0
            variant = dv.Value
            value = variant.Value if variant is not None else None
            if type(value) not in PLAIN:
                value = plain(value)
            elif p.float32 and type(value) is float:
                value = shorten_float32(value)
            severity = code & SEVERITY
            if severity == 0:
                quality, reason = Quality.GOOD, None
            elif severity == UNCERTAIN:
                quality, reason = Quality.UNCERTAIN, status_name(code)
            else:
                quality, reason = Quality.BAD, status_name(code)
                value = None
            if p.limits is not None:
                quality, reason = p.limits.check(value, quality, reason)
            if p.local is not None and not p.local.accept(value, quality):
                continue
            ts = dv.SourceTimestamp or dv.ServerTimestamp
            source_ts = ts.timestamp() if ts is not None else now
            append(Sample(p.config.name, value, quality, source_ts, now, p.config.unit, reason))

    async def points_lost(self, reason: str) -> None:
        """``run()`` failed (the runtime restarts it): every point Bad, resetting the local
        deadbands, so the values the restarted subscription reports are sent."""
        await self._mark_all_bad(reason)

    async def _mark_all_bad(self, reason: str) -> None:
        """Every point bad, once per outage (not again for each failed retry)."""
        if self._all_bad:
            return
        self._all_bad = True
        self.counters["items"] = 0
        if not self._points:  # events only
            return
        for p in self._points:
            p.monitored = False
            if p.local is not None:
                p.local.reset()
        now = time.time()
        samples = tuple(
            Sample(p.name, None, Quality.BAD, now, now, p.config.unit, reason) for p in self._points
        )
        await self.bus.publish(Message.telemetry(self.name, samples))

    # -- writes ---------------------------------------------------------------------------

    async def write_and_read_back(self, point: str, value: Value) -> None:
        """The command handler: write, then read the node back and publish what it holds now
        (the subscription reports it too, but only after its sampling and publishing delay)."""
        await self.write(point, value)
        p = self._by_name[point]
        session = self._session
        if session is None or p.node_id is None:
            return
        try:
            dv = await asyncio.wait_for(_read_value(session.client, p.node_id), self.config.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the write went through; the subscription will tell
            raise_if_cancelling()
            log.debug("%s/%s: read-back failed: %r", self.name, point, exc)
            return
        raise_if_cancelling()
        samples: list[Sample] = []
        self._convert([ua.MonitoredItemNotification(ClientHandle=p.handle, Value=dv)], samples)
        if samples:
            await self.bus.publish(Message.telemetry(self.name, tuple(samples)))

    async def write(self, point: str, value: Value) -> None:
        """Write one node with the Variant type of its DataType; raise `WriteRefused`."""
        p = self._by_name.get(point)
        if p is None:
            raise OpcuaWriteError(WriteStatus.UNKNOWN_POINT, f"{self.name} has no point {point!r}")
        if p.config.access is None or not p.config.access.writable:
            raise OpcuaWriteError(WriteStatus.NOT_WRITABLE, f"{self.name}/{point} is not writable")
        session = self._session
        if session is None or not self._connected:
            raise OpcuaWriteError(
                WriteStatus.UNREACHABLE, f"{self.name} is unreachable ({self._down_reason})"
            )
        if p.node_id is None:
            raise OpcuaWriteError(WriteStatus.DEVICE_ERROR, f"{self.name}/{point}: {p.error}")
        self.counters["writes"] += 1
        uaclient = session.client.uaclient
        try:
            variant = p.variant
            if variant is None:  # a DataType we do not know: write the type the node holds
                current = await _read_value(session.client, p.node_id)
                variant = current.Value.VariantType if current.Value else VT.Double
            payload = ua.Variant(coerce(value, variant), variant)
            params = ua.WriteParameters(
                NodesToWrite=[
                    ua.WriteValue(
                        NodeId=p.node_id,
                        AttributeId=AttributeIds.Value,
                        # Value only: many servers refuse a write that carries a status or
                        # timestamps (BadWriteNotSupported).
                        Value=ua.DataValue(payload, StatusCode=None),
                    )
                ]
            )
            results = await asyncio.wait_for(uaclient.write(params), self.config.timeout)
        except OpcuaWriteError:
            raise
        except (TimeoutError, ConnectionError, OSError, UaStatusCodeError) as exc:
            raise_if_cancelling()
            raise self._write_failed(point, exc) from None
        raise_if_cancelling()
        code = results[0].value
        if code & SEVERITY:
            raise _refusal(self.name, point, code)

    async def call_condition(self, call: ConditionCall) -> CallResult:
        """An operator's call on one of the server's conditions (`gateway.conditions`), with
        the server's status."""
        session = self._session
        if session is None:
            return CallResult(
                WriteStatus.UNREACHABLE, f"{self.name} is unreachable ({self._down_reason})"
            )
        try:
            request = condition_call(call)
        except (ValueError, UaError):
            why = f"{call.condition!r} is no NodeId"
            return CallResult(WriteStatus.DEVICE_ERROR, why, StatusCodes.BadNodeIdInvalid)
        self.counters["condition_calls"] += 1
        try:
            results = await asyncio.wait_for(
                session.client.uaclient.call([request]), self.config.timeout
            )
            code = results[0].StatusCode.value
        except UaStatusCodeError as exc:
            code = exc.code
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise_if_cancelling()
            failed = self._write_failed(call.condition, exc)
            return CallResult(failed.status, failed.reason)
        raise_if_cancelling()
        log.info(
            "%s: %s on %s (event %s) from %s: %s", self.name, call.method, call.condition,
            call.event_id.hex(), call.origin, status_name(code),
        )  # fmt: skip
        if code & SEVERITY and not code & UNCERTAIN:  # Bad
            return CallResult(WriteStatus.DEVICE_ERROR, f"the answer of {self.name}", code)
        return CallResult(WriteStatus.GOOD)

    def _write_failed(self, point: str, exc: Exception) -> OpcuaWriteError:
        where = f"{self.name}/{point}"
        if isinstance(exc, TimeoutError):
            return OpcuaWriteError(
                WriteStatus.TIMEOUT, f"{where}: no answer in {self.config.timeout:g} s"
            )
        if isinstance(exc, UaStatusCodeError):
            return _refusal(self.name, point, exc.code)
        return OpcuaWriteError(
            WriteStatus.UNREACHABLE, f"{where}: {str(exc) or type(exc).__name__}"
        )


async def _read_value(client: Client, node_id: ua.NodeId) -> ua.DataValue:
    params = ua.ReadParameters(
        NodesToRead=[ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.Value)],
        TimestampsToReturn=ua.TimestampsToReturn.Both,
    )
    values: list[ua.DataValue] = await client.uaclient.read(params)
    return values[0]


def _refusal(device: str, point: str, code: int) -> OpcuaWriteError:
    status = WRITE_STATUS.get(code, WriteStatus.DEVICE_ERROR)
    return OpcuaWriteError(status, f"{device}/{point}: {status_name(code)}")


def coerce(value: Value, variant: ua.VariantType) -> Any:
    """``value`` as the Python value of a ``variant`` Variant, or `OpcuaWriteError` BAD_VALUE."""

    def bad(why: str) -> OpcuaWriteError:
        return OpcuaWriteError(WriteStatus.BAD_VALUE, f"{value!r} {why}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if variant is VT.Boolean:
        if isinstance(value, bool) or (number and value in (0, 1)):
            return bool(value)
        raise bad("is not a bool")
    if variant in INT_RANGES:
        if not number:
            raise bad(f"is not a number ({variant.name})")
        if isinstance(value, float):
            if not value.is_integer():
                raise bad(f"is not a whole number ({variant.name})")
            value = int(value)
        low, high = INT_RANGES[variant]
        if not low <= value <= high:  # type: ignore[operator]
            raise bad(f"does not fit {variant.name}")
        return value
    if variant in (VT.Float, VT.Double):
        if not number:
            raise bad(f"is not a number ({variant.name})")
        if variant is VT.Float and math.isfinite(value) and abs(value) > FLOAT32_MAX:  # type: ignore[arg-type]
            raise bad("does not fit Float")
        return float(value)  # type: ignore[arg-type]
    if variant is VT.String:
        if isinstance(value, str):
            return value
        raise bad("is not a string")
    raise bad(f"cannot be written to a {variant.name} node")


def _local_deadband(cfg: OpcuaPoint) -> DeadbandFilter:
    db = cfg.deadband
    span = None
    if cfg.low is not None and cfg.high is not None and cfg.high > cfg.low:
        span = cfg.high - cfg.low
    return DeadbandFilter(db.absolute if db else None, db.percent if db else None, span)


def _certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


__all__ = ["OpcuaClientAdapter", "OpcuaWriteError", "coerce", "parse_browse_path"]
