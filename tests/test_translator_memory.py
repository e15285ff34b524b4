"""Translator commands on large lists: the per-row work runs a block of rows at a time and
`suggest` never holds the sources x targets weights; the numbers are those of one pass over
everything (bench/translator_memory.py measures the memory)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.translator import evaluate as evaluate_module
from gateway.translator import fewshot, model, suggest
from gateway.translator.evaluate import evaluate
from gateway.translator.fewshot import FewShot, features
from gateway.translator.model import Floats, Prediction, Translator, load, top_k
from gateway.translator.site import predict_site
from gateway.translator.siteprior import with_site_prior
from gateway.translator.tokenize import Point
from models.translator.sites import SiteRenderer, site


@pytest.fixture(scope="module")
def t() -> Translator:
    return load()


def _tiny_blocks(monkeypatch: pytest.MonkeyPatch, rows: int = 3) -> None:
    for module in (model, fewshot, evaluate_module):
        monkeypatch.setattr(module, "ROWS", rows)


def _reference_adapt(head: FewShot, pred: Prediction, points: list[Point]) -> Floats:
    """`FewShot.adapt` as one pass over all points (N x classes at once)."""
    z = np.log(np.maximum(pred.probs, 1e-12))
    x = head._x([features(p) for p in points], pred.embeddings)
    z[:, head.seen] += x @ head.w + head.b + head.beta
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    sims = pred.embeddings @ head.memory.T
    per_class = np.full(p.shape, -np.inf, dtype=np.float32)
    for j, label in enumerate(head.memory_labels):
        np.maximum(per_class[:, label], sims[:, j], out=per_class[:, label])
    best = per_class.max(1, keepdims=True)
    mem = np.exp((per_class - best) / fewshot.MEMORY_TEMPERATURE)
    mem /= mem.sum(1, keepdims=True)
    a = np.clip((best - fewshot.MEMORY_ONSET) / fewshot.MEMORY_SPAN, 0.0, 0.9)
    out: Floats = ((1 - a) * p + a * mem).astype(np.float32)
    return out


def test_adapting_a_block_of_rows_at_a_time_gives_the_same_numbers(
    t: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = site(3, points=40, classes=8)
    points = [p for p, _ in data]
    base = t.predict(points)
    head = FewShot(t, points[:10], [c for _, c in data[:10]], _rows(base, range(10)))
    rest = _rows(base, range(10, 40))
    want = _reference_adapt(head, rest, points[10:])
    _tiny_blocks(monkeypatch)
    assert np.array_equal(head.adapt(rest, points[10:]).probs, want)
    copy = Prediction(rest.probs.copy(), rest.embeddings)
    assert np.array_equal(head.adapt(copy, points[10:], in_place=True).probs, want)
    # the scored rows picked out of the whole list, without a copy of their distributions
    test = np.arange(10, 40)
    blocks = list(head.adapted_rows(base, points[10:], rows=test))
    assert [lo for lo, _ in blocks] == list(range(0, 30, 3))
    assert np.array_equal(np.concatenate([p for _, p in blocks]), want)


def _rows(pred: Prediction, idx: range) -> Prediction:
    i = np.array(idx)
    return Prediction(pred.probs[i], pred.embeddings[i])


def test_ranking_and_evaluating_in_blocks_gives_the_same_figures(
    t: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = site(5, points=60, classes=10)
    pred = with_site_prior(t.predict([p for p, _ in data]))
    want_top = top_k(pred.probs, t.classes, 3)
    want = evaluate(t, data, [0, 5, 20], 2)
    picked = evaluate(t, data, [5], 1, select="pick")
    _tiny_blocks(monkeypatch)
    assert top_k(pred.probs, t.classes, 3) == want_top
    assert evaluate(t, data, [0, 5, 20], 2) == want
    assert evaluate(t, data, [5], 1, select="pick") == picked


def test_the_site_prior_in_place_gives_the_same_numbers(t: Translator) -> None:
    pred = t.predict([p for p, _ in site(2, points=30, classes=6)])
    want = with_site_prior(pred).probs
    copy = Prediction(pred.probs.copy(), pred.embeddings)
    assert np.array_equal(with_site_prior(copy, in_place=True).probs, want)


def _reference_match(src: Prediction, tgt: Prediction) -> list[tuple[int, int, float]]:
    """The assignment as one sort of every pair that beats its source's "no match"."""
    w = suggest.attention(src, tgt)
    no_match = 1.0 - w.sum(1)
    strong = np.flatnonzero(w > no_match[:, None])
    taken_s: set[int] = set()
    taken_t: set[int] = set()
    out = []
    for flat in strong[np.argsort(-w.ravel()[strong], kind="stable")]:
        i, j = divmod(int(flat), w.shape[1])
        if i not in taken_s and j not in taken_t:
            taken_s.add(i)
            taken_t.add(j)
            out.append((i, j, float(w[i, j])))
    return sorted(out)


def _pairs(t: Translator, src: list[Point], tgt: list[Point]) -> list[tuple[int, int, float]]:
    """(source, target, confidence) of each pair `suggest.match` makes (names may repeat)."""
    names = [str(j) for j in range(len(tgt))]
    sources = [str(i) for i in range(len(src))]
    got = suggest.match(t, sources, predict_site(t, src), names, predict_site(t, tgt))
    return [(i, int(m.target), m.confidence) for i, m in enumerate(got) if m.target is not None]


@pytest.mark.parametrize("seed", [0, 1])
def test_suggest_matches_as_one_sort_of_all_pairs(
    t: Translator, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Sources keep a few candidates and get more from their block when they run out: the
    pairs are still taken in the order of one sort of all of them (ties: source, target)."""
    # names without digits: each is its own point (the model reads digits as one piece)
    data = site(seed, points=150, classes=12)
    src = _distinct(data)[:70]
    tgt = _distinct(_renamed(data, seed + 20))[:60]  # the same site in another system
    want = _reference_match(predict_site(t, src), predict_site(t, tgt))
    assert len(want) > 10
    monkeypatch.setattr(suggest, "CANDIDATES", 1)  # refills all the way down
    assert _pairs(t, src, tgt) == want
    # Blocks of 4 sources. A block's matrix products may differ from the whole list's in a
    # last bit (BLAS blocks by shape), and a pair of weight 1e-8 may then beat its "no match"
    # or not; so that the numbers are the same by construction, the weights are computed one
    # row at a time here, in the reference and in the blocks, and rounded to 1/32 so that
    # many pairs tie (taken by source, then target).
    whole = suggest._attention

    def by_row(src_root: Floats, src_emb: Floats, tgt_root: Floats, tgt_emb: Floats) -> Floats:
        rows = [
            whole(src_root[i : i + 1], src_emb[i : i + 1], tgt_root, tgt_emb)
            for i in range(len(src_root))
        ]
        out: Floats = np.round(np.concatenate(rows) * 32) / 32
        return out

    monkeypatch.setattr(suggest, "_attention", by_row)
    src = [p for p, _ in data[:70]]  # names that differ in digits only too
    tgt = [p for p, _ in _renamed(data, seed + 20)[:60]]
    want = _reference_match(predict_site(t, src), predict_site(t, tgt))
    assert len(want) > 10
    monkeypatch.setattr(suggest, "BLOCK_CELLS", 4 * len(tgt))
    assert _pairs(t, src, tgt) == want
    monkeypatch.setattr(suggest, "CANDIDATES", 3)
    assert _pairs(t, src, tgt) == want


def _renamed(data: list[tuple[Point, str]], seed: int) -> list[tuple[Point, str]]:
    """The same points (classes) named by another site's convention."""
    r = SiteRenderer(seed)
    index = {c.name: k for k, c in enumerate(r.classes)}
    return [(r.sample(index[c]), c) for _, c in data]


def _distinct(data: list[tuple[Point, str]]) -> list[Point]:
    seen: set[str] = set()
    out = []
    for p, _ in data:
        key = "".join(ch for ch in p.name if not ch.isdigit())
        if p.name and key not in seen:
            seen.add(key)
            out.append(p)
    return out
