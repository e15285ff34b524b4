"""A bridge's point globs, matched as one.

A config may list a device's points one by one (1,000 names over a 10,000-point device):
`fnmatch` per glob and name is then ten million regex matches, two seconds of a blocked loop at
start. Names without a wildcard are looked up in a set, the patterns share one regex.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

_MAGIC = re.compile(r"[*?\[]")  # what makes fnmatch treat a glob as a pattern


def is_pattern(glob: str) -> bool:
    return _MAGIC.search(glob) is not None


class Globs:
    """Case-sensitive fnmatch over several globs: ``name in globs`` is
    ``any(fnmatch.fnmatchcase(name, g) for g in globs)``."""

    __slots__ = ("globs", "_literal", "_match")

    def __init__(self, globs: Iterable[str]) -> None:
        self.globs = tuple(globs)
        self._literal = frozenset(g for g in self.globs if not is_pattern(g))
        patterns = [fnmatch.translate(g) for g in self.globs if is_pattern(g)]
        # translate() gives "(?s:...)\Z", so an alternation of them needs no further grouping.
        self._match = re.compile("|".join(patterns)).match if patterns else None

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self._literal:
            return True
        return self._match is not None and self._match(name) is not None

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """The globs (in their order) that match none of ``names``."""
        names = list(names)
        present = set(names)
        return [
            g
            for g in self.globs
            if not (fnmatch.filter(names, g) if is_pattern(g) else g in present)
        ]
