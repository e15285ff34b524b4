"""MQTT 5 Topic Aliases (3.3.2.3.4) of one network connection, sans-IO.

A PUBLISH may carry a Topic Alias (1 to the broker's Topic Alias Maximum, from its CONNACK) with
its topic: the broker maps the alias to the topic, and later PUBLISHes carry the alias and an
empty topic. On a metered uplink that is most of a small publish's bytes. The mapping belongs to
the network connection (the broker forgets it with the connection), so `TopicAliases.reset` on
every CONNACK. A PUBLISH with a full topic and an alias already in use re-maps the alias: that is
how a table full of aliases takes a new topic (see `TopicAliases` for which).

An alias must never go out before the broker has seen its topic: `lookup` says what a publish
would be without changing anything (its size is checked first, and it may be dropped), `use`
commits, and `forget` takes back a topic whose mapping never reached the wire.
"""

from __future__ import annotations

import collections

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["ALIAS_SIZE", "TopicAliases", "alias_properties", "without_alias"]

# a Topic Alias property's bytes: its identifier (1) and a two-byte integer
ALIAS_SIZE = 3


class TopicAliases:
    """Topic -> alias for one connection: first come first served up to ``maximum``; then a
    topic takes the least recently used alias only if it was published more often (counts
    halved every `DECAY` publishes, so that what was hot long ago gives way). A topic not
    admitted goes as it is, with no alias: a gateway publishes its points in turn, and plain
    LRU over more topics than aliases replaces one on every publish, each then 3 bytes larger
    than with no alias at all (bench/mqtt_topic_alias.py). ``maximum`` 0: no aliases."""

    __slots__ = ("maximum", "_table", "_free", "_next", "_props", "_counts", "_uses", "_decay")

    #: publishes between two halvings of the counts
    DECAY = 10_000
    #: topics counted at most (the counts start again past it)
    MAX_COUNTED = 10_000

    def __init__(self, maximum: int = 0, *, decay: int = DECAY) -> None:
        self.maximum = maximum
        self._decay = decay
        self._table: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._free: list[int] = []  # aliases given back (`forget`)
        self._next = 1  # the lowest alias never given out on this connection
        # one Properties per alias for publishes with no other property (never changed)
        self._props: dict[int, Properties] = {}
        self._counts: dict[str, int] = {}  # publishes per topic, this connection, decayed
        self._uses = 0

    def __len__(self) -> int:
        return len(self._table)

    def reset(self, maximum: int) -> None:
        """A new connection: no alias known to the broker; it takes up to ``maximum``."""
        self.maximum = maximum
        self._table.clear()
        self._free.clear()
        self._next = 1
        self._counts.clear()
        self._uses = 0

    def _admits(self, topic: str) -> bool:
        """Whether a topic not in the table would take an alias with its next publish."""
        table = self._table
        if self._free or self._next <= self.maximum or not table:
            return bool(self.maximum)
        victim = next(iter(table))  # the least recently used
        counts = self._counts
        return counts.get(topic, 0) + 1 > counts.get(victim, 0)

    def lookup(self, topic: str) -> tuple[bool, bool]:
        """(aliased, known): whether the next publish of ``topic`` would carry an alias, and
        whether the broker knows it already (so the topic would go empty). Changes nothing."""
        if not self.maximum:
            return False, False
        if topic in self._table:
            return True, True
        return self._admits(topic), False

    def use(self, topic: str) -> tuple[int, bool]:
        """A publish of ``topic``: its alias (0: none) and whether the broker knows it
        already. A new topic takes the next free alias, or the least recently used one (which
        this publish re-maps) if it is admitted (`_admits`)."""
        if not self.maximum:
            return 0, False
        self._count(topic)
        table = self._table
        alias = table.get(topic)
        if alias is not None:
            table.move_to_end(topic)
            return alias, True
        if self._free:
            alias = self._free.pop()
        elif self._next <= self.maximum:
            alias = self._next
            self._next += 1
        elif self._counts[topic] > self._counts.get(next(iter(table)), 0):
            _old, alias = table.popitem(last=False)
        else:
            return 0, False
        table[topic] = alias
        return alias, False

    def _count(self, topic: str) -> None:
        counts = self._counts
        self._uses += 1
        if self._uses >= self._decay:
            self._uses = 0
            self._counts = counts = {t: n >> 1 for t, n in counts.items() if n > 1}
        elif len(counts) >= self.MAX_COUNTED and topic not in counts:
            counts.clear()  # bounded memory: a topic per publish would otherwise grow it
        counts[topic] = counts.get(topic, 0) + 1

    def forget(self, topic: str) -> None:
        """``topic``'s mapping never reached the broker (paho refused the publish): the next
        publish of it must carry it again; its alias is free for the next new topic."""
        alias = self._table.pop(topic, None)
        if alias is not None:
            self._free.append(alias)

    def properties(self, alias: int) -> Properties:
        """The (shared, never changed) properties of a publish carrying ``alias`` only."""
        props = self._props.get(alias)
        if props is None:
            props = self._props[alias] = alias_properties(alias, None)
        return props


def alias_properties(alias: int, base: Properties | None) -> Properties:
    """New PUBLISH properties: ``base``'s (not changed) and Topic Alias ``alias``."""
    props = _copy(base)
    props.TopicAlias = alias
    return props


def without_alias(props: Properties) -> Properties | None:
    """``props`` less its Topic Alias (new, or None when nothing is left)."""
    out = _copy(props, skip="TopicAlias")
    return out if len(out.pack()) > 1 else None  # type: ignore[no-untyped-call]


def _copy(base: Properties | None, skip: str = "") -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if base is not None:
        for name in base.names:
            attr = name.replace(" ", "")  # paho's attributes: the names less their spaces
            if attr != skip and hasattr(base, attr):
                setattr(props, attr, getattr(base, attr))
    return props
