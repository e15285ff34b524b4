"""Content formats between CoAP peers: the client asks for its points' formats with Accept (and
copes with servers that refuse or ignore it), and text/plain for a string point is text, both
ways. Peers: our own CoAP server (in a whole gateway) and libcoap's coap-server / coap-client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import cbor2
import pytest
from conftest import HOST, find_binary, free_port, modbus_device_yaml, wait_for
from test_coap_client import bad, client, coap_put, coap_server, values
from test_coap_server import Plant, coap_client, plant
from test_opcua_server import running_gateway

from gateway.payloads import pint_unit, senml_unit
from gateway.types import Message
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

# -- Accept


async def test_points_ask_for_their_format_from_our_server(simulator: Simulator) -> None:
    # Our server answers SenML JSON when a GET has no Accept: every one of these went bad.
    async with plant(simulator) as p:
        cfg = {
            "url": f"coap://{HOST}:{p.port}",
            "timeout": 3,
            "points": [
                {"name": "t_json", "path": "pump/temp", "format": "json", "field": "temp",
                 "poll": 0.2},
                {"name": "t_cbor", "path": "pump/temp", "format": "cbor", "field": "temp",
                 "poll": 0.2},
                {"name": "t_text", "path": "pump/temp", "format": "text", "poll": 0.2},
                {"name": "t_obs", "path": "pump/temp", "format": "text"},
                {"name": "l_json", "path": "pump/level", "format": "json", "field": "level",
                 "poll": 0.2, "access": "rw"},
            ],
        }  # fmt: skip
        async with client(cfg) as (adapter, seen):
            names = ("t_json", "t_cbor", "t_text", "t_obs", "l_json")
            await wait_for(lambda: all(values(seen, n) for n in names), timeout=5)
            assert {n: values(seen, n)[0] for n in names} == {
                "t_json": 21.5, "t_cbor": 21.5, "t_text": 21.5, "t_obs": 21.5, "l_json": 42.5,
            }  # fmt: skip
            # a write in JSON, read back in JSON
            await adapter.write_and_read_back("l_json", 50.0)
            assert p.device.get_registers("holding", 20, 1) == [500]
            await wait_for(lambda: values(seen, "l_json")[-1] == 50.0)
            assert not any(bad(seen, n) for n in names)
            assert adapter.status()["bad"] == []


async def test_a_format_the_server_does_not_offer_is_asked_again_without_accept(
    simulator: Simulator,
) -> None:
    # Our server answers 4.06 to text/plain on a device pack: the client asks again without
    # Accept, gets SenML JSON, and decodes it by the response's Content-Format.
    async with plant(simulator) as p:
        cfg = {
            "url": f"coap://{HOST}:{p.port}",
            "timeout": 3,
            "reconnect": {"initial": 0.1, "max": 0.5},
            "points": [
                {"name": "polled", "path": "pump", "format": "text", "senml_name": "pump/temp",
                 "poll": 0.2},
                {"name": "observed", "path": "pump", "format": "text", "senml_name": "pump/level"},
            ],
        }  # fmt: skip
        async with client(cfg) as (adapter, seen):
            await wait_for(lambda: values(seen, "polled") and values(seen, "observed"), timeout=5)
            assert values(seen, "polled")[0] == 21.5
            assert values(seen, "observed")[0] == 42.5
            assert not bad(seen, "polled") and not bad(seen, "observed")
            assert adapter._no_accept == {"polled", "observed"}


async def test_libcoap_server_ignores_accept_and_still_reads() -> None:
    # libcoap's coap-server serves what it has, with no Content-Format, whatever the Accept.
    port = free_port()
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "points": [
            {"name": "text", "path": "/sp", "format": "text", "poll": 0.2},
            {"name": "js", "path": "/js", "format": "json", "field": "v", "poll": 0.2},
            {"name": "clock", "path": "time", "format": "text", "type": "string"},
        ],
    }
    async with coap_server(port):
        await coap_put(port, "/sp", "12.5")
        await coap_put(port, "/js", '{"v": 3}')
        async with client(cfg) as (adapter, seen):
            await wait_for(
                lambda: values(seen, "text") and values(seen, "js") and values(seen, "clock")
            )
            assert (values(seen, "text")[0], values(seen, "js")[0]) == (12.5, 3.0)
            assert adapter._no_accept == set()


# -- text/plain for string points


async def test_client_reads_text_that_looks_like_a_number_as_text() -> None:
    # Before, "1e3" read as the string "1000.0" and "true" as "True".
    port = free_port()
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "points": [{"name": "label", "path": "/label", "type": "string", "poll": 0.1}],
    }
    async with coap_server(port), client(cfg) as (_, seen):
        for text in ("1e3", "true", " 7", "0012"):
            await coap_put(port, "/label", text)
            await wait_for(lambda t=text: values(seen, "label")[-1:] == [t])  # type: ignore[misc]


def string_config(modbus_port: int, coap_port: int) -> str:
    return f"""
gateway: {{name: plant}}
devices:
{modbus_device_yaml(modbus_port)}
    points:
      - {{name: label, table: holding, address: 30, type: string, length: 4, access: rw,
         poll: fast}}
      - {{name: level, table: holding, address: 20, type: int16, scale: 0.1, access: rw,
         poll: fast, unit: l/min}}
endpoints:
  coap: {{protocol: coap, role: server, host: {HOST}, port: {coap_port}, write_timeout: 3}}
bridges:
  - {{name: up, from: pump, to: coap}}
"""


@contextlib.asynccontextmanager
async def string_plant(simulator: Simulator) -> AsyncIterator[Plant]:
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 30, [0x6162, 0x6300, 0, 0])  # "abc"
    device.set_value("holding", 20, 425, DataType.INT16)
    port = free_port()
    async with running_gateway(string_config(device.port, port)) as gateway:
        p = Plant(gateway, device, port)
        await wait_for(lambda: all(r.sample for r in p.server._devices["pump"].points.values()))
        yield p


def label_bytes(p: Plant) -> bytes:
    return b"".join(r.to_bytes(2, "big") for r in p.device.get_registers("holding", 30, 4))


async def test_text_put_to_a_string_point_is_the_text(simulator: Simulator) -> None:
    # Before, each of these was "4.00 1234 is not text" (parsed as a number or a boolean first).
    async with string_plant(simulator) as p:
        for text, stored in [
            ("1234", b"1234"),
            ("true", b"true"),
            ("1e3", b"1e3"),
            (" 7", b" 7"),  # whitespace is part of the text
            ("batch\n", b"batch"),  # except one trailing line end, as a file or echo adds
            ("NaN", b"NaN"),
        ]:
            assert await p.coap("-m", "put", "-e", text, "-t", "0", path="/pump/label") == (0, "")
            assert label_bytes(p).rstrip(b"\0") == stored, text
        await wait_for(lambda: p.server._devices["pump"].points["label"].sample.value == "NaN")  # type: ignore[union-attr]
        assert await p.coap("-A", "0", path="/pump/label") == (0, "NaN")
        # numbers and booleans still parse for the other points
        assert await p.coap("-m", "put", "-e", " 7", "-t", "0", path="/pump/level") == (0, "")
        assert p.device.get_registers("holding", 20, 1) == [70]
        _, out = await p.coap("-m", "put", "-e", "abc", "-t", "0", path="/pump/level")
        assert out.startswith("4.00 'abc' is not a number")
        assert p.server.status()["writes"] == {"good": 7}


async def test_text_put_then_read_through_a_second_gateway(simulator: Simulator) -> None:
    # Our CoAP client writes and reads a string point of our CoAP server in text/plain.
    async with string_plant(simulator) as p:
        cfg = {
            "url": f"coap://{HOST}:{p.port}",
            "timeout": 3,
            "points": [{"name": "label", "path": "pump/label", "format": "text",
                        "type": "string", "access": "rw", "poll": 0.2}],
        }  # fmt: skip
        async with client(cfg) as (adapter, seen):
            await wait_for(lambda: values(seen, "label")[:1] == ["abc"])
            await adapter.write_and_read_back("label", "2024")
            assert label_bytes(p).rstrip(b"\0") == b"2024"
            await wait_for(lambda: values(seen, "label")[-1] == "2024")
            assert isinstance(values(seen, "label")[-1], str)


# -- SenML units


def test_units_map_only_to_exact_registered_names() -> None:
    assert [senml_unit(u) for u in ("degC", "percent", "ohm", "liter", "lux", "kelvin")] == [
        "Cel", "%", "Ohm", "l", "lx", "K",
    ]  # fmt: skip
    # no registered equivalent, or spelled alike: as they are
    for unit in ("degF", "l/min", "bar", "kPa", "W", "Pa", "ppm", "m3/h", "%RH", "", None):
        assert senml_unit(unit) == unit
    assert [pint_unit(u) for u in ("Cel", "%", "Ohm")] == ["degC", "percent", "ohm"]
    for unit in ("%RH", "%EL", "W", "l/s", "degF", "lx", None):
        assert pint_unit(unit) == unit


async def test_senml_from_our_server_uses_registered_units(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        _, out = await p.coap(path="/pump")
        assert {r["n"]: r.get("u") for r in json.loads(out)} == {
            "temp": "Cel", "level": "%", "enable": None,
        }  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            coap_client(), "-A", "112", "-o", "-", f"coap://{HOST}:{p.port}/pump/temp",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out_cbor, _ = await proc.communicate()
        [record] = cbor2.loads(out_cbor)
        assert (record[0], record[1], record[2]) == ("temp", "Cel", 21.5)
        # JSON and CBOR carry no unit, text neither: unchanged
        assert await p.coap("-A", "0", path="/pump/temp") == (0, "21.5")
        # our client reads them back in pint's spelling
        cfg = {
            "url": f"coap://{HOST}:{p.port}",
            "timeout": 3,
            "points": [
                {"name": "temp", "path": "pump", "senml_name": "pump/temp", "poll": 0.2},
                {"name": "level", "path": "pump/level", "format": "senml+cbor", "poll": 0.2},
            ],
        }
        async with client(cfg) as (_, seen):
            await wait_for(lambda: values(seen, "temp") and values(seen, "level"))
            assert units(seen) == {"temp": "degC", "level": "percent"}


async def test_a_unit_without_registered_name_stays(simulator: Simulator) -> None:
    async with string_plant(simulator) as p:
        _, out = await p.coap(path="/pump/level")
        assert json.loads(out)[0]["u"] == "l/min"


async def test_client_reads_registered_units_from_libcoap_as_pint_names() -> None:
    port = free_port()
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "points": [
            {"name": "t", "path": "/s", "format": "senml+json", "senml_name": "t", "poll": 0.2},
            {"name": "rh", "path": "/s", "format": "senml+json", "senml_name": "rh", "poll": 0.2},
            {"name": "f", "path": "/s", "format": "senml+json", "senml_name": "f", "poll": 0.2,
             "unit": "kPa"},
        ],
    }  # fmt: skip
    pack = [
        {"n": "t", "u": "Cel", "v": 20.5},
        {"n": "rh", "u": "%RH", "v": 40},
        {"n": "f", "u": "Pa", "v": 3},
    ]
    async with coap_server(port):
        # coap-client -e percent-decodes its text: "%RH" is sent as "%25RH"
        await coap_put(port, "/s", json.dumps(pack).replace("%", "%25"))
        async with client(cfg) as (_, seen):
            await wait_for(lambda: all(values(seen, n) for n in ("t", "rh", "f")))
            # %RH has no pint name: as it is; a declared unit wins, as before
            assert units(seen) == {"t": "degC", "rh": "%RH", "f": "kPa"}


def units(seen: list[Message]) -> dict[str, str | None]:
    return {s.point: s.unit for m in seen for s in m.samples if s.quality == "good"}


# -- a dotted field is written nested, as it is read and as MQTT writes it


async def test_a_dotted_field_is_written_as_the_nested_object_it_is_read_from() -> None:
    # Before, the client PUT {"a.b": 7.5}: a device serving {"a": {"b": ...}} got a key it
    # does not have (libcoap's server stores the PUT as is, so the next GET read it back).
    port = free_port()
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "points": [
            {"name": "nb", "path": "/nest", "format": "json", "field": "a.b", "poll": 0.2,
             "access": "rw"},
        ],
    }  # fmt: skip
    async with coap_server(port):
        await coap_put(port, "/nest", '{"a": {"b": 3}}')
        async with client(cfg) as (adapter, seen):
            await wait_for(lambda: 3.0 in values(seen, "nb"))
            await adapter.write_and_read_back("nb", 7.5)
            await wait_for(lambda: values(seen, "nb")[-1] == 7.5)
        get = await asyncio.create_subprocess_exec(
            find_binary("coap-client-openssl", "/usr/bin/coap-client-openssl"),
            "-m", "get", "-t", "0", f"coap://{HOST}:{port}/nest",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await get.communicate()
    assert json.loads(out) == {"a": {"b": 7.5}}


def test_a_dotted_field_in_cbor_nests_too() -> None:
    from gateway.payloads import Format, PayloadError, decode, encode_field

    body = encode_field("a.b", 7.5, Format.CBOR)
    assert cbor2.loads(body) == {"a": {"b": 7.5}}
    assert [d[:2] for d in decode(body, Format.CBOR)] == [("a.b", 7.5)]
    assert encode_field("temp", True, "json") == b'{"temp":true}'
    with pytest.raises(PayloadError, match="JSON or CBOR, not text"):
        encode_field("a", 1.0, "text")
