"""Where `gateway suggest` gets point lists: CSV, a Modbus register map (YAML), a live OPC UA
browse (``opc.tcp://...``), an MQTT topic sample file, or a live MQTT subscription
(``mqtt://host:port/filter?seconds=N``); with ``--browse``, a live browse or sample through a
device of a gateway config (``FILE.yaml#device``, gateway/translator/browse.py).

Every reader returns plain `Point`s; protocol libraries are imported only when that kind of
source is asked for.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

from gateway.translator.pointlist import InputError, read_points
from gateway.translator.tokenize import Point

if TYPE_CHECKING:
    from gateway.config.yamlmarks import Document
    from gateway.translator.browse import BrowseOptions

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
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_points(path)
    if suffix in (".yaml", ".yml"):
        return read_register_map(path, device or None)
    if suffix in (".txt", ".jsonl", ".log", ".mqtt"):
        return read_mqtt_sample(path)
    raise InputError(f"{spec}: unknown source; {_KINDS}")


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
    broken, too deeply nested or alias-bomb files are one line, the first problem found."""
    from gateway.config.errors import LocatedProblem
    from gateway.config.yamlmarks import parse_yaml

    doc = parse_yaml(_read_text(path))
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


def _payload_points(topic: str, payload: str) -> list[Point]:
    try:
        value = json.loads(payload) if payload else None
    except (ValueError, RecursionError):  # not JSON (or absurdly nested): the topic is the point
        value = None
    return _value_points(topic, value)


# Keys that describe a sample rather than name a point: a gateway ``sample`` payload
# ({"value": 21.5, "quality": "good", "ts": ..., "unit": "degC"}) is one point, its topic.
_SAMPLE_KEYS = frozenset({"id", "quality", "ts", "unit", "time", "timestamp", "reason"})


def _value_points(topic: str, value: Any) -> list[Point]:
    if isinstance(value, dict) and "value" in value and set(value) - {"value"} <= _SAMPLE_KEYS:
        unit = value.get("unit")
        return [Point(topic, unit=unit if isinstance(unit, str) else "")]
    if isinstance(value, dict):  # one point per JSON field; nested one level as a.b
        out: list[Point] = []
        for k, v in value.items():
            if isinstance(v, dict):
                out.extend(Point(f"{k}.{kk}") for kk in v)
            else:
                out.append(Point(str(k)))
        return out
    return [Point(topic)]


def read_mqtt_sample(path: str) -> list[Point]:
    """Lines of ``topic`` or ``topic payload`` (as ``mosquitto_sub -v`` prints them), or JSON
    objects ``{"topic": ..., "payload": ...}`` (a JSON Lines capture)."""
    seen: dict[str, Point] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):  # no real topic starts with '{': a JSON line
            topic, value = _json_message(path, number, line)
            # a payload given as the text that was published reads as in a mosquitto line
            text = isinstance(value, str)
            found = _payload_points(topic, value) if text else _value_points(topic, value)
        else:
            topic, _, payload = line.partition(" ")
            found = _payload_points(topic, payload.strip())
        for p in found:
            seen.setdefault(p.name, p)
    if not seen:
        raise InputError(f"{path}: no topics in the sample")
    return list(seen.values())


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


def _mqtt_url(url: str) -> tuple[str, int, str, float]:
    """Host, port, topic filter and seconds of ``mqtt://host:port/filter?seconds=N``."""
    form = "mqtt://host:port/topic-filter?seconds=N"
    # Not urlparse: a topic filter's '#' would be read as a URL fragment.
    address, _, query = url.partition("://")[2].partition("?")
    netloc, _, raw_topic = address.partition("/")
    host, port = _host_port(url, netloc, MQTT_PORT, form)
    try:
        topic = topic_filter(unquote(raw_topic) or "#")
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{url}: {exc}") from None
    options = parse_qs(query, keep_blank_values=True)
    unknown = set(options) - {"seconds"}
    if unknown:
        raise InputError(f"{url}: unknown option {', '.join(sorted(unknown))} ({form})")
    seconds = MQTT_SECONDS
    if "seconds" in options:
        try:
            seconds = sample_seconds(options["seconds"][-1])
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{url}: seconds {exc}") from None
    return host, port, topic, seconds


def sample_mqtt(url: str) -> list[Point]:
    """Subscribe to ``mqtt://host:port/filter?seconds=N`` and collect what arrives."""
    host, port, topic, seconds = _mqtt_url(url)
    return sample_broker(url, host, port, topic, seconds)


def sample_broker(
    where: str,
    host: str,
    port: int,
    topic: str,
    seconds: float,
    prepare: Callable[[Any], None] | None = None,
    explain: Callable[[BaseException], str] | None = None,
    login_hint: str = LOGIN_HINT,
) -> list[Point]:
    """Points of what arrives on ``topic`` in ``seconds``. ``prepare`` sets up the paho client
    before it connects (user, TLS), ``explain`` words a failed connect and ``login_hint`` a
    refused login. Nothing is published."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: dict[str, Point] = {}
    refused: list[Any] = []
    over = threading.Event()  # refused: no need to wait out the seconds

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        payload = msg.payload.decode("utf-8", "replace")
        for p in _payload_points(msg.topic, payload):
            seen.setdefault(p.name, p)

    def on_connect(c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            refused.append(reason)
            over.set()
        else:
            c.subscribe(topic)

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
    client.loop_stop()
    client.disconnect()
    if refused:
        # 134/135 (MQTT 5) are what 3.1.1's 4 and 5 become in paho's reason codes
        login = getattr(refused[0], "value", 0) in (134, 135)
        hint = f" ({login_hint})" if login else ""
        raise InputError(f"{where}: the broker refused the connection: {refused[0]}{hint}")
    if not seen:
        raise InputError(f"{where}: nothing arrived on {topic} in {seconds:g} s")
    return list(seen.values())


def browse_opcua(url: str) -> list[Point]:
    """Variables under the server's Objects folder, with description and engineering unit."""
    import asyncio

    from asyncua.ua.uaerrors import UaError

    _host_port(url, urlparse(url).netloc, OPCUA_PORT, "opc.tcp://host:port")
    try:
        return asyncio.run(_browse(url))
    except InputError:
        raise
    except (OSError, TimeoutError) as exc:
        raise InputError(f"{url}: cannot browse: {exc or type(exc).__name__}") from None
    except UaError as exc:
        # asyncua's client picks the endpoint whose policy matches its own (None here: the
        # browse has no certificate or user options); a server without one refuses it.
        if not str(exc).startswith("No matching endpoints"):
            raise
        raise InputError(
            f"{url}: cannot browse: the browse needs a server endpoint with security policy "
            "None, and the server offers only secure ones"
        ) from None


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
