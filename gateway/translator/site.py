"""Classify one site's point list: the site prior over the whole list, then the few-shot head."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.translator.fewshot import FewShot
from gateway.translator.model import Prediction, Translator
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
