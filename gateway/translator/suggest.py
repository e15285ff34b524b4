"""Match one system's points to another's and write the proposal as a bridge for review.

Matching is one cross-attention step: each source point (the query) attends over all candidate
target points (the keys) with logits from (a) the Bhattacharyya overlap of the two class
distributions and (b) the cosine of the two embeddings, plus one "no match" key of fixed
similarity (a dustbin, as in SuperGlue), so a source unlike every target keeps its weight there
instead of spreading it over whatever targets exist; the attention weight of a target is the
confidence of that mapping. Targets are then assigned one-to-one, most confident first, so two
sources never land on the same target. Nothing is applied: the bridge is written with
``approved: false``, which `gateway validate` rejects until the user has reviewed it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import yaml

from gateway.translator.model import Floats, Prediction, Translator
from gateway.translator.tokenize import Point

TEMPERATURE = 0.05  # attention temperature over the combined similarity
# Similarity of the "no match" key: about what the best unrelated target reaches (median best
# other-class similarity 0.28 between two synthetic sites, models/translator/sites.py).
NO_MATCH = 0.3


@dataclass(frozen=True, slots=True)
class Match:
    source: str
    target: str | None
    confidence: float
    source_class: str
    target_class: str | None


def attention(src: Prediction, tgt: Prediction) -> Floats:
    """(S, T) attention weights of each source over the targets; a row sums to less than 1 by
    the weight of "no match"."""
    overlap = np.sqrt(src.probs) @ np.sqrt(tgt.probs).T
    cosine = src.embeddings @ tgt.embeddings.T
    sim = 0.7 * overlap + 0.3 * cosine
    logits = np.concatenate([sim, np.full((sim.shape[0], 1), NO_MATCH, sim.dtype)], 1)
    logits = logits / TEMPERATURE
    logits -= logits.max(1, keepdims=True)
    w = np.exp(logits)
    weights: Floats = (w / w.sum(1, keepdims=True))[:, :-1]
    return weights


def match(
    translator: Translator,
    sources: Sequence[str],
    src: Prediction,
    targets: Sequence[str],
    tgt: Prediction,
) -> list[Match]:
    """One target (or none) per source, one source per target, best pairs first; a pair weaker
    than the source's "no match" weight is not made, so its target stays free for others."""
    w = attention(src, tgt)
    no_match = 1.0 - w.sum(1)
    cls_s = src.probs.argmax(1)
    cls_t = tgt.probs.argmax(1)
    taken_s: set[int] = set()
    taken_t: set[int] = set()
    chosen: dict[int, tuple[int, float]] = {}
    strong = np.flatnonzero(w > no_match[:, None])  # pairs that beat "no match"
    for flat in strong[np.argsort(-w.ravel()[strong], kind="stable")]:
        i, j = divmod(int(flat), w.shape[1])
        if i in taken_s or j in taken_t:
            continue
        taken_s.add(i)
        taken_t.add(j)
        chosen[i] = (j, float(w[i, j]))
        if len(taken_s) == len(sources) or len(taken_t) == len(targets):
            break
    out = []
    for i, name in enumerate(sources):
        sc = translator.classes[int(cls_s[i])]
        if i in chosen:
            j, conf = chosen[i]
            out.append(Match(name, targets[j], conf, sc, translator.classes[int(cls_t[j])]))
        else:
            out.append(Match(name, None, 0.0, sc, None))
    return out


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
        f"# uncomment the REVIEW lines you accept (confidence under {threshold:g}), set",
        "# `from`/`to` to your devices, then `approved: true`, and paste the bridge into your",
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
            lines.append(f"        # REVIEW {_quote(m.source)}: no matching target  # {classes}")
            n_review += 1
            continue
        entry = f"{_quote(m.source)}: {_quote(m.target)}"
        note = f"{m.confidence:.2f} {classes}"
        if m.confidence >= threshold:
            lines.append(f"        {entry}  # {note}")
        else:
            lines.append(f"        # REVIEW {entry}  # {note}")
            n_review += 1
    if len(matches) == n_review:
        lines.append("        {}  # no confident mapping; see the REVIEW lines")
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
