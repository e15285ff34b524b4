"""MQTT client adapter: paho-mqtt 2.x driven by the gateway's asyncio loop, the aiomqtt way.

How paho is driven
------------------
paho is a callback library with its own network loop. We never start that loop (no thread):
paho tells us about its socket through ``on_socket_open`` / ``on_socket_close`` /
``on_socket_register_write`` / ``on_socket_unregister_write`` and we hand the socket to asyncio
(``loop.add_reader`` -> ``loop_read``, ``loop.add_writer`` -> ``loop_write``, a 1 s timer ->
``loop_misc`` for keepalive). Publishing therefore never writes inline: ``publish`` queues a packet
and registers the writer, and one ``loop_write`` per loop iteration sends everything queued.

The one blocking paho call is ``reconnect()`` (DNS, TCP connect, TLS handshake, bounded by
``connect_timeout``); it runs in the default executor so a dead or slow broker never stalls the
gateway. While it runs, the socket callbacks fire on the executor thread, so every socket callback
goes through `_in_loop`, which hops to the loop thread. Nothing else touches paho while a connect
is in flight (``send`` queues while disconnected).

paho callbacks only resolve futures (CONNACK, SUBACK, disconnect), update counters, or
``put_nowait``: acknowledgements wake the flusher through an `asyncio.Event`, and each received
message goes to ``bus.publish_nowait`` (the bus's subscription queues are the bounded queues, with
their declared overflow policy; another queue in between would only add a second policy to
explain). paho's errors become `MqttError` at this boundary, with a message that says what to do.

Outgoing flow control
---------------------
paho's own in-flight limit scans every outstanding message on each PUBACK, which is quadratic at
thousands of messages per second, so it is switched off (``max_inflight_messages_set(0)``) and the
adapter keeps its own window: at most `MqttAdapter.max_inflight` QoS 1/2 publishes not yet
acknowledged, and at most `MqttAdapter.max_write_backlog` bytes written but not yet accepted by the
socket (which is what bounds QoS 0). ``send`` publishes directly while connected, the outbox is
empty and the window has room; otherwise it appends to the outbox, which the flusher drains in
order as the window opens. So memory stays bounded when the broker is slow as well as when it is
gone, and order is kept across outages.

The outbox (`MemoryOutbox`) is bounded (``max_queued`` MQTT publishes, not bus messages: a bus
message in ``value`` mode is one publish per sample) and drops the oldest when full, counting each
drop. A durable outbox can replace it: it needs the same ``put`` / ``popleft`` / ``__len__`` /
``dropped``, and would delete a row on acknowledgement rather than on hand-off (``_on_publish``
gets the message id).

After a connection loss, paho re-sends its unacknowledged QoS 1/2 publishes itself on the next
CONNACK (older, so first), then the birth message goes out, then the outbox. QoS 0 publishes that
were handed to paho but not yet on the wire are lost with the connection (at most once, as MQTT
defines QoS 0; so are bytes in the kernel's buffers).

paho is also slow in exactly the places a gateway is busy (one ``send()`` per packet, three
``recv()`` per PUBACK, and a ReasonCode plus a Properties object built for every acknowledgement
and every QoS 0 packet written), which capped it near 10,000 publishes/s on a 2-core box, below
the 15,000/s the gateway must sustain. `_Client` narrows those few spots; see its docstring.

MQTT 5 (``version: "5"``)
-------------------------
Clean start on every connect (as 3.1.1's clean session) unless ``session.persistent``, and the
window fits the broker's Receive Maximum. A refusal's reason code is named in errors, logs and
``last_error`` (``Not authorized (135)``). A PUBACK (or PUBREC) >= 0x80 is never counted as
delivered: a write fails with it, a publish the broker may take later (`TRANSIENT_REFUSALS`) is
sent again after a pause, any other is counted in ``refused`` and dropped, its outbox rows
deleted, so that it cannot hold up the outbox. ``message_expiry`` goes on every data publish,
less the time it waited (outbox or memory buffer); one with nothing left is dropped and counted
in ``expired``. A received message naming a Response Topic puts it, and its Correlation Data, in
its bus message's meta; `MqttAdapter.publish` with that meta (``reply_to``) answers there.

The CONNACK's Maximum QoS, Retain Available and Maximum Packet Size (`BrokerLimits`, each
connection's own) bound every publish (`MqttAdapter._fit`): sending past them is a protocol
error that ends the connection, and the publish that did it would come back after the reconnect
(paho's re-send, the outbox) and end that one too, for ever. So a higher QoS goes at the
broker's maximum, retain is left off, and a publish over the size is dropped (``too_large``,
its outbox rows deleted; a write fails instead; an optimizer batch is halved until it fits).
What paho kept from the last connection is fitted on the CONNACK, before paho sends it again
(a failover broker may take less). A will the broker refuses (0x9A, 0x9B) goes as it takes it
from the next CONNECT to that broker on.

``topic_alias: true``: data publishes carry MQTT 5 Topic Aliases, as many as the CONNACK's Topic
Alias Maximum takes (`protocols.mqtt.alias`): a topic goes once per connection with its alias,
then an empty topic and the alias (on a metered uplink the topic is most of a small publish).
Aliases are the network connection's: the table starts empty on every CONNACK. What paho kept
from the last connection may carry an empty topic and an alias the new one never saw, a
protocol error (mosquitto sends DISCONNECT 0x82) that paho's re-send would repeat on every
reconnect; so on the CONNACK, before paho sends them again, they get their full topic back and
lose the alias (`_unalias_held`). The size checks count the packet that goes (`_wire`), an alias
is taken only by a publish that goes, and outbox rows keep full topics (aliases are chosen as
a row goes). Which topics get aliases when there are more than the broker takes: see
`protocols.mqtt.alias.TopicAliases`.

User properties (``user_properties:`` of the endpoint and of a bridge's route; MQTT 5 only):
rendered per publish (`codec.PropertyTemplates`): the endpoint's go on everything it publishes
(data, birth, offline and will, writes, replies), a route's after them on its data publishes,
one of the same name replacing the endpoint's. They travel with the publish: in the memory
buffer, in outbox rows (column ``user_properties``: a replay after an outage or a restart
carries them), on a publish the broker refused for now, and under a topic alias; the size
checks count them. An optimizer batch carries the endpoint's only (its rows differ). A received
message's user properties go in its bus message's meta (``meta["user_properties"]``, a list of
pairs; absent when there are none); a reply to it (`publish` with ``reply_to``) carries them
back. A rendered value that is no MQTT string is left out, the publish goes, and it is counted
in ``user_property_errors`` (logged once). A route's ``relay_user_properties`` puts a received
message's (that meta) on its publishes too, before the endpoint's and the route's, and its
``{property:<name>}`` names one of them (`codec.PropertyTemplates`): a bridge from one broker to
another carries them across, through the outbox as any others.

Persistent sessions (``session: {persistent: true}``)
----------------------------------------------------
The broker keeps the subscriptions and queues QoS 1/2 messages for them while the gateway is
away (`protocols.mqtt.link`). It sends what it queued right after the CONNACK, before the
SUBSCRIBE of `_serve_session`: paho hands every message to the one ``on_message``, set before
the first connect, and the bus consumers (shadow requests, bridges) subscribed before
``run()`` connects, so nothing arrives ahead of its handler. The subscriptions are made again
on every connect all the same (the config may have changed; a broker without the session
needs them). A QoS 1 message the broker sent again (no PUBACK before the outage) may come
twice: the shadow's desired state is idempotent, a reading is one more sample.

The session also keeps filters the config no longer names. The endpoint remembers what it
subscribed (`protocols.mqtt.subscribed`, one file per endpoint and broker) and, when the broker
says the session is present, unsubscribes the remembered filters it no longer wants, right
after subscribing the current ones (`_unsubscribe_leftovers`). A message that no filter of the
config takes (one the broker queued for a leftover, or sent before the UNSUBSCRIBE) is dropped
and counted in ``unwanted``, never a sample on mqtt/<name>/<topic>.

Birth and will
--------------
The will (``{"state":"offline"}``, retained, QoS 1) on ``status_topic`` is registered with the
CONNECT, so a broker publishes it if the gateway dies. On each connect a retained
``{"state":"online","ts":...}`` birth replaces it. A clean shutdown publishes a retained
``{"state":"offline","ts":...}`` itself, waits up to `MqttAdapter.drain_timeout` for outstanding
publishes to be acknowledged, and sends DISCONNECT, so the broker discards the will. A move back
to the first broker (``failback``) leaves the same way, less the drain: what waits in the outbox
then goes to the first broker, after its birth, in order.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Literal, NamedTuple, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel

from gateway.adapter import Adapter, AdapterContext
from gateway.backoff import BackoffTimer
from gateway.bus import topic_matches
from gateway.commands import WriteRefused, WriteStatus, serve_commands
from gateway.optimizer.batch import encode_batch
from gateway.optimizer.uplink import UplinkOptimizer
from gateway.streak import LogQuota
from gateway.text import counted
from gateway.types import (
    Message,
    MessageKind,
    PointSpec,
    Quality,
    Sample,
    Value,
    next_sequence,
)
from gateway.uplink.outbox import Outbox, Row
from protocols.mqtt import codec
from protocols.mqtt.alias import ALIAS_SIZE, TopicAliases, alias_properties, without_alias
from protocols.mqtt.config import MqttEndpoint, MqttRoute, brokers
from protocols.mqtt.link import NO_LIMITS, BrokerLimits, PahoOnLoop, paho_client, reason_text
from protocols.mqtt.props import PublishProperties
from protocols.mqtt.subscribed import SessionFilters

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["MemoryOutbox", "MqttAdapter", "MqttError", "Outgoing"]

# Acknowledged outbox rows are deleted with the next append, or this long after the last
# transaction at most: a transaction of their own would double the disk writes of a steady flow.
ACK_COMMIT_S = 0.5
# outbox.write_delay: rows waiting for their transaction are written at once past this many,
# so that memory stays bounded at any rate
WRITE_ROWS_MAX = 5_000
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_NO_CONN = MQTTErrorCode.MQTT_ERR_NO_CONN
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)  # shared, never mutated
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

# One publish waiting for the broker: topic, payload, qos, retain, MQTT 5 user properties.
Outgoing = tuple[str, bytes, int, bool, codec.UserProperties]
NO_PROPERTIES: codec.UserProperties = ()
_PROPS_CACHE_MAX = 4096

# MQTT 5 PUBACK/PUBREC reason codes >= 0x80 that a broker may not give again a moment later:
# quota exceeded (0x97, a rate or queue limit) and packet identifier in use (0x91, a glitch
# of the session's state). Such a publish is kept and sent again after a pause in which
# nothing new goes out (the broker asked us to slow down). Every other refusal (not
# authorized 0x87, topic name invalid 0x90, payload format invalid 0x99, implementation
# specific 0x83, unspecified 0x80) would be repeated for the same publish: it is counted,
# logged and dropped, since retrying it forever would hold up everything behind it.
TRANSIENT_REFUSALS = frozenset({0x91, 0x97})
REFUSAL_LOG_S = 10.0  # refused publishes: one line, then a count, per this many seconds
WILL_QOS = 1  # the will's, where the broker takes it (`MqttAdapter._fit_will`)


class _Refused(NamedTuple):
    """A publish the broker refused for now (`TRANSIENT_REFUSALS`), to send again: the outbox
    rows it carries (none on the in-memory path) and, with message expiry, its lifetime left
    when it was sent (``sent``: the monotonic clock then)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    rows: list[int]
    expiry: int | None
    sent: float
    user: codec.UserProperties


def _publishes(n: int) -> str:
    return counted(n, "publish", "publishes")


class MqttError(Exception):
    """An MQTT connection or protocol problem, in words that say what to check."""


class MemoryOutbox:
    """Bounded FIFO of publishes waiting for the broker; when full, the oldest is dropped.
    Each item keeps when it was put (monotonic), for message expiry (`popleft_aged`)."""

    __slots__ = ("maxlen", "dropped", "_items", "_born")

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self.dropped = 0
        self._items: collections.deque[Outgoing] = collections.deque()
        self._born: collections.deque[float] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing) -> bool:
        """Append; False if the oldest item had to be dropped to make room."""
        items = self._items
        items.append(item)
        self._born.append(time.monotonic())
        if len(items) > self.maxlen:
            items.popleft()
            self._born.popleft()
            self.dropped += 1
            return False
        return True

    def popleft(self) -> Outgoing:
        self._born.popleft()
        return self._items.popleft()

    def popleft_aged(self) -> tuple[Outgoing, float]:
        """The oldest item and how many seconds it waited here."""
        return self._items.popleft(), time.monotonic() - self._born.popleft()

    def clear(self) -> int:
        """Forget everything; returns how many items were discarded."""
        n = len(self._items)
        self._items.clear()
        self._born.clear()
        return n


class _Client(paho.Client):
    """paho with coalesced socket I/O and cheap acknowledgements.

    Stock paho makes one ``send()`` per MQTT packet and reads each packet's header a byte at a
    time (three ``recv()`` per PUBACK). At 15,000 publishes/s those system calls dominate, so
    this subclass replaces paho's three socket primitives (``_sock_send``, ``_sock_recv``,
    ``_sock_close``: tiny private methods, unchanged since paho 1.x; the dependency is pinned
    below 3): sends append to a write buffer that ``loop_write`` flushes with one ``send()``,
    reads are served from a 64 KiB read buffer, and closing first tries once, without
    blocking, to send what is still buffered (a DISCONNECT, typically). ``_ssl_wrap_socket``
    closes the socket of a failed TLS handshake, which paho leaks, and ``_sock_recv`` keeps
    the error that paho would reduce to "connection lost" (`socket_error`).

    It also skips what the adapter never reads: ``_handle_pubackcomp`` decodes an MQTT 3.1.1
    PUBACK/PUBCOMP (just a message id) without building a ReasonCode and a Properties object,
    and ``loop_write`` hides ``on_publish`` while paho writes, since paho would build both
    objects for every QoS 0 packet written only to report it. QoS 0 therefore never reaches
    ``on_publish``: the adapter counts it when handed over and bounds it by ``write_backlog``.
    Everything else is paho's own state machine, and MQTT 5 goes through paho unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wbuf = bytearray()
        self._rbuf = b""
        self._rpos = 0
        # paho turns a failed recv() into "connection lost" and drops the reason; keep it.
        self.socket_error: OSError | None = None
        super().__init__(*args, **kwargs)

    def read_pending(self) -> bool:
        """Received bytes not yet handed to paho (the socket may not look readable)."""
        if self._rpos < len(self._rbuf):
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _sock_recv(self, bufsize: int) -> bytes:
        rbuf, pos = self._rbuf, self._rpos
        if pos >= len(rbuf):
            sock = self._sock
            if sock is None:
                raise ConnectionError("socket is closed")
            try:
                rbuf = sock.recv(65536)
            except ssl.SSLWantReadError:
                raise BlockingIOError from None
            except ssl.SSLWantWriteError:
                self._call_socket_register_write()
                raise BlockingIOError from None
            except BlockingIOError:
                raise
            except OSError as exc:
                self.socket_error = exc
                raise
            if len(rbuf) <= bufsize:  # includes b"": end of stream
                self._rbuf, self._rpos = b"", 0
                return rbuf
            pos = 0
            self._rbuf = rbuf
        end = pos + bufsize
        self._rpos = end
        return rbuf[pos:end]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("socket is closed")
        self._wbuf += buf
        return len(buf)

    def want_write(self) -> bool:
        return bool(self._out_packet) or bool(self._wbuf)

    @property
    def write_backlog(self) -> int:
        """Bytes accepted by ``publish`` and not yet by the socket."""
        return len(self._wbuf)

    def loop_write(self) -> MQTTErrorCode:
        # Only QoS 0 packets report through on_publish while writing (acknowledgements arrive
        # by reading), and the adapter does not track those: see the class docstring.
        on_publish, self._on_publish = self._on_publish, None
        try:
            rc = super().loop_write()
        finally:
            self._on_publish = on_publish
        self._flush()
        if self._wbuf:
            self._call_socket_register_write()
        else:
            self._call_socket_unregister_write()
        return rc

    def _flush(self) -> None:
        wbuf, sock = self._wbuf, self._sock
        if not wbuf or sock is None:
            return
        try:
            sent = sock.send(wbuf)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError:
            # The peer is gone; reading will notice and paho reports the loss from there.
            wbuf.clear()
            return
        del wbuf[:sent]

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        # MQTT 3.1.1 acknowledgements are just a message id; paho builds a ReasonCode and a
        # Properties object for each one, which costs more than the rest of a publish.
        packet = self._in_packet["packet"]
        if self._protocol == MQTTProtocolVersion.MQTTv5 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return _SUCCESS

    def _handle_pubrec(self) -> MQTTErrorCode:
        # MQTT 5: a PUBREC with a reason code >= 0x80 ends a QoS 2 publish (4.3.3): the broker
        # refused it. paho ignores the code and goes on to PUBREL, whose PUBCOMP then says
        # Success (mosquitto's does), so a refused publish would pass for delivered.
        packet = self._in_packet["packet"]
        if self._protocol != MQTTProtocolVersion.MQTTv5 or len(packet) < 3 or packet[2] < 0x80:
            return super()._handle_pubrec()
        mid = (packet[0] << 8) | packet[1]
        reason = ReasonCode(PacketTypes.PUBREC, identifier=packet[2])
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, Properties(PacketTypes.PUBREC))  # type: ignore[no-untyped-call]
        return _SUCCESS

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        # paho's version leaves the socket open when the handshake fails (an untrusted
        # certificate, every retry). The adapter's contexts check the host name themselves
        # (check_hostname, or nothing at all with tls.insecure), so this is all paho's does.
        context = self._ssl_context
        if context is None:
            raise ValueError("TLS requested without an SSL context")
        ssl_sock = context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock

    def _sock_close(self) -> None:
        sock = self._sock
        if sock is not None and self._wbuf:
            try:
                sock.setblocking(False)
                sock.send(self._wbuf)  # one try, never blocking: a DISCONNECT is 2 bytes
            except (OSError, ValueError):
                pass
        self._wbuf.clear()
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()


def _describe_socket_error(exc: OSError) -> str:
    """Why a socket failed, with a hint for the TLS alerts people actually meet."""
    if isinstance(exc, ssl.SSLError):
        code = str(exc.reason or exc)
        if "CERTIFICATE_REQUIRED" in code:
            return f"TLS alert {code}: the broker wants a client certificate, set tls.cert_file"
        if "BAD_CERTIFICATE" in code or "UNKNOWN_CA" in code:
            return f"TLS alert {code}: the broker rejected our client certificate"
        return f"TLS error {code}"
    return exc.strerror or str(exc) or type(exc).__name__


def _props_size(props: Properties | None, *, exact: bool = False) -> int:
    """Bytes of a publish's encoded MQTT 5 properties, length included: 1 for none. Those of
    a data publish without user properties hold a Message Expiry Interval at most
    (`codec.LIFETIME_SIZE`), so they are not packed to be measured; ``exact``: any properties
    (replies, paho's kept publishes)."""
    if props is None:
        return 1
    if exact or hasattr(props, "UserProperty"):
        return len(props.pack())  # type: ignore[no-untyped-call]
    return codec.LIFETIME_SIZE


def _received_meta(msg: paho.MQTTMessage) -> dict[str, Any]:
    """An MQTT 5 message's user properties (`codec.USER_PROPERTIES`), and a request's Response
    Topic and Correlation Data (`codec.RESPONSE_TOPIC`), as the meta of its bus message; empty
    for a message with neither."""
    props = getattr(msg, "properties", None)
    if props is None:
        return {}
    meta: dict[str, Any] = {}
    user = getattr(props, "UserProperty", None)
    if user:
        meta[codec.USER_PROPERTIES] = list(user)
    topic = getattr(props, "ResponseTopic", None)
    if topic:
        meta[codec.RESPONSE_TOPIC] = topic
        meta[codec.CORRELATION_DATA] = getattr(props, "CorrelationData", None)
    return meta


def _state_payload(state: str, *, ts: bool = True) -> bytes:
    body: dict[str, str] = {"state": state}
    if ts:
        body["ts"] = codec.format_ts(time.time())
    return json.dumps(body, separators=(",", ":")).encode()


class MqttAdapter(PahoOnLoop, Adapter):
    """Publishes bridged bus messages to an MQTT broker and turns subscriptions into bus messages.

    ``async with MqttAdapter(name, endpoint, context) as mqtt:`` prepares the client (never
    connects); ``await mqtt.run()`` connects, reconnects with backoff, and serves until cancelled;
    ``await mqtt.send(message, route)`` publishes (or queues while disconnected).
    """

    config: MqttEndpoint
    LOG = log

    #: QoS 1/2 publishes handed to paho and not yet acknowledged
    max_inflight: int = 1000
    #: bytes handed to paho and not yet accepted by the socket (what bounds QoS 0)
    max_write_backlog: int = 1 << 20
    #: on shutdown, how long to wait for outstanding publishes to be acknowledged
    drain_timeout: float = 2.0
    #: TCP connect + TLS handshake, and then CONNACK, each within this many seconds
    connect_timeout: float = 10.0
    #: how long to wait for the broker's SUBACK before going on without it
    subscribe_timeout: float = 10.0
    #: at most one warning per this many seconds about undecodable payloads
    bad_payload_log_interval: float = 10.0

    def __init__(self, name: str, config: MqttEndpoint, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        gateway = context.gateway_name
        self.gateway = gateway
        self.client_id = config.client_id or f"protocol-brain-{gateway}-{name}"
        self.status_topic = config.status_topic.format(gateway=codec.escape_level(gateway))
        self._outbox = MemoryOutbox(config.max_queued)
        # the durable outbox (config.outbox enabled): opened by __aenter__
        self._store: Outbox | None = None
        # outbox.write_delay: rows accepted by send() that wait for their one transaction
        self._unwritten: list[Outgoing] = []
        self._write_timer: asyncio.TimerHandle | None = None
        self._ack_commit_s = ACK_COMMIT_S
        self._mid_rows: dict[int, int] = {}  # paho mid -> outbox row id, QoS 1/2 in flight
        self._drain_mark = 0  # outbox rows up to this id are backlog: sent at drain_rate
        # the packet optimizer (config.optimizer): rows taken from the outbox wait in
        # _staging until the decision in force flushes them as one publish (a batch)
        self._opt: UplinkOptimizer | None = None
        self._staging: collections.deque[Row] = collections.deque()
        self._urgent: set[int] = set()  # row ids of alarms (EVENT messages): QoS 1, at once
        self._mid_batches: dict[int, list[int]] = {}  # paho mid -> outbox row ids of a batch
        self._batch_topic = ""
        self._backlog_cursor = 0  # live_first: last backlog row handed out (its own lane)
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._drops_logged = 0
        self._drop_log_at = 0.0
        self._inflight: set[int] = set()  # paho mids of QoS 1/2 publishes not yet acknowledged
        self._internal_mids: set[int] = set()  # birth / offline: not counted as data
        self._client: _Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._init_socket()
        self._aim(
            brokers(config), config.keepalive, config.failback, v5=config.v5, session=config.session
        )
        # MQTT 5 message expiry: the Properties of a publish sent with its whole lifetime
        self._expiry = config.message_expiry
        self._full_life: Properties | None = None
        if self._expiry is not None:
            self._full_life = self._lifetime(self._expiry)
        # MQTT 5 user properties: the endpoint's (every publish), each route's merged with
        # them (by route object), and the Properties of publishes with some (by lifetime)
        self._own = codec.PropertyTemplates(config.user_properties, {}, gateway)
        self._own_props = self._own.render(self.name, "status") if config.v5 else NO_PROPERTIES
        self._routes: dict[int, tuple[MqttRoute, codec.PropertyTemplates | None]] = {}
        self._with_props: dict[tuple[codec.UserProperties, int | None], Properties] = {}
        self._props_said = False  # a bad rendered value or a 3.1.1 route: logged once
        # publishes the broker refused for now (TRANSIENT_REFUSALS), sent again first once
        # the pause (_held) in which nothing new goes out is over
        self._retry: collections.deque[_Refused] = collections.deque()
        self._held = False
        self._pause = BackoffTimer(config.reconnect)
        self._own_window: int | None = None  # max_inflight before a broker's Receive Maximum
        # MQTT 5: what this connection's broker takes (its CONNACK's Maximum QoS, Retain
        # Available, Maximum Packet Size); whether a lowered QoS, a dropped retain were said
        self._limits: BrokerLimits = NO_LIMITS
        self._qos_said = False
        self._retain_said = False
        # the will (QoS, retain) of the next CONNECT, per broker index, where it cannot be the
        # retained QoS 1 one (the broker refused it, or its last CONNACK's limits say so)
        self._will_fit: dict[int, tuple[int, bool]] = {}
        # MQTT 5 topic_alias: this connection's aliases (reset on every CONNACK), and the full
        # topic of each QoS 1/2 publish that went with an empty topic, by paho mid, until it is
        # acknowledged: paho re-sends it after a reconnect, where the alias means nothing
        self._aliases = TopicAliases()
        self._alias_topics: dict[int, str] = {}
        # a broker may refuse every publish (an ACL): one line and then a count per window
        self._refusal_log = LogQuota(
            lambda n: log.warning(
                "MQTT %s: %d more publishes refused in %g s (counted in status 'refused')",
                self.name,
                n,
                REFUSAL_LOG_S,
            ),
            quota=1,
            interval=REFUSAL_LOG_S,
        )
        self._too_large_log = LogQuota(
            lambda n: log.warning(
                "MQTT %s: %d more publishes over the broker's Maximum Packet Size in %g s "
                "(counted in status 'too_large')",
                self.name,
                n,
                REFUSAL_LOG_S,
            ),
            quota=1,
            interval=REFUSAL_LOG_S,
        )
        self._sub_futs: dict[int, asyncio.Future[list[Any]]] = {}
        self._wake = asyncio.Event()
        self._ready_event = asyncio.Event()
        self._connected = False  # CONNACK received, connection not lost
        self._ready = False  # connected, birth sent, subscriptions requested: send directly
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None
        self._drop_logged = False
        self._payload_modes: dict[str, str | None] = {}  # None: no filter of ours takes it
        # persistent sessions: what each broker's session holds, remembered (by host, port)
        self._records: dict[tuple[str, int], SessionFilters] = {}
        self._unwanted_log = LogQuota(
            lambda n: log.warning(
                "MQTT %s: %d more messages on topics no subscription of the config takes in"
                " %g s (counted in status 'unwanted')",
                self.name,
                n,
                REFUSAL_LOG_S,
            ),
            quota=1,
            interval=REFUSAL_LOG_S,
        )
        self._points = codec.PointDecoder(list(config.points), name)
        self._point_by_name = {p.name: p for p in config.points}
        self._keys = codec.KeyDecoder(
            [s.topic for s in config.subscriptions if s.points == "keys"],
            limit=config.max_keys,
            per_message=config.max_new_keys,
            reserved=self._point_by_name,
            by_topic=[s.topic for s in config.subscriptions if s.names == "topic"],
        )
        # a write's (or the failback offline's) PUBACK: None, or why the broker refused it
        self._write_futs: dict[int, asyncio.Future[str | None]] = {}
        self._points_bad = False  # bad samples published for this outage already
        self._bad_log = LogQuota(
            lambda n: log.warning(
                "MQTT %s: %d more bad payloads in %g s (counted in status 'bad_payloads')",
                self.name,
                n,
                self.bad_payload_log_interval,
            ),
            quota=1,
            interval=self.bad_payload_log_interval,
        )
        self.last_error: str | None = None
        # counters
        self.published = 0
        self.acknowledged = 0
        self.lost = 0  # publishes paho refused (its queue full, or QoS 0 with no connection)
        self.reconnects = 0
        self.received = 0
        self.bad_payloads = 0
        self.unwanted = 0  # messages no filter of the config takes (a session's leftovers)
        self.unsubscribed = 0  # leftover filters unsubscribed from a persistent session
        self.encode_errors = 0
        self.writes = 0
        self.refused = 0  # MQTT 5: publishes the broker refused for good (dropped)
        self.expired = 0  # MQTT 5: publishes past their message_expiry before they went out
        self.too_large = 0  # MQTT 5: publishes over the broker's Maximum Packet Size (dropped)
        # publishes that went without user properties they were given: a rendered value that
        # is no MQTT string (that property), a route's on MQTT 3.1.1 (all of them)
        self.user_property_errors = 0
        if self._own.errors:
            self._property_error(self._own.errors, self._own.last_error)
        full = self._data_props(self._own_props, 0.0, self._expiry)
        # what the properties of an optimizer batch take (the endpoint's user properties only)
        self._batch_props = _props_size(None if full is False else full)
        # birth, offline, writes (and replies, with more): the endpoint's user properties
        self._status_props = self._data_props(self._own_props, 0.0, None) or None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttAdapter:
        """Prepare the paho client: identity, credentials, TLS, will. No network I/O."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        cfg = self.config
        # reconnecting is run()'s job, with our backoff
        client: _Client = paho_client(
            self.client_id, v5=cfg.v5, cls=_Client, persistent=cfg.session.persistent
        )
        client.max_inflight_messages_set(0)  # our own window, see the module docstring
        client.max_queued_messages_set(0)
        client.connect_timeout = self.connect_timeout
        clear = cfg.password_warning()
        if clear is not None:
            log.warning("MQTT endpoint %s %s", self.name, clear)
        self._login(cfg, f"MQTT endpoint {self.name!r}", MqttError)
        self._sign_in(client)
        self._set_will(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_subscribe  # an UNSUBACK settles its future alike
        client.on_message = self._on_message
        self.install(client)
        self._client = client
        self._use_broker(self._broker)
        if cfg.outbox is not None and cfg.outbox.enabled and self._store is None:
            self._store = Outbox(cfg.outbox.file_for(self.name), cfg.outbox, name=self.name)
            # acknowledgements ride on the delayed appends rather than in a transaction between
            self._ack_commit_s = max(ACK_COMMIT_S, 1.5 * cfg.outbox.write_delay)
            self._drops_logged = self._store.total_dropped
            if cfg.optimizer is not None and self._opt is None:
                self._opt = UplinkOptimizer(cfg.optimizer, name=self.name)
                log.info("MQTT %s: uplink optimizer: %s", self.name, self._opt.in_force)
                self._batch_topic = cfg.optimizer.batch_topic.format(
                    gateway=codec.escape_level(self.gateway)
                )
            if self._store.rows:
                log.info(
                    "MQTT %s: %s from before the restart wait in %s",
                    self.name,
                    _publishes(self._store.rows),
                    self._store.path,
                )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def points(self) -> list[PointSpec]:
        """The configured ``points:`` (the endpoint as a source); empty for a pure target."""
        return [PointSpec.of(self.name, p, p.datatype) for p in self.config.points]

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff after any loss; until cancelled or closed.

        With writable points, commands are served alongside (`write`)."""
        if self._client is None:
            raise RuntimeError("use 'async with adapter:' before 'await adapter.run()'")
        if any(p.access.writable for p in self.config.points):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(serve_commands(self.bus, self.name, self.write))
                tg.create_task(self._keep_connected(MqttError, self.config.reconnect))
        else:
            await self._keep_connected(MqttError, self.config.reconnect)

    def _unreachable(self, reason: str) -> None:
        self._points_lost(reason)

    async def wait_connected(self) -> None:
        """Until connected with the birth message sent and subscriptions acknowledged."""
        await self._ready_event.wait()

    # --- connecting ---------------------------------------------------------------------------

    async def _connect_once(self) -> None:
        """One connection attempt up to CONNACK; MqttError if it fails."""
        assert self._client is not None
        self._client.socket_error = None
        self._set_will(self._client)
        await self._connect_paho(MqttError)

    def _set_will(self, client: paho.Client) -> None:
        """The will of the next CONNECT: the retained offline state at QoS 1, or as the broker
        about to be tried takes it (`_fit_will`)."""
        qos, retain = self._will_fit.get(self._broker, (WILL_QOS, True))
        offline = _state_payload("offline", ts=False)
        props = None
        if self._own_props:
            props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            props.UserProperty = list(self._own_props)
        client.will_set(self.status_topic, offline, qos=qos, retain=retain, properties=props)

    async def _serve_session(self) -> str:
        """Birth, subscriptions, then flush the outbox until the connection is lost."""
        client, disconnected = self._client, self._disconnected
        assert client is not None and disconnected is not None
        log.info(
            "MQTT %s: connected to %s as %s (MQTT %s%s)",
            self.name,
            self.address,
            self.client_id,
            self.config.version,
            ", session present" if self.session_present else "",
        )
        self._publish_internal(_state_payload("online"))
        await self._subscribe_all(disconnected)
        if disconnected.done():
            return disconnected.result()
        self._ready = True
        self._points_bad = False
        self._drop_logged = False
        store = self._store
        if store is not None:
            self._drain_mark = store.last_id
            self._tokens, self._tokens_at = 0.0, time.monotonic()
            if store.config.drain_order == "live_first":
                # Two lanes: rows appended from now on go out at once through the cursor, the
                # backlog (the rest, not yet handed out) follows at drain_rate beside them.
                self._backlog_cursor = store.cursor
                store.skip_to(self._drain_mark)
        self._ready_event.set()
        wake = self._wake
        while not disconnected.done():
            self._flush()
            wake.clear()
            store = self._store
            if store is not None:  # acknowledgements no append has carried (`ACK_COMMIT_S`)
                store.commit(within=self._ack_commit_s)
                if not self._backlog_left(store):  # its pages back to the disk, once drained
                    store.shrink()
            due = store.commit_due(self._ack_commit_s) if store is not None else None
            if self._opt is not None:  # staged rows wait for their deadline, not for room
                wait = self._opt_wait()
                if self._ready and self._backlog_left(self._store) if self._store else False:
                    wait = min(wait, max(0.005, self._drain_delay()))
                if due is not None:
                    wait = min(wait, max(0.005, due))
                try:
                    async with asyncio.timeout(wait):
                        await wake.wait()
                except TimeoutError:
                    pass
                continue
            if self._ready and self._queued() and self._has_room(1):
                delay = self._drain_delay()
                if delay <= 0:
                    await asyncio.sleep(0)  # more to send now; let the rest of the loop run
                    continue
                try:
                    async with asyncio.timeout(delay):
                        await wake.wait()
                except TimeoutError:
                    pass
                continue
            if due is None:
                await wake.wait()
                continue
            try:  # acknowledged rows are deleted with the next append, or after this at most
                async with asyncio.timeout(due):
                    await wake.wait()
            except TimeoutError:
                pass
        return disconnected.result()

    def _queued(self) -> bool:
        store = self._store
        if store is None:
            return bool(self._outbox)
        if store.config.drain_order == "live_first":
            # The backlog lane counts only while it has room in its share of the window;
            # otherwise the flusher must wait for acknowledgements, not spin.
            return store.pending() or (
                self._backlog_left(store) and len(self._inflight) < self._backlog_window()
            )
        return store.pending() or self._backlog_left(store)

    def _backlog_window(self) -> int:
        """live_first: in-flight publishes the backlog may fill (a quarter of the window)."""
        return max(1, self.max_inflight // 4)

    def _backlog_left(self, store: Outbox) -> bool:
        """Backlog rows not handed out yet (either lane discipline)."""
        if store.config.drain_order == "live_first":
            return self._backlog_cursor < self._drain_mark
        return store.cursor < self._drain_mark

    async def _subscribe_all(self, disconnected: asyncio.Future[str]) -> None:
        topics: list[tuple[str, int]] = [(s.topic, s.qos) for s in self.config.subscriptions]
        subscribed = {t for t, _ in topics}
        topics += [(t, 1) for t in self._points.topics() if t not in subscribed]
        wanted = [t for t, _ in topics]
        leftovers = await self._leftovers(wanted) if self._persistent else []
        await self._subscribe(topics, disconnected)
        if leftovers and not disconnected.done():
            await self._unsubscribe_leftovers(leftovers, wanted, disconnected)

    def _record(self) -> SessionFilters:
        """The record of the session at the broker in use (`protocols.mqtt.subscribed`)."""
        broker = self._brokers[self._broker]
        record = self._records.get(broker)
        if record is None:
            record = self._records[broker] = SessionFilters(self.name, *broker, self.client_id)
        return record

    async def _leftovers(self, wanted: list[str]) -> list[str]:
        """The filters the present session holds that are not ``wanted`` (as remembered);
        the record written first to hold every filter the session may hold after the
        SUBSCRIBE (the wanted ones, and the leftovers until they are unsubscribed)."""
        record = self._record()
        remembered = await asyncio.to_thread(record.load) if self.session_present else []
        if remembered is None:
            record.say_unknown(self.address)
            remembered = []
        leftovers = sorted(set(remembered) - set(wanted))
        await asyncio.to_thread(record.save, [*wanted, *leftovers])
        return leftovers

    async def _unsubscribe_leftovers(
        self, leftovers: list[str], wanted: list[str], disconnected: asyncio.Future[str]
    ) -> None:
        """UNSUBSCRIBE the session's filters that the config no longer names; once the broker
        has answered, the record holds the wanted ones only (else they are tried again on the
        next connection)."""
        client = self._client
        if client is None:
            return
        if await self._acked(client.unsubscribe(leftovers), "UNSUBACK", disconnected) is None:
            return
        self.unsubscribed += len(leftovers)
        log.info(
            "MQTT %s: unsubscribed from %s that the session at %s kept but the config no longer"
            " names: %s",
            self.name,
            counted(len(leftovers), "topic filter"),
            self.address,
            ", ".join(map(repr, leftovers)),
        )
        await asyncio.to_thread(self._record().save, wanted)

    async def _acked(
        self, sent: tuple[MQTTErrorCode, int | None], what: str, disconnected: asyncio.Future[str]
    ) -> list[Any] | None:
        """The reason codes of the broker's ``what`` (SUBACK, UNSUBACK) to the packet paho
        ``sent`` (its result, mid); None when the connection is gone or none came within
        `subscribe_timeout` (logged)."""
        rc, mid = sent
        if rc != _SUCCESS or mid is None:
            return None  # connection already gone: on_disconnect has resolved `disconnected`
        fut = await self._answer(self._sub_futs, mid, self.subscribe_timeout, disconnected)
        if not fut.done():
            if not disconnected.done():
                log.warning(
                    "MQTT %s: no %s from %s within %s s",
                    self.name,
                    what,
                    self.address,
                    self.subscribe_timeout,
                )
            fut.cancel()
            return None
        return fut.result()

    async def _subscribe(
        self, topics: list[tuple[str, int]], disconnected: asyncio.Future[str]
    ) -> None:
        client, loop = self._client, self._loop
        if not topics or client is None or loop is None:
            return
        codes = await self._acked(client.subscribe(topics), "SUBACK", disconnected)
        for (topic, _qos), code in zip(topics, codes or (), strict=False):
            if getattr(code, "is_failure", False):
                self.last_error = f"{self.address} refused subscription to {topic!r}: " + (
                    reason_text(code)
                )
                log.warning("MQTT %s: %s", self.name, self.last_error)

    # --- publishing ---------------------------------------------------------------------------

    async def send(self, message: Message, route: BaseModel) -> None:
        """Publish one bus message as ``route`` says; queued while disconnected or congested."""
        if not isinstance(route, MqttRoute):
            raise TypeError(f"MQTT endpoint {self.name!r} needs an MqttRoute, got {route!r}")
        try:
            pairs = codec.encode(message, route, self.gateway)
        except codec.TopicError as exc:
            self.encode_errors += 1
            log.warning("MQTT %s: cannot publish %s: %s", self.name, message.topic, exc)
            return
        qos = route.qos
        retain = route.retain
        users = None
        if (
            route.user_properties
            or self._own_props
            or (route.relay_user_properties and codec.USER_PROPERTIES in message.meta)
        ):
            users = self._user_properties(message, route, len(pairs))
        store = self._store
        if store is not None:
            alarm = message.kind is MessageKind.EVENT
            if self._opt is not None:
                self._opt.note_arrivals(len(pairs))
                if alarm:  # QoS 1 at least, never batched
                    qos = max(qos, 1)
            rows: list[Outgoing]
            if users is None:
                rows = [(t, p, qos, retain, NO_PROPERTIES) for t, p in pairs]
            else:
                rows = [(t, p, qos, retain, u) for (t, p), u in zip(pairs, users, strict=True)]
            self._store_rows(store, rows, alone=alarm)
            return
        if self._ready and not self._outbox and self._has_room(len(pairs)):
            publish = self._publish
            if users is None:
                for topic, payload in pairs:
                    publish(topic, payload, qos, retain)
            else:
                for (topic, payload), user in zip(pairs, users, strict=True):
                    publish(topic, payload, qos, retain, user)
            return
        if users is None:
            self._enqueue((t, p, qos, retain, NO_PROPERTIES) for t, p in pairs)
        else:
            self._enqueue((t, p, qos, retain, u) for (t, p), u in zip(pairs, users, strict=True))

    def _user_properties(
        self, message: Message, route: MqttRoute, n: int
    ) -> list[codec.UserProperties] | None:
        """The user properties of each of the ``n`` publishes of ``message`` on ``route`` (the
        endpoint's and the route's, `codec.PropertyTemplates`); None on MQTT 3.1.1, which has
        none (`gateway validate` refuses such a route: counted and logged once here)."""
        found = self._routes.get(id(route))
        if found is None or found[0] is not route:
            templates = None
            if self._v5:
                own = self.config.user_properties
                templates = codec.PropertyTemplates(
                    own, route.user_properties, self.gateway, route.relay_user_properties
                )
            if len(self._routes) >= 1024:  # routes come from the config: a reload's leftovers
                self._routes.clear()
            found = self._routes[id(route)] = (route, templates)
        templates = found[1]
        if templates is None:
            self._property_error(
                n,
                f"MQTT {self.config.version} has no user properties (a bridge's user_properties"
                " or relay_user_properties)",
            )
            return None
        before = templates.errors
        users = templates.of(message, route.payload)
        if templates.errors != before:
            self._property_error(templates.errors - before, templates.last_error)
        return users

    def _property_error(self, n: int, why: str | None) -> None:
        """``n`` publishes went without (some of) their user properties: counted; the first
        logged."""
        self.user_property_errors += n
        if not self._props_said:
            self._props_said = True
            log.warning(
                "MQTT %s: %s: the publish goes without it (counted in status"
                " 'user_property_errors'; logged once)",
                self.name,
                why,
            )

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        reply_to: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish one message outside any bridge (shadow replies and the like), through the
        same outbox as bridge traffic: durable when the endpoint has one. With the optimizer it
        goes alone, at once, on its own topic: a client waiting for a shadow reply does not
        read the batch topic.

        ``reply_to``: the meta of the bus message this answers. When that was an MQTT 5
        request naming a Response Topic, the answer goes there instead of ``topic``, with the
        request's Correlation Data (`_reply`). Either way an MQTT 5 reply carries the request's
        user properties back (`codec.USER_PROPERTIES`), after the endpoint's: one of the same
        name replaces the endpoint's."""
        if reply_to and reply_to.get(codec.RESPONSE_TOPIC):
            self._reply(reply_to, payload, qos)
            return
        user = self._own_props
        echo = reply_to.get(codec.USER_PROPERTIES) if reply_to and self._v5 else None
        if echo:  # MQTT 5 request/response practice: the request's properties come back
            user = codec.merge_properties(user, echo)
        store = self._store
        if store is not None:
            self._store_rows(store, [(topic, payload, qos, retain, user)], alone=True)
            return
        self._enqueue([(topic, payload, qos, retain, user)])

    def _store_rows(self, store: Outbox, rows: list[Outgoing], *, alone: bool) -> None:
        """Append to the outbox and flush; ``alone``: with the optimizer, each row is sent on
        its own, before the rows after it are batched (alarms, replies). With
        ``outbox.write_delay`` other rows wait in memory for one transaction with the rows
        after them; ``alone`` rows take the waiting ones with them, in order, at once."""
        delay = store.config.write_delay
        if delay > 0 and not alone and not self._closing:  # closing: nothing may wait
            self._unwritten.extend(rows)
            if len(self._unwritten) >= WRITE_ROWS_MAX:
                self._write_unwritten()
            elif self._write_timer is None and self._loop is not None:
                self._write_timer = self._loop.call_later(delay, self._write_timer_due)
            return
        waiting = len(self._unwritten)
        if waiting:
            rows = self._take_unwritten() + rows
        self._append(store, rows, alone_from=waiting if alone else len(rows))

    def _take_unwritten(self) -> list[Outgoing]:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        rows, self._unwritten = self._unwritten, []
        return rows

    def _write_unwritten(self) -> None:
        """Write the rows ``outbox.write_delay`` holds (timer, size bound, close). A failure
        is logged and the rows counted as lost: the timer and the close have no caller to
        tell, and the close must go on."""
        rows = self._take_unwritten()
        if not rows:
            return
        try:
            if self._store is None:
                raise RuntimeError("the outbox is closed")
            self._append(self._store, rows, alone_from=len(rows))
        except Exception:
            self.lost += len(rows)
            log.exception(
                "MQTT %s: %s held by write_delay could not be written to the outbox (counted "
                "in status 'lost')",
                self.name,
                _publishes(len(rows)),
            )

    def _write_timer_due(self) -> None:
        self._write_timer = None
        self._write_unwritten()

    def _append(self, store: Outbox, rows: list[Outgoing], *, alone_from: int) -> None:
        """One transaction; rows from index ``alone_from`` on go alone (optimizer)."""
        stamp = self._stamp
        if alone_from < len(rows) and self._opt is not None:
            urgent = self._urgent
            index = itertools.count()

            def stamp(row_id: int, payload: bytes) -> bytes:
                if next(index) >= alone_from:
                    urgent.add(row_id)
                return self._stamp(row_id, payload)

        store.append(rows, stamp)
        self._log_drops(store)
        if self._ready:
            self._flush()

    def _enqueue(self, items: Iterable[Outgoing]) -> None:
        outbox = self._outbox
        before = outbox.dropped
        for item in items:
            outbox.put(item)
        if outbox.dropped != before and not self._drop_logged:
            self._drop_logged = True
            log.warning(
                "MQTT %s: outbox full (max_queued=%d) while %s; dropping the oldest messages "
                "(counted in status 'dropped'; logged once per outage)",
                self.name,
                outbox.maxlen,
                "connected but congested" if self._connected else f"{self.address} is unreachable",
            )
        if self._ready:
            self._wake.set()

    def _publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        user: codec.UserProperties = NO_PROPERTIES,
        age: float = 0.0,
    ) -> None:
        """One publish of the in-memory path (``age``: seconds it waited in the buffer)."""
        client = self._client
        assert client is not None
        props = self._data_props(user, age, self._expiry)
        if props is False:
            return
        try:
            sent = self._send_data(client, topic, payload, qos, retain, props)
        except ValueError as exc:  # invalid topic, payload too large
            self.encode_errors += 1
            log.warning("MQTT %s: cannot publish to %r: %s", self.name, topic, exc)
            return
        if sent is None:  # too large for the broker
            return
        info, qos = sent
        rc = info.rc
        if rc == _SUCCESS:
            if qos:
                self._inflight.add(info.mid)
            self.published += 1
        elif rc == _NO_CONN and qos:  # paho keeps it and re-sends it after reconnecting
            self._inflight.add(info.mid)
            self.published += 1
        else:
            self.lost += 1

    def _stamp(self, row_id: int, payload: bytes) -> bytes:
        """Write the outbox id into a JSON object payload: ``"id":"{gateway}/{endpoint}/{n}"``."""
        if payload[:1] != b"{":
            return payload  # a bare value (payload: value) has nowhere to carry an id
        stamp = b'{"id":"%s/%s/%d"' % (self.gateway.encode(), self.name.encode(), row_id)
        return stamp + (b"}" if payload.strip() == b"{}" else b"," + payload[1:])

    def _log_drops(self, store: Outbox) -> None:
        total = store.total_dropped
        if total == self._drops_logged:
            return
        now = time.monotonic()
        if now - self._drop_log_at < 10.0 and self._drop_log_at:
            return
        log.warning(
            "MQTT %s: outbox dropped %s (%s; policy %s; %d in all since the file was created)",
            self.name,
            _publishes(total - self._drops_logged),
            ", ".join(f"{k} {v}" for k, v in store.dropped.items() if v),
            store.config.policy,
            total,
        )
        self._drops_logged = total
        self._drop_log_at = now

    def _drain_delay(self) -> float:
        """Seconds until the next backlog publish may go (drain_rate); 0: now."""
        store = self._store
        if store is None or store.config.drain_rate is None or self._tokens >= 1:
            return 0.0
        if not self._backlog_left(store):
            return 0.0
        return (1 - self._tokens) / store.config.drain_rate

    def _allowance(self, store: Outbox) -> int:
        """How many rows may be taken now from the cursor: unlimited for live rows, drain_rate
        for backlog (strict order: the backlog comes through the cursor first)."""
        if store.cursor >= self._drain_mark:
            return self.max_inflight
        n = self._backlog_tokens(store)
        # never take live rows at the backlog's pace, nor backlog past the cap
        return min(n, self._drain_mark - store.cursor) if n else 0

    def _backlog_tokens(self, store: Outbox) -> int:
        rate = store.config.drain_rate
        if rate is None:
            return self.max_inflight
        now = time.monotonic()
        self._tokens = min(max(rate / 10, 1.0), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        return int(self._tokens)

    def _flush_backlog_lane(self, store: Outbox, client: _Client, acked: list[int]) -> None:
        """live_first: hand out backlog rows beside the live ones, at drain_rate."""
        if self._backlog_cursor >= self._drain_mark or not self._has_room(1):
            return
        # The backlog may fill a quarter of the window at most: live rows always find room, and
        # no more than that many backlog publishes are ahead of them on the connection.
        room = self._backlog_window() - len(self._inflight)
        n = min(room, self._backlog_tokens(store), 1000)
        if n <= 0:
            return
        rows = store.take_range(self._backlog_cursor, self._drain_mark, n)
        if not rows:  # what is left was dropped or expired meanwhile
            self._backlog_cursor = self._drain_mark
            return
        self._backlog_cursor = rows[-1].id
        self._tokens -= len(rows)
        for row in rows:
            mid = self._publish_row(client, row)
            if mid is None:
                acked.append(row.id)
            else:
                self._mid_rows[mid] = row.id

    def _flush_store(self, store: Outbox) -> None:
        client = self._client
        assert client is not None
        mid_rows = self._mid_rows
        inflight = self._inflight
        acked: list[int] = []
        while self._has_room(1):
            room = self.max_inflight - len(inflight)
            n = min(room, self._allowance(store), 1000)
            backlog = store.cursor < self._drain_mark
            rows = store.take(n) if n > 0 else []
            if not rows:
                break
            if backlog:
                self._tokens -= len(rows)
            for row in rows:
                mid = self._publish_row(client, row)
                if mid is None:
                    acked.append(row.id)  # handed to the socket (QoS 0) or refused for good
                else:
                    mid_rows[mid] = row.id
            if not self._has_room(1):
                break
        if store.config.drain_order == "live_first":
            self._flush_backlog_lane(store, client, acked)
        if acked:
            store.ack(acked)  # deleted with the next append, or by run's commit
            self._wake.set()  # run's commit sees them: a QoS 0 row has no PUBACK to wake it

    def _publish_row(self, client: _Client, row: Row) -> int | None:
        """Publish an outbox row (or a batch of them); its paho mid while it waits for the
        broker, None when the row is done with (QoS 0 written, refused by paho, expired)."""
        props: Properties | None = None
        user = row.user_properties
        if self._expiry is not None or user:
            store = self._store
            # the clock is read only for an expiry to shorten
            age = store.now() - row.ts if store and self._expiry is not None else 0.0
            left = self._data_props(user, age, self._expiry)
            if left is False:
                return None
            props = left
        try:
            sent = self._send_data(client, row.topic, row.payload, row.qos, row.retain, props)
        except ValueError as exc:  # invalid topic, payload too large: it never will go
            self.encode_errors += 1
            log.warning("MQTT %s: cannot publish to %r: %s", self.name, row.topic, exc)
            return None
        if sent is None:  # too large: deleted, or it would come back after every reconnect
            return None
        info, qos = sent  # a QoS lowered to 0: done once written, as any QoS 0 row
        rc = info.rc
        if rc == _SUCCESS or (rc == _NO_CONN and qos):
            self.published += 1
            if qos:
                self._inflight.add(info.mid)
                return int(info.mid)
            return None
        self.lost += 1
        return None

    def _has_room(self, n: int) -> bool:
        client = self._client
        return (
            not self._held
            and len(self._inflight) + n <= self.max_inflight
            and client is not None
            and client.write_backlog < self.max_write_backlog
        )

    def _flush(self) -> None:
        """Hand queued publishes to paho, in order, as far as the window allows."""
        if self._store is not None:
            if self._ready:
                if self._retry:
                    self._send_refused_again()
                if self._opt is not None:
                    self._flush_optimized(self._store)
                else:
                    self._flush_store(self._store)
            return
        if self._retry and self._ready:
            self._send_refused_again()
        outbox = self._outbox
        publish = self._publish
        has_room = self._has_room
        while outbox and self._ready and has_room(1):
            item, age = outbox.popleft_aged()
            publish(*item, age)

    # --- the packet optimizer ---------------------------------------------------------------------

    def _opt_wait(self) -> float:
        """Seconds until the staged rows fall due or the next decision, whichever first."""
        opt = self._opt
        assert opt is not None
        wait = opt.due_in()
        if self._staging and self._store is not None:
            # rows are stamped on the outbox's clock, which the system clock's steps do not move
            due = self._staging[0].ts + opt.decision.deadline - self._store.now()
            wait = min(wait, due)
        return max(0.005, wait)

    def _flush_optimized(self, store: Outbox, *, force: bool = False) -> None:
        """Cut the outbox into publishes as the decision in force says.

        Rows go from the outbox (in id order, at drain_rate for the backlog) to ``_staging``;
        a batch leaves when ``max_batch`` rows wait or the oldest is ``deadline`` old, while
        fewer than ``window`` telemetry publishes wait for a PUBACK. An alarm row flushes what
        is before it (order is kept) and goes alone, QoS 1, whatever the window. Rows stay in
        the file until their publish is acknowledged (QoS 0: handed to the socket).
        """
        opt, client = self._opt, self._client
        assert opt is not None and client is not None
        staging = self._staging
        now = store.now()
        d = opt.maybe_decide(
            backlog=len(staging) + max(0, store.last_id - store.cursor),
            backlog_age=now - staging[0].ts if staging else 0.0,
            inflight=len(self._inflight),
            connected=self._ready,
        )
        cap = max(1000, 4 * d.max_batch)
        if len(staging) < cap:
            n = min(cap - len(staging), self._allowance(store))
            rows = store.take(n) if n > 0 else []
            if rows and store.cursor <= self._drain_mark:
                self._tokens -= len(rows)
            staging.extend(rows)
        acked: list[int] = []
        urgent = self._urgent
        # force: the drain at close, after _ready went False (connected, or it would not run)
        while staging and (self._ready or force):
            if client.write_backlog >= self.max_write_backlog:
                break
            first_urgent = next((i for i, r in enumerate(staging) if r.id in urgent), -1)
            due = force or first_urgent >= 0 or len(staging) >= d.max_batch
            if not due and now - staging[0].ts < d.deadline:
                break
            if first_urgent == 0:
                row = staging.popleft()
                urgent.discard(row.id)
                self._send_rows(client, [row], row.qos, False, acked)
                continue
            if d.qos and len(self._mid_batches) >= d.window and not force:
                if first_urgent < 0:
                    break
            n = d.max_batch if first_urgent < 0 else min(d.max_batch, first_urgent)
            chunk = [staging.popleft() for _ in range(min(n, len(staging)))]
            self._send_rows(client, chunk, d.qos, d.compress, acked)
        if acked:
            store.ack(acked)  # deleted with the next append, or by run's commit
            self._wake.set()  # run's commit sees them: a QoS 0 row has no PUBACK to wake it

    def _send_rows(
        self, client: _Client, rows: list[Row], qos: int, compress: bool, acked: list[int]
    ) -> None:
        """One publish: a lone row as it is (retained, QoS 2 and alarm rows always), else a
        batch (gateway.optimizer.batch) on the batch topic."""
        opt = self._opt
        assert opt is not None
        while rows:
            lone = [r for r in rows[:1] if r.retain or r.qos == 2 or r.id in self._urgent]
            if lone or (len(rows) == 1 and not compress):
                row = rows.pop(0)
                self._urgent.discard(row.id)
                row_qos = row.qos if (row.retain or row.qos != 1 or lone) else qos
                sent = Row(
                    row.id, row.ts, row.topic, row.payload, row_qos, row.retain,
                    row.user_properties,
                )  # fmt: skip
                self._track(client, [row.id], sent, opt, acked)
                continue
            cut = next((i for i, r in enumerate(rows) if r.retain or r.qos == 2), len(rows))
            batch, rows[:] = rows[:cut], rows[cut:]
            payload = encode_batch([(r.topic, r.payload) for r in batch], compress=compress)
            wire, props = self._wire(self._batch_topic, self._batch_props)
            while len(batch) > 1 and self._over(wire, payload, qos, props):
                # over the broker's Maximum Packet Size: halved, the rest sent next, so that
                # only a row too large on its own is dropped
                half = len(batch) // 2
                rows[:0], batch = batch[half:], batch[:half]
                payload = encode_batch([(r.topic, r.payload) for r in batch], compress=compress)
            # a batch carries the endpoint's user properties only: its rows' own differ
            sent = Row(
                batch[-1].id, batch[-1].ts, self._batch_topic, payload, qos, False,
                self._own_props,
            )  # fmt: skip
            self._track(client, [r.id for r in batch], sent, opt, acked)

    def _track(
        self, client: _Client, ids: list[int], row: Row, opt: UplinkOptimizer, acked: list[int]
    ) -> None:
        mid = self._publish_row(client, row)
        size = len(row.topic) + len(row.payload)
        if mid is None:
            acked.extend(ids)
            opt.note_unacked(len(ids))
            opt.note_delivered(size)
        else:
            self._mid_batches[mid] = ids
            opt.note_sent(mid, size, len(ids))

    def _send_data(
        self,
        client: paho.Client,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Properties | None,
    ) -> tuple[paho.MQTTMessageInfo, int] | None:
        """One data publish, fitted to the broker's limits (`_fit`): paho's info and the QoS it
        went at; None if it is too large (counted and logged: the caller drops it). ValueError
        as paho's ``publish``. With topic_alias, where the broker takes aliases, the first
        publish of ``topic`` on this connection carries it and its alias, the next ones the
        alias and an empty topic. The size is checked on what goes (`_wire`), and an alias is
        taken only by a publish that goes: a mapping paho did not send is forgotten, or the
        next publish would name an alias the broker never saw (a protocol error: DISCONNECT
        0x94 or, from mosquitto, 0x82)."""
        if self._limits is not NO_LIMITS:
            wire, size = self._wire(topic, _props_size(props))
            fitted = self._fit(topic, payload, qos, retain, size, wire=wire)
            if fitted is None:
                return None
            qos, retain = fitted
        aliases = self._aliases
        alias, known = aliases.use(topic) if aliases.maximum else (0, False)
        if not alias:  # no aliases, or this topic not admitted (`TopicAliases`): as it is
            return client.publish(topic, payload, qos, retain, props), qos
        with_alias = aliases.properties(alias) if props is None else alias_properties(alias, props)
        try:
            info = client.publish("" if known else topic, payload, qos, retain, with_alias)
        except ValueError:
            aliases.forget(topic)
            raise
        rc = info.rc
        if rc == _SUCCESS or (rc == _NO_CONN and qos):  # sent, or kept by paho to send again
            if known and qos:
                self._alias_topics[info.mid] = topic  # for `_unalias_held`, `_refused`
        elif not known:
            aliases.forget(topic)
        return info, qos

    def _wire(self, topic: str, props: int) -> tuple[str, int]:
        """The topic a data publish of ``topic`` would carry now (empty once its alias is the
        broker's) and its properties' bytes (``props``, the alias added where there is one)."""
        aliased, known = self._aliases.lookup(topic)
        if not aliased:
            return topic, props
        return ("" if known else topic), props + ALIAS_SIZE

    def _publish_internal(
        self,
        payload: bytes,
        topic: str | None = None,
        qos: int = 1,
        retain: bool = True,
        properties: Properties | None = None,
    ) -> int | None:
        """A publish that is no bridged data: the status (birth, offline: the defaults), or a
        reply to an MQTT 5 request; its paho mid (QoS 1/2), None if paho refused it, or it
        went at QoS 0, or it was too large for the broker (`_fit`)."""
        client = self._client
        assert client is not None
        topic = topic or self.status_topic
        if properties is None:
            properties = self._status_props
        if self._limits is not NO_LIMITS:
            fitted = self._fit(topic, payload, qos, retain, _props_size(properties, exact=True))
            if fitted is None:
                return None
            qos, retain = fitted
        info = client.publish(topic, payload, qos, retain, properties)
        if info.rc != _SUCCESS or not qos:
            return None
        self._inflight.add(info.mid)
        self._internal_mids.add(info.mid)
        return int(info.mid)

    # --- MQTT 5: request/response, message expiry, refused publishes -------------------------

    def _reply(self, request: Mapping[str, Any], payload: bytes, qos: int) -> None:
        """An answer to an MQTT 5 request, on its Response Topic with its Correlation Data. Not
        through the outbox, whose rows keep no Correlation Data: the requester waits for it now, on
        this connection; paho re-sends it (QoS 1/2) after a reconnect. Not retained: it is one
        requester's. The requester picks the topic: the broker's ACL for the gateway's user is
        what bounds where answers may go."""
        topic = str(request[codec.RESPONSE_TOPIC])
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = request.get(codec.CORRELATION_DATA)
        if correlation is not None:
            props.CorrelationData = bytes(correlation)
        user = codec.merge_properties(self._own_props, request.get(codec.USER_PROPERTIES) or ())
        if user:
            props.UserProperty = list(user)
        if not self._connected or self._client is None:
            self.lost += 1
            log.warning("MQTT %s: reply to %r lost: not connected", self.name, topic)
            return
        try:
            self._publish_internal(payload, topic, qos, False, props)
        except ValueError as exc:  # a Response Topic with wildcards, too long
            self.encode_errors += 1
            log.warning("MQTT %s: cannot reply on %r: %s", self.name, topic, exc)

    def _lifetime(self, seconds: int) -> Properties:
        """PUBLISH properties with a Message Expiry Interval of ``seconds``."""
        if seconds == self._expiry and self._full_life is not None:
            return self._full_life  # the live path's: one object, never changed
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = seconds
        return props

    def _expiry_props(self, age: float, expiry: int | None) -> Properties | None | Literal[False]:
        """The properties of a data publish with ``expiry`` seconds of life (message_expiry,
        or what a refused one had left) that waited ``age`` seconds to go out: None without
        expiry, else its lifetime left (`codec.remaining_expiry`); False when nothing is left
        (counted in 'expired': the caller drops it)."""
        if expiry is None:
            return None
        left = codec.remaining_expiry(expiry, age)
        if left is None:
            self.expired += 1
            return False
        return self._lifetime(left)

    def _data_props(
        self, user: codec.UserProperties, age: float, expiry: int | None
    ) -> Properties | None | Literal[False]:
        """`_expiry_props`, with ``user`` properties added where there are some (a Properties
        object per set and lifetime, shared: paho only reads it)."""
        props = self._expiry_props(age, expiry)
        if not user or props is False:
            return props
        life: int | None = None if props is None else props.MessageExpiryInterval  # type: ignore[attr-defined]
        found = self._with_props.get((user, life))
        if found is None:
            found = PublishProperties()  # light: one per point and lifetime left
            if life is not None:
                found.MessageExpiryInterval = life
            found.UserProperty = list(user)
            if len(self._with_props) >= _PROPS_CACHE_MAX:  # lifetimes left vary: stay bounded
                self._with_props.clear()
            self._with_props[(user, life)] = found
        return found

    # --- writes (points with access rw) ----------------------------------------------------------

    async def write(self, point: str, value: Value) -> None:
        """Publish a write to the point's ``command_topic`` (QoS 1, in the point's format:
        `codec.command_payload`) and return once the broker acknowledged it (PUBACK).

        Plain MQTT has no device acknowledgement, so the PUBACK is as far as a write can be
        confirmed: good means "the broker has it", not "the device applied it". A broker that
        is not connected refuses the write at once (UNREACHABLE): writes are never queued."""
        spec = self._point_by_name.get(point)
        if spec is None or spec.command_topic is None:
            reason = f"{self.name}/{point} has no command_topic"
            raise WriteRefused(WriteStatus.NOT_WRITABLE, reason)
        try:
            payload = codec.command_payload(spec, codec.convert(value, spec.datatype))
        except ValueError as exc:  # SenML has no NaN, for one
            raise WriteRefused(WriteStatus.BAD_VALUE, str(exc)) from None
        client, loop, disconnected = self._client, self._loop, self._disconnected
        if not self._ready or client is None or loop is None or disconnected is None:
            raise WriteRefused(WriteStatus.UNREACHABLE, f"broker {self.address} is not connected")
        qos = 1
        if self._limits is not NO_LIMITS:
            qos = self._lower_qos(qos)
            size = self._over(spec.command_topic, payload, qos, _props_size(self._status_props))
            if size is not None:  # not counted in too_large: the writer is told
                raise WriteRefused(
                    WriteStatus.DEVICE_ERROR,
                    f"{size:,} bytes, over the Maximum Packet Size of {self.address} "
                    f"({self._limits.max_packet:,}): not sent",
                )
        info = client.publish(spec.command_topic, payload, qos, False, self._status_props)
        if info.rc != _SUCCESS:
            raise WriteRefused(WriteStatus.UNREACHABLE, paho.error_string(info.rc))
        if not qos:  # a broker of QoS 0 only sends no PUBACK: written is as far as it goes
            self.writes += 1
            return
        self._inflight.add(info.mid)
        self._internal_mids.add(info.mid)  # not counted as bridged data
        timeout = self.config.write_timeout
        acked = await self._answer(self._write_futs, info.mid, timeout, disconnected)
        if not acked.done():
            self._forget_write(info.mid)
            if disconnected.done():
                raise WriteRefused(WriteStatus.UNREACHABLE, "connection to the broker lost")
            raise WriteRefused(
                WriteStatus.TIMEOUT, f"no PUBACK within {self.config.write_timeout:g} s"
            )
        refusal = acked.result()
        if refusal is not None:  # MQTT 5: the broker would not take it (not authorized...)
            raise WriteRefused(WriteStatus.DEVICE_ERROR, f"the broker refused it: {refusal}")
        self.writes += 1

    def _forget_write(self, mid: int) -> None:
        """Drop a write paho has not had acknowledged: paho would re-send it after a
        reconnect, and a setpoint applied late, after the writer was told it failed, is worse
        than one refused."""
        client = self._client
        if client is not None:
            with client._out_message_mutex:
                client._out_messages.pop(mid, None)
        self._inflight.discard(mid)
        self._internal_mids.discard(mid)

    def _points_lost(self, reason: str) -> None:
        """Once per outage: every source point is bad (its last value is no longer current)."""
        if self._points_bad:
            return
        samples = self.lost_samples(reason)
        if samples:
            self._points_bad = True
            self.bus.publish_nowait(Message.telemetry(self.name, samples))

    def lost_samples(self, reason: str) -> tuple[Sample, ...]:
        """The declared points' Bad samples, and those of the points learned from ``points:
        keys`` subscriptions (the runtime's ``points_lost`` after a crash uses it too)."""
        now = time.time()
        learned = tuple(
            Sample(name, None, Quality.BAD, now, now, None, reason)
            for name in sorted(self._keys.names)
        )
        return super().lost_samples(reason) + learned

    # --- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Publish the retained offline state, drain (<= drain_timeout), DISCONNECT, close.

        Idempotent; called by ``__aexit__`` and when ``run()`` ends. The close runs as a task
        of its own that a cancelled caller does not cut short: the runtime cancels ``run()``
        again while its ``finally`` is still closing (every 0.2 s), and a drain cut there
        would leave no offline message, no DISCONNECT (the broker publishes the will) and
        the outbox file not closed. The next caller (``__aexit__``) waits for the same task.
        """
        task = self._close_task
        if task is None:
            self._closing = True
            self._ready = False
            self._wake.set()
            task = self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(task)

    async def _close(self) -> None:
        loop, client = self._loop, self._client
        try:
            self._write_unwritten()  # outbox.write_delay: what send() accepted is kept
            if loop is None or client is None:
                return
            await self._await_connect_job()
            if self._connected:
                await self._drain(loop)
            discarded = self._outbox.clear()
            if self._store is None:  # with the outbox, refused rows stay there for next time
                discarded += len(self._retry)
            self._retry.clear()
            store, self._store = self._store, None
            if store is not None:
                store.commit()
                if store.rows:
                    log.warning(
                        "MQTT %s: %s kept in %s for the next start",
                        self.name,
                        _publishes(store.rows),
                        store.path,
                    )
                store.close()
            if discarded:
                log.warning(
                    "MQTT %s: shutting down with %s not delivered",
                    self.name,
                    _publishes(discarded),
                )
            if self._connected:
                await self._disconnect("adapter closed")
            self._drop_socket()
            self._connection_lost("adapter closed")  # wakes a run() still waiting on it
            log.info("MQTT %s: disconnected from %s", self.name, self.address)
        finally:
            self._connected = False
            self._ready_event.clear()
            self._cancel_misc_timer()
            self._bad_log.close()  # the counts of the last windows, said now
            self._refusal_log.close()
            self._too_large_log.close()
            self._unwanted_log.close()
            if client is not None:  # no callbacks into a closed adapter (paho's __del__ too)
                self.uninstall(client)

    async def _leave_for_first(self) -> None:
        """Failback's planned move: nothing more handed to paho here (`send` keeps it in the
        outbox, in order, for the first broker), the retained offline as a clean stop says it
        (its PUBACK, up to drain_timeout, also acknowledges what was in flight before it:
        QoS 1 is acknowledged in order), then DISCONNECT, so no "online" stays retained here."""
        disconnected = self._disconnected
        assert disconnected is not None
        self._ready = False
        self._ready_event.clear()
        mid = self._publish_internal(_state_payload("offline"))
        if mid is not None:
            await self._answer(self._write_futs, mid, self.drain_timeout, disconnected)
        if not disconnected.done():
            await self._disconnect("moved back to the first broker")

    @staticmethod
    async def _answer(
        waiting: dict[int, asyncio.Future[T]],
        mid: int,
        within: float,
        disconnected: asyncio.Future[str],
    ) -> asyncio.Future[T]:
        """The broker's answer to message ``mid`` (its SUBACK or PUBACK callback sets the future
        kept in ``waiting``), awaited until it comes, the connection ends or ``within`` s pass;
        the future, done or not, no longer in ``waiting``."""
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        waiting[mid] = answer
        try:
            await asyncio.wait(
                (answer, disconnected), timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting.pop(mid, None)
        return answer

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = loop.time() + self.drain_timeout
        disconnected = self._disconnected
        wake = self._wake
        offline_sent = False
        while self._connected and (disconnected is None or not disconnected.done()):
            if self._retry:
                self._send_refused_again()
            outbox = self._outbox
            while outbox and self._has_room(1):
                item, age = outbox.popleft_aged()
                self._publish(*item, age)
            store = self._store
            if store is not None:
                if self._opt is not None:
                    self._flush_optimized(store, force=True)
                else:
                    self._flush_store(store)
            if not self._queued() and not self._staging and not offline_sent:
                self._publish_internal(_state_payload("offline"))
                offline_sent = True
            if offline_sent and not self._inflight:
                return  # the offline PUBACK also means everything before it was written
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await wake.wait()
            except TimeoutError:
                break
        if not offline_sent and self._connected:
            self._publish_internal(_state_payload("offline"))  # at least try
        if self._inflight:
            log.warning(
                "MQTT %s: %s not acknowledged within %.1f s at shutdown",
                self.name,
                _publishes(len(self._inflight)),
                self.drain_timeout,
            )

    def _read_pending(self, client: paho.Client) -> bool:
        return isinstance(client, _Client) and client.read_pending()  # our buffer, or TLS's

    def _wrote(self) -> None:
        if self._queued():  # the write backlog shrank: the flusher may go on
            self._wake.set()

    # --- paho protocol callbacks (loop thread) -------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self._v5 and not reason_code.is_failure:
            self._fit_window(properties)
            if self.config.topic_alias:
                self._fit_aliases(client, properties)
            self._fit_limits(client, properties)
        elif self._v5:
            self._fit_will(reason_code, properties)
        if not reason_code.is_failure:
            self._note_session(bool(getattr(flags, "session_present", False)))
        self._settle_connack(reason_code, MqttError, properties)

    def _fit_window(self, properties: Any) -> None:
        """MQTT 5: the broker's Receive Maximum (CONNACK) bounds the QoS 1/2 publishes in
        flight; more is a protocol error that brokers answer with DISCONNECT 0x93 (mosquitto
        lets it pass, HiveMQ and EMQX do not)."""
        if self._own_window is None:
            self._own_window = self.max_inflight
        limit = getattr(properties, "ReceiveMaximum", None)
        self.max_inflight = min(self._own_window, limit or self._own_window)

    # --- MQTT 5: topic aliases (topic_alias) --------------------------------------------------

    def _fit_aliases(self, client: paho.Client, properties: Any) -> None:
        """A new connection: no alias is the broker's yet, and it takes as many as its
        CONNACK's Topic Alias Maximum (absent: none). What paho kept from the last connection,
        which it sends again once this callback returns, goes with its full topic
        (`_unalias_held`) before its limits are fitted (`_fit_held`: the size counts it)."""
        self._unalias_held(client)
        self._aliases.reset(getattr(properties, "TopicAliasMaximum", 0))

    def _unalias_held(self, client: paho.Client) -> None:
        """The kept QoS 1/2 publishes that carry a Topic Alias get their full topic back and
        lose the alias: on this connection the alias is unknown (or another topic's), and an
        empty topic with it is a protocol error (0x94; mosquitto: 0x82) that would end this
        connection and, re-sent, every next one."""
        topics = self._alias_topics
        with client._out_message_mutex:
            for mid, msg in client._out_messages.items():
                props = msg.properties
                if props is None or not hasattr(props, "TopicAlias"):
                    continue
                topic = topics.get(mid)
                if topic is not None:
                    msg.topic = topic.encode()  # paho keeps bytes (its setter takes them)
                msg.properties = without_alias(props)
        topics.clear()

    # --- MQTT 5: the broker's limits (Maximum QoS, Retain Available, Maximum Packet Size) ------

    def _fit_limits(self, client: paho.Client, properties: Any) -> None:
        """The limits of this connection's CONNACK (`BrokerLimits`; each CONNACK's own: another
        broker may take more or less), every publish fitted to them from now on (`_fit`), and
        the next CONNECT's will to this broker (`_will_fit`). The publishes paho kept from the
        last connection, which it sends again as soon as this callback returns, are fitted
        here (`_fit_held`)."""
        limits = self._limits = BrokerLimits.of(properties)
        self._qos_said = self._retain_said = False
        will = (min(WILL_QOS, limits.max_qos), limits.retain)
        if will == (WILL_QOS, True):
            self._will_fit.pop(self._broker, None)
        else:
            self._will_fit[self._broker] = will
        if limits is not NO_LIMITS:
            self._fit_held(client)

    def _fit_will(self, reason_code: Any, properties: Any) -> None:
        """A CONNACK that refused the CONNECT for its will: Retain not supported (0x9A) or QoS
        not supported (0x9B, with the broker's Maximum QoS). The next CONNECT to this broker
        carries the will as the broker takes it; otherwise no connection would ever be made.
        The refusal itself is the failed attempt `_keep_connected` logs and retries."""
        code = getattr(reason_code, "value", 0)
        before = self._will_fit.get(self._broker, (WILL_QOS, True))
        qos, retain = before
        if code == 0x9A:
            retain = False
        elif code == 0x9B:
            qos = min(qos, getattr(properties, "MaximumQoS", 0))
        if (qos, retain) == before:
            return
        self._will_fit[self._broker] = (qos, retain)
        log.warning(
            "MQTT %s: %s refused the will on %r (%s): the next CONNECT there carries it at "
            "QoS %d%s",
            self.name,
            self.address,
            self.status_topic,
            reason_text(reason_code, properties),
            qos,
            "" if retain else ", not retained",
        )

    def _fit(
        self,
        topic: str,
        payload: bytes | bytearray,
        qos: int,
        retain: bool,
        props: int,
        *,
        wire: str | None = None,
    ) -> tuple[int, bool] | None:
        """A publish's QoS and retain flag under this connection's limits: QoS at most the
        broker's Maximum QoS (the downgrade MQTT 5 3.2.2.3.4 asks of a client), no retain
        where it keeps no retained messages; None if the packet (``props``: its encoded
        properties' bytes) is over its Maximum Packet Size, counted in 'too_large' and
        logged: the caller drops it. Sent, it would end the connection, and come back to
        end the next one (paho's re-send, the outbox), holding up everything behind it.
        ``wire``: the topic that goes, where it is not ``topic`` (an alias's empty one)."""
        qos = self._lower_qos(qos)
        if retain and not self._limits.retain:
            retain = False
            if not self._retain_said:
                self._retain_said = True
                log.warning(
                    "MQTT %s: %s keeps no retained messages (Retain Available 0 in its "
                    "CONNACK): publishing without retain (status 'retain_available'; said "
                    "once per connection)",
                    self.name,
                    self.address,
                )
        size = self._over(topic if wire is None else wire, payload, qos, props)
        if size is not None:
            self.too_large += 1
            self.last_error = (
                f"a publish to {topic!r} is {size:,} bytes, over the Maximum Packet Size of "
                f"{self.address} ({self._limits.max_packet:,})"
            )
            if self._too_large_log.allow():
                log.warning(
                    "MQTT %s: %s; dropped (counted in status 'too_large')",
                    self.name,
                    self.last_error,
                )
            return None
        return qos, retain

    def _lower_qos(self, qos: int) -> int:
        """``qos``, at most the broker's Maximum QoS; the first lowered one is said."""
        most = self._limits.max_qos
        if qos <= most:
            return qos
        if not self._qos_said:
            self._qos_said = True
            log.warning(
                "MQTT %s: %s takes QoS %d at most (Maximum QoS in its CONNACK): publishes of "
                "a higher QoS go at QoS %d (status 'max_qos'; said once per connection)%s",
                self.name,
                self.address,
                most,
                most,
                "; at QoS 0 a publish is done once written, with no PUBACK" if most == 0 else "",
            )
        return most

    def _over(self, topic: str, payload: bytes | bytearray, qos: int, props: int) -> int | None:
        """The size of a PUBLISH packet (`codec.publish_size`; ``props``: its encoded
        properties' bytes) if it is over the broker's Maximum Packet Size, else None."""
        most = self._limits.max_packet
        # the cheap bound first, never below the real size: UTF-8 takes 4 bytes a character at
        # most, the fixed header 5 and the topic's length and packet identifier 4
        if most is None or len(payload) + 4 * len(topic) + props + 9 <= most:
            return None
        size = codec.publish_size(len(topic.encode()), len(payload), qos, props)
        return size if size > most else None

    def _fit_held(self, client: paho.Client) -> None:
        """The QoS 1/2 publishes paho kept from the last connection, which it sends again after
        this CONNACK, fitted to this broker's limits (`_fit`): one too large leaves paho and
        the outbox ('too_large'); QoS and retain are lowered in place. Where the broker takes
        QoS 0 only they leave paho's keeping (paho would send a kept QoS 0 publish again after
        every reconnect, never done with it) and go now, in order, at QoS 0: done once
        written, as a QoS 0 row is."""
        store = self._store
        now_zero: list[tuple[paho.MQTTMessage, bool, list[int]]] = []
        with client._out_message_mutex:
            for mid, msg in list(client._out_messages.items()):
                props = _props_size(msg.properties, exact=True)
                fitted = self._fit(msg.topic, msg.payload, msg.qos, msg.retain, props)
                if fitted is not None and fitted[0]:
                    msg.qos, msg.retain = fitted
                    continue
                del client._out_messages[mid]
                rows = self._let_go(mid)
                if fitted is not None:
                    now_zero.append((msg, fitted[1], rows))
                elif rows and store is not None:
                    store.ack(rows)
        for msg, retain, rows in now_zero:
            client.publish(msg.topic, msg.payload, 0, retain, msg.properties)
            if rows and store is not None:
                store.ack(rows)

    def _let_go(self, mid: int) -> list[int]:
        """Forget publish ``mid`` (in flight, not to be acknowledged any more); its outbox
        rows, for the caller to delete."""
        self._inflight.discard(mid)
        self._internal_mids.discard(mid)
        self._alias_topics.pop(mid, None)
        rows = [self._mid_rows.pop(mid)] if mid in self._mid_rows else []
        batch = self._mid_batches.pop(mid, None)
        if batch is not None:
            rows += batch
            if self._opt is not None:
                self._opt.note_ack(mid)  # its slot in the optimizer's window is free
        return rows

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        reason = str(reason_code)
        error = self._client.socket_error if self._client is not None else None
        if getattr(flags, "is_disconnect_packet_from_server", False):
            # MQTT 5: the broker said why it ends the session (session taken over, ...)
            reason = f"{self.address} sent DISCONNECT: {reason_text(reason_code, properties)}"
        elif error is not None:
            reason = _describe_socket_error(error)
        self._connection_lost(reason)

    def _connection_lost(self, reason: str) -> None:
        self._ready = False
        self._ready_event.clear()
        self._settle_lost(
            reason, MqttError(f"{self.address} closed the connection before CONNACK ({reason})")
        )
        self._wake.set()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        inflight = self._inflight
        if mid not in inflight:
            return
        inflight.discard(mid)
        if reason_code is not _PUBACK_SUCCESS and reason_code.is_failure:
            self._refused(client, mid, reason_code, properties)
            self._wake.set()
            return
        if self._alias_topics:
            self._alias_topics.pop(mid, None)
        row = self._mid_rows.pop(mid, None) if self._mid_rows else None
        if row is not None and self._store is not None:
            self._store.ack((row,))
        if self._mid_batches:
            rows = self._mid_batches.pop(mid, None)
            if rows is not None and self._store is not None:
                self._store.ack(rows)
                if self._opt is not None:
                    self._opt.note_ack(mid)
        if self._internal_mids and mid in self._internal_mids:
            self._internal_mids.discard(mid)
            fut = self._write_futs.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        else:
            self.acknowledged += 1
            if self._pause.attempts:  # a publish went through: the next pause starts short
                self._pause.reset()
        self._wake.set()

    def _refused(self, client: paho.Client, mid: int, reason_code: Any, properties: Any) -> None:
        """The broker answered publish ``mid`` with a reason code >= 0x80 (MQTT 5): never
        counted as delivered. A write learns why; a data publish is sent again later
        (`TRANSIENT_REFUSALS`) or counted in 'refused' and dropped, its outbox rows deleted."""
        why = reason_text(reason_code, properties)
        rows = [self._mid_rows.pop(mid)] if mid in self._mid_rows else []
        batch = self._mid_batches.pop(mid, None)
        rows += batch or []
        msg = client._out_messages.get(mid)  # paho forgets it once this callback returns
        topic = self._alias_topics.pop(mid, None) or (msg.topic if msg is not None else "?")
        if mid in self._internal_mids:
            self._internal_mids.discard(mid)
            fut = self._write_futs.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(why)
                return
        elif msg is not None and reason_code.value in TRANSIENT_REFUSALS:
            self._retry.append(
                _Refused(
                    topic, bytes(msg.payload), msg.qos, msg.retain, rows,
                    getattr(msg.properties, "MessageExpiryInterval", None), time.monotonic(),
                    tuple(getattr(msg.properties, "UserProperty", ())),
                )
            )  # fmt: skip
            self._hold(f"{self.address} refused a publish to {topic!r} for now: {why}")
            return
        else:
            if rows and self._store is not None:
                self._store.ack(rows)  # an answer, if not the one hoped for: deleted
            if batch is not None and self._opt is not None:
                self._opt.note_ack(mid)  # the broker answered: its slot in the window is free
        self.refused += 1
        self.last_error = f"{self.address} refused a publish to {topic!r}: {why}"
        if self._refusal_log.allow():
            log.warning(
                "MQTT %s: %s; dropped (counted in status 'refused')", self.name, self.last_error
            )

    def _hold(self, why: str) -> None:
        """Pause new publishes (the broker's quota is exhausted) for a backoff delay; the
        refused ones go first once it is over."""
        if self._held or self._loop is None:
            return
        self._held = True
        delay = self._pause.next_delay()
        self._loop.call_later(delay, self._release)
        self.last_error = why
        log.warning("MQTT %s: %s; publishing again in %.2f s", self.name, why, delay)

    def _release(self) -> None:
        self._held = False
        self._wake.set()

    def _send_refused_again(self) -> None:
        """Publish again, first, what the broker refused for now, with its lifetime left."""
        client, retry = self._client, self._retry
        assert client is not None
        while retry and self._has_room(1):
            again = retry.popleft()
            props = self._data_props(again.user, time.monotonic() - again.sent, again.expiry)
            if props is False:
                if again.rows and self._store is not None:
                    self._store.ack(again.rows)
                continue
            # another broker's limits, maybe, since it was refused
            sent = self._send_data(
                client, again.topic, again.payload, again.qos, again.retain, props
            )
            if sent is None:
                if again.rows and self._store is not None:
                    self._store.ack(again.rows)
                continue
            info, qos = sent
            if info.rc not in (_SUCCESS, _NO_CONN):
                retry.appendleft(again)  # paho's queue is full: next time
                return
            if not qos:  # done once written
                if again.rows and self._store is not None:
                    self._store.ack(again.rows)
                continue
            self._inflight.add(info.mid)
            if again.rows:
                self._mid_batches[info.mid] = again.rows

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        fut = self._sub_futs.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(list(reason_codes))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.received += 1
        try:
            self._read_message(msg)
        except Exception as exc:
            # Last line of defence: paho takes an exception out of a callback for a read error
            # and drops the connection, and a retained message would then drop every reconnect.
            self._bad_payload(exc, unexpected=True)

    def _read_message(self, msg: paho.MQTTMessage) -> None:
        """Declared points and ``points: keys`` subscriptions become the endpoint's telemetry
        (both, when a topic has both); other subscriptions one sample on mqtt/<name>/<topic>."""
        topic = msg.topic
        size, most = len(msg.payload), self.config.max_payload
        if size > most:
            self._bad_payload(
                codec.PayloadError(topic, f"{size:,} bytes, over max_payload {most:,}: dropped")
            )
            return
        decoders = self.point_decoders(topic)
        for decoder in decoders:
            samples, errors = decoder.decode(topic, bytes(msg.payload))
            if errors:
                self._bad_payload(errors[0])
            if samples:
                message = Message.telemetry(self.name, tuple(samples))
                user = getattr(msg.properties, "UserProperty", None) if self._v5 else None
                if user:  # no meta built for the many messages without
                    message = replace(message, meta={codec.USER_PROPERTIES: list(user)})
                self.bus.publish_nowait(message)
        mode = self._payload_mode(topic)
        if mode is None:  # no subscription without points takes it
            if not decoders:  # nor a point: a filter the session kept (module docstring)
                self._unwanted(topic)
            return
        try:
            sample = codec.decode_sample(topic, msg.payload, mode, time.time())  # type: ignore[arg-type]
        except (codec.PayloadError, UnicodeDecodeError) as exc:
            self._bad_payload(exc)
            return
        self.bus.publish_nowait(
            Message(
                topic=f"mqtt/{self.name}/{topic}",
                kind=MessageKind.TELEMETRY,
                samples=(sample,),
                origin=self.name,
                seq=next_sequence(self.name),
                device=self.name,
                meta=_received_meta(msg) if self._v5 else {},
            )
        )

    def point_decoders(self, topic: str) -> list[codec.PointDecoder | codec.KeyDecoder]:
        """The decoders that make points of a message on ``topic`` (declared points, then
        ``points: keys`` subscriptions): what names the endpoint's points, here and in
        ``gateway suggest``."""
        return [d for d in (self._points, self._keys) if self._takes(d, topic)]

    @staticmethod
    def _takes(decoder: codec.PointDecoder | codec.KeyDecoder, topic: str) -> bool:
        if isinstance(decoder, codec.KeyDecoder):
            return bool(decoder.filters) and decoder.matches(topic)
        return bool(decoder.points) and bool(decoder.points_for(topic))

    def _payload_mode(self, topic: str) -> str | None:
        """The payload of the first subscription without points that takes ``topic``; None
        when none does."""
        modes = self._payload_modes
        if topic in modes:
            return modes[topic]
        mode = next(
            (
                sub.payload
                for sub in self.config.subscriptions
                if sub.points is None and topic_matches(sub.topic, topic)
            ),
            None,
        )
        if len(modes) >= 10_000:  # topics come from the broker: stay bounded
            modes.clear()
        modes[topic] = mode
        return mode

    def _unwanted(self, topic: str) -> None:
        """A message no filter of the config takes: dropped, counted, the first logged."""
        self.unwanted += 1
        if self._unwanted_log.allow():
            log.warning(
                "MQTT %s: a message on %r, which no subscription of the config takes (a filter"
                " the broker's session kept), dropped",
                self.name,
                topic,
            )

    def _bad_payload(self, exc: Exception, *, unexpected: bool = False) -> None:
        """Count a payload that could not be read; log one per log interval, then a count.

        ``unexpected``: not a `PayloadError` but a bug in reading it, logged with its traceback."""
        self.bad_payloads += 1
        if self._bad_log.allow():
            log.warning(
                "MQTT %s: %s%s",
                self.name,
                f"unexpected {type(exc).__name__} reading a message: " if unexpected else "",
                exc,
                exc_info=exc if unexpected else None,
            )

    # --- status -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "broker": self.address,
            "client_id": self.client_id,
            "published": self.published,
            "acknowledged": self.acknowledged,
            "inflight": len(self._inflight),
            "queued": (
                len(self._outbox)
                if self._store is None
                else self._store.rows + len(self._unwritten)
            ),
            "dropped": self._outbox.dropped if self._store is None else self._store.total_dropped,
            "lost": self.lost,
            "encode_errors": self.encode_errors,
            "reconnects": self.reconnects,
            "session_present": self.session_present,
            "sessions_lost": self.sessions_lost,
            "read_pauses": self.read_pauses,
            "failovers": self.failovers,
            "failbacks": self.failbacks,
            "received": self.received,
            "bad_payloads": self.bad_payloads,
            "unwanted": self.unwanted,
            "unsubscribed": self.unsubscribed,
            "writes": self.writes,
            "refused": self.refused,
            "expired": self.expired,
            "too_large": self.too_large,
            "user_property_errors": self.user_property_errors,
            "retrying": len(self._retry),
            "mqtt_version": self.config.version,
            "max_qos": self._limits.max_qos,
            "retain_available": self._limits.retain,
            "max_packet_size": self._limits.max_packet,
            "topic_aliases": len(self._aliases),
            "topic_alias_max": self._aliases.maximum,
            "last_error": self.last_error,
            "outbox": None if self._store is None else self._store.status(),
            "optimizer": None if self._opt is None else self._opt.status(),
        }
