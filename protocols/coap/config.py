"""Config models of the CoAP plugin: the client role (a source) and the server role (a target).

Security is OSCORE (RFC 8613): an end-to-end protected request/response layer over plain UDP,
with a pre-shared master secret per peer pair. The static parameters come from the config; the
sequence numbers and replay window live in ``state_dir`` and must survive restarts (a reused
sequence number would reuse a nonce), so that folder is kept, never copied between machines.
See docs/coap-security.md.
"""

from __future__ import annotations

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


class ServerSecurity(Strict):
    oscore: Oscore | None = Field(None, description="the OSCORE context shared with the client")
    require: bool = Field(
        True, description="with oscore: answer unprotected requests with 4.01 Unauthorized"
    )


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

    def write_warning(self, writable: int) -> str | None:
        """What to say when ``writable`` points can be written through this server by anyone
        (no OSCORE, or ``require: false``); None when none can. The server logs it at start,
        ``gateway validate`` prints it (the config loader calls this by name)."""
        security = self.security
        if writable <= 0 or (security.oscore is not None and security.require):
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
    url: str = Field(pattern=r"^coap://", description="coap://host:port")
    timeout: float = Field(
        10.0, gt=0, le=300, description="seconds per request (retransmissions included)"
    )
    reconnect: Backoff = Field(default_factory=Backoff)
    security: ClientSecurity = Field(default_factory=ClientSecurity)
    points: list[CoapPoint] = Field(min_length=1)

    def run_warnings(self) -> list[tuple[Path, str]]:
        return unknown_units(self.points)

    def check(self) -> list[Problem]:
        return repeated_names(self.points)
