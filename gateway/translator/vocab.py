"""The label space: Brick point classes as shipped in ``models/translator/brick`` (BSD-3)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import models.translator

MODEL_DIR = Path(models.translator.__file__).resolve().parent
BRICK_DIR = MODEL_DIR / "brick"


@dataclass(frozen=True, slots=True)
class BrickClass:
    name: str
    parents: tuple[str, ...]
    definition: str

    def words(self) -> list[str]:
        return self.name.split("_")


@lru_cache(maxsize=1)
def brick_classes() -> tuple[BrickClass, ...]:
    with open(BRICK_DIR / "point_classes.csv", newline="", encoding="utf-8") as f:
        return tuple(
            BrickClass(r["class"], tuple(p for p in r["parent"].split(";") if p), r["definition"])
            for r in csv.DictReader(f)
        )


@lru_cache(maxsize=1)
def aliases() -> dict[str, str]:
    """Alias or deprecated name -> canonical class (only those Brick gives a replacement for)."""
    with open(BRICK_DIR / "point_class_aliases.csv", newline="", encoding="utf-8") as f:
        return {r["name"]: r["canonical"] for r in csv.DictReader(f) if r["canonical"]}


def canonical(name: str) -> str:
    """A class name as the model predicts it: aliases resolved; written any way a labeled file
    may write it: in any case, with spaces, hyphens or underscores (``return air co2 sensor``),
    as ``brick:X`` or a Brick URI (``http(s)://brickschema.org/schema/Brick#X``, in ``<>`` as
    Turtle writes it). A name that is no Brick point class comes back without its prefix, as
    written otherwise."""
    name = name.strip().removeprefix("<").removesuffix(">").strip()
    prefix, hash_, local = name.rpartition("#")
    if hash_ and "brick" in prefix.lower():
        name = local
    elif name[:6].lower() == "brick:":
        name = name[6:]
    return _spellings().get(_spelling(name), name)


def _spelling(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


@lru_cache(maxsize=1)
def _spellings() -> dict[str, str]:
    """Normalised spelling (`_spelling`) of every class and alias -> canonical class."""
    out = {_spelling(a): c for a, c in aliases().items()}
    out.update((_spelling(c.name), c.name) for c in brick_classes())
    return out


def same_class(a: str, b: str) -> bool:
    """Equal for scoring: Room_* and Zone_* are near-equivalent (see the data README)."""
    return scoring_key(canonical(a)) == scoring_key(canonical(b))


def scoring_key(name: str) -> str:
    return name.replace("Room_", "Zone_")
