"""The optimizer inside a running uplink: measures the link, asks the policy every interval.

The MQTT adapter tells it what happens (rows appended, publishes handed out and acknowledged)
and asks `maybe_decide` before it flushes; `decision` is what holds until the next interval.
It measures the same `LinkStats` the simulator measures, with the same smoothing, so the
shipped policy sees at run time what it saw in training. The model is loaded once; if it
cannot be (no ``[ml]`` extra, a bad file), the configured fallback decides and a warning says
why.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from gateway.optimizer.actions import Decision, encode
from gateway.optimizer.config import OptimizerConfig
from gateway.optimizer.features import LinkStats
from gateway.optimizer.heuristic import IMMEDIATE, AimdPolicy, FixedPolicy, Policy

log = logging.getLogger(__name__)

__all__ = ["UplinkOptimizer"]


class UplinkOptimizer:
    def __init__(
        self,
        config: OptimizerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "uplink",
    ) -> None:
        self.config = config
        self.clock = clock
        #: which policy decides, for the start-up log: "builtin policy", "heuristic",
        #: "heuristic (fallback: <why the model was not loaded>)"
        self.in_force = ""
        #: the same in a word or two, for status() and the periodic status line
        self.label = ""
        self.policy = self._load(config, name)
        self.decision: Decision = IMMEDIATE
        self.stats = LinkStats()
        self.next_at = 0.0
        self._last_at: float | None = None
        self._arrived = 0
        self._acked_bytes = 0
        self._sent: dict[int, tuple[float, int]] = {}  # mid -> (handed at, bytes)
        self.decisions = 0
        self.decide_seconds = 0.0
        self.batches: collections.deque[tuple[float, int]] = collections.deque(maxlen=10_000)

    def _load(self, config: OptimizerConfig, name: str) -> Policy:
        from gateway.optimizer.policy import PolicyError, load_policy

        try:
            policy = load_policy(config.model)
        except PolicyError as exc:
            fallback: Policy = (
                AimdPolicy()
                if config.fallback == "heuristic"
                else FixedPolicy(IMMEDIATE, "immediate")
            )
            log.warning(
                "uplink %s: optimizer model %r not loaded (%s); %s decides instead",
                name,
                config.model,
                exc,
                fallback.name,
            )
            self.in_force = f"{config.fallback} (fallback: {exc})"
            self.label = f"{config.fallback} (fallback)"
            return fallback
        if config.model in ("builtin", "heuristic", "off"):
            self.label = config.model
            self.in_force = "builtin policy" if config.model == "builtin" else config.model
        else:
            self.label = os.path.basename(config.model)
            self.in_force = f"policy {config.model}"
        return policy

    # --- what the uplink reports ----------------------------------------------------------------

    def note_arrivals(self, n: int) -> None:
        self._arrived += n

    def note_sent(self, mid: int, nbytes: int, rows: int) -> None:
        now = self.clock()
        self._sent[mid] = (now, nbytes)
        self.batches.append((now, rows))

    def note_unacked(self, rows: int) -> None:
        """A QoS 0 publish (nothing to wait for): counts as a batch and as delivered."""
        self.batches.append((self.clock(), rows))

    def note_ack(self, mid: int) -> None:
        sent = self._sent.pop(mid, None)
        if sent is None:
            return
        at, nbytes = sent
        rtt = self.clock() - at
        s = self.stats
        s.rtt = rtt if s.rtt <= 0 else 0.8 * s.rtt + 0.2 * rtt
        self._acked_bytes += nbytes

    def note_delivered(self, nbytes: int) -> None:
        self._acked_bytes += nbytes

    def forget(self) -> None:
        """The connection is gone: paho re-sends, RTTs of those would be meaningless."""
        self._sent.clear()

    # --- deciding -------------------------------------------------------------------------------

    def maybe_decide(
        self, *, backlog: int, backlog_age: float, inflight: int, connected: bool
    ) -> Decision:
        now = self.clock()
        if now < self.next_at:
            return self.decision
        span = self.config.interval if self._last_at is None else max(1e-3, now - self._last_at)
        self._last_at = now
        self.next_at = now + self.config.interval
        s = self.stats
        a = 0.5  # as the simulator: EWMA weight of the newest interval
        s.goodput = (1 - a) * s.goodput + a * self._acked_bytes / span
        s.arrival_rate = (1 - a) * s.arrival_rate + a * self._arrived / span
        self._acked_bytes = 0
        self._arrived = 0
        s.backlog = backlog
        s.backlog_age = backlog_age
        s.inflight = inflight
        s.connected = connected
        limit = self.config.ack_timeout
        s.timeouts = sum(1 for at, _ in self._sent.values() if now - at > limit)
        started = time.perf_counter()
        d = self.policy.decide(s)
        self.decide_seconds += time.perf_counter() - started
        self.decisions += 1
        try:
            s.prev = encode(d)
        except ValueError:
            pass  # the heuristic's batch sizes are not all in the tables
        if d != self.decision:
            log.debug("uplink decision %s", d)
        self.decision = d
        return d

    def due_in(self, now: float | None = None) -> float:
        return max(0.0, self.next_at - (self.clock() if now is None else now))

    def status(self) -> dict[str, Any]:
        recent = [n for _, n in list(self.batches)[-200:]]
        return {
            "policy": self.policy.name,
            "in_force": self.label,
            "decision": self.decision.as_dict(),
            "decisions": self.decisions,
            "decide_ms_mean": round(1000 * self.decide_seconds / max(1, self.decisions), 4),
            "rows_per_publish_recent": round(sum(recent) / len(recent), 2) if recent else None,
            "rtt_s": round(self.stats.rtt, 4),
        }
