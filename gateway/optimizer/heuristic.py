"""Policies that need no model: send at once, a fixed setting, and the AIMD heuristic.

`AimdPolicy` is the fallback of the uplink when no model is configured: the batch grows
additively while the round-trip time says the link is queueing (RTT well above the least seen,
or acknowledgements timing out) and halves once the RTT is back within 1.2 times that least,
the way TCP treats its window but turned around (a narrow link wants fewer, larger publishes).
"""

from __future__ import annotations

from typing import Protocol

from gateway.optimizer.actions import Decision
from gateway.optimizer.features import LinkStats

__all__ = ["IMMEDIATE", "AimdPolicy", "FixedPolicy", "Policy"]

IMMEDIATE = Decision(deadline=0.0, max_batch=1, compress=False, qos=1, window=64)


class Policy(Protocol):
    name: str

    def decide(self, stats: LinkStats) -> Decision: ...

    def reset(self) -> None: ...


class FixedPolicy:
    """The same decision every interval (``immediate`` and the grid-searched best fixed)."""

    def __init__(self, decision: Decision, name: str = "fixed") -> None:
        self.decision = decision
        self.name = name

    def decide(self, stats: LinkStats) -> Decision:
        return self.decision

    def reset(self) -> None:
        pass


class AimdPolicy:
    """Additive increase of the batch while the link queues, multiplicative decrease after."""

    name = "heuristic"

    def __init__(
        self,
        *,
        step: int = 8,
        min_batch: int = 1,
        max_batch: int = 256,
        congested: float = 1.5,
        deadline: float = 0.25,
        window: int = 16,
    ) -> None:
        self.step = step
        self.min_batch = min_batch
        self.max_batch = max_batch
        self.congested = congested
        self.deadline = deadline
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.batch = float(self.min_batch)
        self.min_rtt = 0.0

    def decide(self, stats: LinkStats) -> Decision:
        rtt = stats.rtt
        if rtt > 0:
            # the least RTT seen, forgotten slowly (a handover can move it for good)
            self.min_rtt = rtt if self.min_rtt <= 0 else min(rtt, self.min_rtt * 1.01)
        queueing = (
            not stats.connected
            or stats.timeouts > 0
            or (rtt > 0 and rtt > self.congested * self.min_rtt)
            or stats.backlog > 2 * self.batch
        )
        if queueing:
            self.batch = min(float(self.max_batch), self.batch + self.step)
        elif rtt <= 1.2 * self.min_rtt:  # clearly free again (between the two: hold)
            self.batch = max(float(self.min_batch), self.batch / 2)
        batch = int(self.batch)
        return Decision(
            deadline=self.deadline,
            max_batch=batch,
            compress=batch >= 4,
            qos=1,
            window=self.window,
        )
