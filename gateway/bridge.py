"""A bridge: one declared route from source devices to a target adapter, and back.

Up: select (``points``) -> convert (``units``) -> ``computed`` -> score (``anomaly``, on the raw
readings under the source's names) -> rename (``translate``) -> summarise (``aggregate``, over
the names the target sees) -> sink (the target adapter's ``send``), and ``heartbeat`` re-sends
what went to the sink once it has been quiet (`gateway.aggregate`).
Down: a target that serves the points (an OPC UA server) writes through ``Bridge.write``, which
undoes the unit conversion and hands the write to the command router and its safety rules; one
that re-serves a device's alarms sends an operator's acknowledgement back through
``Bridge.call_condition`` (`gateway.conditions`), only to a device whose events it carries.

Each bridge has its own bus subscription, so a slow target only backs up its own queue. The
queue drops the oldest message when full (live telemetry: the newest value wins) and counts it;
the durable outbox of a later release replaces this for uplinks that must not lose anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gateway.aggregate import TEXT_TYPES, Aggregator, Heartbeat
from gateway.bus import Bus, OverflowPolicy, Subscription
from gateway.commands import CommandRouter, WriteResult, WriteStatus
from gateway.computed import ComputedPoints, ShadowState
from gateway.conditions import CallResult, ConditionCall, request
from gateway.extras import missing_library
from gateway.globs import Globs
from gateway.streak import FailureStreak
from gateway.types import Message, MessageKind, PointSpec, Sample, Value, telemetry_topic

if TYPE_CHECKING:
    from pydantic import BaseModel

    from gateway.adapter import Adapter
    from gateway.anomaly.stage import AnomalyStage
    from gateway.config import BridgeConfig
    from gateway.shadow.store import HistoryRow
    from gateway.translator.transform import Translate

log = logging.getLogger(__name__)

ANOMALY_BATCH = 64  # messages scored in one model call when they queue up
TICK = 1.0  # seconds between checks for windows to close and points to re-send, at most

# Per (point, unit): None = filtered out, else (unit after, converter or None).
Decision = tuple[str | None, Callable[[float], float] | None] | None


class HistorySource(Protocol):
    """Where a bridge finds its devices' past readings (the shadow service)."""

    def keeps_history(self, device: str) -> bool: ...

    async def history_page(self, device: str, point: str, **query: Any) -> list[HistoryRow]: ...


class PointTransform:
    """Selects points by glob and converts units; decisions cached per point name."""

    def __init__(self, points: tuple[str, ...], units: dict[str, str]) -> None:
        self._globs = Globs(points or ("*",))
        self._units = units
        self._plan: dict[tuple[str, str | None], Decision] = {}

    def _decide(self, point: str, unit: str | None) -> Decision:
        if point not in self._globs:
            return None
        for glob, target in self._units.items():
            if fnmatch.fnmatchcase(point, glob):
                if unit is None or unit == target:
                    return (target if unit is None else unit, None)
                from gateway.units import converter

                return (target, converter(unit, target))
        return (unit, None)

    def selects(self, point: str) -> bool:
        return point in self._globs

    def target_unit(self, point: str, unit: str | None) -> str | None:
        decision = self._decide(point, unit)
        return None if decision is None else decision[0]

    def apply(self, samples: tuple[Sample, ...]) -> tuple[Sample, ...]:
        out: list[Sample] = []
        plan = self._plan
        for s in samples:
            key = (s.point, s.unit)
            if key in plan:
                decision = plan[key]
            else:
                decision = plan[key] = self._decide(s.point, s.unit)
            if decision is None:
                continue
            unit, conv = decision
            if conv is not None:
                if isinstance(s.value, (int, float)) and not isinstance(s.value, bool):
                    # 12 significant digits: drops the float noise of the conversion itself.
                    s = replace(s, value=float(f"{conv(float(s.value)):.12g}"), unit=unit)
                elif s.value is None:  # a failed read: in the unit the good ones arrive in
                    s = replace(s, unit=unit)
            out.append(s)
        return tuple(out)


@contextlib.contextmanager
def _stage_starts(bridge: str) -> Iterator[None]:
    """A stage of ``bridge`` cannot start (an optional library missing, a model or examples
    file that cannot be used): a StartError naming the bridge (``gateway run`` prints it as one
    line; for a library, with the pip install that brings it), not a traceback."""
    from gateway.runtime import StartError

    try:
        yield
    except ModuleNotFoundError as exc:
        needs = missing_library(exc)
        if needs is None:
            raise
        raise StartError(f"bridge {bridge!r}", ModuleNotFoundError(needs, name=exc.name)) from None
    except Exception as exc:
        raise StartError(f"bridge {bridge!r}", exc) from None


class Bridge:
    def __init__(
        self,
        config: BridgeConfig,
        bus: Bus,
        target: Adapter,
        *,
        router: CommandRouter | None = None,
        sources: dict[str, list[PointSpec]] | None = None,
        events: dict[str, list[str]] | None = None,
        queue_size: int = 10000,
    ) -> None:
        self.config = config
        self.router = router
        self._sources = sources or {}
        self._events = events or {}  # device -> the samples its events carry (``event_points``)
        self.name = config.name
        self.bus = bus
        self.target = target
        self.queue_size = queue_size
        self.transform = PointTransform(tuple(config.points), dict(config.units))
        self.translate: Translate | None = None
        if config.translate is not None:
            from gateway.translator.transform import Translate

            self.translate = Translate(config.translate, bus)
            # auto: the classifier (model, few-shot examples) is loaded now, not at the first
            # new point inside the bridge's task, where a failure would only be logged.
            with _stage_starts(self.name):
                self.translate.prepare()
        # ``computed:``: reads the shadow once the runtime hands it over (`use_shadow`).
        self.computed = ComputedPoints(list(config.computed)) if config.computed else None
        # A target's topic template with {shadow.reported.<key>}: each message carries its
        # device's shadow document in meta["shadow"] (a reference, no copy).
        self._route_reads_shadow = "{shadow." in str(getattr(config.route, "topic", ""))
        self._shadow_state: ShadowState | None = None
        self._history: HistorySource | None = None
        self.forwarded = 0
        self.failed = 0
        # a target that rejects everything is logged when that starts and ends, not per message
        self._sending = FailureStreak(log, f"bridge {self.name}")
        self._subs: list[Subscription] = []
        # ``anomaly:``: numpy and ONNX Runtime are imported only by bridges that score.
        self.anomaly: AnomalyStage | None = None
        if config.anomaly is not None:
            with _stage_starts(self.name):
                from gateway.anomaly.stage import AnomalyStage
                from gateway.anomaly.store import store_path

            # Calibrations are kept in the state folder, so a restart does not learn normal
            # again from whatever the devices do then.
            self.anomaly = AnomalyStage(
                config.anomaly, bus, config.name, store=store_path(config.name)
            )
        # ``aggregate:`` and ``heartbeat:``: after translate, on the names the target sees.
        self.aggregate: Aggregator | None = None
        self.heartbeat: Heartbeat | None = None
        self._late_said = False
        if config.aggregate is not None:
            options = config.aggregate
            # A failed read of a point declared as text passes through, not as a bad number.
            text = [(d, p.name) for d, ps in self.points().items() for p in ps
                    if p.datatype in TEXT_TYPES]  # fmt: skip
            self.aggregate = Aggregator(
                options.every, options.stats, points=options.points, grace=options.grace,
                text=text, name=f"bridge:{self.name}",
            )  # fmt: skip
        if config.heartbeat is not None:
            kept = [(d, p.name) for d, ps in self.points().items() for p in ps]
            self.heartbeat = Heartbeat(config.heartbeat, kept=kept, name=f"bridge:{self.name}")

    def event_devices(self) -> list[str]:
        """The sources whose events this bridge carries (its ``points:`` select some of their
        fields): a target that serves events sets them up at start, before the first one."""
        return [
            device
            for device in self.config.sources
            if any(self.transform.selects(name) for name in self._events.get(device, ()))
        ]

    def points(self) -> dict[str, list[PointSpec]]:
        """The points this bridge carries, per source device, as the target sees them:
        filtered by the bridge's globs, in the bridge's units (range converted too)."""
        out: dict[str, list[PointSpec]] = {}
        for device in self.config.sources:
            specs = []
            for p in self._sources.get(device, []):
                if not self.transform.selects(p.name):
                    continue
                unit = self.transform.target_unit(p.name, p.unit)
                if unit != p.unit and p.unit is not None and unit is not None:
                    from gateway.units import converter

                    conv = converter(p.unit, unit)
                    low = None if p.low is None else conv(p.low)
                    high = None if p.high is None else conv(p.high)
                    if low is not None and high is not None and low > high:
                        low, high = high, low
                    # 21 degC is 69.8 degF: a converted integer point carries floats.
                    datatype = "float64" if p.datatype not in ("float32", "float64") else p.datatype
                    p = replace(p, unit=unit, low=low, high=high, datatype=datatype)
                if self.translate is not None:
                    # The target sees the translated names; auto-mode names appear at run time.
                    name = self.translate.target_name(p.name)
                    if name is None:
                        continue
                    p = replace(p, name=name, id=f"{device}/{name}")
                specs.append(p)
            if self.computed is not None:
                specs.extend(self.computed.specs(device))
            if self.aggregate is not None:
                specs = [summary for p in specs for summary in self.aggregate.specs(p)]
            out[device] = specs
        return out

    def _source_point(self, device: str, point: str) -> str | None:
        """The source's name of the point the target calls ``point`` (translate undone);
        None if this bridge does not carry it (a summary of ``aggregate:`` has none)."""
        if self.aggregate is not None and self.aggregate.summary_of(point) is not None:
            return None
        if self.translate is not None:
            has = {p.name for p in self._sources.get(device, [])} or None
            source_point = self.translate.source_name(point, has)
            if source_point is None:
                return None
            point = source_point
        return point if self.transform.selects(point) else None

    def historized(self, device: str, point: str) -> bool:
        """Whether the past readings of the target's ``point`` are kept (a shadowed device's
        own points; not computed ones, which exist only on the way to the target)."""
        history = self._history
        if history is None or device not in self.config.sources:
            return False
        if self.computed is not None and any(p.name == point for p in self.computed.specs(device)):
            return False
        return history.keeps_history(device) and self._source_point(device, point) is not None

    async def history(self, device: str, point: str, **query: Any) -> list[HistoryRow]:
        """`ShadowStore.history_page` for the target's ``point`` of a `historized` one, values
        in the bridge's units (the target's)."""
        source = self._source_point(device, point)
        history = self._history
        if source is None or history is None:
            raise LookupError(f"bridge {self.name} keeps no history of {device}/{point}")
        rows = await history.history_page(device, source, **query)
        spec = next((p for p in self._sources.get(device, []) if p.name == source), None)
        unit = self.transform.target_unit(source, spec.unit) if spec is not None else None
        if spec is None or spec.unit is None or unit is None or unit == spec.unit:
            return rows
        from gateway.units import converter

        conv = converter(spec.unit, unit)
        return [
            replace(r, value=conv(float(r.value)))
            if isinstance(r.value, (int, float)) and not isinstance(r.value, bool)
            else r
            for r in rows
        ]

    async def write(
        self,
        device: str,
        point: str,
        value: Value,
        *,
        origin: str,
        ack_timeout: float | None = None,
    ) -> WriteResult:
        """A write from the target side: back to source units, then the router's safety rules."""
        if self.aggregate is not None and (of := self.aggregate.summary_of(point)) is not None:
            return WriteResult(
                WriteStatus.NOT_WRITABLE,
                f"{point} is a summary of {of} (bridge {self.name}'s aggregate:), not a point",
            )
        source_point = self._source_point(device, point)
        if source_point is None:
            return WriteResult(
                WriteStatus.UNKNOWN_POINT, f"bridge {self.name} does not carry {point}"
            )
        point = source_point
        if self.router is None or device not in self.config.sources:
            return WriteResult(
                WriteStatus.UNKNOWN_POINT, f"bridge {self.name} does not carry {device}"
            )
        spec = next((p for p in self._sources.get(device, []) if p.name == point), None)
        if spec is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            unit = self.transform.target_unit(point, spec.unit)
            if unit is not None and spec.unit is not None and unit != spec.unit:
                from gateway.units import converter

                value = converter(unit, spec.unit)(float(value))
        return await self.router.write(device, point, value, origin=origin, ack_timeout=ack_timeout)

    async def call_condition(
        self, device: str, call: ConditionCall, *, ack_timeout: float | None = None
    ) -> CallResult:
        """An operator's call on an alarm of ``device`` from the target side (an OPC UA
        server's re-served alarm), made by the device: only through a bridge that takes writes
        (it has the router) and carries the device's events."""
        if self.router is None or device not in self.event_devices():
            return CallResult(
                WriteStatus.UNKNOWN_POINT, f"bridge {self.name} does not carry {device}'s events"
            )
        return await request(self.bus, device, call, ack_timeout or self.router.timeout)

    def subscribe(self) -> None:
        """Subscribe before adapters start, so the first readings are not missed."""
        for source in self.config.sources:
            self._subs.append(
                self.bus.subscribe(
                    telemetry_topic(source),
                    maxsize=self.queue_size,
                    overflow=OverflowPolicy.DROP_OLDEST,
                    name=f"bridge:{self.name}:{source}",
                )
            )

    def unsubscribe(self) -> None:
        """Leave the bus without having run (a start that failed): `run` does it otherwise."""
        for sub in self._subs:
            sub.close()
        if self.anomaly is not None:
            self.anomaly.close()

    def replay(self, message: Message) -> None:
        """Queue ``message`` (a source's latest readings, `Bus.last`) as if just published:
        a bridge a reload started from a source that kept running begins with them."""
        for sub in self._subs:
            if sub.pattern == message.topic:
                sub.offer(message)

    async def run(self) -> None:
        if not self._subs:
            self.subscribe()
        try:
            async with asyncio.TaskGroup() as tg:
                for sub in self._subs:
                    tg.create_task(self._pump(sub))
                if self.aggregate is not None or self.heartbeat is not None:
                    tg.create_task(self._clock())
        except asyncio.CancelledError:
            if self.aggregate is not None:  # a stop or a reload: the open windows go out now
                flush = self._send(self.aggregate.flush(time.time()), (), self.config.route)
                # shielded: the runtime cancels again while a stop takes long
                await asyncio.shield(asyncio.ensure_future(flush))
            raise
        finally:
            for sub in self._subs:
                sub.close()
            if self.anomaly is not None:
                self.anomaly.close()

    async def _pump(self, sub: Subscription) -> None:
        route = self.config.route
        n = 0
        async for first in sub:
            batch = [first]
            if self.anomaly is not None:
                # What queued up meanwhile is scored in one model call.
                while len(batch) < ANOMALY_BATCH and (more := sub.get_nowait()) is not None:
                    batch.append(more)
            staged: list[tuple[Message, int]] = []
            reviews: list[Message] = []  # translate: points held back for the first time
            for message in batch:
                n += 1
                if n % 64 == 0:
                    # get() and a non-blocking send() do not suspend while the queue is full:
                    # yield now and then so a backlog does not starve the pollers.
                    await asyncio.sleep(0)
                if (prepared := self._prepare(message)) is not None:
                    staged.append(prepared)
            # Scored before translate: under the source's own point names (as `points`/
            # `exclude` and a kept calibration know them), held-back points included.
            # A device's calibration runs in a worker thread: the loop goes on meanwhile, and
            # this pump's next messages queue up behind it.
            # A device's events (an OPC UA client's alarms) are not scored: no readings.
            readings = [m for m, _ in staged if m.kind is MessageKind.TELEMETRY]
            scored = iter(
                await self.anomaly.process_batch_async(readings)
                if self.anomaly is not None and readings
                else [(m, []) for m in readings]
            )
            for message, plain in staged:
                events: Sequence[Message] = ()
                if message.kind is MessageKind.TELEMETRY:
                    message, events = next(scored)
                await self._send(self._summarised(self._translated(message, plain, reviews)),
                                 events, route)  # fmt: skip
            for event in reviews:
                self._review(event)

    def use_shadow(self, state: ShadowState | None) -> None:
        """The runtime's shadow, for computed points and shadow placeholders in routes (None:
        a reload left none)."""
        self._shadow_state = state
        if self.computed is not None:
            self.computed.state = state

    def use_history(self, history: HistorySource | None) -> None:
        """The runtime's shadow, for a server target's history reads (None: no shadow)."""
        self._history = history

    def _prepare(self, message: Message) -> tuple[Message, int] | None:
        """Select, convert, compute; None when nothing of the message is left. With the
        number of its samples that are the source's own (the computed ones follow them) and
        that translate routes: none of an event's (its fields are selected by ``points`` only:
        they are neither inputs of computed points nor points to rename or classify)."""
        device = message.device or message.topic.rpartition("/")[2]
        samples = self.transform.apply(message.samples)
        reading = message.kind is MessageKind.TELEMETRY
        plain = len(samples) if reading else 0
        if self.computed is not None and reading:
            samples += self.computed.apply(device, message.samples)
        if not samples:
            return None
        if samples is not message.samples:
            message = replace(message, samples=samples)
        if self._route_reads_shadow and self._shadow_state is not None:
            message = replace(message, meta={**message.meta, "shadow": self._shadow_state(device)})
        return message, plain

    def _translated(self, message: Message, plain: int, reviews: list[Message]) -> Message | None:
        """``message`` with its first ``plain`` samples routed by translate (computed points
        keep their names); None when nothing is left. A review event for the target is
        appended to ``reviews``."""
        if self.translate is None or not plain:
            return message
        device = message.device or message.topic.rpartition("/")[2]
        routed, review = self.translate.route(device, message.samples[:plain])
        if review is not None:
            reviews.append(review)
        samples = routed + message.samples[plain:]
        return replace(message, samples=samples) if samples else None

    def _summarised(self, message: Message | None) -> Sequence[Message]:
        """What ``message`` sends now: itself, or with ``aggregate:`` the windows it closed
        and its samples that are not summarised."""
        if message is None:
            return ()
        if self.aggregate is None:
            return (message,)
        late = self.aggregate.late
        out = self.aggregate.add(message, time.time())
        if self.aggregate.late > late and not self._late_said:
            self._late_said = True
            log.warning(
                "bridge %s: a reading of %s came after its window was sent and was dropped"
                " (counted in aggregate.late; said once): a device clock behind by more than"
                " aggregate.grace, or readings out of order",
                self.name,
                message.device or message.topic,
            )
        return out

    async def _clock(self) -> None:
        """Windows the clock closes, and points quiet for ``heartbeat`` seconds."""
        route = self.config.route
        aggregate, heartbeat = self.aggregate, self.heartbeat
        periods = [TICK]
        if aggregate is not None:
            periods.append(aggregate.every / 4)
        if heartbeat is not None:
            periods.append(heartbeat.every / 4)
        tick = max(0.05, min(periods))
        while True:
            await asyncio.sleep(tick)
            if aggregate is not None:
                await self._send(aggregate.due(time.time()), (), route)
            if heartbeat is not None:
                await self._send(heartbeat.due(time.monotonic()), (), route, repeat=True)

    async def _send(
        self,
        messages: Sequence[Message],
        events: Sequence[Message],
        route: BaseModel | None,
        *,
        repeat: bool = False,
    ) -> None:
        """``messages`` and then the alarm ``events`` they raised; ``repeat``: heartbeats."""
        heartbeat = None if repeat else self.heartbeat
        failed = False
        for n, item in enumerate((*messages, *events)):  # alarms raised or cleared go too
            try:
                await self.target.send(item, route)  # type: ignore[arg-type]
            except Exception as exc:  # one bad message must not stop the route
                self.failed += 1
                self._sending.failed(f"target {self.target.name} rejected a message: {exc!r}")
                failed = True
                continue
            if n < len(messages):
                self.forwarded += 1
                if heartbeat is not None:
                    heartbeat.sent(item, time.monotonic())
        if not failed:
            self._sending.succeeded()

    def _review(self, event: Message) -> None:
        """Points held back by translate, for whoever approves them: a target that publishes
        (an MQTT endpoint's ``publish``) gets one JSON document per point on the review topic,
        ``<review_topic>/<device>``, QoS 1. Not through the route: its topic template would
        file the held-back value among the forwarded points. A server target has no place for
        them (they stay on the bus)."""
        publish = getattr(self.target, "publish", None)
        if not callable(publish):
            return
        from gateway.translator.transform import review_document

        try:
            for sample in event.samples:
                doc = review_document(event, sample)
                publish(event.topic, json.dumps(doc, separators=(",", ":")).encode(), 1, False)
        except Exception as exc:
            self.failed += 1
            self._sending.failed(f"target {self.target.name} rejected a review event: {exc!r}")

    def status(self) -> dict[str, Any]:
        return {
            "forwarded": self.forwarded,
            "failed": self.failed,
            "dropped": sum(s.counters.dropped for s in self._subs),
            "queued": sum(len(s) for s in self._subs),
            **({"anomaly": self.anomaly.status()} if self.anomaly is not None else {}),
            **({"computed": self.computed.status()} if self.computed is not None else {}),
            **({"aggregate": self.aggregate.status()} if self.aggregate is not None else {}),
            **({"heartbeat": self.heartbeat.status()} if self.heartbeat is not None else {}),
        }


class Served(Protocol):
    """What a server target keeps per point it serves (a CoAP resource, an OPC UA variable)."""

    bridge: Bridge
    spec: PointSpec


S = TypeVar("S", bound=Served)


def respecified(
    bridges: Sequence[Bridge], tables: dict[int, dict[str, dict[str, S]]], device: str
) -> Iterator[tuple[S, PointSpec]]:
    """The points a server target serves for ``device`` whose spec the device has declared
    anew (an OPC UA client's types, read once connected), each with its new spec. ``tables``:
    the target's id(route) -> device -> point -> what it serves."""
    for bridge in bridges:
        served = tables.get(id(bridge.config.route), {}).get(device)
        if not served:
            continue
        for spec in bridge.points().get(device, ()):
            item = served.get(spec.name)
            if item is not None and item.bridge is bridge and item.spec != spec:
                yield item, spec
