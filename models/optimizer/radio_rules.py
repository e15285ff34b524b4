"""Do hand-written state-dependent rules beat the best fixed decision? (`python -m` this.)

The check before any RL: if no cheap rule that sees the state beats every fixed decision, a
learned policy has nothing principled to find. The rules see the radio (seconds since the last
send or acknowledgement, read from the simulator: more than the uplink could measure, so this
is generous to them) and the arrival rate:

- ``radio D``: flush at once while the radio was active within the last second (the tail is
  paid already), else hold telemetry up to D s, so idle periods longer than the 11.6 s LTE tail
  can appear; no fixed (deadline, batch) does both.
- ``rate C``: deadline C / sqrt(arrival rate) (the square-root law of batching a fixed cost
  against per-sample delay), capped at 60 s.

They run on training episodes (the FCC training split + synthetic, as `train` draws them) under
the shipped weights and two weightings that price energy far higher than latency. Last line:
one JSON object of mean cost per sample, J and bytes per sample, per rule and weighting.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import numpy as np

from gateway.optimizer.actions import Decision
from gateway.optimizer.config import RewardWeights
from models.optimizer import traces as tr
from models.optimizer.episodes import Episode, TrainSource
from models.optimizer.sim import UplinkSim

Rule = Callable[[UplinkSim], Decision]


def _fixed(d: Decision) -> Rule:
    return lambda sim: d


def _radio(hold: float) -> Rule:
    def rule(sim: UplinkSim) -> Decision:
        hot = sim.t - sim.last_active < 1.0
        return Decision(0.0 if hot else hold, 256, True, 1, 64)

    return rule


def _rate(c: float) -> Rule:
    def rule(sim: UplinkSim) -> Decision:
        return Decision(min(60.0, c / math.sqrt(max(sim.arrival_rate, 0.1))), 256, True, 1, 64)

    return rule


def _run(rule: Rule, ep: Episode, w: RewardWeights) -> tuple[float, float, float]:
    sim = ep.sim(w)
    while not sim.done:
        sim.step(rule(sim))
    t, n = sim.totals, max(1, sim.totals.samples)
    return t.cost / n, t.energy / n, (t.bytes_up + t.bytes_down) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fcc", help="FCC folder (its training split is used)")
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--seed", type=int, default=4242)
    args = ap.parse_args()
    train = tr.split(tr.load_dir(args.fcc), 0.25, seed=0)[0] if args.fcc else []
    source = TrainSource(train, seed=args.seed)
    episodes = [source.draw() for _ in range(args.episodes)]
    rules: dict[str, Rule] = {
        "best_fixed (0 s, 256, zlib, QoS 1, window 4)": _fixed(Decision(0.0, 256, True, 1, 4)),
    }
    for hold in (5.0, 15.0, 30.0, 60.0):
        rules[f"fixed {hold:g} s"] = _fixed(Decision(hold, 256, True, 1, 64))
        rules[f"radio {hold:g} s"] = _radio(hold)
    for c in (30.0, 100.0):
        rules[f"rate {c:g}/sqrt(rate)"] = _rate(c)
    weightings = {
        "shipped": RewardWeights(),
        "energy x100": RewardWeights(energy=100.0),
        "latency x0.01": RewardWeights(latency=0.01),
    }
    report: dict[str, dict[str, list[float]]] = {}
    for wname, w in weightings.items():
        report[wname] = {}
        for rname, rule in rules.items():
            r = np.array([_run(rule, ep, w) for ep in episodes]).mean(axis=0)
            report[wname][rname] = [round(float(x), 4) for x in r]
            print(f"{wname:14s} {rname:44s} cost {r[0]:.4f} J {r[1]:.4f} B {r[2]:.1f}")
    print(
        json.dumps({"columns": ["cost_per_sample", "j_per_sample", "bytes_per_sample"], **report})
    )


if __name__ == "__main__":
    main()
