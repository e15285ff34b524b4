"""One site's point list: classify it (the site prior over the whole list, then the few-shot
head), and choose which of its points to label next."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.translator.fewshot import FewShot
from gateway.translator.model import Prediction, Translator
from gateway.translator.pick import pick
from gateway.translator.siteprior import with_site_prior
from gateway.translator.tokenize import Point


def predict_site(
    translator: Translator,
    points: Sequence[Point],
    examples: Sequence[tuple[Point, str]] = (),
    *,
    prior: bool = True,
) -> Prediction:
    """Class distributions for ``points``, one site's list. With ``prior`` the examples' names
    count in the site prior too (their labels only in the few-shot head)."""
    example_points = [p for p, _ in examples]
    pred = translator.predict([*points, *example_points])
    if prior:
        pred = with_site_prior(pred)
    n = len(points)
    own = Prediction(pred.probs[:n], pred.embeddings[:n])
    if not examples:
        return own
    shown = Prediction(pred.probs[n:], pred.embeddings[n:])
    head = FewShot(translator, example_points, [c for _, c in examples], shown)
    return head.adapt(own, points)


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
    pred = predict_site(translator, points, examples, prior=prior)
    done = {p.name for p, _ in examples}
    todo = np.array([i for i, p in enumerate(points) if p.name not in done], dtype=np.int64)
    labeled = translator.predict([p for p, _ in examples]).embeddings if examples else None
    got = pick(Prediction(pred.probs[todo], pred.embeddings[todo]), count, labeled=labeled)
    return [int(todo[j]) for j in got], pred
