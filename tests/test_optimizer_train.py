"""A short PPO run (12k steps on synthetic traces, ~30 s on one thread) beats a random policy
(measured 2.62 vs 3.02 cost per sample with seed 0; the threshold leaves a little room)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from gateway.optimizer.actions import decode
from gateway.optimizer.features import observation
from models.optimizer.episodes import TrainSource
from models.optimizer.train import ppo


def mean_cost(act: object, episodes: list) -> float:  # type: ignore[type-arg]
    costs = []
    for ep in episodes:
        sim = ep.sim()
        while not sim.done:
            obs = np.asarray(observation(sim.stats()), dtype=np.float32)
            idx = act(obs)  # type: ignore[operator]
            sim.prev = tuple(int(i) for i in idx)
            sim.step(decode(list(idx)))
        costs.append(sim.totals.cost / max(1, sim.totals.samples))
    return float(np.mean(costs))


def test_short_training_beats_random(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = ppo(
        [],
        steps=12_288,
        seed=0,
        n_envs=4,
        quiet=True,
        length=60.0,
        n_steps=128,
        learning_rate=1e-3,
    )
    source = TrainSource([], seed=123, length=120.0)
    episodes = [source.draw() for _ in range(6)]
    rng = np.random.default_rng(0)
    nvec = model.action_space.nvec
    trained = mean_cost(lambda o: model.predict(o, deterministic=True)[0], episodes)
    random = mean_cost(lambda o: [rng.integers(n) for n in nvec], episodes)
    assert trained < 0.9 * random, (trained, random)
    assert not list(tmp_path.glob("SB3-*"))  # no empty SB3-<time> log folder left in /tmp
