"""A device's shadow document as the JSON text the store saves, kept entry by entry.

Saving a document of 2,000 points where 200 changed encodes those 200: each large map (reported
values, their timestamps, desired, quality) keeps its entries' text and reuses it while the
entry's value is the same immutable object. The bytes are exactly those of
``json.dumps(body, separators=(",", ":"))`` (`ShadowDocument._body`), which older versions and
other processes read. No I/O here.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterator, Mapping
from itertools import compress, repeat
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.shadow.store import ShadowDocument

_COMPACT = json.JSONEncoder(separators=(",", ":"))  # what `ShadowDocument._body` writes
_NOT_KEPT = object()  # the token of an entry whose text is encoded again at every save
_SCALAR_TYPES = (str, int, float, bool, type(None))


def scalar_text(value: Any) -> str | None:
    """``value`` as `json.dumps` writes it, for the exact types whose text depends on the value
    alone (str, int, float, bool, None; what the C encoder does for each); None for others."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return float.__repr__(value)
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return None


class _MapText:
    """The JSON text of one map of a document (its reported values, their timestamps, ...),
    kept entry by entry, so that a save encodes only the entries that changed: the bytes are
    those of ``json.dumps(mapping, separators=(",", ":"))``.

    An entry's text is reused while its key is at the same place and its token is the same
    object (``is``): the value itself if it is a str, int, float, bool or None (immutable, so
    the same object has the same text), or with ``stamps`` the ``t`` of an entry
    ``{"timestamp": t}`` (an int or float; the entry must still have that one key). Any other
    entry is encoded at every save. The tokens are held here, so an ``id`` is never reused."""

    __slots__ = ("keys", "parts", "tokens")

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.tokens: list[Any] = []
        self.parts: list[str] = []

    def encode(self, mapping: Mapping[Any, Any], stamps: bool) -> str:
        keys = list(mapping)
        values = list(mapping.values())
        if keys != self.keys:  # a key added, removed or moved: every entry again (rare)
            self.keys = keys
            self.tokens = [_NOT_KEPT] * len(keys)
            self.parts = [""] * len(keys)
        changed: Iterator[Any]
        if not stamps:
            changed = map(operator.is_not, values, self.tokens)
        elif all(map(isinstance, values, repeat(dict))):
            tokens = map(dict.get, values, repeat("timestamp"))
            changed = map(
                operator.or_,
                map(operator.is_not, tokens, self.tokens),
                map(operator.ne, map(len, values), repeat(1)),
            )
        else:  # an entry that is no object: each encoded again
            changed = repeat(True)
        for i in compress(range(len(keys)), changed):
            self.tokens[i], self.parts[i] = _entry_text(keys[i], values[i], stamps)
        return "{" + ",".join(self.parts) + "}"


def _entry_text(key: Any, value: Any, stamps: bool) -> tuple[Any, str]:
    """The token and the text (``"key":value``) of one entry of a `_MapText`."""
    if type(key) is not str:
        return _NOT_KEPT, _COMPACT.encode({key: value})[1:-1]
    name = encode_basestring_ascii(key) + ":"
    if stamps:
        if type(value) is dict and len(value) == 1:
            stamp = value.get("timestamp")
            if type(stamp) is float or type(stamp) is int:
                return stamp, name + '{"timestamp":' + str(scalar_text(stamp)) + "}"
    else:
        text = scalar_text(value)
        if text is not None:
            return value, name + text
    return _NOT_KEPT, name + _COMPACT.encode(value)


class BodyText:
    """`ShadowDocument._body` of one device, the same bytes, its large maps kept entry by
    entry (`_MapText`): saving a document of 2,000 points where 200 changed encodes those 200."""

    __slots__ = ("desired", "desired_meta", "reported", "reported_meta", "quality")

    def __init__(self) -> None:
        self.reported, self.desired, self.quality = _MapText(), _MapText(), _MapText()
        self.reported_meta, self.desired_meta = _MapText(), _MapText()

    def encode(self, doc: ShadowDocument) -> str:
        meta = doc.metadata
        if not all(type(k) is str for k in meta):
            metadata = _COMPACT.encode(meta)
        else:
            parts = []
            for name, value in meta.items():
                kept = {"reported": self.reported_meta, "desired": self.desired_meta}.get(name)
                text = (
                    kept.encode(value, True)
                    if kept is not None and type(value) is dict
                    else _COMPACT.encode(value)
                )
                parts.append(encode_basestring_ascii(name) + ":" + text)
            metadata = "{" + ",".join(parts) + "}"
        return "".join(
            (
                '{"reported":',
                self.reported.encode(doc.reported, False),
                ',"desired":',
                self.desired.encode(doc.desired, False),
                ',"metadata":',
                metadata,
                ',"errors":',
                _COMPACT.encode(doc.errors),
                ',"quality":',
                self.quality.encode(doc.quality, False),
                "}",
            )
        )
