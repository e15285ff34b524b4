"""A second MQTT connection that carries one more STATE will: Sparkplug 2.2's, for a primary
host with ``state_version: both``.

MQTT 3.1.1 gives a connection one will, and the host's own connection's is 3.0's offline. So
that a host that dies says ``OFFLINE`` on 2.2's ``STATE/{host_id}`` too, this connection (client
id ``{client_id}-will22``, the entry's credentials and TLS) registers that will and publishes
nothing else: the host's own connection says ``ONLINE`` there, as before. It lives for one
session of the host, on the same broker:

- the host opens it before saying online (a host whose keeper cannot connect says online
  anyway, without 2.2's will, as before, and logs why);
- if only it is lost, the broker publishes its will, the host sees its own STATE say offline
  and says online again (`SparkplugHostAdapter._own_state`), and it reconnects with the entry's
  backoff, registering the will again;
- when the host's session is lost, it says ``OFFLINE`` itself (retained) and disconnects; at the
  host's clean stop, whose own goodbye said ``OFFLINE`` already, it only disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import paho.mqtt.client as paho

from gateway.config.common import Backoff
from protocols.sparkplug.codec import StateTopic
from protocols.sparkplug.config import SparkplugBroker
from protocols.sparkplug.session import SparkplugError, SparkplugSession

__all__ = ["StateWill"]

log = logging.getLogger(__name__)


class StateWill(SparkplugSession):
    """One connection whose will is ``state`` offline (retained, QoS 1), aimed at one broker."""

    LOG = log

    def __init__(
        self, owner: str, config: SparkplugBroker, client_id: str, state: StateTopic
    ) -> None:
        self.name = f"{owner} (2.2 STATE will)"
        self.client_id = f"{client_id}-will22"
        self.config = config
        self.state = state
        self.last_error: str | None = None
        self.reconnects = 0
        self.quiet = False  # the host said offline itself: disconnect without saying it again
        self._init_session(config)
        self._task: asyncio.Future[None] | None = None
        self._up = asyncio.Event()  # set at the first CONNACK

    async def start(self, broker: tuple[str, int], reconnect: Backoff, wait: float) -> bool:
        """Connect to ``broker`` and keep connected (reconnecting with ``reconnect``); whether
        it was connected within ``wait`` seconds."""
        self._aim([broker], self.config.keepalive)
        self._prepare(self.config, self.client_id, f"Sparkplug {self.name}")
        self._task = asyncio.ensure_future(self._keep_connected(SparkplugError, reconnect))
        up = asyncio.ensure_future(self._up.wait())
        try:
            await asyncio.wait((up, self._task), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
        return self._connected

    async def stop(self, *, say_offline: bool) -> None:
        """Say offline (unless ``say_offline`` is false) and disconnect; then end the loop."""
        self.quiet = not say_offline
        await self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def connected(self) -> bool:
        return self._connected

    async def _connect_once(self) -> None:
        assert self._client is not None
        self._client.will_set(self.state.topic, self.state.encode(False, 0), qos=1, retain=True)
        await self._connect_paho(SparkplugError)

    async def _serve_session(self) -> str:
        assert self._disconnected is not None
        log.debug("Sparkplug %s: connected to %s", self.name, self.address)
        self._up.set()
        return await self._disconnected

    def _connection_lost(self, reason: str) -> None:
        self._settle_lost(reason, SparkplugError(f"connection to {self.address} lost: {reason}"))

    def _last_words(self) -> list[tuple[str, bytes, bool]]:
        if self.quiet:
            return []
        return [(self.state.topic, self.state.encode(False, 0), True)]

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """It subscribes to nothing."""
