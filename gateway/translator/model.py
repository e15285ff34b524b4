"""Run the shipped translator with ONNX Runtime.

`Translator.predict` gives, per point, a distribution over the Brick classes and a unit-length
embedding; `gateway.translator.fewshot` adapts it to a site with a few labeled examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.config.translate import MODEL_FILE
from gateway.translator.tokenize import FEEDS, Point, encode
from gateway.translator.vocab import MODEL_DIR

DEFAULT_MODEL = MODEL_DIR / MODEL_FILE
CHUNK = 256  # points per ONNX Runtime call: big enough to amortize, small enough to pad little
# Rows of an (N, classes) matrix that per-row work (ranking, softmax) takes at a time, so that its
# temporaries are ROWS x 793 rather than N x 793 (an int64 argsort of 20,000 rows is 127 MB).
# Each row is computed as it would be alone: the result does not depend on ROWS.
ROWS = 1024

Floats = npt.NDArray[np.float32]


class ModelError(Exception):
    """The model file is missing or unreadable."""


@dataclass(frozen=True, slots=True)
class Prediction:
    probs: Floats  # (N, classes)
    embeddings: Floats  # (N, d), unit length


class Translator:
    """The ONNX model and its class list; one session, one intra-op thread by default."""

    def __init__(self, path: Path | str = DEFAULT_MODEL, *, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(path)
        if path.is_dir():  # what `gateway translator train --out DIR` wrote
            if not (path / DEFAULT_MODEL.name).is_file():
                raise ModelError(
                    f"{path} is a directory without {DEFAULT_MODEL.name}: give the model file,"
                    f" or the folder `gateway translator train --out` wrote"
                )
            path = path / DEFAULT_MODEL.name
        meta_path = path.with_name("meta.json")
        if not path.exists():
            raise ModelError(f"no translator model at {path} (run: gateway translator train)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{meta_path}: cannot read the model's class list: {exc}") from None
        if not isinstance(meta, dict):
            raise ModelError(f"{meta_path}: expected a JSON object with the model's classes")
        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self._session: Any = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X failed:<why>"
            why = str(exc).rpartition("failed:")[2].strip() or str(exc)
            raise ModelError(f"cannot load the translator model {path}: {why}") from None
        from gateway.translator.vocab import brick_classes

        self.classes: list[str] = list(meta.get("classes") or [c.name for c in brick_classes()])
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.meta: dict[str, Any] = meta
        _check_signature(path, self._session, len(self.classes))

    def predict(self, points: Sequence[Point]) -> Prediction:
        n = len(points)
        probs = np.zeros((n, len(self.classes)), dtype=np.float32)
        emb: Floats | None = None
        # Sorting by length keeps the padding of each chunk small.
        order = sorted(range(n), key=lambda i: len(points[i].name) + len(points[i].description))
        for start in range(0, n, CHUNK):
            idx = order[start : start + CHUNK]
            logits, e = self._session.run(None, encode([points[i] for i in idx]).feeds())
            logits = logits - logits.max(1, keepdims=True)
            p = np.exp(logits)
            probs[idx] = p / p.sum(1, keepdims=True)
            if emb is None:
                emb = np.zeros((n, e.shape[1]), dtype=np.float32)
            emb[idx] = e
        if emb is None:
            emb = np.zeros((0, 1), dtype=np.float32)
        return Prediction(probs, emb)


def _check_signature(path: Path, session: Any, classes: int) -> None:
    """Refuse another ONNX model (an anomaly model, say) now, in words, rather than with ONNX
    Runtime's complaint about missing inputs at the first prediction."""
    inputs = [i.name for i in session.get_inputs()]
    if sorted(inputs) != sorted(FEEDS):
        raise ModelError(
            f"{path}: not a translator model (its inputs are {', '.join(inputs) or 'none'}; "
            f"a translator's are {', '.join(FEEDS)})"
        )
    outputs = session.get_outputs()
    if len(outputs) != 2:
        raise ModelError(
            f"{path}: not a translator model ({len(outputs)} outputs; a translator has 2, "
            "class scores and an embedding)"
        )
    width = outputs[0].shape[-1] if outputs[0].shape else None
    if isinstance(width, int) and width != classes:
        raise ModelError(
            f"{path}: the model scores {width} classes but its class list (meta.json) has {classes}"
        )


@lru_cache(maxsize=4)
def load(path: str = str(DEFAULT_MODEL)) -> Translator:
    """One shared translator per model file (sessions are thread-safe for run)."""
    return Translator(path)


def top_k(probs: Floats, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most likely classes of each row, best first."""
    k = max(1, min(k, probs.shape[1]))
    out = []
    for lo in range(0, probs.shape[0], ROWS):
        block = probs[lo : lo + ROWS]
        idx = np.argpartition(-block, k - 1, axis=1)[:, :k]
        for row, cand in zip(block, idx, strict=True):
            cand = cand[np.argsort(-row[cand])]
            out.append([(classes[j], float(row[j])) for j in cand])
    return out
