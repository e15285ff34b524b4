"""The gateway's own northbound workload: periodic device polls, bursts, rare alarms.

Parameters are drawn per episode so the policy meets quiet and busy gateways alike: polls of
5-60 points every 1-10 s, bursts (a device dumping its buffer, a fast-changing process) of
20-300 samples/s for 2-10 s about once a minute, and alarms about once a minute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Workload", "draw"]


@dataclass(frozen=True)
class Workload:
    telemetry: np.ndarray  # arrival times (s), sorted
    alarms: np.ndarray  # arrival times (s), sorted


def draw(rng: np.random.Generator, duration: float) -> Workload:
    points = int(rng.integers(5, 61))
    period = float(rng.choice([1.0, 2.0, 5.0, 10.0]))
    phase = rng.uniform(0, period)
    polls = np.arange(phase, duration, period)
    tel = [np.repeat(polls, points) + rng.uniform(0, 0.05, len(polls) * points)]
    for _ in range(rng.poisson(duration / 60.0)):
        start = rng.uniform(0, duration)
        length = rng.uniform(2, 10)
        rate = rng.uniform(20, 300)
        n = rng.poisson(rate * length)
        tel.append(start + rng.uniform(0, length, n))
    alarms = rng.uniform(0, duration, rng.poisson(duration / 60.0))
    t = np.sort(np.concatenate(tel))
    return Workload(t[t < duration], np.sort(alarms))
