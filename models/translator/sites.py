"""Synthetic held-out sites: one fixed naming convention each, to check few-shot adaptation.

The training corpus draws every rendering choice afresh per name; a real building picks them once
(one separator, one case style, one abbreviation per word, codes of its own the model never saw)
and uses few classes, some of them often. `site` renders such a building so few-shot methods can
be compared on data that is neither the training distribution nor the validation buildings.
"""

from __future__ import annotations

import random
import re
import string
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from gateway.translator.tokenize import Point
from models.translator.corpus import SEPARATORS, Renderer

if TYPE_CHECKING:
    from _typeshed import SupportsLenAndGetItem

_T = TypeVar("_T")


class _StickyRandom(random.Random):
    """``choice`` returns the same element for the same options (mostly): a site's habit."""

    def __init__(self, seed: int, stickiness: float) -> None:
        super().__init__(seed)
        self.stickiness = stickiness
        self.memo: dict[tuple[Any, ...], Any] = {}

    def choice(self, seq: SupportsLenAndGetItem[_T]) -> _T:
        try:
            # typeshed calls it indexable only; a seq that tuple() cannot iterate is caught below
            key = tuple(cast("Iterable[_T]", seq))
        except TypeError:
            return super().choice(seq)
        got = self.memo.get(key)
        if got is not None and self.random() < self.stickiness:
            return cast("_T", got)  # an element of these very options
        pick = super().choice(seq)
        self.memo.setdefault(key, pick)
        return pick


class SiteRenderer(Renderer):
    """A `Renderer` with one site's convention: fixed case style, sticky choices, and a share of
    words written with a code of the site's own (``temperature`` -> ``qtx``)."""

    def __init__(self, seed: int, *, novel: float = 0.3, stickiness: float = 0.9) -> None:
        super().__init__(seed)
        self.r = _StickyRandom(seed, stickiness)
        self.style = self.r.random()
        self.novel = novel
        self.forms: dict[str, str] = {}

    def _word(self, w: str) -> str:
        form = self.forms.get(w)
        if form is None:
            if self.r.random() < self.novel:
                letters = string.ascii_lowercase
                form = w[0] + "".join(self.r.sample(letters, self.r.randint(1, 3)))
            else:
                form = super()._word(w)
            self.forms[w] = form
        return form

    def _case(self, tokens: list[str], sep: str) -> str:
        if self.style < 0.45:
            return sep.join(t.upper() for t in tokens)
        if self.style < 0.65:
            return sep.join(t.lower() for t in tokens)
        if self.style < 0.85:
            return "".join(t[:1].upper() + t[1:].lower() for t in tokens)
        return sep.join(t.upper() if len(t) <= 3 else t.capitalize() for t in tokens)


def site(
    seed: int, points: int = 500, classes: int = 40, *, novel: float = 0.3
) -> list[tuple[Point, str]]:
    """``points`` labeled points of one synthetic building using ``classes`` classes, the class
    frequencies Zipf-like (a site has many zone temperatures and one outside air sensor)."""
    r = SiteRenderer(seed, novel=novel)
    pick = random.Random(seed + 1)
    used = pick.sample(range(len(r.classes)), classes)
    weights = [1.0 / (rank + 1) for rank in range(classes)]
    out = []
    for k in pick.choices(used, weights, k=points):
        out.append((r.sample(k), r.classes[k].name))
    return out


def sibling_site(seed: int, points: int = 500, stems: int = 15) -> list[tuple[Point, str]]:
    """Like `site`, but the site's classes come in families of 2-4 that share all words but the
    last (``Supply_Air_Temperature_Sensor`` / ``_Setpoint`` / ``_Alarm``), as a building's
    sensor, setpoint and alarm of one quantity do; class frequencies Zipf-like (exponent 0.7).
    Few-shot examples then often show a sibling of a point's class but not the class itself."""
    r = SiteRenderer(seed)
    families: dict[str, list[int]] = defaultdict(list)
    for k, c in enumerate(r.classes):
        words = c.name.split("_")
        if len(words) > 1:
            families["_".join(words[:-1])].append(k)
    pool = sorted(stem for stem, ks in families.items() if len(ks) >= 2)
    pick = random.Random(seed + 1)
    used: list[int] = []
    for stem in pick.sample(pool, stems):
        ks = families[stem]
        used += pick.sample(ks, min(len(ks), pick.randint(2, 4)))
    pick.shuffle(used)
    weights = [1.0 / (rank + 1) ** 0.7 for rank in range(len(used))]
    return [(r.sample(k), r.classes[k].name) for k in pick.choices(used, weights, k=points)]


def equipment_site(
    seed: int, points: int = 500, classes: int = 40, kinds: int = 4
) -> list[tuple[Point, str]]:
    """Like `site`, but every point sits on a piece of equipment whose id leads its name
    (``AHU-3_SAT``, ``AHU-3_SF_CMD``, ``VAV-12_ZN_T``), as BAS lists are written: the site's
    classes are split among ``kinds`` kinds of equipment, every instance of a kind has one point
    of each of its classes, and the kinds' instance counts are Zipf-like. A few examples then
    share their equipment word (digits are one ``#`` piece) with many points of other classes."""
    r = SiteRenderer(seed)
    pick = random.Random(seed + 1)
    used = pick.sample(range(len(r.classes)), classes)
    groups = [used[i::kinds] for i in range(kinds)]
    share = [1.0 / (rank + 1) for rank in range(kinds)]
    total = sum(share)
    outer = r.r.choice(["_", ".", "-", ":", "_", "."])
    out: list[tuple[Point, str]] = []
    for group, s in zip(groups, share, strict=True):
        words = [w.lower() for w in r.classes[group[0]].name.split("_")]
        kind = r._equipment(words)  # the kind's id, e.g. AHU-3: its instances renumber it
        for n in range(max(1, round(points * s / total / len(group)))):
            prefix = re.sub(r"\d+", str(n + 1), kind) if any(c.isdigit() for c in kind) else kind
            for k in group:
                cls = r.classes[k]
                point, tag = r._point(cls)
                core = tag if tag is not None else r._case(point, r.r.choice(SEPARATORS))
                extras = r._extras(cls, [w.lower() for w in cls.name.split("_")])
                out.append((Point(outer.join([prefix, core]), *extras), cls.name))
    pick.shuffle(out)
    return out
