"""Match one system's points to another's and write the proposal as a bridge for review.

Matching is one cross-attention step: each source point (the query) attends over all candidate
target points (the keys) with logits from (a) the Bhattacharyya overlap of the two class
distributions and (b) the cosine of the two embeddings, plus one "no match" key of fixed
similarity (a dustbin, as in SuperGlue), so a source unlike every target keeps its weight there
instead of spreading it over whatever targets exist; the attention weight of a target is the
confidence of that mapping. Targets are then assigned one-to-one, most confident first, so two
sources never land on the same target. A high weight alone is not trusted: two vague class
distributions (a made-up code reads as "some Sensor") overlap as well as two sure ones, so a
mapping is written as confident only if the two sides' top classes agree (the same class, or one a
Brick ancestor of the other short of a bare kind of point such as ``Sensor``) and each side's top
class has at least ``UNSURE`` probability (`review_reason`). What the names share beyond the
class is evidence too (`_Names`): the same name (confident whatever the classes), an equipment
id in common or of the same kind but another number; and a pair for whose target another source
of the class is about as good (``RIVAL``) is written for review. Nothing is applied: the bridge is
written with ``approved: false``, which `gateway validate` rejects until the user has reviewed it.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import yaml

from gateway.config.translate import NO_TARGET
from gateway.translator.model import Floats, Prediction, Translator
from gateway.translator.tokenize import Point
from gateway.translator.vocab import brick_classes, canonical, same_class

TEMPERATURE = 0.05  # attention temperature over the combined similarity
# Similarity of the "no match" key: about what the best unrelated target reaches (median best
# other-class similarity 0.28 between two synthetic sites, models/translator/sites.py).
NO_MATCH = 0.3
# A pair's similarity: OVERLAP x the overlap of the two class distributions + COSINE x the
# cosine of the two embeddings.
OVERLAP, COSINE = 0.7, 0.3
# Below this top-class probability a side's class is a guess: a confident mapping needs both
# sides at or above it. Chosen on synthetic data only (docs/translator.md, Matching): the made-up
# codes that agreed on a specific class did so under 0.3 (``H9`` / ``H6``, both
# Temperature_Sensor at 0.22), while few right pairs of two synthetic sites are that unsure.
UNSURE = 0.3
# What the names share beyond the class, added to a pair's similarity (before the temperature):
# the same name once case, separators and leading zeros are set aside (the same point); an
# equipment or instance id in both (``AHU-01`` / ``ahu_1`` / ``AHU1``), or ids of the same kind
# with other numbers and none in common (``AHU2`` / ``ahu1``: other equipment), taken off.
SAME_NAME = 0.5
SAME_EQUIPMENT = 0.15
# A source whose similarity to a pair's target (with the evidence above) is within RIVAL of the
# chosen source's, and of the same top class, is about as good a match: the choice between them
# is arbitrary, so the pair is written for review.
RIVAL = 0.05
# letters+digits read as a formula or a size, not an equipment id
_NOT_IDS = frozenset({"co2", "h2o", "no2", "so2", "o2", "o3", "ch4", "nh3", "pm1", "pm2", "pm10"})
_PIECE = re.compile(r"[^\W\d_]+|\d+")


@dataclass(frozen=True, slots=True)
class Match:
    source: str
    target: str | None
    confidence: float
    source_class: str
    target_class: str | None
    source_prob: float = 0.0  # the probability of source_class (the source's top class)
    target_prob: float = 0.0  # the probability of target_class
    same_name: bool = False  # the two names are the same but for case, separators, zeros
    equipment: str = ""  # the ids the two names share ("ahu1"), or "" if none
    other_equipment: str = ""  # "ahu2 / ahu1": the same kind of id, other numbers, none shared
    rivals: int = 0  # other sources of this class about as good a match for the target


@lru_cache(maxsize=1)
def _ancestors() -> dict[str, frozenset[str]]:
    """Brick point class -> all its ancestors (parents, their parents, ...)."""
    parents = {c.name: c.parents for c in brick_classes()}
    out: dict[str, frozenset[str]] = {}
    for name in parents:
        seen: set[str] = set()
        todo = list(parents[name])
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(parents.get(p, ()))
        out[name] = frozenset(seen)
    return out


@lru_cache(maxsize=1)
def _kinds() -> frozenset[str]:
    """The bare kinds of point (``Sensor``, ``Command``, ``Status``, ...: Point's children),
    what the model falls back to for a name it cannot read."""
    return frozenset(c.name for c in brick_classes() if c.parents == ("Point",))


def review_reason(m: Match) -> str | None:
    """Why a mapping of any weight still needs review, or None: the two top classes differ
    (neither the same nor one an ancestor of the other), agree only as a bare kind of point,
    or a side's top class is under ``UNSURE`` probability."""
    if m.target is None or m.target_class is None:
        return NO_TARGET
    if m.rivals:
        n = m.rivals + 1
        whose = (
            "the names do not settle which" if m.equipment else "none names the target's equipment"
        )
        return f"{n} sources of this class; {whose}"
    if m.same_name:
        return None  # the same point name on both sides: evidence enough, whatever the classes
    reasons = []
    a, b = canonical(m.source_class), canonical(m.target_class)
    anc = _ancestors()
    if same_class(a, b):
        general = a
    elif b in anc.get(a, ()):
        general = b
    elif a in anc.get(b, ()):
        general = a
    else:
        general = None
        reasons.append("classes differ")
    if general is not None and general in _kinds():
        reasons.append(f"classes agree only as {general}")
    unsure_s, unsure_t = m.source_prob < UNSURE, m.target_prob < UNSURE
    if unsure_s or unsure_t:
        side = "both" if unsure_s and unsure_t else "the source" if unsure_s else "the target"
        reasons.append(f"unsure of {side}")
    if m.other_equipment:
        reasons.append(f"other equipment ({m.other_equipment})")
    return ", ".join(reasons) or None


def confident(m: Match, threshold: float) -> bool:
    """Written as an active line: a target, a weight at ``threshold`` or more, and no reason
    to review it (`review_reason`)."""
    return m.target is not None and m.confidence >= threshold and review_reason(m) is None


def attention(src: Prediction, tgt: Prediction) -> Floats:
    """(S, T) attention weights of each source over the targets, from the model's output alone
    (`match` adds what the names share); a row sums to less than 1 by the weight of "no match"."""
    return _attention(np.sqrt(src.probs), src.embeddings, np.sqrt(tgt.probs), tgt.embeddings)


def _similarity(src_root: Floats, src_emb: Floats, tgt_root: Floats, tgt_emb: Floats) -> Floats:
    """(S, T) similarity from the square roots of the class distributions (the targets' are
    taken once for all the blocks of sources) and the embeddings."""
    # In place where it can be (the same numbers): 0.7 * overlap + 0.3 * cosine, and so on.
    sim = src_root @ tgt_root.T
    sim *= OVERLAP
    cosine = src_emb @ tgt_emb.T
    cosine *= COSINE
    sim += cosine
    return sim


def _attention(src_root: Floats, src_emb: Floats, tgt_root: Floats, tgt_emb: Floats) -> Floats:
    """`attention` from the square roots of the class distributions."""
    sim = _similarity(src_root, src_emb, tgt_root, tgt_emb)
    logits = np.concatenate([sim, np.full((sim.shape[0], 1), NO_MATCH, sim.dtype)], 1)
    del sim
    logits /= TEMPERATURE
    logits -= logits.max(1, keepdims=True)
    w = np.exp(logits, out=logits)
    w /= w.sum(1, keepdims=True)
    weights: Floats = w[:, :-1]
    return weights


def _with_bonus(w: Floats, bonus: Floats) -> None:
    """Attention weights ``w`` (in place) as if ``bonus`` had been added to the similarities:
    a weight times exp(bonus / temperature), the row ("no match" included) summing to 1 again.
    Rows without evidence are left as they are, to the bit."""
    rows = np.flatnonzero(bonus.any(1))
    if not len(rows):
        return
    sub = w[rows]
    no_match = np.maximum(1.0 - sub.sum(1), 0.0)
    sub *= np.exp(bonus[rows] / TEMPERATURE)
    sub /= (no_match + sub.sum(1))[:, None]
    w[rows] = sub


def _pieces(name: str) -> list[str]:
    """The letter and digit runs of a name, lower case, digits without leading zeros."""
    return [p.lstrip("0") or "0" if p.isdigit() else p for p in _PIECE.findall(name.lower())]


def _ids(pieces: Sequence[str]) -> frozenset[tuple[str, str]]:
    """Equipment or instance ids, (kind, number): letters followed by digits, whatever was
    between them (``AHU-01``, ``ahu_1``, ``AHU1`` -> ("ahu", "1")), less chemical formulas."""
    return frozenset(
        (a, b)
        for a, b in zip(pieces, pieces[1:], strict=False)
        if b.isdigit() and not a.isdigit() and a + b not in _NOT_IDS
    )


def _named(key: str) -> bool:
    """A name's key that is evidence when the other side has it too: one with a letter (a bare
    number is an address or an index, which two systems number each their own way)."""
    return any(not p.isdigit() for p in key.split())


class _Names:
    """What two point names share beyond their classes: the same name, an equipment id."""

    def __init__(self, sources: Sequence[str], targets: Sequence[str]) -> None:
        src = [_pieces(n) for n in sources]
        tgt = [_pieces(n) for n in targets]
        self.src_key = [" ".join(p) for p in src]
        self.tgt_key = [" ".join(p) for p in tgt]
        self.src_ids = [_ids(p) for p in src]
        self.tgt_ids = [_ids(p) for p in tgt]
        self.n_t = len(targets)
        by_key: dict[str, list[int]] = defaultdict(list)
        by_id: dict[tuple[str, str], list[int]] = defaultdict(list)
        by_kind: dict[str, list[int]] = defaultdict(list)
        for j, (key, ids) in enumerate(zip(self.tgt_key, self.tgt_ids, strict=True)):
            if _named(key):
                by_key[key].append(j)
            for kind_id in ids:
                by_id[kind_id].append(j)
            for kind in {k for k, _ in ids}:
                by_kind[kind].append(j)
        self.by_key = {k: np.array(v, np.int64) for k, v in by_key.items()}
        self.by_id = {k: np.array(v, np.int64) for k, v in by_id.items()}
        self.by_kind = {k: np.array(v, np.int64) for k, v in by_kind.items()}

    def bonus(self, lo: int, hi: int, dtype: npt.DTypeLike) -> Floats:
        """(hi - lo, T) evidence of sources ``lo`` to ``hi`` for each target: ``SAME_NAME``
        for the same name, ``SAME_EQUIPMENT`` for an id in common, minus it for ids of a kind
        both have but none in common."""
        out = np.zeros((hi - lo, self.n_t), dtype)
        none = np.zeros(0, np.int64)
        for r, i in enumerate(range(lo, min(hi, len(self.src_key)))):
            same = self.by_key.get(self.src_key[i])
            if same is not None:
                out[r, same] += SAME_NAME
            ids = self.src_ids[i]
            if ids:
                kinds = {k for k, _ in ids}
                of_kind = np.unique(np.concatenate([self.by_kind.get(k, none) for k in kinds]))
                shared = np.unique(np.concatenate([self.by_id.get(x, none) for x in ids]))
                out[r, of_kind] -= SAME_EQUIPMENT  # a target sharing an id has one of the kinds
                out[r, shared] += 2 * SAME_EQUIPMENT
        return out

    def same_name(self, i: int, j: int) -> bool:
        return _named(self.src_key[i]) and self.src_key[i] == self.tgt_key[j]

    def pair_bonus(self, i: int, j: int) -> float:
        """`bonus` of source ``i`` for target ``j`` alone."""
        a, b = self.src_ids[i], self.tgt_ids[j]
        out = SAME_NAME if self.same_name(i, j) else 0.0
        if a & b:
            out += SAME_EQUIPMENT
        elif {k for k, _ in a} & {k for k, _ in b}:
            out -= SAME_EQUIPMENT
        return out

    def pair(self, i: int, j: int) -> tuple[bool, str, str]:
        """Source ``i`` and target ``j``: the same name, the ids they share, the ids of a kind
        both have that differ (when none is shared), as `Match` keeps them."""
        a, b = self.src_ids[i], self.tgt_ids[j]
        shared = a & b
        other = ""
        if not shared:
            kinds = {k for k, _ in a} & {k for k, _ in b}
            if kinds:
                other = " / ".join(
                    ",".join(sorted(k + n for k, n in ids if k in kinds)) for ids in (a, b)
                )
        return (
            self.same_name(i, j),
            ",".join(sorted(k + n for k, n in shared)),
            other,
        )


# Memory: the weights of every source over every target (S x T) are never held. They are
# computed BLOCK_CELLS at a time (a block of sources against all targets), and each source keeps
# only its CANDIDATES strongest targets that beat its "no match"; a source that has used them
# up (all taken by stronger pairs) while it has more gets its next ones from its block computed
# again, the same way (so with the same numbers). The pairs are then taken in the order of one
# sort of all of them, strongest first (ties: source, then target, in list order): the merge
# of the per-source lists gives that order without the list of all pairs.
BLOCK_CELLS = 1 << 22  # source x target weights per block (16 MB of float32, a few such live)
CANDIDATES = 32  # strongest targets kept per source at first; each refill keeps 4x more


class _Weights:
    """The attention weights of the sources over the targets, a block of sources at a time."""

    def __init__(self, src: Prediction, tgt: Prediction, names: _Names | None = None) -> None:
        self.src = src  # its square roots a block at a time: one S x classes matrix less
        self.names = names
        self.tgt_root = np.sqrt(tgt.probs)
        self.tgt_emb = tgt.embeddings
        n, t = len(src.probs), len(tgt.probs)
        self.rows = max(1, BLOCK_CELLS // max(1, t))  # sources per block
        self.blocks = range(0, n, self.rows)

    def block(self, lo: int) -> tuple[Floats, Floats]:
        """The weights of sources ``lo`` to ``lo + rows`` (always the same block boundaries,
        so the same numbers each time), and their "no match" weights."""
        hi = min(lo + self.rows, len(self.src.probs))
        root = np.sqrt(self.src.probs[lo:hi])
        w = _attention(root, self.src.embeddings[lo:hi], self.tgt_root, self.tgt_emb)
        if self.names is not None:
            _with_bonus(w, self.names.bonus(lo, hi, w.dtype))
        no_match: Floats = 1.0 - w.sum(1)
        return w, no_match

    def similarity(self, lo: int) -> Floats:
        """The similarities of the block at ``lo``, the names' evidence added."""
        hi = min(lo + self.rows, len(self.src.probs))
        root = np.sqrt(self.src.probs[lo:hi])
        sim = _similarity(root, self.src.embeddings[lo:hi], self.tgt_root, self.tgt_emb)
        if self.names is not None:
            sim += self.names.bonus(lo, hi, sim.dtype)
        return sim


def _strongest(
    w: Floats, valid: npt.NDArray[np.bool_], count: npt.NDArray[np.int64]
) -> tuple[list[tuple[npt.NDArray[np.int32], Floats]], npt.NDArray[np.bool_]]:
    """For each row, its ``count`` strongest ``valid`` columns (with their weights), strongest
    first, ties by column; and whether the row has more valid columns than those."""
    out = []
    n_valid = valid.sum(1)
    for r in range(w.shape[0]):
        k = int(min(count[r], n_valid[r]))
        if not k:
            out.append((np.zeros(0, np.int32), np.zeros(0, w.dtype)))
            continue
        cols = np.flatnonzero(valid[r])
        ws = w[r, cols]
        if k < len(cols):
            kth = np.partition(ws, len(ws) - k)[len(ws) - k]  # the k-th strongest weight
            above = ws > kth
            ties = np.flatnonzero(ws == kth)[: k - int(above.sum())]  # the first columns
            keep = np.sort(np.concatenate([np.flatnonzero(above), ties]))
            cols, ws = cols[keep], ws[keep]
        order = np.lexsort((cols, -ws))
        out.append((cols[order].astype(np.int32), ws[order]))  # 8 bytes a candidate
    return out, n_valid > count


def match(
    translator: Translator,
    sources: Sequence[str],
    src: Prediction,
    targets: Sequence[str],
    tgt: Prediction,
) -> list[Match]:
    """One target (or none) per source, one source per target, best pairs first; a pair weaker
    than the source's "no match" weight is not made, so its target stays free for others."""
    n_s, n_t = len(src.probs), len(tgt.probs)
    cls_s = src.probs.argmax(1)
    cls_t = tgt.probs.argmax(1)
    top_s = src.probs.max(1)
    top_t = tgt.probs.max(1)
    names = _Names(sources, targets)
    weights = _Weights(src, tgt, names)
    lists: dict[int, tuple[npt.NDArray[np.int32], Floats]] = {}  # live sources' candidates
    more: dict[int, bool] = {}  # source -> it has candidates past its list
    done: dict[int, tuple[float, int]] = {}  # source -> its last pair passed over (weight, j)
    version = np.zeros(n_s, dtype=np.int64)  # heap entries of an older list are stale
    want = np.full(n_s, CANDIDATES, dtype=np.int64)
    # (-weight, source, target, position in its list, list version)
    heap: list[tuple[float, int, int, int, int]] = []
    pending: list[tuple[float, int, int]] = []  # sources out of candidates: their last pair
    taken_s: set[int] = set()
    taken_t: set[int] = set()
    chosen: dict[int, tuple[int, float]] = {}

    def fill(lo: int, who: npt.NDArray[np.int64]) -> None:
        """New candidate lists for the sources ``who`` of the block at ``lo``: their strong
        pairs with a free target that come after the last pair each passed over."""
        w, no_match = weights.block(lo)
        rows = who - lo
        whole = len(rows) == len(w)  # the whole block (rows are in order): no copy
        sub = w if whole else w[rows]
        valid = sub > (no_match if whole else no_match[rows])[:, None]
        if taken_t:
            valid[:, sorted(taken_t)] = False
        for r, i in enumerate(who):
            if (last := done.get(int(i))) is not None:
                wb, jb = last
                valid[r] &= (sub[r] < wb) | ((sub[r] == wb) & (np.arange(n_t) > jb))
        got, over = _strongest(sub, valid, want[who])
        for (cols, ws), i, m in zip(got, who, over, strict=True):
            i = int(i)
            version[i] += 1
            more[i] = bool(m)
            lists.pop(i, None)
            if len(cols):
                lists[i] = (cols, ws)
                heapq.heappush(heap, (-float(ws[0]), i, int(cols[0]), 0, int(version[i])))

    for lo in weights.blocks:
        fill(lo, np.arange(lo, min(n_s, lo + weights.rows)))
    while (heap or pending) and len(taken_s) < n_s and len(taken_t) < n_t:
        if pending and (not heap or heap[0][:3] > pending[0]):
            # A pending source's pairs still to come are all weaker than its last one, and
            # the next pair may be one of them: compute its block again and give every live
            # source of that block a list 4x deeper, less the targets taken since (a block
            # costs the same for one source or all; deepening only the pending ones cost 8x
            # the block computations on 20,000 points).
            blocks = sorted({i - i % weights.rows for _, i, _ in pending})
            pending.clear()
            for lo in blocks:
                live = [i for i in range(lo, min(n_s, lo + weights.rows)) if i in lists or more[i]]
                who = np.array(live, dtype=np.int64)
                want[who] *= 4
                fill(lo, who)
            continue
        negw, i, j, at, ver = heapq.heappop(heap)
        if ver != version[i]:
            continue  # the list it came from was replaced
        done[i] = (-negw, j)
        if j not in taken_t:
            taken_s.add(i)
            taken_t.add(j)
            chosen[i] = (j, -negw)
            del lists[i]
            more[i] = False
            continue
        cols, ws = lists[i]
        if at + 1 < len(cols):
            heapq.heappush(heap, (-float(ws[at + 1]), i, int(cols[at + 1]), at + 1, ver))
        else:
            del lists[i]
            if more[i]:
                heapq.heappush(pending, (negw, i, j))
    rivals = _rivals(weights, chosen, cls_s)
    out = []
    for i, name in enumerate(sources):
        sc = translator.classes[int(cls_s[i])]
        ps = float(top_s[i])
        if i in chosen:
            j, conf = chosen[i]
            tc = translator.classes[int(cls_t[j])]
            same, shared, other = names.pair(i, j)
            out.append(
                Match(
                    name,
                    targets[j],
                    conf,
                    sc,
                    tc,
                    ps,
                    float(top_t[j]),
                    same,
                    shared,
                    other,
                    rivals.get(i, 0),
                )
            )
        else:
            out.append(Match(name, None, 0.0, sc, None, ps))
    return out


def _rivals(
    weights: _Weights, chosen: dict[int, tuple[int, float]], cls_s: npt.NDArray[np.intp]
) -> dict[int, int]:
    """Chosen source -> how many other sources of its top class have a similarity to its target
    within ``RIVAL`` of its own: as good a match but for noise (a block of sources at a time)."""
    if not chosen:
        return {}
    who = np.array(sorted(chosen), np.int64)
    cols = np.array([chosen[int(i)][0] for i in who], np.int64)
    src = weights.src
    own = OVERLAP * (np.sqrt(src.probs[who]) * weights.tgt_root[cols]).sum(1)
    own += COSINE * (src.embeddings[who] * weights.tgt_emb[cols]).sum(1)
    if weights.names is not None:
        own += [weights.names.pair_bonus(int(i), int(j)) for i, j in zip(who, cols, strict=True)]
    floor = own - RIVAL
    count = np.zeros(len(who), np.int64)
    for lo in weights.blocks:
        sim = weights.similarity(lo)[:, cols]
        rows = np.arange(lo, lo + len(sim))
        near = (sim >= floor) & (cls_s[rows][:, None] == cls_s[who][None, :])
        near &= rows[:, None] != who[None, :]
        count += near.sum(0)
    return {int(i): int(c) for i, c in zip(who, count, strict=True) if c}


_NO_WRAP = 2**30  # one line however long the value


def _scalar(value: str, *, quoted: bool = False) -> str:
    """``value`` as a one-line YAML scalar that reads back as the same string: plain where YAML
    allows it, else double-quoted (escapes for quotes, line breaks, control characters)."""
    if not quoted:
        plain = yaml.safe_dump(value, width=_NO_WRAP, allow_unicode=True)
        plain = plain.removesuffix("\n").removesuffix("\n...")
        if "\n" not in plain:
            return plain
    text: str = yaml.safe_dump(value, default_style='"', width=_NO_WRAP, allow_unicode=True)
    return text.removesuffix("\n")


def _quote(value: str) -> str:
    return _scalar(value, quoted=True)


def bridge_yaml(
    matches: Sequence[Match],
    *,
    source: str,
    target: str,
    from_device: str,
    to_device: str,
    threshold: float,
    name: str = "translated",
) -> str:
    """The bridge text: confident mappings active, the others commented out for review."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Suggested by `gateway suggest` on {stamp}",
        f"#   source: {_scalar(source)}",
        f"#   target: {_scalar(target)}",
        "# Nothing here is applied until you review it: check every mapping (the comment gives",
        "# the confidence and the Brick classes seen on both sides), fix or delete wrong ones,",
        "# and accept a REVIEW line by deleting the `# REVIEW ` in front of it (they have a",
        f"# confidence under {threshold:g}, or the reason given after the classes: they differ,",
        "# agree only as a bare kind of point, the model is unsure of a side's class, the names",
        "# give other equipment, or several sources of the class are about as good a match); a",
        "# source with no matching target needs the target's point name in place of that text.",
        "# Set `from`/`to` to your devices, then `approved: true`, and paste the bridge into your",
        "# config. `gateway validate` rejects it while `approved` is false.",
        "bridges:",
        f"  - name: {_scalar(name)}",
        f"    from: {_scalar(from_device)}",
        f"    to: {_scalar(to_device)}",
        "    translate:",
        "      mode: map",
        "      approved: false",
        "      map:",
    ]
    n_review = 0
    for m in sorted(matches, key=lambda m: -m.confidence):
        classes = (
            m.source_class
            if m.target_class in (None, m.source_class)
            else (f"{m.source_class} -> {m.target_class}")
        )
        if m.target is None:
            lines.append(f"        # REVIEW {_quote(m.source)}: {NO_TARGET}  # {classes}")
            n_review += 1
            continue
        entry = f"{_quote(m.source)}: {_quote(m.target)}"
        note = f"{m.confidence:.2f} {classes}"
        if m.confidence >= threshold:
            reason = review_reason(m)
            if reason is None:
                lines.append(f"        {entry}  # {note}")
                continue
            lines.append(f"        # REVIEW {entry}  # {note}; {reason}")
            n_review += 1
        else:
            lines.append(f"        # REVIEW {entry}  # {note}")
            n_review += 1
    if len(matches) == n_review:
        # No `{}` here: a REVIEW line uncommented after it would break the file. A map of
        # comments only is empty (null), which `gateway validate` refuses as it stands.
        lines.append(
            "        # no confident mapping: the map is empty until you accept REVIEW lines"
        )
    return "\n".join(lines) + "\n"


def points_yaml(device: str, points: Sequence[Point]) -> str:
    """The browsed ``points:`` of an OPC UA client device, commented out: the map's names only
    read data once the device declares them with their node ids (the browse knows those)."""
    counts = Counter(p.name for p in points)
    lines = [
        "",
        f"# The points the browse found on {_scalar(device)}, for its `points:` in your config",
        "# (node ids as the server gave them; keep the ones the map uses):",
    ]
    twice = sorted(n for n, c in counts.items() if c > 1)
    if twice:
        lines.append(
            f"# REVIEW names found more than once ({', '.join(twice)}): give each a name of its"
            " own here and in the map"
        )
    lines += ["# devices:", f"#   {_scalar(device)}:", "#     points:"]
    for p in points:
        if p.address:
            lines.append(f"#       - {{name: {_quote(p.name)}, node_id: {_quote(p.address)}}}")
    return "\n".join(lines) + "\n"
