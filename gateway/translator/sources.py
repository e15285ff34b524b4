"""Where `gateway suggest` gets point lists: CSV, a Modbus register map (YAML), a live OPC UA
browse (``opc.tcp://...``), an MQTT topic sample file, or a live MQTT subscription
(``mqtt://host:port/filter?seconds=N``).

Every reader returns plain `Point`s; protocol libraries are imported only when that kind of
source is asked for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from gateway.translator.pointlist import InputError, read_points
from gateway.translator.tokenize import Point

OPCUA_DEPTH = 8  # folders below Objects that a browse walks
MQTT_SECONDS = 10.0


def read_source(spec: str) -> list[Point]:
    """The points of one --source/--target argument."""
    if spec.startswith("opc.tcp://"):
        return browse_opcua(spec)
    if spec.startswith(("mqtt://", "tcp://")):
        return sample_mqtt(spec)
    path, _, device = spec.partition("#")
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_points(path)
    if suffix in (".yaml", ".yml"):
        return read_register_map(path, device or None)
    if suffix in (".txt", ".jsonl", ".log", ".mqtt"):
        return read_mqtt_sample(path)
    raise InputError(
        f"{spec}: unknown source; give a .csv point list, a .yaml register map or config "
        "(FILE.yaml#device), a .txt/.jsonl MQTT sample, opc.tcp://host:port or "
        "mqtt://host:port/topic-filter?seconds=N"
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
    import yaml

    try:
        doc = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    entries: list[Any] = []
    if isinstance(doc, dict) and isinstance(doc.get("devices"), dict):
        devices = doc["devices"]
        if device is not None and device not in devices:
            raise InputError(f"{path}: no device {device!r} (has: {', '.join(devices)})")
        for name, dev in devices.items():
            if device in (None, name) and isinstance(dev, dict):
                entries.extend(dev.get("points") or [])
    elif isinstance(doc, dict) and isinstance(doc.get("points"), list):
        entries = doc["points"]
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


def _payload_points(topic: str, payload: str) -> list[Point]:
    try:
        value = json.loads(payload) if payload else None
    except ValueError:
        value = None
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
    """Lines of ``topic`` or ``topic payload`` (as ``mosquitto_sub -v`` prints them)."""
    seen: dict[str, Point] = {}
    for line in _read_text(path).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        topic, _, payload = line.partition(" ")
        for p in _payload_points(topic, payload.strip()):
            seen.setdefault(p.name, p)
    if not seen:
        raise InputError(f"{path}: no topics in the sample")
    return list(seen.values())


def sample_mqtt(url: str) -> list[Point]:
    """Subscribe to ``mqtt://host:port/filter?seconds=N`` and collect what arrives."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    # Not urlparse alone: a topic filter's '#' would be read as a URL fragment.
    scheme_host, _, tail = url.partition("://")[2].partition("/")
    topic, _, query = tail.partition("?")
    topic = unquote(topic) or "#"
    u = urlparse(f"mqtt://{scheme_host}")
    try:
        seconds = float(parse_qs(query).get("seconds", [MQTT_SECONDS])[0])
    except ValueError:
        raise InputError(f"{url}: seconds must be a number") from None
    seen: dict[str, Point] = {}

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        payload = msg.payload.decode("utf-8", "replace")
        for p in _payload_points(msg.topic, payload):
            seen.setdefault(p.name, p)

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic)
    try:
        client.connect(u.hostname or "127.0.0.1", u.port or 1883)
    except OSError as exc:
        raise InputError(f"{url}: cannot connect: {exc}") from None
    client.loop_start()
    time.sleep(seconds)
    client.loop_stop()
    client.disconnect()
    if not seen:
        raise InputError(f"{url}: nothing arrived on {topic} in {seconds:g} s")
    return list(seen.values())


def browse_opcua(url: str) -> list[Point]:
    """Variables under the server's Objects folder, with description and engineering unit."""
    import asyncio

    try:
        return asyncio.run(_browse(url))
    except InputError:
        raise
    except (OSError, TimeoutError) as exc:
        raise InputError(f"{url}: cannot browse: {exc or type(exc).__name__}") from None


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
