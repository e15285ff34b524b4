"""The config file as typed objects: `load_config` reads, validates and cross-checks it.

Validation runs in three layers, and every layer reports all it finds before the file is refused:

1. YAML (`yamlmarks`): syntax, repeated keys, positions of every key and value;
2. schema: the top-level keys, the ``gateway`` section, each device or endpoint against the
   config model of its protocol plugin, each bridge's own keys, and the options of a bridge
   against the route model of its target's protocol;
3. references and semantics: each plugin model's ``check()``, names used twice, bridges naming
   undefined devices or a target that cannot receive, a server as a source (it carries
   nothing), point globs that select nothing, units that are unknown or cannot be converted
   from the point's unit (or that it has none), points a server target would not serve (named
   only at run time; its route model's ``check_carried``, the target's own start-up check);
   and that a third-party plugin's
   adapter class can be imported (`ProtocolSpec.check_adapter`, as ``gateway run`` would).

Some things are said as warnings, not problems: they do not stop the gateway. A plugin package
that was refused (a built-in's name, a spec module that fails to import) and that no entry
uses; a protocol library that is not installed (``gateway run`` refuses the entry, but the file
is right); a disabled entry (``enabled: false``) whose protocol is not installed, whose
settings therefore cannot be checked. ``gateway validate`` only (``check_adapters``; ``gateway
run`` says these itself when it starts the entry): files a model's ``run_warnings()`` names that
are not on this machine (MQTT TLS files, OPC UA certificates: the file may be checked on
another machine; an MQTT password sent without TLS), a target whose ``write_warning(n)`` says
that anyone may write the ``n`` points its bridges let clients write (a CoAP server without
OSCORE, a Modbus TCP server), a shadow whose MQTT update topic sets writable points
(`ShadowSection.update_warning`), and shadow updates that a persistent session queues with no
``max_age`` to refuse a late one, or a ``max_skew`` without it (`late_update_warnings`).

A value under a key in `SECRET_KEYS` (``password``, ``master_secret``, ``master_salt``, a
DTLS ``key`` or ``key_hex``) is never shown in a problem or warning, nor is one filled in from
a ``${...}`` reference (`_hidden`).

``enabled: false`` switches an entry off without deleting it. It is not started and is left
out of `GatewayConfig.devices`; its settings are still checked when its protocol is installed,
and only the protocol's availability is not required (the point: switch off the device of a
broken or missing plugin). A bridge from or to a disabled entry is a problem unless the bridge
has ``enabled: false`` too: a data flow is never switched off silently.

A plugin's model is third-party code: if it raises something else than a validation error, the
crash is reported as a problem of that entry, never as a traceback of the loader.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import os
import re
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from gateway.aggregate import DEFAULT_STATS, Stat, summary_specs
from gateway.anomaly.verdict import add_alarm_points
from gateway.config.anomaly import AnomalyOptions
from gateway.config.common import (
    Path,
    Strict,
    config_relative,
    left_behind,
    left_behind_text,
    unknown_units,
    with_local_paths,
)
from gateway.config.computed import ComputedPoint
from gateway.config.errors import (
    MAX_SHOWN,
    ConfigError,
    Finding,
    LocatedProblem,
    Where,
    choices,
    describe,
    kind_of,
    listing,
    locate,
    place,
    show,
    translate,
    unknown_key,
)
from gateway.config.references import hide_values, process_lookup
from gateway.config.translate import MODEL_FILE, TranslateConfig
from gateway.config.yamlmarks import START, Marks, parse_yaml
from gateway.expressions import compile_expression
from gateway.globs import Globs, is_pattern
from gateway.paths import config_state_dir, state_path
from gateway.plugins import PluginError, ProtocolSpec, Registry, load_registry
from gateway.text import counted
from gateway.types import PointSpec

log = logging.getLogger(__name__)

TOP_KEYS = ("gateway", "devices", "endpoints", "bridges", "shadow")
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MODEL_WORDS = (
    "builtin",
    "heuristic",
    "off",
)  # optimizer models that are not paths  # far above any real config; a bigger file is a mistake
SECTIONS = ("devices", "endpoints")
# Taken out of an entry before the plugin's model sees it (protocol and enabled are left in
# for a model that has such a field).
ENTRY_KEYS = ("protocol", "role", "enabled")
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"  # device names appear in bus and MQTT topics
_NAME = re.compile(NAME_PATTERN)
TOP_EXPECTED = "a mapping with devices, endpoints and bridges"


class MetricsSettings(Strict):
    """``gateway.metrics``: Prometheus metrics over HTTP (`gateway.metrics`)."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address to listen on; no authentication: keep it local or behind a proxy",
    )
    port: int = Field(
        9464, ge=0, le=65535, description="GET /metrics, /health, /ready, /status on host:port"
    )
    liveness_lag: float = Field(
        10.0,
        gt=0,
        description="seconds of event-loop lag (99th percentile over the last minute) from "
        "which GET /health fails, so that the orchestrator restarts the gateway",
    )


class GatewaySection(Strict):
    """The optional ``gateway:`` section."""

    name: str = Field(
        "protocol-brain",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="name of this gateway; appears in MQTT topics as {gateway}",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    status_interval: float = Field(
        60.0,
        ge=0,
        description="seconds between status lines in the log, systemd's STATUS and the status "
        "file gateway status reads (the first comes 5 s after start, or sooner); 0 turns the "
        "log's lines off, and STATUS and the file are then refreshed every 60 s",
    )
    metrics: MetricsSettings | None = Field(
        None, description="serve Prometheus metrics (the status file's figures) over HTTP"
    )


class EntryKeys(Strict):
    """The keys of a device or endpoint that are the gateway's, not its protocol's (besides
    ``protocol`` and ``role``)."""

    enabled: bool = Field(
        True,
        description="false: not started; still checked if its protocol is installed; bridges "
        "from or to it need enabled: false too",
    )


class AggregateOptions(Strict):
    """A bridge's ``aggregate:``: numeric points summarised per window (`gateway.aggregate`)."""

    every: float = Field(
        gt=0, description="seconds per window; windows start on multiples of it (60: the minute)"
    )
    stats: list[Stat] = Field(
        default_factory=lambda: list(DEFAULT_STATS),
        min_length=1,
        description="statistics sent per point and window, each as <point>.<stat>",
    )
    points: list[str] = Field(
        default_factory=lambda: ["*"],
        description="globs over point names (after translate) to summarise; default all",
    )
    grace: float = Field(
        2.0,
        ge=0,
        description="seconds past a window's end, and since its last reading, before it is sent",
    )

    @field_validator("stats")
    @classmethod
    def _once(cls, stats: list[Stat]) -> list[Stat]:
        twice = sorted({s for s in stats if stats.count(s) > 1})
        if twice:
            raise ValueError(f"each statistic once ({', '.join(map(repr, twice))} twice or more)")
        return stats


class BridgeKeys(Strict):
    """The keys every bridge has, whatever its target; the others are the target's options."""

    name: str = Field(min_length=1, description="unique name of the bridge")
    enabled: bool = Field(
        True,
        description="false: the bridge does not run (still checked; may name disabled devices)",
    )
    from_: str | list[str] = Field(
        alias="from", description="device or endpoint name(s) whose points are bridged"
    )
    points: str | list[str] = Field(
        default_factory=lambda: ["*"], description="globs over point names; default all"
    )
    to: str = Field(min_length=1, description="device or endpoint that receives the points")
    anomaly: AnomalyOptions | None = Field(
        None, description="score every numeric sample of the sources; alarm events"
    )
    units: dict[str, str] = Field(
        default_factory=dict, description="point glob -> unit to convert matching points to"
    )
    translate: TranslateConfig | None = Field(
        None, description="rename points by an approved map, or classify new ones (auto)"
    )
    computed: list[ComputedPoint] = Field(
        default_factory=list,
        description="points computed from the device's points and shadow (gateway.computed)",
    )
    aggregate: AggregateOptions | None = Field(
        None, description="send per point and window statistics instead of every reading"
    )
    heartbeat: float | None = Field(
        None,
        gt=0,
        description="seconds: a point not sent for this long is sent again, unchanged",
    )


class ShadowMqtt(Strict):
    """Where the shadow is served over MQTT (AWS IoT-style topics)."""

    endpoint: str = Field(min_length=1, description="name of an MQTT endpoint (role client)")
    prefix: str = Field(
        "things",
        pattern=r"^[^#+]+$",
        description="topics are {prefix}/{device}/shadow/get, .../update, .../update/delta, ...",
    )
    qos: Literal[0, 1, 2] = 1
    # The late-update guard (gateway.shadow.freshness): a persistent session's broker queues
    # updates while the gateway is away, and a setpoint carried out hours late is worse than none.
    max_age: float | None = Field(
        None,
        gt=0,
        description="seconds; an update whose top-level timestamp (epoch seconds) is older than "
        "this when it arrives is rejected (400), not applied; null: off",
    )
    require_timestamp: bool = Field(
        False,
        description="with max_age: reject an update without a timestamp (default: accept it)",
    )
    max_skew: float = Field(
        60.0,
        ge=0,
        description="seconds; with max_age: reject an update whose timestamp is more than this "
        "ahead of the gateway's clock (a wrong clock would make its updates look fresh)",
    )

    def model_post_init(self, context: Any) -> None:
        if self.require_timestamp and self.max_age is None:
            raise ValueError("max_age with require_timestamp: true (without it the guard is off)")


class ShadowHistory(Strict):
    """Retention of the reported-value history (per point, and of the whole file)."""

    max_age: float | None = Field(7 * 86400.0, gt=0, description="seconds; null keeps all")
    max_rows: int | None = Field(100_000, ge=1, description="rows per point; null keeps all")
    max_bytes: int | None = Field(
        1 << 30,
        ge=1 << 20,
        description="bytes in use in the store's file at most (history of all points, and the "
        "documents); past it retention deletes the oldest rows down to 90 %; the file keeps "
        "its size and reuses the room; null: no cap",
    )
    min_free: int = Field(
        64 << 20,
        ge=0,
        description="bytes; below this much free space on the store's filesystem no history "
        "is written, so that the MQTT outbox keeps the room (reported state still is, down to "
        "4 MiB free, or this much if less; below that it waits in memory); 0: off",
    )


class ShadowSection(Strict):
    """The optional ``shadow:`` section: device shadows (reported/desired/delta) and history."""

    path: str = Field(
        "shadow.db",
        min_length=1,
        description="SQLite file; relative to the config file; {state}: the state folder",
    )
    devices: list[str] | None = Field(
        None, description="devices that have a shadow; default every device with points"
    )
    poll_interval: float = Field(
        0.5, gt=0, description="seconds between checks for desired changes made by other processes"
    )
    write_delay: float = Field(
        0.0,
        ge=0,
        le=10,
        description="seconds readings wait to be recorded together (one transaction: less "
        "written to the disk, e.g. an SD card); reported state lags by as much",
    )
    retry_unreachable: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="seconds after a desired change during which a write refused because the "
        "device was unreachable (not connected yet, or down) is made again as soon as the "
        "device reports a reading; later, it stays refused (a setpoint applied late is worse "
        "than none: set it again); 0: never",
    )
    max_desired_keys: int = Field(
        1000,
        ge=1,
        description="keys at most at the top of a device's desired state (points to set and "
        "metadata keys); an update past it is refused (MQTT 413, gateway shadow set exit 1)",
    )
    max_desired_bytes: int = Field(
        65_536,
        ge=1,
        description="bytes at most of a device's desired state as compact JSON; an update "
        "past it is refused (MQTT 413, gateway shadow set exit 1)",
    )
    mqtt: ShadowMqtt | None = None
    history: ShadowHistory = Field(default_factory=ShadowHistory)

    def file(self) -> str:
        """The store's file: ``{state}`` filled in (the loader made a relative path relative
        to the config file)."""
        return str(state_path(self.path, "shadow"))

    def update_warning(self, writable: Collection[tuple[str, str]], broker: object) -> str | None:
        """What to say when the shadow's MQTT update topic can set the ``writable`` (device,
        point) pairs: a desired value published there is written to the device, and only the
        broker's ACLs say who may publish. ``broker``: the MQTT endpoint's config (its host and
        port). None without ``mqtt:`` or without such points. ``gateway validate`` prints it,
        the shadow service logs it at start."""
        if self.mqtt is None or not writable:
            return None
        host = str(getattr(broker, "host", "?"))
        port = getattr(broker, "effective_port", getattr(broker, "port", "?"))
        at = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        devices = len({device for device, _ in writable})
        return (
            f"anyone who can publish on {self.mqtt.prefix}/+/shadow/update at broker {at} can "
            f"write {counted(len(writable), 'point')} of {counted(devices, 'device')} (a desired "
            "value is written to the device); restrict that topic with the broker's ACLs, see "
            "docs/shadow.md"
        )


BRIDGE_KEYS = tuple(info.alias or name for name, info in BridgeKeys.model_fields.items())


def event_points(config: object) -> list[str]:
    """The names of the samples an entry's events carry (its config's ``event_points()``: an
    OPC UA client's ``events:``); [] for an entry without events."""
    names = getattr(config, "event_points", None)
    return list(names()) if callable(names) else []


@dataclass(frozen=True)
class BridgeConfig:
    name: str
    sources: tuple[str, ...]
    points: tuple[str, ...]
    target: str
    units: dict[str, str]
    route: BaseModel | None
    translate: TranslateConfig | None = None
    anomaly: AnomalyOptions | None = None
    computed: tuple[ComputedPoint, ...] = ()
    aggregate: AggregateOptions | None = None
    heartbeat: float | None = None


@dataclass(frozen=True)
class DeviceEntry:
    name: str
    protocol: str
    role: str
    spec: ProtocolSpec
    config: BaseModel
    section: str  # "devices" or "endpoints"


@dataclass(frozen=True)
class GatewayConfig:
    path: str
    gateway: GatewaySection
    devices: dict[str, DeviceEntry]  # enabled devices and endpoints, in file order
    bridges: list[BridgeConfig]  # enabled bridges
    shadow: ShadowSection | None = None
    disabled: tuple[str, ...] = ()  # devices and endpoints with enabled: false
    disabled_bridges: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # lines to show (validate) or log (run) at warning level


def load_config(
    path: str | os.PathLike[str],
    registry: Registry | None = None,
    *,
    check_adapters: bool = False,
    keep_unresolved: bool = False,
) -> GatewayConfig:
    """Read and validate a config file; `ConfigError` lists every problem found.

    ``check_adapters`` (``gateway validate``): also what ``gateway run`` would refuse about
    the adapters of the enabled entries (`_Loader.adapter`). ``gateway run`` itself leaves it
    to the runtime, which imports them anyway and says the same `PluginError` once.
    ``keep_unresolved``: a ``${...}`` reference (`gateway.config.references`) that this
    process cannot resolve is kept as written instead of being a problem (commands that only
    read the gateway's state files, run from a shell without the service's secrets)."""
    filename = os.fspath(path)
    try:
        # A FIFO would block open() until a writer comes, /dev/zero would never end: only a
        # regular file of a sane size is read.
        info = os.stat(filename)
        if not stat.S_ISDIR(info.st_mode) and not stat.S_ISREG(info.st_mode):
            raise _fail(filename, "not a regular file (a pipe or a device)", "a YAML file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise _fail(
                filename, f"{info.st_size} bytes", f"a config under {MAX_CONFIG_BYTES} bytes"
            )
        with open(filename, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise _fail(filename, "a directory", "a YAML file") from None
    except FileNotFoundError:
        raise _fail(filename, "no such file", "an existing YAML file") from None
    except PermissionError:
        raise _fail(filename, "a file this user may not read", "a readable YAML file") from None
    except OSError as exc:
        raise _fail(
            filename, f"a file that cannot be read ({exc.strerror or exc})", "a readable YAML file"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = raw[exc.start : exc.end].hex(" ")
        raise ConfigError(
            [
                LocatedProblem(
                    filename, line, column, (), f"bytes that are not UTF-8 (0x{bad})", "UTF-8 text"
                )
            ]
        ) from None
    return load_config_text(
        text, filename, registry, check_adapters=check_adapters, keep_unresolved=keep_unresolved
    )


def load_config_text(
    text: str,
    filename: str = "<string>",
    registry: Registry | None = None,
    *,
    check_adapters: bool = False,
    keep_unresolved: bool = False,
) -> GatewayConfig:
    """Validate config text; ``filename`` names it in problems, and its folder is where a
    relative ``${file:PATH}`` is read from (the working folder for ``<string>``)."""
    base = os.path.dirname(os.path.abspath(filename)) if filename != "<string>" else os.getcwd()
    document = parse_yaml(text, process_lookup(base, keep_unresolved=keep_unresolved))
    if registry is None:
        registry = load_registry()
    loader = _Loader(filename, document.marks, registry, check_adapters=check_adapters)
    for issue in document.issues:
        loader.problems.append(
            LocatedProblem(
                filename,
                issue.mark.line,
                issue.mark.column,
                issue.path,
                issue.found,
                issue.expected,
            )
        )
    config = loader.load(document.data, had_yaml_issues=bool(document.issues))
    references = dict(document.marks.references)
    loader.problems, warnings = _hidden(
        loader.problems, loader.all_warnings(), document.data, references
    )
    if loader.problems or config is None:
        raise ConfigError(loader.problems, warnings)
    return dataclasses.replace(config, warnings=warnings)


SECRET_KEYS = frozenset({"password", "master_secret", "master_salt", "key", "key_hex"})
SECRET_FOUND = "a value that is not shown (a secret)"
SECRET_SHOWN = "<a secret>"  # a literal secret quoted elsewhere in a message, replaced by this
_ABSENT = object()


def _hidden(
    problems: list[LocatedProblem],
    warnings: tuple[str, ...],
    data: Any,
    references: Mapping[Path, tuple[str, str]],
) -> tuple[list[LocatedProblem], tuple[str, ...]]:
    """The problems and warnings with no secret in them.

    A value filled in from a ``${...}`` reference is shown as written (`hide_values`). A value
    under a key named in `SECRET_KEYS` (anywhere in the config, written literally or filled
    in) is never shown: a problem at its path says `SECRET_FOUND` and its kind, with the
    expected text (the reason) kept; a problem at a mapping or list that holds one and quotes
    it says its kind only; any other quote of a literal secret (as messages quote values) is
    replaced by `SECRET_SHOWN`."""
    refs = list(references.values())
    secrets = _secrets(data)
    literal = [
        (SECRET_SHOWN, value)
        for path, value in secrets
        if isinstance(value, str) and path not in references
    ]
    shown = [*refs, *literal]  # references as written, then literal secrets as SECRET_SHOWN
    warnings = tuple(hide_values(w, shown, MAX_SHOWN) for w in warnings)
    out = []
    for p in problems:
        value = _value_at(data, p.path)
        if value is not _ABSENT and _quotes(p.found, value):
            if any(key in SECRET_KEYS for key in p.path):
                p = dataclasses.replace(p, found=f"{SECRET_FOUND}, {kind_of(value)}")
            elif isinstance(value, Mapping | list) and _secrets(value):
                p = dataclasses.replace(
                    p, found=f"{kind_of(value)} that holds a secret (not shown)"
                )
        found = hide_values(p.found, refs, MAX_SHOWN)
        if found != p.found:
            found += " (as written; the value filled in is not shown)"
        out.append(
            dataclasses.replace(
                p,
                found=hide_values(found, literal, MAX_SHOWN),
                expected=hide_values(p.expected, shown, MAX_SHOWN),
            )
        )
    return out, warnings


def _secrets(data: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """(path, value) of each value under a key in `SECRET_KEYS`, at any depth of ``data``."""
    items = (
        data.items()
        if isinstance(data, Mapping)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    out: list[tuple[Path, Any]] = []
    for key, value in items:
        if key in SECRET_KEYS:
            out.append(((*path, key), value))
        else:
            out.extend(_secrets(value, (*path, key)))
    return out


def _value_at(data: Any, path: Path) -> Any:
    """The value at ``path`` of the parsed YAML, or `_ABSENT`."""
    for key in path:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return _ABSENT
    return data


def _quotes(text: str, value: Any) -> bool:
    """Whether ``text`` may quote ``value`` (as `show` writes it, its repr or its text)."""
    return any(form in text for form in (show(value), repr(value), str(value)))


def _fail(filename: str, found: str, expected: str) -> ConfigError:
    return ConfigError([LocatedProblem(filename, START.line, START.column, (), found, expected)])


def _valid_fields(
    model: type[BaseModel], data: Any, names: Collection[str] | None = None
) -> dict[str, Any]:
    """The fields of ``data`` (or only ``names``) that are valid on their own, by field name;
    one that is not written has its default.

    When `_Loader.validate` refused a section (and reported why), the cross-checks still run on
    these, so that one wrong key does not hide the problems of the others. Only the fields'
    types and constraints are checked here, not the model's own validators: the values serve
    the cross-checks of a section that is refused anyway."""
    if not isinstance(data, Mapping):
        return {}
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if names is not None and name not in names:
            continue
        key = info.alias or name
        try:
            if key in data:
                out[name] = _field_adapter(model, name).validate_python(data[key])
            elif not info.is_required():
                out[name] = info.get_default(call_default_factory=True)
        except Exception:  # invalid (reported already), or a plugin's own code crashed
            continue
    return out


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    kind: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    try:
        return TypeAdapter(kind, config=model.model_config)
    except PydanticUserError:  # a model (or dataclass) field: it has a config of its own
        return TypeAdapter(kind)


@dataclass
class _Declared:
    """A device or endpoint name as written, even when its entry is invalid."""

    section: str
    spec: ProtocolSpec | None = None
    entry: DeviceEntry | None = None
    role: str = ""
    enabled: bool = True

    @property
    def route_model(self) -> type[BaseModel] | None:
        return None if self.spec is None else self.spec.route_model_for(self.role)


@dataclass
class _Loader:
    filename: str
    marks: Marks
    registry: Registry
    check_adapters: bool = False
    problems: list[LocatedProblem] = field(default_factory=list)
    declared: dict[str, _Declared] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # protocols whose registry error a problem already quotes: not said again as a warning
    quoted: set[str] = field(default_factory=set)
    adapters_checked: set[tuple[str, str]] = field(default_factory=set)
    # target -> what its route model's ``check_carried`` keeps between that target's bridges
    served_state: dict[str, dict[Any, Any]] = field(default_factory=dict)
    # target -> the (device, point) its enabled bridges let clients write (`write_warnings`)
    writable: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    disabled_bridges: list[str] = field(default_factory=list)

    def add(self, finding: Finding) -> None:
        self.problems.append(locate(self.filename, self.marks, finding))

    def report(self, path: Path, found: str, expected: str, where: Where = "value") -> None:
        self.add(Finding(path, found, expected, where))

    def warn(self, path: Path, text: str) -> None:
        mark = self.marks.value(path)
        self.warnings.append(place(self.filename, mark.line, mark.column, path) + text)

    def all_warnings(self) -> tuple[str, ...]:
        """The refused plugin packages that no problem names already, then the file's own."""
        plugins = [err for name, err in self.registry.errors.items() if name not in self.quoted]
        return (*plugins, *self.warnings)

    def validate(
        self,
        model: type[BaseModel],
        data: Any,
        path: Path,
        root_keys: tuple[str, ...] = (),
        hints: Mapping[str, str] | None = None,
        *,
        retried: bool = False,
    ) -> BaseModel | None:
        """``model.model_validate(data)``; problems reported under ``path``."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for f in translate(errors, data, model, prefix=path, root_keys=root_keys, hints=hints):
                self.add(f)
            if not retried and all(e["type"] == "extra_forbidden" for e in errors):
                # Unknown keys (typos) alone: the rest is checked as if they were not there,
                # so that one run also reports what the checks across fields find (a point's
                # poll group), instead of those coming one fix later.
                trimmed = _without(data, [tuple(e["loc"]) for e in errors])
                return self.validate(model, trimmed, path, root_keys, hints, retried=True)
        except Exception as exc:  # a plugin's validator crashed: report, do not propagate
            self.report(
                path,
                f"an error in the config model {model.__name__}: {exc!r}",
                "a config its protocol plugin can read (report this to its authors)",
            )
        return None

    # -- top level ---------------------------------------------------------------------------

    def load(self, data: Any, *, had_yaml_issues: bool) -> GatewayConfig | None:
        if data is None:
            if not had_yaml_issues:
                self.report((), "an empty file", TOP_EXPECTED)
            return None
        if not isinstance(data, dict):
            self.report((), describe(data), TOP_EXPECTED)
            return None
        for key in data:
            if key not in TOP_KEYS:
                self.report((key,), *unknown_key(key, TOP_KEYS), where="key")
        raw_gateway = data.get("gateway")
        gateway = self.validate(
            GatewaySection, {} if raw_gateway is None else raw_gateway, ("gateway",)
        )
        devices: dict[str, DeviceEntry] = {}
        for section in SECTIONS:
            for name, entry in self.section(data, section).items():
                devices[name] = entry
        bridges = self.bridges(data.get("bridges"))
        shadow = self.shadow(data.get("shadow"), devices) if "shadow" in data else None
        self.one_file_each(devices, shadow)
        self.entry_references(devices)
        if self.check_adapters:
            self.write_warnings(devices)
            self.shadow_warning(shadow, devices)
            self.late_update_warnings(shadow, devices)
        if self.problems or not isinstance(gateway, GatewaySection):
            return None
        disabled = tuple(name for name, d in self.declared.items() if not d.enabled)
        return GatewayConfig(
            self.filename,
            gateway,
            devices,
            bridges,
            shadow,
            disabled=disabled,
            disabled_bridges=tuple(self.disabled_bridges),
        )

    def one_file_each(self, devices: dict[str, DeviceEntry], shadow: ShadowSection | None) -> None:
        """Each outbox and the shadow store in a file of its own: the outbox refuses a file
        with tables of something else, so one path for two would stop the gateway at start
        (or, for two outboxes, one of them: the file is locked)."""
        state = config_state_dir(self.filename)
        owners: dict[str, str] = {}
        claims: list[tuple[Path, str, str]] = []  # key path, configured, owner's name
        if shadow is not None:
            claims.append((("shadow", "path"), shadow.path, "shadow"))
        for name, entry in devices.items():
            outbox = getattr(entry.config, "outbox", None)
            path = getattr(outbox, "path", None)
            if getattr(outbox, "enabled", False) and isinstance(path, str):
                claims.append(((entry.section, name, "outbox", "path"), path, name))
        for where, configured, name in claims:
            file = os.path.abspath(state_path(configured, name, state))
            key = os.path.normcase(file)
            if key in owners:
                self.report(
                    where,
                    f"{configured!r}{'' if file == configured else f' ({file})'}, the file of"
                    f" {owners[key]} too",
                    "a file of its own for each outbox and for the shadow store",
                )
            else:
                owners[key] = ".".join(map(str, where))

    def entry_references(self, devices: dict[str, DeviceEntry]) -> None:
        """Settings that name other entries (a Modbus server's ``passthrough`` devices): the
        model's ``check_references(configs)`` says what is wrong, given every enabled entry's
        config by name."""
        configs = {name: entry.config for name, entry in devices.items()}
        for name, entry in devices.items():
            check = getattr(entry.config, "check_references", None)
            if not callable(check):
                continue
            try:
                problems = list(check(configs))
            except Exception as exc:  # a plugin's own code: reported, never a traceback
                self.report(
                    (entry.section, name),
                    f"an error in {type(entry.config).__name__}.check_references(): {exc!r}",
                    "a config its protocol plugin can check (report this to its authors)",
                )
                continue
            for problem in problems:
                self.add(Finding.of(problem, (entry.section, name)))

    # -- shadow -------------------------------------------------------------------------------

    def shadow(self, raw: Any, devices: dict[str, DeviceEntry]) -> ShadowSection | None:
        """The ``shadow:`` section; its MQTT endpoint also gets the request subscriptions."""
        data = {} if raw is None else raw
        section = self.validate(ShadowSection, data, ("shadow",))
        got = dict(section) if section is not None else _valid_fields(ShadowSection, data)
        for i, name in enumerate(got.get("devices") or []):
            if name not in self.declared:
                self.report(
                    ("shadow", "devices", i),
                    repr(name),
                    choices(name, list(self.declared), "a device name"),
                )
        mqtt = got.get("mqtt")
        if isinstance(mqtt, ShadowMqtt):
            self.shadow_endpoint(mqtt, devices)
        if not isinstance(section, ShadowSection):
            return None
        update: dict[str, Any] = {"path": self.local(section.path)}
        if section.devices is not None:  # a disabled device has no shadow while it is off
            off = {name for name, d in self.declared.items() if not d.enabled}
            update["devices"] = [name for name in section.devices if name not in off]
        return section.model_copy(update=update)

    def shadow_warning(self, shadow: ShadowSection | None, devices: dict[str, DeviceEntry]) -> None:
        """``gateway validate``: who may write through the shadow's MQTT update topic
        (`ShadowSection.update_warning`; the shadow service logs it at start). Its devices are
        the listed ones, or every device with points; a point declared writable counts, one
        whose access is learnt at run time does not."""
        if shadow is None or shadow.mqtt is None or shadow.mqtt.endpoint not in devices:
            return
        listed = shadow.devices
        shadowed = list(devices) if listed is None else [n for n in listed if n in devices]
        writable = {
            (name, point.name)
            for name in shadowed
            for point in self.points_of((name,)) or []
            if point.writable
        }
        text = shadow.update_warning(writable, devices[shadow.mqtt.endpoint].config)
        if text is not None:
            self.warn(("shadow", "mqtt"), text)

    def late_update_warnings(
        self, shadow: ShadowSection | None, devices: dict[str, DeviceEntry]
    ) -> None:
        """``gateway validate``: the late-update guard's settings
        (`gateway.shadow.freshness.guard_warnings`; the shadow service logs them at start)."""
        if shadow is None or shadow.mqtt is None or shadow.mqtt.endpoint not in devices:
            return
        from gateway.shadow.freshness import guard_warnings

        for key, text in guard_warnings(shadow.mqtt, devices[shadow.mqtt.endpoint].config):
            self.warn(("shadow", "mqtt", key) if key else ("shadow", "mqtt"), text)

    def shadow_endpoint(self, mqtt: ShadowMqtt, devices: dict[str, DeviceEntry]) -> None:
        """The shadow's MQTT endpoint must be an MQTT client; it subscribes to the requests."""
        where: Path = ("shadow", "mqtt", "endpoint")
        entry = devices.get(mqtt.endpoint)
        if mqtt.endpoint not in self.declared:
            self.report(
                where,
                repr(mqtt.endpoint),
                choices(mqtt.endpoint, list(self.declared), "an MQTT endpoint"),
            )
        elif not self.declared[mqtt.endpoint].enabled:
            self.report(
                where, self.disabled_found(mqtt.endpoint), "an enabled MQTT client endpoint"
            )
        elif entry is not None and (entry.protocol != "mqtt" or entry.role != "client"):
            self.report(
                where,
                f"{mqtt.endpoint!r}, a {entry.protocol} {entry.role}",
                "an MQTT client endpoint",
            )
        elif entry is not None:
            from gateway.shadow import request_filters

            config = entry.config.model_dump()
            have = {s["topic"] for s in config.get("subscriptions", [])}
            config["subscriptions"] = list(config.get("subscriptions", [])) + [
                {"topic": t, "qos": 1, "payload": "text"}
                for t in request_filters(mqtt.prefix)
                if t not in have
            ]
            updated = self.validate(type(entry.config), config, where)
            if updated is not None:
                devices[mqtt.endpoint] = DeviceEntry(
                    entry.name, entry.protocol, entry.role, entry.spec, updated, entry.section
                )

    # -- devices and endpoints ----------------------------------------------------------------

    def section(self, data: dict[str, Any], section: str) -> dict[str, DeviceEntry]:
        raw = data.get(section)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.report(
                (section,),
                describe(raw),
                "a mapping of names to entries like {protocol: modbus, host: ...}",
            )
            return {}
        entries: dict[str, DeviceEntry] = {}
        for name, body in raw.items():
            path: Path = (section, name)
            declared = _Declared(section)
            if name in self.declared:
                other = self.declared[name].section
                first = self.marks.key((other, name)).line
                self.report(
                    path,
                    f"the name {name!r} again (first in {other} at line {first})",
                    "names used once across devices and endpoints",
                    "key",
                )
                self.entry(path, body, declared)  # checked all the same, then left out
                continue
            self.declared[name] = declared
            if not _NAME.match(name):
                self.report(
                    path,
                    f"the name {name!r}",
                    "a name of letters, digits, '_', '-' and '.' (it is used in topics)",
                    "key",
                )
            declared.entry = self.entry(path, body, declared)
            if declared.entry is not None and declared.enabled:
                entries[name] = declared.entry
        return entries

    def entry(self, path: Path, body: Any, declared: _Declared) -> DeviceEntry | None:
        """One device or endpoint; what is learnt of it (even when invalid) goes to
        ``declared``, for the bridges' checks."""
        section, name = str(path[0]), str(path[1])
        installed = ", ".join(sorted(self.registry.specs)) or "none installed"
        if not isinstance(body, dict):
            self.report(
                path,
                describe(body),
                f"a mapping with protocol ({installed}) and its settings",
                "key" if body is None else "value",
            )
            return None
        if "enabled" in body:
            switch = self.validate(EntryKeys, {"enabled": body["enabled"]}, path)
            declared.enabled = switch is None or bool(getattr(switch, "enabled", True))
        protocol = body.get("protocol")
        if "protocol" not in body:
            self.report(path, "no 'protocol' key", f"key 'protocol' (one of: {installed})", "key")
            return None
        if not isinstance(protocol, str):
            self.report((*path, "protocol"), describe(protocol), f"one of: {installed}")
            return None
        spec = self.registry.specs.get(protocol)
        if spec is None:
            if protocol in self.registry.errors:
                found = f"{protocol!r}, whose plugin did not load"
                expected = self.registry.errors[protocol]
            else:
                found = f"unknown protocol {protocol!r}"
                expected = choices(protocol, sorted(self.registry.specs), "an installed protocol")
            if not declared.enabled:  # switched off: what can be checked without it was
                # A plugin that did not load has a warning of its own (all_warnings).
                hint = "" if protocol in self.registry.errors else f" (expected {expected})"
                self.warn(
                    (*path, "protocol"),
                    f"{found}{hint}; the entry is disabled (enabled: false), so it is not "
                    "started, and its settings are not checked until its protocol is installed",
                )
            else:
                self.quoted.add(protocol)
                self.report((*path, "protocol"), found, expected)
            return None
        declared.spec = spec
        role = body.get("role", spec.roles[0] if spec.roles else "")
        role_ok = isinstance(role, str) and role in spec.roles
        if not role_ok:
            self.report(
                (*path, "role"),
                show(role),
                f"one of: {', '.join(spec.roles)} ({protocol} has no other role)",
            )
            if spec.role_models:  # which role's settings were meant is unknown: no guessing
                return None
        if role_ok:
            declared.role = str(role)
            if declared.enabled and self.check_adapters:
                self.adapter(path, spec, str(role))
        model = spec.model_for(str(role)) if role_ok else spec.config_model
        settings = {
            k: v
            for k, v in body.items()
            if k not in ENTRY_KEYS or (k != "role" and k in model.model_fields)
        }
        config = self.validate(model, settings, path, ENTRY_KEYS)
        got = dict(config) if config is not None else _valid_fields(model, settings, ["optimizer"])
        optimizer = self.optimizer_files(path, got.get("optimizer"))
        if config is None or not self.checked(config, path) or not role_ok:
            return None
        if optimizer is not None:
            config = config.model_copy(update={"optimizer": optimizer})
        config = with_local_paths(config, self.local, self.state_left_behind(path, name))
        if self.check_adapters and declared.enabled:
            self.run_warnings(path, config)
        return DeviceEntry(name, protocol, str(role), spec, config, section)

    def adapter(self, path: Path, spec: ProtocolSpec, role: str) -> None:
        """What ``gateway run`` would refuse about the adapter of ``spec`` in ``role``, said
        once per protocol and role: a broken plugin is a problem, a library that is not
        installed a warning (the file is right; the box lacks a package)."""
        if (spec.name, role) in self.adapters_checked:
            return
        self.adapters_checked.add((spec.name, role))
        try:
            spec.check_adapter(role, load=not spec.builtin)
        except PluginError as exc:
            where = (*path, "protocol")
            if exc.missing is not None:
                self.warn(
                    where,
                    f"{exc} (gateway run will not start while an enabled entry needs it; "
                    "enabled: false on this entry runs the rest)",
                )
            else:
                self.report(
                    where,
                    str(exc),
                    f"a plugin whose adapter can be imported (fix or reinstall "
                    f"{spec.dist or 'the plugin'}, or set enabled: false on this entry)",
                )

    def run_warnings(self, path: Path, config: BaseModel) -> None:
        """``gateway validate``: what ``gateway run`` would refuse on this machine only (a TLS
        file that is not here), from the model's ``run_warnings()`` (`Strict.run_warnings`)."""
        hook = getattr(config, "run_warnings", None)
        if not callable(hook):
            return
        try:
            found = list(hook())
        except Exception:  # a plugin's own code: a warning is not worth a crash
            return
        for where, text in found:
            self.warn((*path, *where), text)

    def disabled_found(self, name: str) -> str:
        """What was found, for a reference to the disabled entry ``name``."""
        declared = self.declared[name]
        line = self.marks.value((declared.section, name, "enabled")).line
        return f"{name!r}, which is disabled (enabled: false at line {line})"

    def optimizer_files(self, path: Path, options: Any) -> Any:
        """An uplink optimizer ``model:`` given as a path: relative to the config file, and a
        file with its .json beside it now, not a warning and a fallback at run time."""
        from gateway.optimizer.config import OptimizerConfig

        if not isinstance(options, OptimizerConfig) or options.model in MODEL_WORDS:
            return options
        model = self.local(options.model)
        meta = os.path.splitext(model)[0] + ".json"
        missing = model if not os.path.isfile(model) else meta if not os.path.isfile(meta) else None
        if missing is not None:
            self.report(
                (*path, "optimizer", "model"),
                f"{options.model!r}, but there is no file {missing}",
                "builtin, heuristic, off or the path of a policy .onnx with its .json beside it",
            )
            return options
        return options.model_copy(update={"model": model})

    def checked(self, config: BaseModel, path: Path) -> bool:
        """Run the model's ``check()`` (if it has one); True when it found nothing."""
        check = getattr(config, "check", None)
        if not callable(check):
            return True
        try:
            problems = list(check())
        except Exception as exc:
            self.report(
                path,
                f"an error in {type(config).__name__}.check(): {exc!r}",
                "a config its protocol plugin can check (report this to its authors)",
            )
            return False
        for problem in problems:
            self.add(Finding.of(problem, path))
        return not problems

    # -- bridges --------------------------------------------------------------------------------

    def bridges(self, raw: Any) -> list[BridgeConfig]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.report(
                ("bridges",),
                describe(raw),
                "a list of bridges like - {name: ..., from: ..., to: ...}",
            )
            return []
        out: list[BridgeConfig] = []
        names: dict[str, int] = {}
        for i, body in enumerate(raw):
            bridge = self.bridge(i, body, names)
            if bridge is not None:
                out.append(bridge)
        return out

    def bridge(self, i: int, body: Any, names: dict[str, int]) -> BridgeConfig | None:
        path: Path = ("bridges", i)
        if not isinstance(body, dict):
            self.report(path, describe(body), "a mapping with name, from, to and route options")
            return None
        own = {k: v for k, v in body.items() if k in BRIDGE_KEYS}
        options = {k: v for k, v in body.items() if k not in BRIDGE_KEYS}
        targets = self.targets()
        hint = f" (one of: {listing(targets)})" if targets else ""
        keys = self.validate(
            BridgeKeys,
            own,
            path,
            hints={
                "to": f"key 'to' naming the device or endpoint to send to{hint}",
                "from": "key 'from' naming the device(s) whose points to send",
            },
        )
        # A wrong key must not hide the problems of the others: the cross-checks run on every
        # key that is valid on its own.
        got = dict(keys) if keys is not None else _valid_fields(BridgeKeys, own)
        route = self.route(path, own.get("to"), options)
        ok = route is not None
        name = got.get("name")
        if name in names:
            first = names[name]
            line = self.marks.value(("bridges", first, "name")).line
            self.report(
                (*path, "name"),
                f"{name!r} again",
                f"a bridge name not already used (bridges[{first}] at line {line})",
            )
            ok = False
        if name is not None:
            names.setdefault(name, i)
        # The bridge as messages name it while it is enabled; None: it is disabled. A bridge
        # from or to a disabled entry must be disabled too: said at each such name.
        live = None if got.get("enabled", True) is False else (name or f"bridges[{i}]")
        if live is not None:
            ok = self.enabled_ends(path, got, live) and ok
        sources = self.sources(path, got["from_"]) if "from_" in got else None
        if sources is not None and got.get("to") in sources:
            self.report(
                (*path, "to"),
                f"{got['to']!r}, which is also a source of the bridge",
                "a target other than the sources",
            )
            ok = False
        raw_points = got.get("points")
        points = (raw_points,) if isinstance(raw_points, str) else tuple(raw_points or ())
        units = got.get("units", {})
        if sources is not None and "points" in got:
            ok = self.selection(path, sources, points, units) and ok
        else:
            ok = self.units(path, units, []) and ok
        ok = self.computed(path, sources, got.get("computed", [])) and ok
        if sources is not None:
            ok = self.anomaly_points(path, sources, got) and ok
            ok = self.one_point_per_name(path, sources, got.get("translate")) and ok
            ok = self.map_keys(path, sources, got) and ok
            ok = self.aggregated(path, sources, got) and ok
        if live and sources and route is not None:
            ok = self.served(path, sources, got, route) and ok
        translate = self.translate_files(path, got.get("translate"))
        anomaly = self.anomaly_files(path, got.get("anomaly"))
        if live and sources and route is not None and getattr(route, "writable", True) is True:
            self.note_writable(str(got.get("to")), sources, points or ("*",))
        if live is None:  # checked all the same, then left out
            if isinstance(name, str):
                self.disabled_bridges.append(name)
            return None
        if not isinstance(keys, BridgeKeys) or sources is None or not ok:
            return None
        if (keys.translate and not translate) or (keys.anomaly and not anomaly):
            return None
        return BridgeConfig(
            keys.name,
            sources,
            points,
            keys.to,
            dict(keys.units),
            route,
            translate,
            anomaly=anomaly,
            computed=tuple(keys.computed),
            aggregate=keys.aggregate,
            heartbeat=keys.heartbeat,
        )

    def capable(self, name: str, capability: str) -> bool:
        """Whether the protocol of entry ``name`` lists ``capability`` in its spec."""
        declared = self.declared.get(name)
        spec = declared.spec if declared is not None else None
        return spec is not None and capability in spec.capabilities

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a server target: it serves the points its bridges declare at
        start (an address space, resources, a register map), and nothing learnt later."""
        declared = self.declared.get(name)
        return (
            declared is not None
            and declared.route_model is not None
            and self.capable(name, "serve")
        )

    def served(
        self,
        path: Path,
        sources: tuple[str, ...],
        got: dict[str, Any],
        route: BaseModel,
    ) -> bool:
        """What a server target would refuse to serve of this enabled bridge: points its
        sources name only at run time (MQTT ``points: keys``), and the route model's own
        ``check_carried(target_config, points, shared)`` (the target's start-up check, given
        the points the bridge carries, None when unknown; ``shared`` spans its bridges)."""
        target = str(got.get("to"))
        if not self.serves(target):
            return True
        ok = True
        # "learns": the target takes points named at run time (a Sparkplug node births them)
        late = [] if self.capable(target, "learns") else [s for s in sources if self.at_run_time(s)]
        declared = self.declared_points(sources)
        if late and declared is not None:
            hows = dict.fromkeys(self.how_at_run_time(s) for s in late)
            runtime = f"{listing([repr(s) for s in late])}, {' and '.join(hows)},"
            why = f"{target!r} serves only points declared at start (an MQTT target carries keys)"
            selection = got.get("points", "*")
            names = [selection] if isinstance(selection, str) else selection
            # points named one by one, none a glob: a learnt point is never among them
            chosen = isinstance(names, list) and not any(
                not isinstance(n, str) or is_pattern(n) for n in names
            )
            if declared and not chosen:
                self.warn(
                    (*path, "from"),
                    f"{runtime} name points at run time: {why}, so those are not served",
                )
            elif not declared:
                self.report(
                    (*path, "from"),
                    f"{runtime} name points only at run time, and no points: declared",
                    f"a source with points: declared ({why})",
                )
                ok = False
        entry = self.declared[target].entry
        check = getattr(route, "check_carried", None)
        if entry is None or not callable(check):
            return ok
        carried = self.carried(sources, got)
        try:
            problems = list(check(entry.config, carried, self.served_state.setdefault(target, {})))
        except Exception as exc:  # a plugin's own code: reported, never a traceback
            self.report(
                (*path, "to"),
                f"an error in {type(route).__name__}.check_carried(): {exc!r}",
                "a config its protocol plugin can check (report this to its authors)",
            )
            return False
        for problem in problems:
            self.add(Finding.of(problem, path))
        return ok and not problems

    def aggregated(self, path: Path, sources: tuple[str, ...], got: dict[str, Any]) -> bool:
        """``aggregate: points`` globs that match no point the bridge carries (after translate)
        and summaries named like a point the bridge carries, where those are known."""
        options = got.get("aggregate")
        carried = self.carried(sources, got, summarised=False)
        if not isinstance(options, AggregateOptions) or not carried:
            return True
        names = list(dict.fromkeys(p.name for specs in carried.values() for p in specs))
        if not names:
            return True  # the bridge carries nothing: its own globs say so
        whose = f"bridge {got.get('name') or f'bridges[{path[-1]}]'!r} carries"
        ok = self.globs((*path, "aggregate", "points"), options.points, names, whose)
        chosen = Globs(options.points)
        for source, specs in carried.items():
            have = {p.name for p in specs}
            for spec in specs:
                for summary in summary_specs(spec, options.stats, options.every, chosen):
                    if summary is not spec and summary.name in have:
                        self.report(
                            (*path, "aggregate", "stats"),
                            f"{summary.name!r}, a summary of {spec.name!r} and a point of "
                            f"{source} too",
                            "statistics whose <point>.<stat> names no point the bridge carries"
                            " (or aggregate: points leaving one of them out)",
                        )
                        return False
        return ok

    def carried(
        self, sources: tuple[str, ...], got: dict[str, Any], *, summarised: bool = True
    ) -> dict[str, list[PointSpec]] | None:
        """The points the bridge hands its target at start, per source, as `Bridge.points`
        makes them (selected, translated, computed ones added, summaries instead of the points
        they summarise unless not ``summarised``); None when only known later."""
        translate = got.get("translate")
        if isinstance(translate, TranslateConfig) and translate.mode == "auto":
            return None
        raw = got.get("points") or ("*",)
        globs = (raw,) if isinstance(raw, str) else tuple(raw)
        computed = [c for c in got.get("computed", []) if isinstance(c, ComputedPoint)]
        out: dict[str, list[PointSpec]] = {}
        for source in sources:
            known = self.declared_points((source,))
            if known is None:
                return None
            specs: list[PointSpec] = []
            selects = Globs(globs)
            for p in known:
                name: str | None = p.name
                if p.name not in selects:
                    continue
                if isinstance(translate, TranslateConfig):
                    name = translate.map.get(p.name)
                if name is not None:
                    specs.append(PointSpec(f"{source}/{name}", name, p.datatype or "", p.unit))
            out[source] = specs + [c.spec(source) for c in computed]
        aggregate = got.get("aggregate")
        if summarised and isinstance(aggregate, AggregateOptions):
            chosen = Globs(aggregate.points)
            out = {
                source: [
                    summary
                    for p in specs
                    for summary in summary_specs(p, aggregate.stats, aggregate.every, chosen)
                ]
                for source, specs in out.items()
            }
        if isinstance(got.get("anomaly"), AnomalyOptions):
            # a server target serves the alarm as two points of each device (its map may
            # place them): `gateway.anomaly.verdict`
            out = add_alarm_points(out)[0]
        return out

    def note_writable(self, target: str, sources: tuple[str, ...], globs: tuple[str, ...]) -> None:
        """Remember the points declared writable (access w or rw) that a bridge to ``target``
        selects. A point whose access is learnt at run time is not counted here."""
        selects = Globs(globs)
        for source in sources:
            for point in self.points_of((source,)) or []:
                if point.writable and point.name in selects:
                    self.writable.setdefault(target, set()).add((source, point.name))

    def write_warnings(self, devices: dict[str, DeviceEntry]) -> None:
        """``gateway validate``: what a target says at start about the points anyone may write
        through it (a CoAP server without OSCORE, a Modbus TCP server): its config's
        ``write_warning(n)``, if it has one, gives the line. ``gateway run`` leaves it to the
        adapter, which logs it once."""
        for name, points in self.writable.items():
            entry = devices.get(name)
            hook = getattr(entry.config, "write_warning", None) if entry is not None else None
            if entry is None or not callable(hook):
                continue
            try:
                text = hook(len(points))
            except Exception:  # a plugin's own code: a warning is not worth a crash
                continue
            if isinstance(text, str):
                self.warn((entry.section, name), text)

    def local(self, name: str) -> str:
        """A path from the config (`common.config_relative`)."""
        return config_relative(self.filename, name)

    def state_left_behind(self, path: Path, entry: str) -> Callable[[Path, str], None]:
        """`with_local_paths`'s ``relative_state`` for entry ``entry``: a state path that
        `common.left_behind` finds is a problem at its key."""

        def check(where: Path, value: str) -> None:
            if moved := left_behind(self.filename, value, entry):
                self.report((*path, *where), *left_behind_text(value, *moved))

        return check

    def translate_files(
        self, path: Path, options: TranslateConfig | None
    ) -> TranslateConfig | None:
        """``examples:`` and ``model:`` found next to the config, and the examples readable,
        now rather than at the first new key."""
        if options is None:
            return options
        update: dict[str, Any] = {}
        if options.model != "builtin":
            model = self.local(options.model)
            found = os.path.isfile(model) or os.path.isfile(os.path.join(model, MODEL_FILE))
            if not found:
                self.report(
                    (*path, "translate", "model"),
                    f"{options.model!r}, which is neither a model file nor a folder with"
                    f" {MODEL_FILE} ({model})",
                    "builtin, a translator .onnx file or the folder `gateway translator train"
                    " --out` wrote",
                )
                return None
            update["model"] = model
        if options.examples is not None:
            from gateway.translator.pointlist import InputError, read_labeled_known

            examples = self.local(options.examples)
            try:
                labeled = read_labeled_known(examples)
            except InputError as exc:
                self.report((*path, "translate", "examples"), str(exc), "a CSV of name,brick_class")
                return None
            if note := labeled.note(examples):  # as classify --examples: left out, said
                self.warn((*path, "translate", "examples"), note)
            update["examples"] = examples
        return options.model_copy(update=update) if update else options

    def anomaly_files(self, path: Path, options: AnomalyOptions | None) -> AnomalyOptions | None:
        """A model given as a path must be a file (relative to the config file)."""
        if options is None or options.model in ("student", "teacher"):
            return options
        model = self.local(options.model)
        if not os.path.isfile(model):
            self.report(
                (*path, "anomaly", "model"),
                f"{options.model!r}, which is not a file ({model})",
                "'student', 'teacher' or the path of an .onnx file",
            )
            return None
        return options.model_copy(update={"model": model})

    def computed(
        self, path: Path, sources: tuple[str, ...] | None, items: list[ComputedPoint]
    ) -> bool:
        """Computed names used twice or taken by a point; inputs that no source has (when the
        sources are known)."""
        known = None if sources is None else self.points_of(sources)
        names = None if known is None else {p.name for p in known}
        owners = ", ".join(sources or ())
        ok = True
        seen: set[str] = set()
        for j, item in enumerate(items):
            where = (*path, "computed", j)
            if item.name in seen or (names is not None and item.name in names):
                self.report(
                    (*where, "name"),
                    f"{item.name!r}, already a point of the bridge",
                    "a name no source point and no other computed point has",
                )
                ok = False
            seen.add(item.name)
            missing = [] if names is None else sorted(compile_expression(item.expr).points - names)
            if missing:
                self.report(
                    (*where, "expr"),
                    f"{item.expr!r}, which names {', '.join(missing)}",
                    f"names of points of {owners}: {listing(sorted(names or ()))}",
                )
                ok = False
        for where, text in unknown_units(items, key="computed"):  # a typo: "kw" for "kW"
            self.warn((*path, *where), text)
        return ok

    def targets(self) -> list[str]:
        return [n for n, d in self.declared.items() if d.route_model is not None]

    def enabled_ends(self, path: Path, got: dict[str, Any], bridge: str) -> bool:
        """False, and reported at each, when the enabled ``bridge`` names disabled entries."""
        ends = [*_from_items(path, got.get("from_", [])), ((*path, "to"), got.get("to"))]
        ok = True
        for where, name in ends:
            declared = self.declared.get(name) if isinstance(name, str) else None
            if declared is not None and not declared.enabled:
                self.report(
                    where,
                    self.disabled_found(str(name)),
                    f"an enabled device or endpoint, or enabled: false on bridge {bridge!r} too",
                )
                ok = False
        return ok

    def sources(self, path: Path, raw: str | list[str]) -> tuple[str, ...] | None:
        items = _from_items(path, raw)
        if not items:
            self.report((*path, "from"), "an empty list", "at least one device or endpoint name")
            return None
        ok = True
        for where, name in items:
            if name not in self.declared:
                self.report(
                    where,
                    repr(name),
                    choices(name, list(self.declared), "a device or endpoint name"),
                )
                ok = False
            elif self.serves(name) and not self.has_points(name):
                declared = self.declared[name]
                what = f"{declared.spec.name if declared.spec else ''} {declared.role}"
                self.report(
                    where,
                    f"{name!r}, a {what} {declared.section[:-1]}, which carries no points",
                    "a device or endpoint whose points a bridge carries (a server is a bridge"
                    " target: it serves points, it reads none)",
                )
                ok = False
        return tuple(name for _, name in items) if ok else None

    def has_points(self, name: str) -> bool:
        """Whether the config model of ``name``'s role has ``points`` (it can be a source)."""
        declared = self.declared[name]
        spec = declared.spec
        return spec is not None and "points" in spec.model_for(declared.role).model_fields

    def route(self, path: Path, target: Any, options: dict[str, Any]) -> BaseModel | None:
        """Validate the target options of a bridge with its target protocol's route model."""
        if not isinstance(target, str):
            return None  # no or a bad 'to': reported by BridgeKeys
        declared = self.declared.get(target)
        if declared is None:
            self.report(
                (*path, "to"),
                repr(target),
                choices(target, list(self.declared), "a device or endpoint name"),
            )
            return None
        spec = declared.spec
        if spec is None:
            return None  # its entry is invalid; reported there
        route_model = declared.route_model
        if route_model is None:
            can = sorted(
                f"{n} ({role})" if role else n
                for n, s in self.registry.specs.items()
                for role in ("", *s.route_models)
                if (s.route_models.get(role) if role else s.route_model) is not None
            )
            yes = f"{', '.join(can)} can be a bridge target" if can else "no protocol can"
            what = f"{spec.name} {declared.role}" if spec.route_models else spec.name
            self.report(
                (*path, "to"),
                f"{target!r}, a {what} {declared.section[:-1]}",
                f"a target whose protocol can receive ({yes}; {what} cannot yet)",
            )
            return None
        route = self.validate(route_model, options, path, BRIDGE_KEYS)
        # what the target entry refuses of a route that is valid on its own (MQTT user
        # properties on a 3.1.1 endpoint)
        check = getattr(route, "check_target", None)
        if callable(check) and declared.entry is not None:
            for problem in check(declared.entry.config):
                self.add(Finding.of(problem, path))
        return route

    def selection(
        self,
        path: Path,
        sources: tuple[str, ...],
        points: tuple[str, ...],
        units: dict[str, str],
    ) -> bool:
        """Point globs that select nothing, and units that cannot apply to what they select."""
        known = self.points_of(sources)
        if known is None:  # points named at run time (MQTT points: keys): unknowable
            return self.units(path, units, [])
        names = list(dict.fromkeys([*(p.name for p in known), *self.event_points(sources)]))
        unnamed = [s for s in sources if self.unnamed_points(s)]
        if not names and unnamed:
            self.report(
                (*path, "from"),
                f"{', '.join(unnamed)}, whose points are not models with name and unit",
                "a source whose config's points are objects with name and unit attributes"
                " (pydantic models, not dicts: see docs/plugins.md)",
            )
            return self.units(path, units, []) and False
        if not names:
            self.report(
                (*path, "from"),
                f"{', '.join(sources)}, which {'declare' if len(sources) > 1 else 'declares'}"
                " no points",
                "a source with points: (a bridge carries a device's points; an MQTT endpoint's"
                " subscriptions: go on the bus as mqtt/<endpoint>/<topic>, not to bridges: give"
                " it points: with a topic, and a field for a JSON key, or a subscription with"
                " points: keys, whose JSON keys become points at run time)",
            )
            return self.units(path, units, []) and False
        ok = self.globs((*path, "points"), points, names, f"of {', '.join(sources)}")
        selects = Globs(points)
        selected = [p for p in known if p.name in selects]
        chosen = list(dict.fromkeys(p.name for p in selected))
        unused = set(Globs(units).unmatched(chosen))
        for glob in units:
            if glob in unused:
                self.report(
                    (*path, "units", glob),
                    f"{glob!r}, which matches no point the bridge selects",
                    f"a glob matching some of: {listing(chosen)}",
                    "key",
                )
                ok = False
        return self.units(path, units, selected) and ok

    def globs(self, path: Path, globs: Collection[str], names: list[str], whose: str) -> bool:
        """False, and reported at each, when a glob of ``globs`` matches none of ``names``."""
        ok = True
        unmatched = set(Globs(globs).unmatched(names))
        for j, glob in enumerate(globs):
            if glob in unmatched:
                self.report(
                    (*path, j),
                    f"{glob!r}, which matches no point {whose}",
                    f"a glob matching some of: {listing(names)}",
                )
                ok = False
        return ok

    def untranslated(self, sources: tuple[str, ...], got: dict[str, Any]) -> list[str] | None:
        """The names of the points a bridge carries before translate: its sources' points its
        globs select, then its computed points; None when a source names points at run time."""
        known = self.points_of(sources)
        if known is None:
            return None
        raw = got.get("points") or ("*",)
        selects = (raw,) if isinstance(raw, str) else tuple(raw)
        chosen = Globs(selects)
        names = [n for n in dict.fromkeys(p.name for p in known) if n in chosen]
        return names + [c.name for c in got.get("computed", []) if isinstance(c, ComputedPoint)]

    def anomaly_points(self, path: Path, sources: tuple[str, ...], got: dict[str, Any]) -> bool:
        """``anomaly: points/exclude`` globs that match no point the bridge scores (after the
        bridge's globs and computed points, before translate: the source's own names), where
        those are known."""
        options = got.get("anomaly")
        names = self.untranslated(sources, got)
        if not isinstance(options, AnomalyOptions) or names is None:
            return True
        if not names:
            return True  # the bridge carries nothing: its own globs say so
        whose = f"bridge {got.get('name') or f'bridges[{path[-1]}]'!r} carries"
        where = (*path, "anomaly")
        ok = self.globs((*where, "points"), options.points, names, whose)
        return self.globs((*where, "exclude"), options.exclude, names, whose) and ok

    def one_point_per_name(self, path: Path, sources: tuple[str, ...], translate: Any) -> bool:
        """Two points of one source mapped to one name: a write from the target to that name
        could not tell which to write (points of different sources may share a name)."""
        if not isinstance(translate, TranslateConfig):
            return True
        for source in sources:
            known = self.declared_points((source,))
            mapped: dict[str, list[str]] = {}
            for p in known or []:
                if p.name in translate.map:
                    mapped.setdefault(translate.map[p.name], []).append(p.name)
            for name, points in mapped.items():
                if len(points) > 1:
                    self.report(
                        (*path, "translate", "map"),
                        f"{listing(points)} of {source} all mapped to {name!r}",
                        "one point of a device per target name",
                    )
                    return False
        return True

    def map_keys(self, path: Path, sources: tuple[str, ...], got: dict[str, Any]) -> bool:
        """``translate: map`` keys that name no point the bridge carries (its sources' points
        its globs select, and its computed points), where those are known: a misspelt key
        forwards nothing under that name, and in ``map`` mode drops the point it meant."""
        translate, names = got.get("translate"), self.untranslated(sources, got)
        if not isinstance(translate, TranslateConfig) or not names:
            return True  # unknown until run time, or none: the points' own checks say so
        ok = True
        for key in translate.map:
            if key not in names:
                self.report(
                    (*path, "translate", "map", key),
                    f"{key!r}, which is no point the bridge carries",
                    choices(key, names, "a point of the bridge's sources"),
                    where="key",
                )
                ok = False
        return ok

    def unnamed_points(self, source: str) -> bool:
        """Whether the config of ``source`` lists points without a ``name`` attribute (a
        plugin's points as plain dicts): `points_of` cannot see them."""
        entry = self.declared[source].entry
        points = getattr(entry.config, "points", None) if entry is not None else None
        return isinstance(points, list | tuple) and any(
            not isinstance(getattr(p, "name", None), str) for p in points
        )

    def event_points(self, sources: tuple[str, ...]) -> list[str]:
        """The names of the samples the events of ``sources`` carry (an OPC UA client's
        ``events:``): ``points:`` may select them, nothing else takes them for points."""
        out: list[str] = []
        for source in sources:
            entry = self.declared[source].entry
            if entry is not None:
                out.extend(event_points(entry.config))
        return out

    def points_of(self, sources: tuple[str, ...]) -> list[_Point] | None:
        """The points of all ``sources``, or None if one of them has no point list or names
        points only at run time (``points_at_run_time``: an MQTT subscription with ``points:
        keys``, a Sparkplug host that learns from births). An MQTT endpoint's other
        ``subscriptions`` do not count: they go on the bus as ``mqtt/<name>/<topic>``, which
        bridges do not carry."""
        if any(self.at_run_time(s) for s in sources):
            return None
        return self.declared_points(sources)

    def how_at_run_time(self, source: str) -> str:
        """What makes ``source`` name points at run time, in its config's words."""
        entry = self.declared[source].entry
        how = getattr(entry.config, "RUN_TIME_POINTS", None) if entry is not None else None
        return how if isinstance(how, str) else "whose points learnt from the data"

    def at_run_time(self, source: str) -> bool:
        """Whether ``source`` names points only when data arrives (MQTT ``points: keys``, a
        Sparkplug host's ``learn``)."""
        entry = self.declared[source].entry
        return entry is not None and getattr(entry.config, "points_at_run_time", False) is True

    def declared_points(self, sources: tuple[str, ...]) -> list[_Point] | None:
        """The points the config of ``sources`` declares (those named at run time left out:
        what a server target is told at start), or None if one has no point list."""
        out: list[_Point] = []
        for source in sources:
            entry = self.declared[source].entry
            points = getattr(entry.config, "points", None) if entry is not None else None
            if entry is None or not isinstance(points, list | tuple):
                return None
            for i, p in enumerate(points):
                name, unit = getattr(p, "name", None), getattr(p, "unit", None)
                if isinstance(name, str):
                    where = (entry.section, source, "points", i, "unit")
                    access = getattr(p, "access", None)
                    writable = getattr(access, "writable", False) is True
                    unit = unit if isinstance(unit, str) else None
                    out.append(_Point(name, unit, where, writable, _datatype(p)))
        return out

    def units(self, path: Path, units: dict[str, str], selected: list[_Point]) -> bool:
        if not units:
            return True
        from gateway.units import compatible, validate_unit

        ok = True
        valid: set[str] = set()
        for glob, unit in units.items():
            try:
                validate_unit(unit)
            except ValueError as exc:
                self.report((*path, "units", glob), repr(unit), f"a known unit ({exc})")
                ok = False
            else:
                valid.add(glob)
        # The first glob matching a point decides its unit (as the bridge applies them).
        wrong: dict[str, list[str]] = {}
        unconvertible: dict[str, list[str]] = {}
        unitless: dict[str, list[str]] = {}
        converts: set[str] = set()  # globs that match a point they convert
        for point in selected:
            rule = next((g for g in units if fnmatch.fnmatchcase(point.name, g)), None)
            if rule is None or rule not in valid:
                continue
            if point.datatype == "string":
                unconvertible.setdefault(rule, []).append(f"{point.name} is a string")
                continue
            if point.unit is None:
                # Some readings bring their unit (SenML's u, a CoAP or OPC UA device's own):
                # converted then; said, not refused.
                unitless.setdefault(rule, []).append(point.name)
                continue
            converts.add(rule)
            try:
                fits = compatible(point.unit, units[rule])
            except ValueError as exc:
                self.report(
                    point.path,
                    repr(point.unit),
                    f"a known unit, to convert it to {units[rule]} ({exc})",
                )
                ok = False
                continue
            if not fits:
                wrong.setdefault(rule, []).append(f"{point.name!r} ({point.unit})")
        for glob, names in unitless.items():
            self.warn(
                (*path, "units", glob),
                f"{listing(names)} {'have' if len(names) > 1 else 'has'} no unit in the config:"
                f" converted to {units[glob]} only when {'their' if len(names) > 1 else 'its'}"
                " readings bring a unit",
            )
        for glob, reasons in unconvertible.items():
            if glob in converts:  # a wide glob (``*``): the points it converts are meant
                self.warn((*path, "units", glob), f"{listing(reasons)}: not converted")
                continue
            self.report(
                (*path, "units", glob),
                f"{units[glob]!r}, but {listing(reasons)}",
                "a glob matching only numeric points with a unit (units: converts a point's"
                " unit, it does not give one)",
            )
            ok = False
        for glob, bad in wrong.items():
            whose = "the points' units convert" if len(bad) > 1 else "the point's unit converts"
            self.report(
                (*path, "units", glob), f"{units[glob]!r} for {listing(bad)}", f"a unit {whose} to"
            )
            ok = False
        return ok


def _from_items(path: Path, raw: str | list[str]) -> list[tuple[Path, str]]:
    """The names of a bridge's ``from`` (one, or a list), each with its key path."""
    if isinstance(raw, str):
        return [((*path, "from"), raw)]
    return [((*path, "from", j), name) for j, name in enumerate(raw)]


@dataclass(frozen=True)
class _Point:
    name: str
    unit: str | None
    path: Path  # of its unit, for a unit the bridge cannot convert
    writable: bool = False  # declared access w or rw
    datatype: str | None = None  # None: learnt at run time (an OPC UA point without type)


def _datatype(point: Any) -> str | None:
    """A config point's value type as the bus carries it: ``datatype`` (MQTT), ``dtype``
    (Modbus, its default filled in) or ``type``; None when only the device will tell."""
    for attr in ("datatype", "dtype", "type"):
        value = getattr(point, attr, None)
        if isinstance(value, str):  # a StrEnum too
            return str(value)
    return None


def _without(data: Any, locations: list[tuple[Any, ...]]) -> Any:
    """``data`` (mappings and lists, as YAML gives them) with the key at the end of each
    location removed; a location's steps that are no key of the data (a union's tag, as
    pydantic adds them) are passed over. Copies what it changes."""
    for location in locations:
        data = _drop(data, location)
    return data


def _drop(node: Any, location: tuple[Any, ...]) -> Any:
    if not location:
        return node
    step, rest = location[0], location[1:]
    if isinstance(node, dict) and step in node:
        if not rest:
            return {k: v for k, v in node.items() if k != step}
        return {**node, step: _drop(node[step], rest)}
    if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
        return [*node[:step], _drop(node[step], rest), *node[step + 1 :]]
    return _drop(node, rest)  # a tag pydantic put in the location


__all__ = [
    "BRIDGE_KEYS",
    "BridgeConfig",
    "BridgeKeys",
    "DeviceEntry",
    "GatewayConfig",
    "GatewaySection",
    "ShadowHistory",
    "ShadowMqtt",
    "ShadowSection",
    "load_config",
    "load_config_text",
]
