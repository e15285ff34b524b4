"""The CoAP server's DTLS sessions end when idle (``security.dtls.idle_timeout``), judged by
libcoap's coap-client (OpenSSL) and a raw ClientHello; and our client shakes hands again when
the server closes its session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest
from conftest import HOST, wait_for
from test_coap_client import bad, client, values
from test_coap_dtls import BOB_KEY_HEX, KEY, coaps, dtls_plant, dtls_server, validate
from test_coap_server import Plant, coap_client, config

from protocols.coap import dtls
from protocols.modbus.simulator import Simulator


def expired(p: Plant) -> int:
    return int(p.server.status()["dtls"]["sessions_expired"])


def held(p: Plant) -> int:
    return int(p.server.status()["dtls"]["sessions"])


def connected(p: Plant) -> int:
    """Sessions whose handshake finished."""
    table = dtls._server_table(p.server._context)
    return sum(session.connected for session in table._connections.values())


@contextlib.asynccontextmanager
async def repeating_client(port: int, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """coap-client (alice) GETting /pump/temp as text, with ``args`` (-G: repeat each second)."""
    proc = await asyncio.create_subprocess_exec(
        coap_client(), "-B", "30", "-w", "-A", "0", "-u", "alice", "-k", KEY, *args,
        f"coaps://{HOST}:{port}/pump/temp",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def client_hello() -> bytes:
    """A DTLS 1.2 ClientHello (RFC 6347 4.2.2) offering TLS_PSK_WITH_AES_128_CCM_8, no cookie."""
    body = (
        b"\xfe\xfd" + os.urandom(32)  # client_version, random
        + b"\x00" + b"\x00"  # session_id, cookie: empty
        + b"\x00\x02\xc0\xa8"  # cipher_suites: TLS_PSK_WITH_AES_128_CCM_8
        + b"\x01\x00"  # compression_methods: null
    )  # fmt: skip
    size = len(body).to_bytes(3, "big")
    handshake = b"\x01" + size + b"\x00\x00" + b"\x00\x00\x00" + size + body
    # content type handshake, DTLS 1.2, epoch 0, sequence number 0
    return b"\x16\xfe\xfd" + bytes(8) + len(handshake).to_bytes(2, "big") + handshake


@contextlib.asynccontextmanager
async def stranger(port: int) -> AsyncIterator[socket.socket]:
    """A UDP socket that sent one ClientHello to ``port`` and got the server's first answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((HOST, port))
        sock.send(client_hello())
        answer = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 512), 10)
        # a HelloVerifyRequest (a handshake record of type 3): the handshake is under way
        assert answer[0] == 0x16 and answer[13] == 3, answer.hex()
        yield sock


async def test_a_vanished_clients_session_ends_after_idle_timeout(simulator: Simulator) -> None:
    async with dtls_plant(simulator, more=", idle_timeout: 1") as (p, port):
        async with repeating_client(port, "-G", "20") as proc:
            await wait_for(lambda: p.server.requests >= 1, timeout=10)
            proc.kill()  # gone without close_notify
        assert held(p) == 1 and connected(p) == 1
        await wait_for(lambda: expired(p) == 1 and held(p) == 0, timeout=10)
        # a new client is served (a new handshake)
        assert (await coaps(p, port, "-A", "0", path="/pump/temp"))[1] == "21.5"


CLOSE_NOTIFY = "alert read:warning:close notify"  # coap-client's log line (-v 6) for one


def answers(out: bytes) -> list[str]:
    """The values coap-client printed (-w), without its log lines."""
    return [line for line in out.decode().splitlines() if line == "21.5"]


async def test_a_client_still_there_is_told_with_close_notify(simulator: Simulator) -> None:
    """Idle, or over max_sessions, the session ends with close_notify; coap-client then quits
    (its own choice): it got the first answer and not the second, a second later."""
    async with dtls_plant(simulator, more=", idle_timeout: 0.2") as (p, port):
        async with repeating_client(port, "-G", "5", "-v", "6") as proc:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert answers(out) == ["21.5"] and CLOSE_NOTIFY in out.decode()
        assert expired(p) >= 1
    async with dtls_plant(simulator, more=", max_sessions: 1") as (p, port):
        async with repeating_client(port, "-G", "5", "-v", "6") as proc:
            await wait_for(lambda: p.server.requests >= 1, timeout=10)
            async with stranger(port):  # takes the only place
                out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert CLOSE_NOTIFY in out.decode()
        assert expired(p) == 0


async def test_an_unfinished_handshake_ends_sooner_than_a_session(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dtls, "HANDSHAKE_TIMEOUT", 0.5)
    async with dtls_plant(simulator, more=", idle_timeout: 600") as (p, port):
        async with repeating_client(port, "-G", "20") as proc:
            await wait_for(lambda: p.server.requests >= 1, timeout=10)
            proc.kill()
        async with stranger(port):
            assert held(p) == 2
            # the handshake ends; the finished session, silent as long, stays
            await wait_for(lambda: expired(p) == 1 and held(p) == 1, timeout=10)
            assert connected(p) == 1


async def test_a_half_open_handshake_ends_by_idle_timeout_when_shorter(
    simulator: Simulator,
) -> None:
    async with dtls_plant(simulator, more=", idle_timeout: 0.5") as (p, port):
        async with stranger(port):
            assert held(p) == 1 and connected(p) == 0
            await wait_for(lambda: expired(p) == 1 and held(p) == 0, timeout=10)


async def test_an_active_client_and_a_quiet_observer_are_not_expired(
    simulator: Simulator,
) -> None:
    async with dtls_plant(simulator, more=", idle_timeout: 3") as (p, port):
        # a request a second, five times, on one session
        async with repeating_client(port, "-G", "5") as proc:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert answers(out) == ["21.5"] * 5
        assert expired(p) == 0
    async with dtls_plant(simulator, more=", idle_timeout: 0.3") as (p, port):
        # an observer of a value that does not change is silent, yet holds its observation
        async with repeating_client(port, "-s", "3") as proc:
            await wait_for(lambda: p.server.observing.held() == 1, timeout=10)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert answers(out) == ["21.5"]
        assert expired(p) == 0


async def test_our_client_shakes_hands_again_when_the_server_closes_its_session(
    simulator: Simulator,
) -> None:
    """The server ends the session between two polls (close_notify); the next poll shakes
    hands again at once instead of timing out on the session the server forgot."""
    async with dtls_plant(simulator, more=", idle_timeout: 0.3") as (p, port):
        cfg = {
            "url": f"coaps://{HOST}:{port}",
            "timeout": 10,
            "security": {"dtls": {"identity": "bob", "key_hex": BOB_KEY_HEX}},
            "points": [{"name": "level", "path": "pump/level", "poll": 1.0}],
        }
        async with client(cfg) as (_, seen):
            await wait_for(lambda: len(values(seen, "level")) >= 4, timeout=30)
            assert expired(p) >= 3
            assert not bad(seen, "level")


def test_idle_timeout_must_be_positive() -> None:
    [line] = validate(config(5020, 5683, dtls_server(5684, more=", idle_timeout: 0")))
    assert "endpoints.coap.security.dtls.idle_timeout:" in line and "expected a number > 0" in line
