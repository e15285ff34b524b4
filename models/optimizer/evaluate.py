"""Run policies over episodes and report the physical figures beside the reward.

Per policy: mean reward (the mean over episodes of minus the cost per sample, so 0 is best),
p50/p99 latency of telemetry and of alarms (over all samples of all episodes; samples still
undelivered at the end count with their age then), bytes and radio energy per sample, loss
rate, QoS 1 samples lost, alarm deadline misses. Gains are relative cost reductions
(``1 - cost_learned / cost_other``): "x % higher mean reward" with rewards <= 0.

`check_traces` says which traces an evaluation would misread without failing: times that look
like milliseconds (a 300 s episode then sees one sample, a constant link, and the figures look
about ten times better), traces looped many times to fill an episode, and what reading them
skipped or repaired. It warns rather than refuses or rescales: the run still says something,
and the JSON carries the warnings beside the figures they qualify.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gateway.optimizer.actions import BATCHES, DEADLINES, Decision
from gateway.optimizer.config import RewardWeights
from gateway.optimizer.heuristic import Policy
from gateway.text import counted
from models.optimizer.episodes import Episode
from models.optimizer.sim import Totals
from models.optimizer.traces import Scan, Trace

__all__ = [
    "check_traces",
    "fixed_grid",
    "grid_search",
    "parse_policies",
    "run_episode",
    "summarize",
    "trace_warnings",
]

MS_STEP = 60.0  # s: a median step this long is far more likely milliseconds than a log
FEW_SAMPLES = 5  # an episode that sees fewer trace samples is a near-constant link
LOOPED_MANY = 2.0  # a trace looped this many times to fill an episode is a warning


def parse_policies(text: str, known: Sequence[str]) -> tuple[str, ...]:
    """``all`` or a comma list of ``known`` names, spaces and case ignored, each once in the
    order given; ``all`` anywhere in the list means every policy. ValueError names the first
    unknown one."""
    names = [part.strip().lower() for part in text.split(",")]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"no policy named; choose from all, {', '.join(known)}")
    if "all" in names:
        return tuple(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; choose from all, {', '.join(known)}")
    return tuple(dict.fromkeys(names))


def trace_warnings(trace: Trace, length: float) -> tuple[list[str], list[str]]:
    """(warnings, notes) about how an episode of ``length`` seconds will read ``trace``:
    warnings where the figures are probably not what the trace meant, notes otherwise."""
    warnings: list[str] = []
    notes: list[str] = []
    median = float(np.median(np.diff(trace.times)))
    seen = int(np.count_nonzero(trace.times < length))
    if median >= MS_STEP:
        warnings.append(
            f"median step {median:g} s: times look like milliseconds; the format wants "
            f"seconds (a {length:g} s episode sees {counted(seen, 'sample')} of it)"
        )
    elif seen < FEW_SAMPLES and trace.duration >= length:
        warnings.append(
            f"a {length:g} s episode sees only {counted(seen, 'sample')} of it "
            f"(median step {median:g} s): nearly a constant link"
        )
    if trace.duration < length:
        loops = length / max(trace.duration, 1e-9)
        text = (
            f"lasts {trace.duration:g} s, shorter than a {length:g} s episode: "
            f"looped {loops:.3g} times"
        )
        (warnings if loops >= LOOPED_MANY else notes).append(text)
    return warnings, notes


def check_traces(scan: Scan, length: float) -> tuple[dict[str, Any], list[str]]:
    """What an evaluation of ``scan`` with episodes of ``length`` s should say about its
    traces: (JSON fields for the report, lines for stderr). Warnings and notes name the file."""
    warnings: list[str] = []
    notes: list[str] = []
    for t in scan.traces:
        warned, noted = trace_warnings(t, length)
        warnings += [f"{t.name}: {w}" for w in warned]
        notes += [f"{t.name}: {n}" for n in (*t.notes, *noted)]
    longer = sum(t.duration > length for t in scan.traces)
    lines = [f"skipped {name}: {why}" for name, why in scan.skipped.items()]
    lines += [f"warning: {w}" for w in warnings] + [f"note: {n}" for n in notes]
    if longer:
        lines.append(
            f"note: {counted(longer, 'trace')} longer than {length:g} s: each episode uses "
            f"the first {length:g} s (--length)"
        )
    fields = {
        "traces_skipped": len(scan.skipped),
        "skipped_files": dict(scan.skipped),
        "warnings": warnings,
        "notes": notes,
        "traces_longer_than_episode": longer,
    }
    return fields, lines


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
