"""Sparkplug B host application: other edge nodes' metrics as points of one source device.

``role: host`` subscribes to ``spBv1.0/{group}/#`` (each group of a list, or ``spBv1.0/+/#``
for every group) and follows each edge node's session with
`protocols.sparkplug.tracker.HostTracker`: births declare metrics, DATA updates them, deaths make
them Bad, and data that cannot be read in order makes the host ask the node for a rebirth (NCMD
``Node Control/Rebirth``). Every sample becomes the endpoint's telemetry, which bridges carry.
Reading several groups, a node is its group and edge_node_id (the tracker's key
``{group}/{node}``): two groups may each have an edge node ``E1``, and every command (a rebirth
request, a write) goes to the topic of the node's own group.

Writes go down as commands: a declared point with ``access: rw`` is written by a DCMD (a
device's metric) or an NCMD (a node's), by name, in the datatype its birth gave. Sparkplug has
no acknowledgement of a command: a write is good once it is handed to the broker while its node
(and device) is online; the new value comes back in the node's next DATA. A template's member
(a UDT instance's tag) is read but not written: Sparkplug would want the whole instance in the
command, which this host does not build; such a write is refused as not writable.

With ``host_id`` the host is a Primary Host Application (Sparkplug 3.0, 5.4 and 6.4.1): its
will is ``spBv1.0/STATE/{host_id}`` ``{"online": false, "timestamp": T}`` (retained, QoS 1), and
once subscribed (to the group and to that topic) it publishes ``{"online": true,
"timestamp": T}`` there (retained, QoS 1, the same T, new for every connection); a clean stop
publishes the offline STATE itself, with the timestamp of the last online.

An offline STATE delivered on that topic while connected (another client's, or the will of an
older session that the broker fired late) would keep the edge nodes from birthing: the host
says online again, retained, QoS 1, with the current time (Sparkplug 3.0's
message-flow-hid-sparkplug-state-message-delivered), at most once per `state_every_s` seconds
so that a client repeating offline cannot make it flood the broker. What the broker held when
the host subscribed (a retained message) needs no answer: the online published after the
subscription replaces it. The will cannot change without a new connection: it keeps T, older
than an online said again, and an edge node that drops older STATEs would ignore it.

``state_version`` picks the STATE's form (`codec.StateTopic`): ``"2.2"`` publishes Sparkplug
2.2's ``ONLINE`` / ``OFFLINE`` on ``STATE/{host_id}`` (no timestamp) through the same steps, for
edge nodes that follow 2.2. ``"both"`` publishes each, for a fleet that has both during a
migration. MQTT 3.1.1 gives a connection one will: the host's own is 3.0's offline, and 2.2's
``OFFLINE`` rides on a second connection per session (`protocols.sparkplug.statewill`), so a
host that dies says offline on both. A clean stop says ``OFFLINE`` on both.

A lost broker makes every point Bad (the sessions cannot be followed across it); once
connected again, the host asks each node that was online for a rebirth, so that points whose
values do not change come back too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from gateway.adapter import Adapter, AdapterContext
from gateway.commands import WriteRefused, WriteStatus, serve_commands
from gateway.types import Message, PointSpec, Quality, Sample, Value
from protocols.sparkplug import codec
from protocols.sparkplug.codec import DataType, Metric, Payload, StateTopic
from protocols.sparkplug.config import EVERY_GROUP, SparkplugHost
from protocols.sparkplug.session import SparkplugError, SparkplugSession
from protocols.sparkplug.statewill import StateWill
from protocols.sparkplug.tracker import REBIRTH, HostTracker, split_key

log = logging.getLogger(__name__)

__all__ = ["SparkplugHostAdapter"]

_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS


class SparkplugHostAdapter(SparkplugSession, Adapter):
    """A Sparkplug host application on an MQTT broker: a source whose points are the metrics
    of the edge nodes of the groups it reads."""

    config: SparkplugHost
    LOG = log
    #: at least this many seconds between two online STATEs said again (a client that says
    #: offline in a loop cannot make the host flood the broker; the last one is answered)
    state_every_s: float = 1.0

    def __init__(self, name: str, config: SparkplugHost, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self.group = config.group
        self.client_id = config.client_id or f"protocol-brain-{context.gateway_name}-{name}"
        self.tracker = HostTracker(
            config.points,
            learn=config.learn,
            max_points=config.max_points,
            rebirth_interval=config.rebirth_interval,
            by_group=config.several_groups,
        )
        self._init_session(config)
        self.host_id = config.host_id
        # its STATEs, one per version it publishes; the first is the will's
        host_id, version = config.host_id, config.state_version
        self._states = () if host_id is None else codec.state_topics(host_id, version)
        self._state_by_topic = {state.topic: state for state in self._states}
        self._state_ts = 0  # the timestamp of the last 3.0 STATE online (of the will at first)
        # with ``both``, 2.2's will rides on a second connection, one per session (statewill)
        self._will_state = self._states[1] if len(self._states) > 1 else None
        self._will: StateWill | None = None
        self._will_stops: set[asyncio.Task[None]] = set()
        self._state_said_at = -math.inf  # time.monotonic() of the last online said again
        self._state_timer: asyncio.TimerHandle | None = None  # an online said again, due
        self._state_due: set[StateTopic] = set()  # the STATEs that said offline, to answer
        self._rejoin: set[str] = set()  # node keys to ask for a rebirth once connected again
        self._points_bad = False  # Bad samples published for this outage already
        # a node's data can be unreadable at every message: one line, then a count per window
        self._warnings = self._quota("such warnings", "gateway status")
        self.last_error: str | None = None
        # counters
        self.received = 0
        self.bad_payloads = 0
        self.rebirths_asked = 0
        self.state_republished = 0
        self.writes_ok = 0
        self.writes_refused = 0
        self.reconnects = 0

    def points(self) -> list[PointSpec]:
        """The declared points; learnt ones are named by births at run time."""
        return [PointSpec.of(self.name, p, p.type) for p in self.config.points]

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> SparkplugHostAdapter:
        """Prepare the paho client: identity, credentials, TLS. No network I/O."""
        self._prepare(self.config, self.client_id, f"Sparkplug host {self.name!r}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """The session's end (`SparkplugSession.close`), then the count of the warnings not
        said yet."""
        await super().close()
        self._end_will(say_offline=False)
        if self._will_stops:
            await asyncio.gather(*self._will_stops)
        self._warnings.close()

    async def run(self) -> None:
        """Connect, follow the groups, reconnect with backoff after any loss; with writable
        points, serve their commands alongside."""
        if self._client is None:
            raise RuntimeError("use 'async with adapter:' before 'await adapter.run()'")
        keep = self._keep_connected(SparkplugError, self.config.reconnect)
        if not any(p.access.writable for p in self.config.points):
            await keep
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(serve_commands(self.bus, self.name, self.write))
            tg.create_task(keep)

    async def _connect_once(self) -> None:
        """One connection attempt up to CONNACK; with ``host_id`` its will is STATE offline
        with this connection's timestamp (3.0's, with ``state_version: both``: one will)."""
        assert self._client is not None
        if self._states:
            self._state_ts = int(time.time() * 1000)
            will = self._states[0]
            offline = will.encode(False, self._state_ts)
            self._client.will_set(will.topic, offline, qos=1, retain=True)
        await self._connect_paho(SparkplugError)

    async def _serve_session(self) -> str:
        """Subscribe to the groups, say STATE online, ask the nodes known before for a rebirth;
        then wait for the connection's end."""
        client, disconnected = self._client, self._disconnected
        assert client is not None and disconnected is not None
        log.info(
            "Sparkplug %s: connected to %s as host of %s%s",
            self.name,
            self.address,
            _groups(self.config),
            "" if self.host_id is None else f" (primary host {self.host_id})",
        )
        topics = [(topic, 1) for topic in self.config.topic_filters()]
        # its own STATE too, to answer an offline one
        topics += [(state.topic, 1) for state in self._states]
        client.subscribe(topics)
        await self._open_will()
        for state in self._states:  # after the subscriptions, as 6.4.1 orders
            client.publish(state.topic, state.encode(True, self._state_ts), qos=1, retain=True)
        rejoin, self._rejoin = sorted(self._rejoin), set()
        for node in rejoin:
            self._ask_rebirth(node)
        return await disconnected

    async def _open_will(self) -> None:
        """With ``state_version: both``: 2.2's will on its own connection to this broker
        (`protocols.sparkplug.statewill`) before the host says online; a keeper that cannot
        connect in time keeps trying, and the host says online without waiting for it."""
        if self._will_state is None:
            return
        will = self._will = StateWill(self.name, self.config, self.client_id, self._will_state)
        broker = self._brokers[self._broker]
        if not await will.start(broker, self.config.reconnect, self.connect_timeout):
            log.warning(
                "Sparkplug %s: the connection for 2.2's STATE will is not up yet (%s): until it"
                " is, a crash leaves STATE/%s saying ONLINE",
                self.name,
                will.last_error or "no CONNACK",
                self.host_id,
            )

    def _end_will(self, *, say_offline: bool) -> None:
        """End the session's 2.2 will connection: saying OFFLINE (the session was lost) or
        not (a clean stop, whose goodbye said it)."""
        will, self._will = self._will, None
        if will is None:
            return
        task = asyncio.ensure_future(will.stop(say_offline=say_offline))
        self._will_stops.add(task)
        task.add_done_callback(self._will_stops.discard)

    # --- reading ----------------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            self._read(msg)
        except Exception as exc:
            # Last line of defence: paho drops the connection on an exception out of a
            # callback, and a node's every message would then drop every reconnect.
            self.bad_payloads += 1
            self._say(f"message on {msg.topic} not read: {type(exc).__name__}: {exc}")

    def _read(self, msg: paho.MQTTMessage) -> None:
        own = self._state_by_topic.get(msg.topic)
        if own is not None:
            self._own_state(own, msg)
            return
        try:
            where = codec.parse_topic(msg.topic)
        except ValueError:
            return  # STATE and other namespaces' topics: not an edge node's
        if not self.config.reads(where.group):
            return
        self.received += 1
        try:
            payload = codec.decode_payload(bytes(msg.payload), self.tracker.datatype(where))
        except ValueError as exc:
            self.bad_payloads += 1
            self._say(f"unreadable {where.message_type} on {msg.topic}: {exc}")
            return
        outcome = self.tracker.receive(where, payload, time.time())
        for line in outcome.notices:  # once each: not through _say, which may skip them
            log.warning("Sparkplug %s: %s", self.name, line)
        if outcome.samples:
            self._points_bad = False
            self.bus.publish_nowait(Message.telemetry(self.name, outcome.samples))
        if outcome.problem is not None:
            self._say(f"edge node {self.tracker.key(where)}: {outcome.problem}")
        if outcome.rebirth:
            self._ask_rebirth(self.tracker.key(where))

    # --- its own STATE ----------------------------------------------------------------------

    def _own_state(self, own: StateTopic, msg: paho.MQTTMessage) -> None:
        """A STATE on one of the host's own topics: online again there when it says offline."""
        if msg.retain:
            return  # held by the broker at the subscription: the online sent after replaces it
        try:
            state = own.decode(bytes(msg.payload))
        except ValueError as exc:
            self.bad_payloads += 1
            self._say(f"unreadable STATE on {msg.topic} ignored: {exc}")
            return
        if state.online:
            return  # its own online, back from the broker
        if self._closing:
            return  # its own goodbye, back from the broker
        self._state_due.add(own)
        if self._state_timer is not None:
            return  # an online is due already
        wait = self._state_said_at + self.state_every_s - time.monotonic()
        if wait > 0 and self._loop is not None:
            self._state_timer = self._loop.call_later(wait, self._online_again)
        else:
            self._online_again()

    def _online_again(self) -> None:
        """STATE online (retained, QoS 1) on each topic that said offline; 3.0's with the
        current time, never older than the last. Only those: a 3.0 online said again would
        leave the will older than it (see the module's docstring) for no reason."""
        self._state_timer = None
        due, self._state_due = self._state_due, set()
        client = self._client
        if client is None or not self._connected or self._closing:
            return
        if any(state.stamped for state in due):
            self._state_ts = max(int(time.time() * 1000), self._state_ts + 1)
        self._state_said_at = time.monotonic()
        for state in self._states:
            if state not in due:
                continue
            online = state.encode(True, self._state_ts)
            if client.publish(state.topic, online, qos=1, retain=True).rc == _SUCCESS:
                self.state_republished += 1
                log.warning(
                    "Sparkplug %s: STATE of primary host %s said offline on %s while connected"
                    " (another client, or an older session's will): online again",
                    self.name,
                    self.host_id,
                    state.topic,
                )

    def _cancel_online_again(self) -> None:
        self._state_due.clear()
        if self._state_timer is not None:
            self._state_timer.cancel()
            self._state_timer = None

    def _say(self, line: str) -> None:
        """A warning through `SparkplugSession._quota`: a node's data can be unreadable at
        every message."""
        if self._warnings.allow():
            log.warning("Sparkplug %s: %s", self.name, line)

    def _ask_rebirth(self, key: str) -> None:
        """NCMD ``Node Control/Rebirth`` = true to the node ``key`` (QoS 0, as commands are)."""
        metric = Metric(REBIRTH, datatype=DataType.BOOLEAN, value=True)
        if self._command(key, None, metric):
            self.rebirths_asked += 1
            log.info("Sparkplug %s: asked edge node %s for a rebirth", self.name, key)

    def _command(self, key: str, device: str | None, metric: Metric) -> bool:
        """Publish an NCMD (``device`` None) or a DCMD with ``metric`` to the node ``key``, in
        its own group; whether paho took it."""
        client = self._client
        if client is None or not self._connected:
            return False
        group, node = split_key(key)
        group = group or self.config.one_group  # a key without one: the entry's only group
        assert group is not None
        kind = "NCMD" if device is None else "DCMD"
        stamp = int(time.time() * 1000)
        stamped = Metric(metric.name, timestamp=stamp, datatype=metric.datatype, value=metric.value)
        payload = codec.encode_payload(Payload(stamp, (stamped,)))
        info = client.publish(codec.topic(group, kind, node, device), payload, qos=0)
        return info.rc == _SUCCESS

    # --- writing ----------------------------------------------------------------------------

    async def write(self, point: str, value: Value) -> None:
        """A declared ``access: rw`` point's new value, as a DCMD (or NCMD) of its metric."""
        try:
            declared, known, online = self.tracker.where(point)
        except KeyError:
            reason = f"{self.name}/{point} is not declared"
            raise WriteRefused(WriteStatus.NOT_WRITABLE, reason) from None
        key = self.tracker.key_of(declared)
        where = key if declared.device is None else f"{key}/{declared.device}"
        if not self._connected:
            raise self._refuse(WriteStatus.UNREACHABLE, f"broker {self.address} is not connected")
        if not online:
            raise self._refuse(WriteStatus.UNREACHABLE, f"{where} is not online (no birth)")
        if known is None:
            raise self._refuse(
                WriteStatus.DEVICE_ERROR, f"the birth of {where} has no metric {declared.metric!r}"
            )
        if known.member or known.members is not None:
            what = "a template member" if known.member else "a template"
            raise self._refuse(
                WriteStatus.NOT_WRITABLE,
                f"{declared.metric} of {where} is {what}: writing templates is not supported",
            )
        datatype = known.datatype or codec.datatype_of(declared.type)
        try:
            wire = codec.wire_value(datatype, value)
            metric = Metric(declared.metric, datatype=datatype, value=wire)
            codec.encode_metric(metric)  # a value that does not fit (range) fails here
        except ValueError as exc:
            raise self._refuse(WriteStatus.BAD_VALUE, f"{declared.metric}: {exc}") from None
        if not self._command(key, declared.device, metric):
            raise self._refuse(WriteStatus.UNREACHABLE, "the broker connection refused it")
        self.writes_ok += 1
        log.info("Sparkplug %s: %s %s = %r sent", self.name, where, declared.metric, wire)

    def _refuse(self, status: WriteStatus, reason: str) -> WriteRefused:
        self.writes_refused += 1
        return WriteRefused(status, reason)

    # --- losing the broker ------------------------------------------------------------------

    def _unreachable(self, reason: str) -> None:
        """Once per outage: every point is Bad (no session can be followed across it)."""
        if self._points_bad:
            return
        samples = self.lost_samples(reason)
        self._points_bad = True
        if samples:
            self.bus.publish_nowait(Message.telemetry(self.name, samples))

    def lost_samples(self, reason: str) -> tuple[Sample, ...]:
        """The declared points' Bad samples, and those of the points learnt from births."""
        now = time.time()
        declared = set(self.tracker.by_point)
        learnt = tuple(
            Sample(name, None, Quality.BAD, now, now, None, reason)
            for name in sorted(self.tracker.learnt - declared)
        )
        return super().lost_samples(reason) + learnt

    def _connection_lost(self, reason: str) -> None:
        self._cancel_online_again()
        self._end_will(say_offline=not self._closing)
        self._rejoin.update(self.tracker.forget())
        self._settle_lost(reason, SparkplugError(f"connection to {self.address} lost: {reason}"))

    # --- closing ----------------------------------------------------------------------------

    def _stopping(self) -> None:
        self._cancel_online_again()

    def _last_words(self) -> list[tuple[str, bytes, bool]]:
        """STATE offline (retained) on each of its topics, 3.0's with the timestamp of the
        last online (not older, or an edge node that drops older STATEs would ignore it)."""
        return [(state.topic, state.encode(False, self._state_ts), True) for state in self._states]

    # --- status -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> dict[str, Any]:
        t = self.tracker
        return {
            "connected": self._connected,
            "broker": self.address,
            "group": self.group,
            **(
                {}
                if self.host_id is None
                else {"host_id": self.host_id, "state_version": self.config.state_version}
            ),
            "nodes": t.online(),
            **t.counts(),
            "points_learnt": len(t.learnt),
            "name_collisions": t.name_collisions,
            "received": self.received,
            "bad_payloads": self.bad_payloads,
            "seq_gaps": t.seq_gaps,
            "not_born": t.unborn,
            "unknown_metrics": t.unknown_metrics,
            "stale_deaths": t.stale_deaths,
            "type_errors": t.type_errors,
            "over_max_points": t.over_limit,
            "rebirths_asked": self.rebirths_asked,
            **({} if self.host_id is None else {"state_republished": self.state_republished}),
            # with ``both``: whether 2.2's will is registered (its connection is up)
            **(
                {}
                if self._will_state is None
                else {"state_will_up": self._will is not None and self._will.connected}
            ),
            "writes": {"ok": self.writes_ok, "refused": self.writes_refused},
            "reconnects": self.reconnects,
            "failovers": self.failovers,
            "last_error": self.last_error,
        }


def _groups(config: SparkplugHost) -> str:
    """The groups an entry reads, for a log line."""
    if isinstance(config.group, list):
        return f"groups {', '.join(config.group)}"
    return "every group" if config.group == EVERY_GROUP else f"group {config.group}"
