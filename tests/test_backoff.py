"""Capped exponential backoff with full jitter (gateway/backoff.py)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from gateway.backoff import BackoffTimer, sleep_backoff
from gateway.config.common import Backoff


def test_caps_grow_exponentially_up_to_max() -> None:
    timer = BackoffTimer(Backoff(initial=0.5, max=5.0, multiplier=2.0), jitter=False)
    assert [timer.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert timer.attempts == 7


def test_full_jitter_stays_within_the_cap_and_spreads() -> None:
    config = Backoff(initial=1.0, max=8.0, multiplier=2.0)
    timer = BackoffTimer(config, rng=random.Random(42))
    caps = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [timer.next_delay() for _ in caps]
    for delay, cap in zip(delays, caps, strict=True):
        assert 0.0 <= delay <= cap
    # Many gateways restarting at once must not retry in lockstep: delays at the cap differ.
    at_cap = [BackoffTimer(config, rng=random.Random(seed)) for seed in range(50)]
    for t in at_cap:
        for _ in range(4):
            t.next_delay()
    spread = {round(t.next_delay(), 6) for t in at_cap}
    assert len(spread) > 40
    assert max(spread) <= 8.0


def test_same_seed_same_delays() -> None:
    config = Backoff(initial=0.1, max=3.0, multiplier=3.0)
    a = BackoffTimer(config, rng=random.Random(7))
    b = BackoffTimer(config, rng=random.Random(7))
    assert [a.next_delay() for _ in range(6)] == [b.next_delay() for _ in range(6)]


def test_reset_returns_to_initial() -> None:
    timer = BackoffTimer(Backoff(initial=0.2, max=10.0, multiplier=2.0), jitter=False)
    for _ in range(5):
        timer.next_delay()
    assert timer.cap == 6.4
    timer.reset()
    assert timer.attempts == 0
    assert timer.cap == 0.2
    assert timer.next_delay() == 0.2


def test_multiplier_one_is_constant() -> None:
    timer = BackoffTimer(Backoff(initial=2.0, max=2.0, multiplier=1.0), jitter=False)
    assert {timer.next_delay() for _ in range(5)} == {2.0}


def test_weeks_of_failures_do_not_overflow() -> None:
    timer = BackoffTimer(Backoff(initial=0.5, max=30.0, multiplier=10.0), jitter=False)
    for _ in range(100_000):
        delay = timer.next_delay()
    assert delay == 30.0


def test_default_config() -> None:
    timer = BackoffTimer(jitter=False)
    assert timer.next_delay() == 0.5
    assert timer.config.max == 30.0


def test_config_rejects_max_below_initial() -> None:
    with pytest.raises(ValueError, match="must be >= initial"):
        Backoff(initial=5.0, max=1.0)


async def test_sleep_backoff_sleeps_the_returned_delay() -> None:
    timer = BackoffTimer(Backoff(initial=0.05, max=0.05, multiplier=1.0), jitter=False)
    start = time.monotonic()
    slept = await sleep_backoff(timer)
    elapsed = time.monotonic() - start
    assert slept == 0.05
    assert 0.045 <= elapsed < 1.0
    assert timer.attempts == 1


async def test_sleep_backoff_is_cancellable() -> None:
    timer = BackoffTimer(Backoff(initial=60.0, max=60.0), jitter=False)
    task = asyncio.create_task(sleep_backoff(timer))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
