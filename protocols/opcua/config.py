"""Config models of the OPC UA plugin: the client role (a source) and the server role (a target).

Security is on by default in both roles: the server offers only signed and encrypted endpoints
unless ``allow_none`` is set, and the client checks the server certificate unless
``verify_server`` is turned off (which is logged as a warning).
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.common import (
    Backoff,
    Deadband,
    Path,
    PointLimits,
    Problem,
    Strict,
    missing_files,
    repeated_names,
    unknown_units,
)
from gateway.passwords import parse_hash
from gateway.types import Access

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"

Policy = Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
Mode = Literal["Sign", "SignAndEncrypt"]
PointType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ALL_POLICIES: tuple[Policy, ...] = (
    "Basic256Sha256",
    "Aes128_Sha256_RsaOaep",
    "Aes256_Sha256_RsaPss",
)


def key_file_warnings(certificate: str | None, private_key: str | None) -> list[tuple[Path, str]]:
    """`Strict.run_warnings` for a configured certificate and key: missing, or present but not
    what ``gateway run`` can load (`pki.load_certificate`, `pki.load_private_key`: damaged,
    swapped, encrypted, not RSA), each said as run would say it."""
    files: dict[Path, str | None] = {
        ("security", "certificate"): certificate,
        ("security", "private_key"): private_key,
    }
    missing = missing_files(files)
    if missing or certificate is None or private_key is None:
        return missing
    try:
        from protocols.opcua.pki import PkiError, load_certificate, load_private_key
    except ImportError:  # asyncua not installed: validate warns of that on its own
        return []
    found: list[tuple[Path, str]] = []
    for where, name, load in (
        (("security", "certificate"), certificate, load_certificate),
        (("security", "private_key"), private_key, load_private_key),
    ):
        try:
            load(FilePath(name))
        except PkiError as exc:
            found.append(
                (
                    where,
                    f"{exc} (gateway run refuses to start this entry with it)",
                )
            )
    return found


def node_id_syntax(v: str) -> str:
    """``v`` if asyncua parses it as a node id, else ValueError saying what one looks like.
    The client parses it at start; a malformed one would only fail then. asyncua is imported
    here, lazily: this module loads without it (the check is then skipped and the client,
    which needs asyncua anyway, reports it)."""
    try:
        from asyncua.ua import NodeId
        from asyncua.ua.uaerrors import UaError
    except ImportError:
        return v
    try:
        NodeId.from_string(v)
    except (ValueError, UaError):
        raise ValueError(
            'a node id such as "ns=2;s=Boiler.Temp" or "i=2258" (an optional ns=N; '
            "then i=, s=, g= or b= and the identifier)"
        ) from None
    return v


class Endpoint(Strict):
    policy: Policy
    mode: Mode = "SignAndEncrypt"


def _all_endpoints() -> list[Endpoint]:
    return [Endpoint(policy=p, mode=m) for p in ALL_POLICIES for m in ("SignAndEncrypt", "Sign")]


class ServerSecurity(Strict):
    local_paths = ("certificate", "private_key", "pki_dir", "trusted_clients")
    state_paths = ("pki_dir",)
    # The trust list is read at every session's check: a reload keeps the server and its other
    # sessions, and closes the connections of clients no longer trusted (`reloaded`).
    live_paths = ("pki_dir", "trusted_clients")

    endpoints: list[Endpoint] = Field(
        default_factory=_all_endpoints, description="secure endpoints offered (default: all six)"
    )
    allow_none: bool = Field(False, description="also offer the unsecured None endpoint")
    certificate: str | None = Field(
        None, description="application certificate (DER or PEM); generated on first run if unset"
    )
    private_key: str | None = Field(None, description="its private key (PEM)")
    pki_dir: str = Field(
        "{state}/pki/{name}",
        description=(
            "where a generated certificate and the trust list live"
            " ({state}: the state folder, {name}: endpoint)"
        ),
    )
    trusted_clients: str | None = Field(
        None, description="folder of trusted client certificates; default {pki_dir}/trusted"
    )

    @model_validator(mode="after")
    def _pair(self) -> ServerSecurity:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class User(Strict):
    username: str = Field(min_length=1)
    password_hash: str = Field(
        pattern=r"^scrypt\$", description="from `gateway hash-password`; never a plain password"
    )
    access: Literal["read", "write"] = Field("write", description="read: may not write")

    @field_validator("password_hash")
    @classmethod
    def _well_formed(cls, value: str) -> str:
        # A damaged hash would only ever refuse the user's login, without saying why.
        parse_hash(value)
        return value


class AlarmOptions(Strict):
    """How the server's anomaly alarms are handled (`protocols.opcua.alarms`)."""

    confirm: bool = Field(
        False,
        description="two-step alarms: an acknowledged alarm also waits for Confirm"
        " (Part 9 ConfirmedState) before it leaves the alarm list",
    )
    max_time_shelved: float = Field(
        8 * 3600,
        gt=0,
        le=31 * 86400,
        description="seconds: the longest an operator may shelve an alarm (Part 9"
        " MaxTimeShelved; a TimedShelve asking more is refused, a OneShotShelve ends then)",
    )


class OpcuaServer(Strict):
    """The gateway as an OPC UA server: bridged points appear as variables."""

    protocol: Literal["opcua"] = "opcua"
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(4840, ge=0, le=65535)
    path: str = Field("/protocol-brain", description="endpoint path in the URL")
    application_uri: str = Field("urn:protocol-brain:{gateway}")
    namespace: str = Field("urn:protocol-brain:{gateway}", description="namespace of our nodes")
    security: ServerSecurity = Field(default_factory=ServerSecurity)
    users: list[User] = Field(default_factory=list)
    anonymous: bool = Field(False, description="allow clients without a user (read only)")
    write_timeout: float = Field(5.0, gt=0, le=60, description="seconds to wait for the device")
    max_connections: int = Field(
        100,
        ge=1,
        le=10000,
        description="TCP connections served at once, with or without a session; a newcomer "
        "past them is closed at once",
    )
    alarms: AlarmOptions = Field(
        default_factory=AlarmOptions, description="anomaly alarms of bridges with anomaly:"
    )

    def run_warnings(self) -> list[tuple[Path, str]]:
        return key_file_warnings(self.security.certificate, self.security.private_key)


class OpcuaServerRoute(Strict):
    """Bridge target options when the target is the OPC UA server."""

    folder: str = Field("{device}", description="object under Objects holding the variables")
    writable: bool = Field(True, description="let clients write points declared rw")


class ClientSecurity(Strict):
    local_paths = ("certificate", "private_key", "pki_dir", "trusted_servers")
    state_paths = ("pki_dir",)

    policy: Policy | Literal["None"] = "Basic256Sha256"
    mode: Mode | Literal["None"] = "SignAndEncrypt"
    certificate: str | None = Field(None, description="our certificate; generated if unset")
    private_key: str | None = None
    pki_dir: str = "{state}/pki/{name}"
    trusted_servers: str | None = Field(
        None, description="folder of trusted server certificates; default {pki_dir}/trusted"
    )
    verify_server: bool = Field(
        True, description="check the server certificate against trusted_servers"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ClientSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy None goes with mode None, and only with it")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class Subscription(Strict):
    publishing_interval: float = Field(0.5, gt=0, description="seconds")
    queue_size: int = Field(10, ge=1, description="values kept per item between publishes")
    batch_size: int = Field(500, ge=1, le=10000, description="monitored items per request")


class OpcuaPoint(PointLimits):
    name: str = Field(pattern=NAME_PATTERN)
    node_id: str | None = Field(None, description='e.g. "ns=2;s=Boiler.Temp" or "i=2258"')
    browse_path: str | None = Field(
        None, description='from Objects, e.g. "2:Plant/2:Boiler/2:Temp"'
    )
    type: PointType | None = Field(
        None,
        description="value type on the bus (and of writes); default: from the node's DataType "
        "once connected, float64 until then",
    )
    sampling_interval: float | None = Field(
        None, ge=0, description="seconds; default: the publishing interval"
    )
    deadband: Deadband | None = None
    unit: str | None = Field(
        None, description="engineering unit (a pint name converts; other text is passed on)"
    )
    access: Access | None = None
    description: str = ""
    write_rate: float | None = Field(None, gt=0)

    @field_validator("node_id")
    @classmethod
    def _node_id_syntax(cls, v: str | None) -> str | None:
        return None if v is None else node_id_syntax(v)

    @model_validator(mode="after")
    def _one_address(self) -> OpcuaPoint:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node_id and browse_path")
        if self.deadband and self.deadband.absolute and self.deadband.percent:
            raise ValueError("OPC UA takes one deadband: absolute or percent")
        return self


class Events(Strict):
    """Events and alarms of the server (Part 9), each one bus message of kind EVENT."""

    node: str = Field(
        "i=2253", description="the notifier whose events are subscribed (default: the Server)"
    )
    types: list[str] = Field(
        default_factory=list,
        description='event type node ids, e.g. "i=2915" (AlarmConditionType) or "ns=2;i=1001": '
        "only events of these types and their subtypes; default: all",
    )
    min_severity: int = Field(
        0, ge=0, le=1000, description="only events of at least this severity (1..1000; 0: all)"
    )
    fields: list[str] = Field(
        default_factory=list,
        description='more event fields, as browse paths from the event, e.g. "2:Limits/2:High"'
        " (sample event.Limits.High); the standard ones are always selected",
    )
    refresh: bool = Field(
        True, description="call ConditionRefresh after each subscribe: active alarms come again"
    )
    queue_size: int = Field(
        1000, ge=1, le=100000, description="events the server keeps between two publishes"
    )

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return node_id_syntax(v)

    @field_validator("types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                node_id_syntax(item)
            except ValueError as exc:
                raise ValueError(f"{item!r}: {exc}") from None
        if len(set(v)) != len(v):
            raise ValueError("an event type is given twice")
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        try:
            from protocols.opcua.events import extra_fields
        except ImportError:  # asyncua not installed: the client reports it
            return v
        extra_fields(v)
        return v


class OpcuaClient(Strict):
    """The gateway as an OPC UA client: a remote server's variables become points."""

    protocol: Literal["opcua"] = "opcua"
    url: str = Field(pattern=r"^opc\.tcp://", description="opc.tcp://host:port/path")
    security: ClientSecurity = Field(default_factory=ClientSecurity)
    username: str | None = None
    password: str | None = None
    timeout: float = Field(4.0, gt=0, le=60, description="seconds per request")
    subscription: Subscription = Field(default_factory=Subscription)
    reconnect: Backoff = Field(default_factory=Backoff)
    points: list[OpcuaPoint] = Field(default_factory=list)
    events: Events | None = Field(
        None, description="subscribe to the server's events and alarms (Part 9)"
    )

    def event_points(self) -> list[str]:
        """The names of the samples its events carry: a bridge's ``points:`` globs may select
        them (`gateway validate`), though they are no points (nothing serves them)."""
        if self.events is None:
            return []
        try:
            from protocols.opcua.events import EventFields, extra_fields
        except ImportError:  # asyncua not installed: the client reports it
            return []
        return EventFields("", extra_fields(self.events.fields)).sample_names()

    def run_warnings(self) -> list[tuple[Path, str]]:
        sec = self.security
        units = unknown_units(self.points)
        if sec.policy == "None":  # no certificate is loaded
            clear = self.password_in_clear()
            return units + ([(("security", "policy"), clear)] if clear else [])
        return units + key_file_warnings(sec.certificate, sec.private_key)

    def password_in_clear(self) -> str | None:
        """The warning for a password sent over policy None (validate's, and the client's at
        start): the channel is not encrypted, and a server whose user token policy is None too
        gets the password in clear (asyncua encrypts it only where the server's policy says)."""
        if self.security.policy != "None" or self.username is None:
            return None
        return (
            f"policy None with username {self.username!r}: the channel is not encrypted, so "
            "against a server whose user token policy does not encrypt it either, the password "
            "crosses the network in clear; use a secure policy such as Basic256Sha256"
        )

    def check(self) -> list[Problem]:
        problems = repeated_names(self.points)
        if not self.points and self.events is None:  # (`gateway suggest --browse` finds points)
            problems.append(
                Problem(("points",), "no points and no events", "give points, events, or both")
            )
        if self.events is not None:
            problems += [
                Problem(
                    ("points", i, "name"),
                    repr(p.name),
                    "a name not starting with 'event.' (the events' samples are named so)",
                )  # fmt: skip
                for i, p in enumerate(self.points)
                if p.name.startswith("event.")
            ]
        return problems
