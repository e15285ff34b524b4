"""The contract every protocol adapter fulfils, whatever its protocol and role.

An adapter is an async context manager: ``__aenter__`` prepares (it must not fail because a
device is down: a dead device is the normal case on a plant floor, handled by ``run`` with
backoff), ``run()`` does the I/O until cancelled, ``__aexit__`` closes connections. Adapters that
can be a bridge target also implement ``send``.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel

from gateway.bus import Bus
from gateway.types import Message, PointSpec, Quality, Sample

if TYPE_CHECKING:
    from gateway.bridge import Bridge
    from gateway.commands import CommandRouter


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    On Python 3.11, ``asyncio.wait_for`` drops a ``cancel()`` that arrives just as its inner
    future completes (pymodbus waits for every response with it). The task then runs on, and
    inside a TaskGroup it is never cancelled again. The request is still counted by
    ``Task.cancelling()``, so a loop that calls this after each library call stops as asked.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class AdapterContext:
    """What the gateway hands every adapter."""

    def __init__(self, bus: Bus, gateway_name: str, router: CommandRouter | None = None) -> None:
        from gateway.commands import CommandRouter

        self.bus = bus
        self.gateway_name = gateway_name
        self.router = router if router is not None else CommandRouter(bus)


class Adapter(abc.ABC):
    """I/O for one protocol in one role, for one configured device or endpoint."""

    # Prometheus' type of a `status` key: "counter" only grows, "gauge" goes both ways (a
    # nested key takes the kind of its outermost part that has one). The gateway's own keys
    # are typed in gateway.metrics.KINDS; a plugin's are untyped unless named here.
    metric_kinds: ClassVar[Mapping[str, Literal["counter", "gauge"]]] = {}

    def __init__(self, name: str, config: Any, context: AdapterContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    @property
    def bus(self) -> Bus:
        return self.context.bus

    def points(self) -> list[PointSpec]:
        """Points this adapter produces (sources); empty for pure sinks."""
        return []

    def attach(self, bridge: Bridge) -> None:
        """Called before start for every bridge that targets this adapter.

        A target that serves points (an OPC UA or Modbus server) reads ``bridge.points()`` to
        build its address space and calls ``bridge.write(...)`` when a client writes."""
        return None

    async def __aenter__(self) -> Adapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def reloaded(self) -> None:
        """Called on an adapter a reload kept running, once the new config runs: apply what
        changed in the files its `Strict.live_paths` name (the OPC UA server closes the
        connections of clients its trust list no longer holds)."""
        return None

    @abc.abstractmethod
    async def run(self) -> None:
        """Do the I/O until cancelled. Must survive peer failures by itself."""

    async def send(self, message: Message, route: BaseModel) -> None:
        """Deliver a bus message to this adapter's peer (bridge target role)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be a bridge target")

    async def points_lost(self, reason: str) -> None:
        """Every readable point is Bad with ``reason``: the runtime calls it when ``run()``
        failed, so targets do not keep showing the last Good value while it restarts. An
        adapter that suppresses repeated values overrides it to mark them through that filter,
        so that the first reading after the restart is published even if it did not change."""
        samples = self.lost_samples(reason)
        if samples:
            await self.bus.publish(Message.telemetry(self.name, samples))

    def lost_samples(self, reason: str) -> tuple[Sample, ...]:
        """A Bad sample with ``reason`` for every readable point (an adapter whose points are
        also found at run time adds those)."""
        now = time.time()
        return tuple(
            Sample(p.name, None, Quality.BAD, now, now, p.unit, reason)
            for p in self.points()
            if p.access.readable
        )

    def status(self) -> dict[str, Any]:
        """Counters and state for logs and ``gateway status``."""
        return {}
