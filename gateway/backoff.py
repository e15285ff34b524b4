"""Capped exponential backoff with full jitter, shared by every adapter that reconnects.

Why full jitter: after a broker or a PLC restarts, every gateway (and every adapter in one
gateway) that lost it retries at once. Sleeping a uniformly random time in ``[0, cap]``, where the
cap grows ``initial * multiplier**attempt`` up to ``max``, spreads those retries out instead of
hammering the peer in waves (see "Exponential Backoff And Jitter", AWS Architecture Blog).

The cap grows by multiplication step by step rather than by ``multiplier**attempt`` so that a
device that stays dead for weeks never overflows a float.
"""

from __future__ import annotations

import asyncio
import random

from gateway.config.common import Backoff


class BackoffTimer:
    """Delays between reconnect attempts: ``next_delay()`` after each failure, ``reset()`` after a
    success.

    ``rng`` makes tests deterministic; ``jitter=False`` returns the cap itself (for logs and tests
    that want the envelope, never for real reconnects).
    """

    __slots__ = ("config", "attempts", "_cap", "_rng", "_jitter")

    def __init__(
        self,
        config: Backoff | None = None,
        *,
        rng: random.Random | None = None,
        jitter: bool = True,
    ) -> None:
        self.config = config if config is not None else Backoff.model_validate({})
        self.attempts = 0  # failures since the last reset
        self._cap = self.config.initial
        self._rng = rng if rng is not None else random.Random()
        self._jitter = jitter

    @property
    def cap(self) -> float:
        """Upper bound of the next delay."""
        return self._cap

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; grows the cap for the one after."""
        cap = self._cap
        self.attempts += 1
        self._cap = min(cap * self.config.multiplier, self.config.max)
        if not self._jitter:
            return cap
        return self._rng.uniform(0.0, cap)

    def reset(self) -> None:
        """Back to the initial delay (call once a connection has been established)."""
        self.attempts = 0
        self._cap = self.config.initial


async def sleep_backoff(timer: BackoffTimer) -> float:
    """Sleep ``timer.next_delay()`` seconds; returns the delay slept."""
    delay = timer.next_delay()
    await asyncio.sleep(delay)
    return delay
