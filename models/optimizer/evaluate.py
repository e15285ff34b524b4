"""Run policies over episodes and report the physical figures beside the reward.

Per policy: mean reward (the mean over episodes of minus the cost per sample, so 0 is best),
p50/p99 latency of telemetry and of alarms (over all samples of all episodes; samples still
undelivered at the end count with their age then), bytes and radio energy per sample, loss
rate, QoS 1 samples lost, alarm deadline misses. Gains are relative cost reductions
(``1 - cost_learned / cost_other``): "x % higher mean reward" with rewards <= 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gateway.optimizer.actions import BATCHES, DEADLINES, Decision
from gateway.optimizer.config import RewardWeights
from gateway.optimizer.heuristic import Policy
from models.optimizer.episodes import Episode
from models.optimizer.sim import Totals

__all__ = ["fixed_grid", "grid_search", "run_episode", "summarize"]


def run_episode(
    policy: Policy, ep: Episode, weights: RewardWeights | None = None, *, record: bool = True
) -> tuple[float, Totals]:
    """(cost, totals) of one episode; every decision goes through `LinkStats`."""
    from gateway.optimizer.actions import encode

    policy.reset()
    sim = ep.sim(weights, record=record)
    while not sim.done:
        d = policy.decide(sim.stats())
        try:
            sim.prev = encode(d)
        except ValueError:  # the heuristic's batch sizes are not all in the tables
            pass
        sim.step(d)
    return sim.totals.cost, sim.totals


def fixed_grid(windows: Sequence[int] = (4, 64)) -> list[Decision]:
    return [
        Decision(d, b, c, q, w)
        for d, b, c, q, w in itertools.product(DEADLINES, BATCHES, (False, True), (0, 1), windows)
    ]


def grid_search(
    episodes: Sequence[Episode],
    weights: RewardWeights | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Decision, float]:
    """The fixed decision with the least mean cost per sample on ``episodes``."""
    from gateway.optimizer.heuristic import FixedPolicy

    best: tuple[float, Decision] | None = None
    for d in fixed_grid():
        per = []
        for ep in episodes:
            cost, tot = run_episode(FixedPolicy(d), ep, weights, record=False)
            per.append(cost / max(1, tot.samples))
        mean = float(np.mean(per))
        if best is None or mean < best[0]:
            best = (mean, d)
        if progress is not None:
            progress(1)
    assert best is not None
    return best[1], best[0]


def summarize(results: list[tuple[float, Totals]]) -> dict[str, Any]:
    per = [cost / max(1, t.samples) for cost, t in results]
    tel: list[float] = [x for _, t in results for x in t.tel_latency]
    al: list[float] = [x for _, t in results for x in t.alarm_latency]
    samples = sum(t.samples for _, t in results)
    alarms = sum(t.alarms for _, t in results)

    def pct(a: list[float], q: float) -> float | None:
        return round(float(np.percentile(a, q)), 4) if len(a) else None

    return {
        "mean_reward": round(-float(np.mean(per)), 5),
        "cost_per_sample": round(float(np.mean(per)), 5),
        "telemetry_latency_p50_s": pct(tel, 50),
        "telemetry_latency_p99_s": pct(tel, 99),
        "alarm_latency_p50_s": pct(al, 50),
        "alarm_latency_p99_s": pct(al, 99),
        "alarm_deadline_misses": sum(t.deadline_misses for _, t in results),
        "alarms": alarms,
        "bytes_per_sample": round(
            sum(t.bytes_up + t.bytes_down for _, t in results) / max(1, samples), 2
        ),
        "energy_j_per_sample": round(sum(t.energy for _, t in results) / max(1, samples), 5),
        "loss_rate": round(sum(t.lost for _, t in results) / max(1, samples), 6),
        "qos1_lost": sum(t.lost_qos1 for _, t in results),
        "samples": samples,
        "samples_per_publish": round(
            sum(t.batched_samples for _, t in results)
            / max(1, sum(t.publishes for _, t in results)),
            2,
        ),
    }


def gain(ours: dict[str, Any], other: dict[str, Any]) -> float:
    """Relative cost reduction of ``ours`` over ``other`` (0.15 = 15 % higher mean reward)."""
    return round(1.0 - float(ours["cost_per_sample"]) / float(other["cost_per_sample"]), 4)
