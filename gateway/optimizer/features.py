"""What the optimizer sees: `LinkStats` (measured by the uplink or the simulator) -> a vector.

Both sides fill the same dataclass and call `observation`, so training and the running gateway
cannot drift apart. Values are squashed to about [0, 1] with fixed transforms (log for the
heavy-tailed ones) rather than statistics of one training run, so a link faster or slower than
any seen in training still maps somewhere sensible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.optimizer.actions import ACTION_DIMS

__all__ = ["FEATURES", "LinkStats", "observation"]

FEATURES: tuple[str, ...] = (
    "backlog",
    "backlog_age",
    "goodput",
    "rtt",
    "timeouts",
    "arrival_rate",
    "inflight",
    "connected",
    "prev_deadline",
    "prev_batch",
    "prev_compress",
    "prev_qos",
    "prev_window",
)


@dataclass(slots=True)
class LinkStats:
    """One decision interval's view of the uplink."""

    backlog: int = 0  # telemetry samples waiting (not handed to the connection)
    backlog_age: float = 0.0  # seconds the oldest of them has waited
    goodput: float = 0.0  # acknowledged/delivered payload bytes per second, recent
    rtt: float = 0.0  # smoothed publish -> PUBACK seconds (0: none measured yet)
    timeouts: int = 0  # in-flight publishes older than the ack timeout
    arrival_rate: float = 0.0  # samples per second arriving, recent
    inflight: int = 0  # QoS 1 publishes not acknowledged
    connected: bool = True
    prev: tuple[int, ...] = (0, 0, 0, 1, 1)  # indexes of the decision in force


def observation(s: LinkStats) -> list[float]:
    """The policy's input, in `FEATURES` order."""
    prev = [i / max(1, n - 1) for i, n in zip(s.prev, ACTION_DIMS, strict=True)]
    return [
        math.log1p(max(0, s.backlog)) / 8.0,
        math.log1p(max(0.0, s.backlog_age)) / 4.0,
        math.log1p(max(0.0, s.goodput) / 1000.0) / 8.0,
        math.log1p(max(0.0, s.rtt) * 10.0) / 5.0,
        min(s.timeouts, 20) / 20.0,
        math.log1p(max(0.0, s.arrival_rate)) / 7.0,
        math.log1p(max(0, s.inflight)) / 5.0,
        1.0 if s.connected else 0.0,
        *prev,
    ]
