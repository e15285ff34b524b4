"""coaps:// (DTLS 1.2, pre-shared keys) for the CoAP client and server, judged by libcoap's
coap-server and coap-client (OpenSSL builds), peers we did not write."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, free_port, wait_for
from test_coap_client import bad, client, coap_server, values
from test_coap_server import Plant, config, plant, run_coap_client

from gateway.config import ConfigError, load_config_text
from protocols.coap.config import CoapClient
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

KEY = "secretPSK123"  # 12 bytes: within tinydtls' 16
BOB_KEY_HEX = "0102030405060708090a0b0c0d0e0f10"


def client_config(port: int, key: str = KEY, **more: Any) -> dict[str, Any]:
    return {
        "url": f"coaps://{HOST}:{port}",
        "timeout": 2,
        "reconnect": {"initial": 0.1, "max": 0.5},
        "security": {"dtls": {"identity": "gateway", "key": key}},
        **more,
    }


# -- the client, against libcoap's coap-server -k (coaps on its port + 1)


async def test_client_observes_polls_and_writes_libcoap_over_dtls() -> None:
    port = free_port()
    cfg = client_config(
        port + 1,
        points=[
            {"name": "clock", "path": "time", "type": "string"},
            {"name": "sp", "path": "/sp", "poll": 0.2, "access": "rw", "high": 100},
        ],
    )
    async with coap_server(port, "-k", KEY), client(cfg) as (adapter, seen):
        await wait_for(lambda: len(set(values(seen, "clock"))) >= 2, timeout=10)
        assert adapter.registrations >= 1
        # libcoap's -d creates /sp on the first PUT (2.01), then the poll reads it
        await adapter.write_and_read_back("sp", 12.5)
        await wait_for(lambda: 12.5 in values(seen, "sp"), timeout=5)
        await adapter.write_and_read_back("sp", 30.0)
        await wait_for(lambda: values(seen, "sp")[-1] == 30.0, timeout=5)


async def test_a_wrong_key_makes_the_points_bad_with_the_reason_others_go_on() -> None:
    port = free_port()
    points = [{"name": "clock", "path": "time", "type": "string", "poll": 0.3}]
    wrong = client_config(port + 1, key="not-the-key", points=points)
    right = client_config(port + 1, points=points)
    async with coap_server(port, "-k", KEY), client(wrong) as (failing, bad_seen):
        async with client(right) as (_, good_seen):
            await wait_for(lambda: bad(bad_seen, "clock"), timeout=10)
            reason = bad(bad_seen, "clock")[0] or ""
            assert reason.startswith(f"coaps://{HOST}:{port + 1}/time: DTLS handshake not")
            assert "wrong key for identity 'gateway'" in reason
            assert failing.status()["bad"] == ["clock"]
            assert failing.status()["last_error"] == reason
            assert not values(bad_seen, "clock")
            # the adapter with the right key, beside it, reads on
            await wait_for(lambda: len(values(good_seen, "clock")) >= 2, timeout=10)


async def test_a_session_the_server_forgot_is_ended_and_made_again() -> None:
    """A device that restarts (SIGKILL: no close_notify, and no request in between to draw an
    ICMP error) has forgotten the session; aiocoap would send on it for ever."""
    port = free_port()
    points = [{"name": "clock", "path": "time", "type": "string", "poll": 1.5}]
    async with client(client_config(port + 1, points=points)) as (adapter, seen):
        async with coap_server(port, "-k", KEY) as server:
            await wait_for(lambda: values(seen, "clock"), timeout=10)
            before = len(values(seen, "clock"))
            server.kill()
            await server.wait()
        async with coap_server(port, "-k", KEY):
            await wait_for(lambda: len(values(seen, "clock")) > before, timeout=20)
        assert adapter.status()["bad"] in ([], ["clock"])


# -- the server, judged by libcoap's coap-client -u IDENTITY -k KEY


def dtls_server(port: int, *, more: str = "", host: str = HOST) -> str:
    """The server's options (appended to test_coap_server's config) for coaps on ``port``:
    alice with a text key, bob with a hex one."""
    psk = f"[{{identity: alice, key: {KEY}}}, {{identity: bob, key_hex: '{BOB_KEY_HEX}'}}]"
    return f", security: {{dtls: {{port: {port}, psk: {psk}{more}}}}}"


async def coaps(
    p: Plant,
    dtls_port: int,
    *args: str,
    path: str,
    identity: str = "alice",
    key: str = KEY,
    timeout: float = 5,  # noqa: ASYNC109
) -> tuple[int, str]:
    return await run_coap_client(
        f"coaps://{HOST}:{dtls_port}{path}", "-u", identity, "-k", key, *args, timeout=timeout
    )


def answered(out: str) -> bool:
    """Whether coap-client printed a value or a response code (its log lines are neither)."""
    return any(
        line in ("21.5", "23.0") or line[:2] in ("2.", "4.", "5.") for line in out.splitlines()
    )


@contextlib.asynccontextmanager
async def dtls_plant(simulator: Simulator, **kwargs: Any) -> AsyncIterator[tuple[Plant, int]]:
    dtls_port = free_port()
    async with plant(simulator, dtls_server(dtls_port, **kwargs)) as p:
        yield p, dtls_port


async def test_server_get_observe_and_put_over_dtls(simulator: Simulator) -> None:
    async with dtls_plant(simulator) as (p, port):
        assert (await coaps(p, port, "-A", "0", path="/pump/temp"))[1] == "21.5"
        bob_key = bytes.fromhex(BOB_KEY_HEX).decode()  # coap-client takes the key as text
        _, out = await coaps(p, port, "-A", "50", path="/pump/level", identity="bob", key=bob_key)
        assert out == '{"level":42.5}'
        _, out = await coaps(p, port, "-m", "put", "-e", "55.5", "-t", "0", path="/pump/level")
        assert out == ""
        assert p.device.get_registers("holding", 20, 1) == [555]
        assert p.server.writes == {"good": 1}
        observer = asyncio.create_task(
            coaps(p, port, "-s", "4", "-A", "0", path="/pump/temp", timeout=5)
        )
        await wait_for(lambda: p.server.observing.held() == 1, timeout=5)
        assert p.server.status()["dtls"]["sessions"] == 1
        p.device.set_value("input", 0, 230, DataType.INT16)
        _, out = await observer
        assert out == "21.523.0"
        # each coap-client closed its session (close_notify): none is held
        await wait_for(lambda: p.server.status()["dtls"]["sessions"] == 0, timeout=5)
        # no plain CoAP on the DTLS port, nor on the plain port (plain_reads is off)
        for url_port in (port, p.port):
            _, out = await run_coap_client(
                f"coap://{HOST}:{url_port}/pump/temp", "-A", "0", timeout=2
            )
            assert not answered(out), out


async def test_wrong_keys_strangers_and_garbage_then_a_good_client_is_served(
    simulator: Simulator,
) -> None:
    async with dtls_plant(simulator, more=", max_sessions: 4") as (p, port):
        _, out = await coaps(p, port, "-A", "0", path="/pump/temp", key="wrongkey99", timeout=2)
        assert not answered(out), out
        _, out = await coaps(p, port, "-A", "0", path="/pump/temp", identity="mallory", timeout=2)
        assert not answered(out), out
        # garbage, a DTLS record header with nothing after it, and half a ClientHello, each
        # from its own address (port): more than max_sessions
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
        try:
            for i, sock in enumerate(senders):
                datagram = [os.urandom(64), b"\x16\xfe\xfd", b"\x16\xfe\xfd\x00\x00" + bytes(8)]
                sock.sendto(datagram[i % 3], (HOST, port))
            await wait_for(lambda: p.server.status()["dtls"]["sessions"] >= 4, timeout=5)
            assert p.server.status()["dtls"]["sessions"] <= 4
        finally:
            for sock in senders:
                sock.close()
        assert (await coaps(p, port, "-A", "0", path="/pump/temp"))[1] == "21.5"
        _, out = await coaps(p, port, "-m", "put", "-e", "60", "-t", "0", path="/pump/level")
        assert out == ""
        assert p.device.get_registers("holding", 20, 1) == [600]
        assert p.server.status()["dtls"]["sessions"] <= 4


async def test_plain_reads_serve_gets_but_writes_need_dtls(simulator: Simulator) -> None:
    async with dtls_plant(simulator, more=", plain_reads: true") as (p, port):
        assert await p.coap("-A", "0", path="/pump/temp") == (0, "21.5")
        _, out = await p.coap("-m", "put", "-e", "50", "-t", "0", path="/pump/level")
        assert out.startswith("4.01"), out
        assert p.device.get_registers("holding", 20, 1) == [425]
        _, out = await coaps(p, port, "-m", "put", "-e", "50", "-t", "0", path="/pump/level")
        assert out == ""
        assert p.device.get_registers("holding", 20, 1) == [500]


async def test_our_client_reads_and_writes_our_server_a_stranger_is_refused(
    simulator: Simulator,
) -> None:
    async with dtls_plant(simulator) as (p, port):
        cfg = {
            "url": f"coaps://{HOST}:{port}",
            "timeout": 3,
            "security": {"dtls": {"identity": "bob", "key_hex": BOB_KEY_HEX}},
            "points": [{"name": "level", "path": "pump/level", "access": "rw", "high": 100}],
        }
        async with client(cfg) as (adapter, seen):
            await wait_for(lambda: 42.5 in values(seen, "level"), timeout=10)
            await adapter.write_and_read_back("level", 61.0)
            assert p.device.get_registers("holding", 20, 1) == [610]
            await wait_for(lambda: values(seen, "level")[-1] == 61.0, timeout=5)
        stranger = {**cfg, "security": {"dtls": {"identity": "eve", "key_hex": BOB_KEY_HEX}}}
        async with client(stranger) as (adapter, seen):
            await wait_for(lambda: bad(seen, "level"), timeout=10)
            assert bad(seen, "level")[0] == (
                f"{cfg['url']}/pump/level: DTLS alert internal_error (80) ended the session"
                " (an unknown identity or a wrong key?)"
            )


# -- the config


def validate(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    return [str(p) for p in caught.value.problems]


def coap_client_yaml(url: str, security: str) -> str:
    return f"""
devices:
  dev:
    protocol: coap
    url: {url}
    security: {security}
    points: [{{name: t, path: temp}}]
"""


@pytest.mark.parametrize(
    ("url", "security", "where", "says"),
    [
        ("coaps://h", "{}", "devices.dev.security", "security.dtls (identity, key)"),
        ("coap://h", f"{{dtls: {{identity: a, key: {KEY}}}}}", "devices.dev.security.dtls", "a coaps:// url"),
        ("coaps://h", f"{{dtls: {{identity: '', key: {KEY}}}}}", "devices.dev.security.dtls.identity", "1 to 32 bytes"),
        ("coaps://h", f"{{dtls: {{identity: {'i' * 33}, key: {KEY}}}}}", "devices.dev.security.dtls.identity", "1 to 32 bytes"),
        ("coaps://h", "{dtls: {identity: a, key: k3y}}", "devices.dev.security.dtls.key", "8 to 16 bytes"),
        ("coaps://h", "{dtls: {identity: a, key: seventeen-bytes-x}}", "devices.dev.security.dtls.key", "tinydtls' limit"),
        ("coaps://h", "{dtls: {identity: a, key_hex: 'zz'}}", "devices.dev.security.dtls.key_hex", "hex digits"),
        ("coaps://h", "{dtls: {identity: a}}", "devices.dev.security.dtls", "exactly one of them"),
        ("coaps://h", "{dtls: {identity: a, key: 918273645}}", "devices.dev.security.dtls.key", "not shown (a secret)"),
        ("coaps://h", f"{{dtls: {{identity: a, key: {KEY}, key_hex: '{BOB_KEY_HEX}'}}}}", "devices.dev.security.dtls", "exactly one"),
    ],
)  # fmt: skip
def test_validate_refuses_bad_client_dtls(url: str, security: str, where: str, says: str) -> None:
    problems = validate(coap_client_yaml(url, security))
    [line] = [p for p in problems if f"{where}:" in p]
    assert says in line
    for secret in ("k3y", "seventeen-bytes-x", KEY, "918273645"):  # keys are never shown
        assert secret not in line


def test_validate_refuses_bad_server_dtls(tmp_path: Path) -> None:
    dup = ", security: {dtls: {psk: [{identity: a, key: secretPSK1}, {identity: a, key: secretPSK2}]}}"
    [line] = validate(config(5020, 5683, dup))
    assert "endpoints.coap.security.dtls.psk[1].identity:" in line and "used once" in line
    every = config(5020, 5683, dtls_server(5684)).replace(f"host: {HOST}", "host: '::'")
    [line] = validate(every)
    assert "endpoints.coap.host:" in line and "one address of this machine" in line
    oscore = f"{{sender_id: '01', recipient_id: '02', master_secret: '{BOB_KEY_HEX}'}}"
    both = config(5020, 5683, dtls_server(5684)[:-1] + f", oscore: {oscore}}}")
    assert any("endpoints.coap.security:" in p and "oscore or dtls" in p for p in validate(both))
    same_port = config(5020, 5683, dtls_server(5683, more=", plain_reads: true"))
    [line] = validate(same_port)
    assert "endpoints.coap.security.dtls.port:" in line


def test_a_dtls_server_does_not_warn_about_writes(tmp_path: Path) -> None:
    loaded = load_config_text(config(5020, 5683, dtls_server(5684)), check_adapters=True)
    assert not [w for w in loaded.warnings if "can write" in w]
    with_reads = config(5020, 5683, dtls_server(5684, more=", plain_reads: true"))
    assert not [w for w in load_config_text(with_reads).warnings if "can write" in w]


def test_the_key_is_text_or_hex() -> None:
    text = CoapClient.model_validate(client_config(5684, points=[{"name": "t", "path": "t"}]))
    assert text.security.dtls is not None and text.security.dtls.key_bytes() == KEY.encode()
    hexed = client_config(5684, points=[{"name": "t", "path": "t"}])
    hexed["security"] = {"dtls": {"identity": "gateway", "key_hex": BOB_KEY_HEX}}
    loaded = CoapClient.model_validate(hexed).security.dtls
    assert loaded is not None and loaded.key_bytes() == bytes.fromhex(BOB_KEY_HEX)
