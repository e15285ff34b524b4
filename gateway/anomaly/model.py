"""The exported autoencoder run with ONNX Runtime: windows in, reconstruction errors out.

The ONNX graph computes the error itself (mean squared difference over the window), so one
``run`` call per batch is all the Python work; a batch of a device's points costs one call.

ONNX Runtime's CPU arena keeps the buffers of the largest call a session has made, so a call
takes at most `BATCH` windows (a calibration's tens of thousands grew each session by ~80 MB
for good, and were no faster). The bridges of a gateway run share one session per model file
(`shared`): a session is a few MB plus its arena. A calibration in a worker thread and the
event loop may call it at once, which ONNX Runtime's ``run`` allows.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import numpy as np

from gateway.anomaly.core import WINDOW as DEFAULT
from gateway.anomaly.core import Array

MODELS = Path(__file__).resolve().parent.parent.parent / "models" / "anomaly"
STUDENT = MODELS / "student.onnx"
TEACHER = MODELS / "teacher.onnx"
# Windows per ONNX Runtime call: the arena stays small and the calls are as fast (4 sessions
# calibrating 250 points each: 115 MB RSS and 359 ms per device at 1,024, against 389 MB and
# 430 ms at 8,192; turning the arena off saves nothing more at this size).
BATCH = 1024
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
        """Each window's error; at most `BATCH` windows per call (a window's error does not
        depend on the other windows of its call, docs/anomaly.md "Batches")."""
        if len(windows) > BATCH:
            parts = [self.errors(windows[i : i + BATCH]) for i in range(0, len(windows), BATCH)]
            return np.concatenate(parts)
        out = self.session.run(None, {self._input: windows})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


# The sessions in use, by model file (its resolved path, size and time of change: a file
# replaced before a reload gets a session of its own) and window. A session goes when the last
# stage that holds it does (a reload builds new stages and drops the old ones).
_SHARED: weakref.WeakValueDictionary[tuple[str, int, int, int | None], OnnxScorer] = (
    weakref.WeakValueDictionary()
)
_SHARED_LOCK = threading.Lock()


def shared(path: str | os.PathLike[str], *, window: int | None = None) -> OnnxScorer:
    """The session of the model file ``path`` that the stages of this process share (a new
    one if none holds it now); raises `ModelError` as `OnnxScorer` does."""
    try:
        resolved = Path(path).resolve()
        st = resolved.stat()
    except OSError:
        return OnnxScorer(path, window=window)  # says what is wrong with the path
    key = (str(resolved), st.st_size, st.st_mtime_ns, window)
    with _SHARED_LOCK:
        scorer = _SHARED.get(key)
        if scorer is None:
            scorer = _SHARED[key] = OnnxScorer(resolved, window=window)
        return scorer
