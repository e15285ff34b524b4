"""MQTT topics and payloads <-> bus messages. Sans-IO: no sockets, no asyncio, no paho.

Publishing (``encode``) turns one bus `Message` into ``(topic, payload)`` pairs for an `MqttRoute`:

- ``value``: one publish per sample, the bare JSON value (``21.5``, ``true``, ``"on"``); a sample
  of bad quality publishes ``null``.
- ``sample``: one publish per sample,
  ``{"value":21.5,"quality":"good","ts":"2024-05-01T12:00:00.123Z","unit":"degC"}``; ``unit`` is
  left out when unknown, ``reason`` is added when quality is not good. The value is sent as it is
  whatever the quality (the quality field says how far to trust it).
- ``device``: one publish per message,
  ``{"device":"boiler","ts":"...","seq":7,"values":{"temp":21.5},"quality":{"flow":"bad"}}``;
  ``ts`` is the newest source timestamp of the samples, ``quality`` lists only points that are not
  good and is left out when all are.
- a record (``meta["record"]``: an OPC UA event) is one publish whatever the mode, one JSON
  object of its fields; see `RECORD`.

JSON is compact (``separators=(",", ":")``), UTF-8 (no ``\\uXXXX`` escapes for non-ASCII text),
floats are JSON numbers in Python's shortest round-trip form, NaN and infinities become ``null``
(JSON has no spelling for them). Timestamps are ISO 8601 UTC with milliseconds and ``Z``; a sample
without a source timestamp (0) uses its gateway timestamp.

Names in topics: a device or point name is data, the topic template is config, and data must never
change the shape of a topic. A name containing ``/`` would add levels and one containing ``+`` or
``#`` could not be published at all (and would read as a wildcard to anyone copying the topic into
a subscription). Rather than refuse such a sample (points read from an MQTT subscription are named
after their topic, ``plant/line1/temp``, and are legitimately re-published), the codec
percent-escapes them: ``%`` -> ``%25``, ``/`` -> ``%2F``, ``+`` -> ``%2B``, ``#`` -> ``%23``, NUL ->
``%00`` and a leading ``$`` -> ``%24`` (topics starting with ``$`` belong to the broker). The
escape is reversible (`unescape_level`) and leaves ordinary names untouched. An empty name is
refused (`TopicError`): it would make an empty level.

Speed: this runs for every sample the gateway publishes (15,000/s in the benchmark), so rendered
topics are cached per (template, gateway, device, kind, point) and timestamps per second; scalar
values are serialised without going through ``json.dumps``.

Subscribing (``decode_sample``) turns one received payload into a `Sample`: ``json`` parses it (an
object with a ``"value"`` key gives that value, with its quality, timestamp and unit: how our own
``sample`` payloads read back),
``text`` decodes UTF-8, ``raw`` gives the bytes as lowercase hex (a `Value` has no bytes type).
Anything else raises `PayloadError` naming the topic.
"""

from __future__ import annotations

import json
import math
import re
import string
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import unquote

from gateway.globs import Globs
from gateway.limits import Limits
from gateway.types import Message, Quality, Sample, Value
from protocols.mqtt.config import (
    NAME_PATTERN,
    PROPERTY_REF,
    MqttPoint,
    MqttRoute,
    string_problem,
)

__all__ = [
    "KeyDecoder",
    "PayloadError",
    "PointDecoder",
    "PropertyTemplates",
    "TopicError",
    "command_payload",
    "decode",
    "encode",
    "escape_level",
    "flatten",
    "format_ts",
    "json_value",
    "publish_size",
    "render_topic",
    "unescape_level",
    "user_properties_size",
]

PayloadMode = Literal["json", "text", "raw"]


# MQTT 5 request/response: a bus message made of an MQTT message that named a Response Topic
# carries it (and the Correlation Data, bytes or None) in its meta under these keys; whoever
# answers passes that meta back to `MqttAdapter.publish` (``reply_to``) to send the answer there.
RESPONSE_TOPIC = "response_topic"
CORRELATION_DATA = "correlation_data"
# MQTT 5 user properties of a received message, in order, as a list of (name, value) pairs in
# its bus message's meta under this key (absent when it had none); a reply to it
# (`MqttAdapter.publish` with ``reply_to``) carries them back.
USER_PROPERTIES = "user_properties"
# A message whose meta["record"] names a record (an OPC UA event: "event") is one record whose
# samples are its fields: whatever the route's payload mode, it is published as one JSON object,
# ``{"device":"plc","ts":...,"seq":7,"event":{"severity":700,"message":"..."}}``, on the route's
# topic with {point} as the record's name. Split in one publish per field, an alarm would reach
# its reader in pieces, and in any order.
RECORD = "record"


def remaining_expiry(expiry: int, age: float) -> int | None:
    """The Message Expiry Interval of a publish that waited ``age`` seconds before it was sent:
    what is left of ``expiry``, rounded up (a reading is never cut short by rounding); None once
    nothing is left, and it must not be sent. MQTT 5 (3.3.2.3.3) has a forwarded message carry
    the lifetime it has left, which is what a replay from the outbox is."""
    left = expiry - max(0.0, age)
    return math.ceil(left) if left > 0 else None


# The properties of a publish that carries only a Message Expiry Interval, encoded (MQTT 5
# 2.2.2): their length (1 byte), the identifier 0x02 and a four-byte integer, whatever the value.
LIFETIME_SIZE = 6


def publish_size(topic_bytes: int, payload: int, qos: int, properties: int = 0) -> int:
    """Bytes of a PUBLISH packet on the wire (MQTT 3.3), what a broker's Maximum Packet Size
    counts (MQTT 5 3.2.2.3.6): the fixed header (1 byte and the Remaining Length, 1 to 4), the
    topic (its UTF-8 ``topic_bytes`` and their 2-byte length), the packet identifier (QoS 1/2),
    the encoded ``properties`` (MQTT 5: their length included, so 1 for none; 0 for 3.1.1) and
    the ``payload``'s bytes."""
    remaining = 2 + topic_bytes + (2 if qos else 0) + properties + payload
    length = 1
    while remaining >= 128**length:
        length += 1
    return 1 + length + remaining


def user_properties_size(pairs: Iterable[tuple[str, str]]) -> int:
    """Bytes that user properties add to a packet's properties (MQTT 5 3.3.2.3.7): each is its
    identifier and two UTF-8 strings with their 2-byte lengths."""
    return sum(5 + len(name.encode()) + len(value.encode()) for name, value in pairs)


class PayloadError(ValueError):
    """A received payload could not be decoded; ``topic`` says where it came from."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"bad payload on {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


class TopicError(ValueError):
    """A name cannot be placed in a topic."""


# --- topics -----------------------------------------------------------------------------------

_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"})
_UNSAFE = frozenset("%/+#\0")


def escape_level(name: str) -> str:
    """Make ``name`` safe as (part of) one topic level; see the module docstring."""
    if not name:
        raise TopicError("an empty name cannot be placed in a topic")
    if not _UNSAFE.isdisjoint(name):
        name = name.translate(_ESCAPES)
    if name[0] == "$":
        name = "%24" + name[1:]
    return name


def unescape_level(level: str) -> str:
    """Reverse `escape_level` (every ``%`` in an escaped name starts an escape)."""
    return unquote(level) if "%" in level else level


_TOPIC_CACHE_MAX = 100_000
_topic_cache: dict[tuple[str, str, str, str, str | None], str] = {}


class _ShadowSection:
    """``{shadow.reported.site}``: one section of a shadow document, values escaped."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None) -> None:
        self._values = values or {}

    def __getattr__(self, key: str) -> str:
        value = self._values.get(key)
        return "unknown" if value is None else escape_level(str(value)) or "unknown"


class _ShadowView:
    __slots__ = ("desired", "reported")

    def __init__(self, doc: Any) -> None:
        self.reported = _ShadowSection(getattr(doc, "reported", None))
        self.desired = _ShadowSection(getattr(doc, "desired", None))


def uses_shadow(template: str) -> bool:
    """Whether a topic template reads the device's shadow (then it is not cached)."""
    return "{shadow." in template


def render_topic(
    template: str,
    *,
    gateway: str,
    device: str,
    point: str | None = None,
    kind: str,
    shadow: Any = None,
) -> str:
    """Fill a topic template; every value is escaped with `escape_level`. Cached, except for
    templates with ``{shadow.reported.<key>}`` / ``{shadow.desired.<key>}``, which read
    ``shadow`` (the device's `ShadowDocument`, or None: "unknown" for every key).

    ``point`` is None for templates without ``{point}`` (payload ``device``).
    """
    if uses_shadow(template):
        return template.format(
            gateway=escape_level(gateway),
            device=escape_level(device),
            point="" if point is None else escape_level(point),
            kind=escape_level(kind),
            shadow=_ShadowView(shadow),
        )
    key = (template, gateway, device, kind, point)
    topic = _topic_cache.get(key)
    if topic is None:
        topic = template.format(
            gateway=escape_level(gateway),
            device=escape_level(device),
            point="" if point is None else escape_level(point),
            kind=escape_level(kind),
        )
        if len(_topic_cache) >= _TOPIC_CACHE_MAX:  # names come from data: keep memory bounded
            _topic_cache.clear()
        _topic_cache[key] = topic
    return topic


# --- values and timestamps --------------------------------------------------------------------

_json_str: Callable[[str], str] = json.JSONEncoder(ensure_ascii=False).encode
_INF = math.inf


def json_value(value: object) -> str:
    """One scalar as compact JSON; NaN and infinities as ``null``."""
    t = type(value)
    if t is float:
        if value != value or value == _INF or value == -_INF:  # noqa: PLR0124 - NaN check
            return "null"
        return repr(value)
    if t is int:
        return repr(value)
    if t is str:
        return _json_str(value)  # type: ignore[arg-type]
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    # Subclasses (IntEnum, numpy scalars that register as numbers) and anything else.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return json_value(float(value))
    if isinstance(value, str):
        return _json_str(str(value))
    try:
        return json_value(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _json_str(str(value))


_ts_second_cache: dict[int, str] = {}


def format_ts(ts: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    ms_total = round(ts * 1000)
    sec, ms = divmod(ms_total, 1000)
    prefix = _ts_second_cache.get(sec)
    if prefix is None:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        if len(_ts_second_cache) > 4096:
            _ts_second_cache.clear()
        _ts_second_cache[sec] = prefix
    return f"{prefix}.{ms:03d}Z"


def _sample_ts(sample: Sample) -> float:
    return sample.source_ts or sample.gateway_ts


# --- encode -----------------------------------------------------------------------------------

_GOOD = Quality.GOOD
_BAD = Quality.BAD


_unit_cache: dict[str, str] = {}


def _encode_sample(sample: Sample) -> bytes:
    quality = sample.quality
    text = (
        f'{{"value":{json_value(sample.value)},"quality":"{quality.value}",'
        f'"ts":"{format_ts(_sample_ts(sample))}"'
    )
    unit = sample.unit
    if unit is not None:
        unit_json = _unit_cache.get(unit)
        if unit_json is None:
            unit_json = _unit_cache[unit] = f',"unit":{_json_str(unit)}'
            if len(_unit_cache) > 1024:
                _unit_cache.clear()
        text += unit_json
    if quality is not _GOOD and sample.reason is not None:
        text += f',"reason":{_json_str(sample.reason)}'
    return (text + "}").encode()


def _encode_device(message: Message, device: str) -> bytes:
    latest: dict[str, Sample] = {}  # a point given twice: the later sample wins
    for sample in message.samples:
        latest[sample.point] = sample
    ts = max(_sample_ts(s) for s in latest.values())
    values = ",".join(f"{_json_str(p)}:{json_value(s.value)}" for p, s in latest.items())
    text = (
        f'{{"device":{_json_str(device)},"ts":"{format_ts(ts)}","seq":{message.seq},'
        f'"values":{{{values}}}'
    )
    bad = [(p, s.quality) for p, s in latest.items() if s.quality is not _GOOD]
    if bad:
        text += ',"quality":{' + ",".join(f'{_json_str(p)}:"{q.value}"' for p, q in bad) + "}"
    return (text + "}").encode()


def _encode_record(message: Message, device: str, record: str) -> bytes:
    """One record (an OPC UA event) as one object: ``{"device","ts","seq","<record>":{...}}``,
    its fields named without the ``<record>.`` prefix of their samples."""
    prefix = record + "."
    cut = len(prefix)
    fields = ",".join(
        f"{_json_str(s.point[cut:] if s.point.startswith(prefix) else s.point)}:"
        f"{json_value(s.value)}"
        for s in message.samples
    )
    ts = max(_sample_ts(s) for s in message.samples)
    return (
        f'{{"device":{_json_str(device)},"ts":"{format_ts(ts)}","seq":{message.seq},'
        f"{_json_str(record)}:{{{fields}}}}}"
    ).encode()


def _value_payload(s: Sample) -> bytes:
    return b"null" if s.quality is _BAD else json_value(s.value).encode()


def encode(message: Message, route: MqttRoute, gateway: str) -> list[tuple[str, bytes]]:
    """The ``(topic, payload)`` publishes for one bus message on ``route``.

    Raises `TopicError` if a name cannot be placed in a topic (empty).
    """
    samples = message.samples
    if not samples:
        return []
    template = route.topic
    device = message.device or message.origin
    kind = message.kind.value
    mode = route.payload
    meta = message.meta
    if meta and type(record := meta.get(RECORD)) is str:
        point = None if mode == "device" else record
        where = render_topic(
            template, gateway=gateway, device=device, point=point, kind=kind,
            shadow=meta.get("shadow"),
        )  # fmt: skip
        return [(where, _encode_record(message, device, record))]
    if uses_shadow(template):
        shadow = message.meta.get("shadow")
        topics = [
            render_topic(
                template,
                gateway=gateway,
                device=device,
                point=None if mode == "device" else s.point,
                kind=kind,
                shadow=shadow,
            )
            for s in (samples[:1] if mode == "device" else samples)
        ]
        if mode == "device":
            return [(topics[0], _encode_device(message, device))]
        return [
            (t, _encode_sample(s) if mode == "sample" else _value_payload(s))
            for t, s in zip(topics, samples, strict=True)
        ]
    if mode == "value" or mode == "sample":
        value_mode = mode == "value"
        out = []
        cache = _topic_cache
        for s in samples:
            topic = cache.get((template, gateway, device, kind, s.point))
            if topic is None:
                topic = render_topic(
                    template, gateway=gateway, device=device, point=s.point, kind=kind
                )
            if not value_mode:
                out.append((topic, _encode_sample(s)))
            else:
                out.append((topic, _value_payload(s)))
        return out
    if mode == "device":
        topic = render_topic(template, gateway=gateway, device=device, kind=kind)
        return [(topic, _encode_device(message, device))]
    raise ValueError(f"unknown payload mode {mode!r}")


# --- MQTT 5 user properties --------------------------------------------------------------------

UserProperties = tuple[tuple[str, str], ...]
_PROPERTY_CACHE_MAX = 100_000


def merge_properties(
    base: Iterable[tuple[str, str]], over: Iterable[tuple[str, str]]
) -> UserProperties:
    """``base`` then ``over``, a name of ``over`` replacing ``base``'s of the same name (in
    its place): two values of one name would reach a rule engine as an array."""
    merged = dict(base)
    merged.update(over)
    return tuple(merged.items())


class PropertyTemplates:
    """The user properties of an endpoint's publishes on one route: the endpoint's, then the
    route's (`merge_properties`), values rendered per publish. Sans-IO.

    Values are text, not topic levels: nothing is escaped. A property whose placeholder has no
    value (``{unit}`` of a sample without one; ``{unit}`` and ``{quality}`` of a record) is left
    out; one whose rendered value is no MQTT string (a NUL, a lone surrogate, over 65,535 bytes)
    is dropped and counted in ``errors`` (its text in ``last_error``): the publish goes without
    it. Rendered sets are cached per (device, kind, point, unit, quality, referenced properties).

    The received message's user properties (``meta[USER_PROPERTIES]``, a bridge from an MQTT
    source): ``{property:<name>}`` renders the first of that name (a property without it is left
    out and counted: the route expected it); ``relay`` (True, or names and globs) publishes them
    too, first, as received (order and repeated names kept, as a broker forwards them), less
    the names the endpoint or the route set: those are the config's, which a rule engine routes
    on, and a device must not be able to send its own ``site``. Content Type, Response Topic
    and the other properties are the received message's only and are not relayed."""

    def __init__(
        self,
        endpoint: Mapping[str, str],
        route: Mapping[str, str],
        gateway: str,
        relay: bool | Collection[str] = False,
    ) -> None:
        self.gateway = gateway
        templates = merge_properties(endpoint.items(), route.items())
        self._static = all("{" not in t for _n, t in templates)
        self._templates = templates
        # the received properties the templates name, in a fixed order (part of the cache key)
        self._refs = tuple(dict.fromkeys(r for _n, t in templates for r in _property_refs(t)))
        self._relay = None if relay is False else Globs(("*",) if relay is True else relay)
        self._own_names = frozenset(n for n, _t in templates)
        self._relays: dict[str, bool] = {}  # received name -> relayed (names come from data)
        self._cache: dict[
            tuple[str, str, str | None, str | None, str | None, tuple[str | None, ...]],
            tuple[UserProperties, int],
        ] = {}
        self.errors = 0
        self.last_error: str | None = None

    def render(
        self,
        device: str,
        kind: str,
        point: str | None = None,
        unit: str | None = None,
        quality: str | None = None,
        received: tuple[str | None, ...] = (),
    ) -> UserProperties:
        """The properties of one publish; ``received``: the values of the received properties
        the templates name (`_refs`, None for one the message lacks)."""
        key = (
            ("", "", None, None, None, ())
            if self._static
            else (device, kind, point, unit, quality, received)
        )
        found = self._cache.get(key)
        if found is None:
            found = self._render(device, kind, point, unit, quality, received)
            if len(self._cache) >= _PROPERTY_CACHE_MAX:  # names come from data: stay bounded
                self._cache.clear()
            self._cache[key] = found
        props, bad = found
        if bad:  # every publish that goes without them counts, not only the first rendering
            self.errors += bad
        return props

    def _render(
        self,
        device: str,
        kind: str,
        point: str | None,
        unit: str | None,
        quality: str | None,
        received: tuple[str | None, ...],
    ) -> tuple[UserProperties, int]:
        values = _Known(
            gateway=self.gateway, device=device, kind=kind, point=point, unit=unit, quality=quality
        )
        if self._refs:
            values[PROPERTY_REF] = _Received(dict(zip(self._refs, received, strict=True)))
        out: list[tuple[str, str]] = []
        bad = 0
        for name, template in self._templates:
            try:
                value = template.format_map(values)
            except _NoValue:
                continue
            except _Absent as absent:
                bad += 1
                self.last_error = (
                    f"user property {name!r} of {device}: the received message has no user"
                    f" property {absent.args[0]!r}"
                )
                continue
            problem = string_problem(value)
            if problem is not None:
                bad += 1
                self.last_error = f"user property {name!r} of {device}: its value {problem}"
                continue
            out.append((name, value))
        return tuple(out), bad

    def of(self, message: Message, mode: str) -> list[UserProperties]:
        """The properties of each publish `encode` makes of ``message`` (the same order)."""
        samples = message.samples
        if not samples:
            return []
        device = message.device or message.origin
        kind = message.kind.value
        meta, relay = message.meta, self._relay
        reads = meta and (self._refs or relay is not None)
        pairs = _received_pairs(meta.get(USER_PROPERTIES)) if reads else ()
        got = self._referenced(pairs) if self._refs else ()
        relayed = self._relayed(pairs, relay) if relay is not None and pairs else ()
        if meta and type(record := meta.get(RECORD)) is str:
            props = [self.render(device, kind, None if mode == "device" else record, received=got)]
        elif mode == "device":
            props = [self.render(device, kind, received=got)]
        else:
            render = self.render
            props = [render(device, kind, s.point, s.unit, s.quality.value, got) for s in samples]
        if relayed:
            return [relayed + p for p in props]
        return props

    def _referenced(self, pairs: UserProperties) -> tuple[str | None, ...]:
        """The value of each received property the templates name: the first of its name."""
        first: dict[str, str] = {}
        for name, value in pairs:
            first.setdefault(name, value)
        return tuple(first.get(ref) for ref in self._refs)

    def _relayed(self, pairs: UserProperties, relay: Globs) -> UserProperties:
        """The received properties this route relays (names matching ``relay``), in order."""
        relays = self._relays
        out: list[tuple[str, str]] = []
        for pair in pairs:
            name = pair[0]
            taken = relays.get(name)
            if taken is None:
                taken = name not in self._own_names and name in relay
                if len(relays) >= _PROPERTY_CACHE_MAX:
                    relays.clear()
                relays[name] = taken
            if taken:
                out.append(pair)
        return tuple(out)


def _received_pairs(found: object) -> UserProperties:
    """``meta[USER_PROPERTIES]`` as (name, value) pairs; what is not a pair of strings is
    skipped (a plugin's meta may hold anything)."""
    if not isinstance(found, list | tuple):
        return ()
    return tuple(
        (p[0], p[1])
        for p in found
        if isinstance(p, list | tuple) and len(p) == 2 and type(p[0]) is str and type(p[1]) is str
    )


def _property_refs(template: str) -> list[str]:
    """The received user properties a template names, ``{property:<name>}``."""
    return [
        spec
        for _literal, field, spec, _conv in string.Formatter().parse(template)
        if field == PROPERTY_REF and spec
    ]


class _NoValue(KeyError):
    """A placeholder whose value is unknown for this publish (`_Known`)."""


class _Absent(Exception):
    """``{property:<name>}`` of a received message without that user property (`_Received`)."""


class _Received:
    """``{property:<name>}``: ``str.format`` hands the name to ``__format__`` as the spec."""

    __slots__ = ("values",)

    def __init__(self, values: dict[str, str | None]) -> None:
        self.values = values

    def __format__(self, name: str) -> str:
        value = self.values.get(name)
        if value is None:
            raise _Absent(name)
        return value


class _Known(dict[str, object]):
    """Placeholder values for ``str.format_map``; one that is None has no value (`_NoValue`)."""

    def __getitem__(self, key: str) -> object:
        value = super().__getitem__(key)
        if value is None:
            raise _NoValue(key)
        return value


# --- decode -----------------------------------------------------------------------------------

_SCALARS = (bool, int, float, str, type(None))


def decode(topic: str, payload: bytes, mode: PayloadMode = "json") -> Value:
    """The value carried by one received payload; `PayloadError` if it has none."""
    return decode_sample(topic, payload, mode, 0.0).value


def decode_sample(
    topic: str, payload: bytes | bytearray, mode: PayloadMode, received: float
) -> Sample:
    """One received payload as a sample of the point named after its topic.

    Our own ``sample`` payloads read back whole: besides ``value``, a JSON object's ``quality``
    (an unknown one reads as uncertain), ``ts``, ``unit`` and ``reason`` are kept, so a bad
    reading relayed by another gateway stays bad. Anything else is good, stamped ``received``."""
    if mode == "raw":
        return Sample(topic, bytes(payload).hex(), _GOOD, received, received)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(topic, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if mode == "text":
        return Sample(topic, text, _GOOD, received, received)
    if mode != "json":
        raise ValueError(f"unknown payload mode {mode!r}")
    if not text.strip():
        raise PayloadError(topic, "empty payload, expected JSON")
    data = _load(topic, text)
    meta: dict[str, object] = {}
    if isinstance(data, dict):
        if "value" not in data:
            raise PayloadError(topic, "JSON object without a 'value' key")
        meta = data
        data = data["value"]
    if not isinstance(data, _SCALARS):
        raise PayloadError(
            topic,
            f"expected a JSON scalar or an object with a scalar 'value', got {type(data).__name__}",
        )
    value: Value = data
    if not meta:
        return Sample(topic, value, _GOOD, received, received)
    quality = meta.get("quality", "good")
    unit, reason = meta.get("unit"), meta.get("reason")
    return Sample(
        topic,
        value,
        _QUALITIES.get(quality, Quality.UNCERTAIN) if isinstance(quality, str) else _GOOD,
        _source_time(topic, meta, "ts") or received,
        received,
        unit if isinstance(unit, str) else None,
        reason if isinstance(reason, str) else None,
    )


_QUALITIES = {q.value: q for q in Quality}


# --- points (the endpoint as a source) ----------------------------------------------------------

_INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
# One SenML record: name (bn+n), value, time (absolute, epoch seconds), unit.
Record = tuple[str | None, Value, float | None, str | None]


def parse_time(value: object) -> float | None:
    """A payload's timestamp as epoch seconds: a number (seconds, or milliseconds when it
    is too large to be seconds) or an ISO 8601 string; None if absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        ts = float(value)
        return ts / 1000.0 if ts > 1e11 else ts
    if isinstance(value, str):
        from datetime import UTC, datetime

        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def convert(value: Value, datatype: str) -> Value:
    """``value`` as ``datatype``; ValueError if it does not fit."""
    if datatype == "string":
        return value if isinstance(value, str) else json_value(value)
    if datatype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a bool")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    if datatype in _INT_RANGES:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        low, high = _INT_RANGES[datatype]
        if not low <= int(value) <= high:
            raise ValueError(f"{value!r} does not fit {datatype}")
        return int(value)
    return float(value)


def senml_records(topic: str, payload: bytes) -> list[Record]:
    """The records of a SenML JSON pack (RFC 8428), base fields resolved, by the shared
    `gateway.payloads` codec; its errors become this module's `PayloadError`."""
    return _shared(topic, payload, "senml+json", "bad SenML: ")


def _shared(
    topic: str, payload: bytes, fmt: str, prefix: str = "", *, datatype: str = ""
) -> list[Record]:
    """``payload`` by the shared codec (`payloads.decode_for`: ``datatype`` is the point's type,
    which decides whether text is read as text); its errors become this module's."""
    from gateway import payloads

    try:
        return payloads.decode_for(payload, fmt, datatype)
    except payloads.PayloadError as exc:
        raise PayloadError(topic, f"{prefix}{exc}") from None


def _json(topic: str, payload: bytes) -> object:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(topic, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return _load(topic, text)


def _load(topic: str, text: str) -> object:
    """JSON by the shared loader, which refuses NaN, infinities and nesting too deep to parse."""
    from gateway import payloads

    try:
        return payloads.load_json(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(topic, f"invalid JSON ({exc.msg} at char {exc.pos})") from None
    except payloads.PayloadError as exc:
        raise PayloadError(topic, f"invalid JSON ({exc})") from None


def _source_time(topic: str, data: Mapping[str, object], key: str) -> float | None:
    """The payload's timestamp (`parse_time`), refused when it is not between 1970 and 2200:
    a target that stores dates (OPC UA) would otherwise drop the reading later, silently."""
    from gateway import payloads

    ts = parse_time(data.get(key))
    if ts is not None:
        try:
            payloads.check_time(ts, key, data[key])
        except payloads.PayloadError as exc:
            raise PayloadError(topic, str(exc)) from None
    return ts


class _Missing(PayloadError):
    """The payload does not carry this point (a JSON key, a SenML record): a partial update."""

    def __init__(self, topic: str, reason: str, many: str, name: str) -> None:
        super().__init__(topic, reason)
        self.many = many  # the reason when several are missing, before their names
        self.name = name


_JSON_KINDS = {bool: "bool", int: "number", float: "number", str: "string", list: "array"}


def _dig(topic: str, data: object, field: str, point: str) -> tuple[dict[str, Any], object]:
    """The object the dotted ``field``'s last key is in, and the value at ``field``. A missing
    key, or null where an object belongs, is a partial update (`_Missing`); a path through a
    number, string or array is not: the payload has the wrong shape."""
    keys = field.split(".")
    parent: dict[str, Any] = {}
    for i, key in enumerate(keys):
        if data is None and i > 0:  # an object said null (a device switched off): missing
            raise _Missing(
                topic, f"JSON without the key {field!r}", "JSON without any of the keys", field
            )
        if not isinstance(data, dict):
            kind = _JSON_KINDS.get(type(data), type(data).__name__)
            raise PayloadError(
                topic,
                f"point {point}: field {field!r} goes through {'.'.join(keys[:i])!r},"
                f" a JSON {kind}, not an object",
            )
        if key not in data:
            raise _Missing(
                topic, f"JSON without the key {field!r}", "JSON without any of the keys", field
            )
        parent = data
        data = data[key]
    return parent, data


def _relayed(
    top: dict[str, Any], parent: dict[str, Any], field: str
) -> tuple[Quality, str | None] | None:
    """The quality and reason another gateway gave the value read at ``field``, or None when
    the payload does not say (the reading is then good). Our ``sample`` payloads carry
    ``quality`` (and ``reason``) beside ``value``; ``device`` payloads a ``quality`` object
    beside ``values`` naming the points that are not good. Only good/uncertain/bad count: a
    device's own ``quality`` key meaning something else (a number, "high") is left alone."""
    found: object = None
    if parent is top.get("values") and isinstance(top.get("quality"), dict):  # device payload
        found = top["quality"].get(field[len("values.") :], "good")  # it lists the not good
        parent = {}  # it sends no reasons
    elif "quality" in parent:  # sample payload
        found = parent["quality"]
    quality = _QUALITIES.get(found) if type(found) is str else None
    if quality is None:
        return None
    reason = parent.get("reason") if quality is not _GOOD else None
    return quality, reason if isinstance(reason, str) else None


def _quoted(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


class PointDecoder:
    """Turns payloads received on the points' topics into samples. Sans-IO.

    Every point names a topic (exact, or a filter for SenML points picked by record name), a
    format and where its value is in the payload. One payload may fill several points (several
    fields of one JSON object, several records of a SenML pack); it is parsed once.

    A reading relayed by another gateway keeps the quality that gateway gave it (`_relayed`):
    otherwise a dead device upstream would be served here as its last value, Good.
    """

    def __init__(self, points: list[MqttPoint], device: str) -> None:
        self.points = points
        self.device = device
        self._exact: dict[str, list[MqttPoint]] = {}
        self._wildcard = [p for p in points if p.wildcard]
        self._limits = {p.name: Limits.of(p) for p in points}
        for p in points:
            if not p.wildcard:
                self._exact.setdefault(p.topic, []).append(p)

    def topics(self) -> list[str]:
        """Topic filters to subscribe to, each once."""
        return list(dict.fromkeys(p.topic for p in self.points))

    def points_for(self, topic: str) -> list[MqttPoint]:
        from gateway.bus import topic_matches

        found = self._exact.get(topic, [])
        if self._wildcard:
            # Not a point's own command topic: it would read its writes back as the device's.
            found = found + [
                p
                for p in self._wildcard
                if topic_matches(p.topic, topic) and p.command_topic != topic
            ]
        return found

    def decode(
        self, topic: str, payload: bytes, received: float | None = None
    ) -> tuple[list[Sample], list[PayloadError]]:
        """Samples for the points this payload fills, and why the others could not be read.

        A point whose value is missing or unreadable is not published (it keeps its last
        value): one malformed payload says nothing about the device's health. A payload that
        carries only some of the points (a device publishing what changed) is a partial update,
        not an error; one that carries none of them is one error naming what it lacks. A null
        value that the payload says is bad is a reading (Bad, with its reason), not an error."""
        points = self.points_for(topic)
        received = time.time() if received is None else received
        samples: list[Sample] = []
        errors: list[PayloadError] = []
        missing: list[_Missing] = []
        parsed: dict[str, object] = {}
        for p in points:
            try:
                value, ts, unit, quality, reason = self._read(topic, payload, p, parsed)
                if value is None and quality is _BAD:  # relayed by another gateway
                    stamp = received if ts is None else ts
                    samples.append(Sample(p.name, None, _BAD, stamp, received, unit, reason))
                    continue
                value = convert(value, p.datatype)
            except _Missing as exc:
                missing.append(exc)
                continue
            except PayloadError as exc:
                errors.append(exc)
                continue
            except ValueError as exc:
                errors.append(PayloadError(topic, f"point {p.name}: {exc}"))
                continue
            limits = self._limits[p.name]
            if limits is not None:
                quality, reason = limits.check(value, quality, reason)
            stamp = received if ts is None else ts
            samples.append(Sample(p.name, value, quality, stamp, received, unit, reason))
        if missing and not samples and not errors:  # nothing of ours in it: a bad payload
            names = list(dict.fromkeys(m.name for m in missing))
            first = missing[0]
            reason = first.reason if len(names) == 1 else f"{first.many} {_quoted(names)}"
            errors.append(PayloadError(topic, reason))
        return samples, errors

    def _read(
        self, topic: str, payload: bytes, p: MqttPoint, parsed: dict[str, object]
    ) -> tuple[Value, float | None, str | None, Quality, str | None]:
        """The point's value, source time, unit, and the quality and reason the payload gives
        it (good, unless another gateway relayed a reading that was not)."""
        if p.format == "text":
            # The shared text reader, as CoAP's: a string point's text as sent ("1234" stays
            # text), less one line end; a number (or true/false/on/off) otherwise, finite only.
            value = _shared(topic, payload, "text", datatype=p.datatype)[0][1]
            return value, None, p.unit, _GOOD, None
        if p.format == "senml":
            if "senml" not in parsed:
                parsed["senml"] = senml_records(topic, payload)
            records: list[Record] = parsed["senml"]  # type: ignore[assignment]
            if p.senml_name is None:
                if len(records) != 1:
                    raise PayloadError(topic, f"{len(records)} SenML records; set senml_name")
                record = records[0]
            else:
                found = [r for r in records if r[0] == p.senml_name]
                if not found:
                    raise _Missing(
                        topic,
                        f"no SenML record named {p.senml_name!r}",
                        "no SenML record named any of",
                        p.senml_name,
                    )
                record = found[-1]  # the latest of a series
            # The declared unit wins: SenML's unit names ("Cel") are not pint's ("degC").
            _name, value, ts, _unit = record
            return value, ts, p.unit, _GOOD, None
        if "json" not in parsed:
            parsed["json"] = _json(topic, payload)
        top = parsed["json"]
        ts = None
        if isinstance(top, dict):
            ts = _source_time(topic, top, "ts" if "ts" in top else "time")
            field = p.field or "value"
            parent, data = _dig(topic, top, field, p.name)
            if "quality" in parent or "quality" in top:  # relayed by another gateway?
                relayed = _relayed(top, parent, field)
                if relayed is not None:
                    if data is None and relayed[0] is _BAD:  # bad: it has no value to give
                        return None, ts, p.unit, _BAD, relayed[1]
                    if isinstance(data, _SCALARS) and data is not None:
                        return data, ts, p.unit, *relayed
        elif p.field is not None:
            raise PayloadError(topic, f"expected a JSON object with {p.field!r}")
        else:
            data = top
        if not isinstance(data, _SCALARS) or data is None:
            raise PayloadError(topic, f"point {p.name}: {data!r} is not a scalar value")
        return data, ts, p.unit, _GOOD, None


def command_payload(point: MqttPoint, value: Value) -> bytes:
    """A write to ``point`` (``value`` already converted to its type), in the format the point
    is read in, since that is what its device speaks: json a bare JSON value (``7.0``,
    ``"on"``), or with a ``field`` the object it is read from (``{"temp":7.0}``; a dotted field
    nests, ``a.b`` gives ``{"a":{"b":7.0}}``, as `_dig` reads it), text plain text (``7.0``,
    ``on``, ``true``), senml a pack of one record named ``senml_name`` (or the point's name),
    without a unit (SenML's names are not pint's)."""
    from gateway import payloads

    if point.format == "json":
        if point.field is not None:
            return payloads.encode_field(point.field, value, "json")
        if isinstance(value, float) and not math.isfinite(value):  # json_value would say null
            raise ValueError(f"JSON has no {value!r}: nothing to write")
        return json_value(value).encode()
    sample = Sample(point.senml_name or point.name, value)
    return payloads.encode((sample,), "text" if point.format == "text" else "senml+json")


# --- keys (a subscription with points: keys) ----------------------------------------------------

_POINT_NAME = re.compile(NAME_PATTERN)
KEYS_PER_MESSAGE = 2_000  # new keys one payload may add (`KeyDecoder`; max_new_keys)
KEY_IDLE_S = 3_600.0  # a learned name unseen this long may make room for a new one
_SWEEP_EVERY_S = 60.0


def flatten(data: Mapping[str, object], prefix: str = "") -> Iterator[tuple[str, Value]]:
    """The scalars of a JSON object by dotted key: ``{"a": {"b": 1}}`` gives ``("a.b", 1)``.
    Numbers, bools and strings only: arrays and nulls are skipped."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, f"{name}.")
        elif isinstance(value, (bool, int, float, str)):
            yield name, value


def wildcard_levels(pattern: str, topic: str) -> list[str]:
    """The levels of ``topic`` (which ``pattern`` matches) that ``pattern``'s ``+`` and ``#``
    stand for: ``plant/+/status`` on ``plant/ahu1/status`` gives ``["ahu1"]``."""
    levels = topic.split("/")
    found: list[str] = []
    for i, level in enumerate(pattern.split("/")):
        if level == "#":
            return found + levels[i:]
        if level == "+":
            found.append(levels[i])
    return found


class KeyDecoder:
    """Payloads on ``points: keys`` subscriptions as samples, one per key. Sans-IO.

    A JSON object gives a sample per number, bool or string (`flatten`: nested keys dotted,
    arrays and nulls skipped), named by its key; a bare JSON value gives one sample named by the
    topic's last level. A top-level ``ts`` (or, without one, ``time``) that reads as a time
    (`parse_time`) is the samples' source timestamp and not a point, as for declared points.

    Skipped, and reported as one `PayloadError` per payload: names that are not point names
    (``NAME_PATTERN``), and new names past ``limit`` distinct ones (names come from the
    broker: memory stays bounded; names already seen keep flowing). Names in ``reserved`` (the
    endpoint's declared points, which read their own fields) are skipped quietly.

    Anyone who may publish to the broker can send names, so neither one message nor an old
    burst may shut new names out for good: a payload learns at most ``per_message`` new keys
    (the first; the next message learns more: a device's large object is whole after a few
    messages, while one message of 200,000 filled the table at once), and once the table is
    full, names not seen for ``idle`` seconds are forgotten (looked for at most once a minute)
    to make room; a forgotten name that comes back is new again, and is not among the points
    marked Bad when the broker is lost.
    """

    def __init__(
        self,
        filters: Collection[str],
        *,
        limit: int = 10_000,
        reserved: Collection[str] = (),
        by_topic: Collection[str] = (),
        per_message: int = KEYS_PER_MESSAGE,
        idle: float = KEY_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.filters = list(filters)
        self.limit = limit
        self.per_message = per_message
        self.idle = idle
        self.clock = clock
        self._swept = -_SWEEP_EVERY_S  # when names were last looked through for idle ones
        self.reserved = frozenset(reserved)
        # Filters (of ``filters``) whose keys are named after the topic too (`names: topic`):
        # one key on many devices' topics (plant/ahu1, plant/ahu2) is then a point each.
        self.by_topic = [f for f in self.filters if f in set(by_topic)]
        # distinct names published, at most `limit`: when each was last seen (`clock`)
        self.names: dict[str, float] = {}

    def matches(self, topic: str) -> bool:
        from gateway.bus import topic_matches

        return any(topic_matches(f, topic) for f in self.filters)

    def _topic_levels(self, topic: str) -> tuple[list[str], bool] | None:
        """The levels of ``topic`` that a `by_topic` filter's wildcards matched, and whether
        they include its last level; None when the first filter matching ``topic`` names by
        key alone."""
        from gateway.bus import topic_matches

        if not self.by_topic:  # names: key everywhere (the default): no second match
            return None
        for pattern in self.filters:
            if topic_matches(pattern, topic):
                if pattern not in self.by_topic:
                    return None
                levels = wildcard_levels(pattern, topic)
                return levels, bool(levels) and pattern.rsplit("/", 1)[-1] in ("+", "#")
        return None

    def decode(
        self, topic: str, payload: bytes, received: float | None = None
    ) -> tuple[list[Sample], list[PayloadError]]:
        """Samples of the keys this payload carries, and at most one error: why it could not
        be read (not JSON, an absurd time), what was skipped, or that it carries nothing."""
        received = time.time() if received is None else received
        ts: float | None = None
        try:
            data = _json(topic, payload)
            if isinstance(data, dict):
                key = "ts" if "ts" in data else "time"
                ts = _source_time(topic, data, key)
        except PayloadError as exc:
            return [], [exc]
        levels, last_matched = self._topic_levels(topic) or ([], False)
        if isinstance(data, dict):
            prefix = "".join(f"{level}." for level in levels)
            data = {k: v for k, v in data.items() if ts is None or k != key}
            items = dict(flatten(data, prefix))
        elif isinstance(data, (bool, int, float, str)):
            # A bare value is named by its topic's last level; by topic, after the levels
            # the wildcards matched (plant/+/temp on plant/ahu1/temp: ahu1.temp).
            last = [] if last_matched else [topic.rsplit("/", 1)[-1]]
            items = {".".join([*levels, *last]): data}
        else:
            items = {}
        stamp = received if ts is None else ts
        samples: list[Sample] = []
        bad: list[str] = []
        over: list[str] = []
        now = self.clock()
        names = self.names
        learned = 0  # new names of this message: at most per_message (one may not fill the table)
        burst: list[str] = []
        for name, value in items.items():
            if name in self.reserved:
                continue
            if name not in names:
                if not _POINT_NAME.match(name):
                    bad.append(name)
                    continue
                if learned >= self.per_message:
                    burst.append(name)
                    continue
                if len(names) >= self.limit and not self._forget_idle(now):
                    over.append(name)
                    continue
                learned += 1
            names[name] = now
            samples.append(Sample(name, value, _GOOD, stamp, received))
        reasons = []
        if burst:
            reasons.append(
                f"{learned + len(burst):,} new keys in one message, over max_new_keys"
                f" ({self.per_message:,}): the first learned, {_quoted(burst)} dropped this time"
            )
        if bad:
            reasons.append(f"keys that are not point names skipped: {_quoted(bad)}")
        if over:
            reasons.append(
                f"{self.limit} distinct point names already, new keys dropped: {_quoted(over)}"
            )
        if not reasons and not samples and not (items.keys() & self.reserved):
            reasons.append("no number, bool or string in it")
        return samples, [PayloadError(topic, "; ".join(reasons))] if reasons else []

    def _forget_idle(self, now: float) -> bool:
        """The table is full: forget the names not seen for `idle` seconds (at most once a
        minute, so a flood of new names costs no pass over the table each); whether there is
        room now."""
        if now - self._swept >= _SWEEP_EVERY_S:
            self._swept = now
            for name in [n for n, seen in self.names.items() if now - seen >= self.idle]:
                del self.names[name]
        return len(self.names) < self.limit
