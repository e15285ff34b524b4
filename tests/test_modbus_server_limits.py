"""The Modbus TCP server against clients that misbehave: one that pipelines requests and never
reads the answers, one burst of thousands of requests, a flood of malformed connections.

Real sockets on 127.0.0.1 against a whole gateway (`plant` of test_modbus_server); what the
server holds for a connection is read from its own state (the transport's write buffer, its
counters), not from the process's memory, which other tests make noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest
from conftest import HOST, wait_for
from test_modbus_server import HOLDING, LIMITED, lines, plant
from test_simulator import RawClient

import protocols.modbus.server as server_module
from protocols.modbus.frames import FrameDecoder, ReadRequest, build_frame, encode_request
from protocols.modbus.server import ModbusServerAdapter
from protocols.modbus.simulator import Simulator

MARK = 64 * 1024  # the server's high-water mark (server.HIGH_WATER), written out: the old
# code has none
READ = ReadRequest(HOLDING, 10, 8)  # flow, flow CDAB, level, total: a 25-byte response
ANSWER = 9 + 2 * READ.count


def requests(count: int, request: ReadRequest = READ) -> bytes:
    """``count`` pipelined requests, transaction ids 0, 1, 2..."""
    pdu = encode_request(request)
    return b"".join(build_frame(i & 0xFFFF, 1, pdu) for i in range(count))


def server_side(server: ModbusServerAdapter, sock: socket.socket) -> asyncio.Transport:
    """The server's transport for the client socket ``sock``."""
    port = sock.getsockname()[1]
    for connection in server._connections:
        transport = connection._transport
        if transport is not None and transport.get_extra_info("peername")[1] == port:
            return transport
    raise AssertionError(f"no server connection for client port {port}")


@contextlib.asynccontextmanager
async def non_reader(server: ModbusServerAdapter) -> AsyncIterator[socket.socket]:
    """A client socket that reads nothing until the test does. Both ends' kernel buffers are
    made small (on the server's socket too, which the test reaches into): else the kernel would
    absorb megabytes of answers before the server's own buffer sees one."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (HOST, server.port))
        await wait_for(lambda: len(server._connections) >= 1, message="connected")
        transport = await wait_for(lambda: server_side(server, sock))
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        yield sock
    finally:
        sock.close()


async def quiescent(server: ModbusServerAdapter, still: float = 0.3) -> int:
    """Wait until the server has served no request for ``still`` s; how many it served."""
    before = -1
    while (now := server.counters.requests) != before:
        before = now
        await asyncio.sleep(still)
    return now


async def test_a_client_that_does_not_read_is_paused_and_later_gets_every_answer(
    simulator: Simulator,
) -> None:
    sent = 10_000  # 250 KB of answers: several times the mark
    async with plant(simulator) as p, non_reader(p.server) as slow:
        loop = asyncio.get_running_loop()
        good = await RawClient.connect(p.port)
        try:
            base = p.server.counters.requests
            await asyncio.wait_for(loop.sock_sendall(slow, requests(sent)), 10)
            served = await quiescent(p.server) - base
            transport = server_side(p.server, slow)
            # the server stopped reading the slow client, holding at most one answer past the
            # mark: before, it answered all 10,000 into a buffer that grew without bound
            buffered = transport.get_write_buffer_size()
            assert buffered <= MARK + ANSWER, f"{buffered} bytes buffered, {served} answered"
            assert served < sent and not transport.is_reading()
            # another client is served at once meanwhile
            for _ in range(5):
                started = time.monotonic()
                assert await good.call(ReadRequest(HOLDING, 0, 1)) == [42]
                assert time.monotonic() - started < 2.0  # not held behind the slow client
            # the slow client reads at last: every answer, in order, and nothing else
            decoder = FrameDecoder()
            tids: list[int] = []
            async with asyncio.timeout(20):
                while len(tids) < sent:
                    data = await loop.sock_recv(slow, 65536)
                    assert data, f"closed after {len(tids)} answers"
                    for frame in decoder.feed(data):
                        assert frame.pdu[:2] == bytes((3, 2 * READ.count))
                        tids.append(frame.transaction_id)
            assert tids == list(range(sent))
            assert decoder.pending == 0
            assert transport.is_reading()
            assert await good.call(ReadRequest(HOLDING, 0, 1)) == [42]
        finally:
            await good.close()


async def test_a_client_that_never_reads_is_closed_after_idle_timeout(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle means no progress: requests that keep coming but are never served (their client
    does not read the answers) do not keep a connection open."""
    caplog.set_level(logging.INFO, logger="protocols.modbus.server")
    async with plant(simulator, LIMITED.format(64, 0.5)) as p, non_reader(p.server) as slow:
        loop = asyncio.get_running_loop()
        good = await RawClient.connect(p.port)
        try:
            await asyncio.wait_for(loop.sock_sendall(slow, requests(10_000)), 10)
            started = time.monotonic()

            async def trickle() -> None:  # a request every 0.1 s, as a poller would
                with contextlib.suppress(OSError):
                    while True:
                        await asyncio.wait_for(loop.sock_sendall(slow, requests(1)), 1)
                        await asyncio.sleep(0.1)

            task = asyncio.create_task(trickle())
            try:
                while p.server.status()["connections_idle_closed"] == 0:
                    assert time.monotonic() - started < 3, "the slow client is still open"
                    assert await good.call(ReadRequest(HOLDING, 0, 1)) == [42]
                    await asyncio.sleep(0.1)
            finally:
                task.cancel()
            assert lines(caplog, "has not read its responses for 0.5 s")
            assert p.server.status()["connections"] == 1  # the good one stays
        finally:
            await good.close()


def burst(port: int, count: int) -> int:
    """Send ``count`` requests in one write and read every answer; how many came."""
    pdu = encode_request(ReadRequest(HOLDING, 0, 1))
    data = b"".join(build_frame(i & 0xFFFF, 1, pdu) for i in range(count))
    decoder = FrameDecoder()
    answers = 0
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        while answers < count:
            received = sock.recv(65536)
            if not received:
                break
            answers += len(decoder.feed(received))
        sender.join()
    return answers


async def test_a_burst_of_pipelined_requests_lets_the_loop_run_between_slices(
    simulator: Simulator,
) -> None:
    sent = 20_000
    async with plant(simulator) as p:
        counters = p.server.counters
        steps: list[int] = []  # requests served per round of the event loop
        client = asyncio.create_task(asyncio.to_thread(burst, p.port, sent))
        before = counters.requests
        while not client.done():
            await asyncio.sleep(0)
            steps.append(counters.requests - before)
            before = counters.requests
        assert await client == sent
        # before: thousands of requests served in one callback, the loop blocked meanwhile
        assert max(steps) <= 4 * 64, sorted(steps)[-5:]


async def test_a_flood_of_malformed_connections_logs_a_few_lines_and_a_count(
    simulator: Simulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 3.0
    monkeypatch.setattr(server_module, "QUOTA_INTERVAL", interval, raising=False)
    caplog.set_level(logging.INFO, logger="protocols.modbus.server")
    bad = bytes.fromhex("0001 0007 0000 01 03")  # protocol id 7
    flood = 200
    async with plant(simulator) as p:
        started = time.monotonic()
        for _ in range(flood):
            reader, writer = await asyncio.open_connection(HOST, p.port)
            writer.write(bad)
            await reader.read()  # closed by the server
            writer.close()
        await wait_for(lambda: p.server.status()["frame_errors"] == flood, message="all closed")
        # usually one interval; a loaded box may take more, each with its own 5 lines
        windows = 1 + int((time.monotonic() - started) // interval)
        closing = lines(caplog, "protocol id 7")
        # the first window's QUOTA lines always; without the quota it would be all 200
        quota = server_module.QUOTA
        assert quota <= len(closing) <= quota * windows, f"{len(closing)} lines: {closing[:3]}"

        def counted() -> list[str] | None:
            said = lines(caplog, "connections closed for a malformed request: ")
            more = [int(re.search(r"request: (\d+) more", line)[1]) for line in said]  # type: ignore[index]
            return said if sum(more) == flood - len(closing) else None

        # non-empty once they add up to every line not logged (`counted`)
        count = await wait_for(counted, timeout=3 * interval, message="the count lines")
        assert len(count) <= windows, count  # at most one per window, not one per connection
        assert count[-1].endswith(f" more in the last {interval:g} s, not logged one by one")
        # the next bad client, after the flood, has its own line again
        caplog.clear()
        reader, writer = await asyncio.open_connection(HOST, p.port)
        writer.write(bad)
        await reader.read()
        writer.close()
        assert len(lines(caplog, "protocol id 7")) == 1
        assert p.server.status()["frame_errors"] == flood + 1
