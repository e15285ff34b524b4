"""Config models of an MQTT broker connection and of a bridge that publishes to it."""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Sequence
from typing import ClassVar, Literal, Protocol

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gateway.config.common import (
    Backoff,
    Path,
    PointLimits,
    Problem,
    Strict,
    missing_files,
    repeated_names,
    unknown_units,
)
from gateway.optimizer.config import OptimizerConfig
from gateway.types import Access
from gateway.uplink.outbox import OutboxConfig

TEMPLATE_FIELDS = frozenset({"gateway", "device", "point", "kind"})
# MQTT 5 user properties (`codec.PropertyTemplates`): a route's values may name the topic's
# placeholders and the sample's unit and quality; a device payload's only what is the same for
# the whole message; the endpoint's apply to all it publishes (its status too): the gateway only.
# A route's may also name a user property of the received message, {property:<name>}.
PROPERTY_REF = "property"
PROPERTY_FIELDS = TEMPLATE_FIELDS | {"unit", "quality", PROPERTY_REF}
DEVICE_PROPERTY_FIELDS = frozenset({"gateway", "device", "kind", PROPERTY_REF})
ENDPOINT_PROPERTY_FIELDS = frozenset({"gateway"})
MQTT_STRING_MAX = 65_535  # bytes of an MQTT UTF-8 string (1.5.4)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z),
    localhost and names under it (RFC 6761)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


# {shadow.reported.<key>} / {shadow.desired.<key>}: the device's shadow (the bridge attaches it)
SHADOW_FIELD = re.compile(r"^shadow\.(reported|desired)\.[A-Za-z_][A-Za-z0-9_]*$")


def template_fields(template: str) -> set[str]:
    """Placeholders of a ``str.format`` template; ValueError if it is malformed.
    ``{property:<name>}`` reads as the placeholder ``property`` (`PROPERTY_REF`)."""
    fields: set[str] = set()
    for _literal, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if name == PROPERTY_REF:
            fields.add(name)
            if not spec or conv or "{" in spec or "}" in spec:
                raise ValueError(
                    f"{template!r} names a received user property as {{property:<name>}}"
                    " (a name without braces)"
                )
            continue
        if name and SHADOW_FIELD.match(name):
            fields.add(name)
            continue
        if name and name.split(".")[0] == "shadow":
            raise ValueError(
                f"placeholder {{{name}}} in {template!r}: the shadow is read as"
                " {shadow.reported.<key>} or {shadow.desired.<key>}"
            )
        if not name or not name.isidentifier():
            raise ValueError(f"placeholder {{{name}}} in {template!r} is not a name")
        if spec or conv:
            raise ValueError(f"placeholder {{{name}}} in {template!r} takes no format spec")
        fields.add(name)
    return fields


def check_publish_topic(template: str) -> set[str]:
    """Validate a topic template for publishing; returns its placeholders."""
    fields = template_fields(template)
    unknown = {f for f in fields - TEMPLATE_FIELDS if not SHADOW_FIELD.match(f)}
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{sorted(unknown)[0]}}}; "
            f"use {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}"
            " or {shadow.reported.<key>} / {shadow.desired.<key>}"
        )
    if "+" in template or "#" in template:
        raise ValueError("a topic to publish to cannot contain the wildcards + or #")
    if template.startswith("$"):
        raise ValueError("topics starting with $ are reserved for the broker")
    if "" in template.split("/") and template != "/":
        raise ValueError("topic has an empty level ('//' or a leading or trailing '/')")
    return fields


def string_problem(text: str) -> str | None:
    """Why ``text`` cannot be an MQTT UTF-8 string (1.5.4: well-formed UTF-8 with no U+0000,
    65,535 bytes at most), or None."""
    if "\0" in text:
        return "contains the character U+0000 (NUL)"
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a lone surrogate)"
    if size > MQTT_STRING_MAX:
        return f"is {size:,} bytes, over MQTT's {MQTT_STRING_MAX:,}"
    return None


def check_user_properties(
    props: dict[str, str], allowed: frozenset[str], where: str = ""
) -> dict[str, str]:
    """Validate ``user_properties`` (name: value template): names are non-empty MQTT
    strings, values templates naming only ``allowed`` placeholders (``where`` says why the
    others are not)."""
    for name, template in props.items():
        if not name:
            raise ValueError("a user property needs a name")
        for what, text in (("name", name), ("value", template)):
            problem = string_problem(text)
            if problem is not None:
                raise ValueError(f"user property {name[:40]!r}: its {what} {problem}")
        try:
            fields = template_fields(template)
        except ValueError as exc:
            raise ValueError(f"user property {name!r}: {exc}") from None
        unknown = sorted(fields - allowed)
        if unknown:
            raise ValueError(
                f"user property {name!r}: unknown placeholder {{{unknown[0]}}}{where}; use "
                + ", ".join(
                    "{property:<name>}" if f == PROPERTY_REF else "{" + f + "}"
                    for f in sorted(allowed)
                )
            )
    return props


USER_PROPERTIES_DESCRIPTION = (
    "MQTT 5 user properties (name: value) on every publish of this endpoint: its data, status"
    " (birth, offline, will), replies and writes; values may use {gateway}. A bridge's"
    " user_properties replace the one of the same name"
)

ROUTE_PROPERTIES_DESCRIPTION = (
    "MQTT 5 user properties (name: value template) on each publish of this bridge, after the"
    " endpoint's (one of the same name replaces the endpoint's); values may use {gateway}"
    " {device} {kind}, and per point {point} {unit} {quality} (a property whose placeholder"
    " has no value, a point without a unit, is left out); payload device: not the per-point ones;"
    " {property:<name>}: the received MQTT message's user property of that name (the first;"
    " without it the property is left out and counted in user_property_errors)"
)

RELAY_DESCRIPTION = (
    "MQTT 5: publish the user properties of the received MQTT message too (a bridge from an"
    " MQTT endpoint), in their order, repeated names kept, before the endpoint's and the"
    " route's; true for all, or a list of names and globs (fnmatch, case-sensitive) to relay."
    " A name the endpoint's or the route's user_properties set is never relayed (theirs go)"
)


def check_relay(relay: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
    """Validate ``relay_user_properties``: true/false, or names and globs to relay."""
    if isinstance(relay, bool):
        return relay
    if not relay:
        raise ValueError("true for all, or a list of names and globs (an empty one relays none)")
    for glob in relay:
        problem = string_problem(glob) if glob else "is empty"
        if problem is not None:
            raise ValueError(f"names and globs of user properties: {glob[:40]!r} {problem}")
    return relay


class BrokerSettings(Protocol):
    """What every MQTT-based entry (the MQTT endpoint, the Sparkplug node) says of its broker."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def tls(self) -> Tls | None: ...
    @property
    def failover(self) -> Sequence[FailoverBroker]: ...


class FailoverBroker(Strict):
    """Another broker of the same service (a cluster's node, a standby), tried when the one
    in use cannot be reached; with the entry's credentials and TLS."""

    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="default: the entry's port")


FAILOVER_DESCRIPTION = (
    "brokers tried in turn, after host, when the one in use cannot be reached; the gateway "
    "stays on the one that answers (see failback)"
)

FAILBACK_DESCRIPTION = (
    "with failover: seconds between probes of host (a connection of its own: CONNECT with the "
    "same credentials and TLS, then DISCONNECT) while connected to another broker; once host "
    "accepts, the gateway leaves the other (status offline there, the outbox kept) for host. "
    "null: stay on the broker that answers. Sparkplug entries do not take it (a node follows "
    "its primary host's STATE)"
)


def failback_problem(entry: BrokerSettings, failback: float | None) -> list[Problem]:
    """``failback`` with no ``failover`` brokers: there is nothing to come back from."""
    if failback is None or entry.failover:
        return []
    return [
        Problem(
            ("failback",),
            f"{failback:g} with no failover brokers",
            "failover: [{host: ...}] to come back from, or no failback",
        )
    ]


def broker_port(entry: BrokerSettings) -> int:
    """The broker's port: ``port``, else MQTT's (1883) or MQTT over TLS's (8883)."""
    if entry.port is not None:
        return entry.port
    return 8883 if entry.tls is not None else 1883


def brokers(entry: BrokerSettings) -> list[tuple[str, int]]:
    """Every broker of ``entry`` as (host, port), in the order tried: ``host``, then
    ``failover``."""
    port = broker_port(entry)
    return [(entry.host, port), *((b.host, b.port or port) for b in entry.failover)]


def repeated_brokers(entry: BrokerSettings) -> list[Problem]:
    """A broker that ``entry`` names twice (a typo that halves the failover)."""
    problems, seen = [], set()
    for i, (host, port) in enumerate(brokers(entry)):
        if (host.lower(), port) in seen:
            problems.append(
                Problem(("failover", i - 1, "host"), f"{host}:{port} again", "another broker")
            )
        seen.add((host.lower(), port))
    return problems


def password_warning(entry: BrokerSettings) -> str | None:
    """What to say when the password goes to the broker unencrypted (no ``tls:``, a broker
    that is not on this machine); None otherwise. ``gateway validate`` prints it, the adapter
    logs it at start. paho sends the password only with a username."""
    if not entry.password or entry.username is None or entry.tls is not None:
        return None
    remote = [(host, port) for host, port in brokers(entry) if not is_loopback(host)]
    if not remote:
        return None
    host, port = remote[0]
    host = f"[{host}]" if ":" in host else host
    return (
        f"sends its password unencrypted to {host}:{port} (anyone on the path can read it); "
        "add tls: (the broker's TLS port, usually 8883)"
    )


# the files the client opens at start (`gateway run` refuses the endpoint when one is missing)
TLS_FILES = ("ca_file", "cert_file", "key_file")


def broker_warnings(entry: BrokerSettings, what: str) -> list[tuple[Path, str]]:
    """`Strict.run_warnings` of a broker connection: TLS files that are not here, and a
    password sent unencrypted (``what`` names the entry's kind: "MQTT endpoint")."""
    tls = entry.tls
    files: dict[Path, str | None] = (
        {} if tls is None else {("tls", key): getattr(tls, key) for key in TLS_FILES}
    )
    found = missing_files(files)
    clear = password_warning(entry)
    if clear is not None:
        found.append((("password",), f"{what} {clear}"))
    return found


class Tls(Strict):
    local_paths = TLS_FILES

    ca_file: str | None = Field(None, description="CA bundle that signed the broker certificate")
    cert_file: str | None = Field(None, description="client certificate (PEM)")
    key_file: str | None = Field(None, description="client private key (PEM)")
    insecure: bool = Field(
        False, description="skip broker certificate checks (explicit, logged as a warning)"
    )

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Subscription(Strict):
    """A topic the gateway subscribes to; each message becomes a bus message.

    By default a message is one sample named after its topic on the bus topic
    ``mqtt/<endpoint>/<topic>``, which bridges do not carry. With ``points: keys`` each JSON
    payload is instead one telemetry message of the endpoint (``telemetry/<endpoint>``, what
    bridges carry): one point per key, named by the key (`codec.KeyDecoder`)."""

    topic: str = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    payload: Literal["json", "text", "raw"] = "json"
    points: Literal["keys"] | None = Field(
        None,
        description=(
            "keys: every number, bool or string of a JSON object is a point of the endpoint"
            " named by its key (nested keys dotted, a bare value named by the topic's last"
            " level), published as the endpoint's telemetry, which bridges carry; null: the"
            " message is one sample on mqtt/<endpoint>/<topic>"
        ),
    )

    names: Literal["key", "topic"] = Field(
        "key",
        description=(
            "with points: keys, how points are named: key: by the key alone (the same key on"
            " two topics is one point); topic: the topic levels the filter's + and # matched,"
            ' then the key, dotted (plant/+ on plant/ahu1 with {"temp": 21} gives ahu1.temp)'
        ),
    )

    @model_validator(mode="after")
    def _names_need_keys(self) -> Subscription:
        if self.names != "key" and self.points != "keys":
            raise ValueError("names: topic needs points: keys")
        return self

    @field_validator("topic")
    @classmethod
    def _filter(cls, v: str) -> str:
        from gateway.bus import validate_pattern

        validate_pattern(v)
        return v

    @model_validator(mode="after")
    def _keys_are_json(self) -> Subscription:
        if self.points == "keys" and self.payload != "json":
            raise ValueError("points: keys reads JSON payloads: drop payload or set it to json")
        return self


NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
PointType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]


class MqttPoint(PointLimits):
    """A point filled from received payloads: the endpoint is then a source as well as a target.

    ``topic`` is an exact topic, or a filter with ``+``/``#`` only for SenML points, where the
    record name (``senml_name``) says which point a record is, whatever topic it came on.
    """

    name: str = Field(pattern=NAME_PATTERN)
    topic: str = Field(min_length=1, description="topic to subscribe to")
    format: Literal["json", "senml", "text"] = Field(
        "json",
        description="json: a bare JSON value or an object; senml: RFC 8428 JSON; text: plain"
        " text (a string point's is the text as sent, less one trailing line end)",
    )
    field: str | None = Field(
        None,
        description='dotted key of the value in a JSON object (default "value"); a bare JSON '
        "value is the value itself",
    )
    senml_name: str | None = Field(
        None, description="SenML record whose bn+n equals this (default: the only record)"
    )
    type: PointType | None = Field(
        None, description="value type on the bus; default float64 (string for format text)"
    )
    unit: str | None = Field(
        None, description="engineering unit (a pint name converts; other text is passed on)"
    )
    access: Access = Access.READ
    command_topic: str | None = Field(
        None,
        description=(
            "where writes are published (QoS 1), in the point's format: json a bare JSON"
            " value, or {field: value} with a field (a dotted field nests: {a: {b: value}}),"
            " text plain text, senml a pack of one record (named senml_name); rw needs it;"
            " not a topic the point reads"
        ),
    )
    description: str = ""
    write_rate: float | None = Field(None, gt=0)

    @field_validator("topic")
    @classmethod
    def _filter(cls, v: str) -> str:
        from gateway.bus import validate_pattern

        validate_pattern(v)
        return v

    @field_validator("command_topic")
    @classmethod
    def _command_topic(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and check_publish_topic(v):
            raise ValueError("command_topic is a plain topic, without placeholders")
        # A wildcard topic may cover its command topic (plant/# and plant/pump/set): the
        # decoder skips that topic for the point. Only its own topic is refused.
        topic = info.data.get("topic")  # absent when it was refused itself
        if v is not None and topic is not None and topic == v:
            raise ValueError(
                f"a topic the point does not read ({topic!r}):"
                " it would read its writes back as the device's value"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MqttPoint:
        if self.access.writable and self.command_topic is None:
            raise ValueError(f"access {self.access.value} needs a command_topic to publish to")
        wildcard = "+" in self.topic.split("/") or "#" in self.topic.split("/")
        if wildcard and (self.format != "senml" or self.senml_name is None):
            raise ValueError(
                "a topic with + or # is only unambiguous for format senml with a senml_name"
            )
        if self.senml_name is not None and self.format != "senml":
            raise ValueError("senml_name goes with format senml")
        if self.field is not None and self.format != "json":
            raise ValueError("field goes with format json")
        return self

    @property
    def datatype(self) -> str:
        if self.type is not None:
            return self.type
        return "string" if self.format == "text" else "float64"

    @property
    def wildcard(self) -> bool:
        return "+" in self.topic.split("/") or "#" in self.topic.split("/")


# MQTT 5 Session Expiry Interval of a persistent session when none is given: a day rides out
# a long outage or a weekend's maintenance, yet a gateway taken away for good does not leave
# a session, and the commands queued in it, at the broker for ever (0xFFFFFFFF would)
SESSION_EXPIRY_DEFAULT = 86_400
SESSION_EXPIRY_NEVER = 0xFFFFFFFF


class MqttSession(Strict):
    """Whether the broker keeps the gateway's session (its subscriptions, and the QoS 1/2
    messages published to them) while the gateway is away: disconnected, or restarting."""

    persistent: bool = Field(
        False,
        description=(
            "true: the broker keeps the session while the gateway is away and delivers what"
            " came for its QoS 1/2 subscriptions (shadow updates, readings, commands) when it"
            " is back, however late (MQTT 3.1.1 clean session false, MQTT 5 clean start"
            " false); the session is the client id's: keep it the same across restarts and"
            " unique to this gateway. false: a clean session on every connect"
        ),
    )
    expiry: int | None = Field(
        None,
        ge=1,
        le=SESSION_EXPIRY_NEVER,
        description=(
            f"MQTT 5: seconds the broker keeps the session after the connection ends (Session"
            f" Expiry Interval); default {SESSION_EXPIRY_DEFAULT} (a day), {SESSION_EXPIRY_NEVER}:"
            " never. MQTT 3.1.1 has none: the broker keeps the session until a clean connect"
            " or its own limit (mosquitto: persistent_client_expiration)"
        ),
    )

    @property
    def expiry_s(self) -> int:
        """The Session Expiry Interval an MQTT 5 CONNECT carries for a persistent session."""
        return SESSION_EXPIRY_DEFAULT if self.expiry is None else self.expiry


def session_problems(session: MqttSession, version: str) -> list[Problem]:
    """An expiry with no persistent session, or with MQTT 3.1.1 (no such property)."""
    if session.expiry is None:
        return []
    where, found = ("session", "expiry"), str(session.expiry)
    if not session.persistent:
        return [Problem(where, f"{found} with persistent false", "persistent: true, or no expiry")]
    if version != "5":
        return [
            Problem(
                where,
                f"{found} with MQTT {version}",
                'version: "5" (session expiry is an MQTT 5 property; a 3.1.1 broker keeps the'
                " session until a clean connect), or no expiry",
            )
        ]
    return []


def session_warnings(entry: MqttEndpoint) -> list[tuple[Path, str]]:
    """A persistent session's QoS 0 subscriptions: brokers queue nothing at QoS 0 for a
    session that is away (mosquitto's queue_qos0_messages is off by default)."""
    if not entry.session.persistent:
        return []
    return [
        (
            ("subscriptions", i, "qos"),
            f"0 with session.persistent: the broker keeps nothing of {s.topic!r} while the"
            " gateway is away; qos: 1 to get it after an outage",
        )
        for i, s in enumerate(entry.subscriptions)
        if s.qos == 0
    ]


MqttVersion = Literal["3.1.1", "5"]

VERSION_DESCRIPTION = (
    "MQTT protocol version: 3.1.1, or 5 (session expiry; refusals carry reason"
    " codes, message_expiry, replies to a request's response topic); failover brokers and the"
    " failback probe use the same"
)

MESSAGE_EXPIRY_DESCRIPTION = (
    "MQTT 5: seconds a broker keeps each bridged publish (readings, alarms) and shadow reply"
    " for a subscriber that is away; then it drops it. A publish replayed from the outbox"
    " carries what is left of it, and one older than this is dropped (status 'expired')"
)


class MqttEndpoint(Strict):
    #: what `gateway validate` says of an endpoint whose points are named at run time
    RUN_TIME_POINTS: ClassVar[str] = "whose subscriptions with points: keys"

    protocol: Literal["mqtt"] = "mqtt"
    version: MqttVersion = Field("3.1.1", description=VERSION_DESCRIPTION)
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="1883, or 8883 with tls")
    failover: list[FailoverBroker] = Field(default_factory=list, description=FAILOVER_DESCRIPTION)
    failback: float | None = Field(None, gt=0, description=FAILBACK_DESCRIPTION)
    client_id: str | None = Field(
        None,
        description=(
            "defaults to protocol-brain-{gateway}-{name} (the same at every start, so a"
            " persistent session survives restarts; give each gateway its own gateway.name)"
        ),
    )
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(30, ge=5, le=65535)
    tls: Tls | None = None
    session: MqttSession = Field(
        default_factory=MqttSession,
        description=(
            "persistent: the broker keeps subscriptions and queued QoS 1/2 messages while the"
            " gateway is away (default: a clean session on every connect)"
        ),
    )
    status_topic: str = Field(
        "protocol-brain/{gateway}/status",
        description="retained birth ('online') and last will ('offline') of the gateway",
    )
    reconnect: Backoff = Field(default_factory=Backoff)
    max_queued: int = Field(
        10000, ge=1, description="publishes buffered in memory while disconnected (no outbox)"
    )
    max_keys: int = Field(
        10_000,
        gt=0,
        description=(
            "distinct point names 'points: keys' subscriptions may create; new keys past it"
            " are dropped (counted as bad payloads), so a broker cannot grow memory without limit"
        ),
    )
    max_new_keys: int = Field(
        2_000,
        ge=1,
        description=(
            "new point names one message of a 'points: keys' subscription may add (the first;"
            " the next message adds more), so that one message cannot fill max_keys"
        ),
    )
    max_payload: int = Field(
        1 << 20,
        ge=1,
        description=(
            "bytes; a received message longer than this is dropped unread (counted as a bad"
            " payload): decoding a 50 MB JSON object held the event loop and its memory"
        ),
    )
    outbox: OutboxConfig | None = Field(
        default_factory=OutboxConfig,
        description="durable outbox (SQLite) for every publish; null: in memory (max_queued)",
    )
    subscriptions: list[Subscription] = Field(default_factory=list)
    points: list[MqttPoint] = Field(
        default_factory=list, description="points filled from received payloads (a source)"
    )
    write_timeout: float = Field(
        5.0, gt=0, le=60, description="seconds to wait for the broker's PUBACK of a write"
    )
    message_expiry: int | None = Field(
        None, ge=1, le=0xFFFFFFFF, description=MESSAGE_EXPIRY_DESCRIPTION
    )
    topic_alias: bool = Field(
        False,
        description=(
            "MQTT 5 Topic Aliases on data publishes: a topic goes once per connection with an"
            " alias, then only the alias (as many as the broker's Topic Alias Maximum takes);"
            " fewer bytes on a metered uplink"
        ),
    )
    optimizer: OptimizerConfig | None = Field(
        None,
        description=(
            "uplink packet optimizer: batches, compression, telemetry QoS and in-flight window"
            " decided every interval (docs/optimizer.md); needs the durable outbox, strict order"
        ),
    )
    user_properties: dict[str, str] = Field(
        default_factory=dict, description=USER_PROPERTIES_DESCRIPTION
    )

    @field_validator("user_properties")
    @classmethod
    def _user_properties(cls, v: dict[str, str]) -> dict[str, str]:
        return check_user_properties(
            v, ENDPOINT_PROPERTY_FIELDS, " (the endpoint's are the same for all it publishes)"
        )

    def run_warnings(self) -> list[tuple[Path, str]]:
        return (
            broker_warnings(self, "MQTT endpoint")
            + unknown_units(self.points)
            + session_warnings(self)
        )

    def password_warning(self) -> str | None:
        """`password_warning` of this endpoint's connection."""
        return password_warning(self)

    def check(self) -> list[Problem]:
        problems = []
        if self.optimizer is not None and (
            self.outbox is None or not self.outbox.enabled or self.outbox.drain_order != "strict"
        ):
            problems.append(
                Problem(
                    ("optimizer",),
                    "an optimizer without a durable outbox in strict order",
                    "outbox enabled with drain_order: strict (batches are cut from its rows)",
                )
            )
        problems.extend(repeated_brokers(self))
        problems.extend(failback_problem(self, self.failback))
        problems.extend(session_problems(self.session, self.version))
        if self.message_expiry is not None and not self.v5:
            problems.append(
                Problem(
                    ("message_expiry",),
                    f"{self.message_expiry} with MQTT {self.version}",
                    'version: "5" (message expiry is an MQTT 5 property), or no message_expiry',
                )
            )
        if self.user_properties and not self.v5:
            problems.append(user_properties_problem(("user_properties",), self.version))
        if self.topic_alias and not self.v5:
            problems.append(
                Problem(
                    ("topic_alias",),
                    f"true with MQTT {self.version}",
                    'version: "5" (topic aliases are an MQTT 5 property), or no topic_alias',
                )
            )
        problems.extend(repeated_names(self.points))
        keys: set[tuple[str, str | None, str | None]] = set()
        for i, p in enumerate(self.points):
            key = (p.topic, p.field, p.senml_name)
            if key in keys:
                problems.append(
                    Problem(
                        ("points", i, "topic"),
                        f"{p.topic!r} with the same field/senml_name as an earlier point",
                        "one point per topic and field (or SenML name)",
                    )
                )
            keys.add(key)
        return problems

    @field_validator("version", mode="before")
    @classmethod
    def _version_number(cls, v: object) -> object:
        # YAML reads `version: 5` as a number; 3.1.1 is text either way
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @property
    def v5(self) -> bool:
        return self.version == "5"

    @field_validator("status_topic")
    @classmethod
    def _status_topic(cls, v: str) -> str:
        fields = check_publish_topic(v)
        if fields - {"gateway"}:
            raise ValueError("status_topic may only use {gateway}")
        return v

    @property
    def points_at_run_time(self) -> bool:
        """A ``points: keys`` subscription names points only when payloads arrive."""
        return any(s.points == "keys" for s in self.subscriptions)

    @property
    def effective_port(self) -> int:
        return broker_port(self)


def user_properties_problem(where: Path, version: str) -> Problem:
    """User properties asked of an MQTT 3.1.1 connection, which has no properties."""
    return Problem(
        where,
        f"with MQTT {version}",
        f'version: "5" on the endpoint (user properties are an MQTT 5 property), or no {where[-1]}',
    )


class MqttRoute(Strict):
    """Bridge target options when the target is an MQTT endpoint."""

    topic: str = Field(
        "{gateway}/{device}/{point}",
        description=(
            "topic template: {gateway} {device} {point}, and {shadow.reported.<key>} /"
            " {shadow.desired.<key>} from the device's shadow"
        ),
    )
    payload: Literal["value", "sample", "device"] = Field(
        "sample",
        description=(
            "value: the bare JSON value per point; sample: {value, quality, ts, unit} per point;"
            " device: one JSON object per device poll"
        ),
    )
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    user_properties: dict[str, str] = Field(
        default_factory=dict, description=ROUTE_PROPERTIES_DESCRIPTION
    )
    relay_user_properties: bool | tuple[str, ...] = Field(False, description=RELAY_DESCRIPTION)

    def check_target(self, endpoint: MqttEndpoint) -> list[Problem]:
        """What the target endpoint refuses of this route: user properties on MQTT 3.1.1."""
        if endpoint.v5:
            return []
        return [
            user_properties_problem((key,), endpoint.version)
            for key in ("user_properties", "relay_user_properties")
            if getattr(self, key)
        ]

    @field_validator("relay_user_properties")
    @classmethod
    def _relay(cls, v: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
        return check_relay(v)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        try:
            check_publish_topic(v)
        except ValueError as exc:
            raise ValueError(f"bad topic template: {exc}") from None
        return v

    @model_validator(mode="after")
    def _topic_fits_payload(self) -> MqttRoute:
        fields = template_fields(self.topic)
        if self.payload == "device" and "point" in fields:
            raise ValueError("payload 'device' sends one message per device: drop {point}")
        if self.payload != "device" and "point" not in fields:
            raise ValueError(
                f"payload {self.payload!r} sends one message per point: the topic needs {{point}}"
            )
        if self.payload == "device":
            where = " (payload device: one publish per device, not per point)"
            check_user_properties(self.user_properties, DEVICE_PROPERTY_FIELDS, where)
        else:
            check_user_properties(self.user_properties, PROPERTY_FIELDS)
        return self
