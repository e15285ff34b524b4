"""Which points of a site to label first: the examples that teach the few-shot head the most.

A random handful of labels mostly repeats the site's commonest kinds of point. The picks here
are a greedy facility location (Nemhauser et al. 1978; ``1 - 1/e`` of the best coverage) over
the model's embeddings: a labeled point helps the points that look like it, by how much their
cosine exceeds ``FLOOR``, and each point counts by how unsure the model is of it (1 - its top
class probability) plus ``BASE_WEIGHT``, because a confident prediction on a real building can
still be wrong. So the picks cover the list's distinct kinds of point, the uncertain ones
first. Lazy greedy evaluation keeps it to a few model-free seconds for 20,000 points.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gateway.translator.model import Prediction

FLOOR = 0.5  # below this cosine a label says nothing about a point (the memory starts at 0.7)
BASE_WEIGHT = 0.2
CANDIDATES = 4000  # larger lists choose among a seeded sample of their points
BLOCK = 256  # candidates scored per matrix product: n x 256 floats at a time


def first_of_each(names: Sequence[str]) -> list[int]:
    """Indices of the first point of each distinct name, in list order. Labels are kept by name
    (``--examples``), so a name listed twice is one point to label: pick among these only."""
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name not in seen:
            seen.add(name)
            out.append(i)
    return out


def pick(
    pred: Prediction,
    count: int,
    *,
    labeled: npt.NDArray[np.float32] | None = None,
    seed: int = 0,
) -> list[int]:
    """Indices of ``count`` points of one site's list to label, most useful first. ``labeled``
    holds the embeddings of points labeled already: what they cover counts as covered."""
    n = pred.probs.shape[0]
    cands: npt.NDArray[np.int64] = np.arange(n)
    if n > CANDIDATES:
        cands = np.sort(np.random.default_rng(seed).choice(n, CANDIDATES, replace=False))
    count = min(count, len(cands))
    if count <= 0:
        return []
    emb = np.ascontiguousarray(pred.embeddings, dtype=np.float32)
    weight = (BASE_WEIGHT + 1.0 - pred.probs.max(axis=1)).astype(np.float32)
    cover = np.zeros(n, dtype=np.float32)
    if labeled is not None and len(labeled):
        cover = np.maximum(emb @ np.asarray(labeled, np.float32).T - FLOOR, 0.0).max(axis=1)
    heap: list[tuple[float, int]] = []
    for lo in range(0, len(cands), BLOCK):
        block = cands[lo : lo + BLOCK]
        gains = weight @ np.maximum(_reach(emb, block) - cover[:, None], 0.0)
        heap.extend((-float(g), int(j)) for g, j in zip(gains, block, strict=True))
    heapq.heapify(heap)
    chosen: list[int] = []
    while len(chosen) < count:
        _, j = heapq.heappop(heap)
        reach = _reach(emb, np.array([j]))[:, 0]
        gain = float(weight @ np.maximum(reach - cover, 0.0))
        # Gains only shrink as the cover grows: if j's fresh gain still beats every stale
        # bound, it is the best pick (lazy greedy, Minoux 1978).
        if heap and gain < -heap[0][0]:
            heapq.heappush(heap, (-gain, j))
            continue
        chosen.append(j)
        np.maximum(cover, reach, out=cover)
    return chosen


def _reach(emb: npt.NDArray[np.float32], cols: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """How much a label on each of ``cols`` tells about every point: cosine above ``FLOOR``."""
    out: npt.NDArray[np.float32] = np.maximum(emb @ emb[cols].T - FLOOR, 0.0)
    return out
