"""In-process publish/subscribe with MQTT-style topic patterns.

Back-pressure is explicit, per subscription, because a slow consumer must be a decision, never an
accident:

- ``drop_oldest`` (default): a full queue discards its oldest message to make room. Right for live
  telemetry, where the newest value is worth more than an old one.
- ``drop_newest``: a full queue refuses the new message. Right when order and the first messages
  matter more than the latest.
- ``block``: ``publish`` waits until the queue has room, slowing the producer. Right for consumers
  that must see everything (a durable outbox); a producer that cannot wait uses
  ``publish_nowait``, which counts a drop instead.

Every subscription counts what it was offered, delivered and dropped, so a drop is never silent.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum

from gateway.types import Message, MessageKind, Sample, next_sequence

log = logging.getLogger(__name__)


class OverflowPolicy(StrEnum):
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"
    BLOCK = "block"


def validate_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is a valid MQTT-style topic filter."""
    if not pattern:
        raise ValueError("topic pattern is empty")
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            if i != len(levels) - 1:
                raise ValueError(f"'#' must be the last level in {pattern!r}")
        elif level == "+":
            continue
        elif "#" in level or "+" in level:
            raise ValueError(f"wildcards must fill a whole level in {pattern!r}")


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic-filter matching: ``+`` one level, ``#`` this level and all below."""
    if pattern == topic or pattern == "#":
        return True
    p_levels = pattern.split("/")
    t_levels = topic.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(t_levels):
            return False
        if p != "+" and p != t_levels[i]:
            return False
    return len(p_levels) == len(t_levels)


@dataclass(slots=True)
class Counters:
    offered: int = 0
    delivered: int = 0
    dropped: int = 0


class Subscription:
    """A bounded queue of messages whose topic matches ``pattern``.

    Iterate with ``async for message in subscription`` or call ``get()``. ``close()`` ends the
    iteration once the queued messages are consumed.
    """

    def __init__(
        self, bus: Bus, pattern: str, maxsize: int, overflow: OverflowPolicy, name: str
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.bus = bus
        self.pattern = pattern
        self.maxsize = maxsize
        self.overflow = overflow
        self.name = name or pattern
        self.counters = Counters()
        self._queue: collections.deque[Message] = collections.deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, message: Message) -> bool:
        """Queue without waiting; apply the overflow policy when full. True if queued."""
        c = self.counters
        c.offered += 1
        if self._closed:
            c.dropped += 1
            return False
        q = self._queue
        if len(q) >= self.maxsize:
            if self.overflow is OverflowPolicy.DROP_OLDEST:
                q.popleft()
                c.dropped += 1
            else:  # drop_newest, or block when the producer cannot wait
                c.dropped += 1
                return False
        q.append(message)
        if len(q) >= self.maxsize:
            self._writable.clear()
        self._readable.set()
        return True

    async def put(self, message: Message) -> None:
        """Queue, waiting for room when the policy is ``block``."""
        if self.overflow is OverflowPolicy.BLOCK:
            while len(self._queue) >= self.maxsize and not self._closed:
                await self._writable.wait()
        self.offer(message)

    def get_nowait(self) -> Message | None:
        if not self._queue:
            return None
        return self._take()

    def _take(self) -> Message:
        message = self._queue.popleft()
        self.counters.delivered += 1
        if not self._queue:
            self._readable.clear()
        self._writable.set()
        return message

    async def get(self) -> Message:
        """Next message; raises ``StopAsyncIteration`` once closed and drained."""
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            await self._readable.wait()
        return self._take()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.get()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        self._writable.set()
        self.bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus:
    """Topic-routed fan-out to bounded subscriptions. One event loop; not thread-safe."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        # Routing cache: topic -> matching subscriptions. Topics are few (one per device and
        # kind) and messages many, so matching once per topic keeps publish O(matches).
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self.published = 0
        self.unrouted = 0
        # topic -> each point's newest sample, and the newest message itself: `keep_last`
        self._last: dict[str, dict[str, Sample]] | None = None
        self._envelopes: dict[str, Message] = {}

    def keep_last(self) -> None:
        """From now on keep each telemetry topic's newest sample of every point (`last`): a
        bridge that a reload starts from a source that kept running begins with them, as a
        restarted source would have read them again."""
        if self._last is None:
            self._last = {}

    def last(self, topic: str) -> Message | None:
        """The newest sample of each point published on ``topic`` since `keep_last`, as one
        message in the envelope of the newest one (a sequence number of its own; the samples
        keep their timestamps); None if none was."""
        if self._last is None or topic not in self._last:
            return None
        samples = tuple(self._last[topic].values())
        envelope = self._envelopes[topic]
        seq = next_sequence(envelope.origin)  # a message of its own, as a new read would be
        return dataclasses.replace(envelope, samples=samples, seq=seq, meta={})

    def drop_last(self, topic: str) -> None:
        """Forget ``topic``'s newest samples (its device stopped: removed or restarted)."""
        if self._last is not None:
            self._last.pop(topic, None)
            self._envelopes.pop(topic, None)

    def subscribe(
        self,
        pattern: str,
        *,
        maxsize: int = 1000,
        overflow: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST,
        name: str = "",
    ) -> Subscription:
        validate_pattern(pattern)
        sub = Subscription(self, pattern, maxsize, OverflowPolicy(overflow), name)
        self._subs.append(sub)
        self._routes.clear()
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._routes.clear()

    def _route(self, topic: str) -> tuple[Subscription, ...]:
        subs = self._routes.get(topic)
        if subs is None:
            subs = tuple(s for s in self._subs if topic_matches(s.pattern, topic))
            self._routes[topic] = subs
        return subs

    def _targets(self, message: Message) -> tuple[Subscription, ...]:
        self.published += 1
        last = self._last
        topic = message.topic
        # a device's own readings (telemetry/<device>), not an MQTT client's every topic, nor
        # the events a device sends there (an OPC UA client's alarms): they are no reading
        if (
            last is not None
            and topic.startswith("telemetry/")
            and topic.find("/", 10) < 0
            and message.kind is MessageKind.TELEMETRY
        ):
            points = last.get(topic)
            if points is None:
                points = last[topic] = {}
            for sample in message.samples:
                points[sample.point] = sample
            self._envelopes[topic] = message
        subs = self._route(topic)
        if not subs:
            self.unrouted += 1
        return subs

    def publish_nowait(self, message: Message) -> int:
        """Deliver without waiting (a full ``block`` queue counts a drop). Returns deliveries."""
        delivered = 0
        for sub in self._targets(message):
            delivered += sub.offer(message)
        return delivered

    async def publish(self, message: Message) -> int:
        """Deliver, waiting for room in ``block`` subscriptions. Returns deliveries."""
        delivered = 0
        for sub in self._targets(message):
            if sub.overflow is OverflowPolicy.BLOCK:
                await sub.put(message)
                delivered += 1
            else:
                delivered += sub.offer(message)
        return delivered

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def stats(self) -> dict[str, dict[str, int | str]]:
        return {
            s.name: {
                "pattern": s.pattern,
                "queued": len(s),
                "offered": s.counters.offered,
                "delivered": s.counters.delivered,
                "dropped": s.counters.dropped,
            }
            for s in self._subs
        }
