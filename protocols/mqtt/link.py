"""paho-mqtt driven by the asyncio loop: what every MQTT-based adapter (the MQTT endpoint, the
Sparkplug edge node) does the same way with its broker connection.

paho's own network thread would call back into the gateway from another thread; instead its
socket is registered with the event loop (``on_socket_*`` callbacks), read and written when the
loop says it is ready, and ``loop_misc`` runs once a second for the keepalive.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from gateway.backoff import BackoffTimer
from gateway.config.common import Backoff
from protocols.mqtt.config import Tls

_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS


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


def connack_refusal(address: str, reason_code: Any) -> str | None:
    """Why the broker's CONNACK refused the connection, with what to check; None if it
    accepted it."""
    if not getattr(reason_code, "is_failure", False):
        return None
    text = str(reason_code)
    hint = ""
    if getattr(reason_code, "value", 0) in (134, 135) or text in (
        "Not authorized",
        "Bad user name or password",
    ):
        hint = " (check username and password)"
    return f"{address} refused the connection: {text}{hint}"


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

    def _aim(self, brokers: list[tuple[str, int]], keepalive: int) -> None:
        """The brokers to connect to, (host, port) in the order tried; the first in use."""
        self._brokers, self._keepalive = brokers, keepalive
        self._use_broker(0)

    def _use_broker(self, index: int) -> None:
        """Aim paho at broker ``index`` (no I/O: the next attempt connects there)."""
        host, port = self._brokers[index]
        self._broker = index
        self.address = f"{host}:{port}"
        if self._client is not None:
            self._client.connect_async(host, port, self._keepalive)

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
                reason = await self._serve_session()
                if self._closing:
                    break
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

    def _settle_connack(self, reason_code: Any, error: type[Exception]) -> None:
        """The CONNACK's verdict (paho's on_connect): ``_connect_fut`` done, and
        ``_connected`` if the broker accepted; ``error`` saying why if it refused."""
        fut = self._connect_fut
        refusal = connack_refusal(self.address, reason_code)
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
        if fd >= 0 and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _add_writer(self, sock: Any) -> None:
        if sock is self._sock and self._loop is not None:
            self._loop.add_writer(self._fd, self._on_writable)

    def _remove_writer(self, sock: Any) -> None:
        if sock is self._sock and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            # Buffered bytes (ours, or TLS's) are invisible to select(): read until drained.
            while client.loop_read() == _SUCCESS and self._read_pending(client):
                pass
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
