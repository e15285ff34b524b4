"""Config models of a Sparkplug B edge node endpoint, of a bridge that feeds it, and of a host
application (role ``host``) that reads other edge nodes.

The broker connection (TLS, username and password, reconnect backoff) is the MQTT endpoint's:
the same `Tls` and `Backoff` models and the same warnings."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from gateway.config.common import (
    Backoff,
    Path,
    PointLimits,
    Problem,
    Strict,
    repeated_names,
)
from gateway.types import Access, PointSpec
from gateway.uplink.outbox import OutboxConfig
from protocols.mqtt.config import (
    FAILOVER_DESCRIPTION,
    NAME_PATTERN,
    FailoverBroker,
    PointType,
    Tls,
    broker_port,
    broker_warnings,
    password_warning,
    repeated_brokers,
)
from protocols.sparkplug.codec import NAMESPACE, check_id, id_problem

#: ``group:`` of a host that reads every group (the MQTT wildcard, which no group_id can be)
EVERY_GROUP = "+"


def _version_text(v: object) -> object:
    """YAML reads ``state_version: 2.2`` unquoted as a float: take it as the text it was."""
    return str(v) if isinstance(v, float) else v


def _versions_as_numbers_too(schema: dict[str, Any]) -> None:
    """The JSON Schema (editors) takes an unquoted 2.2 or 3.0 as the loader does."""
    schema["enum"] = [*schema["enum"], *(float(v) for v in schema["enum"] if v != "both")]
    schema.pop("type", None)


def _lone_state_version(cfg: Strict, owner: str) -> list[Problem]:
    """``state_version`` set without the key it qualifies (``primary_host`` or ``host_id``)
    would do nothing: most likely that key is missing or on another entry, so say so."""
    if "state_version" not in cfg.model_fields_set or getattr(cfg, owner) is not None:
        return []
    return [
        Problem(
            ("state_version",),
            f"state_version without {owner}",
            f"{owner}: ID beside it (the STATE version is that host's), or no state_version",
        )
    ]


class SparkplugBroker(Strict):
    """The broker connection, the same for an edge node and a host (each role declares its
    ``group``: one for a node, one or several for a host)."""

    WHAT: ClassVar[str] = "Sparkplug endpoint"

    protocol: Literal["sparkplug"] = "sparkplug"
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="1883, or 8883 with tls")
    failover: list[FailoverBroker] = Field(default_factory=list, description=FAILOVER_DESCRIPTION)
    client_id: str | None = Field(
        None, description="MQTT client id; defaults to protocol-brain-{gateway}-{name}"
    )
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(30, ge=5, le=65535)
    tls: Tls | None = None
    reconnect: Backoff = Field(default_factory=Backoff)
    # an MQTT endpoint's option, named here only to be refused in words (`check`)
    session: SkipJsonSchema[Any] = Field(None, exclude=True)

    def run_warnings(self) -> list[tuple[Path, str]]:
        return broker_warnings(self, self.WHAT)

    def check(self) -> list[Problem]:
        problems = repeated_brokers(self)
        if "session" in self.model_fields_set:
            problems.append(
                Problem(
                    ("session",),
                    f"session on a {self.WHAT}",
                    "no session: Sparkplug requires a clean session on every connect (its"
                    " NBIRTH/STATE rules start each session afresh); the outbox keeps readings"
                    " across an outage",
                )
            )
        return problems

    def password_warning(self) -> str | None:
        """`protocols.mqtt.config.password_warning` of this connection."""
        return password_warning(self)

    @property
    def effective_port(self) -> int:
        return broker_port(self)


class SparkplugEndpoint(SparkplugBroker):
    """An edge node (role ``client``): the bridges' source devices are its devices."""

    group: str = Field(description="Sparkplug group_id (no '/', '+' or '#')")
    node: str | None = Field(
        None, description="Sparkplug edge_node_id (no '/', '+' or '#'); default: gateway.name"
    )
    primary_host: str | None = Field(
        None,
        description=(
            "host_id of the Primary Host Application (no '/', '+' or '#'): the births wait for"
            " its STATE online, and its STATE offline ends the session (NDEATH, reconnect, wait)"
        ),
    )
    state_version: Literal["3.0", "2.2"] = Field(
        "3.0",
        description=(
            "with primary_host: the Sparkplug version of its STATE; '3.0': JSON on"
            " spBv1.0/STATE/{id}, '2.2': ONLINE/OFFLINE on STATE/{id} (older hosts)"
        ),
        json_schema_extra=_versions_as_numbers_too,
    )
    primary_host_wait: float = Field(
        30.0,
        gt=0,
        description=(
            "with failover: seconds to wait on a broker for the primary host's STATE online"
            " before trying the next (a STATE offline moves on at once)"
        ),
    )
    buffer: int = Field(
        10_000,
        ge=0,
        description=(
            "telemetry messages kept in memory while disconnected, sent as historical DDATA"
            " after the births (the oldest dropped past it, counted and logged; 0: none kept)"
        ),
    )
    outbox: OutboxConfig | None = Field(
        None,
        description=(
            "keep that telemetry in a SQLite file instead (the MQTT endpoint's outbox: path,"
            " synchronous, max_rows, max_bytes, max_age, policy, drain_rate), across restarts"
        ),
    )

    @field_validator("group")
    @classmethod
    def _group(cls, v: str) -> str:
        return check_id(v, "group_id")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "edge_node_id")

    _state_version = field_validator("state_version", mode="before")(_version_text)

    def check(self) -> list[Problem]:
        problems = super().check() + _lone_state_version(self, "primary_host")
        outbox = self.outbox
        if outbox is None or not outbox.enabled:
            return problems
        if "buffer" in self.model_fields_set:
            problems.append(
                Problem(
                    ("buffer",),
                    "buffer beside an enabled outbox",
                    "one of them (the outbox's max_rows bounds it)",
                )
            )
        # the node writes only while disconnected, one message at a time, and sends the
        # backlog marked historical beside live data: these two outbox settings do not apply
        for key, why in (
            ("write_delay", "each message is written as it arrives, only while disconnected"),
            ("drain_order", "held messages go out as historical DDATA beside live data"),
        ):
            if key in outbox.model_fields_set:
                problems.append(
                    Problem(("outbox", key), f"{key} on a Sparkplug node", f"no {key} ({why})")
                )
        return problems

    @field_validator("primary_host")
    @classmethod
    def _primary_host(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "host_id")


class HostPoint(PointLimits):
    """A metric of another edge node declared as a point of the host: known to server targets
    from the start, typed, and with ``access: rw`` written by NCMD/DCMD."""

    name: str = Field(pattern=NAME_PATTERN)
    group: str | None = Field(
        None,
        description=(
            "the group_id of its edge node: required when the entry reads several groups"
            " (group: a list, or '+'); else the entry's group, which it may repeat"
        ),
    )
    node: str = Field(description="the edge_node_id that births the metric")
    device: str | None = Field(
        None, description="the device_id (a DBIRTH's metric); none: a metric of the node itself"
    )
    metric: str = Field(min_length=1, description="the metric's name, as in the birth")
    type: PointType = Field("float64", description="value type on the bus")
    unit: str | None = Field(
        None, description="engineering unit (a pint name converts; other text is passed on)"
    )
    access: Access = Access.READ
    description: str = ""
    write_rate: float | None = Field(None, gt=0)

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "group_id")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_id(v, "edge_node_id")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "device_id")

    @model_validator(mode="after")
    def _writable(self) -> HostPoint:
        if self.access is Access.WRITE:
            raise ValueError("access w: a Sparkplug metric is read from its births; use rw")
        return self


class SparkplugHost(SparkplugBroker):
    """A Sparkplug host application (role ``host``): the metrics that other edge nodes of
    ``group`` birth are points of this one source device. ``group`` is one group_id, a list of
    them, or `EVERY_GROUP`; with a list or every group the point names begin with the group,
    so that one edge_node_id in two groups makes two sets of points."""

    WHAT: ClassVar[str] = "Sparkplug host"
    RUN_TIME_POINTS: ClassVar[str] = "whose metrics learnt from births (learn: true)"

    group: str | list[str] = Field(
        description=(
            "Sparkplug group_id to read (no '/', '+' or '#'); or a list of group_ids, or '+'"
            " for every group: then learnt point names begin with the group and declared"
            " points name theirs"
        )
    )
    host_id: str | None = Field(
        None,
        description=(
            "publish STATE as this Primary Host Application (no '/', '+' or '#'): online"
            " (retained) while connected, offline as its will; edge nodes configured with it"
            " birth when it is online"
        ),
    )
    state_version: Literal["3.0", "2.2", "both"] = Field(
        "3.0",
        description=(
            "with host_id: the Sparkplug version of the STATE it publishes; '3.0': JSON on"
            " spBv1.0/STATE/{id}, '2.2': ONLINE/OFFLINE on STATE/{id} (older edge nodes),"
            " 'both': each (its will is 3.0's; 2.2's stays ONLINE if it dies)"
        ),
        json_schema_extra=_versions_as_numbers_too,
    )
    learn: bool = Field(
        True,
        description=(
            "every metric of every birth is a point named {node}.{device}.{metric} (a node"
            " metric {node}.{metric}; '/' in a metric name becomes '.'; reading several groups,"
            " {group}.{node}.{device}.{metric}): read-only, named at run time; false: only"
            " the points declared"
        ),
    )
    max_points: int = Field(
        10_000, ge=1, description="learnt points at most (names come from the broker)"
    )
    rebirth_interval: float = Field(
        5.0,
        gt=0,
        description=(
            "seconds at least between two rebirth requests (NCMD) to one edge node, asked when"
            " its data cannot be read in order (a seq gap, an alias or a node not born)"
        ),
    )
    points: list[HostPoint] = Field(
        default_factory=list, description="metrics declared as points (typed, writable)"
    )

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | list[str]) -> str | list[str]:
        if v == EVERY_GROUP:  # '+' cannot be a group_id: no group is read another way
            return v
        if isinstance(v, str):
            return check_id(v, "group_id")
        if not v:
            raise ValueError("an empty list: one group_id at least, or '+' for every group")
        if EVERY_GROUP in v:
            raise ValueError("'+' in a list: '+' alone reads every group")
        return [check_id(group, "group_id") for group in v]

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "host_id")

    @property
    def several_groups(self) -> bool:
        """Whether the entry reads several groups (a list, or every group): names and
        declared points carry the group then. A list of one is several too, so that adding
        a group to it later renames nothing."""
        return isinstance(self.group, list) or self.group == EVERY_GROUP

    @property
    def one_group(self) -> str | None:
        """The group_id when the entry reads exactly one given as ``group: ID``, else None."""
        return None if self.several_groups else str(self.group)

    def reads(self, group: str) -> bool:
        """Whether a message of ``group`` is one of this entry's."""
        if isinstance(self.group, list):
            return group in self.group
        return self.group in (EVERY_GROUP, group)

    def topic_filters(self) -> list[str]:
        """What the host subscribes to: ``spBv1.0/{group}/#`` for each group read, or
        ``spBv1.0/+/#`` for every group."""
        groups = self.group if isinstance(self.group, list) else [self.group]
        return [f"{NAMESPACE}/{group}/#" for group in groups]

    _state_version = field_validator("state_version", mode="before")(_version_text)

    def check(self) -> list[Problem]:
        problems = super().check() + repeated_names(self.points)
        problems += _lone_state_version(self, "host_id")
        if isinstance(self.group, list):
            for i, group in enumerate(self.group):
                if group in self.group[:i]:
                    problems.append(Problem(("group", i), f"{group!r} again", "a group used once"))
        metrics: set[tuple[str | None, str, str | None, str]] = set()
        for i, p in enumerate(self.points):
            problem = self._group_problem(p)
            if problem is not None:
                problems.append(Problem(("points", i, "group"), *problem))
            key = (p.group or self.one_group, p.node, p.device, p.metric)
            if key in metrics:
                problems.append(
                    Problem(
                        ("points", i, "metric"),
                        f"{p.metric!r} of the same node and device as an earlier point",
                        "one point per metric",
                    )
                )
            metrics.add(key)
        if not self.learn and not self.points:
            problems.append(
                Problem(("learn",), "false with no points:", "learn: true, or points declared")
            )
        return problems

    def _group_problem(self, point: HostPoint) -> tuple[str, str] | None:
        """What is wrong with a declared point's ``group`` (found, expected), None if
        nothing is."""
        if not self.several_groups:
            if point.group is None or point.group == self.group:
                return None
            return f"{point.group!r}, not the entry's group", f"{self.group!r}, or no group"
        if point.group is None:
            return "no group, in an entry that reads several", "the group_id of its edge node"
        if isinstance(self.group, list) and point.group not in self.group:
            return f"{point.group!r}, a group the entry does not read", f"one of {self.group}"
        return None

    @property
    def points_at_run_time(self) -> bool:
        """Learnt points are named by the births, once they arrive."""
        return self.learn


class SparkplugRoute(Strict):
    """Bridge options when the target is a Sparkplug edge node (none yet): each source device
    of the bridge is a Sparkplug device, named by its device name."""

    def check_carried(
        self,
        endpoint: object,
        points: dict[str, list[PointSpec]] | None,
        shared: dict[Any, Any],
    ) -> list[Problem]:
        """``gateway validate``: a source device whose name cannot be a Sparkplug device_id."""
        return [
            Problem(
                ("from",),
                f"source device {problem}",
                "a device name without '/', '+' or '#' (it is the Sparkplug device_id)",
            )
            for device in points or {}
            if (problem := id_problem(device)) is not None
        ]
