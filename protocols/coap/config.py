"""Config models of the CoAP plugin: the client role (a source) and the server role (a target).

Security is OSCORE (RFC 8613): an end-to-end protected request/response layer over plain UDP,
with a pre-shared master secret per peer pair. The static parameters come from the config; the
sequence numbers and replay window live in ``state_dir`` and must survive restarts (a reused
sequence number would reuse a nonce), so that folder is kept, never copied between machines.

Or DTLS 1.2 with a pre-shared key (``coaps://``, TLS_PSK_WITH_AES_128_CCM_8) through aiocoap's
tinydtls transports. tinydtls bounds what a PSK may be: an identity of at most 32 bytes and a key
of at most 16 (DTLSSocket copies a longer key over tinydtls' 16-byte buffer, so the limit is a
hard one). A key is never quoted in a problem: its checks are in ``check()``, which says its
length only. See docs/coap-security.md.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.common import (
    Backoff,
    Path,
    PointLimits,
    Problem,
    Strict,
    repeated_names,
    unknown_units,
)
from gateway.text import counted
from gateway.types import Access

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
HEX = r"^([0-9A-Fa-f]{2})*$"
#: tinydtls' DTLS_PSK_MAX_CLIENT_IDENTITY_LEN and DTLS_PSK_MAX_KEY_LEN (crypto.h)
MAX_IDENTITY = 32
MAX_KEY = 16
#: shorter keys are guessed offline from one recorded handshake
MIN_KEY = 8
#: addresses that mean "every address", which aiocoap's DTLS server cannot bind
ANY_ADDRESS = frozenset({"", "::", "0.0.0.0"})

PointType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
                    "float64", "string"]  # fmt: skip
PointFormat = Literal["auto", "text", "json", "cbor", "senml+json", "senml+cbor"]
Algorithm = Literal["AES-CCM-16-64-128", "AES-CCM-16-128-128", "A128GCM", "A256GCM",
                    "ChaCha20/Poly1305"]  # fmt: skip


class Oscore(Strict):
    """One OSCORE security context (RFC 8613 section 3): the two ids, the master secret and salt."""

    local_paths = ("state_dir",)
    state_paths = ("state_dir",)

    sender_id: str = Field(pattern=HEX, max_length=14, description="our id, hex (may be empty)")
    recipient_id: str = Field(pattern=HEX, max_length=14, description="the peer's id, hex")
    master_secret: str = Field(pattern=HEX, min_length=32, description="hex, 16 bytes or more")
    master_salt: str = Field("", pattern=HEX, description="hex")
    id_context: str | None = Field(None, pattern=HEX, description="hex; optional")
    algorithm: Algorithm = "AES-CCM-16-64-128"
    state_dir: str = Field(
        "{state}/oscore/{name}",
        description=(
            "sequence numbers and replay window; keep it, never copy it"
            " ({state}: the state folder, {name}: entry)"
        ),
    )

    @model_validator(mode="after")
    def _distinct(self) -> Oscore:
        if self.sender_id.lower() == self.recipient_id.lower():
            raise ValueError("sender_id and recipient_id must differ")
        return self


class Psk(Strict):
    """A DTLS pre-shared key: the client's identity and the key (text or hex, exactly one)."""

    identity: str = Field(description=f"PSK identity, text, 1 to {MAX_IDENTITY} bytes")
    key: str | None = Field(None, description=f"the key as text, {MIN_KEY} to {MAX_KEY} bytes")
    key_hex: str | None = Field(None, description=f"the key as hex, {MIN_KEY} to {MAX_KEY} bytes")

    def identity_bytes(self) -> bytes:
        return self.identity.encode()

    def key_bytes(self) -> bytes:
        """The key; `check` said it is one (exactly one of key, key_hex; valid hex)."""
        if self.key_hex is not None:
            return bytes.fromhex(self.key_hex)
        return (self.key or "").encode()

    def check(self) -> list[Problem]:
        """The identity and key as tinydtls takes them. The key's value is never quoted."""
        problems: list[Problem] = []
        identity = self.identity_bytes()
        if not identity or len(identity) > MAX_IDENTITY or b"\0" in identity:
            problems.append(
                Problem(
                    ("identity",),
                    f"{len(identity)} bytes" if identity else "an empty identity",
                    f"1 to {MAX_IDENTITY} bytes of text without NUL (tinydtls' limit)",
                )
            )
        if (self.key is None) == (self.key_hex is None):
            found = "neither" if self.key is None else "both"
            problems.append(Problem((), f"{found} of key and key_hex", "exactly one of them"))
            return problems
        field = "key" if self.key is not None else "key_hex"
        if self.key_hex is not None:
            try:
                bytes.fromhex(self.key_hex)
            except ValueError:
                problems.append(Problem((field,), "a value that is not hex", "hex digits"))
                return problems
        size = len(self.key_bytes())
        if not MIN_KEY <= size <= MAX_KEY:
            why = "tinydtls' limit" if size > MAX_KEY else "a shorter one is guessed offline"
            problems.append(
                Problem((field,), f"a key of {size} bytes", f"{MIN_KEY} to {MAX_KEY} bytes ({why})")
            )
        return problems


class ServerDtls(Strict):
    """coaps:// for the server: DTLS 1.2 with a pre-shared key per client identity."""

    psk: list[Psk] = Field(min_length=1, description="the clients: identity and key each")
    port: int = Field(5684, ge=1, le=65535, description="the coaps port")
    plain_reads: bool = Field(
        False,
        description="also serve plain CoAP on the server's port, reads only (a PUT there is"
        " 4.01 Unauthorized)",
    )
    max_sessions: int = Field(
        256,
        ge=1,
        description="DTLS sessions held (one per client address); beyond, the idlest ends",
    )
    idle_timeout: float = Field(
        600.0,
        gt=0,
        description="seconds a DTLS session may go unheard from before it ends (a session with"
        " an observation or a request under way stays; an unfinished handshake: 30 s at most)",
    )

    def check(self) -> list[Problem]:
        problems: list[Problem] = []
        seen: set[str] = set()
        for i, psk in enumerate(self.psk):
            problems += [Problem(("psk", i, *p.path), p.found, p.expected) for p in psk.check()]
            if psk.identity in seen:
                again = f"{psk.identity!r} again"
                problems.append(Problem(("psk", i, "identity"), again, "an identity used once"))
            seen.add(psk.identity)
        return problems


class ServerSecurity(Strict):
    oscore: Oscore | None = Field(None, description="the OSCORE context shared with the client")
    require: bool = Field(
        True, description="with oscore: answer unprotected requests with 4.01 Unauthorized"
    )
    dtls: ServerDtls | None = Field(None, description="serve coaps:// (DTLS with PSK) instead")


class CoapServer(Strict):
    """The gateway as a CoAP server: bridged points appear as resources."""

    protocol: Literal["coap"] = "coap"
    host: str = Field("::", description="address to listen on (:: is every v4 and v6 address)")
    port: int = Field(5683, ge=0, le=65535)
    write_timeout: float = Field(5.0, gt=0, le=60, description="seconds to wait for the device")
    max_age: int = Field(5, ge=0, description="Max-Age of GET responses, seconds")
    security: ServerSecurity = Field(default_factory=ServerSecurity)
    # Bounds against a flood (protocols/coap/limits.py); a site with more legitimate traffic
    # raises them.
    max_request_rate: float = Field(
        2000.0, ge=1, description="new requests a second in all; beyond, dropped unanswered"
    )
    max_exchanges: int = Field(
        10_000,
        ge=1,
        description="requests remembered to answer a retransmission, GETs and PUTs each (a PUT"
        " at least 45 s: max_exchanges / 45 PUTs a second at most)",
    )
    max_observations: int = Field(10_000, ge=1, description="Observe registrations held")
    max_observations_per_client: int = Field(
        100, ge=1, description="Observe registrations held per client host (address, any port)"
    )

    def check(self) -> list[Problem]:
        dtls = self.security.dtls
        if dtls is None:
            return []
        at = ("security", "dtls")
        problems = [Problem((*at, *p.path), p.found, p.expected) for p in dtls.check()]
        if self.security.oscore is not None:
            problems.append(
                Problem(("security",), "both oscore and dtls", "one of them (oscore or dtls)")
            )
        if self.host in ANY_ADDRESS:
            problems.append(
                Problem(
                    ("host",),
                    f"{self.host!r} (every address)" if self.host else "an empty host",
                    "with security.dtls, one address of this machine (aiocoap's DTLS server"
                    " cannot listen on every address)",
                )
            )
        if dtls.plain_reads and dtls.port == self.port:
            problems.append(
                Problem((*at, "port"), f"{dtls.port}, the plain port too", "another port than port")
            )
        return problems

    def run_warnings(self) -> list[tuple[Path, str]]:
        return dtls_missing(("security", "dtls")) if self.security.dtls is not None else []

    def write_warning(self, writable: int) -> str | None:
        """What to say when ``writable`` points can be written through this server by anyone
        (no OSCORE, or ``require: false``); None when none can. The server logs it at start,
        ``gateway validate`` prints it (the config loader calls this by name)."""
        security = self.security
        # with dtls, writes need a DTLS session with a known identity (plain_reads or not)
        if writable <= 0 or security.dtls is not None:
            return None
        if security.oscore is not None and security.require:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        how = "without OSCORE" if security.oscore is None else "with OSCORE not required"
        fix = "add OSCORE (security:)" if security.oscore is None else "set security.require: true"
        return (
            f"CoAP server {how}: anyone who can reach {host}:{self.port} can write "
            f"{counted(writable, 'point')} (a PUT needs no authentication); {fix} or set "
            "writable: false on the bridges to it, see docs/coap-security.md"
        )


class CoapServerRoute(Strict):
    """Bridge target options when the target is the CoAP server."""

    path: str = Field("{device}/{point}", description="resource of one point")
    device_path: str = Field("{device}", description="resource of a device (a SenML pack)")
    writable: bool = Field(True, description="let clients PUT points declared rw")


class ClientSecurity(Strict):
    oscore: Oscore | None = Field(None, description="protect every request with OSCORE")
    dtls: Psk | None = Field(None, description="with a coaps:// url: the PSK identity and key")


def dtls_missing(at: Path) -> list[tuple[Path, str]]:
    """`Strict.run_warnings` when DTLSSocket, which aiocoap's DTLS needs, is not installed."""
    if importlib.util.find_spec("DTLSSocket") is not None:
        return []
    return [(at, "DTLSSocket is not installed: pip install 'protocol-brain[dtls]'")]


class CoapPoint(PointLimits):
    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(min_length=1, description='resource path on the server, e.g. "sensors/temp"')
    observe: bool | None = Field(None, description="observe (RFC 7641); default unless poll")
    poll: float | None = Field(None, gt=0, description="seconds between GETs instead")
    format: PointFormat = Field("auto", description="auto: from the response's Content-Format")
    field: str | None = Field(None, description="JSON/CBOR key of the value (dots for nesting)")
    senml_name: str | None = Field(None, description="SenML name (bn+n) of the value")
    type: PointType = Field("float64", description="value type on the bus and of writes")
    unit: str | None = Field(
        None, description="engineering unit (a pint name converts; other text is passed on)"
    )
    access: Access = Access.READ
    description: str = ""
    write_rate: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_mode(self) -> CoapPoint:
        if self.observe and self.poll is not None:
            raise ValueError("give observe: true or poll: seconds, not both")
        if self.observe is False and self.poll is None:
            raise ValueError("observe: false needs poll: seconds")
        if self.field is not None and self.senml_name is not None:
            raise ValueError("give field (JSON/CBOR) or senml_name (SenML), not both")
        return self

    @property
    def observing(self) -> bool:
        return self.poll is None


class CoapClient(Strict):
    """The gateway as a CoAP client: a device's resources become points."""

    protocol: Literal["coap"] = "coap"
    url: str = Field(
        pattern=r"^coaps?://", description="coap://host:port, or coaps://host:port with DTLS"
    )
    timeout: float = Field(
        10.0, gt=0, le=300, description="seconds per request (retransmissions included)"
    )
    reconnect: Backoff = Field(default_factory=Backoff)
    security: ClientSecurity = Field(default_factory=ClientSecurity)
    points: list[CoapPoint] = Field(min_length=1)

    def run_warnings(self) -> list[tuple[Path, str]]:
        dtls = dtls_missing(("security", "dtls")) if self.security.dtls is not None else []
        return [*dtls, *unknown_units(self.points)]

    def check(self) -> list[Problem]:
        problems = repeated_names(self.points)
        dtls = self.security.dtls
        secure = self.url.startswith("coaps://")
        if secure and dtls is None:
            problems.append(
                Problem(("security",), "no dtls", "security.dtls (identity, key) for a coaps url")
            )
        if dtls is not None:
            if not secure:
                problems.append(
                    Problem(("security", "dtls"), "dtls with a coap:// url", "a coaps:// url")
                )
            problems += [
                Problem(("security", "dtls", *p.path), p.found, p.expected) for p in dtls.check()
            ]
        if secure and self.security.oscore is not None:
            problems.append(
                Problem(("security",), "oscore with a coaps:// url", "dtls, or a coap:// url")
            )
        return problems
