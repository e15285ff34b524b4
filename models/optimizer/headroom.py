"""How much any send policy could gain over a given one in this simulator: an upper bound.

In `UplinkSim` the connection's timeline (when the link is dead, when it drops at random, when
it reconnects) depends on the trace and the episode's seed only, never on the policy. So no
policy can deliver a sample before "at once, over an infinitely fast link while connected".
`bound_cost` charges exactly that: the episode re-run with every usable tick's bandwidth made
infinite (outages kept), no radio promotion delay, every sample sent in the tick it arrives,
and only the latency and alarm terms of the reward counted (energy, bytes, loss taken as 0).
Every policy's cost per sample is at least that, so ``1 - bound / cost(policy)`` is the most
any policy, learned or not, could gain over ``policy``. The bound is loose (energy and bytes
cannot be zero), so the real headroom is smaller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gateway.optimizer.actions import Decision
from gateway.optimizer.config import RewardWeights
from models.optimizer.episodes import Episode
from models.optimizer.sim import Totals

__all__ = ["bound_cost", "headroom", "parts"]

# alarms already go at once; telemetry too, any number per publish, no window limit
_AT_ONCE = Decision(deadline=0.0, max_batch=1 << 30, compress=True, qos=1, window=1 << 30)
_FAST = 1e12  # bit/s: every usable tick empties the socket


def parts(tot: Totals, weights: RewardWeights | None = None) -> dict[str, float]:
    """A recorded run's cost per sample split into the reward's terms."""
    w = weights or RewardWeights()
    n = max(1, tot.samples)
    return {
        "latency": w.latency * sum(tot.tel_latency) / n,
        "alarms": (w.alarm_latency * sum(tot.alarm_latency) + w.deadline_miss * tot.deadline_misses)
        / n,
        "energy": w.energy * tot.energy / n,
        "bytes": w.bytes * (tot.bytes_up + tot.bytes_down) / 1000.0 / n,
        "loss": w.loss * tot.lost / n,
    }


def bound_cost(ep: Episode, weights: RewardWeights | None = None) -> float:
    """A lower bound on any policy's cost per sample of ``ep`` (latency and alarm terms only)."""
    w = weights or RewardWeights()
    bw = np.where(ep.bandwidth >= 1000.0, _FAST, ep.bandwidth)
    # no promotion delay either: a slower policy might find the radio still on where this one
    # (done sooner) would have let it idle
    fast = dataclasses.replace(ep, bandwidth=bw, link=dataclasses.replace(ep.link, promo_time=0.0))
    sim = fast.sim(w, record=True)
    while not sim.done:
        sim.step(_AT_ONCE)
    tot = sim.totals
    cost = w.latency * sum(tot.tel_latency) + w.alarm_latency * sum(tot.alarm_latency)
    cost += w.deadline_miss * tot.deadline_misses
    return cost / max(1, tot.samples)


def headroom(
    episodes: Sequence[Episode], runs: Sequence[Totals], weights: RewardWeights | None = None
) -> dict[str, float]:
    """A policy's mean cost per sample by term (``runs``: its recorded totals, one per episode),
    the mean bound, and the most any policy could gain over it: ``max_gain`` if energy and bytes
    could be free, ``max_gain_same_energy_bytes`` if they stay what this policy pays (the part
    of its latency above the bound, the only part no trade-off is needed to remove)."""
    bound = float(np.mean([bound_cost(ep, weights) for ep in episodes]))
    split = [parts(t, weights) for t in runs]
    mean = {k: float(np.mean([p[k] for p in split])) for k in split[0]}
    cost = sum(mean.values())
    floor = bound + mean["energy"] + mean["bytes"]
    return {
        **{f"policy_{k}": round(v, 5) for k, v in mean.items()},
        "policy_cost_per_sample": round(cost, 5),
        "bound_latency_alarms": round(bound, 5),
        "max_gain": round(1.0 - bound / cost, 4) if cost > 0 else 0.0,
        "max_gain_same_energy_bytes": round(1.0 - floor / cost, 4) if cost > 0 else 0.0,
    }
