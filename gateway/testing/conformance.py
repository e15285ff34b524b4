"""The conformance checks every protocol plugin passes, as a pytest class to subclass.

A plugin's test module subclasses `ProtocolConformance` once per role, names the class
``Test...`` so pytest collects it, and supplies the few things only the plugin knows::

    class TestLdjsonClient(ProtocolConformance):
        spec = SPEC
        role = "client"

        def config(self, peer: Device | None) -> dict[str, Any]:
            port = peer.port if peer is not None else self.closed_port()
            return {"host": "127.0.0.1", "port": port, "points": [...]}

        @contextlib.asynccontextmanager
        async def peer(self) -> AsyncIterator[Device]:
            async with Device() as device:
                yield device

The checks are generic: the spec is well formed and registered under its name, importing it
imports no protocol library, the config models validate the example config, an adapter enters
and runs while its peer is down (and says so: disconnected status or bad samples), it stops
within `cancel_limit` seconds of a cancel, ``status()`` is JSON, a source's points are
`PointSpec` with known datatypes, with the peer up a source publishes good telemetry for every
point and a write to each ``rw`` point is acknowledged through ``serve_commands``, and a target
is attached to a real `Bridge` (``attach``) and accepts a telemetry message in ``send``. While
an adapter runs, nothing may block the event loop for longer than `max_loop_block` seconds (the
check names the code that did).

Every check is a plain (synchronous) test that runs its own event loop with ``asyncio.run``, so
the kit works whatever asyncio plugin mode the plugin's own pytest uses. A check that does not
apply (no peer given, `writes` or `source` declared False, not a target) is removed from the
subclass when it is defined: nothing is skipped at run time, and the declarations are checked.
`writes` left at None is decided then too, from whether the example config has ``rw`` points.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import math
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from pydantic import BaseModel

from gateway.adapter import Adapter, AdapterContext
from gateway.bridge import Bridge
from gateway.bus import Bus, Subscription
from gateway.commands import CommandRouter
from gateway.config.model import BridgeConfig
from gateway.looplag import LoopMonitor
from gateway.plugins import API_VERSION, ENTRY_POINT_GROUP, ProtocolSpec
from gateway.types import Message, PointSpec, Quality, Sample, Value, telemetry_topic

__all__ = ["DATATYPES", "ProtocolConformance", "closed_port"]

T = TypeVar("T")

#: The point datatypes the bus knows.
DATATYPES = frozenset(
    {"bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}
    | {"string"}
)


def closed_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now: a peer that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ProtocolConformance:
    """Subclass as ``Test<Something>`` and fill in `spec`, `role`, `config` and `peer`."""

    #: the plugin's spec, as its entry point names it
    spec: ClassVar[ProtocolSpec]
    #: the role under test (one subclass per role)
    role: ClassVar[str] = "client"
    #: False for an adapter with no peer to lose (a server): the peer-down checks only ask
    #: that it enters and runs
    has_peer: ClassVar[bool] = True
    #: seconds a source has to publish good values for all its points once the peer is up
    telemetry_timeout: ClassVar[float] = 20.0
    #: seconds run() is left alone with its peer down before it is judged
    down_period: ClassVar[float] = 1.5
    #: seconds within which run() must end after a cancel
    cancel_limit: ClassVar[float] = 2.0
    #: whether the role produces points (its telemetry is checked; False: it must have none)
    source: ClassVar[bool] = True
    #: whether the example config has writable points (their round trip is checked); None:
    #: decided when the class is defined, from the ``rw`` points of the example config
    writes: ClassVar[bool | None] = None
    #: seconds the event loop may be blocked at a time while the adapter runs
    max_loop_block: ClassVar[float] = 0.5

    # Checks that cannot apply to a subclass are removed when it is defined, not skipped at run
    # time: every collected check asserts something. The declarations above are checked too.
    _PEER_UP_CHECKS = (
        "test_source_publishes_telemetry",
        "test_write_round_trip",
        "test_run_stops_promptly_with_the_peer_up",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        drop: set[str] = set()
        if cls.peer is ProtocolConformance.peer:
            drop.update(cls._PEER_UP_CHECKS)
        if not cls.source:
            drop.add("test_source_publishes_telemetry")
        spec = getattr(cls, "spec", None)
        writes = cls.writes
        if writes is None and spec is not None:
            writes = cls._example_has_writable_points()
        if writes is False:
            drop.add("test_write_round_trip")
        if spec is not None and spec.route_model_for(cls.role) is None:
            drop.add("test_target_accepts_telemetry")
        for name in drop:
            setattr(cls, name, None)  # pytest collects callables only
        for name in {*cls._PEER_UP_CHECKS, "test_target_accepts_telemetry"} - drop:
            # removed from a base class, applies here (not one this class set to None itself:
            # pytest's own way to leave a check out)
            if getattr(cls, name) is None and name not in cls.__dict__:
                setattr(cls, name, getattr(ProtocolConformance, name))

    @classmethod
    def _example_has_writable_points(cls) -> bool | None:
        """Whether ``config(None)`` has ``rw`` points, found when the class is defined; None
        when that cannot be told then (the write check is kept, and says why it fails)."""
        try:
            with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
                probe = cls()
                probe.tmp_path = Path(tmp)
                return any(p.access.writable for p in probe.adapter(None).points())
        except Exception:
            return None

    tmp_path: Path

    # --- what the plugin supplies ------------------------------------------------------------

    def config(self, peer: Any | None) -> dict[str, Any]:
        """The config of one ``devices:``/``endpoints:`` entry in `role` (without
        ``protocol``), talking to ``peer``; with ``peer`` None, to a peer that is down
        (`closed_port` gives a port nobody listens on). `tmp_path` is a fresh folder."""
        raise NotImplementedError("a conformance class must define config(peer)")

    def peer(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """An async context manager that starts the peer (device, broker, server) and yields
        what `config` needs to reach it. Without one, the peer-up checks are skipped."""
        raise NotImplementedError

    async def stimulate(self, peer: Any, adapter: Adapter) -> None:
        """Make the peer produce values (publish, change a variable); called about every
        0.2 s while waiting for telemetry. Polled and subscribed peers need nothing."""
        return None

    def route(self) -> dict[str, Any]:
        """Bridge options for a target role (the route model must accept them)."""
        return {}

    def bridge_points(self) -> dict[str, list[PointSpec]]:
        """The source points of the bridge a target is attached to, per device (what
        ``bridge.points()`` returns to ``attach``); the target check sends these points."""
        return {
            "conformance-device": [
                PointSpec("conformance-device/temp", "temp", "float64", unit="degC"),
                PointSpec("conformance-device/on", "on", "bool"),
                PointSpec("conformance-device/lost", "lost", "float64"),
            ]
        }

    def write_value(self, point: PointSpec) -> Value:
        """A value to write to ``point`` in the write round trip: inside low..high."""
        if point.datatype == "bool":
            return True
        if point.datatype == "string":
            return "conformance"
        low = 0.0 if point.low is None else point.low
        high = low + 10.0 if point.high is None else point.high
        middle = (low + high) / 2
        return math.floor(middle) if point.datatype.startswith(("int", "uint")) else middle

    async def check_written(self, peer: Any, point: PointSpec, value: Value) -> None:
        """Assert that the peer received the write (optional, after a good acknowledgement)."""
        return None

    # --- helpers ------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _conformance_tmp_path(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    closed_port = staticmethod(closed_port)

    @property
    def device_name(self) -> str:
        return f"conf-{self.spec.name}"

    def adapter(self, peer: Any | None, bus: Bus | None = None) -> Adapter:
        """An adapter of `role` for ``config(peer)``, on its own bus."""
        model = self.spec.model_for(self.role)
        config = model.model_validate(self.config(peer))
        cls = self.spec.adapter_class(self.role)
        return cls(self.device_name, config, AdapterContext(bus or Bus(), "conformance"))

    def is_target(self) -> bool:
        return self.spec.route_model_for(self.role) is not None

    def _has_peer_factory(self) -> bool:
        return type(self).peer is not ProtocolConformance.peer

    def _need_peer(self) -> None:
        # Peer-up checks are removed from classes without peer(); this guards direct calls.
        assert self._has_peer_factory(), f"{type(self).__name__} defines no peer()"

    @staticmethod
    def run_async(body: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:  # noqa: ASYNC109
        async def main() -> T:
            async with asyncio.timeout(timeout):
                return await body()

        return asyncio.run(main())

    @contextlib.asynccontextmanager
    async def running(self, adapter: Adapter) -> AsyncIterator[asyncio.Task[None]]:
        """``async with adapter``, ``run()`` as a task, cancelled (and checked) at the end;
        the event loop must not be blocked longer than `max_loop_block` meanwhile."""
        async with adapter:
            async with self.loop_not_blocked():
                task = asyncio.create_task(adapter.run(), name=f"conformance:{adapter.name}")
                try:
                    yield task
                finally:
                    await self._stop(task)

    @contextlib.asynccontextmanager
    async def loop_not_blocked(self) -> AsyncIterator[LoopMonitor]:
        """Fails at the end if the event loop was blocked longer than `max_loop_block` at a
        time inside, naming the code it was blocked in (a blocking call in an adapter stops
        every device of a gateway)."""
        limit = self.max_loop_block
        monitor = LoopMonitor(limit / 2, interval=0.05, check=0.05, report=False)
        monitor.start()
        try:
            yield monitor
        finally:
            await monitor.stop()
        worst = monitor.worst
        if worst is not None and (worst.length or 0.0) > limit:
            pytest.fail(
                f"the event loop was blocked for {worst.length:.2f} s (max_loop_block = "
                f"{limit} s) in {worst.describe()}: a blocking call in an adapter stops every "
                "device; run it with asyncio.to_thread (or loop.run_in_executor)"
            )

    async def _stop(self, task: asyncio.Task[None]) -> float:
        """Cancel ``task``; how long it took. Fails if it raised or ignored the cancel."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.cancel_limit)
        took = loop.time() - t0
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
            pytest.fail(f"run() was still running {self.cancel_limit} s after cancel()")
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise AssertionError(f"run() raised {exc!r}") from exc
            pytest.fail("run() returned by itself instead of running until cancelled")
        return took

    # --- the spec -----------------------------------------------------------------------------

    def test_spec_is_well_formed(self) -> None:
        spec = self.spec
        assert isinstance(spec, ProtocolSpec), f"spec is a {type(spec).__name__}"
        assert spec.api_version == API_VERSION, f"api_version {spec.api_version} != {API_VERSION}"
        assert spec.name and spec.name.isidentifier(), f"name {spec.name!r} is not an identifier"
        assert spec.description, "the spec needs a one-line description"
        assert self.role in spec.roles, f"role {self.role!r} not in {spec.roles}"
        for role in spec.roles:
            cls = spec.adapter_class(role)
            assert isinstance(cls, type) and issubclass(cls, Adapter), (
                f"{spec.adapters[role]} is not an Adapter subclass"
            )
            assert issubclass(spec.model_for(role), BaseModel)
        for model in (*spec.role_models.values(), spec.route_model, *spec.route_models.values()):
            assert model is None or issubclass(model, BaseModel)
        assert all(isinstance(c, str) for c in spec.capabilities)

    def _entry_point(self) -> importlib.metadata.EntryPoint:
        found = [
            ep
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            if ep.name == self.spec.name
        ]
        if not found:
            pytest.fail(
                f"no entry point {self.spec.name!r} in group {ENTRY_POINT_GROUP!r}: register "
                f'{self.spec.name} = "your_package:SPEC" and install the package'
            )
        assert len(found) == 1, f"{len(found)} plugins register {self.spec.name!r}"
        return found[0]

    def test_entry_point_names_the_spec(self) -> None:
        loaded = self._entry_point().load()
        assert isinstance(loaded, ProtocolSpec)
        assert loaded.name == self.spec.name
        assert loaded.adapters == self.spec.adapters

    def test_spec_import_is_light(self) -> None:
        """Importing the spec must not import the protocol library nor the adapters, so that
        ``gateway plugins`` and ``gateway validate`` work where the library is missing."""
        module = self._entry_point().value.split(":")[0].strip()
        heavy = {m.split(".")[0] for m in self.spec.requires}
        heavy |= {target.split(":")[0] for target in self.spec.adapters.values()}
        heavy.discard(module)
        code = (
            "import importlib, json, sys\n"
            f"importlib.import_module({module!r})\n"
            f"heavy = {sorted(heavy)!r}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m in heavy or "
            "any(m.startswith(h + '.') for h in heavy if '.' not in h))))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        imported = json.loads(done.stdout.strip().splitlines()[-1])
        assert not imported, f"importing {module} imported {imported}"

    def test_config_models_accept_the_example(self) -> None:
        model = self.spec.model_for(self.role)
        config = model.model_validate(self.config(None))
        check = getattr(config, "check", None)
        problems = check() if callable(check) else []
        assert not problems, problems
        route = self.spec.route_model_for(self.role)
        if route is not None:
            route.model_validate(self.route())

    # --- peer down ----------------------------------------------------------------------------

    def test_enter_and_run_with_the_peer_down(self) -> None:
        async def body() -> None:
            bus = Bus()
            seen = bus.subscribe(telemetry_topic(self.device_name), maxsize=10000, name="conf")
            adapter = self.adapter(None, bus)
            json.dumps(adapter.status())
            async with asyncio.timeout(10):
                entered = adapter.__aenter__()
                await entered
            try:
                async with self.loop_not_blocked():
                    task = asyncio.create_task(adapter.run())
                    await asyncio.sleep(self.down_period)
                    if task.done():
                        await self._stop(task)  # raises what run() raised
                    json.dumps(adapter.status())
                    if self.has_peer:
                        bad = [
                            s
                            for m in _drain(seen)
                            for s in m.samples
                            if s.quality is not Quality.GOOD
                        ]
                        status = adapter.status()
                        assert status.get("connected") is False or bad, (
                            "with its peer down the adapter should report status "
                            f"connected=False or publish samples of bad quality; status: {status}"
                        )
                    took = await self._stop(task)
                    assert took < self.cancel_limit
            finally:
                await adapter.__aexit__(None, None, None)

        self.run_async(body)

    # --- points -------------------------------------------------------------------------------

    def test_points_are_point_specs(self) -> None:
        adapter = self.adapter(None)
        points = adapter.points()
        assert isinstance(points, list)
        if not self.source:
            assert points == [], "declared source = False but the adapter has points"
        names = [p.name for p in points]
        assert len(names) == len(set(names)), f"point names repeat: {names}"
        for p in points:
            assert isinstance(p, PointSpec), f"{p!r} is not a PointSpec"
            assert p.datatype in DATATYPES, f"{p.name}: datatype {p.datatype!r} not in {DATATYPES}"
            assert p.id == f"{adapter.name}/{p.name}", f"{p.name}: id {p.id!r}"
            if p.low is not None and p.high is not None:
                assert p.low <= p.high, f"{p.name}: low > high"

    # --- peer up ------------------------------------------------------------------------------

    def test_source_publishes_telemetry(self) -> None:
        self._need_peer()
        assert self.adapter(None).points(), "declared a source (source = True) with no points"

        async def body() -> None:
            async with self.peer() as peer:
                await self._until_all_good(peer)

        self.run_async(body, self.telemetry_timeout + 30)

    async def _until_all_good(
        self, peer: Any, bus: Bus | None = None
    ) -> tuple[Adapter, dict[str, Sample]]:
        bus = bus or Bus()
        seen = bus.subscribe(telemetry_topic(self.device_name), maxsize=100000, name="conf")
        adapter = self.adapter(peer, bus)
        wanted = {p.name for p in adapter.points()}
        good: dict[str, Sample] = {}
        async with self.running(adapter) as task:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.telemetry_timeout
            while not wanted <= good.keys():
                assert not task.done(), "run() ended"
                if loop.time() > deadline:
                    pytest.fail(
                        f"no good value in {self.telemetry_timeout} s for "
                        f"{sorted(wanted - good.keys())}; status: {adapter.status()}"
                    )
                await self.stimulate(peer, adapter)
                for message in _drain(seen):
                    assert message.kind == "telemetry" and message.device == adapter.name
                    for s in message.samples:
                        assert isinstance(s, Sample) and s.point in wanted, s
                        assert s.source_ts > 0 and s.gateway_ts > 0, f"{s} has no timestamps"
                        if s.quality is Quality.GOOD:
                            good[s.point] = s
                await asyncio.sleep(0.2)
            json.dumps(adapter.status())
        return adapter, good

    def test_write_round_trip(self) -> None:
        self._need_peer()
        writable = [p for p in self.adapter(None).points() if p.access.writable]
        if not writable and self.writes is None:
            return  # not declared, and no rw point to write (found only now): nothing to check
        assert writable, "declared writes = True but the example config has no rw point"

        async def body() -> None:
            async with self.peer() as peer:
                bus = Bus()
                router = CommandRouter(bus)
                adapter = self.adapter(peer, bus)
                router.declare(adapter.name, adapter.points())
                seen = bus.subscribe(telemetry_topic(self.device_name), maxsize=100000, name="c")
                async with self.running(adapter):
                    await self._connected(adapter, peer, seen)
                    for point in writable:
                        value = self.write_value(point)
                        result = await router.write(adapter.name, point.name, value, origin="c")
                        assert result.ok, f"write {point.name} = {value!r}: {result}"
                        await self.check_written(peer, point, value)
                router.close()

        self.run_async(body, self.telemetry_timeout + 30)

    async def _connected(self, adapter: Adapter, peer: Any, seen: Subscription) -> None:
        """Until the adapter says it is connected, or one good sample arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.telemetry_timeout
        while loop.time() < deadline:
            if adapter.status().get("connected") is True:
                return
            if any(s.quality is Quality.GOOD for m in _drain(seen) for s in m.samples):
                return
            await self.stimulate(peer, adapter)
            await asyncio.sleep(0.1)
        pytest.fail(f"not connected after {self.telemetry_timeout} s: {adapter.status()}")

    def test_run_stops_promptly_with_the_peer_up(self) -> None:
        self._need_peer()

        async def body() -> None:
            async with self.peer() as peer:
                adapter = self.adapter(peer)
                async with adapter, self.loop_not_blocked():
                    task = asyncio.create_task(adapter.run())
                    await asyncio.sleep(1.0)
                    json.dumps(adapter.status())
                    took = await self._stop(task)
                    assert took < self.cancel_limit

        self.run_async(body)

    # --- targets ------------------------------------------------------------------------------

    def bridge(self, adapter: Adapter, bus: Bus, router: CommandRouter) -> Bridge:
        """A bridge from `bridge_points` to ``adapter`` with the `route` options, built as
        ``gateway run`` builds one."""
        route_model = self.spec.route_model_for(self.role)
        assert route_model is not None
        sources = self.bridge_points()
        for device, points in sources.items():
            router.declare(device, points)
        config = BridgeConfig(
            name="conformance",
            sources=tuple(sources),
            points=(),
            target=adapter.name,
            units={},
            route=route_model.model_validate(self.route()),
        )
        return Bridge(config, bus, adapter, router=router, sources=sources)

    def test_target_accepts_telemetry(self) -> None:
        """``attach(bridge)`` (before the adapter is entered, as ``gateway run`` calls it),
        then ``send`` of good, bool and bad samples of every source device's points."""
        assert self.is_target()  # the check is removed for roles that are not targets

        async def body() -> None:
            peer_cm = self.peer() if self._has_peer_factory() else contextlib.nullcontext()
            async with peer_cm as peer:
                bus = Bus()
                router = CommandRouter(bus)
                adapter = self.adapter(peer, bus)
                bridge = self.bridge(adapter, bus, router)
                route = bridge.config.route
                assert route is not None
                adapter.attach(bridge)
                async with self.running(adapter):
                    await asyncio.sleep(0.3)
                    for device, points in bridge.points().items():
                        assert points, f"bridge_points() gives {device!r} no points"
                        good = tuple(
                            Sample.now(p.name, self.write_value(p), unit=p.unit) for p in points
                        )
                        last = points[-1]
                        lost = Sample.now(last.name, None, Quality.BAD, reason="timeout")
                        for samples in (good, (*good[:-1], lost)):  # all good; the last one bad
                            message = Message.telemetry(device, samples)
                            await adapter.send(message, route)
                    json.dumps(adapter.status())
                router.close()

        self.run_async(body)


def _drain(sub: Subscription) -> list[Message]:
    """Every message queued on a bus subscription, without waiting."""
    out = []
    while (message := sub.get_nowait()) is not None:
        out.append(message)
    return out
