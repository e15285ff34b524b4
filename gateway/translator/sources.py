"""Where `gateway suggest` gets point lists: CSV, a Modbus register map (YAML), a live OPC UA
browse (``opc.tcp://...``), an MQTT topic sample file, or a live MQTT subscription
(``mqtt://host:port/filter?seconds=N``).

Every reader returns plain `Point`s; protocol libraries are imported only when that kind of
source is asked for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from gateway.translator.pointlist import InputError, read_points
from gateway.translator.tokenize import Point

OPCUA_DEPTH = 8  # folders below Objects that a browse walks
OPCUA_PORT = 4840
MQTT_PORT = 1883
MQTT_SECONDS = 10.0
MQTT_MAX_SECONDS = 3600.0  # a sample, not a recording: an hour is already generous


def read_source(spec: str) -> list[Point]:
    """The points of one --source/--target argument."""
    if spec.startswith("opc.tcp://"):
        return browse_opcua(spec)
    if spec.startswith(("mqtt://", "tcp://")):
        return sample_mqtt(spec)
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
    """Points of a YAML register map: a gateway config (``devices.<name>.points``, all devices
    or ``FILE#device``), a mapping with ``points:``, or a bare list of points."""
    doc = _read_yaml(path)
    entries: list[Any] = []
    if isinstance(doc, dict) and isinstance(doc.get("devices"), dict):
        devices = doc["devices"]
        if device is not None and device not in devices:
            raise InputError(f"{path}: no device {device!r} (has: {', '.join(devices)})")
        for name, dev in devices.items():
            if device in (None, name) and isinstance(dev, dict):
                entries.extend(_point_list(path, f"devices.{name}.points", dev.get("points")))
    elif device is not None:
        raise InputError(f"{path}: no devices: section to take #{device} from")
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


def _read_yaml(path: str) -> Any:
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
    return doc.data


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


def _mqtt_url(url: str) -> tuple[str, int, str, float]:
    """Host, port, topic filter and seconds of ``mqtt://host:port/filter?seconds=N``, checked
    before connecting (paho would fail on them later, in its own thread)."""
    from gateway.bus import validate_pattern
    from gateway.cliargs import positive_float

    form = "mqtt://host:port/topic-filter?seconds=N"
    # Not urlparse: a topic filter's '#' would be read as a URL fragment.
    address, _, query = url.partition("://")[2].partition("?")
    netloc, _, raw_topic = address.partition("/")
    host, port = _host_port(url, netloc, MQTT_PORT, form)
    topic = unquote(raw_topic) or "#"
    try:
        validate_pattern(topic)
    except ValueError as exc:
        raise InputError(f"{url}: not a valid MQTT topic filter: {exc}") from None
    options = parse_qs(query, keep_blank_values=True)
    unknown = set(options) - {"seconds"}
    if unknown:
        raise InputError(f"{url}: unknown option {', '.join(sorted(unknown))} ({form})")
    seconds = MQTT_SECONDS
    if "seconds" in options:
        text = options["seconds"][-1]
        try:
            seconds = positive_float(text)
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{url}: seconds {exc}") from None
        if seconds > MQTT_MAX_SECONDS:
            raise InputError(f"{url}: seconds must be at most {MQTT_MAX_SECONDS:g}, got {text}")
    return host, port, topic, seconds


def sample_mqtt(url: str) -> list[Point]:
    """Subscribe to ``mqtt://host:port/filter?seconds=N`` and collect what arrives."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port, topic, seconds = _mqtt_url(url)
    seen: dict[str, Point] = {}
    refused: list[str] = []

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        payload = msg.payload.decode("utf-8", "replace")
        for p in _payload_points(msg.topic, payload):
            seen.setdefault(p.name, p)

    def on_connect(c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            c.subscribe(topic)

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.on_connect = on_connect
    try:
        client.connect(host, port)
    except OSError as exc:
        raise InputError(f"{url}: cannot connect: {exc}") from None
    client.loop_start()
    time.sleep(seconds)
    client.loop_stop()
    client.disconnect()
    if refused:
        raise InputError(f"{url}: the broker refused the connection: {refused[0]}")
    if not seen:
        raise InputError(f"{url}: nothing arrived on {topic} in {seconds:g} s")
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
    from asyncua import ua
    from asyncua.client.client import Client

    out: list[Point] = []
    async with Client(url, timeout=10) as client:
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
        raise InputError(f"{url}: no variables found under Objects")
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
    return Point(name, desc, unit)
