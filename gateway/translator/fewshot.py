"""Few-shot adaptation: a small head fitted on a site's labeled examples, on top of the model.

The shipped model knows Brick and the usual abbreviations, not one building's habits. Given a
handful of labeled points, `FewShot` fits, in numpy and in milliseconds, a log-linear correction
to the model's class distribution:

    logit(c | x) = log p_model(c | x) + seen(c) * (beta + b_c + w_c . f(x))

where f(x) is the point's model embedding together with the name's pieces and piece pairs as the
site writes them (``zn``, ``zn t``: the naming convention, what Scrabble/Zodiac learn), and
seen(c) is 1 for the classes the examples use. Classes no example shows keep the model's relative
probabilities; ``beta`` is a fixed prior boost of the classes the site is known to use (x11; a
leave-one-out fit of it did worse on synthetic sites). b and w are fitted by L2-regularized
maximum likelihood (Adam, fixed steps, from zero, so with no signal the head stays the prior). A
nearest-neighbour vote over the examples' embeddings is blended in for near-copies of an example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from gateway.translator.model import ROWS, Floats, Prediction, Translator
from gateway.translator.tokenize import Point, pieces
from gateway.translator.vocab import canonical

BETA = float(np.log(11.0))  # seen classes x11 a priori: a site uses few of the ~800
L2 = 0.01  # weight decay on b and w (chosen on synthetic sites, models/translator/sites.py)
STEPS = 150
LEARNING_RATE = 0.1
TOKEN_WEIGHT = 1.0  # scale of the name features against the unit-length embedding
MEMORY_TEMPERATURE = 0.05
# The vote's weight grows from 0 at this cosine to 0.9 at MEMORY_ONSET + 0.9 * MEMORY_SPAN. A
# sibling of an example (its setpoint, its alarm) sits at moderate cosines and must not follow
# it: onset 0.5 / span 0.4 pulled such points into the example's class (sites.sibling_site).
MEMORY_ONSET = 0.7
MEMORY_SPAN = 0.3


def features(p: Point) -> list[str]:
    """The head's name features of a point (besides its embedding): pieces, piece pairs,
    description pieces, unit."""
    ps = [x for x in pieces(p.name) if x != "#"]
    feats = set(ps)
    feats.update(f"{a} {b}" for a, b in zip(ps, ps[1:], strict=False))
    feats.update(f"d:{x}" for x in pieces(p.description) if x != "#")
    if p.unit:
        feats.add(f"u:{p.unit.strip().lower()}")
    return sorted(feats)


def known_to(
    translator: Translator, examples: Sequence[tuple[Point, str]]
) -> tuple[list[tuple[Point, str]], list[str]]:
    """The examples whose class ``translator`` scores, and the labels of those it does not
    (a model trained on fewer classes than Brick's): the head cannot learn a class the model
    has no output for, so those are left out and said, as unknown labels are."""
    kept = [(p, c) for p, c in examples if canonical(c) in translator.index]
    left = sorted({c for _, c in examples if canonical(c) not in translator.index})
    return kept, left


class FewShot:
    """A translator adapted to one site by labeled examples (``name,brick_class``)."""

    def __init__(
        self,
        translator: Translator,
        points: Sequence[Point],
        labels: Sequence[str],
        base: Prediction,
        *,
        l2: float = L2,
        steps: int = STEPS,
        token_weight: float = TOKEN_WEIGHT,
        memory: bool = True,
        beta: float = BETA,
    ) -> None:
        self.t = translator
        known = [canonical(c) for c in labels]
        unknown = sorted({c for c in known if c not in translator.index})
        if unknown:
            raise ValueError(f"unknown Brick class(es) in the examples: {', '.join(unknown[:5])}")
        self.token_weight = token_weight
        self.use_memory = memory
        y_full = np.array([translator.index[c] for c in known], dtype=np.int64)
        self.seen = np.unique(y_full)  # (S,) class ids the head corrects
        n, s = len(known), len(self.seen)
        self.vocab: dict[str, int] = {}
        feats = [features(p) for p in points]
        for fs in feats:
            for f in fs:
                self.vocab.setdefault(f, len(self.vocab))
        self.memory = base.embeddings
        self.memory_labels = y_full
        self.beta = beta
        self.w = np.zeros((base.embeddings.shape[1] + len(self.vocab), s), dtype=np.float32)
        self.b = np.zeros(s, dtype=np.float32)
        if n:
            y = np.searchsorted(self.seen, y_full)
            logp = np.log(np.maximum(base.probs, 1e-12))
            self._fit(logp, self._x(feats, base.embeddings), y, l2, steps)

    @classmethod
    def fit(cls, translator: Translator, examples: Sequence[tuple[Point, str]]) -> FewShot:
        """One model pass over the examples, then the head's fit (numpy, milliseconds)."""
        points = [p for p, _ in examples]
        return cls(translator, points, [c for _, c in examples], translator.predict(points))

    def _x(self, feats: Sequence[Sequence[str]], emb: Floats) -> Floats:
        tok = np.zeros((len(feats), len(self.vocab)), dtype=np.float32)
        for i, fs in enumerate(feats):
            ids = [j for f in fs if (j := self.vocab.get(f)) is not None]
            if ids:
                tok[i, ids] = self.token_weight / np.sqrt(len(ids))
        return np.concatenate([emb, tok], axis=1)

    def _fit(
        self, logp: Floats, x: Floats, y: npt.NDArray[np.int64], l2: float, steps: int
    ) -> None:
        n = len(y)
        onehot = np.zeros((n, len(self.seen)), dtype=np.float32)
        onehot[np.arange(n), y] = 1.0
        params = [self.w, self.b]
        m = [np.zeros_like(q) for q in params]
        v = [np.zeros_like(q) for q in params]
        for step in range(1, steps + 1):
            delta = x @ self.w + self.b + self.beta
            z = logp.copy()
            z[:, self.seen] += delta
            z -= z.max(1, keepdims=True)
            pz = np.exp(z)
            pz /= pz.sum(1, keepdims=True)
            g = (pz[:, self.seen] - onehot) / n
            grads = [x.T @ g + l2 * self.w, g.sum(0) + l2 * self.b]
            for q, gq, mq, vq in zip(params, grads, m, v, strict=True):
                mq *= 0.9
                mq += 0.1 * gq
                vq *= 0.999
                vq += 0.001 * gq * gq
                mhat = mq / (1 - 0.9**step)
                vhat = vq / (1 - 0.999**step)
                q -= LEARNING_RATE * mhat / (np.sqrt(vhat) + 1e-8)

    def predict(self, points: Sequence[Point]) -> Prediction:
        return self.adapt(self.t.predict(points), points)

    def adapt(
        self,
        pred: Prediction,
        points: Sequence[Point],
        *,
        feats: Sequence[Sequence[str]] | None = None,
        in_place: bool = False,
    ) -> Prediction:
        """The model's prediction for ``points``, adapted to the site; ``feats``, the points'
        `features` when the caller has them already (evaluate adapts the same points often).
        ``in_place`` writes the result over ``pred.probs`` (a block is read before it is
        written): for a prediction nothing else holds."""
        n = pred.probs.shape[0]
        if not n or not len(self.memory_labels):
            return pred
        probs = pred.probs if in_place else np.empty_like(pred.probs)
        for lo, p in self.adapted_rows(pred, points, feats=feats):
            probs[lo : lo + len(p)] = p
        return Prediction(probs, pred.embeddings)

    def adapted_rows(
        self,
        pred: Prediction,
        points: Sequence[Point],
        *,
        feats: Sequence[Sequence[str]] | None = None,
        rows: npt.NDArray[np.int64] | None = None,
    ) -> Iterator[tuple[int, Floats]]:
        """`adapt`'s distributions, ``ROWS`` points at a time: (first row, their (r, classes)
        rows), so that a caller who only ranks them never holds N x classes of them. With
        ``rows`` the points are those rows of ``pred`` (evaluate's scored points, without a
        copy of their distributions). The head's and the memory's matrix products run once
        over all points, as `adapt` always ran them; only per-row work is blocked, so every
        number is what one pass over all points gives."""
        emb = pred.embeddings if rows is None else pred.embeddings[rows]
        n = len(emb)
        if not n:
            return
        if not len(self.memory_labels):  # no examples: the model's own distributions
            for lo in range(0, n, ROWS):
                hi = min(n, lo + ROWS)
                yield lo, pred.probs[lo:hi] if rows is None else pred.probs[rows[lo:hi]]
            return
        if feats is None:
            feats = [features(p) for p in points]
        delta = self._x(feats, emb) @ self.w + self.b + self.beta  # (N, seen classes)
        sims = emb @ self.memory.T if self.use_memory else None  # (N, examples)
        for lo in range(0, n, ROWS):
            hi = min(n, lo + ROWS)
            probs = pred.probs[lo:hi] if rows is None else pred.probs[rows[lo:hi]]
            z = np.log(np.maximum(probs, 1e-12))
            z[:, self.seen] += delta[lo:hi]
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            if sims is not None:
                p = self._blend_memory(p, sims[lo:hi])
            yield lo, p.astype(np.float32, copy=False)

    def _blend_memory(self, p: Floats, sims: Floats) -> Floats:
        """A near-copy of an example (cosine near 1) follows that example's class; ``sims``,
        the points' cosines to the examples."""
        n = p.shape[0]
        per_class = np.full((n, p.shape[1]), -np.inf, dtype=np.float32)
        for j, label in enumerate(self.memory_labels):
            np.maximum(per_class[:, label], sims[:, j], out=per_class[:, label])
        best = per_class.max(1, keepdims=True)
        mem = np.exp((per_class - best) / MEMORY_TEMPERATURE)
        mem /= mem.sum(1, keepdims=True)
        a = np.clip((best - MEMORY_ONSET) / MEMORY_SPAN, 0.0, 0.9)
        out: Floats = (1 - a) * p + a * mem
        return out
