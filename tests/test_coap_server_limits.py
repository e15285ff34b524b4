"""The CoAP server under a flood of confirmable requests with fresh message IDs (a whole in-process
gateway, raw UDP on 127.0.0.1, then libcoap's coap-client): what it remembers for duplicate
detection stays within its caps, a GET flood does not make a retransmitted PUT run twice, new
requests beyond the rate limit are dropped, and legitimate clients are served afterwards."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aiocoap
import pytest
from conftest import HOST, wait_for
from test_coap_server import Plant, plant

from gateway.commands import WriteStatus
from protocols.coap.server import CoapServerAdapter
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

SAFE_LIMIT, UNSAFE_LIMIT = 200, 50


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"safe_limit": SAFE_LIMIT, "unsafe_limit": UNSAFE_LIMIT, "rate": 1e6, "burst": 1e6}
    monkeypatch.setattr(CoapServerAdapter, "flood_limits", limits, raising=False)


def con(
    code: int,
    mid: int,
    token: bytes,
    path: tuple[str, ...],
    payload: bytes = b"",
    observe: int | None = None,
) -> bytes:
    """A CON request datagram (RFC 7252 section 3), Uri-Path options (and Observe) only
    (text/plain)."""
    data = bytes([0x40 | len(token), code]) + mid.to_bytes(2, "big") + token
    delta = 11  # Uri-Path
    if observe is not None:  # option 6, before Uri-Path
        value = observe.to_bytes((observe.bit_length() + 7) // 8, "big")  # 0: empty
        data += bytes([(6 << 4) | len(value)]) + value
        delta = 11 - 6
    for part in path:
        data += bytes([(delta << 4) | len(part)]) + part.encode()
        delta = 0
    return data + (b"\xff" + payload if payload else b"")


def remembered(server: CoapServerAdapter) -> int:
    """Requests the server context remembers for duplicate detection: aiocoap's own table and
    ours, in every message manager."""
    context: Any = server._context
    held = server.limits.held() if getattr(server, "limits", None) is not None else 0  # type: ignore[union-attr]
    for interface in context.request_interfaces:
        manager = getattr(interface, "token_interface", None)
        held += len(getattr(manager, "_recent_messages", ()))
    return held


async def flood(p: Plant, count: int, sockets: int = 20, paced: bool = True) -> None:
    """``count`` CON GETs of /pump/temp with fresh message IDs and tokens; no response read.
    ``paced``: in batches the server answers before the next, so that the kernel's receive
    buffer drops none of them."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    start = p.server.requests
    try:
        for n in range(count):
            s = socks[n % sockets]
            s.sendto(con(1, n & 0xFFFF, n.to_bytes(4, "big"), ("pump", "temp")), (HOST, p.port))
            if n % 100 == 99:
                if paced:
                    await wait_for(lambda n=n: p.server.requests >= start + n - 100, timeout=10)
                else:  # time for the loop to read them (the receive buffer holds ~200)
                    await asyncio.sleep(0.02)
    finally:
        for s in socks:
            s.close()


async def exchange(sock: socket.socket, data: bytes) -> aiocoap.Message:
    """Send ``data``, and the response that comes back (its ACK, piggybacked)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    await loop.sock_sendto(sock, data, sock.getpeername())
    reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
    return aiocoap.Message.decode(reply)


async def test_a_flood_of_fresh_message_ids_stays_within_the_caps(
    simulator: Simulator, small_limits: None
) -> None:
    async with plant(simulator) as p:
        loop = asyncio.get_running_loop()
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        await flood(p, 3000)
        # one entry per request (and one timer each) for 247 s, before
        assert remembered(p.server) <= SAFE_LIMIT
        assert len(loop._scheduled) < timers + 100  # type: ignore[attr-defined]
        # legitimate clients: GET, PUT, Observe
        assert await p.coap("-A", "0", path="/pump/temp") == (0, "21.5")
        assert await p.coap("-m", "put", "-e", "55.5", "-t", "0", path="/pump/level") == (0, "")
        assert p.device.get_registers("holding", 20, 1) == [555]
        asked = p.server.requests
        observer = asyncio.create_task(p.coap("-s", "2", "-A", "0", path="/pump/temp", timeout=3))
        await wait_for(lambda: p.server.requests > asked, timeout=3)  # registered
        p.device.set_value("input", 0, 230, DataType.INT16)
        assert (await observer)[1] == "21.523.0"
        assert remembered(p.server) <= SAFE_LIMIT + UNSAFE_LIMIT


async def test_a_retransmitted_put_is_answered_again_not_written_again(
    simulator: Simulator, small_limits: None
) -> None:
    async with plant(simulator) as p:
        put = con(3, 4242, b"pu", ("pump", "level"), b"55.5")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((HOST, p.port))
            first = await exchange(sock, put)
            assert (str(first.code), first.mid, first.token) == ("2.04 Changed", 4242, b"pu")
            assert p.device.get_registers("holding", 20, 1) == [555]
            p.device.set_value("holding", 20, 100, DataType.INT16)  # changed on the device since
            # a GET flood past the cap of the table for safe requests
            await flood(p, 3000)
            assert remembered(p.server) <= SAFE_LIMIT + UNSAFE_LIMIT
            again = await exchange(sock, put)  # the CON retransmitted: the same message ID
            assert (str(again.code), again.mid, again.token) == ("2.04 Changed", 4242, b"pu")
        assert p.device.get_registers("holding", 20, 1) == [100]  # not written a second time
        assert p.server.status()["writes"] == {WriteStatus.GOOD: 1}


async def test_an_unsafe_request_is_forgotten_early_only_past_its_retransmission_span() -> None:
    """A full table of PUTs (or OSCORE requests, POST outside) dropped every new one for 247 s
    (40 a second at the cap): one older than MAX_TRANSMIT_SPAN, which no client retransmits
    any more, now makes room; a younger one is still never forgotten."""
    from types import SimpleNamespace

    from aiocoap.numbers.types import CON

    from protocols.coap.limits import MAX_TRANSMIT_SPAN, FloodLimits

    now = [100.0]
    limits = FloodLimits("coap", unsafe_limit=2, rate=1e6, burst=1e6)
    loop = asyncio.get_running_loop()
    limits._loop = SimpleNamespace(time=lambda: now[0], call_later=loop.call_later)  # type: ignore[assignment]
    limits._filled = now[0]  # the token bucket on the same clock

    def put(mid: int) -> bool:  # True: goes no further (dropped or a duplicate)
        return limits.deduplicate(None, SimpleNamespace(remote="a", mid=mid, code=3, mtype=CON))

    try:
        assert not put(1) and not put(2)
        now[0] += MAX_TRANSMIT_SPAN - 1
        assert put(3) and limits.dropped["full"] == 1  # 1 and 2 may still be retransmitted
        now[0] += 2
        assert not put(3)  # 1 is past its span: forgotten for 3
        assert put(2)  # 2 is still remembered: a duplicate, not run again
        assert list(limits.tables[False]) == [("a", 2), ("a", 3)]
    finally:
        limits.close()


async def test_new_requests_beyond_the_rate_are_dropped_and_logged_once(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        CoapServerAdapter, "flood_limits", {"rate": 50.0, "burst": 50.0}, raising=False
    )
    async with plant(simulator) as p:
        served = p.server.requests
        started = asyncio.get_running_loop().time()
        with caplog.at_level(logging.WARNING, logger="protocols.coap.limits"):
            await flood(p, 2000, paced=False)
            await asyncio.sleep(0.5)
        elapsed = asyncio.get_running_loop().time() - started
        assert p.server.requests - served <= 50 + 50 * elapsed + 5
        dropped = p.server.status()["dropped"]
        # most of the 2,000 reach the limiter (a loop stalled on a loaded box lets the kernel
        # drop some first: not ours to count)
        assert dropped >= 1000, dropped
        logged = [r for r in caplog.records if "dropped unanswered" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]
        # a client that retransmits gets through once the flood is over
        assert await p.coap("-A", "0", path="/pump/temp") == (0, "21.5")


# -- observations (RFC 7641): ObserveLimits in protocols/coap/limits.py

OBSERVE_TOTAL, OBSERVE_PER_REMOTE = 20, 5
#: an Accept option (17) of 0, text/plain, to append to `con`'s datagram (no payload, Uri-Path last)
ACCEPT_TEXT = bytes([(17 - 11) << 4])


@pytest.fixture
def few_observations(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"total": OBSERVE_TOTAL, "per_remote": OBSERVE_PER_REMOTE}
    monkeypatch.setattr(CoapServerAdapter, "observe_limits", limits, raising=False)


def observed(server: CoapServerAdapter) -> int:
    """Observations aiocoap's resources hold (their own sets, not our count of them)."""
    resources = server.site._resources.values()
    return sum(len(getattr(res, "_observations", ())) for res in resources)


def held(server: CoapServerAdapter) -> tuple[int, int, int]:
    """Observations held: by aiocoap's resources, by our count, by our counts per remote."""
    observing = server.observing
    return observed(server), observing.held(), sum(observing._by_remote.values())


def connected(p: Plant, host: str = HOST) -> socket.socket:
    """A UDP socket to the server from ``host`` (another loopback address: another client)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.connect((HOST, p.port))
    return sock


async def register(sock: socket.socket, mid: int, token: bytes, observe: int = 0) -> bool:
    """An Observe GET of /pump/temp (``observe`` 1: a cancellation); whether its 2.05 answer
    carries the Observe option, that is, whether the server registered it."""
    request = con(1, mid, token, ("pump", "temp"), observe=observe) + ACCEPT_TEXT
    response = await exchange(sock, request)
    assert (str(response.code), response.payload) == ("2.05 Content", b"21.5"), response
    return response.opt.observe is not None


async def test_observations_beyond_the_cap_are_answered_without_observe(
    simulator: Simulator, few_observations: None, caplog: pytest.LogCaptureFixture
) -> None:
    async with plant(simulator) as p:
        # clients on 8 hosts, each within its own cap: the total is what refuses
        socks = [connected(p, f"127.0.0.{2 + n // OBSERVE_PER_REMOTE}") for n in range(40)]
        try:
            with caplog.at_level(logging.WARNING, logger="protocols.coap.limits"):
                accepted = [await register(s, n, b"ob%d" % n) for n, s in enumerate(socks)]
            # every one was registered, before; each then cost a notification per change
            assert accepted == [True] * OBSERVE_TOTAL + [False] * OBSERVE_TOTAL
            assert held(p.server) == (OBSERVE_TOTAL,) * 3
            status = p.server.status()
            assert (status["observations"], status["observe_refused"]) == (20, 20)
            logged = [r for r in caplog.records if "without Observe" in r.getMessage()]
            assert len(logged) == 1, [r.getMessage() for r in logged]
            # a legitimate client while the server is full: a value, and no registration
            assert await p.coap("-s", "1", "-A", "0", path="/pump/temp", timeout=3) == (0, "21.5")
            assert held(p.server) == (OBSERVE_TOTAL,) * 3
            assert p.server.status()["observe_refused"] == OBSERVE_TOTAL + 1
            # the flood ends (its observations cancelled): the client is notified again
            for n, s in enumerate(socks[:OBSERVE_TOTAL]):
                assert not await register(s, 1000 + n, b"ob%d" % n, observe=1)
        finally:
            for s in socks:
                s.close()
        await wait_for(lambda: held(p.server) == (0,) * 3, timeout=3)
        asked = p.server.requests
        observer = asyncio.create_task(p.coap("-s", "2", "-A", "0", path="/pump/temp", timeout=3))
        await wait_for(lambda: p.server.requests > asked, timeout=3)  # registered
        assert held(p.server) == (1,) * 3
        p.device.set_value("input", 0, 230, DataType.INT16)
        assert (await observer)[1] == "21.523.0"


async def test_one_remote_holds_at_most_its_share_and_a_renewal_counts_once(
    simulator: Simulator, few_observations: None
) -> None:
    async with plant(simulator) as p:
        with connected(p) as greedy, connected(p) as same, connected(p, "127.0.0.2") as other:
            tokens = [b"t%d" % n for n in range(2 * OBSERVE_PER_REMOTE)]
            accepted = [await register(greedy, n, token) for n, token in enumerate(tokens)]
            assert accepted == [True] * OBSERVE_PER_REMOTE + [False] * OBSERVE_PER_REMOTE
            # the same tokens again: renewals of the ones held (RFC 7641 section 4.1), no more
            for n, token in enumerate(tokens):
                assert await register(greedy, 100 + n, token) is (n < OBSERVE_PER_REMOTE)
            await wait_for(lambda: held(p.server) == (OBSERVE_PER_REMOTE,) * 3, timeout=3)
            # another socket of the same host is that host still; another host is served
            assert not await register(same, 1, b"s0")
            assert await register(other, 1, b"t0")
            assert held(p.server) == (OBSERVE_PER_REMOTE + 1,) * 3
            status = p.server.status()
            assert (status["observations"], status["observe_refused"]) == (6, 11)


async def test_a_cancelled_observation_frees_its_slot(
    simulator: Simulator, few_observations: None
) -> None:
    """Cancelled by a GET with Observe 1 and by an RST to a notification; the counts follow
    aiocoap's, and a new registration is accepted after."""
    async with plant(simulator) as p:
        with connected(p) as sock:
            tokens = [b"c%d" % n for n in range(OBSERVE_PER_REMOTE)]
            assert all([await register(sock, n, token) for n, token in enumerate(tokens)])
            assert not await register(sock, 10, b"late")  # full, for this remote
            assert not await register(sock, 11, tokens[0], observe=1)  # deregistered
            await wait_for(lambda: held(p.server) == (OBSERVE_PER_REMOTE - 1,) * 3, timeout=3)
            assert await register(sock, 12, b"late")  # its slot, taken again
            assert not await register(sock, 13, b"later")
            # a change: a CON notification to each; an RST to one of them ends it
            p.device.set_value("input", 0, 230, DataType.INT16)
            loop = asyncio.get_running_loop()
            notification = aiocoap.Message.decode(
                await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
            )
            assert notification.opt.observe is not None and notification.payload == b"23.0"
            rst = bytes([0x70, 0]) + notification.mid.to_bytes(2, "big")
            await loop.sock_sendto(sock, rst, sock.getpeername())
            await wait_for(lambda: held(p.server) == (OBSERVE_PER_REMOTE - 1,) * 3, timeout=3)
            late = con(1, 14, b"later", ("pump", "temp"), observe=0) + ACCEPT_TEXT
            await loop.sock_sendto(sock, late, sock.getpeername())

            async def answered() -> aiocoap.Message:  # past the other notifications still coming
                while True:
                    reply = aiocoap.Message.decode(await loop.sock_recv(sock, 2048))
                    if reply.mid == 14:
                        return reply

            reply = await asyncio.wait_for(answered(), 5)
            assert reply.opt.observe is not None and reply.payload == b"23.0"
            assert held(p.server) == (OBSERVE_PER_REMOTE,) * 3
        assert p.server.status()["observe_refused"] == 2


async def test_the_limits_are_config_keys(simulator: Simulator) -> None:
    """A site with more legitimate traffic than the defaults allow (300 PUTs a second waited
    seconds each once 10,000 were remembered) raises them in the config."""
    keys = ", max_request_rate: 50, max_exchanges: 7, max_observations: 9"
    async with plant(simulator, server=keys + ", max_observations_per_client: 3") as p:
        limits = p.server.limits
        assert limits is not None
        assert (limits.rate, limits.burst, limits.limits) == (50, 50, {True: 7, False: 7})
        assert (p.server.observing.total, p.server.observing.per_remote) == (9, 3)


def test_a_request_rate_below_one_is_refused() -> None:
    """Its token bucket would never hold a whole token: every request dropped as a flood."""
    from pydantic import ValidationError

    from protocols.coap.config import CoapServer

    assert CoapServer.model_validate({"max_request_rate": 1}).max_request_rate == 1
    with pytest.raises(ValidationError, match="max_request_rate"):
        CoapServer.model_validate({"max_request_rate": 0.5})
