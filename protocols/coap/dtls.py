"""coaps:// (DTLS 1.2 with a pre-shared key) through aiocoap's tinydtls transports (DTLSSocket).

The cipher is tinydtls' only PSK suite, TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655; the one CoAP
names, RFC 7252 section 9.1.3.1). aiocoap calls these transports experimental; what they lack,
and what is added here:

Client (``tinydtls``). A DTLS session the server has forgotten (it restarted, and no ICMP said
so) is used for ever: every record goes to a server that drops it, and requests time out without
end. So a request that times out ends the session (`drop_sessions`), and the next one shakes
hands afresh. A wrong key gets no answer at all from most servers (a Finished message that does
not verify is dropped, as DTLS drops any record that fails its check), so a timeout while the
handshake is still under way (`handshake_pending`) is reported as such.

Server (``tinydtls_server``). aiocoap binds it to the given port + 1 (libcoap's convention: coap
on N, coaps on N + 1), so `create_server_context` is not used: `serve` builds the context with
the transports it needs, each on its own port. Its session table grows with every source address
that sends a datagram (a garbage datagram, a stranger's handshake, a peer that vanished half way)
and is never trimmed (aiocoap's ``_maybe_purge_sockets`` is never called), and a session the
client closes (close_notify, a warning-level alert) stays too. `_Sessions` caps the table
(``max_sessions``: the least recently heard from ends) and ends a session on close_notify.
aiocoap's server also cannot bind every address (``::``): the config asks for one address.

Idle sessions. Within the cap, a session would stay until the table fills: a client that
vanished, or a stranger's handshake, holds its slot (and its tinydtls context). So a session not
heard from for ``idle_timeout`` ends, and a handshake not finished (or a garbage datagram's
session) after `HANDSHAKE_TIMEOUT` of silence; one sweep checks, every quarter of the shorter
limit (at most `MAX_SWEEP_INTERVAL`), only while sessions are held. A session with a request
under way (an Observe registration, a PUT waiting for its device) is not idle: a quiet observer
is legitimate, and a vanished one is found by a CON notification that fails, which ends the
observation (see protocols/coap/server.py, "Vanished observers"); then it ages as any other.
The server ending a session (idle, or over the cap) sends close_notify to a client that finished
its handshake: without it the client's next requests go to a session the server has forgotten
(tinydtls drops them) until they time out. libcoap's coap-client quits on it; our client
(`client_context`) shakes hands again at its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

from gateway.text import duration
from protocols.coap.config import MAX_IDENTITY, MAX_KEY, Psk

log = logging.getLogger(__name__)

#: What a DTLS alert's code means (RFC 5246 section 7.2, RFC 4279 for 115), for the log
ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    51: "decrypt_error",
    80: "internal_error",
    115: "unknown_psk_identity",
}
LEVEL_WARNING = 1  # RFC 5246: an alert's level
CLOSE_NOTIFY = 0
#: The claim a DTLS request's remote carries, before the identity (see `server_credentials`)
CLAIM_PREFIX = ":dtls:"
#: Seconds of silence after which a session whose handshake has not finished ends (or
#: idle_timeout, when shorter). A handshake is a few round trips, and a client whose flight was
#: lost sends it again within seconds (OpenSSL's and tinydtls' timers start at 1 s and double),
#: so this much silence means it gave up, or was never a client (a spoofed or garbage datagram).
HANDSHAKE_TIMEOUT = 30.0
#: The idle sweep runs every quarter of the shorter limit, at most this far apart
MAX_SWEEP_INTERVAL = 30.0


class DtlsUnavailable(RuntimeError):
    """DTLSSocket, which aiocoap's DTLS transports need, is not installed."""


def require_dtlssocket(name: str) -> None:
    """Raise `DtlsUnavailable`, saying what to install, when DTLSSocket is missing."""
    if importlib.util.find_spec("DTLSSocket") is None:
        raise DtlsUnavailable(
            f"{name}: coaps:// needs the DTLSSocket package: pip install 'protocol-brain[dtls]'"
            " (it builds from source: a C compiler, the Python headers, autoconf and automake)"
        )


def _checked(psk: Psk) -> tuple[bytes, bytes]:
    """The identity and key as bytes, within tinydtls' bounds: DTLSSocket copies a key into a
    16-byte buffer without a check, so this is enforced here too, whatever the config said."""
    identity, key = psk.identity_bytes(), psk.key_bytes()
    if not 0 < len(identity) <= MAX_IDENTITY or b"\0" in identity:
        raise ValueError(f"DTLS identity of {len(identity)} bytes: 1 to {MAX_IDENTITY} expected")
    if not 0 < len(key) <= MAX_KEY:
        raise ValueError(f"DTLS key of {len(key)} bytes: 1 to {MAX_KEY} expected")
    return identity, key


def client_credentials(psk: Psk) -> dict[str, Any]:
    """aiocoap credentials (``load_from_dict``) for every coaps:// URI: the adapter's context
    talks to one device, and aiocoap matches URIs as it writes them (without a default port),
    so a pattern with the device's URL could miss."""
    identity, key = _checked(psk)
    return {"coaps://*": {"dtls": {"psk": key, "client-identity": identity}}}


def server_credentials(psks: Sequence[Psk]) -> Any:
    """aiocoap server credentials: one entry per client, labelled ``:dtls:<identity>`` (the
    claim a request from it carries, `identity_of`)."""
    from aiocoap.credentials import CredentialsMap

    credentials = CredentialsMap()
    entries: dict[str, Any] = {}
    for psk in psks:
        identity, key = _checked(psk)
        entries[CLAIM_PREFIX + psk.identity] = {"dtls": {"psk": key, "client-identity": identity}}
    credentials.load_from_dict(entries)
    return credentials


def identity_of(remote: Any) -> str | None:
    """The PSK identity a request came with over DTLS; None over plain CoAP (or no claim)."""
    if getattr(remote, "scheme", None) != "coaps":
        return None
    for claim in getattr(remote, "authenticated_claims", None) or ():
        if isinstance(claim, str) and claim.startswith(CLAIM_PREFIX):
            return claim.removeprefix(CLAIM_PREFIX)
    return None


def _transport(context: Any, kind: type) -> tuple[Any, Any] | None:
    """The transport of class ``kind`` in ``context``, with the token manager above it
    (aiocoap 0.4: TokenManager -> MessageManager -> transport); None when it has none."""
    for interface in getattr(context, "request_interfaces", ()):
        manager = getattr(interface, "token_interface", None)
        transport = getattr(manager, "message_interface", None)
        if isinstance(transport, kind):
            return interface, transport
    return None


# -- client


def _client_pool(context: Any) -> dict[Any, Any]:
    """The tinydtls client transport's sessions (aiocoap 0.4: (host, port, identity) ->
    DTLSClientConnection); empty when the context has none."""
    from aiocoap.transports.tinydtls import MessageInterfaceTinyDTLS

    found = _transport(context, MessageInterfaceTinyDTLS)
    return dict(found[1]._pool) if found is not None else {}


def alert_reason(cause: object) -> str | None:
    """What a fatal DTLS alert that ended a request says (tinydtls' FatalDTLSError carries its
    code); None for any other cause. A server that does not know the identity, or fails to
    check the key, sends one (tinydtls: internal_error) or stays silent (OpenSSL)."""
    from aiocoap.transports.tinydtls import FatalDTLSError

    if not isinstance(cause, FatalDTLSError):
        return None
    code = cause.args[0] if cause.args else None
    name = ALERTS.get(code, "unknown") if isinstance(code, int) else "unknown"
    return f"DTLS alert {name} ({code}) ended the session (an unknown identity or a wrong key?)"


async def client_context() -> Any:
    """An aiocoap client context for coaps:// (its tinydtls transport) whose session ends when
    the server closes it (close_notify), so that the next request shakes hands again. aiocoap's
    own keeps such a session (it logs "Unhandled alert level 1 code 0") and sends on it until a
    request times out. Our server closes an idle session so (``idle_timeout``): a device polled
    less often than that would time out on every poll."""
    import aiocoap

    context = aiocoap.Context(loop=asyncio.get_running_loop(), serversite=None)
    transport: Any = _client_transport()
    try:
        await context._append_tokenmanaged_messagemanaged_transport(
            lambda manager: transport.create_client_transport_endpoint(
                manager, log=context.log, loop=context.loop
            )
        )
    except BaseException:
        await context.shutdown()
        raise
    return context


def _client_transport() -> type:
    """aiocoap's tinydtls client transport, its sessions ending on close_notify (made on first
    use: its aiocoap base imports DTLSSocket)."""
    from aiocoap.transports import tinydtls as base

    class _Connection(base.DTLSClientConnection):  # type: ignore[misc]
        def _event(self, level: int, code: int) -> None:
            if (level, code) == (LEVEL_WARNING, CLOSE_NOTIFY):
                log.debug("DTLS session to %s closed by the server", self.hostinfo)
                self._inject_error(base.CloseNotifyReceived())
                return
            super()._event(level, code)

    class _Transport(base.MessageInterfaceTinyDTLS):  # type: ignore[misc]
        def _connection_for_address(self, host: str, port: int, psk_id: bytes, psk: bytes) -> Any:
            # as aiocoap's (0.4), with the connection above
            connection = self._pool.get((host, port, psk_id))
            if connection is None:
                connection = _Connection(host, port, psk_id, psk, self)
                self._pool[(host, port, psk_id)] = connection
            return connection

    return _Transport


def handshake_pending(context: Any) -> bool:
    """Whether a DTLS handshake of ``context`` is still under way (its requests queued)."""
    return any(
        getattr(connection, "_queue", None) is not None
        for connection in _client_pool(context).values()
    )


def drop_sessions(context: Any, reason: str) -> None:
    """End ``context``'s DTLS sessions soon: their requests and observations fail with
    ``reason`` (as after an ICMP error) and the next request shakes hands afresh.

    Not at once: a request whose wait just timed out has its response future cancelled, and
    aiocoap lets go of it in that future's done callback, already scheduled; an error given to
    it before would be set on a cancelled future (InvalidStateError) half way through."""
    asyncio.get_running_loop().call_soon(_drop_sessions, context, reason)


def _drop_sessions(context: Any, reason: str) -> None:
    from aiocoap.error import NetworkError

    for connection in _client_pool(context).values():
        try:
            connection._inject_error(NetworkError(reason))
        except Exception:  # a half-made session (its socket not open yet), or a late one
            log.debug("ending a DTLS session", exc_info=True)
            with contextlib.suppress(Exception):
                connection.shutdown()  # at least out of the pool: the next one is new


# -- server


def _server_table(context: Any) -> Any:
    """The DTLS server's session table (a `_Sessions`); None when ``context`` has none."""
    from aiocoap.transports.tinydtls_server import MessageInterfaceTinyDTLSServer

    found = _transport(context, MessageInterfaceTinyDTLSServer)
    return found[1]._pool if found is not None else None


def server_status(context: Any) -> dict[str, int]:
    """What ``context``'s DTLS server holds: ``sessions`` (handshakes under way included) and
    ``sessions_expired`` (ended for silence, since start)."""
    table = _server_table(context)
    if table is None:
        return {"sessions": 0, "sessions_expired": 0}
    return {"sessions": len(table._connections), "sessions_expired": table.expired}


def _server_classes() -> tuple[type, type]:
    """The session table and transport classes of the server, made on first use: their aiocoap
    bases import DTLSSocket."""
    from aiocoap import error
    from aiocoap.transports import tinydtls_server as base

    class _Session(base._AddressDTLS):  # type: ignore[misc]
        """A client's DTLS session that ends on close_notify, tells its host's address, and
        knows when it was last heard from and whether its handshake finished."""

        def __init__(self, protocol: Any, underlying_address: Any) -> None:
            super().__init__(protocol, underlying_address)
            self.heard = asyncio.get_running_loop().time()
            self.connected = False  # its handshake finished

        @property
        def sockaddr(self) -> Any:  # ObserveLimits counts observations per host by this
            return self._underlying_address.address

        def _event(self, level: int, code: int) -> None:
            if (level, code) == (base.LEVEL_NOALERT, base.DTLS_EVENT_CONNECTED):
                self.connected = True
                return
            if (level, code) == (LEVEL_WARNING, CLOSE_NOTIFY):
                self._inject_error(base.CloseNotifyReceived())  # the client closed it
                return
            if level == base.LEVEL_FATAL:
                log.info(
                    "DTLS alert %s from or to %s: session ended",
                    ALERTS.get(code, code),
                    self.hostinfo,
                )
            super()._event(level, code)

        def end(self, reason: str) -> None:
            """End the session by the server's choice (idle, or over the cap). A client that
            finished its handshake is told (close_notify): see the module docstring."""
            if self.connected:
                try:
                    self._dtls_socket.close(self._dtls_session)
                except Exception:  # the session goes all the same
                    log.debug("close_notify to %s", self.hostinfo, exc_info=True)
            self._inject_error(error.LibraryShutdown(reason))

        def _inject_error(self, e: Exception) -> None:
            # aiocoap's pops the session without a default: a second event raised KeyError
            self._protocol._message_interface._received_exception(self, e)
            self._retransmission_task.cancel()
            sessions = self._protocol._connections
            if sessions.get(self._underlying_address.address) is self:
                del sessions[self._underlying_address.address]

    class _Sessions(base._DatagramServerSocketSimpleDTLS):  # type: ignore[misc]
        """The session table: capped, oldest heard from first (aiocoap moves a session to the
        end on each datagram), swept for idle sessions (see the module docstring)."""

        _Address = _Session
        max_sockets = 256  # per server: see `serve`
        idle_timeout = 600.0  # likewise

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.expired = 0  # sessions ended for silence, since start
            #: the token manager whose requests under way keep their sessions (set by `serve`)
            self.token_manager: Any = None
            self._sweep_timer: asyncio.TimerHandle | None = None
            super().__init__(*args, **kwargs)

        def datagram_received(self, data: bytes, sockaddr: Any) -> None:
            if sockaddr not in self._connections:
                self._maybe_purge_sockets()
            super().datagram_received(data, sockaddr)
            session = self._connections.get(sockaddr)  # gone if the datagram ended it
            if session is not None:
                session.heard = asyncio.get_running_loop().time()
                if self._sweep_timer is None:
                    self._schedule()

        def _maybe_purge_sockets(self) -> None:
            while len(self._connections) >= self.max_sockets:
                _, oldest = next(iter(self._connections.items()))
                oldest.end("too many DTLS sessions")

        def _limits(self) -> tuple[float, float]:
            """Seconds of silence that end a session: (handshake not finished, finished)."""
            return min(HANDSHAKE_TIMEOUT, self.idle_timeout), self.idle_timeout

        def _schedule(self) -> None:
            interval = min(min(self._limits()) / 4, MAX_SWEEP_INTERVAL)
            self._sweep_timer = asyncio.get_running_loop().call_later(interval, self._sweep)

        def _sweep(self) -> None:
            self._sweep_timer = None
            now = asyncio.get_running_loop().time()
            handshake, idle = self._limits()
            busy: set[Any] | None = None
            for session in list(self._connections.values()):
                silent = now - session.heard
                if silent < handshake and silent < idle:
                    break  # the rest were heard from later
                if silent < (idle if session.connected else handshake):
                    continue
                if busy is None:  # the sessions with a request under way (an observation)
                    requests = getattr(self.token_manager, "incoming_requests", None) or {}
                    busy = {remote for _, remote in requests}
                if session in busy:
                    continue
                self.expired += 1
                what = "session" if session.connected else "unfinished handshake"
                reason = f"DTLS {what} with {session.hostinfo}: silent for {duration(silent)}"
                log.debug("%s: ended", reason)
                session.end(reason)
            if self._connections:
                self._schedule()

        def stop_sweeping(self) -> None:
            if self._sweep_timer is not None:
                self._sweep_timer.cancel()
                self._sweep_timer = None

    class _Server(base.MessageInterfaceTinyDTLSServer):  # type: ignore[misc]
        async def shutdown(self) -> None:
            # aiocoap's ends each session with an error through the message manager, which has
            # shut down by then (one warning per session): let them go quietly instead
            self._pool.stop_sweeping()
            for session in list(self._pool._connections.values()):
                session._retransmission_task.cancel()
            self._pool._connections.clear()
            await self._pool.shutdown()

    return _Sessions, _Server


async def serve(
    site: Any,
    credentials: Any,
    *,
    host: str,
    dtls_port: int,
    plain_port: int | None,
    max_sessions: int,
    idle_timeout: float,
) -> Any:
    """An aiocoap server context for ``site``: coaps on ``dtls_port`` (PSK, ``credentials``),
    at most ``max_sessions`` sessions, each ended after ``idle_timeout`` seconds of silence, and
    plain CoAP (udp6) on ``plain_port`` unless None. Built by hand (aiocoap 0.4's private
    ``_append_tokenmanaged_messagemanaged_transport``): `create_server_context` would put the
    DTLS server on the plain port + 1."""
    import aiocoap
    from aiocoap.numbers import COAP_PORT, COAPS_PORT
    from aiocoap.transports.udp6 import MessageInterfaceUDP6

    sessions, server = _server_classes()
    table = type("_Table", (sessions,), {"max_sockets": max_sessions, "idle_timeout": idle_timeout})
    server_class: Any = type("_DtlsServer", (server,), {"_serversocket": table})
    loop = asyncio.get_running_loop()
    context = aiocoap.Context(loop=loop, serversite=site, server_credentials=credentials)
    # the transport adds COAPS_PORT - COAP_PORT (1) to the port it is given
    bind = (host, dtls_port - (COAPS_PORT - COAP_PORT))
    try:
        await context._append_tokenmanaged_messagemanaged_transport(
            lambda manager: server_class.create_server(
                bind, manager, log=context.log, loop=loop, server_credentials=credentials
            )
        )
        found = _transport(context, server_class)
        assert found is not None
        found[1]._pool.token_manager = found[0]
        if plain_port is not None:
            await context._append_tokenmanaged_messagemanaged_transport(
                lambda manager: MessageInterfaceUDP6.create_server_transport_endpoint(
                    manager, log=context.log, loop=loop, bind=(host, plain_port), multicast=[]
                )
            )
    except BaseException:
        await context.shutdown()
        raise
    return context
