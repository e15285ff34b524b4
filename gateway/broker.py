"""An embedded MQTT broker for ``gateway demo`` (and tests): amqtt, in this process's event loop.

This is not a production broker; it exists so that the demo runs with nothing else installed.
Use mosquitto, EMQX or HiveMQ for anything real.

amqtt logs every connection, packet and plugin event at INFO (and some at WARNING when a client
simply disconnects), which would drown the gateway's own logs; its loggers are therefore raised to
ERROR while a broker runs (``quiet=True``; CRITICAL while it starts, since a failed start is
reported once by `BrokerError`) and put back afterwards. The broker is configured without amqtt's
$SYS and packet-logger plugins.

Usage::

    async with EmbeddedBroker(host="127.0.0.1", port=0) as broker:
        print(broker.port)  # the port actually bound (port=0 picks a free one)
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

_NOISY_LOGGERS = ("amqtt", "transitions", "passlib")
_ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"


class BrokerError(Exception):
    """The embedded broker could not start."""


class EmbeddedBroker:
    """An amqtt broker listening on ``host:port`` for as long as the ``async with`` lasts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.quiet = quiet
        self._broker: Any = None
        self._saved_levels: dict[str, int] = {}

    @property
    def port(self) -> int:
        """The bound port (known once started)."""
        if self._port is None:
            raise RuntimeError("the embedded broker is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    def _silence(self, level: int = logging.ERROR) -> None:
        for name in _NOISY_LOGGERS:
            logger = logging.getLogger(name)
            self._saved_levels.setdefault(name, logger.level)
            if logger.getEffectiveLevel() < level:
                logger.setLevel(level)

    def _restore(self) -> None:
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self._saved_levels.clear()

    async def start(self) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise BrokerError(
                "the embedded broker needs amqtt: pip install 'protocol-brain[demo]'"
            ) from None
        if self.quiet:
            # CRITICAL while starting: a failed start is logged with a traceback by amqtt and
            # then reported again, in one line, by the BrokerError below.
            self._silence(logging.CRITICAL)
        # amqtt splits at the last colon, so an IPv6 literal goes without brackets.
        bind = f"{self.host}:{self._requested_port}"
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": bind}},
            "plugins": {_ANONYMOUS: {"allow_anonymous": True}},
        }
        try:
            broker = Broker(config)
            await broker.start()
        except Exception as exc:
            self._restore()
            raise BrokerError(
                f"embedded MQTT broker failed to start on {self.host}:{self._requested_port}: {exc}"
            ) from None
        if self.quiet:
            for name in _NOISY_LOGGERS:
                logger = logging.getLogger(name)
                logger.setLevel(max(self._saved_levels.get(name, 0), logging.ERROR))
        self._broker = broker
        self._port = _bound_port(broker)
        log.info("embedded MQTT broker listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        try:
            if broker is not None:
                await broker.shutdown()
        finally:
            self._port = None
            self._restore()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _bound_port(broker: Any) -> int:
    """The port of the first TCP socket the broker's listeners are bound to."""
    for server in broker._servers.values():
        for sock in getattr(server.instance, "sockets", ()) or ():
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                port: int = sock.getsockname()[1]
                return port
    raise BrokerError("the embedded broker has no TCP listener")
