"""Signals for ``gateway run``: SIGINT and SIGTERM stop it, SIGHUP reloads its config.

A reload reads the config file again first. A file that does not load is logged and the
gateway goes on with the config it runs: a typo made while editing on the box must not take
the plant's data path down. A file that loads ends the running gateway's run the clean way
(bridges drained, unsent messages kept in the outboxes) and ``gateway run`` starts a new one
from it, so every part (ports, devices, bridges) takes the new settings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from gateway.config import ConfigError, GatewayConfig
from gateway.sdnotify import Notifier

log = logging.getLogger("gateway")


class RunSignals:
    """What the signals asked for. ``stop`` ends the current run (either signal); after the
    run, `next_config` says whether to start again and from which config."""

    def __init__(self, load: Callable[[], GatewayConfig], notifier: Notifier) -> None:
        self._load = load
        self._notifier = notifier
        self.stop = asyncio.Event()
        self._quit = False
        self._pending: GatewayConfig | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.quit)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def quit(self) -> None:
        self._quit = True
        self._notifier.cancel_reload()
        self.stop.set()

    def reload(self) -> None:
        if self._quit:
            return  # already stopping for good
        try:
            config = self._load()
        except (ConfigError, OSError) as exc:  # OSError: the file unreadable mid-edit
            log.error("reload refused, the gateway goes on with the config it runs: %s", exc)
            return
        for line in config.warnings:
            log.warning("%s", line)
        log.info("reloading: the config loads; restarting the gateway from it")
        self._notifier.reloading("reloading the config")
        self._pending = config
        self.stop.set()

    @property
    def quitting(self) -> bool:
        """SIGINT or SIGTERM came: no run is to follow."""
        return self._quit

    def next_config(self) -> GatewayConfig | None:
        """The config to run next after a run ended: a reloaded one, or None to exit."""
        config, self._pending = self._pending, None
        if self._quit or config is None:
            return None
        self.stop = asyncio.Event()
        return config
