"""Words for messages: a count with its noun in the right number ("1 point", "2 points")."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1; ``plural`` for a noun that does not just
    take an 's' (``counted(n, "entry", "entries")``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
