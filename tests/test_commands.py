"""The write path's safety rules and the command/ack round trip, with a fake device handler."""

from __future__ import annotations

import asyncio

import pytest

from gateway.bus import Bus
from gateway.commands import (
    CommandRouter,
    RateLimiter,
    WriteRefused,
    WriteStatus,
    serve_commands,
)
from gateway.types import Access, PointSpec, Value

POINTS = [
    PointSpec("plc/setpoint", "setpoint", "float64", "degC", Access.READ_WRITE, low=0, high=100),
    PointSpec("plc/temp", "temp", "float64", "degC", Access.READ),
    PointSpec("plc/run", "run", "bool", None, Access.READ_WRITE),
    PointSpec("plc/slow", "slow", "uint16", None, Access.READ_WRITE, write_rate=2),
]


@pytest.fixture
async def plant() -> tuple[CommandRouter, list[tuple[str, Value]], asyncio.Task[None]]:
    bus = Bus()
    router = CommandRouter(bus, timeout=0.5)
    router.declare("plc", POINTS)
    written: list[tuple[str, Value]] = []

    async def handler(point: str, value: Value) -> None:
        if value == 42:
            raise WriteRefused(WriteStatus.DEVICE_ERROR, "exception 03 (illegal data value)")
        if value == 13:
            await asyncio.sleep(0.7)  # acks after the router gave up
        if value == 7:
            raise RuntimeError("handler bug")
        written.append((point, value))

    task = asyncio.create_task(serve_commands(bus, "plc", handler))
    await asyncio.sleep(0)
    yield router, written, task
    task.cancel()
    router.close()


async def test_good_write_reaches_the_device_and_is_counted(plant) -> None:
    router, written, _ = plant
    result = await router.write("plc", "setpoint", 55.5, origin="test")
    assert result.ok
    assert written == [("setpoint", 55.5)]
    assert router.status()["succeeded"] == 1


@pytest.mark.parametrize(
    ("point", "value", "status", "phrase"),
    [
        ("temp", 20, WriteStatus.NOT_WRITABLE, "not writable"),
        ("nope", 1, WriteStatus.UNKNOWN_POINT, "no point 'nope'"),
        ("setpoint", 100.5, WriteStatus.OUT_OF_RANGE, "above"),
        ("setpoint", -1, WriteStatus.OUT_OF_RANGE, "below"),
        ("setpoint", float("nan"), WriteStatus.BAD_VALUE, "finite"),
        ("setpoint", True, WriteStatus.BAD_VALUE, "not a bool"),
    ],
)
async def test_refused_writes_never_reach_the_device(plant, point, value, status, phrase) -> None:
    router, written, _ = plant
    result = await router.write("plc", point, value, origin="test")
    assert result.status is status and phrase in result.reason
    assert written == []
    assert router.status()["refused"] == {status: 1}


def test_a_range_refusal_says_the_unit_it_is_in(plant) -> None:
    """A bridge converts the writer's value (degF on the way in) to the device's unit: the
    refusal must say which unit its figures are in, and not show float noise."""
    router, _, _ = plant
    above = router.check("plc", "setpoint", (213 - 32) / 1.8)  # 100.555...
    assert above.reason == "100.556 degC is above plc/setpoint's high 100 degC"
    assert (
        router.check("plc", "setpoint", -1).reason == "-1 degC is below plc/setpoint's low 0 degC"
    )


async def test_device_refusal_timeout_and_handler_bug_come_back_as_statuses(plant) -> None:
    router, written, _ = plant
    refused = await router.write("plc", "setpoint", 42, origin="test")
    assert refused.status is WriteStatus.DEVICE_ERROR and "illegal data value" in refused.reason
    timeout = await router.write("plc", "setpoint", 13, origin="test")
    assert timeout.status is WriteStatus.TIMEOUT
    bug = await router.write("plc", "run", 7, origin="test")
    assert bug.status is WriteStatus.BAD_VALUE  # a number for a bool point is refused first
    bug = await router.write("plc", "setpoint", 7, origin="test")
    assert bug.status is WriteStatus.DEVICE_ERROR and "handler bug" in bug.reason
    ok = await router.write("plc", "run", True, origin="test")
    assert ok.ok  # the command loop survived all of the above


async def test_no_adapter_means_unreachable_not_queued() -> None:
    bus = Bus()
    router = CommandRouter(bus, timeout=0.5)
    router.declare("plc", POINTS)
    result = await router.write("plc", "setpoint", 10, origin="test")
    assert result.status is WriteStatus.UNREACHABLE
    router.close()


async def test_rate_limit_per_point(plant) -> None:
    router, written, _ = plant
    results = [await router.write("plc", "slow", i, origin="test") for i in range(4)]
    assert [r.status for r in results] == [WriteStatus.GOOD] * 2 + [WriteStatus.RATE_LIMITED] * 2
    assert (await router.write("plc", "setpoint", 1, origin="test")).ok  # other points unaffected


def test_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert [limiter.allow("p") for _ in range(3)] == [True, True, False]
    now[0] = 0.5  # one token back after 1/rate seconds
    assert limiter.allow("p") and not limiter.allow("p")


async def test_a_command_that_waited_past_its_deadline_is_not_written(plant) -> None:
    router, written, _ = plant
    slow = asyncio.create_task(router.write("plc", "setpoint", 13, origin="a"))  # holds the device
    await asyncio.sleep(0.05)
    queued = await router.write("plc", "setpoint", 20, origin="b", ack_timeout=0.2)
    assert queued.status is WriteStatus.TIMEOUT
    await slow
    await asyncio.sleep(0.4)  # the slow handler finishes
    assert ("setpoint", 20) not in written  # dropped by the device side, not applied late
    assert ("setpoint", 13) in written


@pytest.mark.parametrize(
    ("point", "value", "phrase"),
    [
        ("setpoint", "fast", "plc/setpoint: float64 needs a number, got the string 'fast'"),
        ("setpoint", "nan", "float64 needs a number, got the string 'nan'"),
        ("setpoint", [1, 2], "float64 needs a number, got the list [1, 2]"),
        ("setpoint", {"v": 1}, "float64 needs a number, got the object"),
        ("slow", "12", "uint16 needs a number, got the string '12'"),
        ("label", 42, "plc/label: string needs a string, got 42"),
        ("label", True, "string needs a string, got true"),
        ("run", "on", "bool takes true or false (or 0/1), got the string 'on'"),
    ],
)
async def test_a_value_of_the_wrong_kind_is_refused_before_the_device(
    point: str, value: Value, phrase: str
) -> None:
    bus = Bus()
    router = CommandRouter(bus, timeout=0.5)
    router.declare(
        "plc", [*POINTS, PointSpec("plc/label", "label", "string", None, Access.READ_WRITE)]
    )
    commands = bus.subscribe("command/plc", maxsize=10, name="test")
    result = await router.write("plc", point, value, origin="test")
    assert result.status is WriteStatus.BAD_VALUE and phrase in result.reason, result.reason
    assert router.check("plc", point, value) == result  # one rule for check and write
    assert len(commands) == 0  # never sent to the adapter
    assert router.check("plc", "label", "ok").ok and router.check("plc", "setpoint", 5).ok
    router.close()
