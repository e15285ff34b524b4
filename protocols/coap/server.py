"""The gateway as a CoAP server (aiocoap): each bridged point is a resource, and each device too.

Resources. A point lives at ``route.path`` (default ``{device}/{point}``) and a device at
``route.device_path`` (default ``{device}``: all its points as one SenML pack, sent block-wise
when it outgrows one block, see below). ``/.well-known/core`` (RFC 6690) lists
them with ``rt`` (``protocol-brain.point.<datatype>`` or ``protocol-brain.device``), ``if``
(``core.s`` for a read-only point, ``core.a`` for a writable one, ``core.b`` for a device),
``ct`` (the content formats a GET can ask for with Accept) and ``obs``.

Anomaly alarms: a bridge with ``anomaly:`` adds two read-only, observable resources per
device, the points ``anomaly`` (bool) and ``anomaly_score`` (float64) at ``route.path`` (by
default ``<device>/anomaly``), set from each scored message's verdict and the rise/clear EVENT
(`gateway.anomaly.verdict`); 5.03 before the first scored message, as any point with no value
yet. An EVENT's samples are no point's values. A source point with one of those names keeps
its resource (the alarm's is left out, with a warning).

GET negotiates by Accept: SenML JSON (110) when there is none, else 110, 112 (SenML CBOR),
50 (JSON ``{"point": value}``), 60 (CBOR) or, for a point, 0 (text/plain); anything else is
4.06 Not Acceptable. SenML units are the registered names (RFC 8428 section 12.1: ``Cel`` for
``degC``, ``%`` for ``percent``) where one is exactly the point's unit, else the point's unit.
Observe (RFC 7641) notifies on every change of value or quality. At most ``max_observations``
are held, ``max_observations_per_client`` per client host; a registration beyond is answered as
a plain GET, without Observe (`ObserveLimits` in protocols/coap/limits.py).

Block-wise (RFC 7959). aiocoap 0.4.17 cuts a GET's answer into blocks (its ``Block2Cache``) but
renders an Observe registration's answer and every notification whole, a ~25 KB datagram for a
500-point pack, which libcoap drops as too big. So `_Guarded` cuts GETs itself (it tells aiocoap
``needs_blockwise_assembly`` False for GET), with a ``Block2Cache`` of its own: block 0 of a
notification goes with Observe and Block2, the client GETs blocks 1.. without Observe
(section 2.6), and the whole representation stays cached for those under the client's key. An
ETag (a hash of the payload) tells representations apart. That cache holds one representation
per client and resource, so a change notified while an observer still fetches blocks would
swap the rest under it (aiocoap's client then fails with ResourceChanged): `updated_state`
holds the change for such an observer until its last block went, or until it asked for no
block for `TRANSFER_IDLE` seconds (RFC 7641 4.4 asks for the latest state, not every one).

Vanished observers. Only a CON notification that fails (no ACK, or an RST) tells aiocoap that
an observer is gone; it then ends the observation, which frees its slot. aiocoap sends a
notification as the registration was sent, so a NON registration's never fail, and a quiet
value sends none at all: a vanished client would hold its slots for ever. RFC 7641 section 4.5
asks for a CON notification at least every 24 hours. Here every `CONFIRM_EVERY`-th notification
of a NON observation goes CON (aiocoap's ``Reliable`` transport tuning on the response), and an
observation that had no CON notification for `CONFIRM_INTERVAL` seconds (a quiet value, CON or
NON registration) is sent its current state again, as CON, by the sweep in `run`.

Bad quality. SenML has no record without a value (RFC 8428), so a point whose last sample is
bad (or that has none yet) answers 5.03 Service Unavailable with the reason as diagnostic
payload; an observation ends with that notification (RFC 7641 section 3.2) and the client
re-registers later, as ours does. A device pack leaves bad points out, and is 5.03 when none is
left.

Writes. PUT on a point goes through ``Bridge.write``, that is the command router's safety rules
and the device's acknowledgement: 2.04 Changed only once the device acknowledged. The request's
Content-Format (text/plain when absent) decodes the payload, by the point's type: text/plain for a
``string`` point is the text as sent ("1234" stays text; one trailing line end is dropped), for
other points a number or a boolean. The status mapping is `WRITE_CODES`.

Learned types. A source may learn a point's type only once connected (an OPC UA device point
without ``type:`` is float64 until the client reads the node's DataType, then re-declares it).
The router tells the resources when a device declares its points again
(`CommandRouter.on_declare`); they take the bridges' current specs, so PUT parses by, and
``rt`` lists, the learned type.

Security: with ``security.oscore`` the site is wrapped in aiocoap's OSCORE site wrapper
(RFC 8613) and, with ``security.require`` (the default), any unprotected request is 4.01.
With ``security.dtls`` the server listens for coaps:// (DTLS 1.2, PSK) on ``dtls.port`` and, only
with ``dtls.plain_reads``, for plain CoAP on ``port``, where anything but a GET is 4.01: writes
need a DTLS session with a known identity (see protocols/coap/dtls.py).
Without either anyone who reaches the server may PUT: the defaults stay (``::``, ``writable``),
but a server with writable points and no required OSCORE or DTLS says so in a warning at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import aiocoap
import aiocoap.resource as resource
from aiocoap import Code
from aiocoap.blockwise import Block2Cache
from aiocoap.numbers import NON, Reliable
from aiocoap.numbers.contentformat import ContentFormat

from gateway.adapter import Adapter
from gateway.anomaly.verdict import ForeignEvents, add_alarm_points, served_samples
from gateway.bridge import respecified
from gateway.commands import WriteStatus
from gateway.paths import state_path
from gateway.payloads import Format, PayloadError, decode_for, encode, format_of, senml_unit
from gateway.storefiles import write_atomic
from gateway.text import counted
from gateway.types import Message, PointSpec, Quality, Sample, Value
from protocols.coap.config import CoapServer, CoapServerRoute, Oscore
from protocols.coap.dtls import (
    identity_of,
    require_dtlssocket,
    serve,
    server_credentials,
    server_status,
)
from protocols.coap.limits import SAFE_CODES, FloodLimits, ObserveLimits

if TYPE_CHECKING:
    from aiocoap.credentials import CredentialsMap

    from gateway.bridge import Bridge

log = logging.getLogger(__name__)

#: How a refused or failed write is answered (RFC 7252 section 5.9, RFC 8516 for 4.29).
WRITE_CODES: dict[WriteStatus, Code] = {
    WriteStatus.GOOD: Code.CHANGED,  # 2.04
    WriteStatus.UNKNOWN_POINT: Code.NOT_FOUND,  # 4.04
    WriteStatus.NOT_WRITABLE: Code.METHOD_NOT_ALLOWED,  # 4.05
    WriteStatus.OUT_OF_RANGE: Code.FORBIDDEN,  # 4.03
    WriteStatus.BAD_VALUE: Code.BAD_REQUEST,  # 4.00
    WriteStatus.RATE_LIMITED: Code.TOO_MANY_REQUESTS,  # 4.29
    WriteStatus.UNREACHABLE: Code.SERVICE_UNAVAILABLE,  # 5.03
    WriteStatus.TIMEOUT: Code.GATEWAY_TIMEOUT,  # 5.04
    WriteStatus.DEVICE_ERROR: Code.BAD_GATEWAY,  # 5.02
}

#: A NON observation's every CONFIRM_EVERY-th notification goes CON (libcoap's choice too), and
#: every observation gets one at least every CONFIRM_INTERVAL seconds (RFC 7641 4.5 asks for
#: 24 h; an hour frees a vanished client's slot sooner, at one datagram per observation and hour).
CONFIRM_EVERY = 5
CONFIRM_INTERVAL = 3600.0
#: An observer that asked for no block of a block-wise notification for this long has left the
#: transfer; a change held meanwhile (see `_Guarded.updated_state`) goes to it then.
TRANSFER_IDLE = 5.0

POINT_FORMATS = (Format.SENML_JSON, Format.SENML_CBOR, Format.JSON, Format.CBOR, Format.TEXT)
DEVICE_FORMATS = POINT_FORMATS[:-1]
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})


def diagnostic(code: Code, reason: str) -> aiocoap.Message:
    """An error response with its reason as diagnostic payload (RFC 7252 section 5.5.2)."""
    return aiocoap.Message(code=code, payload=reason.encode(), content_format=ContentFormat.TEXT)


class _Refused(Exception):
    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.response = diagnostic(code, reason)


def coerce(value: Value, datatype: str) -> Value:
    """A decoded value in the point's type; `_Refused` (4.00) when it cannot be one."""
    if datatype == "string":
        return value if isinstance(value, str) else _refuse_type(value, "text")
    if datatype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        return _refuse_type(value, "true or false")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _refuse_type(value, "a number")
    if datatype in INTEGER_TYPES:
        if isinstance(value, float):
            if not value.is_integer():
                return _refuse_type(value, "an integer")
            return int(value)
        return value
    return float(value)


def _refuse_type(value: Value, expected: str) -> Value:
    raise _Refused(Code.BAD_REQUEST, f"{value!r} is not {expected}")


def payload(samples: list[Sample], fmt: Format, device: str) -> bytes:
    """Samples as ``fmt``, named under ``device/``. SenML gets registered unit names ("Cel",
    not pint's "degC": RFC 8428 section 12.1) where one means exactly the same unit."""
    if fmt in (Format.SENML_JSON, Format.SENML_CBOR):
        samples = [dataclasses.replace(s, unit=senml_unit(s.unit)) for s in samples]
    return encode(samples, fmt, base_name=f"{device}/")


def negotiate(request: aiocoap.Message, offered: tuple[Format, ...]) -> Format:
    """The Format a GET asks for with Accept (SenML JSON when none); 4.06 when not offered."""
    accept = request.opt.accept
    if accept is None:
        return Format.SENML_JSON
    number = int(accept)
    if number in offered:
        return Format(number)
    raise _Refused(
        Code.NOT_ACCEPTABLE,
        f"content format {number} not offered; ask for one of {' '.join(map(str, offered))}",
    )


class OscoreStateError(ValueError):
    """An OSCORE state folder that cannot be used; the message names the file and the way out."""


# RFC 8613 7.2.1: the Partial IV (the sequence number) is at most 5 bytes
MAX_SEQUENCE = 2**40 - 1


def write_context_dir(oscore: Oscore, name: str) -> Path:
    """The OSCORE context folder aiocoap reads: settings.json from the config (rewritten when the
    config changes, when sequence.json keeps its number and the peer's window becomes unknown: see
    `_carry_sequence`), sequence.json otherwise left alone but
    checked (`OscoreStateError` when it is damaged)."""
    base = state_path(oscore.state_dir, name)
    settings = {
        "sender-id_hex": oscore.sender_id,
        "recipient-id_hex": oscore.recipient_id,
        "secret_hex": oscore.master_secret,
        "salt_hex": oscore.master_salt,
        "algorithm": oscore.algorithm,
    }
    if oscore.id_context is not None:
        settings["id-context_hex"] = oscore.id_context
    text = json.dumps(settings, indent=2, sort_keys=True)
    path = base / "settings.json"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if (
            not path.exists()
            or path.read_text(errors="replace") != text
            or path.stat().st_mode & 0o077  # the same secret, but readable by others
        ):
            if _other_keys(path, settings):
                _carry_sequence(base / "sequence.json")
            # a new file of mode 0600 renamed over the old one: an existing file (copied in,
            # restored) keeps its wider mode if rewritten in place, with the secret in it
            write_atomic(path, text.encode(), mode=0o600)
        _check_sequence(base / "sequence.json")
    except OSError as exc:
        where = exc.filename or base
        raise OscoreStateError(
            f"OSCORE state {where}: {exc.strerror or exc}; the gateway's user must be able to "
            f"read and write the folder {base}"
        ) from exc
    return base


def _check_sequence(path: Path) -> None:
    """Refuse a damaged sequence file before aiocoap reads it (its own error names no file, and
    its half-loaded context prints an ignored AttributeError when collected).

    The file is never reset: it holds the next sequence number to send, and any guess lower than
    the lost one would reuse a nonce under the same keys. Only a damaged replay window is mended,
    to "unknown": aiocoap's own state after an abnormal stop, which it recovers from with Echo
    (RFC 8613 B.1.2)."""
    if not path.exists():
        return  # a fresh context (new keys): numbers start at 0
    state = _read_sequence(path)
    if state is None:
        raise OscoreStateError(
            f"OSCORE state {path} is damaged (no readable next-to-send number). It keeps the "
            "next sequence number to send, and a number used twice under the same keys reuses "
            "a nonce, so the gateway does not guess it. To recover, give this entry new key "
            "material on both sides (a new master_secret, or new sender_id and recipient_id) "
            "and delete this file; never delete it while the keys stay the same"
        )
    received = state.get("received")
    if received == "unknown" or _replay_window(received):
        return
    state["received"] = "unknown"
    _write_sequence(path, state)
    log.warning(
        "OSCORE state %s: its replay window was damaged, set to unknown (the first request "
        "from the peer is answered with Echo, RFC 8613 B.1.2); the sequence number is kept",
        path,
    )


def _carry_sequence(path: Path) -> None:
    """Under new key material: keep the next sequence number to send, and set the peer's
    replay window to unknown (the peer's first request is then checked with Echo, RFC 8613
    B.1.2). An empty window would accept again every request the peer sent under keys that
    come back.

    The number is never set back. Numbers that go on from where other keys stopped are as good
    as fresh ones, while a reset is nonce reuse whenever keys come back: keys A, then B, then A
    again (an edit undone, a reload falling back to the config before) would start A at 0. A
    damaged file, which the error for it says to clear this way, is deleted."""
    if not path.exists():
        return
    state = _read_sequence(path)
    if state is None:
        path.unlink()
        return
    _write_sequence(path, {"next-to-send": state["next-to-send"], "received": "unknown"})


def _read_sequence(path: Path) -> dict[str, Any] | None:
    """The sequence file's state, or None when it has no readable next-to-send number (not
    JSON, not UTF-8, not an object, a number out of range). OSError if it cannot be read."""
    try:
        state: object = json.loads(path.read_bytes())
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None
    if not isinstance(state, dict):
        return None
    send = state.get("next-to-send")
    if type(send) is not int or not 0 <= send <= MAX_SEQUENCE:
        return None
    return state


def _write_sequence(path: Path, state: dict[str, object]) -> None:
    """Replace the sequence file, synced first: a power cut must not leave it empty (an empty
    one is refused at the next start, and only new keys get past that)."""
    tmp = path.with_name(".sequence-mended.json")
    with open(tmp, "w") as f:
        f.write(json.dumps(state))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def release_credentials(credentials: CredentialsMap | None) -> None:
    """Release the OSCORE contexts of ``credentials`` now: their folder lock, and the exact
    sequence number written back. aiocoap does that only when a context is collected, which a
    reference cycle can put off past a reload's new start (its lock still held then)."""
    from aiocoap.oscore import FilesystemSecurityContext

    for item in (credentials or {}).values():
        if isinstance(item, FilesystemSecurityContext) and item.lockfile is not None:
            try:
                item._destroy()
            except Exception:  # a damaged folder must not hold up the close
                log.warning("OSCORE state %s: not released cleanly", item.basedir, exc_info=True)


def _replay_window(received: object) -> bool:
    """Whether ``received`` is a replay window as aiocoap persists it (both null: one it never
    initialised, which it writes at shutdown and reads back as unknown)."""
    if not isinstance(received, dict):
        return False
    values = received.get("index"), received.get("bitfield")
    return values == (None, None) or all(type(v) is int and v >= 0 for v in values)


def _other_keys(path: Path, settings: dict[str, str]) -> bool:
    """Whether the settings file at ``path`` held other key material than ``settings``.
    Unknown (missing) counts as other; an unreadable file does not: restarting the sequence
    numbers under keys that may be the same would reuse nonces, which OSCORE must never do.
    The peer's replay state is kept then, and the log says how to reset it."""
    if not path.exists():
        return True
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        old = None
    if not isinstance(old, dict) or not {"secret_hex", "salt_hex"} <= old.keys():
        log.warning(
            "%s was damaged: rewritten from the config; %s kept, so no sequence number is"
            " reused (if the peer's keys changed too, delete it to reset)",
            path,
            path.with_name("sequence.json"),
        )
        return False
    return any(old.get(k) != v for k, v in settings.items())


def oscore_credentials(oscore: Oscore, name: str, target: str) -> CredentialsMap:
    """aiocoap credentials that bind ``target`` (a URI pattern, or ``:name`` on a server) to the
    OSCORE context of ``oscore``."""
    import filelock  # aiocoap's, for its context folder's lock
    from aiocoap.credentials import CredentialsMap

    base = write_context_dir(oscore, name)
    credentials = CredentialsMap()
    try:
        credentials.load_from_dict({target: {"oscore": {"basedir": f"{base}/"}}})
    except filelock.Timeout as exc:
        raise OscoreStateError(
            f"OSCORE state {base} is in use ({exc.lock_file} is held): another entry or another "
            "gateway process has the same state_dir; give each its own"
        ) from None
    except Exception as exc:  # aiocoap's LoadError and kin name no folder
        raise OscoreStateError(f"OSCORE state {base} cannot be loaded: {exc}") from exc
    return credentials


@dataclasses.dataclass(eq=False)
class _Watch:
    """An observation, so that a CON notification goes to it now and then (see the docstring)."""

    observation: Any  # aiocoap's ServerObservation
    reliable: bool  # registered with CON: aiocoap sends every notification CON
    confirmed: float  # time.monotonic() of its last CON notification, or of its registration
    client: tuple[Any, Any]  # the registration's remote and Accept: its block GETs have both
    unconfirmed: int = -1  # NON notifications since; -1 until the registration is answered
    due: bool = False  # the next notification goes CON (the sweep asked for it)
    fetching: float = 0.0  # time.monotonic() until which the client fetches its last blocks
    held: bool = False  # a change came meanwhile: notify once the client has them all
    timer: asyncio.TimerHandle | None = None  # sends a held change if the client stalls

    def notify(self) -> None:
        """Notify of a change, or hold it while the client still fetches the blocks of the
        last notification (see `_Guarded.updated_state`)."""
        self.held = True
        wait = self.fetching - time.monotonic()
        if wait <= 0:
            self.release()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(wait, self._stalled)

    def release(self) -> None:
        """The client has all blocks (or has left the transfer): a held change goes now."""
        self.fetching = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.held:
            self.held = False
            self.observation.trigger()

    def _stalled(self) -> None:
        self.timer = None
        wait = self.fetching - time.monotonic()
        if wait > 0:  # it asked for a block meanwhile
            self.timer = asyncio.get_running_loop().call_later(wait, self._stalled)
        else:
            self.release()

    def stamp(self, response: aiocoap.Message) -> None:
        """Send ``response`` (this observation's next one) as CON when one is due."""
        self.unconfirmed += 1
        if self.unconfirmed == 0:
            return  # the answer to the registration: sent as the request was
        now = time.monotonic()
        if (
            self.reliable
            or self.due
            or self.unconfirmed >= CONFIRM_EVERY
            or now - self.confirmed >= CONFIRM_INTERVAL
        ):
            response.transport_tuning = Reliable()  # aiocoap then sends it CON
            self.confirmed, self.unconfirmed, self.due = now, 0, False


# aiocoap ships no type information, so its base classes are Any to mypy
class _Guarded(resource.ObservableResource):  # type: ignore[misc]
    """A resource that refuses unprotected requests when the server requires OSCORE, and sends
    its observers a CON notification now and then."""

    def __init__(self, server: CoapServerAdapter) -> None:
        super().__init__()
        self.server = server
        # id(request) -> its observation; aiocoap renders each notification from the same
        # request object as the registration, and the entry goes when the observation ends
        self.watches: dict[int, _Watch] = {}
        self.blocks = Block2Cache()  # GET answers larger than a block (see the docstring)
        # aiocoap keeps a client's whole representation 93-186 s after its last block; a
        # transfer is over (or abandoned) within TRANSFER_IDLE, so its copy goes 10-20 s later.
        completes = getattr(self.blocks, "_completes", None)
        if isinstance(getattr(completes, "timeout", None), float):
            completes.timeout = 2 * TRANSFER_IDLE  # type: ignore[union-attr]
        self.by_client: dict[tuple[Any, Any], set[_Watch]] = {}  # the watches of a client key

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return bool(request.code != Code.GET)  # GETs: `render` cuts the blocks itself

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        self.server.requests += 1
        watch = self.watches.get(id(request))
        if watch is not None and watch.unconfirmed >= 0:  # registration answered: a notification
            self.server.notifications_sent += 1
        try:
            self.server.guard(request)
            if request.code == Code.GET:
                response: aiocoap.Message = await self.blocks.extract_or_insert(
                    request, lambda: self._whole(request)
                )
            else:
                response = await super().render(request)
        except _Refused as refused:
            self.server.refused += 1
            return refused.response
        block = response.opt.block2
        if watch is not None:
            watch.stamp(response)
            watch.fetching = time.monotonic() + TRANSFER_IDLE if block and block.more else 0.0
        elif block is not None and block.block_number > 0:
            self._fetched(request, more=bool(block.more))
        return response

    def _fetched(self, request: aiocoap.Message, *, more: bool) -> None:
        """A block GET was answered: the notification it belongs to is still being fetched
        (``more``), or complete."""
        client = (request.remote, request.opt.accept)
        for watch in self.by_client.get(client, ()):  # not a scan of every observer per block
            if watch.fetching:
                if more:
                    watch.fetching = time.monotonic() + TRANSFER_IDLE
                else:
                    watch.release()

    def updated_state(self, response: aiocoap.Message | None = None) -> None:
        """Notify the observers, but hold the change for one still fetching the blocks of its
        last notification: it gets it once it has them all, or after `TRANSFER_IDLE` seconds
        without a block GET (RFC 7641 4.4 asks for the latest state, not every one). A new
        representation in between would replace what its next block GET gets (one cache entry
        per client and resource), and its client would have to give up the transfer."""
        if response is not None:  # not used here: aiocoap's own way
            super().updated_state(response)
            return
        for watch in list(self.watches.values()):
            watch.notify()

    async def _whole(self, request: aiocoap.Message) -> aiocoap.Message:
        response: aiocoap.Message = await super().render(request)
        if response.code.is_successful():
            response.opt.etag = hashlib.blake2s(response.payload, digest_size=8).digest()
        return response

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        await self.server.observing.add(self._watched, request, serverobservation)

    async def _watched(self, request: aiocoap.Message, serverobservation: Any) -> None:
        await super().add_observation(request, serverobservation)
        key = id(request)
        reliable = request.mtype is not NON
        client = (request.remote, request.opt.accept)
        watch = self.watches[key] = _Watch(serverobservation, reliable, time.monotonic(), client)
        self.by_client.setdefault(client, set()).add(watch)
        forget = serverobservation._cancellation_callback  # aiocoap's: it drops the observer

        def ended() -> None:
            self.watches.pop(key, None)
            same = self.by_client.get(client)
            if same is not None:
                same.discard(watch)
                if not same:
                    del self.by_client[client]
            if watch.timer is not None:
                watch.timer.cancel()
            forget()

        serverobservation.accept(ended)

    def confirm_quiet(self, now: float) -> None:
        """Send the current state as CON to each observation that had no CON notification for
        `CONFIRM_INTERVAL` seconds (its value did not change)."""
        for watch in self.watches.values():
            if not watch.due and now - watch.confirmed >= CONFIRM_INTERVAL:
                watch.due = True
                watch.observation.trigger()


class _PointResource(_Guarded):
    def __init__(
        self,
        server: CoapServerAdapter,
        bridge: Bridge,
        device: str,
        spec: PointSpec,
        writable: bool,
    ) -> None:
        super().__init__(server)
        self.bridge = bridge
        self.device = device
        self.spec = spec
        self.writable = writable
        self.sample: Sample | None = None
        self.rt = f"protocol-brain.point.{spec.datatype}"
        self.if_ = "core.a" if writable else "core.s"
        self.ct = " ".join(str(int(f)) for f in POINT_FORMATS)

    def get_link_description(self) -> dict[str, Any]:
        link: dict[str, Any] = super().get_link_description()
        if self.spec.description:
            link["title"] = self.spec.description
        return link

    def retype(self, spec: PointSpec) -> None:
        """Serve ``spec`` (the same point, its type learned since): PUT parses by it."""
        self.spec = spec
        self.rt = f"protocol-brain.point.{spec.datatype}"

    def update(self, sample: Sample) -> bool:
        old, self.sample = self.sample, sample
        return old is None or old.value != sample.value or old.quality != sample.quality

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        fmt = negotiate(request, POINT_FORMATS)
        sample = self.sample
        if sample is None or sample.value is None or sample.quality is Quality.BAD:
            reason = "no value yet" if sample is None else f"bad: {sample.reason or 'no value'}"
            raise _Refused(Code.SERVICE_UNAVAILABLE, reason)
        return self.server.content(payload([sample], fmt, self.device), fmt)

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        name = f"{self.device}/{self.spec.name}"
        if not self.writable:
            raise _Refused(Code.METHOD_NOT_ALLOWED, f"{name} is not writable")
        number = request.opt.content_format
        try:
            fmt = Format.TEXT if number is None else format_of(int(number))
        except PayloadError as exc:
            raise _Refused(Code.UNSUPPORTED_CONTENT_FORMAT, str(exc)) from None
        try:
            records = decode_for(request.payload, fmt, self.spec.datatype)
        except PayloadError as exc:
            raise _Refused(Code.BAD_REQUEST, str(exc)) from None
        mine = [r for r in records if r[0] in (None, self.spec.name, name)]
        if len(records) == 1:
            mine = records
        if len(mine) != 1:
            raise _Refused(Code.BAD_REQUEST, f"expected one value for {name}, got {len(records)}")
        value = coerce(mine[0][1], self.spec.datatype)
        identity = identity_of(request.remote)
        origin = f"coap:{request.remote.hostinfo}"
        if identity is not None:  # who wrote it: the PSK identity the session was made with
            origin = f"coaps:{identity}@{request.remote.hostinfo}"
        result = await self.bridge.write(
            self.device,
            self.spec.name,
            value,
            origin=origin,
            ack_timeout=self.server.config.write_timeout,
        )
        self.server.writes[result.status] = self.server.writes.get(result.status, 0) + 1
        code = WRITE_CODES.get(result.status, Code.INTERNAL_SERVER_ERROR)
        if result.ok:
            return aiocoap.Message(code=code)
        return diagnostic(code, result.reason or str(result.status))


class _DeviceResource(_Guarded):
    rt = "protocol-brain.device"
    if_ = "core.b"
    ct = " ".join(str(int(f)) for f in DEVICE_FORMATS)

    def __init__(self, server: CoapServerAdapter, device: str) -> None:
        super().__init__(server)
        self.device = device
        self.points: dict[str, _PointResource] = {}

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        fmt = negotiate(request, DEVICE_FORMATS)
        samples = [
            p.sample
            for p in self.points.values()
            if p.sample is not None and p.sample.value is not None
            and p.sample.quality is not Quality.BAD
        ]  # fmt: skip
        if not samples:
            raise _Refused(Code.SERVICE_UNAVAILABLE, f"{self.device} has no good value")
        return self.server.content(payload(samples, fmt, self.device), fmt)


class _WellKnownCore(resource.WKCResource):  # type: ignore[misc]  # aiocoap: untyped base
    def __init__(self, server: CoapServerAdapter, site: resource.Site) -> None:
        super().__init__(site.get_resources_as_linkheader, impl_info=None)
        self.server = server

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            self.server.guard(request)
        except _Refused as refused:
            return refused.response
        response: aiocoap.Message = await super().render(request)
        return response


def port_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) when another socket holds UDP ``host:port``.

    aiocoap binds its server socket with SO_REUSEPORT, so a port another process serves (a
    second gateway with the same config) is shared rather than refused, and the kernel splits
    the requests between the two. A bind without it, as aiocoap's (IPv6, v4-mapped), fails
    whenever anyone holds the port; it is released at once."""
    if port == 0:
        return
    family, _, _, _, address = socket.getaddrinfo(
        host, port, socket.AF_INET6, socket.SOCK_DGRAM, flags=socket.AI_V4MAPPED
    )[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise OSError(
                errno.EADDRINUSE, f"UDP port {port} on {host} is in use by another socket"
            ) from None


class CoapServerAdapter(Adapter):
    """Serves the points of the bridges that target it as CoAP resources."""

    config: CoapServer
    #: `FloodLimits`' keyword arguments, its defaults where absent (tests make them small)
    flood_limits: ClassVar[dict[str, Any]] = {}
    #: `ObserveLimits`' keyword arguments, likewise
    observe_limits: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, config: CoapServer, context: Any) -> None:
        super().__init__(name, config, context)
        self._bridges: list[Bridge] = []
        # id(route) -> device -> point -> resource: a bridge's samples reach only its resources
        self._tables: dict[int, dict[str, dict[str, _PointResource]]] = {}
        self._devices: dict[str, _DeviceResource] = {}
        # id(route) -> device -> the anomaly alarm's points it serves (bridges with anomaly:)
        self._alarms: dict[int, dict[str, frozenset[str]]] = {}
        context.router.on_declare(self.retype)  # a type a source learns once connected
        self.site = resource.Site()
        self._context: aiocoap.Context | None = None
        self._credentials: CredentialsMap | None = None  # OSCORE, released at close
        self.limits: FloodLimits | None = None  # while running: see protocols/coap/limits.py
        self.observing = ObserveLimits(  # caps on observations (tests: observe_limits)
            name,
            **{
                "total": config.max_observations,
                "per_remote": config.max_observations_per_client,
                **self.observe_limits,
            },
        )
        self.requests = 0
        self.refused = 0
        self.notifications = 0  # changes of a point's value or quality (observed or not)
        self.notifications_sent = 0  # notifications sent to observers (changes coalesce)
        self.writes: dict[str, int] = {}
        self.foreign_events = ForeignEvents(f"CoAP server {name}")  # an OPC UA client's events

    # -- address space

    def attach(self, bridge: Bridge) -> None:
        self._bridges.append(bridge)

    def _build(self) -> None:
        used: set[tuple[str, ...]] = set()
        for bridge in self._bridges:
            route = bridge.config.route
            if not isinstance(route, CoapServerRoute):
                route = CoapServerRoute()
            table = self._tables.setdefault(id(bridge.config.route), {})
            points = bridge.points()
            if bridge.config.anomaly is not None:  # the alarm as two read-only resources
                points, added = add_alarm_points(points, self.name)
                self._alarms.setdefault(id(bridge.config.route), {}).update(added)
            for device, specs in points.items():
                dev_path = self._path(route.device_path, device=device)
                dev = self._devices.get(device)
                if dev is None and dev_path not in used:
                    dev = self._devices[device] = _DeviceResource(self, device)
                    self._add(dev_path, dev, used)
                for spec in specs:
                    path = self._path(route.path, device=device, point=spec.name)
                    writable = route.writable and spec.access.writable
                    res = _PointResource(self, bridge, device, spec, writable)
                    if self._add(path, res, used):
                        table.setdefault(device, {})[spec.name] = res
                        if dev is not None:
                            dev.points[spec.name] = res

    def retype(self, device: str) -> None:
        """Serve ``device``'s points as it has declared them again (its types learned once
        connected, see the module docstring): PUT parses by, and ``rt`` lists, the new type."""
        for res, spec in respecified(self._bridges, self._tables, device):
            res.retype(spec)

    def _path(self, template: str, **names: str) -> tuple[str, ...]:
        text = template.format(gateway=self.context.gateway_name, **names)
        return tuple(part for part in text.split("/") if part)

    def _add(self, path: tuple[str, ...], res: Any, used: set[tuple[str, ...]]) -> bool:
        if not path or path in used or path[0] == ".well-known":
            log.warning(
                "%s: resource /%s skipped: empty, reserved or used", self.name, "/".join(path)
            )
            return False
        used.add(path)
        self.site.add_resource(path, res)
        return True

    # -- lifecycle

    async def __aenter__(self) -> CoapServerAdapter:
        self._build()
        self.site.add_resource((".well-known", "core"), _WellKnownCore(self, self.site))
        site: Any = self.site
        credentials = None
        oscore = self.config.security.oscore
        dtls = self.config.security.dtls
        if dtls is not None:
            await self._serve_dtls()
        else:
            if oscore is not None:
                from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

                credentials = oscore_credentials(oscore, self.name, ":client")
                site = OscoreSiteWrapper(self.site, credentials)
            try:
                await asyncio.to_thread(port_free, self.config.host, self.config.port)
                self._context = await aiocoap.Context.create_server_context(
                    site,
                    bind=(self.config.host, self.config.port),
                    server_credentials=credentials,
                    transports=["udp6"],
                )
            except BaseException:  # a port in use: no __aexit__ follows, the lock must go now
                release_credentials(credentials)
                raise
        assert self._context is not None
        self._credentials = credentials
        cfg = self.config
        self.limits = FloodLimits(
            self.name,
            **{
                "rate": cfg.max_request_rate,
                "burst": cfg.max_request_rate,
                "safe_limit": cfg.max_exchanges,
                "unsafe_limit": cfg.max_exchanges,
                **self.flood_limits,
            },
        )
        self.limits.install(self._context)
        resources = counted(
            sum(len(points) for table in self._tables.values() for points in table.values()),
            "resource",
        )
        if dtls is not None:
            plain = f", plain CoAP (reads) on port {cfg.port}" if dtls.plain_reads else ""
            log.info(
                "%s: CoAP server on %s: coaps (DTLS, PSK, %s) on port %d%s, %s",
                self.name, cfg.host, counted(len(dtls.psk), "identity", "identities"),
                dtls.port, plain, resources,
            )  # fmt: skip
        else:
            log.info(
                "%s: CoAP server on %s:%d, %s%s",
                self.name, cfg.host, cfg.port, resources, ", OSCORE" if oscore is not None else "",
            )  # fmt: skip
        writable = sum(
            res.writable for table in self._tables.values() for points in table.values()
            for res in points.values()
        )  # fmt: skip
        warning = self.config.write_warning(writable)
        if warning is not None:
            log.warning("%s: %s", self.name, warning)
        return self

    async def _serve_dtls(self) -> None:
        """Listen for coaps:// (and plain CoAP reads with ``plain_reads``): see the docstring
        of protocols/coap/dtls.py for why the context is built there."""
        cfg = self.config
        dtls = cfg.security.dtls
        assert dtls is not None
        require_dtlssocket(self.name)
        plain = cfg.port if dtls.plain_reads else None
        for port in (dtls.port, plain):
            if port is not None:
                await asyncio.to_thread(port_free, cfg.host, port)
        self._context = await serve(
            self.site,
            server_credentials(dtls.psk),
            host=cfg.host,
            dtls_port=dtls.port,
            plain_port=plain,
            max_sessions=dtls.max_sessions,
            idle_timeout=dtls.idle_timeout,
        )

    async def __aexit__(self, *exc: object) -> None:
        if self._context is not None:
            with contextlib.suppress(Exception):
                await self._context.shutdown()
            self._context = None
        if self.limits is not None:
            self.limits.close()
        self.observing.close()
        release_credentials(self._credentials)
        self._credentials = None

    async def run(self) -> None:
        while True:  # the sweep for quiet observations (see the module docstring)
            await asyncio.sleep(CONFIRM_INTERVAL / 4)
            now = time.monotonic()
            for res in self._observable():
                res.confirm_quiet(now)

    def _observable(self) -> Iterator[_Guarded]:
        yield from self._devices.values()
        for table in self._tables.values():
            for points in table.values():
                yield from points.values()

    def guard(self, request: aiocoap.Message) -> None:
        security = self.config.security
        if security.dtls is not None:
            # over DTLS every request comes from a known identity (the handshake checked it);
            # plain CoAP (plain_reads) may only read
            if identity_of(request.remote) is None and int(request.code) not in SAFE_CODES:
                raise _Refused(Code.UNAUTHORIZED, "DTLS required (coaps://) for anything but GET")
            return
        if security.oscore is None or not security.require:
            return
        from aiocoap.transports.oscore import OSCOREAddress

        if not isinstance(request.remote, OSCOREAddress):
            raise _Refused(Code.UNAUTHORIZED, "OSCORE required")

    def content(self, payload: bytes, fmt: Format) -> aiocoap.Message:
        response = aiocoap.Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))
        response.opt.max_age = self.config.max_age
        return response

    # -- values

    async def send(self, message: Message, route: Any) -> None:
        if self.foreign_events.dropped_if_foreign(message):
            return
        table = self._tables.get(id(route))
        points = table.get(message.device or "") if table is not None else None
        if not points:
            return
        alarm = self._alarms.get(id(route))
        names = alarm.get(message.device or "", ()) if alarm else ()
        samples = served_samples(message, names)
        changed = False
        for sample in samples:
            res = points.get(sample.point)
            if res is None:
                continue
            if isinstance(sample.value, float) and not math.isfinite(sample.value):
                sample = Sample(sample.point, None, Quality.BAD, sample.source_ts,
                                sample.gateway_ts, sample.unit, "not a finite number")  # fmt: skip
            if res.update(sample):
                changed = True
                self.notifications += 1
                res.updated_state()
        dev = self._devices.get(message.device or "")
        if changed and dev is not None:
            dev.updated_state()

    def status(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "notifications": self.notifications,  # changes of a point's value or quality
            "notifications_sent": self.notifications_sent,  # to observers, of points and packs
            "writes": dict(self.writes),
            # requests dropped unanswered under a flood (protocols/coap/limits.py)
            "dropped": sum(self.limits.dropped.values()) if self.limits is not None else 0,
            "observations": self.observing.held(),
            "observe_refused": self.observing.refused,  # answered without Observe: at a cap
            "events_dropped": self.foreign_events.dropped,  # events it cannot serve
            **self._dtls_status(),
        }

    def _dtls_status(self) -> dict[str, Any]:
        if self.config.security.dtls is None:
            return {}
        # sessions held (handshakes under way included), and ended for silence since start
        return {"dtls": server_status(self._context)}
