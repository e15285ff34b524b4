"""The CoAP server adapter: a whole in-process gateway (a simulated Modbus device -> bridge -> our
CoAP server) read, observed and written by libcoap's coap-client, a peer we did not write."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import cbor2
import pytest
from conftest import HOST, find_binary, free_port, modbus_device_yaml, wait_for
from test_opcua_server import running_gateway

from gateway.runtime import Gateway
from protocols.coap.server import CoapServerAdapter
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator


def coap_client() -> str:
    return find_binary("coap-client-openssl", "/usr/bin/coap-client-openssl")


def config(modbus_port: int, coap_port: int, server: str = "") -> str:
    return f"""
gateway: {{name: plant}}
devices:
{modbus_device_yaml(modbus_port)}
    points:
      - {{name: temp, table: input, address: 0, type: int16, scale: 0.1, unit: degC, poll: fast,
         description: oil temperature}}
      - {{name: level, table: holding, address: 20, type: int16, scale: 0.1, unit: percent,
         access: rw, low: 0, high: 100, poll: fast}}
      - {{name: enable, table: coil, address: 0, access: rw, poll: fast}}
endpoints:
  coap: {{protocol: coap, role: server, host: {HOST}, port: {coap_port}, write_timeout: 3{server}}}
bridges:
  - {{name: up, from: pump, to: coap}}
"""


@dataclass
class Plant:
    gateway: Gateway
    device: SimulatedDevice
    port: int

    @property
    def server(self) -> CoapServerAdapter:
        adapter = self.gateway.adapters["coap"]
        assert isinstance(adapter, CoapServerAdapter)
        return adapter

    async def coap(self, *args: str, path: str, timeout: float = 5) -> tuple[int, str]:  # noqa: ASYNC109
        """Run coap-client; its exit status and output (stdout and stderr)."""
        return await run_coap_client(f"coap://{HOST}:{self.port}{path}", *args, timeout=timeout)


async def run_coap_client(url: str, *args: str, timeout: float = 5) -> tuple[int, str]:  # noqa: ASYNC109
    """Run coap-client on ``url``; its exit status and output (stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        coap_client(),
        "-B",
        str(timeout),
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout + 10)
    return proc.returncode or 0, out.decode(errors="replace").strip()


@contextlib.asynccontextmanager
async def plant(simulator: Simulator, server: str = "") -> AsyncIterator[Plant]:
    coap_client()
    device = await simulator.add_device(name="pump")
    device.set_value("input", 0, 215, DataType.INT16)  # 21.5 degC
    device.set_value("holding", 20, 425, DataType.INT16)  # 42.5 %
    device.set_bits("coil", 0, [False])
    port = free_port()
    async with running_gateway(config(device.port, port, server)) as gateway:
        p = Plant(gateway, device, port)
        await wait_for(lambda: all(r.sample for r in p.server._devices["pump"].points.values()))
        yield p


async def test_get_negotiates_content_format(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        _, out = await p.coap(path="/pump/temp")
        [record] = json.loads(out)
        assert (record["bn"], record["n"], record["v"], record["u"]) == (
            "pump/",
            "temp",
            21.5,
            "Cel",  # SenML's registered name for pint's degC (RFC 8428 section 12.1)
        )
        assert await p.coap("-A", "0", path="/pump/temp") == (0, "21.5")
        _, out = await p.coap("-A", "50", path="/pump/level")
        assert json.loads(out) == {"level": 42.5}
        _, out = await p.coap(path="/pump")
        assert {r["n"]: r.get("v", r.get("vb")) for r in json.loads(out)} == {
            "temp": 21.5,
            "level": 42.5,
            "enable": False,
        }
        _, out = await p.coap("-A", "0", path="/pump")
        assert out.startswith("4.06")


async def test_well_known_core_lists_every_resource(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        _, out = await p.coap(path="/.well-known/core")
        links = {link.split(">")[0].lstrip("<"): link for link in out.split(",")}
        assert {"/pump", "/pump/temp", "/pump/level", "/pump/enable"} <= set(links)
        temp, level = links["/pump/temp"], links["/pump/level"]
        assert 'if="core.s"' in temp and 'if="core.a"' in level
        assert 'rt="protocol-brain.point.float64"' in temp
        assert 'rt="protocol-brain.point.bool"' in links["/pump/enable"]
        assert 'ct="110 112 50 60 0"' in temp and ";obs" in temp
        assert 'if="core.b"' in links["/pump"] and 'title="oil temperature"' in temp


async def test_a_port_another_server_holds_is_refused_not_shared(simulator: Simulator) -> None:
    """aiocoap binds with SO_REUSEPORT: a second gateway on the same port started without a
    word, and the kernel split the requests between the two (an audit: 4 of 8 GETs answered
    by the other)."""
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus
    from protocols.coap.config import CoapServer

    async with plant(simulator) as p:
        second = CoapServerAdapter(
            "coap", CoapServer(host=HOST, port=p.port), AdapterContext(Bus(), "other")
        )
        with pytest.raises(OSError, match=f"UDP port {p.port} on {HOST} is in use") as refused:
            await second.__aenter__()
        assert refused.value.errno == errno.EADDRINUSE
        for _ in range(4):  # every request still reaches the server that holds the port
            assert await p.coap("-A", "0", path="/pump/temp") == (0, "21.5")


async def test_observe_notifies_each_change(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        observer = asyncio.create_task(p.coap("-s", "3", "-A", "0", path="/pump/temp", timeout=4))
        await asyncio.sleep(1.0)
        p.device.set_value("input", 0, 230, DataType.INT16)
        await asyncio.sleep(0.6)
        p.device.set_value("input", 0, 245, DataType.INT16)
        _, out = await observer
        # coap-client prints each notification's payload with no separator
        assert out == "21.523.024.5"


async def test_put_writes_the_device_after_its_ack(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        assert await p.coap("-m", "put", "-e", "55.5", "-t", "0", path="/pump/level") == (0, "")
        assert p.device.get_registers("holding", 20, 1) == [555]
        senml = json.dumps([{"bn": "pump/", "n": "level", "v": 12}])
        assert (await p.coap("-m", "put", "-e", senml, "-t", "110", path="/pump/level"))[1] == ""
        assert p.device.get_registers("holding", 20, 1) == [120]
        await p.coap("-m", "put", "-e", "true", "-t", "0", path="/pump/enable")
        assert p.device.get_bits("coil", 0, 1) == [True]
        # read back through the gateway's poll
        await wait_for(
            lambda: p.server._devices["pump"].points["level"].sample.value == 12.0  # type: ignore[union-attr]
        )


async def test_refused_writes_and_bad_requests(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        cases = [
            (("-m", "put", "-e", "155", "-t", "0"), "/pump/level", "4.03"),  # out of range
            (("-m", "put", "-e", "{bad", "-t", "50"), "/pump/level", "4.00"),  # malformed
            (("-m", "put", "-e", "abc", "-t", "0"), "/pump/level", "4.00"),  # not a number
            (("-m", "put", "-e", "1", "-t", "41"), "/pump/level", "4.15"),  # application/xml
            (("-m", "put", "-e", "1", "-t", "0"), "/pump/temp", "4.05"),  # read only
            (("-m", "put", "-e", "1", "-t", "0"), "/pump", "4.05"),  # a device pack
            ((), "/pump/nothing", "4.04"),
            (("-m", "put", "-e", "1", "-t", "0"), "/nowhere", "4.04"),
        ]
        for args, path, code in cases:
            _, out = await p.coap(*args, path=path)
            assert out.startswith(code), (args, path, out)
            # the server keeps serving after each
            assert await p.coap("-A", "0", path="/pump/level") == (0, "42.5")
        assert p.device.get_registers("holding", 20, 1) == [425]
        assert p.server.status()["writes"] == {"out_of_range": 1}


async def test_payloads_past_pythons_limits_are_bad_requests(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    # RecursionError and OverflowError answered 5.00, with a traceback in the log, before.
    async with plant(simulator) as p:
        cases = [
            ("[" * 3000, "50", "4.00 nested too deeply"),
            ("1" * 60_000, "0", "4.00 11111111111111111111... (60000 characters) is not a"),
            ("1" * 400, "0", "4.00 11111111111111111111... (400 characters) is not a"),
            ('{"level": NaN}', "50", "4.00 NaN is not a finite number"),
            ("inf", "0", "4.00 inf is not a finite number"),
        ]
        for payload, fmt, answer in cases:
            _, out = await p.coap("-m", "put", "-e", payload, "-t", fmt, path="/pump/level")
            assert out.startswith(answer), (payload[:10], out[:200])
        assert await p.coap("-A", "0", path="/pump/level") == (0, "42.5")
    assert p.device.get_registers("holding", 20, 1) == [425]
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_cbor_formats(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        # coap-client prints binary payloads as-is; check the CBOR through the adapter instead
        proc = await asyncio.create_subprocess_exec(
            coap_client(),
            "-A",
            "60",
            "-o",
            "-",
            f"coap://{HOST}:{p.port}/pump/level",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert cbor2.loads(out) == {"level": 42.5}
