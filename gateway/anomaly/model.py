"""The exported autoencoder run with ONNX Runtime: windows in, reconstruction errors out.

The ONNX graph computes the error itself (mean squared difference over the window), so one
``run`` call per batch is all the Python work; a batch of a device's points costs one call.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gateway.anomaly.core import WINDOW as DEFAULT
from gateway.anomaly.core import Array

MODELS = Path(__file__).resolve().parent.parent.parent / "models" / "anomaly"
STUDENT = MODELS / "student.onnx"
TEACHER = MODELS / "teacher.onnx"
NEEDS_ONNXRUNTIME = "anomaly scoring needs onnxruntime: pip install 'protocol-brain[ml]'"


class ModelError(Exception):
    """The model file is missing or is not an anomaly window model, or ONNX Runtime is not
    installed."""


def shipped(name: str) -> Path:
    """``student`` / ``teacher``: the models shipped in the package; else a path."""
    if name in ("student", "teacher"):
        return STUDENT if name == "student" else TEACHER
    return Path(name)


class OnnxScorer:
    """One ONNX Runtime session on one thread (the gateway is one process on a small box)."""

    def __init__(
        self, path: str | os.PathLike[str], *, window: int | None = None, threads: int = 1
    ) -> None:
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise ModelError(NEEDS_ONNXRUNTIME) from None

        self.path = Path(path)
        if not self.path.is_file():
            what = "a directory, not a model file" if self.path.is_dir() else "no such model file"
            raise ModelError(f"{self.path}: {what}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{self.path}: not a loadable ONNX model ({exc})") from None
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 3:
            raise ModelError(f"{self.path}: expected one input [batch, 1, window]")
        meta = self.session.get_modelmeta().custom_metadata_map
        trained = shape[2] if isinstance(shape[2], int) else int(meta.get("window", DEFAULT))
        if window is not None and isinstance(shape[2], int) and window != shape[2]:
            raise ModelError(f"{self.path}: takes windows of {shape[2]} samples, not {window}")
        self.window: int = window or trained
        self._input = inputs[0].name
        self.size = self.path.stat().st_size

    def errors(self, windows: Array) -> Array:
        out = self.session.run(None, {self._input: windows})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)
