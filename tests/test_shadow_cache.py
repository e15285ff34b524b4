"""The store's per-device document cache: readings reuse the document they saved, yet every change
made by another process, and every rollback, is seen as the file has it."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.shadow.store import ShadowDocument, ShadowLimitError, ShadowStore

MiB = 1 << 20


def in_file(path: Path, device: str) -> dict[str, Any]:
    """The device's document as a store that has cached nothing reads it."""
    fresh = ShadowStore(str(path))
    try:
        return fresh.get(device).to_json()
    finally:
        fresh.close()


def body_in_file(path: Path, device: str) -> str:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT body FROM shadows WHERE device = ?", (device,)).fetchone()
    return str(row[0])


def test_readings_reuse_the_document_and_write_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(str(path))
    rng = random.Random(3)
    points = [f"p{i}" for i in range(50)]
    for i in range(40):
        samples = {
            p: (rng.choice([rng.random(), i, "é", None, True]), "good", 1.0 + i)
            for p in rng.sample(points, 5)
        }
        samples["q"] = (i, rng.choice(["good", "uncertain", "bad"]), 1.0 + i)
        store.report("pump", samples)
    assert store.decoded == 0  # never read back from the file: each load took the cache
    doc = store.get("pump")
    assert store.decoded == 0
    # What the cache's encoder wrote is what json.dumps writes (other processes read it).
    assert body_in_file(path, "pump") == doc._body()
    assert in_file(path, "pump") == doc.to_json()
    store.close()


def test_changes_by_another_process_are_seen_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    gateway = ShadowStore(str(path))
    cli = ShadowStore(str(path))  # another process: its own connection to the file
    gateway.report("pump", {"t": (1, "good", 1.0), "u": (1, "good", 1.0)})
    cli.update("pump", desired={"t": 5, "mode": {"a": 1}}, reported={"extra": 7})
    doc = gateway.report("pump", {"u": (2, "good", 2.0)})  # a reading after that change
    assert doc is not None
    assert doc.desired == {"t": 5, "mode": {"a": 1}} and doc.reported["extra"] == 7
    assert doc.reported["u"] == 2 and doc.delta == {"t": 5, "mode": {"a": 1}}
    assert in_file(path, "pump") == doc.to_json()  # the reading lost nothing of the update

    # A change that leaves version, desired_rev and timestamp as they were: errors.
    cli.set_errors("pump", {"t": (5, "out_of_range", "above 4")})
    assert gateway.get("pump").errors["t"]["status"] == "out_of_range"
    doc = gateway.report("pump", {"u": (3, "good", 3.0)})
    assert doc is not None and doc.errors["t"]["reason"] == "above 4"
    assert in_file(path, "pump") == doc.to_json()

    # And the other way round: the CLI's store, which cached the document, sees the readings.
    assert cli.get("pump").reported["u"] == 3
    gateway.report("pump", {"t": (5, "good", 4.0)})  # desired reached: the error clears
    seen = cli.get("pump")
    assert seen.reported["t"] == 5 and seen.errors == {} and seen.delta == {"mode": {"a": 1}}
    cli.close()
    gateway.close()


def test_a_rolled_back_reading_leaves_the_cache_as_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(str(path))
    store.report("pump", {"a": (1, "good", 1.0), "b": (1, "good", 1.0)})
    results = store.report_many(
        [
            ("pump", {"a": (2, "good", 2.0)}),
            # changes a, b and b's quality in the document, then fails (not JSON): rolled back
            (
                "pump",
                {"a": (9, "good", 3.0), "b": (None, "bad", 3.0), "x": (object(), "good", 3.0)},
            ),
            ("fan", {"a": (9, "good", 3.0), "x": (object(), "good", 3.0)}),  # a new document
        ]
    )
    assert isinstance(results[1], TypeError) and isinstance(results[2], TypeError)
    assert store.get("pump").to_json() == in_file(path, "pump")
    assert store.get("pump").reported == {"a": 2, "b": 1} and store.get("pump").quality == {}
    assert store.get("fan").version == 0
    decoded = store.decoded
    doc = store.report("pump", {"c": (3, "good", 4.0)})
    assert store.decoded == decoded  # from the cache
    assert doc is not None and doc.reported == {"a": 2, "b": 1, "c": 3}
    assert doc.to_json() == in_file(path, "pump")  # what a fresh store has after it

    # A batch that fails as a whole (a full disk) leaves the cache as the file too.
    save = store._save

    def full(conn: sqlite3.Connection, doc: ShadowDocument) -> None:
        save(conn, doc)
        raise sqlite3.OperationalError("database or disk is full")

    store._save = full  # type: ignore[method-assign]
    for result in store.report_many([("pump", {"a": (7, "good", 5.0)}), ("fan", {})]):
        assert isinstance(result, sqlite3.OperationalError | type(None))
    with pytest.raises(sqlite3.OperationalError):
        store.report("pump", {"a": (8, "good", 6.0)})
    del store._save
    assert store.get("pump").to_json() == in_file(path, "pump")
    doc = store.report("pump", {"d": (4, "good", 7.0)})
    assert doc is not None and doc.reported == {"a": 2, "b": 1, "c": 3, "d": 4}
    assert doc.to_json() == in_file(path, "pump")
    store.close()


def test_a_refused_update_leaves_the_cache_as_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(str(path), max_desired_keys=3)
    store.update("pump", desired={"mode": {"a": 1}})
    store.report("pump", {"t": (1, "good", 1.0)})  # cached
    with pytest.raises(ShadowLimitError):  # merges into mode in place, then is refused
        store.update("pump", desired={"mode": {"b": 2}, "k1": 1, "k2": 2, "k3": 3})
    assert store.get("pump").desired == {"mode": {"a": 1}}
    doc = store.report("pump", {"t": (2, "good", 2.0)})
    assert doc is not None and doc.desired == {"mode": {"a": 1}}
    assert doc.to_json() == in_file(path, "pump")
    store.close()


def test_a_document_handed_out_is_the_caller_s(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(str(path))
    doc = store.report("pump", {"t": (1, "good", 1.0)})
    assert doc is not None
    doc.reported["t"] = 99  # a caller that changes what it got
    doc.metadata["reported"].clear()
    got = store.get("pump")
    got.reported["u"] = 5
    assert store.get("pump").to_json() == in_file(path, "pump")
    assert store.get("pump").reported == {"t": 1}
    store.close()


def test_documents_kept_in_memory_follow_desired_changed_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"bytes": 100 * MiB}
    monkeypatch.setattr(
        os, "statvfs", lambda _: SimpleNamespace(f_bavail=free["bytes"] // 4096, f_frsize=4096)
    )
    now = [0.0]
    path = tmp_path / "s.db"
    store = ShadowStore(str(path), min_free=64 * MiB, monotonic=lambda: now[0])
    cli = ShadowStore(str(path))
    store.report("pump", {"t": (1, "good", 1.0)})
    free["bytes"] = 1 * MiB  # under the document floor: readings stay in memory
    now[0] += 2
    store.report("pump", {"t": (2, "good", 2.0)})
    assert store.documents_paused and store.unsaved == 1
    failed = store.report_many([("pump", {"t": (3, "good", 3.0), "x": (object(), "good", 3.0)})])
    assert isinstance(failed[0], TypeError)
    cli.update("pump", desired={"t": 4})
    doc = store.report("pump", {"u": (1, "good", 4.0)})
    assert doc is not None and doc.reported == {"t": 2, "u": 1} and doc.desired == {"t": 4}
    assert cli.get("pump").reported == {"t": 1}  # not in the file yet
    free["bytes"] = 100 * MiB
    now[0] += 2
    store.report("pump", {"u": (2, "good", 5.0)})  # documents written again
    assert store.unsaved == 0
    seen = cli.get("pump")
    assert seen.reported == {"t": 2, "u": 2} and seen.desired == {"t": 4}
    assert json.loads(body_in_file(path, "pump"))["desired"] == {"t": 4}
    cli.close()
    store.close()
