import asyncio

import pytest

from gateway.bus import Bus, OverflowPolicy, topic_matches, validate_pattern
from gateway.types import Message, MessageKind, Sample


def msg(topic: str, n: int = 0) -> Message:
    return Message(topic, MessageKind.TELEMETRY, (Sample("p", n),), origin="t", seq=n)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/x/c", True),
        ("a/#", "a", True),  # MQTT: '#' also matches the parent level
        ("a/#", "a/b/c", True),
        ("#", "anything/at/all", True),
        ("+", "a", True),
        ("+", "a/b", False),
        ("a/b/c", "a/b", False),
        ("+/+", "a/b", True),
        ("telemetry/plc1", "telemetry/plc10", False),
    ],
)
def test_topic_matching(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "#/a"])
def test_invalid_patterns(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_pattern(bad)


async def test_fanout_and_counters() -> None:
    bus = Bus()
    a = bus.subscribe("telemetry/+", name="a")
    b = bus.subscribe("telemetry/plc1", name="b")
    c = bus.subscribe("event/#", name="c")
    assert await bus.publish(msg("telemetry/plc1", 1)) == 2
    assert await bus.publish(msg("telemetry/plc2", 2)) == 1
    assert (await a.get()).seq == 1
    assert (await a.get()).seq == 2
    assert (await b.get()).seq == 1
    assert len(c) == 0
    assert a.counters.delivered == 2 and b.counters.delivered == 1
    assert bus.published == 2
    await bus.publish(msg("other", 3))
    assert bus.unrouted == 1


async def test_drop_oldest_keeps_newest_and_counts() -> None:
    bus = Bus()
    sub = bus.subscribe("#", maxsize=3, overflow=OverflowPolicy.DROP_OLDEST)
    for i in range(5):
        bus.publish_nowait(msg("t", i))
    assert [sub.get_nowait().seq for _ in range(3)] == [2, 3, 4]  # type: ignore[union-attr]
    assert sub.counters.dropped == 2
    assert sub.counters.offered == 5


async def test_drop_newest_keeps_first_and_counts() -> None:
    bus = Bus()
    sub = bus.subscribe("#", maxsize=3, overflow="drop_newest")
    for i in range(5):
        bus.publish_nowait(msg("t", i))
    assert [sub.get_nowait().seq for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    assert sub.counters.dropped == 2


async def test_block_applies_back_pressure_without_loss() -> None:
    bus = Bus()
    sub = bus.subscribe("#", maxsize=2, overflow=OverflowPolicy.BLOCK)
    fast = bus.subscribe("#", maxsize=100)  # another subscriber is not held up beyond the block

    async def produce() -> None:
        for i in range(10):
            await bus.publish(msg("t", i))

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.01)
    assert not producer.done()  # waiting for room
    got = [(await sub.get()).seq for _ in range(10)]
    await producer
    assert got == list(range(10))
    assert sub.counters.dropped == 0
    assert len(fast) == 10


async def test_block_publish_nowait_counts_drop() -> None:
    bus = Bus()
    sub = bus.subscribe("#", maxsize=1, overflow=OverflowPolicy.BLOCK)
    bus.publish_nowait(msg("t", 0))
    assert bus.publish_nowait(msg("t", 1)) == 0
    assert sub.counters.dropped == 1


async def test_close_ends_iteration_after_drain() -> None:
    bus = Bus()
    sub = bus.subscribe("#")
    bus.publish_nowait(msg("t", 1))
    sub.close()
    seen = [m.seq async for m in sub]
    assert seen == [1]
    assert bus.publish_nowait(msg("t", 2)) == 0  # unsubscribed
    assert bus.subscriptions() == []


async def test_waiting_consumer_is_woken() -> None:
    bus = Bus()
    sub = bus.subscribe("x/+")
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    bus.publish_nowait(msg("x/y", 7))
    assert (await asyncio.wait_for(getter, 1)).seq == 7


async def test_routes_recomputed_after_subscribe() -> None:
    bus = Bus()
    bus.publish_nowait(msg("a/b"))  # caches an empty route
    sub = bus.subscribe("a/#")
    bus.publish_nowait(msg("a/b", 1))
    assert sub.get_nowait() is not None
