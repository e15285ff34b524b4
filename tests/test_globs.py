"""`Globs` matches exactly as fnmatch.fnmatchcase per glob does, literal names and patterns
alike, and names the globs that match nothing."""

from __future__ import annotations

import fnmatch
import random

from gateway.globs import Globs


def _reference(name: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def test_same_answers_as_fnmatch_per_glob() -> None:
    rng = random.Random(5)
    alphabet = "ab_.[]*?!-Z9/"
    names = [
        "".join(rng.choice("ab_.[]-Z9/") for _ in range(rng.randint(0, 6))) for _ in range(400)
    ]
    for _ in range(300):
        globs = tuple(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
            for _ in range(rng.randint(1, 4))
        )
        compiled = Globs(globs)
        for name in names:
            assert (name in compiled) == _reference(name, globs), (name, globs)


def test_literal_and_pattern_cases() -> None:
    globs = Globs(("temp", "flow_*", "p[12]", "x?"))
    assert "temp" in globs and "flow_a" in globs and "p2" in globs and "xy" in globs
    assert "Temp" not in globs  # case-sensitive, as the bridge always was
    assert "temp2" not in globs and "p3" not in globs and "x" not in globs
    assert "flow_a\nb" in globs  # fnmatch's * crosses newlines (translate's (?s:))
    assert 42 not in globs


def test_unmatched_keeps_order_and_checks_every_kind() -> None:
    globs = Globs(("b", "a*", "zz", "[q]", "c?"))
    assert globs.unmatched(["b", "abc", "c"]) == ["zz", "[q]", "c?"]
    assert globs.unmatched([]) == ["b", "a*", "zz", "[q]", "c?"]


def test_many_literal_names_are_one_lookup() -> None:
    names = [f"pt_{i:05d}" for i in range(10_000)]
    globs = Globs(names[::10])
    assert sum(n in globs for n in names) == 1_000
    assert globs.unmatched(names) == []
