"""Words for messages: a count with its noun in the right number ("1 point", "2 points"), and a
span of time a person reads at a glance ("3 min 20 s")."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1; ``plural`` for a noun that does not just
    take an 's' (``counted(n, "entry", "entries")``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def duration(seconds: float) -> str:
    """``seconds`` in its two largest units: ``"42 s"``, ``"3 min 20 s"``, ``"2 h 5 min"``,
    ``"3 d 4 h"`` (below a minute, tenths under 10 s)."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    s = int(seconds)
    for big, big_name, small, small_name in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "min"),
        (60, "min", 1, "s"),
    ):
        if s >= big:
            return f"{s // big} {big_name} {(s % big) // small} {small_name}"
    return f"{s} s"
