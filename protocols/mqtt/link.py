"""paho-mqtt driven by the asyncio loop: what every MQTT-based adapter (the MQTT endpoint, the
Sparkplug edge node) does the same way with its broker connection.

paho's own network thread would call back into the gateway from another thread; instead its
socket is registered with the event loop (``on_socket_*`` callbacks), read and written when the
loop says it is ready, and ``loop_misc`` runs once a second for the keepalive.

Failback (``failback:`` seconds, where the class passes it to `PahoOnLoop._aim`): while a session
is up on a broker other than the first, the first is probed every so often with a connection of
its own (same credentials and TLS, a client id of its own so that the session in use is not
taken over, CONNECT, CONNACK, DISCONNECT; in the executor, since paho's connect blocks). Only an
accepted CONNACK moves: the class ends its session as a clean stop would (`_leave_for_first`),
and the next session is on the first broker at once, without the backoff delay. A probe that
fails changes nothing and is logged once per outage of the first broker.

Sessions (``session: {persistent: true}``, where the class passes it to `PahoOnLoop._aim`):
every connect asks the broker to keep the session (3.1.1 clean session false; MQTT 5 clean
start false and a Session Expiry Interval), so what is published to its subscriptions while
the gateway is away waits there. A clean stop's DISCONNECT carries no Session Expiry
Interval: the CONNECT's holds, and the session outlives a restart. Each broker of ``failover``
keeps a session of its own; the failback probe always asks for a clean one, under its own
client id, so it neither takes the session nor leaves one behind. Each accepted CONNACK's
Session Present flag is noted (`_note_session`): a broker that had none where this process
had made one (restarted without persistence, or the expiry passed) is said once per CONNACK.
Sparkplug never asks for a kept session (its specification requires clean ones).

Holding the broker back (`PahoOnLoop.hold_reading`): a consumer that must drop nothing (the
shadow's requests) names its bus queue and a high mark. Messages go to the bus without waiting
(a paho callback cannot), so the queue is looked at before each packet is read: at the mark the
socket is no longer read, until the queue is down to half of it (looked at every
`HOLD_LOOK_S`). TCP then holds the broker back, and a broker keeps what it has not sent (a
persistent session's backlog stays queued there). While held, nothing else of the connection
is read either (acknowledgements, other subscriptions); held past the keepalive, paho takes the
connection for dead and it is made again.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.backoff import BackoffTimer
from gateway.config.common import Backoff
from protocols.mqtt.config import BrokerSettings, MqttSession, Tls

_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
HOLD_LOOK_S = 0.01  # while reading is held: how often the queues are looked at again


class HeldQueue(Protocol):
    """What `PahoOnLoop.hold_reading` needs of a queue (a bus `Subscription` has it)."""

    def __len__(self) -> int: ...

    @property
    def closed(self) -> bool: ...


def paho_client(
    client_id: str, *, v5: bool, cls: type[paho.Client] = paho.Client, persistent: bool = False
) -> Any:
    """A paho client (``cls``) that reconnects only when told: MQTT 3.1.1 with a clean
    session (a kept one with ``persistent``), or MQTT 5, whose clean start is a connect option
    (`PahoOnLoop._connect_options`)."""
    if v5:
        return cls(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
    return cls(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )


def tls_context(
    tls: Tls, what: str, address: str, error: type[Exception], log: logging.Logger
) -> ssl.SSLContext:
    """The TLS context of ``tls``; ``error`` (with ``what`` first) naming the file that is
    wrong, which ssl's own error does not say."""
    files = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}
    for key, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise error(f"{what}: tls.{key} {path}: no such file")
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file is not None:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise error(f"{what}: cannot load TLS files: {exc}") from None
    if tls.insecure:
        log.warning(
            "%s: tls.insecure is set, the broker's certificate is NOT checked "
            "(anyone on the path can impersonate %s)",
            what,
            address,
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe_connect_error(exc: BaseException, address: str, host: str) -> str:
    """One line on why a connection to the broker at ``address`` failed, with what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            "set tls.ca_file to the CA that signed it"
            if "hostname" not in str(exc).lower() and "match" not in str(exc).lower()
            else "connect with the host name or IP address the certificate was issued for"
        )
        return f"TLS certificate of {address} rejected: {exc.verify_message or exc} ({hint})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {address} failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {address} refused (is the broker running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve broker host {host!r}: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {address}"
    if isinstance(exc, OSError):
        return f"cannot connect to {address}: {exc.strerror or exc}"
    return f"cannot connect to {address}: {exc}"


def reason_text(reason_code: Any, properties: Any = None) -> str:
    """An MQTT 5 reason code as an integrator reads it: ``Not authorized (135)``, with the
    broker's reason string when it sent one (``Not authorized (135): ACL denied``)."""
    text = f"{reason_code} ({getattr(reason_code, 'value', '?')})"
    said = getattr(properties, "ReasonString", None)
    return f"{text}: {said}" if said else text


def connack_refusal(
    address: str, reason_code: Any, properties: Any = None, *, v5: bool = False
) -> str | None:
    """Why the broker's CONNACK refused the connection, with what to check; None if it
    accepted it. ``v5``: the code is the one on the wire, so it is named (`reason_text`);
    paho translates a 3.1.1 return code into a text of its own."""
    if not getattr(reason_code, "is_failure", False):
        return None
    text = reason_text(reason_code, properties) if v5 else str(reason_code)
    hint = ""
    if getattr(reason_code, "value", 0) in (134, 135) or text in (
        "Not authorized",
        "Bad user name or password",
    ):
        hint = " (check username and password)"
    return f"{address} refused the connection: {text}{hint}"


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """What an MQTT 5 broker's CONNACK says it takes (3.2.2.3.4 to 3.2.2.3.6): QoS up to
    ``max_qos``, retained messages only if ``retain``, packets of ``max_packet`` bytes at most
    (None: no limit). A client that sends past them commits a protocol error, which brokers
    answer with DISCONNECT. They hold for one connection: another broker (failover), or the
    same one restarted, may say otherwise. `NO_LIMITS` is MQTT 3.1.1's (no such properties)."""

    max_qos: int = 2
    retain: bool = True
    max_packet: int | None = None

    @classmethod
    def of(cls, properties: Any) -> BrokerLimits:
        """The limits a CONNACK's properties (paho's) set; an absent property sets none, and
        no limit at all is `NO_LIMITS` itself (callers may test ``is NO_LIMITS``)."""
        limits = cls(
            max_qos=getattr(properties, "MaximumQoS", 2),
            retain=bool(getattr(properties, "RetainAvailable", 1)),
            max_packet=getattr(properties, "MaximumPacketSize", None),
        )
        return NO_LIMITS if limits == NO_LIMITS else limits


NO_LIMITS = BrokerLimits()


class PahoOnLoop(abc.ABC):
    """Mixin: a paho client's connection kept up and its socket served by the asyncio loop.

    The class sets ``_client``, ``_loop`` and ``_loop_thread`` (the loop's thread, where the
    socket callbacks may run directly; the connect thread hops over), names itself in
    ``LABEL``, ``LOG``, ``name`` and ``address`` for log lines, and implements the abstract
    steps: one connection attempt, serving it, its loss, closing. `_keep_connected` is the
    reconnect loop; `install` registers the socket callbacks; `_aim` says which brokers there
    are (the entry's ``host`` and ``failover``) and `_use_broker` sets the one tried next."""

    LABEL = "MQTT"
    LOG = logging.getLogger(__name__)
    name: str
    address: str
    connect_timeout: float
    last_error: str | None
    reconnects: int
    client_id: str
    _client: paho.Client | None
    _loop: asyncio.AbstractEventLoop | None
    _loop_thread: int
    _closing: bool
    _connected: bool

    def _init_socket(self) -> None:
        self._fd = -1
        self._sock: Any = None
        self._misc_timer: asyncio.TimerHandle | None = None
        self._connect_fut: asyncio.Future[None] | None = None  # settled by the CONNACK
        self._disconnected: asyncio.Future[str] | None = None  # the connection's end, why
        self._connect_job: asyncio.Future[Any] | None = None  # paho's connect, in a thread
        self._connections = 0
        self._brokers: list[tuple[str, int]] = []
        self._broker = 0  # the index in _brokers of the one in use or tried next
        self._keepalive = 60
        self.failovers = 0  # moves to another broker
        self._move_on = False  # the session that ended asked for the next broker
        self._failback: float | None = None  # seconds between probes of the first broker
        self.failbacks = 0  # moves back to the first broker
        self._failing_back = False  # the session that ended did so for the first broker
        self._first_down_said = False  # a failed probe logged for this outage of the first
        self._settings: BrokerSettings | None = None  # credentials, for `_sign_in`
        self._tls: ssl.SSLContext | None = None
        self._v5 = False  # MQTT 5 (session, failover and probe alike), else 3.1.1
        self._persistent = False  # the broker keeps the session (`_aim`'s ``session``)
        self._session_expiry = 0  # MQTT 5: the Session Expiry Interval of a kept session
        self.session_present: bool | None = None  # the last accepted CONNACK's flag
        self.sessions_lost = 0  # CONNACKs without the session this process had made there
        self._kept_at: set[int] = set()  # brokers (index) where a kept session was made
        self._holds: list[tuple[HeldQueue, int]] = []  # (queue, high mark): `hold_reading`
        self._read_held = False  # the socket is not read: a held queue is at its mark
        self._hold_timer: asyncio.TimerHandle | None = None
        self.read_pauses = 0  # times reading was held for a full queue

    def _aim(
        self,
        brokers: list[tuple[str, int]],
        keepalive: int,
        failback: float | None = None,
        *,
        v5: bool = False,
        session: MqttSession | None = None,
    ) -> None:
        """The brokers to connect to, (host, port) in the order tried; the first in use. With
        ``failback`` (seconds), a session on another broker moves back to the first once it
        answers (the class implements `_leave_for_first`). ``v5``: MQTT 5, else 3.1.1.
        ``session``: a persistent one is asked for on every connect; None: clean."""
        self._brokers, self._keepalive, self._v5 = brokers, keepalive, v5
        if session is not None:
            self._persistent = session.persistent
            self._session_expiry = session.expiry_s
        self._failback = failback if len(brokers) > 1 else None
        self._use_broker(0)

    def _login(self, cfg: BrokerSettings, what: str, error: type[Exception]) -> None:
        """Keep the entry's credentials and TLS context (its files read once, ``error`` naming
        a bad one) for `_sign_in`."""
        self._settings = cfg
        tls = cfg.tls
        self._tls = None if tls is None else tls_context(tls, what, self.address, error, self.LOG)

    def _sign_in(self, client: paho.Client) -> None:
        """The entry's username, password and TLS on ``client``: the session's, or a probe's."""
        cfg = self._settings
        assert cfg is not None, "_login first"
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
            if cfg.tls is not None and cfg.tls.insecure:
                client.tls_insecure_set(True)

    def _use_broker(self, index: int) -> None:
        """Aim paho at broker ``index`` (no I/O: the next attempt connects there)."""
        host, port = self._brokers[index]
        self._broker = index
        self.address = f"{host}:{port}"
        if self._client is not None:
            self._client.connect_async(host, port, self._keepalive, **self._connect_options())

    def _connect_options(self) -> dict[str, Any]:
        """MQTT 5: clean start on every connect, as 3.1.1's clean session (paho's default
        would resume the session after the first), so no session outlives a connection; a
        persistent session's: no clean start, and its Session Expiry Interval (without it the
        broker would end the session with the connection, MQTT 5 3.1.2.11.2)."""
        if not self._v5:
            return {}
        if not self._persistent:
            return {"clean_start": True}
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        return {"clean_start": False, "properties": props}

    def _note_session(self, present: bool) -> None:
        """An accepted CONNACK's Session Present flag: kept for the status, and said when a
        persistent session was asked for and the broker had none. After this process made one
        there, that is a loss (messages sent meanwhile are gone): a warning, counted in
        ``sessions_lost``; on the first connection to it, a note (first run, or the session
        expired while the gateway was stopped). Either way the subscriptions are made anew."""
        self.session_present = present
        if not self._persistent:
            return
        made = self._broker in self._kept_at
        self._kept_at.add(self._broker)
        if present:
            return
        expiry = f" (session expiry {self._session_expiry} s)" if self._v5 else ""
        if made:
            self.sessions_lost += 1
            self.LOG.warning(
                "%s %s: %s has no session for %s any more (the broker restarted without"
                " persistence, or the session expired%s): what was published for the gateway"
                " meanwhile is lost; subscribing afresh",
                self.LABEL,
                self.name,
                self.address,
                self.client_id,
                expiry,
            )
        else:
            self.LOG.info(
                "%s %s: %s has no session for %s (first connection, or it expired or was"
                " lost while the gateway was stopped%s); subscribing afresh",
                self.LABEL,
                self.name,
                self.address,
                self.client_id,
                expiry,
            )

    @property
    def _broker_host(self) -> str:
        return self._brokers[self._broker][0]

    def _next_broker(self) -> None:
        """After a failed attempt, or a session that asked to move on (`_move_on`): the next
        broker, if there is another. A lost connection is first retried where it was: a
        broker's restart is the common case."""
        if len(self._brokers) > 1:
            self._use_broker((self._broker + 1) % len(self._brokers))
            self.failovers += 1

    @abc.abstractmethod
    async def _connect_once(self) -> None:
        """One connection attempt up to CONNACK (`_connect_paho`, after the class's own
        preparation); the class's error if it fails."""

    @abc.abstractmethod
    async def _serve_session(self) -> str:
        """Serve a connection that is up, until it is lost; why it was lost."""

    @abc.abstractmethod
    def _connection_lost(self, reason: str) -> None:
        """The connection is gone (paho said so, or we dropped it): settle what waits on it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect and close; idempotent."""

    def _unreachable(self, reason: str) -> None:  # noqa: B027 - optional, nothing by default
        """A connection attempt failed or the connection was lost (``reason``): what the class
        marks before the backoff delay (the MQTT endpoint's points go Bad)."""

    def _wrote(self) -> None:  # noqa: B027 - optional, nothing by default
        """paho wrote from its backlog: a writer waiting for room may go on."""

    async def _keep_connected(self, error: type[Exception], reconnect: Backoff) -> None:
        """Connect, serve, reconnect with backoff after any loss; until cancelled or closed.
        ``error``: what `_connect_once` raises for an attempt that failed."""
        backoff = BackoffTimer(reconnect)
        try:
            while not self._closing:
                try:
                    await self._connect_once()
                except error as exc:
                    if self._closing:
                        break
                    self.last_error = str(exc)
                    self._unreachable("broker unreachable")
                    delay = backoff.next_delay()
                    tried = self.address
                    self._next_broker()
                    self.LOG.warning(
                        "%s %s: %s; retry %d in %.2f s%s",
                        self.LABEL,
                        self.name,
                        exc,
                        backoff.attempts,
                        delay,
                        "" if self.address == tried else f" with {self.address}",
                    )
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                self._connections += 1
                if self._connections > 1:
                    self.reconnects += 1
                self.last_error = None
                reason = await self._serve_watched()
                if self._closing:
                    break
                if self._failing_back:  # a planned move: no outage, no delay
                    self._back_to_first()
                    continue
                self.last_error = f"connection lost: {reason}"
                self._unreachable(f"connection lost: {reason}")
                delay = backoff.next_delay()
                left = self.address
                if self._move_on:
                    self._move_on = False
                    self._next_broker()
                self.LOG.warning(
                    "%s %s: connection to %s lost (%s); reconnecting in %.2f s%s",
                    self.LABEL,
                    self.name,
                    left,
                    reason,
                    delay,
                    "" if self.address == left else f" with {self.address}",
                )
                await asyncio.sleep(delay)
        finally:
            await self.close()

    # --- failback ------------------------------------------------------------------------------

    async def _serve_watched(self) -> str:
        """`_serve_session`; with failback, on a broker other than the first, the first is
        probed meanwhile and the session ended for it (`_leave_for_first`) once it answers."""
        if self._failback is None or self._broker == 0:
            return await self._serve_session()
        serve = asyncio.ensure_future(self._serve_session())
        answers = asyncio.ensure_future(self._first_answers(self._failback))
        try:
            await asyncio.wait((serve, answers), return_when=asyncio.FIRST_COMPLETED)
            if not serve.done():
                answers.result()  # a failing probe's own bug is raised, not taken for a yes
                self._failing_back = True
                await self._leave_for_first()
            return await serve
        finally:
            answers.cancel()
            serve.cancel()

    async def _first_answers(self, every: float) -> None:
        """Probe the first broker every ``every`` seconds; return once it accepts a CONNECT.
        A refusal is logged once per outage of the first broker, not once per probe."""
        loop = asyncio.get_running_loop()
        host, port = self._brokers[0]
        while True:
            await asyncio.sleep(every)
            why = await loop.run_in_executor(None, self._probe, host, port)
            if why is None:
                self._first_down_said = False
                return
            if not self._first_down_said:
                self._first_down_said = True
                self.LOG.info(
                    "%s %s: staying on %s, the first broker does not answer yet (%s; "
                    "probed every %g s, logged once)",
                    self.LABEL,
                    self.name,
                    self.address,
                    why,
                    every,
                )

    def _probe(self, host: str, port: int) -> str | None:
        """Whether the broker at host:port accepts this entry's CONNECT: None if it does (then
        DISCONNECT), else why not. Blocking: the executor's. A client id of its own, since a
        broker ends the older of two connections with one id (the session in use)."""
        address = f"{host}:{port}"
        probe = paho_client(f"{self.client_id}-probe", v5=self._v5)
        probe.connect_timeout = self.connect_timeout
        self._sign_in(probe)
        verdict: list[Any] = []
        probe.on_connect = lambda _c, _u, _f, code, props: verdict.append((code, props))
        try:
            # TCP, TLS and CONNECT sent; a clean session whatever ours: nothing of it stays
            clean = {"clean_start": True} if self._v5 else {}
            probe.connect(host, port, self._keepalive, **clean)
            deadline = time.monotonic() + self.connect_timeout
            rc = _SUCCESS
            while not verdict and rc == _SUCCESS and time.monotonic() < deadline:
                rc = probe.loop(0.1)
            if not verdict:
                return (
                    f"{address} closed the connection before CONNACK ({paho.error_string(rc)})"
                    if rc != _SUCCESS
                    else f"{address} sent no CONNACK within {self.connect_timeout} s"
                )
            refusal = connack_refusal(address, *verdict[0], v5=self._v5)
            if refusal is None:
                probe.disconnect()  # clean: nothing of the probe stays on the broker
            return refusal
        except Exception as exc:  # OSError, ssl errors, CertificateError (a ValueError)
            return describe_connect_error(exc, address, host)
        finally:
            probe._reset_sockets()  # paho's own close (its __del__ would do it later)

    async def _leave_for_first(self) -> None:
        """End the session in use for a move back to the first broker: here a DISCONNECT (the
        broker drops the will); a class with offline words of its own says them first (the
        MQTT endpoint's retained status)."""
        await self._disconnect("moved back to the first broker")

    def _back_to_first(self) -> None:
        """After `_leave_for_first`: the next attempt is on the first broker."""
        self._failing_back = False
        left = self.address
        self._use_broker(0)
        self.failbacks += 1
        self.LOG.info(
            "%s %s: the first broker %s answers again: left %s for it",
            self.LABEL,
            self.name,
            self.address,
            left,
        )

    async def _disconnect(self, why: str) -> None:
        """DISCONNECT (the broker drops the will) and the connection's end, 1 s at most; the
        socket dropped (``why``) if the broker does not close it by then."""
        client, disconnected = self._client, self._disconnected
        assert client is not None
        client.disconnect()
        if disconnected is not None:
            await asyncio.wait((disconnected,), timeout=1.0)
        if disconnected is None or not disconnected.done():
            self._drop_socket()
            self._connection_lost(why)

    async def _connect_paho(self, error: type[Exception]) -> None:
        """One connection attempt up to CONNACK, whose callback settles ``_connect_fut``;
        ``error`` with one line if it fails."""
        loop, client = self._loop, self._client
        assert loop is not None and client is not None
        self._connect_fut = loop.create_future()
        self._disconnected = loop.create_future()
        job = loop.run_in_executor(None, client.reconnect)
        self._connect_job = job
        try:
            # shielded: a cancelled run() must still let close() wait for the thread to finish
            rc = await asyncio.shield(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # OSError, ssl errors, CertificateError (a ValueError)
            self._drop_socket()
            raise error(describe_connect_error(exc, self.address, self._broker_host)) from None
        if rc != _SUCCESS:
            self._drop_socket()
            raise error(f"cannot connect to {self.address}: {paho.error_string(rc)}")
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._connect_fut
        except TimeoutError:
            self._drop_socket()
            raise error(
                f"{self.address} accepted TCP but sent no CONNACK within {self.connect_timeout} s"
            ) from None

    def _settle_connack(
        self, reason_code: Any, error: type[Exception], properties: Any = None
    ) -> None:
        """The CONNACK's verdict (paho's on_connect): ``_connect_fut`` done, and
        ``_connected`` if the broker accepted; ``error`` saying why if it refused."""
        fut = self._connect_fut
        refusal = connack_refusal(self.address, reason_code, properties, v5=self._v5)
        if refusal is None:
            self._connected = True
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif fut is not None and not fut.done():
            fut.set_exception(error(refusal))
            fut.exception()  # retrieved: the attempt may have been given up already

    def _settle_lost(self, reason: str, before_connack: Exception) -> None:
        """The connection is gone: a CONNACK still awaited fails with ``before_connack``, and
        ``_disconnected`` says ``reason``."""
        self._connected = False
        fut = self._connect_fut
        if fut is not None and not fut.done():
            fut.set_exception(before_connack)
            fut.exception()  # retrieved: nobody awaits it when run() was cancelled meanwhile
        disconnected = self._disconnected
        if disconnected is not None and not disconnected.done():
            disconnected.set_result(reason)

    async def _await_connect_job(self) -> None:
        """On close: let a connect thread still running finish first (at most the connect
        timeout and a second), so that paho is not closed under it."""
        job = self._connect_job
        if job is not None and not job.done():
            await asyncio.wait((job,), timeout=self.connect_timeout + 1)
        if job is not None and job.done() and not job.cancelled():
            job.exception()  # retrieved: run() may have been cancelled while it ran

    def _read_pending(self, client: paho.Client) -> bool:
        """Received bytes not yet handed to paho (TLS's: the socket may not look readable)."""
        sock = client.socket()
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def install(self, client: paho.Client) -> None:
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    @staticmethod
    def uninstall(client: paho.Client) -> None:
        """No callbacks into a closed adapter (paho's __del__ closes the socket too)."""
        client.on_socket_open = None
        client.on_socket_close = None
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None

    def _drop_socket(self) -> None:
        """Close paho's socket without DISCONNECT (the broker will publish the will)."""
        client = self._client
        if client is not None and client.socket() is not None:
            # paho has no public "abort"; _sock_close runs our on_socket_close and closes it.
            client._sock_close()
        self._detach_fd()

    # --- paho socket callbacks (may run on the connect thread: hop to the loop) ------------------

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._attach, sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._detach, sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _attach(self, sock: Any) -> None:
        loop = self._loop
        assert loop is not None
        fd = sock.fileno()
        if fd < 0:
            return
        self._detach_fd()
        self._fd = fd
        self._sock = sock
        loop.add_reader(fd, self._on_readable)
        self._schedule_misc()

    def _detach(self, sock: Any) -> None:
        if sock is self._sock:
            self._detach_fd()

    def _detach_fd(self) -> None:
        fd, self._fd = self._fd, -1
        self._sock = None
        self._cancel_misc_timer()
        self._end_read_hold()
        if fd >= 0 and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _add_writer(self, sock: Any) -> None:
        if sock is self._sock and self._loop is not None:
            self._loop.add_writer(self._fd, self._on_writable)

    def _remove_writer(self, sock: Any) -> None:
        if sock is self._sock and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def hold_reading(self, queue: HeldQueue, high: int) -> None:
        """Read nothing from the broker while ``queue`` holds ``high`` messages or more, until
        it is down to half of that (module docstring); forgotten once the queue is closed.
        Each packet read adds one message at most: a queue of ``high`` + 1 never overflows."""
        self._holds.append((queue, max(1, high)))

    def _queue_full(self, *, below: bool = False) -> bool:
        """A queue at its high mark (``below``: still over half of it)."""
        holds = self._holds
        if not holds:
            return False
        if any(queue.closed for queue, _ in holds):
            holds[:] = [(queue, high) for queue, high in holds if not queue.closed]
        if below:
            return any(len(queue) > high // 2 for queue, high in holds)
        return any(len(queue) >= high for queue, high in holds)

    def _pause_reading(self) -> None:
        loop = self._loop
        assert loop is not None
        if self._fd >= 0:
            loop.remove_reader(self._fd)
        self._read_held = True
        self.read_pauses += 1
        self.LOG.debug("%s %s: reading held (a consumer's queue is full)", self.LABEL, self.name)
        self._hold_timer = loop.call_later(HOLD_LOOK_S, self._look_again)

    def _look_again(self) -> None:
        loop, client = self._loop, self._client
        self._hold_timer = None
        if not self._read_held or loop is None or client is None:
            return
        if self._queue_full(below=True):
            self._hold_timer = loop.call_later(HOLD_LOOK_S, self._look_again)
            return
        self._read_held = False
        if self._fd >= 0:
            loop.add_reader(self._fd, self._on_readable)
            if self._read_pending(client):  # read already, but not handed to paho yet
                loop.call_soon(self._on_readable)

    def _end_read_hold(self) -> None:
        """A socket gone: a new one is read until a queue is at its mark again."""
        self._read_held = False
        timer, self._hold_timer = self._hold_timer, None
        if timer is not None:
            timer.cancel()

    def _on_readable(self) -> None:
        client = self._client
        if client is None or self._read_held:
            return
        try:
            # Buffered bytes (ours, or TLS's) are invisible to select(): read until drained.
            while True:
                if self._queue_full():
                    self._pause_reading()
                    return
                if client.loop_read() != _SUCCESS or not self._read_pending(client):
                    return
        except Exception:
            self.LOG.exception(
                "%s %s: error reading from %s; reconnecting", self.LABEL, self.name, self.address
            )
            self._abort_connection("read error")

    def _on_writable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception:
            self.LOG.exception(
                "%s %s: error writing to %s; reconnecting", self.LABEL, self.name, self.address
            )
            self._abort_connection("write error")
            return
        self._wrote()

    def _schedule_misc(self) -> None:
        if self._loop is not None:
            self._misc_timer = self._loop.call_later(1.0, self._on_misc)

    def _cancel_misc_timer(self) -> None:
        timer, self._misc_timer = self._misc_timer, None
        if timer is not None:
            timer.cancel()

    def _on_misc(self) -> None:
        self._misc_timer = None
        client = self._client
        if client is None or self._fd < 0:
            return
        try:
            client.loop_misc()  # keepalive: PINGREQ, and a dead peer detected
        except Exception:
            self.LOG.exception("%s %s: keepalive error", self.LABEL, self.name)
            self._abort_connection("keepalive error")
            return
        if self._fd >= 0 and self._misc_timer is None:
            self._schedule_misc()

    def _abort_connection(self, reason: str) -> None:
        self._drop_socket()
        self._connection_lost(reason)
