"""Sparkplug peers we did not write, as test helpers: Eclipse Tahu's JavaScript host codec
(tests/interop/node/sparkplug_host.js) and edge node client (sparkplug_edge.js), each a node
process that reads JSON commands on stdin and prints one JSON object per line; a TCP proxy
that cuts the gateway's broker connection alone, and `gateway run` as a process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, NODE_DIR, free_port

from protocols.modbus.simulator import SimulatedDevice

GROUP, NODE = "plant1", "edge-01"
GATEWAY = [sys.executable, "-m", "gateway"]
Msg = dict[str, Any]


class NodeScript:
    """A node script's process: every line it printed, and JSON commands to send it."""

    def __init__(self, script: str, *args: str) -> None:
        node = shutil.which("node")
        package = "sparkplug-client" if script == "sparkplug_edge.js" else "sparkplug-payload"
        if node is None or not (NODE_DIR / "node_modules" / package).is_dir():
            pytest.fail(f"node or {package} missing in {NODE_DIR}: run scripts/install-peers.sh")
        self.proc = subprocess.Popen(
            [node, str(NODE_DIR / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[Msg] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(json.loads(line))

    def printed(self) -> list[Msg]:
        with self._lock:
            return list(self.lines)

    def ready(self) -> bool:
        return any(m.get("ready") for m in self.printed())

    def send(self, command: Msg) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Host(NodeScript):
    """The Tahu JS host script: every message it decoded, and commands to send."""

    def __init__(self, port: int, primary: str | None = None) -> None:
        super().__init__("sparkplug_host.js", str(port), HOST, *([primary] if primary else []))

    def messages(self, kind: str | None = None, device: str | None = None) -> list[Msg]:
        return [
            m
            for m in self.printed()
            if "type" in m
            and (kind is None or m["type"] == kind)
            and (device is None or m["device"] == device)
        ]

    def command(self, **command: Any) -> None:
        self.send({"group": GROUP, "node": NODE, **command})


class Edge(NodeScript):
    """The Tahu JS edge node (sparkplug-client): births given at start, then commands; the
    DCMD and NCMD it received are among what it printed (``events``)."""

    def __init__(self, port: int, group: str, node: str, births: Msg) -> None:
        super().__init__("sparkplug_edge.js", str(port), group, node, HOST)
        self.send(births)

    def events(self, kind: str) -> list[Msg]:
        return [m for m in self.printed() if m.get("event") == kind]

    def reborn(self) -> int:
        """Births published again on a rebirth request (NCMD)."""
        return sum(1 for m in self.printed() if m.get("sent") == "rebirth")


class Proxy:
    """TCP between the gateway and the broker; ``down()`` refuses and cuts connections, so the
    gateway loses its broker while the host stays subscribed; ``black_hole``: what either side
    sends is dropped, the connections left open (a link that died without a word)."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.black_hole = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, self.port, reuse_address=True)

    async def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    if self.black_hole:
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``gateway run config`` for the test's time. Its log is read all along (a pipe nobody
    reads fills at 64 KiB and then blocks the gateway's logging, and with it its loop); the
    last lines are printed at the end, which pytest shows for a failed test."""
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY, "run", str(config), stderr=asyncio.subprocess.PIPE
    )
    tail: collections.deque[bytes] = collections.deque(maxlen=4)
    assert proc.stderr is not None
    reader = asyncio.create_task(_collect(proc.stderr, tail))
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader
        print("gateway run's log, its end:\n" + b"".join(tail)[-4000:].decode(errors="replace"))


async def _collect(stream: asyncio.StreamReader, tail: collections.deque[bytes]) -> None:
    while chunk := await stream.read(1 << 16):
        tail.append(chunk)


def write_config(
    path: Path,
    broker_port: int,
    plc: SimulatedDevice,
    *,
    more: str = "",
    keep: str = "buffer: 1000",
) -> Path:
    """A gateway polling ``plc`` every 0.1 s, its points bridged to an edge node; ``keep``: how
    the node keeps telemetry while disconnected, ``more``: lines added to the endpoint."""
    path.write_text(
        f"""
gateway: {{name: gw-sparkplug}}
devices:
  plc:
    protocol: modbus
    host: {HOST}
    port: {plc.port}
    timeout: 0.3
    reconnect: {{initial: 0.05, max: 0.2}}
    poll_groups: {{fast: {{interval: 0.1}}}}
    points:
      - {{name: temp, table: holding, address: 0, type: int16, unit: degC, poll: fast}}
      - {{name: total, table: holding, address: 2, type: uint32, poll: fast}}
      - {{name: offset, table: holding, address: 4, type: int32, poll: fast}}
      - {{name: flow, table: holding, address: 6, type: float32, poll: fast}}
      - {{name: big, table: holding, address: 8, type: int64, poll: fast}}
      - {{name: running, table: coil, address: 0, poll: fast}}
      - {{name: model, table: holding, address: 20, type: string, length: 4, poll: fast}}
      - {{name: setpoint, table: holding, address: 30, type: uint16, access: rw, poll: fast}}
endpoints:
  ignition:
    protocol: sparkplug
    host: {HOST}
    port: {broker_port}
    group: {GROUP}
    node: {NODE}
    keepalive: 5
    reconnect: {{initial: 0.1, max: 0.3}}
    {keep}
{more}
bridges:
  - {{name: up, from: plc, to: ignition}}
"""
    )
    return path
