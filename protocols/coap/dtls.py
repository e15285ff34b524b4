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
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

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


# -- client


def _client_pool(context: Any) -> dict[Any, Any]:
    """The tinydtls client transport's sessions (aiocoap 0.4: (host, port, identity) ->
    DTLSClientConnection); empty when the context has none."""
    from aiocoap.transports.tinydtls import MessageInterfaceTinyDTLS

    for interface in getattr(context, "request_interfaces", ()):
        manager = getattr(interface, "token_interface", None)
        transport = getattr(manager, "message_interface", None)
        if isinstance(transport, MessageInterfaceTinyDTLS):
            return dict(transport._pool)
    return {}


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


def server_sessions(context: Any) -> int:
    """How many DTLS sessions ``context``'s server holds (handshakes under way included)."""
    from aiocoap.transports.tinydtls_server import MessageInterfaceTinyDTLSServer

    for interface in getattr(context, "request_interfaces", ()):
        manager = getattr(interface, "token_interface", None)
        transport = getattr(manager, "message_interface", None)
        if isinstance(transport, MessageInterfaceTinyDTLSServer):
            return len(transport._pool._connections)
    return 0


def _server_classes() -> tuple[type, type]:
    """The session table and transport classes of the server, made on first use: their aiocoap
    bases import DTLSSocket."""
    from aiocoap import error
    from aiocoap.transports import tinydtls_server as base

    class _Session(base._AddressDTLS):  # type: ignore[misc]
        """A client's DTLS session that ends on close_notify and tells its host's address."""

        @property
        def sockaddr(self) -> Any:  # ObserveLimits counts observations per host by this
            return self._underlying_address.address

        def _event(self, level: int, code: int) -> None:
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

        def _inject_error(self, e: Exception) -> None:
            # aiocoap's pops the session without a default: a second event raised KeyError
            self._protocol._message_interface._received_exception(self, e)
            self._retransmission_task.cancel()
            sessions = self._protocol._connections
            if sessions.get(self._underlying_address.address) is self:
                del sessions[self._underlying_address.address]

    class _Sessions(base._DatagramServerSocketSimpleDTLS):  # type: ignore[misc]
        _Address = _Session
        max_sockets = 256  # per server: see `serve`

        def datagram_received(self, data: bytes, sockaddr: Any) -> None:
            if sockaddr not in self._connections:
                self._maybe_purge_sockets()
            super().datagram_received(data, sockaddr)

        def _maybe_purge_sockets(self) -> None:
            while len(self._connections) >= self.max_sockets:
                _, oldest = next(iter(self._connections.items()))
                oldest._inject_error(error.LibraryShutdown("too many DTLS sessions"))

    class _Server(base.MessageInterfaceTinyDTLSServer):  # type: ignore[misc]
        async def shutdown(self) -> None:
            # aiocoap's ends each session with an error through the message manager, which has
            # shut down by then (one warning per session): let them go quietly instead
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
) -> Any:
    """An aiocoap server context for ``site``: coaps on ``dtls_port`` (PSK, ``credentials``),
    and plain CoAP (udp6) on ``plain_port`` unless None. Built by hand (aiocoap 0.4's private
    ``_append_tokenmanaged_messagemanaged_transport``): `create_server_context` would put the
    DTLS server on the plain port + 1."""
    import aiocoap
    from aiocoap.numbers import COAP_PORT, COAPS_PORT
    from aiocoap.transports.udp6 import MessageInterfaceUDP6

    sessions, server = _server_classes()
    table = type("_Table", (sessions,), {"max_sockets": max_sessions})
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
