"""The MQTT connection of a Sparkplug edge node or host: one paho client on the asyncio loop.

What the two roles share: preparing the client (identity, credentials, TLS, callbacks), the
CONNACK and the connection's end, and the goodbye of a clean stop, QoS 1 messages the broker
must have before DISCONNECT (the node's NDEATH, the host's STATE offline, in each version it
publishes), since DISCONNECT drops the will that would otherwise say the same."""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.streak import LogQuota
from protocols.mqtt.config import brokers
from protocols.mqtt.link import PahoOnLoop
from protocols.sparkplug.config import SparkplugBroker

__all__ = ["SparkplugError", "SparkplugSession"]

#: the window of a warning a peer can repeat at every message: one line, then a count
WARNING_WINDOW_S = 10.0


class SparkplugError(Exception):
    """A connection problem, said so that the integrator knows what to fix."""


class SparkplugSession(PahoOnLoop):
    """Mixin for a Sparkplug adapter: `_prepare` the client in ``__aenter__``, `_goodbye`
    before closing."""

    LABEL = "Sparkplug"
    name: str
    address: str

    #: TCP connect + TLS handshake, and then CONNACK, each within this many seconds
    connect_timeout: float = 10.0
    #: on shutdown, how long to wait for the broker to acknowledge the goodbye message
    drain_timeout: float = 2.0

    def _init_session(self, cfg: SparkplugBroker) -> None:
        self._client = None
        self._loop = None
        self._loop_thread = 0
        self._init_socket()
        self._aim(brokers(cfg), cfg.keepalive)
        self._goodbye_mid: int | None = None
        self._goodbye_acked: asyncio.Event | None = None
        self._connected = False  # CONNACK received, connection not lost
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None

    def _prepare(self, cfg: SparkplugBroker, client_id: str, what: str) -> paho.Client:
        """The paho client: identity, credentials, TLS, callbacks; no network I/O (the
        class sets its will, if any, before each attempt)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,  # reconnecting is run()'s job, with our backoff
        )
        client.connect_timeout = self.connect_timeout
        client.max_queued_messages_set(0)
        clear = cfg.password_warning()
        if clear is not None:
            self.LOG.warning("%s %s", what, clear)
        self._login(cfg, what, SparkplugError)
        self._sign_in(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.install(client)
        self._client = client
        self._use_broker(self._broker)
        self._goodbye_acked = asyncio.Event()
        return client

    def _quota(self, what: str, counted_in: str) -> LogQuota:
        """For a warning a peer can repeat at every message: the first of a
        `WARNING_WINDOW_S` window is logged, the others counted in one line (``what``: they,
        in the plural) when it ends or at `LogQuota.close`."""
        return LogQuota(
            lambda n: self.LOG.warning(
                "%s %s: %d more %s in %g s (counted in %s)",
                self.LABEL,
                self.name,
                n,
                what,
                WARNING_WINDOW_S,
                counted_in,
            ),
            quota=1,
            interval=WARNING_WINDOW_S,
        )

    async def _goodbye(self, words: Sequence[tuple[str, bytes, bool]]) -> None:
        """The last ``words`` (topic, payload, retain), if any: QoS 1, the last one's PUBACK
        awaited up to ``drain_timeout`` (a broker acknowledges QoS 1 in the order it got them,
        MQTT 4.6); then DISCONNECT and the connection's end (1 s at most)."""
        client, acked = self._client, self._goodbye_acked
        assert client is not None
        if words and acked is not None:
            acked.clear()
            for topic, payload, retain in words:
                self._goodbye_mid = client.publish(topic, payload, qos=1, retain=retain).mid
            try:
                async with asyncio.timeout(self.drain_timeout):
                    await acked.wait()
            except TimeoutError:
                topics = ", ".join(topic for topic, _, _ in words)
                self.LOG.warning("%s %s: %s not acknowledged", self.LABEL, self.name, topics)
        disconnected = self._disconnected
        client.disconnect()
        if disconnected is not None:
            await asyncio.wait((disconnected,), timeout=1.0)

    async def close(self) -> None:
        """`_close` once; idempotent, not cut short by a second cancel."""
        task = self._close_task
        if task is None:
            self._closing = True
            task = self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(task)

    async def _close(self) -> None:
        """`_stopping`; the `_last_words` and DISCONNECT (`_goodbye`) while connected; the
        connection dropped and the client released."""
        loop, client = self._loop, self._client
        try:
            self._stopping()
            if loop is None or client is None:
                return
            await self._await_connect_job()
            if self._connected:
                await self._goodbye(self._last_words())
            self._drop_socket()
            self._connection_lost("adapter closed")
        finally:
            self._connected = False
            self._cancel_misc_timer()
            if client is not None:
                self.uninstall(client)

    def _stopping(self) -> None:  # noqa: B027 - optional, nothing by default
        """The close has begun: what the class stops first (before any I/O)."""

    @abc.abstractmethod
    def _last_words(self) -> Sequence[tuple[str, bytes, bool]]:
        """What a clean stop publishes before DISCONNECT (topic, payload, retain), since
        DISCONNECT drops the will that would say it; empty: nothing."""

    # --- paho protocol callbacks (loop thread) ------------------------------------------------

    @abc.abstractmethod
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """A message on a subscribed topic: the node's commands and STATE, the host's group."""

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._settle_connack(reason_code, SparkplugError)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connection_lost(str(reason_code))

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        if mid == self._goodbye_mid and self._goodbye_acked is not None:
            self._goodbye_acked.set()
