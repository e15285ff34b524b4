"""The running gateway: adapters and bridges on one event loop, and an orderly shutdown.

Every adapter's ``run`` is supervised: if it raises (a bug, a library surprise), the error is
logged and the adapter is restarted after a capped, jittered backoff, while everything else keeps
running. Adapters are expected to survive ordinary peer failures on their own; the supervisor is
the last line.

Shutdown order matters for "nothing half-written": first the pure sources stop producing, then
bridges drain what is queued into their targets (bounded by a timeout), then the remaining
adapters stop, and finally every adapter's ``__aexit__`` runs in the reverse order of start, so
sinks (an MQTT client publishing its offline status and waiting for acknowledgements) close last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__, handover, health, livestatus, metrics
from gateway.adapter import Adapter, AdapterContext
from gateway.backoff import BackoffTimer
from gateway.bridge import Bridge
from gateway.bus import Bus, Subscription
from gateway.commands import CommandRouter
from gateway.config import GatewayConfig
from gateway.config.common import Backoff
from gateway.config.model import event_points
from gateway.looplag import LoopMonitor
from gateway.sdnotify import Notifier
from gateway.streak import FailureStreak
from gateway.text import counted
from gateway.types import PointSpec, telemetry_topic
from gateway.uplink.lock import FileLock, OutboxInUse

if TYPE_CHECKING:
    from gateway.shadow.service import ShadowService

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0
CANCEL_TIMEOUT = 10.0
# A kept adapter's `Adapter.reloaded` must not hold the reload's READY back for long.
RELOADED_TIMEOUT = 10.0
# An adapter's __aenter__ binds, loads certificates and builds address spaces; one that has not
# finished in this time (a plugin awaiting a peer that never answers) would hold the whole
# gateway in start-up. An OPC UA address space of 10,000 points builds in about 2 s here; the
# limit leaves room for 100 times that on a slow box. SIGTERM during start stops at once anyway.
START_TIMEOUT = 300.0
FIRST_REPORT_S = 5.0  # the first status line and file after READY, at the latest
# With the log's status lines off (status_interval 0) the status file is still kept current:
# written only at start and stop, it would say "down: everything" (its READY snapshot) all run.
QUIET_STATUS_S = 60.0
SUPERVISOR_BACKOFF = Backoff(initial=1.0, max=60.0)


class _Returned(Exception):
    """An adapter's run() that returned: not an error it raised, but the supervisor's word."""


def _raised(failure: BaseException) -> bool:
    """Whether the run raised ``failure`` (its type is news), or returned (`_Returned`)."""
    return not isinstance(failure, _Returned)


def _inner(failure: BaseException) -> BaseException:
    """The one exception inside ``failure``'s groups: a run written as a TaskGroup (as the
    plugin guide's example is) fails with ``ExceptionGroup: unhandled errors in a TaskGroup (1
    sub-exception)``, which says nothing of what failed."""
    while isinstance(failure, BaseExceptionGroup) and len(failure.exceptions) == 1:
        failure = failure.exceptions[0]
    return failure


def _why(failure: BaseException, *, typed: bool = True) -> str:
    """What the log and the status say of a run's ``failure``: the type (with the message when
    ``typed``) of what it raised, or why it returned."""
    if not _raised(failure):
        return str(failure)
    inner = _inner(failure)
    return f"{type(inner).__name__}: {inner}" if typed else type(inner).__name__


@dataclass
class RunHealth:
    """What the supervisor knows of a run that an adapter's own status cannot say, its run
    being the thing that failed: how often, why the last time, and whether it is waiting to
    be restarted (then the adapter is down, whatever its last status said)."""

    failures: int = 0
    last_error: str = ""
    restarting: bool = False


def _status_every(interval: float) -> float:
    """The reports' interval for ``status_interval``: 0 keeps the file (not the log line)."""
    return interval or QUIET_STATUS_S


class StartError(RuntimeError):
    """A part of the gateway could not start: its configuration cannot work on this machine
    (a port in use, an unreadable certificate, a state file that cannot be opened).

    Raised from ``Gateway.run`` before anything runs; ``gateway run`` prints it as one line.
    A dead *device* is not a start error: adapters retry those in ``run``.
    """

    def __init__(self, part: str, cause: BaseException, doing: str = "") -> None:
        super().__init__(f"{part} could not start: {doing}{_cause(cause)}")
        self.part = part


# Exceptions that mean a bug (a plugin's, mostly) rather than a setting that cannot work here:
# their message alone (KeyError's 'baudrate') says nothing, so their type and place are named.
_BUGS = (AttributeError, IndexError, KeyError, NameError, TypeError, UnboundLocalError)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, _BUGS):
        from gateway.plugins import describe_error

        return describe_error(exc)
    return str(exc) or type(exc).__name__


ExitFn = Callable[..., Awaitable[bool]]  # an entered part's __aexit__ (`_quiet_exit`)
Upcoming = Callable[[], GatewayConfig | None]  # the config a reload runs next (`Gateway.run`)


class Parts:
    """A gateway's running adapters (entered, each with its supervised run task) and bridges
    (each with its task)."""

    def __init__(self) -> None:
        self.adapters: dict[str, Adapter] = {}
        self.exits: dict[str, ExitFn] = {}
        self.order: list[str] = []  # adapters in the order they were entered
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.bridges: dict[str, Bridge] = {}
        self.bridge_tasks: dict[str, asyncio.Task[None]] = {}
        self.health: dict[str, RunHealth] = {}  # each adapter task's record (`_supervise`)

    def copy(self) -> Parts:
        other = Parts()
        other.adapters, other.exits = dict(self.adapters), dict(self.exits)
        other.order, other.tasks = list(self.order), dict(self.tasks)
        other.health = dict(self.health)
        other.bridges, other.bridge_tasks = dict(self.bridges), dict(self.bridge_tasks)
        return other

    def enter(self, adapter: Adapter, exit_: ExitFn, *, sink: bool) -> None:
        """``adapter`` has been entered; a ``sink`` (a bridge's target) is exited after every
        source, those a reload kept running included."""
        self.adapters[adapter.name] = adapter
        self.exits[adapter.name] = exit_
        if sink:
            self.order.insert(0, adapter.name)
        else:
            self.order.append(adapter.name)

    async def stop(
        self,
        names: set[str],
        router: CommandRouter,
        bus: Bus,
        *,
        after_sources: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Stop the adapters ``names`` and the bridges into them, in the order that leaves
        nothing half-written (module docstring): the pure sources' tasks, then
        ``after_sources`` (the shadow), the bridges drained and stopped, the targets' tasks,
        and every adapter's exit in the reverse order of entry."""
        bridges = [b for b in self.bridges.values() if b.target.name in names]
        targets = {b.target.name for b in self.bridges.values()}
        await _cancel([self.tasks.pop(n) for n in names - targets if n in self.tasks])
        if after_sources is not None:
            await after_sources()
        await _drain(bridges)
        await _cancel(
            [self.bridge_tasks.pop(b.name) for b in bridges if b.name in self.bridge_tasks]
        )
        for b in bridges:
            del self.bridges[b.name]
        await _cancel([self.tasks.pop(n) for n in names if n in self.tasks])
        for name in reversed(self.order):
            if name in names and name in self.exits:
                await self.exits.pop(name)(None, None, None)
        self.order = [n for n in self.order if n not in names]
        for name in names:
            adapter = self.adapters.pop(name, None)
            if adapter is not None:
                router.forget(name, adapter)
            bus.drop_last(telemetry_topic(name))


@dataclass
class Carried:
    """What a gateway stopped for a reload leaves running for the next one: the parts the
    reload keeps (`gateway.handover`), and the bus and write router they use. ``config``:
    the config they were kept for."""

    config: GatewayConfig
    stamps: handover.Stamps  # its files, as the plan saw them
    bus: Bus
    router: CommandRouter
    context: AdapterContext
    parts: Parts
    # the kept sources' readings since the shadow service stopped (`ShadowService.pass_on`)
    shadow_feed: Subscription | None = None

    async def narrow(self, config: GatewayConfig) -> None:
        """Fit them to ``config``, when another config than the one they were kept for runs
        next (a reload during the start, or the fall-back to the config before): the parts
        ``config`` would not keep are stopped."""
        if config is self.config:
            return
        new = handover.stamps(config)
        plan = handover.plan(self.config, self.stamps, config, new)
        await self.parts.stop(set(self.parts.adapters) - plan.kept, self.router, self.bus)
        self.config, self.stamps = config, new

    async def close(self) -> None:
        """Stop them: no gateway took them over (a stop during the reload's start, or
        neither the new config nor the old one could start)."""
        await self.parts.stop(set(self.parts.adapters), self.router, self.bus)
        if self.shadow_feed is not None:
            self.shadow_feed.close()
        self.router.close()


async def _drain(bridges: list[Bridge]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT
    while any(b.status()["queued"] for b in bridges):
        if loop.time() > deadline:
            log.warning("shutdown: bridges still had messages queued after %.0f s", DRAIN_TIMEOUT)
            return
        await asyncio.sleep(0.02)


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        bus: Bus | None = None,
        notifier: Notifier | None = None,
        status_file: Path | None = None,
        config_file: str = "",
        loop_monitor: LoopMonitor | None = None,
        carried: Carried | None = None,
        started: float | None = None,
        exclusive: bool = False,
    ) -> None:
        self.config = config
        # ``gateway run``: a status file held by another process is a gateway of the same name
        # and state folder already running; this one refuses to start (it would poll and
        # write the same devices a second time) instead of running beside it.
        self.exclusive = exclusive
        self.loop_monitor = loop_monitor  # its lag figures go in the status (``gateway run``)
        # ``gateway run`` keeps its status in a file for ``gateway status`` (gateway.livestatus).
        self.status_file = status_file
        self.config_file = config_file
        self._status_streak = FailureStreak(
            log, f"status file {status_file}", level=logging.WARNING
        )
        self._adapter_streaks: dict[str, FailureStreak] = {}
        self._status_held = ""  # the status file is another process's (see _lock_status_file)
        self._connected_at_stop: dict[str, Any] = {}  # each adapter's, when the stop began
        self._status_write: asyncio.Future[None] | None = None  # the write in its thread
        # When serving began: `gateway run` passes its own start, so that a reload, which
        # builds a new Gateway, does not look like a restart in `gateway status` ("up").
        self._started_at = time.time() if started is None else started
        # systemd's notify socket (``gateway run`` under a Type=notify unit); by default none.
        self.notifier = notifier or Notifier(None)
        # A reload's kept parts (`gateway.handover`): their bus, router and adapters go on.
        if carried is not None and carried.config is not config:
            raise ValueError("kept parts of another config: Carried.narrow them first")
        self.carried = carried
        self.handed: Carried | None = None  # what is still running after run(): see `run`
        # The files as the running parts read them: a kept part's are those the reload's plan
        # saw (a file replaced since then is a change the next reload finds).
        self.stamps = carried.stamps if carried is not None else handover.stamps(config)
        self.bus = carried.bus if carried is not None else bus or Bus()
        self.bus.keep_last()  # for the bridges a reload starts (`Bridge.replay`)
        self.router = carried.router if carried is not None else CommandRouter(self.bus)
        self.context = (
            carried.context
            if carried is not None
            else AdapterContext(self.bus, config.gateway.name, self.router)
        )
        self.parts = carried.parts.copy() if carried is not None else Parts()
        kept = set(self.parts.adapters)
        try:
            self._build(config, kept)
        except BaseException:
            # A config that cannot be built leaves the kept parts as they were, for the
            # config before it (`gateway run` falls back to it).
            self._forget_new()
            raise
        self.started = asyncio.Event()

    def _build(self, config: GatewayConfig, kept: set[str]) -> None:
        self.adapters: dict[str, Adapter] = {}
        # A plugin's constructor, points() and attach() run here: an exception from one is its
        # bug, and stops the start with one line naming the entry, not a traceback.
        for name, entry in config.devices.items():
            if name in kept:
                self.adapters[name] = self.parts.adapters[name]
                continue
            # A `requires` module missing is refused here as validate says it will be, even
            # when the adapter's own import would not notice (it imports the module later).
            entry.spec.check_adapter(entry.role, load=False)
            cls = entry.spec.adapter_class(entry.role)
            try:
                self.adapters[name] = cls(name, entry.config, self.context)
            except Exception as exc:
                raise StartError(self._part(name), exc) from exc
        sources: dict[str, list[PointSpec]] = {}
        for name, adapter in self.adapters.items():
            try:
                sources[name] = adapter.points()
            except Exception as exc:
                raise StartError(self._part(name), exc, "points() failed: ") from exc
        for name, points in sources.items():
            if name not in kept:  # a kept one's declarations are in the router still
                self.router.declare(name, points)
        self.bridges = []
        self._new_bridges: list[Bridge] = []
        events = {name: event_points(entry.config) for name, entry in config.devices.items()}
        for b in config.bridges:
            bridge = self.parts.bridges.get(b.name) if b.target in kept else None
            if bridge is None:
                target = self.adapters[b.target]
                bridge = Bridge(
                    b, self.bus, target, router=self.router, sources=sources, events=events
                )
                self._new_bridges.append(bridge)
            self.bridges.append(bridge)
        for bridge in self._new_bridges:
            try:
                bridge.target.attach(bridge)
            except Exception as exc:
                doing = f"attach(bridge {bridge.name!r}) failed: "
                raise StartError(self._part(bridge.target.name), exc, doing) from exc
        self._targets = {b.target for b in config.bridges}
        # The device shadow (``shadow:`` in the config): reported/desired/delta per device.
        # Bridges read ``gateway.shadow.state(device)`` as context (computed points, topics).
        self.shadow: ShadowService | None = None
        if config.shadow is not None:
            from gateway.shadow.service import ShadowService

            feed = self.carried.shadow_feed if self.carried is not None else None
            self.shadow = ShadowService(
                config.shadow, self.bus, self.router, self.adapters, telemetry=feed
            )
        for bridge in self.bridges:  # a kept bridge takes the new shadow, or none
            bridge.use_shadow(self.shadow.state if self.shadow is not None else None)
            bridge.use_history(self.shadow)

    def _part(self, name: str) -> str:
        """How a start error names the entry ``name``: ``device 'plc' (modbus)``."""
        entry = self.config.devices[name]
        kind = "endpoint" if entry.section == "endpoints" else "device"
        return f"{kind} {name!r} ({entry.protocol})"

    def status(self) -> dict[str, Any]:
        return {
            "adapters": {name: self._adapter_status(name, a) for name, a in self.adapters.items()},
            "bridges": {b.name: b.status() for b in self.bridges},
            "bus": {"published": self.bus.published, "unrouted": self.bus.unrouted},
            "writes": self.router.status(),
            **({"shadow": self.shadow.status()} if self.shadow is not None else {}),
            **({"loop": self.loop_monitor.figures()} if self.loop_monitor is not None else {}),
        }

    async def run(self, stop: asyncio.Event, upcoming: Upcoming | None = None) -> None:
        """Run until ``stop`` is set, then shut down in order.

        ``upcoming`` (``gateway run``): called once ``stop`` is set, the config a reload runs
        next, or None. The parts it keeps unchanged (`gateway.handover`) are not stopped but
        left running in ``handed`` for the next gateway; after any run, ``handed`` holds what
        is still running (a failed start hands back the kept parts it was given), or None.

        From here on the status file says ``starting``, then ``running``, ``failed`` (with the
        reason) if a part cannot start or the run ends on an error, and ``stopped`` after any
        clean stop, one during start-up included. (``gateway run`` records a plugin or model
        refused before ``run`` as failed too: `livestatus.record_refused`.)"""
        lock = self._lock_status_file()
        if self._status_held and self.exclusive:
            await self._unwind([])
            raise StartError(
                f"gateway {self.config.gateway.name!r}",
                RuntimeError(
                    f"it is already running: {self._status_held}; stop it first, or give this"
                    " config its own gateway.name"
                ),
            )
        try:
            await self._write_status("starting", {}, self._starting_line())
            try:
                await self._run(stop, upcoming)
            except Exception as exc:
                await self._write_status("failed", {}, str(exc) or type(exc).__name__)
                raise
            await self._write_status("stopped", self._stopped_status(), self.summary(stopped=True))
        finally:
            if lock is not None:
                lock.release()

    def _lock_status_file(self) -> FileLock | None:
        """The status file is this run's alone: another process of the same gateway (refused
        by `run` when ``exclusive``, else running beside it) must not write over what the
        running one says. Without the lock, no status file."""
        if self.status_file is None:
            return None
        try:
            return livestatus.lock(self.status_file)
        except OutboxInUse as exc:  # said once this run is up: a refused start says one line
            self._status_held = str(exc)
            self.status_file = None
        except OSError as exc:  # a read-only or full disk: _write_status says so each time
            log.debug("status folder: %s", exc)
        return None

    async def _run(self, stop: asyncio.Event, upcoming: Upcoming | None) -> None:
        # Listening from the start: /health answers and /ready says "starting" while the
        # adapters start. A run closes it as its stop begins; a start that fails, here.
        metrics_server = await self._open_metrics()
        try:
            await self._start_and_serve(stop, upcoming, metrics_server)
        finally:
            if metrics_server is not None:
                await metrics_server.__aexit__(None, None, None)

    async def _start_and_serve(
        self,
        stop: asyncio.Event,
        upcoming: Upcoming | None,
        metrics_server: metrics.MetricsServer | None,
    ) -> None:
        parts = self.parts
        # Sinks are entered first so that they are exited last; kept ones are running already.
        order = sorted(self.adapters.values(), key=lambda a: a.name not in self._targets)
        entered: list[str] = []
        shadow_exit: ExitFn | None = None
        kept = self.carried.parts.adapters if self.carried is not None else {}
        try:
            for adapter in order:
                if adapter.name in parts.exits:
                    continue
                entry = self.config.devices.get(adapter.name)
                kind = (
                    "endpoint" if entry is not None and entry.section == "endpoints" else "device"
                )
                exit_ = await _enter(adapter, f"{kind} {adapter.name!r}", stop)
                if exit_ is None:
                    await self._unwind(entered)
                    self.notifier.stopping("stopping (stopped while starting)")
                    log.info("gateway %s: stopped while starting", self.config.gateway.name)
                    return
                parts.enter(adapter, exit_, sink=adapter.name in self._targets)
                entered.append(adapter.name)
            for bridge in self._new_bridges:
                bridge.subscribe()
                for source in bridge.config.sources:
                    last = self.bus.last(telemetry_topic(source)) if source in kept else None
                    if last is not None:
                        bridge.replay(last)
            if self.shadow is not None:  # entered last: closed before the adapters
                where = f"the shadow store {self.shadow.config.file()}"
                shadow_exit = await _enter(self.shadow, where, stop)
                if shadow_exit is None:
                    await self._unwind(entered)
                    self.notifier.stopping("stopping (stopped while starting)")
                    return
                if self.carried is not None and self.carried.shadow_feed is None:
                    for source in kept:  # a shadow the reload adds: what they last read
                        if (last := self.bus.last(telemetry_topic(source))) is not None:
                            self.shadow.replay(last)
        except BaseException:
            await self._unwind(entered)
            raise
        shadow = (
            [asyncio.create_task(_supervise("shadow", self.shadow.run), name="shadow")]
            if self.shadow is not None
            else []
        )
        for n, a in self.adapters.items():
            if n not in parts.tasks:
                health = parts.health[n] = RunHealth()
                parts.tasks[n] = asyncio.create_task(
                    _supervise(n, a.run, on_failure=self._points_lost(a), health=health),
                    name=f"adapter:{n}",
                )
        for b in self.bridges:
            if b.name not in parts.bridge_tasks:
                parts.bridges[b.name] = b
                parts.bridge_tasks[b.name] = asyncio.create_task(
                    _supervise(f"bridge {b.name}", b.run), name=f"bridge:{b.name}"
                )
        if self.carried is not None and self.shadow is None and self.carried.shadow_feed:
            self.carried.shadow_feed.close()  # no shadow service in this config to take it
        self.carried = None  # from here on this run owns them, and stops or hands them on
        reporter = asyncio.create_task(self._report(self.config.gateway.status_interval))
        # What exists now (an OPC UA address space: millions of objects) lives as long as
        # the gateway: out of the collector's sight, full collections stay short.
        gc.collect()
        gc.freeze()
        next_config: GatewayConfig | None = None
        next_stamps = handover.Stamps()
        keep: frozenset[str] = frozenset()
        try:
            for adapter in list(kept.values()):  # the files they read live may have changed
                await _reloaded(adapter)
            self.started.set()
            off = [*self.config.disabled, *(f"bridge {b}" for b in self.config.disabled_bridges)]
            running = (
                f"running: {counted(len(self.adapters), 'adapter')}, "
                f"{counted(len(self.bridges), 'bridge')}"
            )
            log.info(
                "gateway %s %s%s",
                self.config.gateway.name,
                running,
                f"; not started (enabled: false): {', '.join(off)}" if off else "",
            )
            # Ready: every adapter entered (servers listening, clients set up; a client's
            # device is connected in its run(), so a dead device does not hold this back),
            # bridges subscribed, every task created. The readings come after.
            self.notifier.ready(running)
            if self._status_held:
                log.warning("status file not written by this run: %s", self._status_held)
            await self._write_status("running")
            await stop.wait()
            self._connected_at_stop = {
                n: self._adapter_status(n, a).get("connected") for n, a in self.adapters.items()
            }
            next_config = upcoming() if upcoming is not None else None
            if next_config is not None:
                next_stamps = handover.stamps(next_config)
                plan = handover.plan(self.config, self.stamps, next_config, next_stamps)
                keep = plan.kept
                log.info("reload: %s", plan.line())
        finally:
            self.notifier.stopping("stopping")
            log.info(
                "gateway %s stopping%s",
                self.config.gateway.name,
                " what the reload does not keep" if keep else "",
            )
            await _cancel([reporter])
            if metrics_server is not None:
                await metrics_server.__aexit__(None, None, None)

            feed: Subscription | None = None

            async def close_shadow() -> None:
                nonlocal feed
                await _cancel(shadow)
                if self.shadow is not None and keep and next_config is not None:
                    if next_config.shadow is not None:  # kept sources' readings wait for it
                        feed = self.shadow.pass_on()
                if shadow_exit is not None:
                    await shadow_exit(None, None, None)

            stopping = set(parts.adapters) - keep
            await parts.stop(stopping, self.router, self.bus, after_sources=close_shadow)
            gc.unfreeze()
            if parts.adapters:
                assert next_config is not None
                self.handed = Carried(
                    next_config, next_stamps, self.bus, self.router, self.context, parts, feed
                )
            else:
                self.router.close()
        if self.handed is not None:
            log.info("gateway %s: stopped what the reload does not keep", self.config.gateway.name)
        else:
            log.info("gateway %s stopped", self.config.gateway.name)

    async def _open_metrics(self) -> metrics.MetricsServer | None:
        """The Prometheus listener of ``gateway.metrics``, or None. One that cannot listen (its
        port taken) is an error in the log, not a failed start: the gateway runs unwatched
        rather than not at all."""
        settings = self.config.gateway.metrics
        if settings is None:
            return None
        entries = {n: (e.protocol, e.role) for n, e in self.config.devices.items()}

        def page() -> str:
            return metrics.exposition(
                self.status() if self.started.is_set() else {},  # adapters not entered yet
                gateway=self.config.gateway.name,
                version=__version__,
                started=self._started_at,
                entries=entries,
                process=metrics.process_metrics(),
                kinds={n: a.metric_kinds for n, a in self.adapters.items()},
            )

        probes = health.Probes(
            gateway=self.config.gateway.name,
            names=self.adapters,
            started=self.started.is_set,
            status=self.status,
            snapshot=self._live_snapshot,
            loop=self.loop_monitor.figures if self.loop_monitor is not None else None,
            live_lag_ms=settings.liveness_lag * 1000,
        )
        server = metrics.MetricsServer(settings.host, settings.port, page, probes.routes())
        try:
            return await server.__aenter__()
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); this run serves no metrics",
                settings.host,
                settings.port,
                exc.strerror or exc,
            )
            return None

    async def _unwind(self, entered: list[str]) -> None:
        """A start that failed or was stopped: close what this run entered, in the reverse
        order; the kept parts go on, handed back for the next start (`gateway run`)."""
        for bridge in self._new_bridges:  # the bus outlives this start: no queue left on it
            bridge.unsubscribe()
        closing, entered[:] = list(entered), []  # once, should an exit raise
        for name in reversed(closing):
            exit_ = self.parts.exits.pop(name, None)
            if exit_ is not None:
                await exit_(None, None, None)
        self.parts.order = [n for n in self.parts.order if n not in closing]
        self._forget_new()
        self.handed = self.carried

    def _forget_new(self) -> None:
        """The adapters this gateway made (not those it was handed) leave the router and the
        parts: their start did not happen, or was undone."""
        kept = self.carried.parts.adapters if self.carried is not None else {}
        for name, adapter in self.adapters.items():
            if name not in kept:
                self.router.forget(name, adapter)
                self.parts.adapters.pop(name, None)

    def summary(self, status: dict[str, Any] | None = None, *, stopped: bool = False) -> str:
        """One line for the log: what is connected, what flowed, what was dropped; the anomaly
        scorers' alarms and each uplink optimizer's policy where they are configured. From
        ``status`` (`status`'s dict) when the caller has it already. ``stopped``: the line of
        a run that ended cleanly: the totals, without the connections (all closed by then,
        which is no news of a device being down)."""
        status = self.status() if status is None else status
        statuses: dict[str, dict[str, Any]] = status["adapters"]
        adapters = list(statuses.values())
        down = list(health.down(statuses))  # as /ready and gateway status count them
        bridges: list[dict[str, Any]] = list(status["bridges"].values())
        connected = f"{len(adapters) - len(down)}/{len(adapters)} connected, "
        text = (
            ("stopped: " if stopped else connected)
            + f"{counted(self.bus.published, 'bus message')}, "
            f"{sum(b['forwarded'] for b in bridges)} forwarded, "
            f"{sum(b['dropped'] for b in bridges)} dropped in bridges, "
            f"{sum(int(a.get('dropped', 0)) for a in adapters)} dropped in adapters"
        )
        if "shadow" in status:  # readings the shadow could not keep up with, not recorded
            shadow = status["shadow"]
            text += f", {shadow['dropped']} dropped in the shadow"
            if shadow.get("documents_paused"):  # below the outbox's room: see shadow.store
                text += f" (disk low: {shadow['documents_unsaved']} documents kept in memory)"
            elif shadow["history_paused"]:
                text += " (history paused: disk below shadow.history.min_free)"
            if shadow.get("history_merge_failing"):  # rows stay staged, unindexed, not lost
                text += f" (history merge failing: {shadow['history_staged']} rows staged)"
            if shadow.get("history_capped"):  # shadow.history.max_bytes reached: oldest rows go
                text += f" (history over max_bytes: {shadow['history_capped']} oldest rows deleted)"
        missed = sum(int(a.get("polls_missed", 0)) for a in adapters)
        if missed:  # a poll slower than its interval: readings never taken
            text += f", {counted(missed, 'poll')} skipped late"
        if down and not stopped:
            text += f"; down: {', '.join(down[:10])}" + (" ..." if len(down) > 10 else "")
        scored = [b["anomaly"] for b in bridges if b.get("anomaly")]
        if scored:
            active = sorted({d for a in scored for d in a["active"]})
            alarms = counted(sum(a["alarms"] for a in scored), "alarm")
            which = f" ({', '.join(active[:3])}{' ...' if len(active) > 3 else ''})"
            calibrating = sum(len(a["calibrating"]) for a in scored)
            text += f"; anomaly: {alarms}, {len(active)} active{which if active else ''}, "
            text += f"{calibrating} calibrating"
        for name, status in statuses.items():
            opt = status.get("optimizer")
            if opt:
                decisions = counted(opt["decisions"], "decision")
                text += f"; optimizer {name}: {opt['in_force']}, {decisions}"
        return text

    @property
    def status_every(self) -> float:
        """Seconds between status reports: the configured interval, or `QUIET_STATUS_S` for
        the file alone when the log's status lines are off."""
        return _status_every(self.config.gateway.status_interval)

    async def _report(self, interval: float) -> None:
        """Every ``interval`` s: the status line in the log, systemd's STATUS and the status
        file; with ``interval`` 0, STATUS and the file every `QUIET_STATUS_S`, no log line."""
        streak = FailureStreak(log, "status report")
        lines = interval > 0
        interval = _status_every(interval)
        # The first report soon after start: the one written at READY predates every
        # connection, and would say "down" for a whole interval (60 s by default).
        wait = min(interval, FIRST_REPORT_S)
        while True:
            await asyncio.sleep(wait)
            wait = interval
            try:
                status = self.status()
                line = self.summary(status)
            except Exception as exc:  # a bug of ours must not end the reports
                streak.failed(f"the status report failed: {exc!r}")
                continue
            streak.succeeded()
            if lines:
                log.info("status: %s", line)
            self.notifier.status(line)
            await self._write_status("running", status, line)

    def _stopped_status(self) -> dict[str, Any]:
        """The status after a clean stop: the final counters, and each adapter connected as it
        was when the stop began (the stop itself disconnects every one: `gateway status`
        listed them all as "was down")."""
        status = self.status()
        for name, connected in self._connected_at_stop.items():
            info = status["adapters"].get(name)
            if isinstance(info, dict) and "connected" in info:
                info["connected"] = connected
        return status

    async def _write_status(
        self, state: str, status: dict[str, Any] | None = None, line: str | None = None
    ) -> None:
        """Rewrite the status file, if this gateway keeps one; a disk that refuses it is
        logged (once per run of failures) and the gateway goes on. The write runs in a thread:
        an SD card busy with the outbox can hold a write for seconds, and the event loop (and
        with it the systemd watchdog's pings) must not wait for it."""
        if self.status_file is None:
            return
        try:
            snapshot = self._snapshot(state, status, line)
            # One write at a time, in order: a write whose reporter was cancelled goes on in
            # its thread, and must land before the "stopped" that follows it, not after.
            previous = self._status_write
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))
            write = asyncio.ensure_future(
                asyncio.to_thread(livestatus.write, self.status_file, snapshot)
            )
            write.add_done_callback(_retrieved)  # its OSError is logged by whoever awaits it
            self._status_write = write
            await asyncio.shield(write)
        except Exception as exc:  # a full disk, or an adapter's status() bug: not fatal
            self._status_streak.failed(f"not written: {exc!r}", traceback=False)
        else:
            self._status_streak.succeeded()

    def _snapshot(
        self, state: str, status: dict[str, Any] | None = None, line: str | None = None
    ) -> dict[str, Any]:
        """The status file's document (`livestatus.snapshot`): ``status`` and ``line`` as
        of now where not given."""
        status = self.status() if status is None else status
        return livestatus.snapshot(
            gateway=self.config.gateway.name,
            config=self.config_file,
            started=self._started_at,
            state=state,
            summary=self.summary(status) if line is None else line,
            status=status,
            interval=self.status_every,
        )

    def _live_snapshot(self) -> dict[str, Any]:
        """``/status``: the document the status file would hold now."""
        if self.started.is_set():
            return self._snapshot("running")
        return self._snapshot("starting", {}, self._starting_line())

    def _starting_line(self) -> str:
        return f"starting {counted(len(self.adapters), 'adapter')}"

    def _adapter_status(self, name: str, adapter: Adapter) -> dict[str, Any]:
        """``adapter.status()``; a failing one (a plugin's bug) is shown as such, and the
        status line, the status file and the other adapters' status go on without it."""
        streak = self._adapter_streaks.get(name)
        if streak is None:
            streak = self._adapter_streaks[name] = FailureStreak(log, f"{name}: status()")
        try:
            status = adapter.status()
        except Exception as exc:
            streak.failed(f"failed: {exc!r}")
            return {"status_error": f"status() failed: {exc!r}"}
        streak.succeeded()
        health = self.parts.health.get(name)
        if health is not None and health.failures:
            failed = {"run_failures": health.failures, "last_run_error": health.last_error}
            status = {**status, **failed}
            if health.restarting:  # its run() failed: down, whatever it said before
                status["connected"] = False
                status["last_error"] = f"run() failed, restarting: {health.last_error}"
        return status

    @staticmethod
    def _points_lost(adapter: Adapter) -> Callable[[BaseException], Awaitable[None]]:
        """What the supervisor does when ``adapter``'s run fails: its points go Bad."""

        async def lost(exc: BaseException) -> None:
            await adapter.points_lost(f"adapter failed: {_why(exc, typed=False)}")

        return lost


async def _reloaded(adapter: Adapter) -> None:
    """``adapter.reloaded()``, at most `RELOADED_TIMEOUT` s; a failure is logged and the
    adapter runs on as it was."""
    try:
        await asyncio.wait_for(adapter.reloaded(), RELOADED_TIMEOUT)
    except TimeoutError:
        log.error("%s: applying the reload took over %g s; left", adapter.name, RELOADED_TIMEOUT)
    except Exception as exc:
        log.error("%s: applying the reload: %s", adapter.name, _cause(exc))


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: a caller cancelled while awaiting it cannot."""
    if not future.cancelled():
        future.exception()


async def _enter(
    part: contextlib.AbstractAsyncContextManager[Any], what: str, stop: asyncio.Event
) -> ExitFn | None:
    """Enter ``part``; its exit, or None if ``stop`` was set first (SIGTERM during start).
    A part that fails, or has not started within START_TIMEOUT, is a StartError."""
    entering = asyncio.ensure_future(part.__aenter__())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait(
            {entering, stopping}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
        )
    finally:
        stopping.cancel()
    if not entering.done():
        await _cancel([entering], patience=5.0)
        if stop.is_set():
            return None
        raise StartError(what, TimeoutError(f"did not finish starting in {START_TIMEOUT:.0f} s"))
    if entering.cancelled():
        raise StartError(what, RuntimeError("its start was cancelled"))
    exc = entering.exception()
    if exc is not None:
        raise StartError(what, exc) from exc
    return _quiet_exit(part, what)


def _quiet_exit(part: contextlib.AbstractAsyncContextManager[Any], what: str) -> ExitFn:
    """``part.__aexit__``; a failure to close is one line and the next part still closes
    (an adapter's bug in __aexit__ must not lose the others' last writes)."""

    async def exit_(*exc_info: Any) -> bool:
        try:
            await part.__aexit__(*exc_info)
        except Exception as exc:
            log.error("%s did not close cleanly: %s", what, f"{type(exc).__name__}: {exc}")
        return False

    return exit_


async def _supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_failure: Callable[[BaseException], Awaitable[None]] | None = None,
    health: RunHealth | None = None,
) -> None:
    """Run ``run`` for ever, restarting it after a failure with a backoff that starts over
    once a run has lasted longer than the longest delay. The first failure is logged with its
    traceback, later ones in one line each; ``health`` records them for the status."""
    backoff = BackoffTimer(SUPERVISOR_BACKOFF)
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    failures = 0
    while True:
        started = loop.time()
        requests = me.cancelling() if me is not None else 0
        # Each run in a task of its own: on Python 3.11 a TaskGroup in run() whose child failed
        # leaves the cancel request it made of its parent counted, and a next run in the same
        # task (raise_if_cancelling, a library's close) would take the restart for a shutdown.
        # Cancelling this task cancels the run's task too.
        attempt = asyncio.ensure_future(run())
        if me is not None and isinstance(attempt, asyncio.Task):
            attempt.set_name(f"{me.get_name()}/run")
        try:
            await attempt
            failure: BaseException = _Returned("run() returned by itself")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc
        if me is not None and me.cancelling() > requests:
            # Cancelled while the run failed (the failure came out instead): a shutdown.
            raise asyncio.CancelledError
        if loop.time() - started > SUPERVISOR_BACKOFF.max:
            backoff.reset()
        failures += 1
        delay = backoff.next_delay()
        why = _why(failure)
        if health is not None:
            health.failures, health.last_error, health.restarting = failures, why, True
        if failures == 1:
            log.error(
                "%s failed; restarting it in %.1f s, the rest of the gateway keeps running: %s",
                name,
                delay,
                why,
                exc_info=failure if failure.__traceback__ is not None else None,
            )
        else:
            log.error(
                "%s failed again (%d times); restarting in %.1f s: %s", name, failures, delay, why
            )
        if on_failure is not None:
            try:
                await on_failure(failure)
            except Exception:
                log.debug("%s: could not mark its points bad", name, exc_info=True)
        await asyncio.sleep(delay)
        if health is not None:
            health.restarting = False


async def stuck_tasks(patience: float = 5.0) -> list[str]:
    """After the gateway has stopped: cancel the tasks still running (libraries' helpers) and
    return the names of those that ignore it. ``asyncio.run`` would wait for them for ever,
    so ``gateway run`` exits without them (everything of ours is closed by then)."""
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    await _cancel(left, patience)
    return sorted(t.get_name() for t in left if not t.done())


async def _cancel(tasks: list[asyncio.Task[None]], patience: float = CANCEL_TIMEOUT) -> None:
    """Cancel and wait, cancelling again while a task keeps running.

    One cancel is not always enough: on Python 3.11 ``asyncio.wait_for`` (pymodbus waits for
    every response with it) swallows a cancellation that arrives as its inner future
    completes, and the task goes on polling. Under load that race is common.
    """
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while pending:
        for t in pending:
            t.cancel()
        _done, pending = await asyncio.wait(pending, timeout=0.2)
        if pending and loop.time() > deadline:
            names = ", ".join(sorted(t.get_name() for t in pending)[:10])
            log.error("shutdown: %d tasks ignore cancellation: %s", len(pending), names)
            return
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.error("%s ended with %r", t.get_name(), t.exception())
