"""The gateway as a CoAP client (aiocoap): a device's resources become points.

Points read alike from one resource (the same path, Observe or the same ``poll`` interval, the
same ``format`` and so the same Accept) form a group, read on its own task with one request: one
Observe registration (RFC 7641 expects one per resource and client) or one GET every ``poll``
seconds, so a constrained device answers once, not once per point. Each response is decoded for
every point of the group and published as one message. Requests are confirmable, so aiocoap
retransmits them (RFC 7252 section 4.2) until ``timeout``. An observation is registered again
when it ends (the server sent an error or cancelled it) and when no notification came for the
response's Max-Age plus a margin (RFC 7641 section 3.3.1: a restarted server has forgotten its
observers and stays silent). While a point cannot be read (the request failed, or its value is
missing from the response) it is published once with bad quality and the reason, and retried
with backoff.

Deregistration. aiocoap 0.4's ``ClientObservation.cancel()`` sends nothing: the next
notification is still taken in (ACKed if CON), only a later CON one is answered with RST (a NON
one never), and once the context is shut down its socket is gone, so a device would go on
notifying a dead port (and retransmitting CONs). So an observation that ends on our side (stop,
reload, restart, or one that went silent and is registered again) is deregistered as RFC 7641
section 3.6 says: a GET with Observe 1 and the registration's token, sent (NON) through the
context's message manager (aiocoap offers no way to choose a request's token) so that it leaves
from the same socket. The server's answer ends the observation in aiocoap; ``__aexit__`` waits
for those answers at most `DEREGISTER_TIMEOUT` in all (not at all when nothing is observed), so
a dead device cannot hold up a stop. Over OSCORE or TCP it is not sent (the GET would have to be
protected; closing a TCP connection ends its observations).

Values: a point with a ``format`` asks for it with Accept (RFC 7252 section 5.10.4), since a
server that offers several (ours does) otherwise picks its own default. A server that answers
4.06 Not Acceptable or 4.02 Bad Option to Accept is asked again without it, and from then on for
that group. The point's ``format`` decodes the payload (it also overrides a missing or wrong
Content-Format); when that yields no value and the response names another format it is decoded
by that one (a server that ignores Accept, as libcoap's coap-server does, says what it sent).
With ``format: auto`` no Accept is sent and the response's Content-Format decodes (text/plain
when absent). ``senml_name`` or ``field`` picks one value out of a pack or an object; text/plain
for a ``string`` point is the text itself. A point without ``unit`` takes SenML's, spelled as
pint spells it ("Cel" becomes "degC").
Writes PUT the value in the point's format (text/plain for ``auto``, JSON ``{field: value}``
with ``field``, a dotted one nested as it is read, SenML with ``senml_name``), then read the
resource back.

coaps:// (DTLS with a pre-shared key, ``security.dtls``): the context has aiocoap's tinydtls
transport only, with the PSK for every coaps URI. A request that gets no answer in ``timeout``
ends the DTLS session, so that the next one shakes hands afresh (a device that restarted has
forgotten it), and its reason says when the handshake itself never completed: most servers
answer a wrong key with silence (see protocols/coap/dtls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap import Code
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers import Unreliable
from aiocoap.tokenmanager import TokenManager

from gateway.adapter import Adapter
from gateway.backoff import BackoffTimer, sleep_backoff
from gateway.commands import WriteRefused, WriteStatus, serve_commands
from gateway.limits import Limits
from gateway.payloads import (
    Format,
    PayloadError,
    decode_for,
    encode,
    encode_field,
    format_of,
    pint_unit,
)
from gateway.types import Message, PointSpec, Quality, Sample, Value
from protocols.coap.config import CoapClient, CoapPoint, PointFormat
from protocols.coap.dtls import (
    alert_reason,
    client_context,
    client_credentials,
    drop_sessions,
    handshake_pending,
    require_dtlssocket,
)
from protocols.coap.server import oscore_credentials, release_credentials

if TYPE_CHECKING:
    from aiocoap.credentials import CredentialsMap

log = logging.getLogger(__name__)

OBSERVE_MARGIN = 3.0  # seconds past Max-Age before an observation counts as lost
DEREGISTER_TIMEOUT = 1.0  # seconds a stop waits for the servers to confirm deregistrations
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
#: Answers to a GET with Accept that mean "ask again without it": the format is not offered
#: (4.06), or the server does not know the option at all (Accept is critical: 4.02).
ACCEPT_REFUSED = frozenset({Code.NOT_ACCEPTABLE, Code.BAD_OPTION})

#: How the server's answer to a PUT is acked to the command router.
PUT_STATUS: dict[Code, WriteStatus] = {
    Code.BAD_REQUEST: WriteStatus.BAD_VALUE,
    Code.UNSUPPORTED_CONTENT_FORMAT: WriteStatus.BAD_VALUE,
    Code.FORBIDDEN: WriteStatus.OUT_OF_RANGE,
    Code.NOT_FOUND: WriteStatus.UNKNOWN_POINT,
    Code.METHOD_NOT_ALLOWED: WriteStatus.NOT_WRITABLE,
    Code.TOO_MANY_REQUESTS: WriteStatus.RATE_LIMITED,
    Code.SERVICE_UNAVAILABLE: WriteStatus.UNREACHABLE,
    Code.GATEWAY_TIMEOUT: WriteStatus.TIMEOUT,
}


class ReadError(Exception):
    """A response that carries no usable value; the message is the sample's reason."""


def as_type(value: Value, datatype: str) -> Value:
    """A decoded value as the point's type on the bus."""
    try:
        if datatype == "string":
            return str(value)
        if datatype == "bool":
            return value if isinstance(value, bool) else bool(float(value))  # type: ignore[arg-type]
        if datatype in INTEGER_TYPES:
            return int(float(value))  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ReadError(f"{value!r} is not a {datatype}") from None


def pick(point: CoapPoint, records: list[tuple[str | None, Value, float | None, str | None]]) -> (
    tuple[Value, float | None, str | None]
):  # fmt: skip
    """The point's value (and time and unit) among the decoded records."""
    wanted = point.senml_name or point.field
    if wanted is not None:
        found = [r for r in records if r[0] == wanted]
    elif len(records) == 1:
        found = records
    else:
        found = [r for r in records if r[0] is not None and r[0].rsplit("/", 1)[-1] == point.name]
    if not found:
        names = ", ".join(str(r[0]) for r in records[:5])
        raise ReadError(f"no value named {wanted or point.name!r} (found {names})")
    _, value, when, unit = found[-1]
    return value, when, unit


def formats(point: CoapPoint, content_format: int | None) -> list[Format]:
    """The formats to decode a response by, in order: the point's own, then the response's
    Content-Format when it names another known one; for ``auto`` only the response's."""
    if point.format == "auto":
        return [Format.TEXT if content_format is None else format_of(content_format)]
    order = [format_of(point.format)]
    if content_format is not None and content_format != order[0]:
        with contextlib.suppress(PayloadError):  # a format we do not decode: the point's only
            order.append(format_of(content_format))
    return order


def read_value(point: CoapPoint, payload: bytes, content_format: int | None) -> (
    tuple[Value, float | None, str | None]
):  # fmt: skip
    """The point's value (in its type), time and unit from a response's payload."""
    first: Exception | None = None
    for fmt in formats(point, content_format):
        try:
            raw, when, unit = pick(point, decode_for(payload, fmt, point.type))
            return as_type(raw, point.type), when, unit
        except (ReadError, PayloadError) as exc:
            first = first or exc
    assert first is not None
    raise first


@dataclass(frozen=True)
class Group:
    """Points read by one request: one resource, asked for alike."""

    path: str  # without the leading "/"
    poll: float | None  # None: observed
    format: PointFormat
    points: tuple[CoapPoint, ...]

    @property
    def observing(self) -> bool:
        return self.poll is None


def groups(points: Iterable[CoapPoint]) -> list[Group]:
    """The points by the request that reads them: points of one path with another poll interval
    or format stay apart, since their requests differ."""
    found: dict[tuple[str, float | None, PointFormat], list[CoapPoint]] = {}
    for point in points:
        found.setdefault((point.path.lstrip("/"), point.poll, point.format), []).append(point)
    return [Group(path, poll, fmt, tuple(ps)) for (path, poll, fmt), ps in found.items()]


class CoapClientAdapter(Adapter):
    """Reads (observes or polls) and writes one CoAP server's resources."""

    config: CoapClient

    def __init__(self, name: str, config: CoapClient, context: Any) -> None:
        super().__init__(name, config, context)
        self._points = {p.name: p for p in config.points}
        self._limits = {p.name: Limits.of(p) for p in config.points}
        self._groups = groups(config.points)
        self._group_of = {p.name: g for g in self._groups for p in g.points}
        self._bad: set[str] = set()
        self._no_accept: set[str] = set()  # points whose server refused Accept (a group at once)
        self._ctx: aiocoap.Context | None = None
        self._credentials: CredentialsMap | None = None  # OSCORE, released at close
        self.base = config.url.rstrip("/")
        self._leaving: set[asyncio.Task[None]] = set()  # deregistrations under way
        self.notifications = 0
        self.registrations = 0
        self.last_error = ""  # the reason of the last failed request while a point is bad

    def points(self) -> list[PointSpec]:
        return [PointSpec.of(self.name, p, p.type) for p in self.config.points]

    async def __aenter__(self) -> CoapClientAdapter:
        # The OSCORE state first: a damaged one stops the start, and __aexit__ is not called
        # then, so a context made before it would keep its socket.
        dtls = self.config.security.dtls
        if dtls is not None:
            require_dtlssocket(self.name)
            self._ctx = await client_context()
            self._ctx.client_credentials.load_from_dict(client_credentials(dtls))
            return self
        oscore = self.config.security.oscore
        credentials = None
        if oscore is not None:
            credentials = oscore_credentials(oscore, self.name, f"{self.base}/*")
        try:
            self._ctx = await aiocoap.Context.create_client_context()
        except BaseException:  # no __aexit__ follows: the OSCORE folder's lock must go now
            release_credentials(credentials)
            raise
        if credentials is not None:
            self._ctx.client_credentials = credentials
        self._credentials = credentials
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._leaving:  # each is bounded by itself; this bounds them all the same
            await asyncio.wait(self._leaving, timeout=DEREGISTER_TIMEOUT)
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                await self._ctx.shutdown()
            self._ctx = None
        release_credentials(self._credentials)
        self._credentials = None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(serve_commands(self.bus, self.name, self.write_and_read_back))
            for group in self._groups:
                tg.create_task(self._observe(group) if group.observing else self._poll(group))

    # -- reading

    def _uri(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def _get_request(self, group: Group, *, observe: bool = False) -> aiocoap.Message:
        """A GET (an Observe registration with ``observe``) asking for the group's format."""
        request = aiocoap.Message(code=Code.GET, uri=self._uri(group.path))
        if observe:
            request.opt.observe = 0
        if self._sends_accept(group):
            request.opt.accept = int(format_of(group.format))
        return request

    def _sends_accept(self, group: Group) -> bool:
        # _no_accept holds point names (a group's all at once), as before groups
        return group.format != "auto" and group.points[0].name not in self._no_accept

    def _accept_refused(self, group: Group, response: aiocoap.Message) -> bool:
        """Whether ``response`` refused the Accept this group sent; if so, stop sending it."""
        if response.code not in ACCEPT_REFUSED or not self._sends_accept(group):
            return False
        self._no_accept.update(p.name for p in group.points)
        log.info(
            "%s: %s answered %s to Accept %s; asking without it",
            self.name, self._uri(group.path), response.code.dotted, group.format,
        )  # fmt: skip
        return True

    async def _request(self, request: aiocoap.Message) -> aiocoap.Message:
        assert self._ctx is not None
        try:
            async with asyncio.timeout(self.config.timeout):
                response: aiocoap.Message = await self._ctx.request(request).response
        except (TimeoutError, aiocoap.error.Error) as exc:
            raise ReadError(self._failure(request.get_request_uri(), exc)) from None
        return response

    def _timed_out(self) -> None:
        """A request got no answer in time: over DTLS, end the session (see the docstring)."""
        if self._ctx is not None and self.config.security.dtls is not None:
            drop_sessions(self._ctx, f"no answer in {self.config.timeout:g} s")

    def _failure(self, uri: str, exc: Exception) -> str:
        """The reason a request to ``uri`` failed, for the sample and the log: what and why.

        aiocoap's text for a NetworkError is only "Network error: NetworkError"; the cause (the
        OSError: connection refused, host unreachable) is in its args and ``__cause__``.
        """
        if isinstance(exc, TimeoutError):
            reason = f"{uri}: no response in {self.config.timeout:g} s"
            if self._ctx is not None and self.config.security.dtls is not None:
                if handshake_pending(self._ctx):
                    identity = self.config.security.dtls.identity
                    reason = (
                        f"{uri}: DTLS handshake not completed in {self.config.timeout:g} s"
                        f" (wrong key for identity {identity!r}, an unknown identity, or no"
                        " DTLS server there)"
                    )
                self._timed_out()
            return reason
        if isinstance(exc, aiocoap.error.NetworkError):
            cause = exc.args[0] if exc.args else exc.__cause__
            # aiocoap wraps a transport's error: its text in args, the error as the cause
            dtls = self.config.security.dtls is not None
            alert = alert_reason(exc.__cause__) if dtls else None
            if alert is not None:
                return f"{uri}: {alert}"
            what = (
                "name resolution" if isinstance(exc, aiocoap.error.ResolutionError) else "network"
            )
            return f"{uri}: {what} error: {cause or 'no cause given'}"
        return f"{uri}: {str(exc) or type(exc).__name__}"

    def _sample(self, point: CoapPoint, response: aiocoap.Message) -> Sample:
        if not response.code.is_successful():
            reason = response.payload.decode(errors="replace")
            raise ReadError(f"{response.code.dotted} {reason}".strip())
        number = response.opt.content_format
        value, when, unit = read_value(
            point, response.payload, None if number is None else int(number)
        )
        now = time.time()
        quality, reason = Quality.GOOD, None
        limits = self._limits.get(point.name)
        if limits is not None:
            quality, reason = limits.check(value, quality, reason)
        unit = point.unit or pint_unit(unit)  # SenML's "Cel" is pint's "degC"
        return Sample(point.name, value, quality, when or now, now, unit, reason)

    def _bad_sample(self, point: CoapPoint, reason: str) -> Sample:
        now = time.time()
        return Sample(point.name, None, Quality.BAD, now, now, point.unit, reason)

    def _news(self, sample: Sample) -> bool:
        """Whether to publish ``sample``: a failed read once per outage; a reading marked Bad
        for being out of range (it has a value) like any other reading."""
        if sample.quality is Quality.BAD and sample.value is None:
            if sample.point in self._bad:
                return False
            self._bad.add(sample.point)
            self.last_error = sample.reason or ""
            log.warning("%s: %s is bad: %s", self.name, sample.point, sample.reason)
        else:
            self._bad.discard(sample.point)
            if not self._bad:
                self.last_error = ""
        return True

    async def _publish(self, samples: Iterable[Sample]) -> None:
        """One message for one reading of a resource: the samples that are news."""
        news = tuple(s for s in samples if self._news(s))
        if news:
            await self.bus.publish(Message.telemetry(self.name, news))

    async def _read(self, group: Group, response: aiocoap.Message) -> None:
        """Publish the group's samples from one response: a point whose value is missing is bad
        while the others are good. ReadError when none has a value (an observation is then
        registered again, as it was for a lone point)."""
        samples: list[Sample] = []
        for point in group.points:
            try:
                samples.append(self._sample(point, response))
            except (ReadError, PayloadError) as exc:
                samples.append(self._bad_sample(point, str(exc)))
        await self._publish(samples)
        if all(s.value is None for s in samples):
            raise ReadError(samples[0].reason)

    async def _failed(self, group: Group, reason: str) -> None:
        """The request failed: every point of the group is bad."""
        await self._publish(self._bad_sample(p, reason) for p in group.points)

    async def _poll(self, group: Group) -> None:
        assert group.poll is not None
        while True:
            with contextlib.suppress(ReadError):
                await self._get(group)
            await asyncio.sleep(group.poll)

    async def _get(self, group: Group) -> None:
        try:
            response = await self._request(self._get_request(group))
            if self._accept_refused(group, response):
                response = await self._request(self._get_request(group))
        except ReadError as exc:
            await self._failed(group, str(exc))
            raise
        await self._read(group, response)

    async def _observe(self, group: Group) -> None:
        backoff = BackoffTimer(self.config.reconnect)
        while True:
            try:
                await self._observe_once(group, backoff)
            except ReadError as exc:
                log.info("%s: observing %s: %s; again soon", self.name, group.path, exc)
                await sleep_backoff(backoff)

    async def _observe_once(self, group: Group, backoff: BackoffTimer) -> None:
        """One registration, until it ends or goes silent (then return to register again)."""
        assert self._ctx is not None
        request = self._ctx.request(self._get_request(group, observe=True))
        first: aiocoap.Message | None = None
        try:
            try:
                async with asyncio.timeout(self.config.timeout):
                    first = await request.response
            except (TimeoutError, aiocoap.error.Error) as exc:
                reason = self._failure(self._uri(group.path), exc)
                await self._failed(group, reason)
                raise ReadError(reason) from None
            if self._accept_refused(group, first):
                return  # register again at once, without Accept
            self.registrations += 1
            await self._read(group, first)
            backoff.reset()
            if first.opt.observe is None:
                # Not observable: the response was a plain GET's. Read it again after Max-Age.
                await asyncio.sleep(first.opt.max_age or 60)
                return
            await self._notifications(group, request, first)
        finally:
            observation = request.observation
            if observation.cancelled:  # the server ended it (or never started it)
                pass
            elif first is not None and first.opt.observe is not None:
                self._leave(observation, first)
            else:
                observation.cancel()

    def _leave(self, observation: Any, registration: aiocoap.Message) -> None:
        """Deregister in a task of its own: this runs when a stop cancels the observing task,
        and `__aexit__` waits for it."""
        task = asyncio.get_running_loop().create_task(self._deregister(observation, registration))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _deregister(self, observation: Any, registration: aiocoap.Message) -> None:
        """Deregister ``observation`` (RFC 7641 section 3.6; see the module docstring) and wait
        for the server's answer, which ends it, at most `DEREGISTER_TIMEOUT`."""
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def end() -> None:
            if not ended.done():
                ended.set_result(None)

        observation.on_cancel(end)
        message = registration.request.copy(mid=None)  # its token, options and remote
        # NON: a CON would be retransmitted past the bound, and would hold up (NSTART 1) a
        # registration made again right after it to a silent server
        message.mtype = None
        message.transport_tuning = Unreliable()
        message.opt.observe = 1
        try:
            async with asyncio.timeout(DEREGISTER_TIMEOUT):
                assert self._ctx is not None
                interface = await self._ctx.find_remote_and_interface(message)
                manager = getattr(interface, "token_interface", None)
                if isinstance(interface, TokenManager) and isinstance(manager, MessageManager):
                    manager.send_message(message, end)
                    await ended
        except Exception as exc:  # a timeout, aiocoap's errors, a socket gone: never escapes
            log.debug("%s: deregistering %s: %r", self.name, message.get_request_uri(), exc)
        finally:
            if not observation.cancelled:
                observation.cancel()

    async def _notifications(self, group: Group, request: Any, first: aiocoap.Message) -> None:
        silence = (first.opt.max_age or 60) + OBSERVE_MARGIN
        stream = aiter(request.observation)
        while True:
            try:
                async with asyncio.timeout(silence):
                    response = await anext(stream)
            except TimeoutError:
                log.info("%s: no notification for %s in %g s", self.name, group.path, silence)
                return
            except StopAsyncIteration:
                return
            except aiocoap.error.Error as exc:
                raise ReadError(
                    f"observation ended: {self._failure(self._uri(group.path), exc)}"
                ) from None
            self.notifications += 1
            silence = (response.opt.max_age or 60) + OBSERVE_MARGIN
            await self._read(group, response)

    # -- writing

    async def write_and_read_back(self, name: str, value: Value) -> None:
        point = self._points.get(name)
        if point is None:
            raise WriteRefused(WriteStatus.UNKNOWN_POINT, f"{self.name} has no point {name!r}")
        if not point.access.writable:
            raise WriteRefused(WriteStatus.NOT_WRITABLE, f"{self.name}/{name} is not writable")
        fmt, payload = self._payload(point, value)
        request = aiocoap.Message(
            code=Code.PUT, uri=self._uri(point.path), payload=payload, content_format=int(fmt)
        )
        try:
            response = await self._request(request)
        except ReadError as exc:
            status = WriteStatus.TIMEOUT if "no response" in str(exc) else WriteStatus.UNREACHABLE
            raise WriteRefused(status, str(exc)) from None
        if not response.code.is_successful():
            reason = f"{response.code.dotted} {response.payload.decode(errors='replace')}".strip()
            raise WriteRefused(PUT_STATUS.get(response.code, WriteStatus.DEVICE_ERROR), reason)
        with contextlib.suppress(ReadError):
            await self._get(self._group_of[point.name])  # the whole group: one GET reads it

    def _payload(self, point: CoapPoint, value: Value) -> tuple[Format, bytes]:
        if point.format != "auto":
            fmt = format_of(point.format)
        elif point.senml_name is not None:
            fmt = Format.SENML_JSON
        elif point.field is not None:
            fmt = Format.JSON
        else:
            fmt = Format.TEXT
        name = point.senml_name or point.field or point.name
        try:
            if point.field is not None and fmt in (Format.JSON, Format.CBOR):
                return fmt, encode_field(point.field, value, fmt)
            return fmt, encode([Sample.now(name, value)], fmt)
        except PayloadError as exc:
            raise WriteRefused(WriteStatus.BAD_VALUE, str(exc)) from None

    def status(self) -> dict[str, Any]:
        return {
            "registrations": self.registrations,
            "notifications": self.notifications,
            "bad": sorted(self._bad),
            "last_error": self.last_error,
        }
