"""One site's point list: classify it (the site prior over the whole list, then the few-shot
head), and choose which of its points to label next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gateway.translator.fewshot import FewShot
from gateway.translator.model import Prediction, Translator
from gateway.translator.pick import pick
from gateway.translator.siteprior import reweight, site_weights
from gateway.translator.tokenize import Point


def predict_site(
    translator: Translator,
    points: Sequence[Point],
    examples: Sequence[tuple[Point, str]] = (),
    *,
    prior: bool = True,
) -> Prediction:
    """Class distributions for ``points``, one site's list. With ``prior`` the examples' names
    count in the site prior too (their labels only in the few-shot head). A listed point that
    an example names keeps the example's label (probability 1): the user said what it is."""
    examples = _described(points, examples)
    pred = _adapt(translator, points, examples, *_site_pass(translator, points, examples, prior))
    return _pinned(pred, points, examples, translator.index)


def _described(
    points: Sequence[Point], examples: Sequence[tuple[Point, str]]
) -> list[tuple[Point, str]]:
    """The examples, each one given only by name (a ``name,brick_class`` file) read with the
    description, unit and datatype of the listed point of that name: the head then learns
    from the point as the list shows it, not from a bare name the list never holds."""
    listed = {p.name: p for p in points}
    out = []
    for point, label in examples:
        row = listed.get(point.name)
        bare = not (point.description or point.unit or point.datatype)
        out.append((row if bare and row is not None else point, label))
    return out


def _pinned(
    pred: Prediction,
    points: Sequence[Point],
    examples: Sequence[tuple[Point, str]],
    index: Mapping[str, int],
) -> Prediction:
    """``pred`` with each point an example names set to that example's class."""
    labels = {p.name: label for p, label in examples}
    for i, point in enumerate(points):
        label = labels.get(point.name)
        if label is not None and label in index:
            pred.probs[i] = 0.0
            pred.probs[i, index[label]] = 1.0
    return pred


def pick_site(
    translator: Translator,
    points: Sequence[Point],
    count: int,
    examples: Sequence[tuple[Point, str]] = (),
    *,
    prior: bool = True,
) -> tuple[list[int], Prediction]:
    """Indices of the ``count`` points of ``points`` to label next, and the site's prediction.
    With ``examples`` (labeled so far) the uncertainty is the adapted model's, what they cover
    counts as covered, and a point whose name they label is never picked again."""
    examples = _described(points, examples)
    own, shown = _site_pass(translator, points, examples, prior)
    pred = _adapt(translator, points, examples, own, shown)
    done = {p.name for p, _ in examples}
    todo = np.array([i for i, p in enumerate(points) if p.name not in done], dtype=np.int64)
    labeled = shown.embeddings if examples else None
    got = pick(Prediction(pred.probs[todo], pred.embeddings[todo]), count, labeled=labeled)
    return [int(todo[j]) for j in got], pred


def _site_pass(
    translator: Translator,
    points: Sequence[Point],
    examples: Sequence[tuple[Point, str]],
    prior: bool,
) -> tuple[Prediction, Prediction]:
    """One model pass over the list and the examples' names (with the site prior over both):
    the list's prediction, then the examples'."""
    pred = translator.predict([*points, *(p for p, _ in examples)])
    n = len(points)
    if prior:
        # An example that is also in the list (classify IN.csv --examples IN-labeled.csv) is
        # one point of the site: counted once in the prior, not twice.
        listed = {p.name for p in points}
        keep = np.array([True] * n + [p.name not in listed for p, _ in examples], dtype=bool)
        kept = pred.probs if keep.all() else pred.probs[keep]  # no copy when all count
        pred = reweight(pred, site_weights(kept), in_place=True)  # fresh from the model
    own = Prediction(pred.probs[:n], pred.embeddings[:n])
    return own, Prediction(pred.probs[n:], pred.embeddings[n:])


def _adapt(
    translator: Translator,
    points: Sequence[Point],
    examples: Sequence[tuple[Point, str]],
    own: Prediction,
    shown: Prediction,
) -> Prediction:
    """The list's prediction through the few-shot head fitted on the examples (if any)."""
    if not examples:
        return own
    head = FewShot(translator, [p for p, _ in examples], [c for _, c in examples], shown)
    return head.adapt(own, points, in_place=True)  # own: rows of a fresh model pass
