"""Few-shot evaluation of the translator against a string-similarity baseline on the same splits.

For each shot count k and seed, k labeled points are drawn as the site's examples and the rest
are scored. With ``select="pick"`` the k examples are the ones `pick.pick` would ask the user to
label instead of a random draw (deterministic, so one run whatever the seeds). Top-1/top-5
count a hit when the predicted class is the label or its Room/Zone twin (see
`vocab.same_class`); macro-F1 averages the F1 of every class in the scored labels.

The baseline is rapidfuzz's WRatio between the point name and the candidates: the class names
(underscores as spaces) at zero shots, plus the examples' names (standing for their class) when
there are examples: the usual "closest known string" heuristic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.translator.fewshot import FewShot
from gateway.translator.model import Prediction, Translator
from gateway.translator.pick import pick
from gateway.translator.siteprior import with_site_prior
from gateway.translator.tokenize import Point, pieces
from gateway.translator.vocab import canonical, scoring_key


def scores(truth: Sequence[str], ranked: Sequence[Sequence[str]]) -> dict[str, float]:
    """top-1, top-5 and macro-F1 of ranked class lists (best first) against the labels."""
    t = [scoring_key(canonical(c)) for c in truth]
    r = [[scoring_key(c) for c in row] for row in ranked]
    n = len(t)
    top1 = sum(1 for a, row in zip(t, r, strict=True) if row and row[0] == a) / n
    top5 = sum(1 for a, row in zip(t, r, strict=True) if a in row[:5]) / n
    first = [row[0] if row else "" for row in r]
    tp = Counter(a for a, b in zip(t, first, strict=True) if a == b)
    predicted = Counter(first)
    actual = Counter(t)
    f1s = []
    for c in actual:
        p = tp[c] / predicted[c] if predicted[c] else 0.0
        rec = tp[c] / actual[c]
        f1s.append(2 * p * rec / (p + rec) if p + rec else 0.0)
    return {"top1": top1, "top5": top5, "macro_f1": float(np.mean(f1s))}


def _text(name: str) -> str:
    return " ".join(p for p in pieces(name) if p != "#")


class Baseline:
    """rapidfuzz WRatio against class names and example names."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.class_text = [c.replace("_", " ").lower() for c in classes]

    def rank(
        self, points: Sequence[Point], examples: Sequence[tuple[Point, str]] = (), k: int = 5
    ) -> list[list[str]]:
        from rapidfuzz import fuzz, process

        labels = self.classes + [c for _, c in examples]
        choices = self.class_text + [_text(p.name) for p, _ in examples]
        sim = process.cdist([_text(p.name) for p in points], choices, scorer=fuzz.WRatio)
        out = []
        for row in sim:
            ranked: list[str] = []
            for j in np.argsort(-row, kind="stable"):
                if labels[j] not in ranked:
                    ranked.append(labels[j])
                if len(ranked) == k:
                    break
            out.append(ranked)
        return out


SELECT = ("random", "pick")


def _ranked(pred: Prediction, classes: Sequence[str], k: int = 5) -> list[list[str]]:
    idx = np.argsort(-pred.probs, axis=1)[:, :k]
    return [[classes[j] for j in row] for row in idx]


def _subset(pred: Prediction, idx: npt.NDArray[np.int64]) -> Prediction:
    return Prediction(pred.probs[idx], pred.embeddings[idx])


def evaluate(
    translator: Translator,
    data: Sequence[tuple[Point, str]],
    shots: Sequence[int],
    seeds: int,
    *,
    prior: bool = True,
    select: str = "random",
) -> dict[str, Any]:
    """Average scores per shot count over seeds; the model runs once over all points. With
    ``prior`` the site prior comes from every point's name (the file is one site's list, as
    ``classify`` would see it with the examples); labels are used only as examples."""
    if select not in SELECT:
        raise ValueError(f"select: expected one of {', '.join(SELECT)}, got {select!r}")
    points = [p for p, _ in data]
    labels = [c for _, c in data]
    base = translator.predict(points)
    if prior:
        base = with_site_prior(base)
    baseline = Baseline(translator.classes)
    result: dict[str, Any] = {}
    for k in shots:
        if k >= len(data):
            raise ValueError(f"{k} shots leave no point to evaluate ({len(data)} labeled)")
        runs: dict[str, list[dict[str, float]]] = {"model": [], "baseline": []}
        # Zero shots or picked examples: every seed is the same split.
        for seed in range(seeds if k and select == "random" else 1):
            if select == "pick":
                train = np.array(pick(base, k), dtype=np.int64)
                test = np.setdiff1d(np.arange(len(data)), train)
            else:
                order = np.random.default_rng(seed).permutation(len(data))
                train, test = order[:k], order[k:]
            examples = [(points[i], labels[i]) for i in train]
            truth = [labels[i] for i in test]
            adapted = FewShot(
                translator,
                [points[i] for i in train],
                [labels[i] for i in train],
                _subset(base, train),
            )
            pred = adapted.adapt(_subset(base, test), [points[i] for i in test])
            runs["model"].append(scores(truth, _ranked(pred, translator.classes)))
            ranked = baseline.rank([points[i] for i in test], examples)
            runs["baseline"].append(scores(truth, ranked))
        result[str(k)] = {
            who: {m: round(float(np.mean([r[m] for r in rs])), 4) for m in rs[0]}
            for who, rs in runs.items()
        }
    return result
