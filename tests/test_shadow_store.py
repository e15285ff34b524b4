"""ShadowStore: versions and conflicts, null deletes, delta, metadata, history and retention."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.shadow.store import ShadowStore, VersionConflict, compute_delta


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ShadowStore:
    return ShadowStore(str(tmp_path / "shadow.db"), clock=clock)


def test_versions_and_conflict(store: ShadowStore, tmp_path: Path) -> None:
    assert store.get("pump").version == 0
    doc = store.update("pump", desired={"speed": 10})
    assert doc.version == 1
    doc = store.update("pump", desired={"speed": 20}, version=1)
    assert doc.version == 2
    with pytest.raises(VersionConflict) as exc:
        store.update("pump", desired={"speed": 30}, version=1)
    assert exc.value.actual == 2
    assert store.get("pump").desired == {"speed": 20}


def test_two_concurrent_writers_with_the_same_version(tmp_path: Path) -> None:
    path = str(tmp_path / "shadow.db")
    ShadowStore(path).update("pump", desired={"speed": 1})
    results: list[str] = []
    barrier = threading.Barrier(2)

    def writer(value: int) -> None:
        store = ShadowStore(path)
        version = store.get("pump").version
        barrier.wait()
        try:
            store.update("pump", desired={"speed": value}, version=version)
            results.append("ok")
        except VersionConflict:
            results.append("conflict")
        store.close()

    threads = [threading.Thread(target=writer, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict", "ok"]
    assert ShadowStore(path).get("pump").version == 2


def test_null_deletes_and_nested_merge(store: ShadowStore) -> None:
    store.update("pump", desired={"speed": 10, "mode": "auto", "pid": {"p": 1, "i": 2}})
    doc = store.update("pump", desired={"mode": None, "pid": {"i": None, "d": 3}})
    assert doc.desired == {"speed": 10, "pid": {"p": 1, "d": 3}}
    assert "mode" not in doc.metadata["desired"]
    doc = store.update("pump", desired={"pid": {"p": None, "d": None}})
    assert doc.desired == {"speed": 10}


def test_delta(store: ShadowStore) -> None:
    assert compute_delta({"a": 1, "b": 2.0, "c": {"x": 1}}, {"a": 1, "b": 2.0000001}) == {
        "c": {"x": 1}
    }
    assert compute_delta({"on": True}, {"on": 1}) == {"on": True}
    store.update("pump", desired={"speed": 10, "mode": "auto"})
    store.report("pump", {"speed": (5, "good", 1.0), "mode": ("auto", "good", 1.0)})
    doc = store.get("pump")
    assert doc.delta == {"speed": 10}
    assert doc.to_json()["state"]["delta"] == {"speed": 10}
    store.report("pump", {"speed": (10, "good", 2.0)})
    doc = store.get("pump")
    assert doc.delta == {}
    assert "delta" not in doc.to_json()["state"]


def test_metadata_timestamps(store: ShadowStore, clock: Clock) -> None:
    store.update("pump", desired={"speed": 10, "mode": "auto"})
    clock.t = 2000.0
    doc = store.update("pump", desired={"speed": 11})
    assert doc.metadata["desired"]["speed"] == {"timestamp": 2000.0}
    assert doc.metadata["desired"]["mode"] == {"timestamp": 1000.0}
    assert doc.timestamp == 2000.0
    doc = store.report("pump", {"speed": (11, "good", 1500.0)})  # type: ignore[assignment]
    assert doc.metadata["reported"]["speed"] == {"timestamp": 1500.0}


def test_reports_only_write_changes_and_keep_quality(store: ShadowStore) -> None:
    assert store.report("pump", {"t": (1, "good", 1.0)}) is not None
    assert store.report("pump", {"t": (1, "good", 2.0)}) is None  # unchanged: nothing written
    doc = store.report("pump", {"t": (None, "bad", 3.0)})
    assert doc is not None and doc.reported == {"t": 1} and doc.quality == {"t": "bad"}
    doc = store.report("pump", {"t": (1, "good", 4.0)})
    assert doc is not None and doc.quality == {}
    assert [r.quality for r in store.history("pump", "t")] == ["good", "bad", "good"]


def test_errors_stay_until_desired_changes_or_is_reached(store: ShadowStore) -> None:
    store.update("pump", desired={"speed": 999})
    store.set_error("pump", "speed", 999, "out_of_range", "999 is above 100")
    doc = store.get("pump")
    assert doc.errors["speed"]["status"] == "out_of_range" and doc.delta == {"speed": 999}
    doc = store.update("pump", desired={"speed": 50})
    assert doc.errors == {}


def test_history_queries(store: ShadowStore) -> None:
    for i in range(10):
        store.report("pump", {"t": (i, "good", 100.0 + i)})
    assert [r.value for r in store.history("pump", "t", last=3)] == [7, 8, 9]
    rows = store.history("pump", "t", since=102.0, until=104.0)
    assert [(r.ts, r.value) for r in rows] == [(102.0, 2), (103.0, 3), (104.0, 4)]
    assert store.history("pump", "other") == []


def test_history_retention_by_age_and_rows(tmp_path: Path, clock: Clock) -> None:
    store = ShadowStore(str(tmp_path / "s.db"), max_age=50, max_rows=5, clock=clock)
    for i in range(20):
        store.report("pump", {"t": (i, "good", 900.0 + i * 10)})  # 900 .. 1090
        store.report("pump", {"u": (i, "good", 1070.0 + i)})  # 1070 .. 1089
    deleted = store.prune(now=1100.0)
    t = store.history("pump", "t")
    assert [r.ts for r in t] == [1050.0, 1060.0, 1070.0, 1080.0, 1090.0]  # by age
    u = store.history("pump", "u")
    assert [r.value for r in u] == [15, 16, 17, 18, 19]  # by rows: the newest 5
    assert deleted == 15 + 15
