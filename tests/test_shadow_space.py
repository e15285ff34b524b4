"""The shadow leaves the last ``shadow.history.min_free`` bytes of its filesystem to the outbox."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import resize

from gateway.config.model import ShadowHistory
from gateway.shadow.store import ShadowStore

MiB = 1 << 20


class Monotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_history_pauses_below_the_floor_and_state_still_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    free = {"bytes": 100 * MiB}
    looked: list[str] = []

    def statvfs(path: Any) -> Any:
        looked.append(str(path))
        return SimpleNamespace(f_bavail=free["bytes"] // 4096, f_frsize=4096)

    monkeypatch.setattr(os, "statvfs", statvfs)
    clock = Monotonic()
    store = ShadowStore(str(tmp_path / "s.db"), min_free=64 * MiB, monotonic=clock)
    value = 0

    def report() -> Any:
        nonlocal value
        value += 1
        clock.t += 1.0  # a look at the free space each time
        return store.report("pump", {"t": (value, "good", float(value)), "u": (0, "good", 1.0)})

    def history() -> list[int]:
        return [r.value for r in store.history("pump", "t")]

    report()
    assert history() == [1] and not store.history_paused
    free["bytes"] = 10 * MiB
    for _ in range(3):
        doc = report()
        assert doc is not None and doc.reported["t"] == value  # the state follows
    assert history() == [1] and store.history_paused and store.history_skipped == 3
    assert store.get("pump").reported == {"t": 4, "u": 0}
    free["bytes"] = 65 * MiB  # over the floor, not over floor + an eighth: still paused
    report()
    assert history() == [1] and store.history_skipped == 4
    free["bytes"] = 80 * MiB
    report()
    assert history() == [1, 6] and not store.history_paused

    said = [r.getMessage() for r in caplog.records if r.name == "gateway.shadow.store"]
    assert len(said) == 2, said  # once when it stops, once when it starts again
    assert "history paused: 10.0 MiB free" in said[0] and "min_free (64.0 MiB)" in said[0]
    assert "outbox has priority" in said[0] and "again at 72.0 MiB" in said[0]
    assert "recorded again: 80.0 MiB free" in said[1] and "4 history rows" in said[1]

    # At most one look a second, however many readings come.
    looked.clear()
    for _ in range(50):
        value += 1
        clock.t += 0.25  # exact in binary
        store.report("pump", {"t": (value, "good", float(value))})
    assert len(looked) == 12 and looked[0] == str(tmp_path)  # 12.5 s
    store.close()


def test_history_floor_is_a_config_key_with_a_default() -> None:
    assert ShadowHistory().min_free == 64 * MiB
    assert ShadowHistory(min_free=0).min_free == 0
    field = ShadowHistory.model_json_schema()["properties"]["min_free"]
    assert "outbox" in field["description"] and field["minimum"] == 0
    with pytest.raises(ValueError):
        ShadowHistory(min_free=-1)


def test_on_a_small_filesystem_the_shadow_stops_growing_at_the_floor(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    resize(small_disk, "24m")
    caplog.set_level(logging.WARNING)
    clock = Monotonic()
    floor = 12 * MiB
    store = ShadowStore(str(small_disk / "s.db"), min_free=floor, monotonic=clock)

    def free() -> int:
        st = os.statvfs(small_disk)
        return st.f_bavail * st.f_frsize

    points = [f"p{i}" for i in range(30)]
    n = 0
    while not store.history_paused:  # ~3 kB of history a reading of 30 changed points
        n += 1
        clock.t += 1.0
        store.report("pump", {p: (n, "good", float(n)) for p in points})
        assert n < 20_000
    rows, skipped = len(store.history("pump", "p0")), store.history_skipped
    for _ in range(6000):  # 18 MB more history than the disk has room for
        n += 1
        clock.t += 1.0
        doc = store.report("pump", {p: (n, "good", float(n)) for p in points})
        assert doc is not None
    assert len(store.history("pump", "p0")) == rows
    assert store.get("pump").reported["p0"] == n
    assert store.history_skipped == skipped + 6000 * 30
    # The document and the log (WAL, at most ~4 MiB) may take a little more.
    assert free() > floor - 5 * MiB, free()
    store.close()
