"""Observing a device pack larger than one block (RFC 7959 section 2.6): each notification goes
as its first block with Block2 and an ETag, and the observer GETs the rest. Peers: libcoap's
coap-client (a peer we did not write) and aiocoap's client; the server runs in a whole gateway
with a simulated Modbus device of `POINTS` points (a pack of several KB)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers import CON, NON
from conftest import HOST, free_port, modbus_device_yaml, wait_for
from test_coap_server import coap_client
from test_opcua_server import running_gateway

from gateway.runtime import Gateway
from protocols.coap import server as coap_server_module
from protocols.coap.server import CoapServerAdapter
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

POINTS = 120  # about 7 KB of SenML JSON: 7 blocks of 1 KB


def config(modbus_port: int, coap_port: int) -> str:
    points = "\n".join(
        f"      - {{name: temperature_{n:03}, table: input, address: {n}, type: int16,"
        f" scale: 0.1, unit: degC, poll: fast}}"
        for n in range(POINTS)
    )
    return f"""
gateway: {{name: plant}}
devices:
{modbus_device_yaml(modbus_port)}
    points:
{points}
endpoints:
  coap: {{protocol: coap, role: server, host: {HOST}, port: {coap_port}}}
bridges:
  - {{name: up, from: pump, to: coap}}
"""


@contextlib.asynccontextmanager
async def packed(simulator: Simulator) -> AsyncIterator[tuple[Any, Gateway, int]]:
    """The gateway serving /pump, every point at 20.0 degC: (device, gateway, CoAP port)."""
    coap_client()
    device = await simulator.add_device(name="pump")
    for n in range(POINTS):
        device.set_value("input", n, 200, DataType.INT16)
    port = free_port()
    async with running_gateway(config(device.port, port)) as gateway:
        pack = server(gateway)._devices["pump"]
        await wait_for(lambda: all(r.sample for r in pack.points.values()))
        yield device, gateway, port


def server(gateway: Gateway) -> CoapServerAdapter:
    adapter = gateway.adapters["coap"]
    assert isinstance(adapter, CoapServerAdapter)
    return adapter


def values(pack: list[dict[str, Any]]) -> dict[str, float]:
    assert pack[0]["bn"] == "pump/"
    return {record["n"]: record["v"] for record in pack}


def packs(text: str) -> list[list[dict[str, Any]]]:
    """The SenML packs coap-client printed one after the other (no separator); a text that
    is not only whole packs (a notification cut short, an error) fails."""
    decoder, found, text = json.JSONDecoder(), [], text.strip()
    at = 0
    while at < len(text):
        pack, at = decoder.raw_decode(text, at)
        found.append(pack)
    return found


async def test_libcoap_observes_a_pack_larger_than_a_block(simulator: Simulator) -> None:
    async with packed(simulator) as (device, gateway, port):
        proc = await asyncio.create_subprocess_exec(
            coap_client(),
            "-s",
            "3",
            "-B",
            "6",
            f"coap://{HOST}:{port}/pump",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            adapter = server(gateway)
            await wait_for(lambda: adapter.status()["observations"] == 1, timeout=3)
            await asyncio.sleep(0.5)
            device.set_value("input", 7, 215, DataType.INT16)
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode(errors="replace")
    assert "too big" not in text and "malformed" not in text, text[-2000:]
    received = [values(pack) for pack in packs(text)]
    every = {f"temperature_{n:03}" for n in range(POINTS)}
    assert len(received) >= 2, text[-2000:]
    assert all(set(pack) == every for pack in received)
    assert set(received[0].values()) == {20.0}
    assert received[-1]["temperature_007"] == 21.5
    assert {v for name, v in received[-1].items() if name != "temperature_007"} == {20.0}


async def test_notifications_go_as_block_zero_and_wait_for_the_last_block(
    simulator: Simulator,
) -> None:
    """RFC 7959 2.6 on the wire: Observe, Block2 0 with more to come, an ETag, 1 KB; GETs for
    the next blocks (without Observe) get the same representation even when the pack changed
    meanwhile, and the change is notified, with a new ETag, once the last block went."""
    async with packed(simulator) as (device, gateway, port):
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)

            async def receive(timeout: float = 5) -> aiocoap.Message:  # noqa: ASYNC109
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
                return aiocoap.Message.decode(data)

            async def fetch(number: int) -> aiocoap.Message:
                follow = aiocoap.Message(
                    code=aiocoap.GET, uri_path=("pump",), block2=(number, 0, 6)
                )
                follow.mtype, follow.mid, follow.token = CON, 0x100 + number, bytes([number])
                await loop.sock_sendto(sock, follow.encode(), (HOST, port))
                answer = await receive()
                assert answer.opt.observe is None and answer.opt.block2.block_number == number
                return answer

            request = aiocoap.Message(code=aiocoap.GET, uri_path=("pump",), observe=0)
            request.mtype, request.mid, request.token = NON, 0x99, b"obs"
            await loop.sock_sendto(sock, request.encode(), (HOST, port))
            first = await receive()
            assert first.opt.observe is not None and first.opt.block2 is not None
            assert (first.opt.block2.block_number, first.opt.block2.more) == (0, True)
            assert len(first.payload) == 1024 and first.opt.etag
            blocks = [first, await fetch(1)]
            device.set_value("input", 3, 230, DataType.INT16)  # while the client fetches
            with pytest.raises(TimeoutError):
                await receive(timeout=0.6)  # no notification before it has the last block
            while blocks[-1].opt.block2.more:
                blocks.append(await fetch(len(blocks)))
            assert {b.opt.etag for b in blocks} == {first.opt.etag}
            pack = values(json.loads(b"".join(b.payload for b in blocks)))
            assert set(pack.values()) == {20.0}  # all of the first representation
            changed = await receive(timeout=2)
            assert changed.opt.observe is not None and changed.opt.block2.block_number == 0
            assert changed.opt.etag != first.opt.etag


async def test_a_client_that_stops_fetching_blocks_gets_the_change_later(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coap_server_module, "TRANSFER_IDLE", 0.8)
    async with packed(simulator) as (device, gateway, port):
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            request = aiocoap.Message(code=aiocoap.GET, uri_path=("pump",), observe=0)
            request.mtype, request.mid, request.token = NON, 0x99, b"obs"
            await loop.sock_sendto(sock, request.encode(), (HOST, port))
            first = aiocoap.Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
            assert first.opt.block2 is not None and first.opt.block2.more
            started = time.monotonic()
            device.set_value("input", 3, 230, DataType.INT16)  # it asks for no further block
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
            changed = aiocoap.Message.decode(data)
            assert 0.5 < time.monotonic() - started < 2.5
            assert changed.opt.observe is not None and changed.opt.etag != first.opt.etag


async def test_aiocoap_observes_whole_packs(simulator: Simulator) -> None:
    async with packed(simulator) as (device, gateway, port):
        context = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{HOST}:{port}/pump", observe=0)
            pending = context.request(request)
            first = await asyncio.wait_for(pending.response, 5)
            assert len(first.payload) > 1024
            assert set(values(json.loads(first.payload)).values()) == {20.0}
            device.set_value("input", 99, 250, DataType.INT16)
            notification = await asyncio.wait_for(pending.observation.__aiter__().__anext__(), 5)
            pack = values(json.loads(notification.payload))
            assert len(pack) == POINTS and pack["temperature_099"] == 25.0
            pending.observation.cancel()
        finally:
            await context.shutdown()


async def test_notifications_sent_count_what_observers_get(simulator: Simulator) -> None:
    """`notifications` counts changes of a resource's state, `notifications_sent` what went to
    observers: none without one, one per pack notification with one observer of the pack."""
    async with packed(simulator) as (device, gateway, port):
        adapter = server(gateway)
        before = adapter.status()
        device.set_value("input", 1, 201, DataType.INT16)
        device.set_value("input", 2, 202, DataType.INT16)
        await wait_for(lambda: adapter.status()["notifications"] >= before["notifications"] + 2)
        assert adapter.status()["notifications_sent"] == 0
        context = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{HOST}:{port}/pump", observe=0)
            pending = context.request(request)
            await asyncio.wait_for(pending.response, 5)
            assert adapter.status()["notifications_sent"] == 0  # the answer, not a notification
            seen = 0

            async def watch() -> None:
                nonlocal seen
                async for _ in pending.observation:
                    seen += 1

            watcher = asyncio.create_task(watch())
            for n in range(3):
                changes = adapter.status()["notifications"]
                device.set_value("input", 10 + n, 300 + n, DataType.INT16)
                device.set_value("input", 50 + n, 300 + n, DataType.INT16)
                await wait_for(lambda n=n: seen == n + 1, timeout=5)  # type: ignore[misc]
                assert adapter.status()["notifications"] >= changes + 2
            assert adapter.status()["notifications_sent"] == seen == 3
            watcher.cancel()
            pending.observation.cancel()
        finally:
            await context.shutdown()
