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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.translator.fewshot import FewShot, features
from gateway.translator.model import ROWS, Floats, Prediction, Translator
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
        """The ``k`` best classes of each point, examples' names standing for their class."""
        names = Names([*points, *(p for p, _ in examples)], self)
        n = len(points)
        shown = np.arange(n, n + len(examples))
        return names.rank(np.arange(n), shown, [c for _, c in examples], k)


class Names:
    """One file's point names prepared for the baseline: the scores against the class names
    are computed once here (all names x the class texts, each distinct text once), so that a
    split only scores its points against its examples' names. It is what `Baseline.rank` does
    for one split; `evaluate` runs many splits over the same names."""

    def __init__(self, points: Sequence[Point], baseline: Baseline) -> None:
        texts = [_text(p.name) for p in points]
        self.baseline = baseline
        self.unique = sorted(set(texts))
        where = {t: i for i, t in enumerate(self.unique)}
        self.inverse = np.array([where[t] for t in texts], dtype=np.int64)
        self.class_sim = _wratio(self.unique, baseline.class_text)

    def rank(
        self,
        test: npt.NDArray[np.int64],
        shown: npt.NDArray[np.int64],
        labels: Sequence[str],
        k: int = 5,
    ) -> list[list[str]]:
        """The ``k`` best classes of the points ``test``, the points ``shown`` (labeled
        ``labels``) standing for their class after the class names."""
        cols = _wratio(self.unique, [self.unique[j] for j in self.inverse[shown]])
        choices = self.baseline.classes + list(labels)
        out = []
        for lo in range(0, len(test), ROWS):  # per-row work, ROWS points at a time
            rows = self.inverse[test[lo : lo + ROWS]]
            sim = np.concatenate([self.class_sim[rows], cols[rows]], axis=1)
            for order in np.argsort(-sim, axis=1, kind="stable"):
                ranked: list[str] = []
                for j in order:
                    if choices[j] not in ranked:
                        ranked.append(choices[j])
                    if len(ranked) == k:
                        break
                out.append(ranked)
        return out


def _wratio(queries: Sequence[str], choices: Sequence[str]) -> npt.NDArray[np.float32]:
    """(queries, choices) WRatio scores on all cores; the same numbers as one at a time."""
    from rapidfuzz import fuzz, process

    if not choices:  # cdist wants at least one choice
        return np.zeros((len(queries), 0), dtype=np.float32)
    sim: npt.NDArray[np.float32] = process.cdist(
        queries, choices, scorer=fuzz.WRatio, dtype=np.float32, workers=-1
    )
    return sim


SELECT = ("random", "pick")


def _ranked(probs: Floats, classes: Sequence[str], k: int = 5) -> list[list[str]]:
    idx = np.argsort(-probs, axis=1)[:, :k]
    return [[classes[j] for j in row] for row in idx]


def _subset(pred: Prediction, idx: npt.NDArray[np.int64]) -> Prediction:
    return Prediction(pred.probs[idx], pred.embeddings[idx])


def too_few(shots: Sequence[int], n: int) -> dict[str, str]:
    """The shot counts that leave no point to score among ``n`` labeled ones, with why."""
    return {str(k): f"{k} shots leave no point to evaluate ({n} labeled)" for k in shots if k >= n}


def evaluate(
    translator: Translator,
    data: Sequence[tuple[Point, str]],
    shots: Sequence[int],
    seeds: int,
    *,
    prior: bool = True,
    select: str = "random",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Average scores per shot count over seeds; the model runs once over all points. With
    ``prior`` the site prior comes from every point's name (the file is one site's list, as
    ``classify`` would see it with the examples); labels are used only as examples.
    ``progress`` is told what runs next (the model pass, each split). Every shot count must
    leave a point to score (see `too_few`).

    What does not change between splits is computed once: the model's pass, the head's name
    features of every point and the baseline's scores against the class names (`Names`); a
    split only fits the head and scores its points against its examples."""
    if select not in SELECT:
        raise ValueError(f"select: expected one of {', '.join(SELECT)}, got {select!r}")
    for why in too_few(shots, len(data)).values():
        raise ValueError(why)
    say = progress or (lambda _: None)
    say(f"model and baseline over {len(data)} points")
    points = [p for p, _ in data]
    labels = [c for _, c in data]
    base = translator.predict(points)
    if prior:
        base = with_site_prior(base, in_place=True)  # fresh from the model
    names = Names(points, Baseline(translator.classes))
    feats = [features(p) for p in points]  # the head's features, once per point
    result: dict[str, Any] = {}
    for k in shots:
        runs: dict[str, list[dict[str, float]]] = {"model": [], "baseline": []}
        # Zero shots or picked examples: every seed is the same split.
        splits = seeds if k and select == "random" else 1
        for seed in range(splits):
            say(f"{k} shots, split {seed + 1} of {splits}")
            if select == "pick":
                train = np.array(pick(base, k), dtype=np.int64)
                test = np.setdiff1d(np.arange(len(data)), train)
            else:
                order = np.random.default_rng(seed).permutation(len(data))
                train, test = order[:k], order[k:]
            truth = [labels[i] for i in test]
            adapted = FewShot(
                translator,
                [points[i] for i in train],
                [labels[i] for i in train],
                _subset(base, train),
            )
            # Ranked a block of scored points at a time: the adapted distributions of all of
            # them (N x 793) are never held at once.
            ranked = []
            for _, probs in adapted.adapted_rows(
                base, [points[i] for i in test], feats=[feats[i] for i in test], rows=test
            ):
                ranked += _ranked(probs, translator.classes)
            runs["model"].append(scores(truth, ranked))
            ranked = names.rank(test, train, [labels[i] for i in train])
            runs["baseline"].append(scores(truth, ranked))
        result[str(k)] = {
            who: {m: round(float(np.mean([r[m] for r in rs])), 4) for m in rs[0]}
            for who, rs in runs.items()
        }
    return result
