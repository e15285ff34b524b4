"""The learned policy at run time: ``policy.onnx`` (observation -> logits) + ``policy.json``.

The ONNX graph is the PPO actor (deterministic: argmax per knob). ``policy.json`` names the
feature order and the action tables it was trained with; `OnnxPolicy` refuses a model whose
tables differ from `actions`, since the indexes would mean other settings. onnxruntime and numpy
are imported here only, so the gateway without the ``[ml]`` extra still starts (heuristic).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.optimizer.actions import ACTION_DIMS, Decision, decode, tables
from gateway.optimizer.features import FEATURES, LinkStats, observation
from gateway.optimizer.heuristic import IMMEDIATE, AimdPolicy, FixedPolicy, Policy

__all__ = ["OnnxPolicy", "PolicyError", "builtin_path", "load_policy"]


class PolicyError(Exception):
    pass


def builtin_path() -> Path:
    return Path(str(resources.files("models.optimizer").joinpath("policy.onnx")))


class OnnxPolicy:
    """Deterministic decisions of an exported actor; one ONNX Runtime call per decision."""

    name = "learned"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.is_file():  # the model first: its .json is only missing because it is
            raise PolicyError(f"{path}: {'a directory' if path.is_dir() else 'no such file'}")
        if path.suffix.lower() != ".onnx":  # else the error would name its .json, never given
            raise PolicyError(f"{path}: not a policy model (the .onnx file that train writes)")
        meta_path = path.with_suffix(".json")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PolicyError(f"{meta_path}: no such file (it goes beside the .onnx)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PolicyError(f"{meta_path}: {exc}") from None
        if not isinstance(self.meta, dict):
            raise PolicyError(f"{meta_path}: not a policy description (a JSON object)")
        if self.meta.get("features") != list(FEATURES) or self.meta.get("actions") != tables():
            raise PolicyError(f"{path}: trained for other features or action tables")
        try:
            import numpy as np
            import onnxruntime as ort
        except ImportError as exc:
            raise PolicyError(f"the learned policy needs the [ml] extra ({exc.name})") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for missing/bad files
            raise PolicyError(f"{path}: {exc}") from None
        self._input = self._session.get_inputs()[0].name
        self._np = np
        self._splits = list(np.cumsum(ACTION_DIMS)[:-1])

    def logits(self, obs: list[float]) -> Any:
        x = self._np.asarray([obs], dtype=self._np.float32)
        return self._session.run(None, {self._input: x})[0][0]

    def decide(self, stats: LinkStats) -> Decision:
        logits = self.logits(observation(stats))
        idx = [int(part.argmax()) for part in self._np.split(logits, self._splits)]
        return decode(idx)

    def reset(self) -> None:
        pass


def load_policy(model: str) -> Policy:
    """``builtin`` | a path to a .onnx | ``heuristic`` | ``off`` -> a policy."""
    if model == "heuristic":
        return AimdPolicy()
    if model == "off":
        return FixedPolicy(IMMEDIATE, "immediate")
    return OnnxPolicy(builtin_path() if model == "builtin" else Path(model))
