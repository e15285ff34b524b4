"""PPO training of the uplink policy (stable-baselines3) and its export to ONNX.

``gateway optimizer train`` calls `train`. Torch is imported here only. The export is the
actor alone (observation -> concatenated logits of the five knobs); the runtime takes the
argmax per knob. The JSON beside it carries the feature order, the action tables, the reward
weights, the best fixed decision found by grid search on training episodes (a baseline for
evaluation) and how it was trained.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.optimizer.actions import ACTION_DIMS, Decision, encode, tables
from gateway.optimizer.config import RewardWeights
from gateway.optimizer.features import FEATURES
from models.optimizer import traces as tr
from models.optimizer.episodes import TrainSource

__all__ = ["export_onnx", "ppo", "train"]


def _progress(total: int, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=quiet, mininterval=1.0)


def train(
    out: str | os.PathLike[str],
    *,
    steps: int = 300_000,
    fcc_dir: str | None = None,
    holdout: float = 0.25,
    seed: int = 0,
    n_envs: int = 8,
    grid_episodes: int = 16,
    weights: RewardWeights | None = None,
    quiet: bool = False,
    learning_rate: float = 1e-4,
    ent_coef: float = 0.0,
    start_bias: float = 4.0,
) -> dict[str, Any]:
    """Train, export ``out`` (.onnx) and its .json; returns the JSON written."""
    from models.optimizer.evaluate import fixed_grid, grid_search

    weights = weights or RewardWeights()
    train_traces: list[tr.Trace] = []
    held_out: list[str] = []
    if fcc_dir:
        train_traces, held = tr.split(tr.load_dir(fcc_dir), holdout, seed=0)
        held_out = [t.name for t in held]
    started = time.time()
    source = TrainSource(train_traces, seed=seed + 7919)
    grid_eps = [source.draw() for _ in range(grid_episodes)]
    bar = _progress(len(fixed_grid()), "grid search (best fixed)", quiet)
    best, best_cost = grid_search(grid_eps, weights, progress=bar.update)
    bar.close()
    model = ppo(
        train_traces,
        learning_rate=learning_rate,
        ent_coef=ent_coef,
        start_bias=start_bias,
        steps=steps,
        seed=seed,
        n_envs=n_envs,
        weights=weights,
        quiet=quiet,
        start=best,
    )
    trained_s = time.time() - started

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model.policy, out)
    meta = {
        "format": 1,
        "features": list(FEATURES),
        "actions": tables(),
        "weights": weights.model_dump(),
        "best_fixed": {**best.as_dict(), "train_cost_per_sample": round(best_cost, 5)},
        "trained": {
            "steps": steps,
            "n_envs": n_envs,
            "seed": seed,
            "fcc_traces": len(train_traces),
            "held_out_fcc": held_out,
            "synth_share": 0.5 if train_traces else 1.0,
            "grid_episodes": grid_episodes,
            "seconds": round(trained_s, 1),
            "learning_rate": learning_rate,
            "ent_coef": ent_coef,
            "start_bias": start_bias,
        },
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def ppo(
    train_traces: list[tr.Trace],
    *,
    steps: int,
    seed: int = 0,
    n_envs: int = 8,
    weights: RewardWeights | None = None,
    quiet: bool = False,
    length: float = 300.0,
    n_steps: int = 256,
    learning_rate: float = 3e-4,
    start: Decision | None = None,
    ent_coef: float = 0.01,
    start_bias: float = 4.0,
) -> Any:
    """A PPO model trained on episodes drawn from ``train_traces`` + synthetic ones.

    ``start`` (the best fixed decision) tilts the initial policy towards it: the action head's
    bias favours its indexes, so PPO explores around a good setting instead of from uniform
    noise, where the delayed, outage-dominated costs give it little to climb on. Rewards are
    normalised by their running spread (VecNormalize) for the same reason.
    """
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from models.optimizer.env import UplinkEnv

    torch.set_num_threads(1)

    def make(i: int) -> Any:
        source = TrainSource(train_traces, seed=seed * 100 + i, length=length)
        return lambda: UplinkEnv(source, weights)

    envs = VecNormalize(
        DummyVecEnv([make(i) for i in range(n_envs)]),
        norm_obs=False,
        norm_reward=True,
        gamma=0.97,
    )
    model = PPO(
        "MlpPolicy",
        envs,
        n_steps=n_steps,
        batch_size=min(512, n_steps * n_envs),
        n_epochs=5,
        gamma=0.97,
        gae_lambda=0.95,
        ent_coef=ent_coef,
        learning_rate=learning_rate,
        policy_kwargs={"net_arch": [64, 64]},
        device="cpu",
        seed=seed,
        verbose=0,
    )

    # SB3's default logger makes an empty /tmp/SB3-<time> folder per run even when silent.
    model.set_logger(Logger(folder=None, output_formats=[]))

    if start is not None:
        with torch.no_grad():
            bias: Any = model.policy.action_net.bias
            offset = 0
            for index, n in zip(encode(start), ACTION_DIMS, strict=True):
                bias[offset + index] += start_bias
                offset += n

    class Bar(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.bar = _progress(steps, "PPO", quiet)

        def _on_step(self) -> bool:
            self.bar.update(n_envs)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    model.learn(total_timesteps=steps, callback=Bar())
    return model


def export_onnx(policy: Any, path: Path) -> None:
    """The actor of an SB3 ActorCriticPolicy (MultiDiscrete) as a small ONNX graph."""
    import torch

    class Actor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = policy.mlp_extractor.policy_net
            self.head = policy.action_net

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.head(self.mlp(obs))  # type: ignore[no-any-return]

    actor = Actor().eval()
    dummy = torch.zeros(1, len(FEATURES), dtype=torch.float32)
    torch.onnx.export(
        actor,
        (dummy,),
        str(path),
        input_names=["obs"],
        output_names=["logits"],
        dynamic_axes={"obs": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    # a sanity check that the graph gives what torch gives
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(0, 1, (4, len(FEATURES))).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"obs": x})
    want = actor(torch.from_numpy(x)).detach().numpy()
    if not np.allclose(got[0], want, atol=1e-4):
        raise RuntimeError("the exported ONNX policy disagrees with torch")
