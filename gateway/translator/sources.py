"""Where `gateway suggest` gets point lists: CSV, a Modbus register map (YAML), a live OPC UA
browse (``opc.tcp://...``), an MQTT topic sample file, or a live MQTT subscription
(``mqtt://host:port/filter?seconds=N``); with ``--browse``, a live browse or sample through a
device of a gateway config (``FILE.yaml#device``, gateway/translator/browse.py).

Every reader returns plain `Point`s; protocol libraries are imported only when that kind of
source is asked for. MQTT points are named by the MQTT endpoint's own decoders (`RuntimeNames`),
as `gateway run` will name them: a map of other names would forward nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

from gateway.text import counted
from gateway.translator.pointlist import InputError, read_points
from gateway.translator.tokenize import Point

if TYPE_CHECKING:
    from gateway.config.yamlmarks import Document
    from gateway.translator.browse import BrowseOptions
    from protocols.mqtt.config import MqttEndpoint

OPCUA_DEPTH = 8  # folders below Objects that a browse walks
OPCUA_PORT = 4840
MQTT_PORT = 1883
MQTT_SECONDS = 10.0
MQTT_MAX_SECONDS = 3600.0  # a sample, not a recording: an hour is already generous
LOGIN_HINT = "the broker wants a user: describe it in a config and use FILE.yaml#device --browse"


def read_source(spec: str, browse: BrowseOptions | None = None) -> list[Point]:
    """The points of one --source/--target argument; with ``browse``, a ``FILE.yaml#device``
    is connected to live instead of having its ``points:`` read."""
    if spec.startswith("opc.tcp://"):
        return browse_opcua(spec)
    if spec.startswith(("mqtt://", "tcp://")):
        return sample_mqtt(spec)
    named = config_device(spec)
    if browse is not None and named is not None:
        from gateway.translator.browse import browse_device

        return browse_device(*named, browse)
    path, _, device = spec.partition("#")
    if Path(path).is_dir():
        raise InputError(f"{path}: is a directory; {_KINDS}")
    sample, _, query = path.partition("?")  # a sample file may say ?names=topic, as a URL does
    if query and Path(sample).suffix.lower() in SAMPLE_SUFFIXES:
        return read_mqtt_sample(sample, _sample_names(spec, query))
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_points(path)
    if suffix in (".yaml", ".yml"):
        return read_register_map(path, device or None)
    if suffix in SAMPLE_SUFFIXES:
        return read_mqtt_sample(path)
    raise InputError(f"{spec}: unknown source; {_KINDS}")


SAMPLE_SUFFIXES = (".txt", ".jsonl", ".log", ".mqtt")


def _sample_names(spec: str, query: str) -> str:
    """``names`` of a sample file's ``?names=key|topic``."""
    options = parse_qs(query, keep_blank_values=True)
    names = options.get("names", [""])[-1]
    if set(options) != {"names"} or names not in ("key", "topic"):
        raise InputError(f"{spec}: after a sample file only ?names=key or ?names=topic")
    return names


def config_device(spec: str) -> tuple[str, str] | None:
    """``(file, device)`` of a ``FILE.yaml#device`` argument, else None."""
    path, _, device = spec.partition("#")
    if device and Path(path).suffix.lower() in (".yaml", ".yml"):
        return path, device
    return None


_KINDS = (
    "give a .csv point list, a .yaml register map or config (FILE.yaml#device), a .txt/.jsonl "
    "MQTT sample, opc.tcp://host:port or mqtt://host:port/topic-filter?seconds=N"
)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def read_register_map(path: str, device: str | None = None) -> list[Point]:
    """Points of a YAML register map: a gateway config (``devices.<name>.points``, all devices,
    or ``FILE#name``, a device or an endpoint), a mapping with ``points:``, or a bare list of
    points."""
    doc = read_yaml(path).data
    entries: list[Any] = []
    if device is not None:
        section, dev = config_entry(path, doc, device)
        entries = _point_list(path, f"{section}.{device}.points", dev.get("points"))
    elif isinstance(doc, dict) and isinstance(doc.get("devices"), dict):
        for name, dev in doc["devices"].items():
            if isinstance(dev, dict):
                entries.extend(_point_list(path, f"devices.{name}.points", dev.get("points")))
    elif isinstance(doc, dict):
        entries = _point_list(path, "points", doc.get("points"))
    elif isinstance(doc, list):
        entries = doc
    points = [
        Point(
            str(e["name"]),
            str(e.get("description") or ""),
            str(e.get("unit") or ""),
            str(e.get("type") or e.get("datatype") or ""),
        )
        for e in entries
        if isinstance(e, dict) and e.get("name")
    ]
    if not points:
        raise InputError(f"{path}: no points with a name found")
    return points


def read_yaml(path: str) -> Document:
    """The document, read as `gateway validate` reads a config: keys are names (strings), and
    broken, too deeply nested or alias-bomb files are one line, the first problem found.

    ``${...}`` references are filled in as `gateway run` fills them in; one this shell cannot
    resolve (a service's secret) is kept as written and listed in ``marks.unresolved``."""
    from gateway.config.errors import LocatedProblem
    from gateway.config.references import process_lookup
    from gateway.config.yamlmarks import parse_yaml

    base = os.path.dirname(os.path.abspath(path))
    lookup = process_lookup(base, keep_unresolved=True)
    doc = parse_yaml(_read_text(path), lookup)
    if doc.issues:
        first = min(doc.issues, key=lambda i: i.mark)
        line, column = first.mark.line, first.mark.column
        raise InputError(
            str(LocatedProblem(path, line, column, first.path, first.found, first.expected))
        )
    return doc


def config_entry(path: str, doc: Any, name: str) -> tuple[str, dict[str, Any]]:
    """``(section, entry)`` of device or endpoint ``name`` in a gateway config."""
    sections = {
        section: doc[section]
        for section in ("devices", "endpoints")
        if isinstance(doc, dict) and isinstance(doc.get(section), dict)
    }
    if not sections:
        raise InputError(f"{path}: no devices: section to take #{name} from")
    for section, entries in sections.items():
        if name in entries:
            entry = entries[name]
            if not isinstance(entry, dict):
                raise InputError(f"{path}: {section}.{name} is not a mapping of settings")
            return section, entry
    have = ", ".join(n for entries in sections.values() for n in entries)
    raise InputError(f"{path}: no device {name!r} (has: {have})")


def _point_list(path: str, where: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{path}: {where} must be a list of points, not {type(value).__name__}")
    return value


class RuntimeNames:
    """Names the points of MQTT payloads as an MQTT endpoint names them at run time: each
    payload goes through the endpoint adapter's own decoders (`codec.PointDecoder` for its
    declared ``points:``, `codec.KeyDecoder` for its ``points: keys`` subscriptions, with their
    ``names:``), built by `MqttAdapter` from the endpoint's config, so `gateway suggest` and
    `gateway run` cannot name a point differently. Declared points keep their declared names
    (and units) whether or not a payload of theirs arrived."""

    MAX_TOPICS = 1000  # topics remembered for the notes: a broker cannot grow memory

    def __init__(self, name: str, config: MqttEndpoint, gateway: str = "suggest") -> None:
        from gateway.adapter import AdapterContext
        from gateway.bus import Bus
        from protocols.mqtt.client import MqttAdapter

        self.config = config
        self.adapter = MqttAdapter(name, config, AdapterContext(Bus(), gateway))
        self.points: dict[str, Point] = {
            p.name: Point(p.name, p.description, p.unit or "", p.datatype) for p in config.points
        }
        self.messages = 0
        self.unnamed: dict[str, str] = {}  # topic -> why its payload named no point
        self.unread: dict[str, None] = {}  # topics the endpoint reads no point from
        self.topics_of: dict[str, list[str]] = {}  # point -> the first two topics it came on

    def filters(self) -> list[str]:
        """What the endpoint reads points from: its ``points: keys`` subscriptions and the
        topics of its declared points."""
        keys = [s.topic for s in self.config.subscriptions if s.points == "keys"]
        return list(dict.fromkeys([*keys, *(p.topic for p in self.config.points)]))

    def read(self, topic: str, payload: bytes) -> None:
        """Name the points of one received payload as the running endpoint would."""
        self.messages += 1
        decoders = self.adapter.point_decoders(topic)
        if not decoders:
            self._remember(self.unread, topic, None)
        for decoder in decoders:
            samples, errors = decoder.decode(topic, payload)
            for sample in samples:
                self.points.setdefault(sample.point, Point(sample.point))
                seen = self.topics_of.setdefault(sample.point, [])
                if len(seen) < 2 and topic not in seen:
                    seen.append(topic)
            if errors:
                self._remember(self.unnamed, topic, errors[0].reason)

    def _remember(self, where: dict[str, Any], topic: str, value: Any) -> None:
        if topic in where or len(where) < self.MAX_TOPICS:
            where.setdefault(topic, value)

    def named(self) -> list[Point]:
        return list(self.points.values())

    def notes(self) -> list[str]:
        """What stderr says about payloads that named no point, or only some."""
        out = []
        if self.unnamed:
            shown = "; ".join(f"{t}: {why}" for t, why in list(self.unnamed.items())[:5])
            more = len(self.unnamed) - 5
            out.append(
                f"{counted(len(self.unnamed), 'topic')} whose payloads (or part of them) name"
                f" no point at run time, so none is suggested for it: {shown}"
                + (f" (and {more} more)" if more > 0 else "")
            )
        shared = {p: t for p, t in self.topics_of.items() if len(t) > 1}
        if shared:  # one point at run time, each topic overwriting the others
            shown = "; ".join(f"{p}: {', '.join(t)}, ..." for p, t in list(shared.items())[:3])
            out.append(
                f"{counted(len(shared), 'point')} named alike on several topics ({shown}): at"
                " run time each is one point, the topics overwriting one another; names: topic"
                " puts the topic's levels first and keeps them apart (an endpoint subscription"
                " with names: topic, or ?names=topic after an mqtt:// URL or a sample file)"
            )
        if self.unread:
            shown = ", ".join(list(self.unread)[:5])
            more = len(self.unread) - 5
            out.append(
                f"{counted(len(self.unread), 'topic')} that no points: keys subscription or"
                f" declared point of the endpoint reads, left out: {shown}"
                + (f" (and {more} more)" if more > 0 else "")
            )
        return out


def keys_endpoint(host: str, port: int, topic: str, names: str = "key") -> MqttEndpoint:
    """An endpoint that subscribes to ``topic`` with ``points: keys`` (and ``names``): how a
    sample without an endpoint config is named."""
    from protocols.mqtt.config import MqttEndpoint, Subscription

    subscription = Subscription.model_validate({"topic": topic, "points": "keys", "names": names})
    return MqttEndpoint(host=host, port=port, outbox=None, subscriptions=[subscription])


def assumed_naming(where: str, topic: str | None, names: str = "key") -> str:
    """The stderr line saying which subscription the names assume: the map matches only
    points named so at run time."""
    how = (
        "names: topic, the levels its + and # matched, then the key, dotted"
        if names == "topic"
        else "names: key, a JSON key by itself, a bare value by its topic's last level"
    )
    setting = "points: keys, names: topic" if names == "topic" else "points: keys"
    sub = f'{{topic: "{topic}", {setting}}}' if topic is not None else f"{{{setting}}}"
    on = f' to "{topic}"' if topic is not None else " to these topics"
    return (
        f"{where}: points named as gateway run names them for an MQTT endpoint subscription"
        f" {sub} ({how}): for the map to match, the bridge's source endpoint must subscribe{on}"
        f" with {setting}"
    )


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def read_mqtt_sample(path: str, how: str = "key") -> list[Point]:
    """Lines of ``topic payload`` (as ``mosquitto_sub -v`` prints them), or JSON objects
    ``{"topic": ..., "payload": ...}`` (a JSON Lines capture), named as an endpoint
    subscription ``{topic: "#", points: keys, names: how}`` names them at run time. A line
    with a topic alone (a list of topics) is named as a bare value on that topic would be."""
    names = RuntimeNames("sample", keys_endpoint("sample", MQTT_PORT, "#", how))
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):  # no real topic starts with '{': a JSON line
            topic, value = _json_message(path, number, line)
            # a payload given as the text that was published reads as in a mosquitto line
            if isinstance(value, str):
                payload = value.encode()
            else:
                payload = b"" if value is None else json.dumps(value).encode()
        else:
            topic, _, text = line.partition(" ")
            payload = text.strip().encode() or b"0"  # a topic alone: as a bare value on it
        names.read(topic, payload)
    if not names.messages:
        raise InputError(f"{path}: no topics in the sample")
    if not names.points:
        raise InputError(f"{path}: no point named in the sample: {_first_reason(names)}")
    _note(assumed_naming(path, None, how))
    for note in names.notes():
        _note(f"{path}: {note}")
    return names.named()


def _first_reason(names: RuntimeNames) -> str:
    """Why nothing was named, in a few words (the first topic's reason)."""
    if names.unnamed:
        topic, why = next(iter(names.unnamed.items()))
        more = len(names.unnamed) - 1
        return f"{topic}: {why}" + (f" (and {counted(more, 'topic')} more)" if more else "")
    if names.unread:
        topics = ", ".join(list(names.unread)[:3])
        return f"no points: keys subscription or declared point of the endpoint reads {topics}"
    return "nothing in them names a point"


def _json_message(path: str, number: int, line: str) -> tuple[str, Any]:
    """The topic and payload of one JSON line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: line {number}: JSON nested too deeply") from None
    topic = obj.get("topic") if isinstance(obj, dict) else None
    if not isinstance(topic, str) or not topic:
        raise InputError(
            f'{path}: line {number}: a JSON line needs a "topic" (and optionally "payload")'
        )
    return topic, obj.get("payload")


def _host_port(url: str, netloc: str, default_port: int, form: str) -> tuple[str, int]:
    """Host and port of ``scheme://netloc``; InputError naming ``url`` when either is bad."""
    u = urlparse(f"x://{netloc}")
    try:
        port = u.port
    except ValueError:
        port = 0
    if not u.hostname:
        raise InputError(f"{url}: the URL needs a host ({form})")
    if port is None:
        return u.hostname, default_port
    if not 1 <= port <= 65535:
        raise InputError(f"{url}: the port must be a number from 1 to 65535")
    return u.hostname, port


def sample_seconds(text: str) -> float:
    """How long to sample a broker: a positive number of seconds, at most an hour."""
    from gateway.cliargs import positive_float

    seconds = positive_float(text)
    if seconds > MQTT_MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MQTT_MAX_SECONDS:g}, got {text}")
    return seconds


def topic_filter(text: str) -> str:
    """An MQTT topic filter, checked before connecting (paho would fail on it later, in its own
    thread)."""
    from gateway.bus import validate_pattern

    try:
        validate_pattern(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a valid MQTT topic filter: {exc}") from None
    return text


def _mqtt_url(url: str) -> tuple[str, int, str, float, str]:
    """Host, port, topic filter, seconds and naming of
    ``mqtt://host:port/filter?seconds=N&names=key|topic``."""
    form = "mqtt://host:port/topic-filter?seconds=N&names=key|topic"
    # Not urlparse: a topic filter's '#' would be read as a URL fragment.
    address, _, query = url.partition("://")[2].partition("?")
    netloc, _, raw_topic = address.partition("/")
    host, port = _host_port(url, netloc, MQTT_PORT, form)
    try:
        topic = topic_filter(unquote(raw_topic) or "#")
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{url}: {exc}") from None
    options = parse_qs(query, keep_blank_values=True)
    unknown = set(options) - {"seconds", "names"}
    if unknown:
        raise InputError(f"{url}: unknown option {', '.join(sorted(unknown))} ({form})")
    seconds = MQTT_SECONDS
    if "seconds" in options:
        try:
            seconds = sample_seconds(options["seconds"][-1])
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{url}: seconds {exc}") from None
    names = options.get("names", ["key"])[-1]
    if names not in ("key", "topic"):
        raise InputError(f"{url}: names must be key or topic, not {names!r} ({form})")
    return host, port, topic, seconds, names


def sample_mqtt(url: str) -> list[Point]:
    """Subscribe to ``mqtt://host:port/filter?seconds=N`` and name what arrives as an endpoint
    subscription ``{topic: filter, points: keys}`` (``names`` from the URL) names it."""
    host, port, topic, seconds, how = _mqtt_url(url)
    names = RuntimeNames("sample", keys_endpoint(host, port, topic, how))
    points = sample_broker(url, host, port, [topic], seconds, names)
    _note(assumed_naming(url, topic, how))
    return points


def sample_endpoint(
    where: str,
    name: str,
    config: MqttEndpoint,
    gateway: str,
    topic: str | None,
    seconds: float,
    prepare: Callable[[Any], None] | None = None,
    explain: Callable[[BaseException], str] | None = None,
    login_hint: str = LOGIN_HINT,
) -> list[Point]:
    """The points MQTT endpoint ``name`` (``config``) will name at run time, sampled on its
    own ``points: keys`` subscriptions and declared points' topics, or on ``topic``. An
    endpoint that reads no points yet (onboarding) needs ``topic``: it is named as a ``points:
    keys`` subscription on it would, which stderr says."""
    keys = any(s.points == "keys" for s in config.subscriptions)
    assumed = topic is not None and not keys
    if topic is not None and not keys:  # onboarding: as a points: keys subscription on topic
        added = keys_endpoint(config.host, 1, topic).subscriptions
        config = config.model_copy(update={"subscriptions": [*config.subscriptions, *added]})
    names = RuntimeNames(name, config, gateway)
    filters = [topic] if topic is not None else names.filters()
    if not filters:
        others = ", ".join(s.topic for s in config.subscriptions)
        why = (
            f"its subscriptions ({others}) are without points: keys (a message on them is one"
            f" sample on the bus topic mqtt/{name}/<topic>, which bridges do not carry)"
            if others
            else "it has no subscriptions"
        )
        raise InputError(
            f"{where}: the endpoint reads no points: {why} and it declares no points:; add a"
            " subscription with points: keys (subscriptions: [{topic: FILTER, points: keys}])"
            " or give --browse-topic FILTER"
        )
    points = sample_broker(
        where,
        config.host,
        config.effective_port,
        filters,
        seconds,
        names,
        prepare,
        explain,
        login_hint,
    )
    if assumed:
        _note(assumed_naming(where, topic))
    return points


def sample_broker(
    where: str,
    host: str,
    port: int,
    topics: list[str],
    seconds: float,
    names: RuntimeNames,
    prepare: Callable[[Any], None] | None = None,
    explain: Callable[[BaseException], str] | None = None,
    login_hint: str = LOGIN_HINT,
) -> list[Point]:
    """Points of what arrives on ``topics`` in ``seconds``, named by ``names`` (the running
    endpoint's decoders). ``prepare`` sets up the paho client before it connects (user, TLS),
    ``explain`` words a failed connect and ``login_hint`` a refused login. Nothing is
    published."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    refused: list[Any] = []
    over = threading.Event()  # refused: no need to wait out the seconds

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        names.read(msg.topic, bytes(msg.payload))

    def on_connect(c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            refused.append(reason)
            over.set()
        else:
            c.subscribe([(t, 0) for t in topics])

    # paho's own client id (random): the device's id would make the broker drop the running
    # gateway's connection to let this one in.
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.on_connect = on_connect
    if prepare is not None:
        prepare(client)
    try:
        client.connect(host, port)
    except (OSError, ValueError) as exc:  # ValueError: ssl's CertificateError is one too
        why = explain(exc) if explain is not None else f"cannot connect: {exc}"
        raise InputError(f"{where}: {why}") from None
    client.loop_start()
    over.wait(seconds)
    client.loop_stop()  # joins paho's thread: `names` is ours alone from here
    client.disconnect()
    if refused:
        # 134/135 (MQTT 5) are what 3.1.1's 4 and 5 become in paho's reason codes
        login = getattr(refused[0], "value", 0) in (134, 135)
        hint = f" ({login_hint})" if login else ""
        raise InputError(f"{where}: the broker refused the connection: {refused[0]}{hint}")
    on = ", ".join(topics)
    if not names.points and not names.messages:
        raise InputError(f"{where}: nothing arrived on {on} in {seconds:g} s")
    if not names.points:
        raise InputError(
            f"{where}: no point named from what arrived on {on} in {seconds:g} s:"
            f" {_first_reason(names)}"
        )
    for note in names.notes():
        _note(f"{where}: {note}")
    return names.named()


# A server that wants a user or a certificate answers a session without one with one of these.
_LOGIN_REFUSED = frozenset(
    {
        "BadIdentityTokenRejected",
        "BadIdentityTokenInvalid",
        "BadUserAccessDenied",
        "BadUserSignatureInvalid",
        "BadCertificateInvalid",
        "BadSecurityChecksFailed",
    }
)
BROWSE_CONFIG = (
    "browse the device as a config entry with its username/password or certificate:"
    " FILE.yaml#device --browse"
)


def opcua_url(url: str) -> str:
    """``url`` with OPC UA's port (4840) when it names none; InputError when the host or port
    is bad."""
    parts = urlparse(url)
    host, port = _host_port(url, parts.netloc, OPCUA_PORT, "opc.tcp://host:port")
    if parts.port is None:  # asyncua would connect to port 0
        url = parts._replace(netloc=f"{parts.netloc}:{port}").geturl()
    return url


def browse_opcua(url: str) -> list[Point]:
    """Variables under the server's Objects folder, with description and engineering unit.
    Every failure (unreachable, refused, broken off) is an InputError: one line naming the URL
    and what to do."""
    import asyncio

    from asyncua.ua.uaerrors import UaError

    given = url
    url = opcua_url(url)
    try:
        return asyncio.run(_browse(url))
    except InputError:
        raise
    except (OSError, TimeoutError) as exc:
        why = str(exc) or type(exc).__name__
        raise InputError(
            f"{given}: cannot browse: {why} (is the server running and {url} its endpoint?)"
        ) from None
    except UaError as exc:
        raise InputError(f"{given}: cannot browse: {_ua_reason(exc)}") from None
    except Exception as exc:  # asyncua's own failures are not all UaErrors (a bad reply)
        why = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise InputError(f"{given}: cannot browse: {why}") from None


def _ua_reason(exc: Exception) -> str:
    """What an asyncua error during a browse without security or user means, and what to do."""
    kind = type(exc).__name__
    if kind in _LOGIN_REFUSED:
        return f"the server refused an anonymous session ({kind}): {BROWSE_CONFIG}"
    # asyncua's client picks the endpoint whose policy matches its own (None here: the
    # browse has no certificate or user options); a server without one refuses it.
    if str(exc).startswith("No matching endpoints"):
        return (
            "the browse needs a server endpoint with security policy None, and the server offers"
            f" only secure ones: {BROWSE_CONFIG}"
        )
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{kind}: {text}".rstrip(": ") if text and text != kind else kind


async def _browse(url: str) -> list[Point]:
    from asyncua.client.client import Client

    client = Client(url, timeout=10)
    client.session_timeout = 60_000  # asyncua asks for an hour and warns when a server says less
    async with client:
        return await walk_objects(client, url)


async def walk_objects(client: Any, where: str) -> list[Point]:
    """Variables under the Objects folder of a connected asyncua client."""
    from asyncua import ua

    out: list[Point] = []
    seen: set[Any] = set()

    async def walk(node: Any, depth: int) -> None:
        for child in await node.get_children():
            if child.nodeid in seen or child.nodeid.NamespaceIndex == 0:
                continue
            seen.add(child.nodeid)
            cls = await child.read_node_class()
            if cls == ua.NodeClass.Variable:
                out.append(await _variable(child))
            elif cls == ua.NodeClass.Object and depth < OPCUA_DEPTH:
                await walk(child, depth + 1)

    await walk(client.nodes.objects, 0)
    if not out:
        raise InputError(f"{where}: no variables found under Objects")
    return out


async def _variable(node: Any) -> Point:
    name = (await node.read_browse_name()).Name
    desc = ""
    unit = ""
    try:
        text = (await node.read_description()).Text
        desc = text or ""
    except Exception:  # optional attribute
        pass
    try:
        eu = await (await node.get_child("0:EngineeringUnits")).read_value()
        unit = eu.DisplayName.Text or ""
    except Exception:  # most variables have no EngineeringUnits property
        pass
    return Point(name, desc, unit, address=node.nodeid.to_string())
