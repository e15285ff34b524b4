"""Gymnasium environment over `UplinkSim`: one step = one decision interval.

Observation: `gateway.optimizer.features.observation` (13 floats). Action: MultiDiscrete over
deadline, max batch, compression, telemetry QoS, in-flight window. Reward: minus the interval's
cost (`gateway.optimizer.config`) divided by the episode's mean arrival rate, so every episode
weighs by its cost per sample, which is what evaluation reports.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from gateway.optimizer.actions import ACTION_DIMS, decode
from gateway.optimizer.config import RewardWeights
from gateway.optimizer.features import FEATURES, observation
from models.optimizer.episodes import Episode, TrainSource
from models.optimizer.sim import UplinkSim

__all__ = ["UplinkEnv"]


class UplinkEnv(gym.Env[np.ndarray, np.ndarray]):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        source: TrainSource | None = None,
        weights: RewardWeights | None = None,
        episodes: list[Episode] | None = None,
    ) -> None:
        self.source = source or TrainSource([])
        self.episodes = episodes
        self.weights = weights or RewardWeights()
        self.observation_space = gym.spaces.Box(-1.0, 10.0, (len(FEATURES),), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(list(ACTION_DIMS))
        self.sim: UplinkSim | None = None
        self._scale = 1.0
        self._next = 0

    def _obs(self) -> np.ndarray:
        assert self.sim is not None
        return np.clip(np.asarray(observation(self.sim.stats()), dtype=np.float32), -1.0, 10.0)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.source = TrainSource(
                self.source.traces,
                seed=seed,
                length=self.source.length,
                synth_share=self.source.synth_share,
            )
        if self.episodes:
            ep = self.episodes[self._next % len(self.episodes)]
            self._next += 1
        else:
            ep = self.source.draw()
        self.sim = ep.sim(self.weights)
        duration = self.sim.n_ticks * self.sim.dt
        rate = (len(ep.load.telemetry) + len(ep.load.alarms)) / max(duration, 1e-9)
        self._scale = 1.0 / max(rate, 0.1)
        return self._obs(), {"trace": ep.name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        assert self.sim is not None
        idx = tuple(int(a) for a in action)
        self.sim.prev = idx
        cost = self.sim.step(decode(idx))
        done = self.sim.done
        info: dict[str, Any] = {"cost": cost}
        if done:
            info["totals"] = self.sim.totals
        return self._obs(), -cost * self._scale, False, done, info
