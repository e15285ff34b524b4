"""A rate- and delay-limiting TCP proxy on loopback, in asyncio (a test helper).

Client -> server bytes go through a serial link of ``rate`` bytes/s (changeable while it runs)
and arrive ``delay`` seconds after their last byte left; server -> client bytes are delayed
only. Reads are never refused, so a slow link shows up as queueing delay (a growing RTT), the
way a cellular modem's deep buffers do. Leaving the proxy delivers what it has already read,
then closes each side, as a link that is switched off gracefully would: cutting bytes still
on the wire (a DISCONNECT, say) would make the broker publish a will the client never left.
"""

from __future__ import annotations

import asyncio
import contextlib


class ShapingProxy:
    def __init__(
        self, target_port: int, *, rate: float, delay: float, host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.target_port = target_port
        self.rate = rate
        self.delay = delay
        self.port = 0
        self.bytes_up = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.Task[None]] = set()
        self._queues: list[asyncio.Queue[tuple[float, bytes]]] = []
        self._link_free = 0.0

    async def __aenter__(self) -> ShapingProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        for q in self._queues:  # an end of stream behind what each direction still carries
            q.put_nowait((loop.time(), b""))
        if self._writers:
            await asyncio.wait(list(self._writers), timeout=self.delay + 2.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def _spawn(self, coro: object, *, writer: bool = False) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if writer:
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        up_q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        down_q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._queues += [up_q, down_q]
        self._spawn(self._read(reader, up_q, shaped=True))
        self._spawn(self._write(up_q, up_w), writer=True)
        self._spawn(self._read(up_r, down_q, shaped=False))
        self._spawn(self._write(down_q, writer), writer=True)

    async def _read(
        self, reader: asyncio.StreamReader, q: asyncio.Queue[tuple[float, bytes]], *, shaped: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(4096)
            now = loop.time()
            if not data:
                await q.put((now, b""))
                return
            if shaped:
                self.bytes_up += len(data)
                self._link_free = max(now, self._link_free) + len(data) / self.rate
                await q.put((self._link_free + self.delay, data))
            else:
                await q.put((now + self.delay, data))

    async def _write(
        self, q: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await q.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    return
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
