"""Sparkplug B edge node: bridged devices as Sparkplug devices of one edge node.

Session (Sparkplug 3.0, section 7)
----------------------------------
Every connection attempt registers a will: NDEATH with the metric ``bdSeq`` (Int64), QoS 1, not
retained; bdSeq counts attempts (0..255, wrapping), so a host can tell the NDEATH of an old
session from the NBIRTH of a new one. On CONNACK the node subscribes to its NCMD and DCMD
topics, publishes NBIRTH (seq 0, the same bdSeq, ``Node Control/Rebirth``) and one DBIRTH per
device that is alive, with every metric (name, alias, datatype, the latest value or is_null).
Telemetry then goes out as DDATA of the metrics that changed, by alias only. ``seq`` is one
counter for NBIRTH, DBIRTH, DDATA and DDEATH of the session, 0..255 wrapping. A clean shutdown
publishes NDEATH itself (the broker drops the will on DISCONNECT).

Device life
-----------
A device is alive until a message leaves every one of its metrics Bad (the source publishes all
its points Bad when it loses its device): then DDEATH. Its next message with a value that is not
Bad publishes DBIRTH (with the current values) instead of DDATA. A point the device had not
declared (a translator in auto mode names points at run time) gets an alias and the device is
born again with it.

Anomaly alarms: a bridge with ``anomaly:`` births each device with two more metrics,
``anomaly`` (Boolean) and ``anomaly_score`` (Double), null (Bad) until the first scored message,
since a host takes in DDATA only the metrics a birth declared. They come from each scored
message's verdict and the rise/clear EVENT (`gateway.anomaly.verdict`): the alarm goes out when
it changes, the score with each scored message in the same DDATA as the readings (one more
metric by alias, no publish of its own). They are read-only (a DCMD is refused) and do not
count for the device's life (DDEATH). A source point with one of those names keeps it.

Quality follows Ignition: a metric carries an Int32 ``Quality`` property (192 good, 64
uncertain, 0 bad) in births and whenever it is not good or becomes good again; a Bad value is
sent as is_null.

Primary host (``primary_host:``, Sparkplug 3.0, 5.4 and 6.4.1)
----------------------------------------------------------
With a Primary Host Application named, the node also subscribes to ``spBv1.0/STATE/{host_id}``
and holds its births until a STATE of this session says ``online: true``. A STATE whose timestamp
is older than the last one accepted is ignored (a stale retained message or a replay); the will
of the host carries its birth's timestamp, so it is accepted. A STATE ``online: false`` ends a
session that is up: NDEATH, DISCONNECT, reconnect (the backoff's first delay) and wait again.
Telemetry meanwhile goes to the buffer, as while disconnected. With ``state_version: "2.2"`` the
STATE is Sparkplug 2.2's instead (`codec.StateTopic`): ``ONLINE`` or ``OFFLINE`` on
``STATE/{host_id}``, with no timestamp, so none is stale; the rest is the same.

While disconnected, telemetry is kept (`protocols.sparkplug.backlog`): in a bounded deque
(``buffer:``, oldest dropped and counted), or with ``outbox:`` in the SQLite outbox, which keeps
it across a restart. After the births of the next session it is published as DDATA with
is_historical on every metric, at most ``outbox.drain_rate`` messages a second; the births
themselves carry the current values.

paho is driven by the asyncio loop, as the MQTT endpoint does (see protocols.mqtt.client): its
socket goes to ``add_reader``/``add_writer``, a 1 s timer runs keepalive, and the one blocking
call (``reconnect``: DNS, TCP, TLS) runs in the default executor. No thread of our own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from pydantic import BaseModel

from gateway.adapter import Adapter, AdapterContext
from gateway.anomaly.verdict import ForeignEvents, add_alarm_points, served_samples
from gateway.types import Message, PointSpec, Quality, Sample, Value
from protocols.sparkplug import codec
from protocols.sparkplug.backlog import Backlog, DurableBacklog, Held, MemoryBacklog
from protocols.sparkplug.codec import DataType, Metric, Payload, PropertyValue, wire_value
from protocols.sparkplug.config import SparkplugEndpoint
from protocols.sparkplug.session import SparkplugError, SparkplugSession

if TYPE_CHECKING:
    from gateway.bridge import Bridge

log = logging.getLogger(__name__)

__all__ = ["SparkplugAdapter", "SparkplugError"]

REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_QUALITY = {
    Quality.GOOD: codec.QUALITY_GOOD,
    Quality.UNCERTAIN: codec.QUALITY_UNCERTAIN,
    Quality.BAD: codec.QUALITY_BAD,
}
#: a historical replay yields to the loop after this many messages
_REPLAY_CHUNK = 200


def _ms(ts: float) -> int:
    return int(round((ts if ts > 0 else time.time()) * 1000))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _quality_property(quality: Quality, *, always: bool = False) -> dict[str, PropertyValue]:
    """The ``Quality`` property Ignition reads: said when not good (or ``always``); absent means
    good."""
    if quality is Quality.GOOD and not always:
        return {}
    return {"Quality": PropertyValue(DataType.INT32, _QUALITY[quality])}


def _guess_datatype(value: Value) -> DataType:
    if isinstance(value, bool):
        return DataType.BOOLEAN
    if isinstance(value, int):
        return DataType.INT64
    if isinstance(value, str):
        return DataType.STRING
    return DataType.DOUBLE


@dataclass(slots=True)
class _MetricState:
    """One metric of a device: what the DBIRTH declared, what the endpoint last saw."""

    name: str
    alias: int
    datatype: DataType
    spec: PointSpec | None
    bridge: Bridge | None
    last: Sample | None = None  # the latest sample seen
    sent: tuple[Value, Quality] | None = None  # what the host has now (birth or data)
    alarm: bool = False  # the anomaly alarm's (`gateway.anomaly.verdict`), no source point


@dataclass(slots=True)
class _Device:
    name: str
    metrics: dict[str, _MetricState]
    alive: bool = True  # not every metric Bad
    born: bool = False  # DBIRTH published in this session (and no DDEATH since)
    alarms: frozenset[str] = frozenset()  # the anomaly alarm's metrics it has


class SparkplugAdapter(SparkplugSession, Adapter):
    """A Sparkplug B edge node on an MQTT broker; the bridges' source devices are its devices."""

    config: SparkplugEndpoint
    LOG = log

    def __init__(self, name: str, config: SparkplugEndpoint, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self.group = config.group
        self.node = config.node or context.gateway_name
        self.client_id = config.client_id or f"protocol-brain-{context.gateway_name}-{name}"
        self._devices: dict[str, _Device] = {}
        self._next_alias = 1
        self._backlog: Backlog = MemoryBacklog(name, config.buffer)
        self._bd_seq = -1  # bdSeq of the current (or last) connection attempt
        self._seq = 0  # the next seq to publish
        self._init_session(config)
        self._writes: set[asyncio.Task[None]] = set()
        self._barriers: dict[int, asyncio.Future[None]] = {}  # UNSUBSCRIBE mid -> its UNSUBACK
        self._ready = False  # births published: send() publishes DDATA
        self.primary_host = config.primary_host
        self._primary = (  # the primary host's STATE: topic and version
            None
            if config.primary_host is None
            else codec.StateTopic(config.primary_host, config.state_version)
        )
        self._state_topic = None if self._primary is None else self._primary.topic
        # a client can repeat a bad STATE at any rate: one line, then a count per window
        self._bad_state_log = self._quota("unreadable STATEs", "'bad_states'")
        self._host: codec.HostState | None = None  # the last STATE accepted, of any session
        self._host_live = False  # a STATE of this session said online, and no later one offline
        self._host_news: asyncio.Event | None = None  # set when a STATE is accepted
        self._waiting = False  # connected, births held until the primary host is online
        self._host_said_offline = False  # a STATE of this session said offline
        self._host_wait = config.primary_host_wait
        self.last_error: str | None = None
        # counters
        self.published = 0
        self.births = 0  # NBIRTH and DBIRTH messages
        self.deaths = 0  # DDEATH messages
        self.rebirths = 0  # rebirth requests (NCMD) served
        self.historical = 0  # DDATA messages published from the backlog
        self.left_out = 0  # backlog messages of devices not born when they were due
        self.encode_errors = 0
        self.bad_commands = 0  # NCMD/DCMD payloads that did not decode
        self.foreign_events = ForeignEvents(f"Sparkplug node {name}")  # OPC UA client events
        self.bad_states = 0  # STATE payloads that did not decode
        self.stale_states = 0  # STATE messages older than the last one accepted
        self.host_leaves = 0  # sessions ended because the primary host went offline
        self.writes_ok = 0
        self.writes_refused = 0
        self.reconnects = 0

    # --- attach: the devices and their metrics --------------------------------------------------

    def attach(self, bridge: Bridge) -> None:
        points = bridge.points()
        added: dict[str, frozenset[str]] = {}
        if bridge.config.anomaly is not None:  # born with the alarm's metrics, null until scored
            points, added = add_alarm_points(points, f"Sparkplug {self.name}")
        for device, specs in points.items():
            problem = codec.id_problem(device)
            if problem is not None:
                raise ValueError(
                    f"bridge {bridge.name!r}: source device {problem}: it cannot be a Sparkplug"
                    " device_id (no '/', '+' or '#')"
                )
            state = self._device(device)
            for spec in specs:
                if spec.name not in state.metrics:
                    m = self._add_metric(
                        state, spec.name, codec.datatype_of(spec.datatype), spec, bridge
                    )
                    m.alarm = spec.name in added.get(device, ())
                    if m.alarm:
                        state.alarms |= {spec.name}

    def _device(self, name: str) -> _Device:
        state = self._devices.get(name)
        if state is None:
            state = self._devices[name] = _Device(name, {})
        return state

    def _add_metric(
        self,
        device: _Device,
        name: str,
        datatype: DataType,
        spec: PointSpec | None,
        bridge: Bridge | None,
    ) -> _MetricState:
        metric = _MetricState(name, self._next_alias, datatype, spec, bridge)
        self._next_alias += 1
        device.metrics[name] = metric
        return metric

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> SparkplugAdapter:
        """Prepare the paho client: identity, credentials, TLS. No network I/O."""
        what = f"Sparkplug endpoint {self.name!r}"
        problem = codec.id_problem(self.node)
        if problem is not None:
            raise SparkplugError(
                f"{what}: the edge node id (node:, default gateway.name) is {problem};"
                " set node: to an id without '/', '+' or '#'"
            )
        client = self._prepare(self.config, self.client_id, what)
        client.on_unsubscribe = self._on_unsubscribe
        outbox = self.config.outbox
        if outbox is not None and outbox.enabled and not isinstance(self._backlog, DurableBacklog):
            self._backlog = DurableBacklog(self.name, outbox.file_for(self.name), outbox)
            if self._backlog:
                log.info(
                    "Sparkplug %s: %d messages from before the restart wait in %s",
                    self.name,
                    len(self._backlog),
                    outbox.file_for(self.name),
                )
        return self

    async def close(self) -> None:
        """The session's end (`SparkplugSession.close`), then the backlog's: a durable one
        keeps what was not sent for the next start."""
        await super().close()
        self._backlog.close()
        self._bad_state_log.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self) -> None:
        """Connect, births, serve, reconnect with backoff after any loss; until cancelled."""
        if self._client is None:
            raise RuntimeError("use 'async with adapter:' before 'await adapter.run()'")
        await self._keep_connected(SparkplugError, self.config.reconnect)

    # --- connecting -------------------------------------------------------------------------

    def _ndeath(self) -> bytes:
        return codec.encode_payload(
            Payload(_now_ms(), (Metric(BDSEQ, datatype=DataType.INT64, value=self._bd_seq),))
        )

    async def _connect_once(self) -> None:
        """One connection attempt up to CONNACK, with a fresh bdSeq in its will."""
        assert self._client is not None
        self._bd_seq = (self._bd_seq + 1) % 256
        self._client.will_set(self._topic("NDEATH"), self._ndeath(), qos=1, retain=False)
        await self._connect_paho(SparkplugError)

    async def _serve_session(self) -> str:
        """Subscriptions, (the primary host's online STATE), births, the historical backlog;
        then wait for the connection's end, or for the primary host's offline STATE."""
        client, disconnected = self._client, self._disconnected
        assert client is not None and disconnected is not None
        log.info(
            "Sparkplug %s: connected to %s as edge node %s/%s (bdSeq %d)",
            self.name,
            self.address,
            self.group,
            self.node,
            self._bd_seq,
        )
        topics = [
            (self._topic("NCMD"), 1),
            (f"{codec.NAMESPACE}/{self.group}/DCMD/{self.node}/+", 1),
        ]
        self._host_live = False  # this session must hear the host say online (5.4)
        self._host_said_offline = False
        if self._state_topic is not None:
            topics.append((self._state_topic, 1))
        client.subscribe(topics)
        if self._state_topic is not None:
            lost = await self._wait_for_host(disconnected)
            if lost is not None:
                return lost
            if not self._host_live:  # with failover: not online on this broker, walk on
                return await self._leave(
                    f"primary host {self.primary_host} is not online on {self.address}",
                    born=False,
                )
        self._births()
        self._ready = True
        await self._replay(disconnected)
        if self._state_topic is None:
            return await disconnected
        lost = await self._until(lambda: not self._host_live, disconnected)
        if lost is not None:
            return lost
        return await self._leave(f"primary host {self.primary_host} is offline")

    async def _wait_for_host(self, disconnected: asyncio.Future[str]) -> str | None:
        """Hold the births until a STATE of this session says the primary host is online;
        None then, or why the connection ended first. Meanwhile the node counts as down.
        With failover it also returns None, the host not online, after a STATE offline or
        ``primary_host_wait`` seconds: Sparkplug's walk to the next broker (5.4)."""
        log.info(
            "Sparkplug %s: waiting for primary host %s to be online (STATE) before the births",
            self.name,
            self.primary_host,
        )
        self._waiting = True
        self.last_error = (
            f"waiting for primary host {self.primary_host} to be online (STATE on"
            f" {self._state_topic})"
        )
        walk = len(self._brokers) > 1
        try:
            async with asyncio.timeout(self._host_wait if walk else None):
                lost = await self._until(
                    lambda: self._host_live or (walk and self._host_said_offline), disconnected
                )
        except TimeoutError:
            lost = None
        finally:
            self._waiting = False
        if lost is None:
            self.last_error = None
        return lost

    async def _until(
        self, done: Callable[[], bool], disconnected: asyncio.Future[str]
    ) -> str | None:
        """Wait for STATE messages until ``done()``; None then, or why the connection ended
        first."""
        while not done():
            news = self._host_news = asyncio.Event()
            heard = asyncio.ensure_future(news.wait())
            try:
                await asyncio.wait((disconnected, heard), return_when=asyncio.FIRST_COMPLETED)
            finally:
                heard.cancel()
            if disconnected.done():
                return disconnected.result()
        return None

    async def _leave(self, why: str, *, born: bool = True) -> str:
        """End the session ourselves (the primary host is offline): NDEATH if ``born``,
        DISCONNECT; with failover the next session is on the next broker."""
        self._ready = False
        self.host_leaves += 1
        self._move_on = len(self._brokers) > 1
        log.warning(
            "Sparkplug %s: %s: %sdisconnect, then wait for it on %s",
            self.name,
            why,
            "NDEATH and " if born else "",
            "the next broker" if self._move_on else "a new session",
        )
        await self._goodbye(self._last_words() if born else ())
        disconnected = self._disconnected
        if disconnected is not None and not disconnected.done():  # no answer to DISCONNECT
            self._drop_socket()
            self._connection_lost(why)
        return why

    # --- publishing -------------------------------------------------------------------------

    def _topic(self, message_type: str, device: str | None = None) -> str:
        return codec.topic(self.group, message_type, self.node, device)

    def _take_seq(self) -> int:
        seq = self._seq
        self._seq = codec.next_seq(seq)
        return seq

    def _publish(
        self, message_type: str, device: str | None, metrics: Iterable[Metric], qos: int = 0
    ) -> int | None:
        """Encode and publish with the next seq; the paho mid, None when not connected."""
        client = self._client
        if client is None or not self._connected:
            return None
        payload = codec.encode_payload(Payload(_now_ms(), tuple(metrics), self._take_seq()))
        info = client.publish(self._topic(message_type, device), payload, qos=qos)
        if info.rc != _SUCCESS:
            return None
        self.published += 1
        return info.mid

    def _births(self) -> None:
        """NBIRTH (seq 0) and a DBIRTH for every device that is alive and has metrics (a
        source that names its points at run time has none before its first data)."""
        self._seq = 0
        node_metrics = (
            Metric(BDSEQ, datatype=DataType.INT64, value=self._bd_seq, timestamp=_now_ms()),
            Metric(REBIRTH, datatype=DataType.BOOLEAN, value=False, timestamp=_now_ms()),
        )
        for device in self._devices.values():
            device.born = False
        if self._publish("NBIRTH", None, node_metrics) is None:
            return
        self.births += 1
        for device in self._devices.values():
            if device.alive and device.metrics:
                self._birth(device)

    def _birth(self, device: _Device) -> None:
        metrics = [self._birth_metric(m) for m in device.metrics.values()]
        if self._publish("DBIRTH", device.name, metrics) is not None:
            self.births += 1
            device.born = True

    def _birth_metric(self, m: _MetricState) -> Metric:
        props: dict[str, PropertyValue] = {}
        spec = m.spec
        if spec is not None and spec.unit:
            props["engUnit"] = PropertyValue(DataType.STRING, spec.unit)
        if spec is not None and spec.low is not None:
            props["engLow"] = PropertyValue(DataType.DOUBLE, float(spec.low))
        if spec is not None and spec.high is not None:
            props["engHigh"] = PropertyValue(DataType.DOUBLE, float(spec.high))
        last = m.last
        if last is None:
            m.sent = (None, Quality.BAD)
            props["Quality"] = PropertyValue(DataType.INT32, codec.QUALITY_BAD)
            return Metric(
                m.name, m.alias, _now_ms(), m.datatype, None, is_null=True, properties=props
            )
        value = self._value(m, last)
        props["Quality"] = PropertyValue(DataType.INT32, _QUALITY[last.quality])
        m.sent = (value, last.quality)
        return Metric(
            m.name,
            m.alias,
            _ms(last.source_ts),
            m.datatype,
            value,
            is_null=value is None,
            properties=props,
        )

    def _value(self, m: _MetricState, sample: Sample) -> Value:
        """The sample's value as the metric's datatype carries it; None for Bad or unfit."""
        if sample.quality is Quality.BAD or sample.value is None:
            return None
        try:
            value = wire_value(m.datatype, sample.value)
            codec.encode_metric(Metric(datatype=m.datatype, value=value))  # range check
        except ValueError as exc:
            self.encode_errors += 1
            log.warning(
                "Sparkplug %s: %s of %s: %s (sent as null)", self.name, m.name, sample.point, exc
            )
            return None
        return value

    def _data_metric(self, m: _MetricState, sample: Sample) -> Metric | None:
        """The DDATA metric of ``sample`` (by alias), None when the host has it already."""
        value = self._value(m, sample)
        quality = sample.quality
        previous = m.sent
        if previous == (value, quality):
            return None
        m.sent = (value, quality)
        # once not good, the next good value says so too (the host keeps the last quality)
        was_good = previous is None or previous[1] is Quality.GOOD
        return Metric(
            alias=m.alias,
            timestamp=_ms(sample.source_ts),
            datatype=m.datatype,
            value=value,
            is_null=value is None,
            properties=_quality_property(quality, always=not was_good),
        )

    # --- telemetry --------------------------------------------------------------------------

    async def send(self, message: Message, route: BaseModel) -> None:
        if self.foreign_events.dropped_if_foreign(message):
            return  # before the device is born: an events-only device has no metrics
        device_name = message.device or message.topic.rpartition("/")[2]
        if codec.id_problem(device_name) is not None:
            return
        device = self._device(device_name)
        # the score rides in the same DDATA as the readings; the alarm on change
        samples = served_samples(message, device.alarms)
        if not samples:
            return
        new = False
        for sample in samples:
            m = device.metrics.get(sample.point)
            if m is None:  # named at run time (translate: auto): born again with it
                m = self._add_metric(
                    device, sample.point, _guess_datatype(sample.value), None, None
                )
                new = True
            m.last = sample
        was_alive = device.alive
        device.alive = not all(  # the alarm's metrics follow the source's: not counted
            m.last is not None and m.last.quality is Quality.BAD
            for m in device.metrics.values()
            if not m.alarm
        )
        if not self._ready:
            held = self._held(device, samples)
            if held is not None:
                self._backlog.put(device.name, held)
            return
        if not device.alive:
            if was_alive and device.born:
                if self._publish("DDEATH", device.name, ()) is not None:
                    self.deaths += 1
                device.born = False
                log.info("Sparkplug %s: device %s is down (DDEATH)", self.name, device.name)
            return
        if not device.born or new:
            self._birth(device)
            return
        self._data(device, samples)

    @staticmethod
    def _known(device: _Device, samples: Iterable[Sample]) -> Iterator[tuple[_MetricState, Sample]]:
        """Each sample of a metric ``device`` has, with that metric."""
        for sample in samples:
            m = device.metrics.get(sample.point)
            if m is not None:
                yield m, sample

    def _data(self, device: _Device, samples: Iterable[Sample]) -> None:
        metrics = [
            metric
            for m, sample in self._known(device, samples)
            if (metric := self._data_metric(m, sample)) is not None
        ]
        if metrics:
            self._publish("DDATA", device.name, metrics)

    def _held(self, device: _Device, samples: Iterable[Sample]) -> bytes | None:
        """``samples`` as the backlog keeps them: named historical metrics (see
        `protocols.sparkplug.backlog`); None when none is a metric of ``device``."""
        metrics = []
        for m, sample in self._known(device, samples):
            value = self._value(m, sample)
            metrics.append(
                Metric(
                    name=m.name,
                    timestamp=_ms(sample.source_ts),
                    datatype=m.datatype,
                    value=value,
                    is_null=value is None,
                    is_historical=True,
                    properties=_quality_property(sample.quality),
                )
            )
        if not metrics:
            return None
        return codec.encode_payload(Payload(_now_ms(), tuple(metrics)))

    def _aliased(self, device: _Device, held: Held) -> list[Metric]:
        """A held message's metrics by this session's aliases. A metric the device no longer
        has is left out; a value of a type that changed meanwhile (the config did) is converted,
        or sent null (counted in encode_errors) when the new type cannot carry it."""
        try:
            payload = codec.decode_payload(held.payload)
        except codec.CodecError as exc:  # not ours: a damaged or foreign row
            self.encode_errors += 1
            log.warning("Sparkplug %s: held message %d unreadable: %s", self.name, held.id, exc)
            return []
        out = []
        for metric in payload.metrics:
            m = device.metrics.get(metric.name or "")
            if m is None:
                continue
            value = metric.value
            if value is not None and metric.datatype != m.datatype:
                value = self._value(m, Sample(m.name, value, Quality.GOOD, 0.0))
            out.append(
                Metric(
                    alias=m.alias,
                    timestamp=metric.timestamp,
                    datatype=m.datatype,
                    value=value,
                    is_null=value is None,
                    is_historical=True,
                    properties=metric.properties,
                )
            )
        return out

    async def _replay(self, disconnected: asyncio.Future[str]) -> None:
        """The messages held while disconnected, as historical DDATA after the births, at
        most ``outbox.drain_rate`` a second (unlimited from memory); messages of a device not
        born now (it is down) are left out, counted."""
        backlog = self._backlog
        backlog.rewind()
        outbox = self.config.outbox
        rate = outbox.drain_rate if isinstance(backlog, DurableBacklog) and outbox else None
        chunk = _REPLAY_CHUNK if rate is None else max(1, min(_REPLAY_CHUNK, int(rate / 10)))
        sent = left_out = 0
        connected = True
        while connected and self._ready and not disconnected.done():
            held = backlog.take(chunk)
            if not held:
                break
            done = []
            for h in held:
                device = self._devices.get(h.device)
                if device is None or not device.born:
                    left_out += 1
                elif self._historical(device, self._aliased(device, h)):
                    sent += 1
                else:  # the connection is gone: this and the rest go again next session
                    connected = False
                    break
                done.append(h.id)
            if connected and not await self._broker_has_all(disconnected):
                connected = False
            if connected:
                backlog.done(done)
            await asyncio.sleep(0 if rate is None else len(held) / rate)
        backlog.commit()
        self.left_out += left_out
        if sent or left_out:
            log.info(
                "Sparkplug %s: %d held messages sent as historical DDATA%s",
                self.name,
                sent,
                f", {left_out} of devices not online left out" if left_out else "",
            )

    async def _broker_has_all(self, disconnected: asyncio.Future[str]) -> bool:
        """Whether the broker has read everything published so far: False if the connection
        ended first. DDATA goes out at QoS 0 (Sparkplug says so), which no PUBACK confirms,
        and what paho wrote to a connection that is already dead is lost. A broker handles a
        connection's packets in order, so its UNSUBACK to an UNSUBSCRIBE sent after them says
        it has read them; unsubscribing a filter never subscribed changes nothing (3.10.4)."""
        client, loop = self._client, self._loop
        if client is None or loop is None or not self._connected:
            return False
        rc, mid = client.unsubscribe(f"{codec.NAMESPACE}/{self.group}/NCMD/{self.node}/barrier")
        if rc != _SUCCESS or mid is None:
            return False
        acked = self._barriers[mid] = loop.create_future()
        try:
            await asyncio.wait((acked, disconnected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._barriers.pop(mid, None)
        return acked.done()

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, *args: Any) -> None:
        barrier = self._barriers.get(mid)
        if barrier is not None and not barrier.done():
            barrier.set_result(None)

    def _historical(self, device: _Device, metrics: list[Metric]) -> bool:
        """Publish historical DDATA; False when not connected."""
        if not metrics:
            return True
        if self._publish("DDATA", device.name, metrics) is None:
            return False
        self.historical += 1
        return True

    # --- commands ---------------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == self._state_topic:
            self._state(bytes(msg.payload))
            return
        try:
            where = codec.parse_topic(msg.topic)
            payload = codec.decode_payload(bytes(msg.payload))
        except ValueError as exc:
            self.bad_commands += 1
            log.warning("Sparkplug %s: unreadable command on %s: %s", self.name, msg.topic, exc)
            return
        if where.message_type == "NCMD":
            for metric in payload.metrics:
                if metric.name == REBIRTH and metric.value is True:
                    log.info("Sparkplug %s: rebirth requested (NCMD)", self.name)
                    self.rebirths += 1
                    if self._ready:
                        self._births()
                    return
                log.warning("Sparkplug %s: NCMD metric %r not supported", self.name, metric.name)
        elif where.message_type == "DCMD" and where.device is not None:
            self._dcmd(where.device, payload)

    def _state(self, data: bytes) -> None:
        """A STATE of the primary host: accepted unless older than the last one accepted
        (Sparkplug 2.2's have no timestamp: each is accepted)."""
        assert self._primary is not None
        try:
            state = self._primary.decode(data)
        except ValueError as exc:
            self.bad_states += 1
            if self._bad_state_log.allow():
                log.warning(
                    "Sparkplug %s: unreadable STATE of primary host %s ignored: %s",
                    self.name,
                    self.primary_host,
                    exc,
                )
            return
        last = self._host
        if (
            last is not None
            and state.timestamp is not None
            and last.timestamp is not None
            and state.timestamp < last.timestamp
        ):
            self.stale_states += 1
            log.info(
                "Sparkplug %s: STATE of %s older than the last one (%d < %d) ignored",
                self.name,
                self.primary_host,
                state.timestamp,
                last.timestamp,
            )
            return
        self._host = state
        if state.online != self._host_live:
            log.info(
                "Sparkplug %s: primary host %s is %s",
                self.name,
                self.primary_host,
                "online" if state.online else "offline",
            )
        self._host_live = state.online
        if not state.online:
            self._host_said_offline = True
            self._ready = False  # from now on telemetry waits in the buffer (6.4.1: at once)
        if self._host_news is not None:
            self._host_news.set()

    def _dcmd(self, device_name: str, payload: Payload) -> None:
        device = self._devices.get(device_name)
        for metric in payload.metrics:
            m: _MetricState | None = None
            if device is not None:
                if metric.name is not None:
                    m = device.metrics.get(metric.name)
                elif metric.alias is not None:
                    m = next((x for x in device.metrics.values() if x.alias == metric.alias), None)
            label = metric.name if metric.name is not None else f"alias {metric.alias}"
            if m is None or m.bridge is None or m.spec is None:
                self._refused(device_name, label, "no such metric")
                continue
            if not m.spec.access.writable:
                self._refused(device_name, m.name, "read-only (access is not rw)")
                continue
            if metric.is_null or metric.value is None:
                self._refused(device_name, m.name, "a null value")
                continue
            try:
                value = wire_value(m.datatype, metric.value)
            except ValueError as exc:
                self._refused(device_name, m.name, str(exc))
                continue
            task = asyncio.ensure_future(self._write(m.bridge, device_name, m.name, value))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    def _refused(self, device: str, point: str, why: str) -> None:
        self.writes_refused += 1
        log.warning("Sparkplug %s: DCMD %s/%s refused: %s", self.name, device, point, why)

    async def _write(self, bridge: Bridge, device: str, point: str, value: Value) -> None:
        try:
            result = await bridge.write(device, point, value, origin=f"sparkplug:{self.name}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._refused(device, point, f"{type(exc).__name__}: {exc}")
            return
        if result.ok:
            self.writes_ok += 1
            log.info("Sparkplug %s: DCMD %s/%s = %r written", self.name, device, point, value)
        else:
            self._refused(device, point, f"{result.status}: {result.reason}")

    # --- closing ----------------------------------------------------------------------------

    def _stopping(self) -> None:
        self._ready = False  # send() buffers from now on
        for write in list(self._writes):
            write.cancel()

    def _last_words(self) -> list[tuple[str, bytes, bool]]:
        return [(self._topic("NDEATH"), self._ndeath(), False)]

    def _connection_lost(self, reason: str) -> None:
        self._ready = False
        for device in self._devices.values():
            device.born = False
        self._settle_lost(reason, SparkplugError(f"connection to {self.address} lost: {reason}"))

    # --- status -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected and in a session hosts see: a node waiting for its primary host publishes
        nothing, so it counts as down (``last_error`` says why)."""
        return self._connected and not self._waiting

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "broker": self.address,
            "group": self.group,
            "node": self.node,
            "bdSeq": self._bd_seq if self._bd_seq >= 0 else None,
            "seq": self._seq,
            "births": self.births,
            "deaths": self.deaths,
            "rebirths": self.rebirths,
            "published": self.published,
            "historical": self.historical,
            "buffered": len(self._backlog),
            "dropped": self._backlog.dropped,
            "left_out": self.left_out,
            "outbox": self._backlog.status(),
            "encode_errors": self.encode_errors,
            "bad_commands": self.bad_commands,
            "events_dropped": self.foreign_events.dropped,  # events it cannot serve
            **self._host_status(),
            "writes": {"ok": self.writes_ok, "refused": self.writes_refused},
            "reconnects": self.reconnects,
            "failovers": self.failovers,
            "last_error": self.last_error,
            "devices": {
                d.name: "online" if d.born else ("down" if not d.alive else "not born")
                for d in self._devices.values()
            },
        }

    def _host_status(self) -> dict[str, Any]:
        if self._primary is None:
            return {}
        host = self._host
        return {
            "primary_host": {
                "id": self.primary_host,
                "state_version": self._primary.version,
                "online": self._host_live,
                "timestamp": None if host is None else host.timestamp,
                "waiting": self._waiting,
                "bad_states": self.bad_states,
                "stale_states": self.stale_states,
                "sessions_ended": self.host_leaves,
            }
        }
