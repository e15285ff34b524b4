"""A tiny ldjson device for tests and demos: sends its points' values every ``period`` seconds
and applies writes to points named writable, answering each with an ack line.

    async with Device({"temp": 21.5, "sp": 40.0}, writable={"sp"}) as device:
        print(device.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any


class Device:
    def __init__(
        self,
        values: dict[str, Any],
        *,
        writable: set[str] | frozenset[str] = frozenset(),
        host: str = "127.0.0.1",
        port: int = 0,
        period: float = 0.1,
    ) -> None:
        self.values = dict(values)
        self.writable = set(writable)
        self.host = host
        self.port = port
        self.period = period
        self.written: list[tuple[str, Any]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Device:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sender = asyncio.create_task(self._send_values(writer))
        try:
            while line := await reader.readline():
                request = json.loads(line)
                point, ok = request.get("write"), False
                if point in self.writable:
                    self.values[point] = request.get("value")
                    self.written.append((point, request.get("value")))
                    ok = True
                answer: dict[str, Any] = {"ack": point, "ok": ok}
                if not ok:
                    answer["error"] = f"{point!r} is not writable"
                writer.write(json.dumps(answer).encode() + b"\n")
        except (OSError, ValueError):
            pass
        finally:
            sender.cancel()
            writer.close()
            self._tasks.discard(task)

    async def _send_values(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                for point, value in self.values.items():
                    line = {"point": point, "value": value, "ts": time.time()}
                    writer.write(json.dumps(line).encode() + b"\n")
                await writer.drain()
                await asyncio.sleep(self.period)
