"""The ldjson client adapter: one TCP connection to a device, readings in, writes out.

The wire: the device sends ``{"point": "temp", "value": 21.5, "ts": 1714564800.25}`` lines; a
write is a ``{"write": "sp", "value": 40}`` line, answered by ``{"ack": "sp", "ok": true}`` (or
``"ok": false, "error": "..."``). ``ts`` is optional (seconds since the epoch).

What every adapter does, in small: ``__aenter__`` does no I/O (a dead device is normal), ``run``
reconnects with backoff and never raises for a peer failure, the points go bad once per outage
(with the reason), writes go through `serve_commands` and fail at once while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from gateway.adapter import Adapter, AdapterContext
from gateway.backoff import BackoffTimer
from gateway.commands import WriteRefused, WriteStatus, serve_commands
from gateway.types import Message, PointSpec, Quality, Sample, Value
from ldjson_protocol.config import LdjsonDevice

log = logging.getLogger(__name__)


class LdjsonAdapter(Adapter):
    config: LdjsonDevice

    # The type /metrics gives bad_lines (connected and received are typed by the gateway).
    metric_kinds = {"bad_lines": "counter"}

    def __init__(self, name: str, config: LdjsonDevice, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self._types = {p.name: p.type for p in config.points}
        self._writer: asyncio.StreamWriter | None = None
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._write_lock = asyncio.Lock()
        self.connected = False
        self.received = 0
        self.bad_lines = 0
        self.last_error: str | None = None

    def points(self) -> list[PointSpec]:
        return [
            PointSpec(
                id=f"{self.name}/{p.name}",
                name=p.name,
                datatype=p.type,
                unit=p.unit,
                access=p.access,
                description=p.description,
                low=p.low,
                high=p.high,
            )
            for p in self.config.points
        ]

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "received": self.received,
            "bad_lines": self.bad_lines,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_connected())
            if any(p.access.writable for p in self.config.points):
                tg.create_task(serve_commands(self.bus, self.name, self.write))

    async def _keep_connected(self) -> None:
        cfg = self.config
        backoff = BackoffTimer(cfg.reconnect)
        while True:
            try:
                async with asyncio.timeout(cfg.timeout):
                    reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
            except (OSError, TimeoutError) as exc:
                self._lost(f"cannot connect to {cfg.host}:{cfg.port}: {exc or 'timeout'}")
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            self._writer, self.connected, self.last_error = writer, True, None
            log.info("ldjson %s: connected to %s:%d", self.name, cfg.host, cfg.port)
            try:
                await self._read(reader)
                reason = "device closed the connection"
            except OSError as exc:
                reason = f"connection lost: {exc}"
            finally:
                self._writer = None
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self._lost(reason)
            await asyncio.sleep(backoff.next_delay())

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            self.received += 1
            try:
                data = json.loads(line)
                if "ack" in data:
                    future = self._acks.pop(str(data["ack"]), None)
                    if future is not None and not future.done():
                        future.set_result(data)
                    continue
                point = str(data["point"])
                value = _typed(data["value"], self._types[point])
                ts = float(data.get("ts") or time.time())
            except (ValueError, KeyError, TypeError) as exc:
                self.bad_lines += 1
                log.debug("ldjson %s: bad line %r: %s", self.name, line, exc)
                continue
            now = time.time()
            sample = Sample(point, value, Quality.GOOD, ts, now, self._unit(point))
            self.bus.publish_nowait(Message.telemetry(self.name, (sample,)))

    def _unit(self, point: str) -> str | None:
        return next(p.unit for p in self.config.points if p.name == point)

    def _lost(self, reason: str) -> None:
        """Once per outage: every point bad, with the reason; pending writes unreachable."""
        was_up = self.connected or self.last_error is None
        self.connected, self.last_error = False, reason
        for future in self._acks.values():
            if not future.done():
                future.set_exception(WriteRefused(WriteStatus.UNREACHABLE, reason))
        self._acks.clear()
        if was_up:
            log.warning("ldjson %s: %s", self.name, reason)
            now = time.time()
            samples = tuple(
                Sample(p.name, None, Quality.BAD, now, now, p.unit, reason)
                for p in self.config.points
            )
            self.bus.publish_nowait(Message.telemetry(self.name, samples))

    async def write(self, point: str, value: Value) -> None:
        """Send a write line and wait for the device's ack (good only once it says ok)."""
        async with self._write_lock:  # one write in flight: acks name the point, not a request
            writer = self._writer
            if writer is None:
                raise WriteRefused(WriteStatus.UNREACHABLE, self.last_error or "not connected")
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._acks[point] = future
            writer.write(json.dumps({"write": point, "value": value}).encode() + b"\n")
            try:
                await writer.drain()
                async with asyncio.timeout(self.config.timeout):
                    ack = await future
            except TimeoutError:
                raise WriteRefused(WriteStatus.TIMEOUT, "no ack from the device") from None
            except OSError as exc:
                raise WriteRefused(WriteStatus.UNREACHABLE, str(exc)) from None
            finally:
                self._acks.pop(point, None)
            if ack.get("ok") is not True:
                raise WriteRefused(WriteStatus.DEVICE_ERROR, str(ack.get("error", "refused")))

    async def __aexit__(self, *exc: object) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _typed(value: Any, datatype: str) -> Value:
    if datatype == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{value!r} is not a bool")
        return value
    if datatype == "string":
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return int(value) if datatype == "int32" else float(value)
