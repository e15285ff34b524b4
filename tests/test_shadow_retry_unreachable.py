"""A desired write refused because the device was unreachable is made again when it reads again.

The case that needs it: a persistent MQTT session's broker delivers the updates it queued right
after the gateway restarts, before the Modbus device has connected; the write was refused as
unreachable and, before, never made. The device here is the Modbus simulator, stopped while the
update comes and started again after; the write goes through the whole in-process gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from test_opcua_server import running_gateway
from test_shadow_service import config, shadow_of

from gateway.commands import WriteResult, WriteStatus
from gateway.shadow.service import ShadowService
from gateway.types import Message, MessageKind, Quality, Sample, telemetry_topic
from protocols.modbus.simulator import SimulatedDevice, Simulator


def _config(port: int, db: Path, retry: float | None) -> str:
    text = config(port, db)
    if retry is None:
        return text
    return text.replace(
        "  poll_interval: 0.1\n", f"  poll_interval: 0.1\n  retry_unreachable: {retry}\n"
    )


def _reported(shadow: ShadowService, key: str) -> object:
    doc = shadow.state("pump")
    return None if doc is None else doc.reported.get(key)


async def _refused_while_down(
    simulator: Simulator, shadow: ShadowService, device: SimulatedDevice, value: int
) -> None:
    """Stop the device, wait until the gateway sees it down, and set speed: refused."""
    await simulator.stop_device(device)
    await wait_for(
        lambda: not shadow.adapters["pump"].status()["connected"],
        message="the device is down",
    )
    await shadow.update("pump", {"speed": value})
    await wait_for(lambda: "speed" in (shadow.state("pump") or _never()).errors, message="refused")
    error = (shadow.state("pump") or _never()).errors["speed"]
    assert error["status"] == "unreachable" and error["value"] == value


@contextlib.asynccontextmanager
async def _refused(
    simulator: Simulator, tmp_path: Path, retry: float | None
) -> AsyncIterator[tuple[Any, ShadowService, SimulatedDevice]]:
    """A gateway shadowing pump (speed 5), whose write of speed 42 was refused as unreachable:
    the device stopped."""
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    async with running_gateway(_config(device.port, tmp_path / "s.db", retry)) as gateway:
        shadow = shadow_of(gateway)
        await wait_for(lambda: _reported(shadow, "speed") == 5, message="reported 5")
        await _refused_while_down(simulator, shadow, device, 42)
        yield gateway, shadow, device


def _never() -> object:
    raise AssertionError("no shadow document")


@pytest.mark.parametrize("retry", [None, 30])  # None: the default (30 s)
async def test_written_when_the_device_reads_again(
    simulator: Simulator, tmp_path: Path, retry: float | None
) -> None:
    async with _refused(simulator, tmp_path, retry) as (gateway, shadow, device):
        assert device.get_registers("holding", 10) == [5]
        # a bad reading says the device is still down: no retry
        bad = Sample.now("temp", None, Quality.BAD, reason="connection refused")
        await gateway.bus.publish(
            Message(telemetry_topic("pump"), MessageKind.TELEMETRY, (bad,), "pump", device="pump")
        )
        await wait_for(
            lambda: (shadow.state("pump") or _never()).quality.get("temp") == "bad",
            message="the bad reading recorded",
        )
        assert shadow.counters["retries"] == 0 and shadow.counters["writes"] == 1
        await simulator.start_device(device)
        await wait_for(lambda: device.get_registers("holding", 10) == [42], message="written")
        await wait_for(lambda: _reported(shadow, "speed") == 42, message="reported 42")
        await wait_for(lambda: not (shadow.state("pump") or _never()).errors, message="cleared")
        assert shadow.counters["retries"] == 1
        assert shadow.counters["writes"] == 2  # the refused one and the retry


async def test_a_later_desired_value_is_the_one_written(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with _refused(simulator, tmp_path, 30) as (gateway, shadow, device):
        await shadow.update("pump", {"speed": 43})  # refused too: the device is still down
        await wait_for(
            lambda: (shadow.state("pump") or _never()).errors.get("speed", {}).get("value") == 43,
            message="43 refused",
        )
        await simulator.start_device(device)
        await wait_for(lambda: _reported(shadow, "speed") == 43, message="reported 43")
        assert shadow.counters["retries"] == 1  # 43 only; 42 is no longer wanted


@pytest.mark.parametrize("retry", [0, 0.2])
async def test_not_written_when_off_or_too_late(
    simulator: Simulator, tmp_path: Path, retry: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.shadow.service")
    async with _refused(simulator, tmp_path, retry) as (gateway, shadow, device):
        await asyncio.sleep(retry + 0.1)  # past the deadline (with 0.2 s)
        device.set_registers("holding", 10, [6])  # so a reading after the restart is told apart
        await simulator.start_device(device)
        # the retry is decided as that reading is recorded: nothing was started by then
        await wait_for(lambda: _reported(shadow, "speed") == 6, message="reported 6")
        assert shadow.counters["retries"] == 0 and shadow.counters["writes"] == 1
        assert device.get_registers("holding", 10) == [6]
        assert (shadow.state("pump") or _never()).errors["speed"]["status"] == "unreachable"
        late = [r for r in caplog.records if "unreachable for longer than" in r.getMessage()]
        assert len(late) == (1 if retry else 0)


async def test_retried_once(
    simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _refused(simulator, tmp_path, 30) as (gateway, shadow, device):

        async def unreachable(*args: object, **kwargs: object) -> WriteResult:
            return WriteResult(WriteStatus.UNREACHABLE, "the link dropped again")

        monkeypatch.setattr(shadow.router, "write", unreachable)
        await simulator.start_device(device)
        await wait_for(lambda: shadow.counters["writes"] == 2, message="retried")
        for value in (7, 8):  # later readings: no second retry
            device.set_registers("holding", 10, [value])
            await wait_for(lambda v=value: _reported(shadow, "speed") == v, message=f"{value}")
        assert shadow.counters["retries"] == 1 and shadow.counters["writes"] == 2


async def test_not_written_when_desired_went_back(simulator: Simulator, tmp_path: Path) -> None:
    async with _refused(simulator, tmp_path, 30) as (gateway, shadow, device):
        doc = await shadow.update("pump", {"speed": 5})  # what the device has: nothing to write
        assert doc.delta == {}
        device.set_registers("input", 0, [250])
        await simulator.start_device(device)
        await wait_for(lambda: _reported(shadow, "temp") == 25.0, message="reads again")
        assert shadow.counters["retries"] == 0 and device.get_registers("holding", 10) == [5]
