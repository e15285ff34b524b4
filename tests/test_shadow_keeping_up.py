"""The shadow keeps up with the readings: a wakeup's readings in one transaction, and a store
that still falls behind says so (log and status) instead of dropping readings silently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import wait_for

from gateway.bus import Bus
from gateway.config.model import ShadowSection
from gateway.shadow import service as service_module
from gateway.shadow.service import ShadowService
from gateway.shadow.store import ShadowDocument, ShadowStore
from gateway.types import Message, MessageKind, Quality, Sample


def commits(store: ShadowStore) -> list[str]:
    said: list[str] = []
    store.db.conn.set_trace_callback(lambda sql: said.append(sql) if sql == "COMMIT" else None)
    return said


def test_a_batch_is_one_transaction_and_a_failing_reading_loses_only_itself(
    tmp_path: Path,
) -> None:
    store = ShadowStore(str(tmp_path / "s.db"), max_rows=1000)
    store.prune()  # the row counts are kept from now on
    said = commits(store)
    batch: list[tuple[str, Any]] = [
        ("pump", {"t": (1, "good", 1.0)}),
        ("fan", {"t": (2, "good", 2.0)}),
        ("pump", {"t": (object(), "good", 3.0)}),  # not JSON: this reading fails
        ("pump", {"t": (3, "good", 4.0), "u": (None, "bad", 4.0)}),
        ("fan", {"t": (2, "good", 5.0)}),  # no change
    ]
    results = store.report_many(batch)
    assert said == ["COMMIT"]
    assert isinstance(results[2], TypeError)
    assert isinstance(results[3], ShadowDocument) and results[3].reported == {"t": 3}
    assert results[3].quality == {"u": "bad"} and results[4] is None
    assert [r.value for r in store.history("pump", "t")] == [1, 3]
    assert [r.value for r in store.history("fan", "t")] == [2]
    assert store.get("pump").version == 2  # the failed reading left no trace
    assert store._counts == {("pump", "t"): 2, ("pump", "u"): 1, ("fan", "t"): 1}


def test_a_database_error_in_a_batch_records_the_others_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ShadowStore(str(tmp_path / "s.db"))
    save = store._save

    def failing_save(conn: sqlite3.Connection, doc: ShadowDocument) -> None:
        if doc.device == "bad":
            raise sqlite3.OperationalError("database or disk is full")
        save(conn, doc)

    monkeypatch.setattr(store, "_save", failing_save)
    results = store.report_many(
        [("pump", {"t": (1, "good", 1.0)}), ("bad", {"t": (1, "good", 1.0)}), ("fan", {})]
    )
    assert isinstance(results[0], ShadowDocument) and results[2] is None
    assert isinstance(results[1], sqlite3.OperationalError)
    assert [r.value for r in store.history("pump", "t")] == [1]
    assert store.history("bad", "t") == []


def reading(i: int) -> Message:
    return Message.telemetry("pump", (Sample("t", i, Quality.GOOD, float(i), float(i)),))


async def test_drops_are_said_once_when_they_start_and_end_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service_module, "TELEMETRY_QUEUE", 100, raising=False)
    bus = Bus()
    config = ShadowSection(path=str(tmp_path / "s.db"), devices=["pump"])
    router: Any = SimpleNamespace(points=set())
    async with ShadowService(config, bus, router, {}) as shadow:
        assert shadow.store is not None
        for i in range(150):  # the store is not running yet: 50 readings do not fit
            bus.publish_nowait(reading(i))
        said = commits(shadow.store)
        task = asyncio.create_task(shadow.run())
        try:
            await wait_for(lambda: shadow.counters["reported"] == 100, message="the 100 kept")
            await wait_for(lambda: shadow.status()["queued"] == 0)
            assert len(said) <= 3  # the prune at start, one batch, maybe a second one
            assert shadow.status()["dropped"] == 50
            doc = shadow.state("pump")
            assert doc is not None and doc.reported["t"] == 149
            lines = [r.getMessage() for r in caplog.records if r.name == service_module.__name__]
            assert len(lines) == 2, lines
            assert "50 readings dropped" in lines[0] and "cannot keep up" in lines[0]
            assert "keeps up again" in lines[1] and "50 readings dropped" in lines[1]
            for i in range(150, 160):  # keeping up: nothing more is said
                bus.publish_nowait(reading(i))
            await wait_for(lambda: shadow.counters["reported"] == 110)
            assert len([r for r in caplog.records if r.name == service_module.__name__]) == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert caplog.records[0].levelno == logging.WARNING


@contextlib.asynccontextmanager
async def delayed_shadow(path: Path, delay: float) -> AsyncIterator[tuple[ShadowService, Bus]]:
    """A running shadow of device pump with ``write_delay``, its first reading recorded (so
    the service is sleeping out its delay); cancelled, then closed, at exit. History keeps
    every row: the readings are stamped in 1970."""
    bus = Bus()
    config = ShadowSection(
        path=str(path), devices=["pump"], write_delay=delay, history={"max_age": None}
    )
    router: Any = SimpleNamespace(points=set())
    async with ShadowService(config, bus, router, {}) as shadow:
        task = asyncio.create_task(shadow.run())
        try:
            bus.publish_nowait(reading(1))
            await wait_for(lambda: shadow.counters["reported"] == 1, message="the first")
            yield shadow, bus
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_write_delay_records_the_readings_of_its_window_together(tmp_path: Path) -> None:
    async with delayed_shadow(tmp_path / "s.db", 3.0) as (shadow, bus):
        assert shadow.store is not None
        said = commits(shadow.store)
        for i in range(2, 22):  # within the delay after the first transaction
            bus.publish_nowait(reading(i))
            await asyncio.sleep(0.005)
        assert shadow.counters["reported"] == 1  # waiting
        await wait_for(lambda: shadow.counters["reported"] == 21, timeout=10, message="all 21")
        assert said == ["COMMIT"]  # the 20 in one transaction
        doc = shadow.state("pump")
        assert doc is not None and doc.reported["t"] == 21


async def test_readings_still_queued_at_shutdown_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with delayed_shadow(path, 5.0) as (shadow, bus):
        for i in range(2, 12):  # the service sleeps out its delay: these wait
            bus.publish_nowait(reading(i))
        await asyncio.sleep(0.1)
        assert shadow.counters["reported"] == 1
    store = ShadowStore(str(path))
    try:
        assert store.get("pump").reported["t"] == 11
        assert [r.value for r in store.history("pump", "t")] == list(range(1, 12))
    finally:
        store.close()


def test_shadow_write_delay_is_checked() -> None:
    assert ShadowSection(write_delay=0.1).write_delay == 0.1
    with pytest.raises(ValueError, match="write_delay"):
        ShadowSection(write_delay=-1)


async def test_write_delay_ends_early_once_a_batch_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "MAX_BATCH", 5)
    async with delayed_shadow(tmp_path / "s.db", 10.0) as (shadow, bus):
        for i in range(2, 7):  # a batch's worth: the queue must not wait 10 s and overflow
            bus.publish_nowait(reading(i))
        await wait_for(lambda: shadow.counters["reported"] == 6, timeout=5, message="all 6")


async def test_a_devices_events_are_not_its_reported_state(tmp_path: Path) -> None:
    """An OPC UA client's events and alarms come on the device's telemetry topic: the shadow
    records its readings, not the events' fields."""
    async with delayed_shadow(tmp_path / "s.db", 0.0) as (shadow, bus):
        alarm = (Sample("event.severity", 700, Quality.GOOD, 2.0, 2.0),)
        bus.publish_nowait(
            Message("telemetry/pump", MessageKind.EVENT, alarm, "pump", device="pump")
        )
        bus.publish_nowait(reading(3))
        await wait_for(lambda: shadow.counters["reported"] == 2, message="the reading after it")
        doc = shadow.state("pump")
        assert doc is not None and doc.reported == {"t": 3}
        assert shadow.store is not None and shadow.store.history("pump", "event.severity") == []
