"""The OPC UA client adapter against a node-opcua server (an OPC UA stack we did not write).

The peer is ``tests/interop/node/opcua_server.js``, started on 127.0.0.1 and a free port; it takes
commands on stdin (set a value, with a source timestamp or a status) and reports client writes on
stdout, so every assertion here is about what crossed the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, NODE_DIR, free_port, node_binary, wait_for

from gateway import runtime
from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.commands import WriteRefused, WriteStatus
from gateway.config import load_config_text
from gateway.config.common import Backoff
from gateway.runtime import Gateway
from gateway.types import Message, Quality, Sample
from protocols.opcua.client import OpcuaClientAdapter
from protocols.opcua.config import OpcuaClient

SERVER_JS = NODE_DIR / "opcua_server.js"
NODES = {
    "Temp": "ns=1;s=Plant.Boiler.Temp",
    "Counter": "ns=1;s=Plant.Boiler.Counter",
    "Setpoint": "ns=1;s=Plant.Boiler.Setpoint",
    "Level": "ns=1;s=Plant.Boiler.Level",
    "Enabled": "ns=1;s=Plant.Boiler.Enabled",
    "Label": "ns=1;s=Plant.Boiler.Label",
}
FAST = {"initial": 0.05, "max": 0.5}  # reconnect backoff for tests


class NodeOpcuaServer:
    """The node-opcua peer as a child process; ``kill()`` and ``start()`` keep port and ids."""

    def __init__(
        self,
        pki: Path,
        log_file: Path,
        *,
        variables: int = 0,
        period: int = 1000,
        security: bool = False,
        users: str = "",
    ) -> None:
        self.node = node_binary()
        self.pki = pki
        self.log_file = log_file
        self.port = free_port()
        self.variables = variables
        self.period = period
        self.security = security
        self.users = users
        self.info: dict[str, Any] = {}
        self.written: list[tuple[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://{HOST}:{self.port}/peer"

    @property
    def certificate(self) -> Path:
        return Path(self.info["certificate"])

    async def start(self, *, counter_start: int = 0, patience: float = 30.0) -> None:
        args = {
            "--port": self.port,
            "--variables": self.variables,
            "--period": self.period,
            "--security": "on" if self.security else "off",
            "--pki": self.pki,
            "--counter-start": counter_start,
            "--users": self.users,
        }
        argv = [str(x) for pair in args.items() for x in pair]
        await self._spawn(SERVER_JS, argv, patience, "node-opcua server")

    async def _spawn(self, script: Path, argv: list[str], patience: float, what: str) -> None:
        """Start ``script`` with ``argv`` and wait for its ready line (fail with its log)."""
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                self.node, str(script), *argv, cwd=NODE_DIR,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(self.process, ready))
        try:
            self.info = await asyncio.wait_for(ready, patience)
        except (TimeoutError, EOFError):
            await self.kill()
            tail = self.log_file.read_text(errors="replace")[-3000:]
            pytest.fail(f"{what} did not start on port {self.port}:\n{tail}")

    async def _read(
        self, process: asyncio.subprocess.Process, ready: asyncio.Future[dict[str, Any]]
    ) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # node-opcua's own chatter
            if line.get("ready"):
                ready.set_result(line)
            elif "written" in line:
                self.written.append((line["written"], line["value"]))
            else:
                self._answers.put_nowait(line)
        if not ready.done():
            ready.set_exception(EOFError("exited"))

    async def command(self, **cmd: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.process.stdin.drain()
        answer = await asyncio.wait_for(self._answers.get(), 5)
        assert "error" not in answer, answer
        return answer

    async def set(self, name: str, value: Any, **extra: Any) -> None:
        await self.command(set=name, value=value, **extra)

    async def get(self, name: str) -> Any:
        return (await self.command(get=name))["value"]

    async def sessions(self) -> int:
        """How many sessions the server holds open now."""
        return int((await self.command(sessions=True))["sessions"])

    async def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything, like a crash or power loss."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@pytest.fixture(scope="session")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One node-opcua PKI for the plain tests: its certificate is made once (seconds)."""
    return tmp_path_factory.mktemp("node-pki")


@pytest.fixture
async def peer(shared_pki: Path, tmp_path: Path) -> AsyncIterator[NodeOpcuaServer]:
    server = NodeOpcuaServer(shared_pki, tmp_path / "node.log", period=100)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


class Collector:
    """Every sample the adapter published, per point."""

    def __init__(self, bus: Bus, device: str = "plc") -> None:
        self.messages: list[Message] = []
        self._sub = bus.subscribe(f"telemetry/{device}", maxsize=100_000, name="test")
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for message in self._sub:
            self.messages.append(message)

    def of(self, point: str) -> list[Sample]:
        return [s for m in self.messages for s in m.samples if s.point == point]

    def last(self, point: str) -> Sample | None:
        samples = self.of(point)
        return samples[-1] if samples else None

    def close(self) -> None:
        self._sub.close()
        self._task.cancel()


def client_config(url: str, points: list[dict[str, Any]], **extra: Any) -> OpcuaClient:
    body: dict[str, Any] = {
        "url": url,
        "security": {"policy": "None", "mode": "None"},
        "timeout": 2.0,
        "reconnect": FAST,
        "subscription": {"publishing_interval": 0.1},
        "points": points,
    }
    body.update(extra)
    return OpcuaClient.model_validate(body)


@contextlib.asynccontextmanager
async def running(
    config: OpcuaClient, name: str = "plc"
) -> AsyncIterator[tuple[OpcuaClientAdapter, Collector]]:
    bus = Bus()
    adapter = OpcuaClientAdapter(name, config, AdapterContext(bus, "gw"))
    collector = Collector(bus, name)
    async with adapter:
        task = asyncio.create_task(adapter.run())
        try:
            yield adapter, collector
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert task.cancelled(), "run() ended by itself"
    collector.close()


def good_value(collector: Collector, point: str, expected: Any) -> Callable[[], bool]:
    def check() -> bool:
        s = collector.last(point)
        return s is not None and s.quality is Quality.GOOD and s.value == expected

    check.__name__ = f"{point} == {expected!r}"
    return check


# -- subscriptions --------------------------------------------------------------------------


async def test_points_by_node_id_and_browse_path_arrive_with_source_timestamps(
    peer: NodeOpcuaServer,
) -> None:
    config = client_config(
        peer.url,
        [
            {"name": "temp", "node_id": NODES["Temp"], "unit": "degC"},
            {"name": "temp_by_path", "browse_path": "1:Plant/1:Boiler/1:Temp"},
            {"name": "label", "browse_path": "1:Plant/1:Boiler/1:Label"},
            {"name": "enabled", "node_id": NODES["Enabled"]},
        ],
    )
    async with running(config) as (adapter, seen):
        await wait_for(good_value(seen, "temp", 20.0), 10)
        await wait_for(good_value(seen, "temp_by_path", 20.0), 5)
        await wait_for(good_value(seen, "label", "boiler one"), 5)
        await wait_for(good_value(seen, "enabled", False), 5)
        # Types come from the nodes' DataTypes once connected.
        types = {p.name: p.datatype for p in adapter.points()}
        assert types == {
            "temp": "float64",
            "temp_by_path": "float64",
            "label": "string",
            "enabled": "bool",
        }
        first = seen.last("temp")
        assert first is not None and first.unit == "degC"

        # A value with the device's own timestamp (2020-09-13T12:26:40Z) and one that is
        # uncertain: both cross unchanged.
        await peer.set("Temp", 23.5, ts=1_600_000_000_000)
        await wait_for(good_value(seen, "temp", 23.5), 5)
        s = seen.last("temp")
        assert s is not None and s.source_ts == 1_600_000_000.0
        assert s.gateway_ts > s.source_ts
        same = seen.last("temp_by_path")
        assert same is not None and same.value == 23.5 and same.source_ts == 1_600_000_000.0
        await peer.set("Temp", 24.0, status="UncertainLastUsableValue")
        await wait_for(lambda: seen.last("temp").quality is Quality.UNCERTAIN, 5)  # type: ignore[union-attr]
        s = seen.last("temp")
        assert s is not None and s.value == 24.0 and s.reason == "UncertainLastUsableValue"
        status = adapter.status()
        assert status["connected"] and status["items"] == 4 and status["url"] == peer.url


async def test_absolute_deadband_is_applied_by_the_server(peer: NodeOpcuaServer) -> None:
    config = client_config(
        peer.url,
        [
            {"name": "temp", "node_id": NODES["Temp"], "deadband": {"absolute": 1.0}},
            {"name": "raw", "node_id": NODES["Temp"]},
        ],
    )
    async with running(config) as (_, seen):
        await wait_for(good_value(seen, "temp", 20.0), 10)
        await peer.set("Temp", 20.5)  # inside the deadband
        await wait_for(good_value(seen, "raw", 20.5), 5)
        await peer.set("Temp", 25.0)  # outside
        await wait_for(good_value(seen, "temp", 25.0), 5)
        await wait_for(good_value(seen, "raw", 25.0), 5)
        assert [s.value for s in seen.of("temp")] == [20.0, 25.0]
        assert [s.value for s in seen.of("raw")] == [20.0, 20.5, 25.0]


async def test_percent_deadband_the_server_refuses_is_applied_here(
    peer: NodeOpcuaServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Temp has no EURange, so node-opcua refuses a percent deadband on it; the adapter creates
    # the item without the filter and applies the same deadband (10 % of low..high) itself.
    caplog.set_level(logging.INFO, logger="protocols.opcua.client")
    config = client_config(
        peer.url,
        [
            {
                "name": "temp",
                "node_id": NODES["Temp"],
                "deadband": {"percent": 10},
                "low": 0,
                "high": 100,
            },
            {"name": "raw", "node_id": NODES["Temp"]},
        ],
    )
    async with running(config) as (adapter, seen):
        await wait_for(good_value(seen, "temp", 20.0), 10)
        assert adapter.status()["items"] == 2
        await peer.set("Temp", 25.0)  # 5 % of the range
        await wait_for(good_value(seen, "raw", 25.0), 5)
        await peer.set("Temp", 35.0)  # 15 %
        await wait_for(good_value(seen, "temp", 35.0), 5)
        assert [s.value for s in seen.of("temp")] == [20.0, 35.0]
    assert "refused the deadband filter" in caplog.text


async def test_2000_items_are_created_in_batches_and_all_deliver(
    shared_pki: Path, tmp_path: Path
) -> None:
    server = NodeOpcuaServer(shared_pki, tmp_path / "node.log", variables=2000, period=1000)
    await server.start()
    try:
        points = [{"name": f"v{i}", "node_id": f"ns=1;s=v{i}"} for i in range(2000)]
        config = client_config(
            server.url,
            points,
            subscription={"publishing_interval": 0.2, "batch_size": 300},
        )
        async with running(config) as (adapter, seen):

            def all_delivered() -> int:
                names = {s.point for m in seen.messages for s in m.samples if s.quality == "good"}
                return len(names) == 2000 and len(names)

            await wait_for(all_delivered, 20)
            status = adapter.status()
            assert status["items"] == 2000
            assert status["create_requests"] == 7  # ceil(2000 / 300)
            # One bus message per publish response, not one per value.
            assert len(seen.messages) < status["notifications"] / 50
            # Every value arrives, with its own source timestamp (the server's tick).
            v1999 = seen.last("v1999")
            assert v1999 is not None and round(v1999.value % 1, 3) == 0.999  # type: ignore[operator]
    finally:
        await server.kill()


# -- writes ---------------------------------------------------------------------------------


def gateway_config(url: str) -> str:
    return f"""
gateway: {{name: gw, status_interval: 0}}
devices:
  plc:
    protocol: opcua
    role: client
    url: "{url}"
    timeout: 2
    reconnect: {{initial: 0.05, max: 0.5}}
    security: {{policy: "None", mode: "None"}}
    subscription: {{publishing_interval: 0.1}}
    points:
      - {{name: setpoint, node_id: "{NODES["Setpoint"]}", access: rw, low: 0, high: 500}}
      - {{name: level, browse_path: "1:Plant/1:Boiler/1:Level", access: rw}}
      - {{name: enabled, node_id: "{NODES["Enabled"]}", access: rw}}
      - {{name: label, node_id: "{NODES["Label"]}", access: rw, type: string}}
      - {{name: temp, node_id: "{NODES["Temp"]}", access: rw}}
      - {{name: counter, node_id: "{NODES["Counter"]}"}}
"""


@contextlib.asynccontextmanager
async def gateway_running(url: str) -> AsyncIterator[tuple[Gateway, Collector]]:
    gateway = Gateway(load_config_text(gateway_config(url), "opcua.yaml"))
    seen = Collector(gateway.bus)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.started.wait(), 10)
    try:
        yield gateway, seen
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        seen.close()


async def test_writes_through_the_command_router(peer: NodeOpcuaServer) -> None:
    async with gateway_running(peer.url) as (gateway, seen):
        adapter = gateway.adapters["plc"]
        await wait_for(lambda: adapter.status()["items"] == 6, 10)
        await wait_for(good_value(seen, "enabled", False), 5)
        # Types learned from the server reach the router: a bool may go to the Boolean node.
        assert gateway.router.points[("plc", "enabled")].datatype == "bool"

        result = await gateway.router.write("plc", "setpoint", 72.5, origin="test")
        assert result.ok, result
        assert ("Setpoint", 72.5) in peer.written
        assert await peer.get("Setpoint") == 72.5
        # Read back and published at once, not only at the next sampling.
        setpoint = seen.last("setpoint")
        assert setpoint is not None and setpoint.value == 72.5

        assert (await gateway.router.write("plc", "level", 42, origin="test")).ok
        assert (await gateway.router.write("plc", "enabled", True, origin="test")).ok
        assert (await gateway.router.write("plc", "label", "boiler two", origin="test")).ok
        assert peer.written[-3:] == [("Level", 42), ("Enabled", True), ("Label", "boiler two")]
        await wait_for(good_value(seen, "level", 42), 5)

        # The server's refusals, mapped.
        readonly = await gateway.router.write("plc", "temp", 30.0, origin="test")
        assert readonly.status is WriteStatus.NOT_WRITABLE, readonly
        assert "BadNotWritable" in readonly.reason
        too_high = await gateway.router.write("plc", "level", 150, origin="test")
        assert too_high.status is WriteStatus.OUT_OF_RANGE, too_high
        not_int16 = await gateway.router.write("plc", "level", 70000, origin="test")
        assert not_int16.status is WriteStatus.BAD_VALUE and "Int16" in not_int16.reason
        declared_ro = await gateway.router.write("plc", "counter", 1, origin="test")
        assert declared_ro.status is WriteStatus.NOT_WRITABLE
        assert await peer.get("Level") == 42
        assert ("Temp", 30.0) not in peer.written
        assert adapter.status()["writes"] == 7  # the router stopped the counter write

        # Server gone: refused at once as unreachable, not after a timeout.
        await peer.kill()
        await wait_for(lambda: not adapter.status()["connected"], 10)
        t0 = time.monotonic()
        down = await gateway.router.write("plc", "setpoint", 10.0, origin="test")
        assert down.status is WriteStatus.UNREACHABLE, down
        assert time.monotonic() - t0 < 1.0  # half the request timeout (2 s)


# -- server restart -------------------------------------------------------------------------


async def test_server_restart_points_go_bad_then_resubscribe_without_missing_a_change(
    peer: NodeOpcuaServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.client")
    config = client_config(
        peer.url,
        [
            {"name": "counter", "node_id": NODES["Counter"], "sampling_interval": 0},
            {"name": "setpoint", "browse_path": "1:Plant/1:Boiler/1:Setpoint"},
        ],
    )
    async with running(config) as (adapter, seen):
        await wait_for(good_value(seen, "setpoint", 50.0), 10)
        await wait_for(lambda: len(seen.of("counter")) >= 3, 5)

        await peer.kill()
        await wait_for(lambda: seen.last("counter").quality is Quality.BAD, 10)  # type: ignore[union-attr]
        bad = [s for s in seen.of("counter") if s.quality is Quality.BAD]
        assert len(bad) == 1 and bad[0].reason == "connection lost"
        assert seen.last("setpoint").reason == "connection lost"  # type: ignore[union-attr]
        assert not adapter.status()["connected"]
        await asyncio.sleep(1.0)  # a few failed reconnects: still marked bad only once
        assert len([s for s in seen.of("counter") if s.quality is Quality.BAD]) == 1
        lost_at = len(seen.of("counter"))

        # Back on the same port, with the counter starting at 1000 and a setpoint written at
        # once: the new subscription's initial values carry both.
        await peer.start(counter_start=1000)
        await peer.set("Setpoint", 61.0)
        await wait_for(good_value(seen, "setpoint", 61.0), 15)
        await wait_for(lambda: len(seen.of("counter")) > lost_at + 5, 5)
        now = await peer.get("Counter")
        after = [s.value for s in seen.of("counter")[lost_at:]]
        assert all(isinstance(v, int) and v >= 1000 for v in after), after
        # No change missed from the first value received on: consecutive counts up to the
        # value the server holds now.
        assert after == list(range(after[0], after[0] + len(after)))
        await wait_for(lambda: seen.last("counter").value >= now, 5)  # type: ignore[union-attr]
        status = adapter.status()
        assert status["connected"] and status["reconnects"] >= 1 and status["items"] == 2
    assert "connection lost" in caplog.text


@pytest.mark.parametrize("where", ["subscription", "commands"])
async def test_a_crashed_run_leaves_no_session_open_on_the_server(
    peer: NodeOpcuaServer, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """run() fails twice (a bug in the task that watches the subscription, or in the one that
    serves commands, which cancels the other) and the runtime restarts it: each old session
    is closed on the server before the next is opened (they stayed open, kept alive by the
    old clients' watchdogs), and none is left once the adapter has exited."""
    monkeypatch.setattr(runtime, "SUPERVISOR_BACKOFF", Backoff(initial=0.05, max=0.2))
    config = client_config(
        peer.url,
        [
            {"name": "temp", "node_id": NODES["Temp"]},
            {"name": "setpoint", "node_id": NODES["Setpoint"], "access": "rw"},
        ],
    )
    bus = Bus()
    adapter = OpcuaClientAdapter("plc", config, AdapterContext(bus, "gw"))
    seen = Collector(bus)
    crashes = 0

    def crash() -> None:
        nonlocal crashes
        if crashes < 2:
            crashes += 1
            raise RuntimeError(f"a bug ({where})")

    if where == "subscription":
        watch = adapter._watch

        async def crashing_watch(session: Any) -> str:
            crash()
            return await watch(session)

        monkeypatch.setattr(adapter, "_watch", crashing_watch)
    else:

        async def crashing_commands(*args: Any) -> None:
            # subscribed: the other task is watching the session now
            await wait_for(lambda: adapter.status()["items"] == 2, 10)
            crash()
            await asyncio.Event().wait()

        monkeypatch.setattr("protocols.opcua.client.serve_commands", crashing_commands)

    async with adapter:
        task = asyncio.create_task(
            runtime._supervise("plc", adapter.run, on_failure=adapter.points_lost)
        )
        try:
            await wait_for(lambda: crashes == 2, 15, message="two crashes")
            await wait_for(lambda: adapter.status()["connected"], 15, message="connected again")
            await peer.set("Temp", 31.0)
            await wait_for(good_value(seen, "temp", 31.0), 10)
            assert await peer.sessions() == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert await peer.sessions() == 0
    seen.close()


async def test_hung_server_is_detected_and_a_pending_write_times_out(
    peer: NodeOpcuaServer,
) -> None:
    # SIGSTOP: the server keeps its socket open but answers nothing, so only the watchdog
    # (a ServerStatus read every timeout + 1 s) can tell.
    config = client_config(
        peer.url,
        [{"name": "setpoint", "node_id": NODES["Setpoint"], "access": "rw"}],
        timeout=1.0,
    )
    async with running(config) as (adapter, seen):
        await wait_for(good_value(seen, "setpoint", 50.0), 10)
        assert peer.process is not None
        peer.process.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(WriteRefused) as refused:
                await adapter.write("setpoint", 1.0)
            assert refused.value.status is WriteStatus.TIMEOUT, refused.value
            assert 0.9 < time.monotonic() - t0 < 3.0  # the timeout, not much more
            await wait_for(lambda: seen.last("setpoint").quality is Quality.BAD, 10)  # type: ignore[union-attr]
            assert seen.last("setpoint").reason == "connection lost"  # type: ignore[union-attr]
            with pytest.raises(WriteRefused) as refused:
                await adapter.write("setpoint", 2.0)
            assert refused.value.status is WriteStatus.UNREACHABLE
        finally:
            peer.process.send_signal(signal.SIGCONT)
        await wait_for(lambda: seen.last("setpoint").quality is Quality.GOOD, 20)  # type: ignore[union-attr]
        assert adapter.status()["connected"]


async def test_server_down_at_start_is_not_an_error(tmp_path: Path, shared_pki: Path) -> None:
    server = NodeOpcuaServer(shared_pki, tmp_path / "node.log", period=100)
    config = client_config(server.url, [{"name": "temp", "node_id": NODES["Temp"]}])
    async with running(config) as (adapter, seen):
        await wait_for(lambda: seen.last("temp") is not None, 5)
        s = seen.last("temp")
        assert s is not None and s.quality is Quality.BAD and s.reason == "connection refused"
        assert "connection refused" in adapter.status()["last_error"]
        await server.start()
        try:
            await wait_for(good_value(seen, "temp", 20.0), 15)
            assert adapter.status()["last_error"] is None
        finally:
            await server.kill()


# -- security -------------------------------------------------------------------------------


@pytest.fixture
async def secure_peer(tmp_path: Path) -> AsyncIterator[NodeOpcuaServer]:
    server = NodeOpcuaServer(
        tmp_path / "server-pki", tmp_path / "node.log", security=True, users="operator:secret"
    )
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


def secure_config(server: NodeOpcuaServer, pki: Path, **security: Any) -> OpcuaClient:
    return client_config(
        server.url,
        [{"name": "temp", "node_id": NODES["Temp"]}],
        security={
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "pki_dir": str(pki),
            **security,
        },
        username="operator",
        password="secret",
        timeout=4.0,
    )


async def test_sign_and_encrypt_with_the_server_certificate_trusted(
    secure_peer: NodeOpcuaServer, tmp_path: Path
) -> None:
    pki = tmp_path / "client-pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(secure_peer.certificate, pki / "trusted" / "peer.pem")
    async with running(secure_config(secure_peer, pki)) as (adapter, seen):
        await wait_for(good_value(seen, "temp", 20.0), 20)
        assert adapter.status()["last_error"] is None
    assert (pki / "own" / "cert.der").is_file()  # generated on first use


async def test_untrusted_server_certificate_is_refused_and_retried(
    secure_peer: NodeOpcuaServer, tmp_path: Path
) -> None:
    pki = tmp_path / "client-pki"
    async with running(secure_config(secure_peer, pki)) as (adapter, seen):
        await wait_for(lambda: seen.last("temp") is not None, 20)
        s = seen.last("temp")
        assert s is not None and s.quality is Quality.BAD and s.reason == "certificate untrusted"
        error = adapter.status()["last_error"]
        assert "server certificate untrusted" in error and str(pki / "trusted") in error
        await wait_for(lambda: adapter.status()["reconnects"] >= 2, 10)  # retried, alive
        assert not adapter.status()["connected"]
        rejected = list((pki / "rejected").iterdir())
        assert len(rejected) == 1
        # The operator trusts it: the next retry connects, no restart needed.
        shutil.copy(rejected[0], pki / "trusted" / rejected[0].name)
        await wait_for(good_value(seen, "temp", 20.0), 20)


async def test_an_untrusted_server_certificate_is_warned_about_once_across_retries(
    secure_peer: NodeOpcuaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="protocols.opcua")
    pki = tmp_path / "client-pki"

    def refusals(level: int) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == level
            and ("refused untrusted server certificate" in r.getMessage()
                 or "refused the server certificate" in r.getMessage())
        ]  # fmt: skip

    async with running(secure_config(secure_peer, pki)) as (adapter, _):
        await wait_for(lambda: adapter.status()["reconnects"] >= 4, 30)
        assert not adapter.status()["connected"]
        [warning] = refusals(logging.WARNING)
        assert str(pki / "trusted") in warning
        assert len(refusals(logging.DEBUG)) >= 3  # the repeats, counted at debug level
        # Trusted, it connects; refused again later, it would be said again.
        rejected = list((pki / "rejected").iterdir())
        shutil.copy(rejected[0], pki / "trusted" / rejected[0].name)
        await wait_for(lambda: adapter.status()["connected"], 20)
        assert adapter._trust is not None and adapter._trust.warned == {}


async def test_verify_server_off_connects_and_warns(
    secure_peer: NodeOpcuaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.opcua.client")
    pki = tmp_path / "client-pki"
    config = secure_config(secure_peer, pki, verify_server=False)
    async with running(config) as (adapter, seen):
        await wait_for(good_value(seen, "temp", 20.0), 20)
        assert adapter.status()["connected"]
    warnings = [r for r in caplog.records if "verify_server is false" in r.getMessage()]
    assert len(warnings) == 1


async def test_wrong_password_is_reported(secure_peer: NodeOpcuaServer, tmp_path: Path) -> None:
    pki = tmp_path / "client-pki"
    config = secure_config(secure_peer, pki, verify_server=False)
    config = config.model_copy(update={"password": "wrong"})
    async with running(config) as (adapter, seen):
        await wait_for(lambda: seen.last("temp") is not None, 20)
        assert seen.last("temp").reason == "user refused"  # type: ignore[union-attr]
        assert "operator" in adapter.status()["last_error"]


async def test_a_password_over_policy_none_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """policy None with a username: the channel is not encrypted, and a server whose user
    token policy is None gets the password in clear. Said once, at start, and by ``gateway
    validate``."""
    from test_opcua_logins import PASSWORD, users_server

    from gateway.cli import main

    caplog.set_level(logging.WARNING, logger="protocols.opcua.client")
    async with users_server(tmp_path) as server:
        config = client_config(
            server.endpoint_url,
            [{"name": "time", "node_id": "i=2258"}],
            username="opcuser",
            password=PASSWORD,
        )
        async with running(config) as (adapter, _):
            await wait_for(lambda: adapter.status()["connected"], 10)
    said = [r.getMessage() for r in caplog.records if "policy None with username" in r.getMessage()]
    assert said == [
        "plc: security.policy None with username 'opcuser': the channel is not encrypted, so "
        "against a server whose user token policy does not encrypt it either, the password "
        "crosses the network in clear; use a secure policy such as Basic256Sha256"
    ]
    assert PASSWORD not in caplog.text

    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config("opc.tcp://127.0.0.1:4840").replace(
        "    timeout: 2\n", "    timeout: 2\n    username: opcuser\n    password: x\n"
    ))  # fmt: skip
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "security.policy: policy None with username 'opcuser'" in err
    secure = path.read_text().replace('{policy: "None", mode: "None"}', "{verify_server: true}")
    path.write_text(secure)
    assert main(["validate", str(path)]) == 0
    assert "policy None" not in capsys.readouterr().err
