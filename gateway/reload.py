"""Signals for ``gateway run``: SIGINT and SIGTERM stop it, SIGHUP reloads its config.

A reload reads the config file again first. A file that does not load is logged and the
gateway goes on with the config it runs: a typo made while editing on the box must not take
the plant's data path down. A file that loads ends the running gateway's run the clean way
(bridges drained, unsent messages kept in the outboxes) for every part whose settings changed,
and ``gateway run`` starts a new one from it; the parts that did not change keep running, with
their connections and sessions (`gateway.handover`).
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
    run, `next_run` says whether to start again and from which config."""

    def __init__(self, load: Callable[[], GatewayConfig], notifier: Notifier) -> None:
        self._load = load
        self._notifier = notifier
        self.stop = asyncio.Event()
        self._quit = False
        self._pending: GatewayConfig | None = None
        self._taken: GatewayConfig | None = None  # what the stopping run handed over to

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
        log.info("reloading: the config loads; restarting what changed")
        self._notifier.reloading("reloading the config")
        self._pending = config
        self.stop.set()

    @property
    def quitting(self) -> bool:
        """SIGINT or SIGTERM came: no run is to follow."""
        return self._quit

    def take(self) -> GatewayConfig | None:
        """The reloaded config the run that is stopping hands over to (its kept parts are
        planned for it), or None when no run is to follow."""
        config, self._pending = self._pending, None
        self._taken = None if self._quit else config
        return self._taken

    def next_run(self) -> GatewayConfig | None:
        """After a run ended: the config it took (`take`) to run next, or None to exit. A
        reload that came while the run was stopping is not lost: the next run stops at once
        for it."""
        config, self._taken = self._taken, None
        if config is None:  # a reload during the start: the run stopped before it took it
            config, self._pending = self._pending, None
        if self._quit or config is None:
            return None
        self.stop = asyncio.Event()
        if self._pending is not None:
            self.stop.set()
        return config
