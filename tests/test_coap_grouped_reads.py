"""Points that share a CoAP resource and are read alike are read by one request: one GET per
poll period, one Observe registration, one message per reading. Requests are counted at the
peer: libcoap's coap-server logs every PDU it receives with ``-v 7``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import HOST, find_binary, free_port, wait_for
from test_coap_client import bad, client, coap_put, coap_server, values

from gateway.types import Message


@contextlib.asynccontextmanager
async def logged_coap_server(port: int, log: Path) -> AsyncIterator[None]:
    """libcoap's coap-server (dynamic resources) logging each PDU it receives to ``log``."""
    binary = find_binary("coap-server-openssl", "/usr/bin/coap-server-openssl")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            binary, "-A", HOST, "-p", str(port), "-d", "10", "-v", "7",
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    await asyncio.sleep(0.3)
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def gets(log: Path, path: str, accept: str | None = None) -> int:
    """GETs without Observe that the server received for ``path`` (with that Accept)."""
    lines = log.read_text(errors="replace").splitlines()
    return sum(
        1
        for line in lines
        if " c:GET " in line
        and "Observe:" not in line
        and f"Uri-Path:{path} " in line.replace(",", " ").replace("]", " ")
        and (accept is None or f"Accept:{accept}" in line)
    )


def registrations(log: Path) -> int:
    return log.read_text(errors="replace").count("create new subscription")


def together(seen: list[Message], *points: str) -> list[Message]:
    """The messages holding a sample of every one of ``points``."""
    return [m for m in seen if set(points) <= {s.point for s in m.samples}]


def holding(seen: list[Message], point: str) -> list[Message]:
    return [m for m in seen if any(s.point == point for s in m.samples)]


def env_config(port: int, **common: Any) -> dict[str, Any]:
    """Two points, two fields of one JSON resource, read alike."""
    return {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "reconnect": {"initial": 0.1, "max": 0.5},
        "points": [
            {"name": "rh", "path": "/env", "format": "json", "field": "rh", **common},
            {"name": "co2", "path": "env", "format": "json", "field": "co2", **common},
        ],
    }


async def test_two_fields_of_one_polled_resource_are_one_get_and_one_message(
    tmp_path: Path,
) -> None:
    port, log = free_port(), tmp_path / "server.log"
    async with logged_coap_server(port, log):
        await coap_put(port, "/env", '{"rh": 40, "co2": 600}')
        async with client(env_config(port, poll=0.2)) as (_, seen):
            await wait_for(lambda: values(seen, "rh") and values(seen, "co2"))
            assert (values(seen, "rh")[0], values(seen, "co2")[0]) == (40.0, 600.0)
            before, read_before = gets(log, "env"), len(holding(seen, "rh"))
            await asyncio.sleep(1.0)
            requests, readings = gets(log, "env") - before, len(holding(seen, "rh")) - read_before
            # one GET per period (before: one per point, twice as many as readings)
            assert 2 <= requests <= 1.0 / 0.2 + 1, requests
            assert abs(requests - readings) <= 1, (requests, readings)
            # every reading is one message with both points
            assert holding(seen, "rh") == holding(seen, "co2") == together(seen, "rh", "co2")


async def test_a_missing_field_is_bad_once_while_the_other_stays_good() -> None:
    port = free_port()
    async with coap_server(port):
        await coap_put(port, "/env", '{"rh": 40}')
        async with client(env_config(port, poll=0.2)) as (adapter, seen):
            await wait_for(lambda: bad(seen, "co2") and values(seen, "rh"))
            [reason] = bad(seen, "co2")
            assert reason is not None and "'co2'" in reason, reason
            # the bad one and the good one were read from one response: one message
            assert together(seen, "rh", "co2")
            readings = len(values(seen, "rh"))
            await wait_for(lambda: len(values(seen, "rh")) >= readings + 3)
            assert len(bad(seen, "co2")) == 1  # once per outage, not every period
            assert adapter.status()["bad"] == ["co2"]
            await coap_put(port, "/env", '{"rh": 41, "co2": 650}')
            await wait_for(lambda: 650.0 in values(seen, "co2"))
            assert {s.point: s.value for s in together(seen, "rh", "co2")[-1].samples} == {
                "rh": 41.0, "co2": 650.0,
            }  # fmt: skip
            assert adapter.status()["bad"] == []


async def test_a_server_down_makes_the_group_bad_once_then_good_again() -> None:
    port = free_port()
    async with client(env_config(port, poll=0.2)) as (adapter, seen):
        async with coap_server(port):
            await coap_put(port, "/env", '{"rh": 40, "co2": 600}')
            await wait_for(lambda: values(seen, "rh") and values(seen, "co2"))
            up = len(seen)  # (before the server started both were bad already)
        await wait_for(lambda: bad(seen[up:], "rh") and bad(seen[up:], "co2"))
        # one failed GET: one message, both bad
        down = [m for m in seen[up:] if all(s.value is None for s in m.samples)]
        assert [{s.point for s in m.samples} for m in down] == [{"rh", "co2"}]
        await asyncio.sleep(1.0)  # five periods down
        assert (len(bad(seen[up:], "rh")), len(bad(seen[up:], "co2"))) == (1, 1)
        reason = bad(seen[up:], "rh")[0]
        assert reason is not None and reason.startswith(f"coap://{HOST}:{port}/env: network")
        assert adapter.status()["bad"] == ["co2", "rh"]
        async with coap_server(port):
            await coap_put(port, "/env", '{"rh": 42, "co2": 610}')
            await wait_for(lambda: 42.0 in values(seen, "rh") and 610.0 in values(seen, "co2"))
        assert adapter.status()["bad"] == []


async def test_two_points_observing_one_resource_register_once(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "server.log"
    async with logged_coap_server(port, log):
        await coap_put(port, "/env", '{"rh": 40, "co2": 600}')
        async with client(env_config(port)) as (adapter, seen):
            await wait_for(lambda: values(seen, "rh") and values(seen, "co2"))
            await coap_put(port, "/env", '{"rh": 45, "co2": 700}')  # libcoap notifies on PUT
            await wait_for(lambda: 45.0 in values(seen, "rh") and 700.0 in values(seen, "co2"))
            assert registrations(log) == 1  # before: one per point
            assert {s.point: s.value for s in together(seen, "rh", "co2")[-1].samples} == {
                "rh": 45.0, "co2": 700.0,
            }  # fmt: skip
            assert holding(seen, "rh") == holding(seen, "co2")
            assert (adapter.registrations, adapter.notifications) == (1, 1)


async def test_points_read_differently_from_one_path_keep_their_own_requests(
    tmp_path: Path,
) -> None:
    port, log = free_port(), tmp_path / "server.log"
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "points": [
            {"name": "fast", "path": "/v", "format": "json", "poll": 0.2},
            {"name": "fast_int", "path": "v", "format": "json", "poll": 0.2, "type": "int32"},
            {"name": "slow", "path": "/v", "format": "json", "poll": 0.5},
            {"name": "text", "path": "/v", "format": "text", "poll": 0.2},
        ],
    }
    async with logged_coap_server(port, log):
        await coap_put(port, "/v", "40")  # JSON and text alike
        async with client(cfg) as (_, seen):
            names = ("fast", "fast_int", "slow", "text")
            await wait_for(lambda: all(values(seen, n) for n in names))
            assert [values(seen, n)[0] for n in names] == [40.0, 40, 40.0, 40.0]
            json, text = gets(log, "v", "application/json"), gets(log, "v", "text/plain")
            await asyncio.sleep(1.0)
            json, text = (
                gets(log, "v", "application/json") - json,
                gets(log, "v", "text/plain") - text,
            )
            # the 0.2 s JSON pair once per period plus the 0.5 s one; text on its own
            assert 3 <= json <= 5 + 1 + 2 + 1, json
            assert 2 <= text <= 5 + 1, text
            for point in ("slow", "text"):
                assert all(len(m.samples) == 1 for m in holding(seen, point)), point
            assert holding(seen, "fast") == together(seen, "fast", "fast_int")
            assert all(len(m.samples) == 2 for m in holding(seen, "fast"))
