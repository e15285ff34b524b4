"""The CoAP client adapter against libcoap's coap-server (a peer we did not write) and against our
own CoAP server with OSCORE."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, find_binary, free_port, wait_for
from test_coap_server import plant

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.commands import WriteRefused, WriteStatus
from gateway.types import Message, Quality
from protocols.coap.client import CoapClientAdapter
from protocols.coap.config import CoapClient
from protocols.modbus.simulator import Simulator


@contextlib.asynccontextmanager
async def coap_server(port: int, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """libcoap's coap-server on ``port`` (and, with ``-k KEY`` in ``args``, coaps on port + 1)."""
    binary = find_binary("coap-server-openssl", "/usr/bin/coap-server-openssl")
    proc = await asyncio.create_subprocess_exec(
        binary, "-A", HOST, "-p", str(port), "-d", "10", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await coap_ready(port, proc)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def coap_ready(port: int, proc: asyncio.subprocess.Process) -> None:
    """Wait until ``proc``, a CoAP server, answers on ``port``: a CoAP ping (an empty CON,
    RFC 7252 section 4.3) is answered with RST once it serves; each try waits 0.2 s."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((HOST, port))

        async def pong() -> bool:
            if proc.returncode is not None:
                pytest.fail(f"the CoAP server on port {port} exited ({proc.returncode})")
            mid = random.randrange(1 << 16).to_bytes(2, "big")
            sock.send(b"\x40\x00" + mid)  # version 1, CON, no token, code 0.00
            try:
                answer = await asyncio.wait_for(loop.sock_recv(sock, 64), 0.2)
            except (TimeoutError, ConnectionRefusedError):  # not bound yet: ICMP, or nothing
                return False
            return answer[:1] == b"\x70" and answer[2:4] == mid  # RST, the same message ID

        await wait_for(pong, timeout=10, message=f"a CoAP server on port {port}")


async def coap_put(port: int, path: str, payload: str) -> None:
    client = find_binary("coap-client-openssl", "/usr/bin/coap-client-openssl")
    proc = await asyncio.create_subprocess_exec(
        client, "-m", "put", "-e", payload, "-t", "0", f"coap://{HOST}:{port}{path}",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await proc.wait() == 0


@contextlib.asynccontextmanager
async def client(config: dict[str, Any]) -> AsyncIterator[tuple[CoapClientAdapter, list[Message]]]:
    bus = Bus()
    seen: list[Message] = []
    sub = bus.subscribe("telemetry/#", maxsize=10000, name="test")

    async def collect() -> None:
        async for m in sub:
            seen.append(m)

    adapter = CoapClientAdapter("dev", CoapClient.model_validate(config), AdapterContext(bus, "gw"))
    async with adapter, asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(adapter.run()), tg.create_task(collect())]
        try:
            yield adapter, seen
        finally:
            for t in tasks:
                t.cancel()


def values(seen: list[Message], point: str) -> list[Any]:
    return [s.value for m in seen for s in m.samples if s.point == point and s.quality == "good"]


def bad(seen: list[Message], point: str) -> list[str | None]:
    return [s.reason for m in seen for s in m.samples if s.point == point and s.quality == "bad"]


async def test_observes_libcoap_time_and_reregisters_after_restart() -> None:
    port = free_port()
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 1,
        "reconnect": {"initial": 0.1, "max": 0.5},
        "points": [{"name": "clock", "path": "time", "type": "string"}],
    }
    async with client(cfg) as (adapter, seen):
        async with coap_server(port):
            await wait_for(lambda: len(set(values(seen, "clock"))) >= 3, timeout=6)
        await wait_for(lambda: bad(seen, "clock"), timeout=10)  # gone: bad, with a reason
        before = len(values(seen, "clock"))
        async with coap_server(port):
            await wait_for(lambda: len(values(seen, "clock")) >= before + 2, timeout=10)
        assert adapter.registrations >= 2


async def test_a_closed_port_is_bad_with_the_url_and_the_cause() -> None:
    port = free_port()  # nothing listens: the kernel answers ICMP port unreachable
    url = f"coap://{HOST}:{port}"
    cfg = {
        "url": url,
        "timeout": 2,
        "reconnect": {"initial": 0.1, "max": 0.5},
        "points": [
            {"name": "polled", "path": "/polled", "poll": 0.2, "access": "rw"},
            {"name": "observed", "path": "observed"},
        ],
    }
    async with client(cfg) as (adapter, seen):
        await wait_for(lambda: bad(seen, "polled") and bad(seen, "observed"), timeout=5)
        for point in ("polled", "observed"):
            reason = bad(seen, point)[0]
            expected = f"{url}/{point}: network error: [Errno 111] Connection refused"
            assert reason is not None and reason.startswith(expected), reason
        assert adapter.status()["bad"] == ["observed", "polled"]
        with pytest.raises(WriteRefused) as refused:
            await adapter.write_and_read_back("polled", 1.0)
        assert refused.value.status is WriteStatus.UNREACHABLE
        assert f"{url}/polled: network error: [Errno 111]" in str(refused.value)


async def test_polls_and_writes_libcoap_resource() -> None:
    port = free_port()
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "points": [
            {"name": "sp", "path": "/sp", "poll": 0.2, "access": "rw", "low": 0, "high": 100},
        ],
    }
    async with coap_server(port):
        await coap_put(port, "/sp", "12.5")
        async with client(cfg) as (adapter, seen):
            await wait_for(lambda: 12.5 in values(seen, "sp"))
            await adapter.write_and_read_back("sp", 30.0)
            await wait_for(lambda: values(seen, "sp")[-1] == 30.0)
            with pytest.raises(WriteRefused) as refused:
                await adapter.write_and_read_back("nope", 1.0)
            assert refused.value.status is WriteStatus.UNKNOWN_POINT


async def test_reads_and_writes_our_server_with_oscore(
    simulator: Simulator, tmp_path: Path
) -> None:
    secret = "0102030405060708090a0b0c0d0e0f10"
    server_ctx = (
        f"{{sender_id: '01', recipient_id: '02', master_secret: '{secret}', "
        f"master_salt: '9e7ca92223786340', state_dir: '{tmp_path}/server'}}"
    )
    security = f", security: {{oscore: {server_ctx}}}"
    async with plant(simulator, security) as p:
        # unprotected requests are refused
        _, out = await p.coap("-A", "0", path="/pump/level")
        assert out.startswith("4.01")
        cfg = {
            "url": f"coap://{HOST}:{p.port}",
            "timeout": 3,
            "security": {
                "oscore": {
                    "sender_id": "02",
                    "recipient_id": "01",
                    "master_secret": secret,
                    "master_salt": "9e7ca92223786340",
                    "state_dir": str(tmp_path / "client"),
                }
            },
            "points": [
                {"name": "level", "path": "pump/level", "access": "rw", "high": 100},
                {"name": "temp", "path": "pump", "poll": 0.2, "senml_name": "pump/temp"},
            ],
        }
        async with client(cfg) as (adapter, seen):
            await wait_for(lambda: 42.5 in values(seen, "level") and 21.5 in values(seen, "temp"))
            await adapter.write_and_read_back("level", 61.0)
            assert p.device.get_registers("holding", 20, 1) == [610]
            await wait_for(lambda: values(seen, "level")[-1] == 61.0)
            with pytest.raises(WriteRefused) as refused:
                await adapter.write_and_read_back("level", 170.0)
            assert refused.value.status is WriteStatus.OUT_OF_RANGE
            assert p.device.get_registers("holding", 20, 1) == [610]
            assert all(s.quality is Quality.GOOD for m in seen for s in m.samples)
