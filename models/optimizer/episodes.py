"""Episodes: a trace window, a workload and a link (base RTT) drawn together.

Training draws from a mix: half `synth_markov` traces, half augmented training traces (FCC
minus the held-out split), each with a random start, a workload and a base RTT of 30-300 ms.
Evaluation is deterministic: trace i gets workload and RTT from ``seed + i``, so every policy
meets the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.optimizer.config import RewardWeights
from models.optimizer import traces as tr
from models.optimizer import workload
from models.optimizer.sim import LinkModel, UplinkSim

__all__ = ["Episode", "TrainSource", "eval_episodes"]

DT = 0.1


@dataclass(frozen=True)
class Episode:
    name: str
    bandwidth: np.ndarray
    load: workload.Workload
    link: LinkModel
    seed: int

    def sim(self, weights: RewardWeights | None = None, *, record: bool = False) -> UplinkSim:
        return UplinkSim(
            self.bandwidth,
            self.load,
            weights,
            link=self.link,
            dt=DT,
            seed=self.seed,
            record=record,
        )


def _episode(
    name: str, trace: tr.Trace, rng: np.random.Generator, length: float, offset: float, seed: int
) -> Episode:
    bw = trace.resample(DT, length, offset)
    load = workload.draw(rng, length)
    link = LinkModel(base_rtt=float(rng.uniform(0.03, 0.3)))
    return Episode(name, bw, load, link, seed)


class TrainSource:
    """Endless random training episodes."""

    def __init__(
        self,
        train_traces: list[tr.Trace],
        seed: int = 0,
        length: float = 300.0,
        synth_share: float = 0.5,
    ) -> None:
        self.traces = train_traces
        self.rng = np.random.default_rng(seed)
        self.length = length
        self.synth_share = synth_share if train_traces else 1.0

    def draw(self) -> Episode:
        rng = self.rng
        if rng.random() < self.synth_share:
            trace = tr.synth_markov(rng, self.length * 2)
        else:
            trace = tr.augment(self.traces[int(rng.integers(len(self.traces)))], rng)
        offset = float(rng.uniform(0, max(0.0, trace.duration - self.length)))
        return _episode(trace.name, trace, rng, self.length, offset, int(rng.integers(1 << 31)))


def eval_episodes(traces: list[tr.Trace], seed: int = 1000, length: float = 300.0) -> list[Episode]:
    out = []
    for i, trace in enumerate(traces):
        rng = np.random.default_rng(seed + i)
        out.append(_episode(trace.name, trace, rng, length, 0.0, seed + i))
    return out
