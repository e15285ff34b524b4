"""Train the translator on the generated corpus, export it to ONNX and quantize it to int8.

``gateway translator train`` calls `run`. The shipped model is what the default settings give on
one CPU thread; the int8 model replaces the float one only if it keeps the synthetic held-out
accuracy within half a point.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway.translator.tokenize import BUCKETS, GRAMS, Batch, Point, encode
from gateway.translator.vocab import MODEL_DIR, brick_classes
from models.quiet import quiet_export
from models.translator.corpus import Renderer


@dataclass
class TrainConfig:
    steps: int = 7000
    batch: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1
    d: int = 96
    d_gram: int = 64
    layers: int = 2
    heads: int = 4
    ff: int = 192
    label_smoothing: float = 0.1
    parent_smoothing: float = 0.5  # share of label_smoothing given to the class's Brick ancestors
    prior: float = 0.6  # share of samples whose class is drawn by `prior.class_weights`
    only: tuple[str, ...] = ()  # train on these classes only (tests: a tiny corpus)

    def check(self) -> None:
        """ValueError naming the first setting no training can use, before any work: a batch
        of -1 fails in a reshape, 0 threads in torch, and steps of 0 or less export an
        untrained model."""
        for name in ("steps", "batch", "threads", "d", "d_gram", "layers", "heads", "ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"training setting {name} must be a positive integer, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"training setting lr must be a positive number, got {self.lr}")


def _tensors(batch: Batch) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(a) for a in (batch.ids, batch.seg, batch.pos, batch.rpos))


def soft_targets(n_classes: int, cfg: TrainConfig) -> Any:
    """(C, C) target rows: 1 - eps on the class, eps * parent_smoothing spread over its Brick
    ancestors (a parent is a near miss, ``Temperature_Setpoint`` for ``Air_Temperature_Setpoint``),
    the rest of eps uniform over all classes."""
    import torch

    classes = brick_classes()[:n_classes]
    index = {c.name: i for i, c in enumerate(classes)}
    eps = cfg.label_smoothing
    t = torch.full((n_classes, n_classes), eps / n_classes)
    for i, c in enumerate(classes):
        seen: set[int] = set()
        todo = list(c.parents)
        while todo:
            j = index.get(todo.pop())
            if j is not None and j not in seen:
                seen.add(j)
                todo.extend(classes[j].parents)
        share = eps * cfg.parent_smoothing if seen else 0.0
        t[i] *= (eps - share) / eps if eps else 0.0
        for j in seen:
            t[i, j] += share / len(seen)
        t[i, i] += 1.0 - eps
    return t


def train(cfg: TrainConfig, *, progress: bool = True) -> tuple[Any, list[float]]:
    """Returns the trained network (eval mode) and the loss of every step."""
    import torch
    from tqdm import tqdm

    from models.translator.net import TranslatorNet

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    renderer = Renderer(seed=cfg.seed)
    n_classes = len(renderer.classes)
    net = TranslatorNet(
        n_classes, d_gram=cfg.d_gram, d=cfg.d, layers=cfg.layers, heads=cfg.heads, ff=cfg.ff
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    targets = soft_targets(n_classes, cfg)
    only = [renderer.index[c] for c in cfg.only]
    losses: list[float] = []
    net.train()
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, mininterval=1.0)
    for _ in bar:
        samples = list(renderer.stream(cfg.batch, only, prior=cfg.prior))
        x = _tensors(encode([p for p, _ in samples]))
        y = torch.tensor([k for _, k in samples])
        logits, _ = net(*x)
        loss = -(targets[y] * torch.log_softmax(logits, -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    net.eval()
    return net, losses


def export_onnx(net: Any, path: Path) -> None:
    import torch

    example = _tensors(encode([Point("AHU1_SAT"), Point("Zone Temp", "room", "degF", "float")]))
    torch.onnx.export(
        net,
        example,
        str(path),
        input_names=["ids", "seg", "pos", "rpos"],
        output_names=["logits", "embedding"],
        dynamic_axes={
            "ids": {0: "batch", 1: "pieces"},
            "seg": {0: "batch", 1: "pieces"},
            "pos": {0: "batch", 1: "pieces"},
            "rpos": {0: "batch", 1: "pieces"},
            "logits": {0: "batch"},
            "embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )


def quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def synthetic_accuracy(model_path: Path, points: list[Point], labels: list[int]) -> float:
    from gateway.translator.model import Translator

    probs = Translator(model_path).predict(points).probs
    return float(np.mean(probs.argmax(1) == np.array(labels)))


def run_member(
    cfg: TrainConfig, final: Path, held_out: list[tuple[Point, int]], *, progress: bool = True
) -> dict[str, Any]:
    """Train one network, export it, keep int8 if it holds the synthetic held-out top-1."""
    start = time.monotonic()
    net, losses = train(cfg, progress=progress)
    train_s = time.monotonic() - start
    fp32 = final.with_suffix(".fp32.onnx")
    int8 = final.with_suffix(".int8.onnx")
    import torch

    # Kept outside the package: lets the export be redone without training again.
    checkpoint = Path(tempfile.gettempdir()) / f"translator-checkpoint-{cfg.seed}.pt"
    torch.save(net.state_dict(), checkpoint)
    with quiet_export():
        export_onnx(net, fp32)
        quantize(fp32, int8)
    points, labels = [p for p, _ in held_out], [k for _, k in held_out]
    acc_fp32 = synthetic_accuracy(fp32, points, labels)
    acc_int8 = synthetic_accuracy(int8, points, labels)
    use_int8 = acc_int8 >= acc_fp32 - 0.005
    (int8 if use_int8 else fp32).replace(final)
    (fp32 if use_int8 else int8).unlink()
    return {
        "seed": cfg.seed,
        "weights": "int8" if use_int8 else "float32",
        "synthetic_top1": {"float32": round(acc_fp32, 4), "int8": round(acc_int8, 4)},
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "train_seconds": round(train_s, 1),
    }


def run(
    cfg: TrainConfig, out_dir: Path = MODEL_DIR, *, members: int = 2, progress: bool = True
) -> dict[str, Any]:
    """Train ``members`` networks (seeds seed, seed+1, ...), merge them into one averaging ONNX
    graph (`ensemble.merge`); writes ``translator.onnx`` and ``meta.json`` to out_dir."""
    from gateway.cliargs import check_output_dir
    from models.translator.ensemble import merge

    cfg.check()
    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    check_output_dir(out_dir)  # a folder that cannot be made fails now, not after training
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    held_out = list(Renderer(seed=10_000 + cfg.seed).stream(4000))
    final = out_dir / "translator.onnx"
    parts = [out_dir / f"translator.member{k}.onnx" for k in range(members)]
    info = [
        run_member(replace(cfg, seed=cfg.seed + k), part, held_out, progress=progress)
        for k, part in enumerate(parts)
    ]
    merge(parts, final)
    for part in parts:
        part.unlink()
    points, labels = [p for p, _ in held_out], [k for _, k in held_out]
    meta = {
        "classes": [c.name for c in brick_classes()],
        "buckets": BUCKETS,
        "grams": GRAMS,
        "config": asdict(cfg),
        "members": info,
        "synthetic_top1": round(synthetic_accuracy(final, points, labels), 4),
        "train_seconds": round(sum(m["train_seconds"] for m in info), 1),
        "bytes": final.stat().st_size,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta
