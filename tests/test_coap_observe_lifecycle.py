"""Observations end when a side goes (RFC 7641): our CoAP client deregisters when it stops (seen
by libcoap's coap-server and by our own server), and our CoAP server finds a vanished observer
that registered with NON by sending it a CON notification now and then, and frees its slot."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers import CON, NON, TransportTuning
from conftest import HOST, find_binary, free_port, wait_for
from test_coap_client import client, values
from test_coap_server import Plant, plant

from protocols.coap import client as coap_client
from protocols.coap import server as coap_server_module
from protocols.coap.server import CoapServerAdapter
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

# -- the client deregisters


@contextlib.asynccontextmanager
async def verbose_libcoap(port: int, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """libcoap's coap-server with its debug log (-v 7) in ``log``, complete once this exits."""
    binary = find_binary("coap-server-openssl", "/usr/bin/coap-server-openssl")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            binary, "-A", HOST, "-p", str(port), "-v", "7", stdout=out, stderr=out
        )
    await asyncio.sleep(0.3)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            proc.terminate()
            await proc.wait()


def observe_cfg(port: int, path: str, **point: Any) -> dict[str, Any]:
    return {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "reconnect": {"initial": 0.1, "max": 0.5},
        "points": [{"name": "p", "path": path, **point}],
    }


async def timed_stop(cfg: dict[str, Any], ready: Any) -> float:
    """Run a client adapter until ``ready(seen)``, then stop it: the seconds the stop took."""
    async with contextlib.AsyncExitStack() as stack:
        _, seen = await stack.enter_async_context(client(cfg))
        await wait_for(lambda: ready(seen), timeout=6)
        started = time.monotonic()
    return time.monotonic() - started


async def test_a_stopping_client_deregisters_from_libcoap(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "coap-server.log"
    async with verbose_libcoap(port, log):
        took = await timed_stop(
            observe_cfg(port, "time", type="string"), lambda seen: len(values(seen, "p")) >= 2
        )
        await asyncio.sleep(0.2)
    text = log.read_text(errors="replace")
    # RFC 7641 3.6: a GET with Observe 1 and the registration's token; libcoap drops the observer
    [token] = {
        line.split("{")[1].split("}")[0] for line in text.splitlines() if "Observe:0" in line
    }
    assert f"{{{token}}} [ Observe:1, Uri-Path:time ]" in text, text[-3000:]
    assert f"with token '{token}'" in text.split("removed subscription", 1)[-1], text[-3000:]
    assert took < 2.0  # the answer ended it (a loaded box may take a while to stop)


async def test_a_stopping_client_frees_its_observation_on_our_server(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        cfg = observe_cfg(p.port, "pump/temp", format="text")
        took = await timed_stop(cfg, lambda seen: p.server.status()["observations"] == 1)
        # at once, not at the next notification (the value does not change here)
        await wait_for(lambda: p.server.status()["observations"] == 0, timeout=0.5)
        assert took < 2.0


async def test_a_stop_is_bounded_when_the_server_is_silent(tmp_path: Path) -> None:
    port = free_port()
    async with verbose_libcoap(port, tmp_path / "coap-server.log") as server:
        async with contextlib.AsyncExitStack() as stack:
            _, seen = await stack.enter_async_context(
                client(observe_cfg(port, "time", type="string"))
            )
            await wait_for(lambda: values(seen, "p"), timeout=6)
            server.send_signal(signal.SIGSTOP)  # its socket stays open: no answer, no ICMP
            started = time.monotonic()
        took = time.monotonic() - started
    assert 0.8 < took < 3.0  # DEREGISTER_TIMEOUT: it tried, and did not wait for more


async def test_a_stop_without_observations_does_not_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long deregistration wait, so that "did not wait for it" keeps a margin a busy CI box
    # cannot eat (with the real 1 s the bound was 0.8 s).
    monkeypatch.setattr(coap_client, "DEREGISTER_TIMEOUT", 5.0)
    port = free_port()
    async with verbose_libcoap(port, tmp_path / "coap-server.log"):
        took = await timed_stop(
            observe_cfg(port, "time", type="string", poll=0.2), lambda seen: values(seen, "p")
        )
    assert took < 2.5  # not DEREGISTER_TIMEOUT


# -- the server finds vanished NON observers


EVERY = 3  # every third notification of a NON observation goes CON, here


@pytest.fixture
def quick_con(monkeypatch: pytest.MonkeyPatch) -> None:
    """CON notifications that give up in under a second (aiocoap's default is 93 s), and
    come every third notification."""
    monkeypatch.setattr(TransportTuning, "ACK_TIMEOUT", 0.1)
    monkeypatch.setattr(TransportTuning, "MAX_RETRANSMIT", 1)
    monkeypatch.setattr(coap_server_module, "CONFIRM_EVERY", EVERY, raising=False)


@pytest.fixture
def one_per_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CoapServerAdapter, "observe_limits", {"per_remote": 1})


async def register(
    sock: socket.socket, port: int, token: bytes, mtype: aiocoap.numbers.Type = NON
) -> aiocoap.Message:
    """Register for /pump/temp with a GET (NON unless told) from ``sock``; the first answer."""
    request = aiocoap.Message(code=aiocoap.GET, uri_path=("pump", "temp"), observe=0, accept=0)
    request.mtype, request.mid, request.token = mtype, 0x1234, token
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    await loop.sock_sendto(sock, request.encode(), (HOST, port))
    return aiocoap.Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), 5))


async def set_temp(p: Plant, raw: int) -> None:
    """Change the device's value and wait for the server to notify of it."""
    before = p.server.notifications
    p.device.set_value("input", 0, raw, DataType.INT16)
    await wait_for(lambda: p.server.notifications > before, timeout=3)


async def test_a_vanished_non_observer_is_dropped_after_a_con_notification(
    simulator: Simulator, quick_con: None, one_per_client: None
) -> None:
    async with plant(simulator) as p:
        # a client that registered with NON and vanished without a word: its socket stays
        # open (no ICMP either), it just never answers
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            first = await register(gone, p.port, b"gone")
            assert first.opt.observe is not None and p.server.status()["observations"] == 1
            for n in range(EVERY + 1):
                await set_temp(p, 300 + n)
            await wait_for(lambda: p.server.status()["observations"] == 0, timeout=3)
            # its slot is back: another observer from the same host (the cap is 1) is taken
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as new:
                assert (await register(new, p.port, b"new")).opt.observe is not None
                assert p.server.status()["observations"] == 1


@pytest.mark.parametrize("mtype", [NON, CON])
async def test_a_quiet_vanished_observer_is_dropped_in_time(
    simulator: Simulator, quick_con: None, monkeypatch: pytest.MonkeyPatch, mtype: Any
) -> None:
    monkeypatch.setattr(coap_server_module, "CONFIRM_INTERVAL", 0.3, raising=False)
    async with plant(simulator) as p:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            assert (await register(gone, p.port, b"gone", mtype)).opt.observe is not None
            changes = p.server.notifications
            # no change of value, so no notification but the CON sent to check on it
            await wait_for(lambda: p.server.status()["observations"] == 0, timeout=3)
            assert p.server.notifications == changes


async def test_a_live_non_observer_acks_the_con_notifications_and_stays(
    simulator: Simulator, quick_con: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coap_server_module, "CONFIRM_INTERVAL", 0.5, raising=False)
    async with plant(simulator) as p:
        ctx = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(
                code=aiocoap.GET, uri=f"coap://{HOST}:{p.port}/pump/temp", observe=0, accept=0
            )
            request.mtype = NON
            observing = ctx.request(request)
            got: list[aiocoap.Message] = [await observing.response]
            assert got[0].opt.observe is not None

            async def collect() -> None:
                async for notification in observing.observation:
                    got.append(notification)

            task = asyncio.create_task(collect())
            changes = 2 * EVERY + 1
            for n in range(changes):
                await set_temp(p, 300 + n)
            await asyncio.sleep(1.0)  # quiet: the sweep sends the value again, as CON
            await set_temp(p, 400)
            await wait_for(lambda: got[-1].payload == b"40.0", timeout=3)
            task.cancel()
            types = [m.mtype for m in got[1:]]
            assert types.count(CON) >= 3 and NON in types, types
            assert p.server.status()["observations"] == 1
        finally:
            await ctx.shutdown()
