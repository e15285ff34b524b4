"""Shadow history staging: rows go to an unindexed table first and are merged into the indexed one
in bulk (store docstring, "History on the disk"); queries, retention and a crash see no
difference."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.shadow.store import ShadowStore

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tables(path: Path) -> dict[str, int]:
    """Rows in the indexed history table and in the staging table, read by another connection."""
    with sqlite3.connect(path) as db:
        return {
            name: db.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            for name in ("history", "history_staged")
        }


def test_staged_rows_are_in_history_queries_before_a_merge(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(str(path))
    for i in range(5):
        store.report("pump", {"t": (i, "good", 100.0 + i)})
    assert store.merge() == 5
    for i in range(5, 10):  # 104.0 again: of equal times the later recording is the newer
        store.report("pump", {"t": (i, "good", 99.0 + i)})
    assert tables(path) == {"history": 5, "history_staged": 5}
    assert [r.value for r in store.history("pump", "t")] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [r.value for r in store.history("pump", "t", last=3)] == [7, 8, 9]
    assert [r.value for r in store.history("pump", "t", last=7)] == [3, 4, 5, 6, 7, 8, 9]
    rows = store.history("pump", "t", since=103.0, until=105.0)
    assert [(r.ts, r.value) for r in rows] == [(103.0, 3), (104.0, 4), (104.0, 5), (105.0, 6)]
    # another process's view (the CLI): the same rows, staged ones included
    other = ShadowStore(str(path))
    assert [r.value for r in other.history("pump", "t", last=4)] == [6, 7, 8, 9]
    other.close()  # a reader does not merge what another store staged
    assert tables(path) == {"history": 5, "history_staged": 5}
    before = store.history("pump", "t")
    store.merge()
    assert tables(path) == {"history": 10, "history_staged": 0}
    assert store.history("pump", "t") == before
    store.close()


def test_retention_counts_staged_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(str(path), max_rows=4, max_age=100.0)
    for i in range(3):
        store.report("pump", {"t": (i, "good", 1000.0 + i)})
    store.merge()
    assert store.prune(now=1010.0) == 0  # counts the rows (none staged)
    for i in range(3, 6):
        store.report("pump", {"t": (i, "good", 1000.0 + i)})
    store.report("pump", {"t": (6, "good", 999.0)})  # a device clock that went back
    assert tables(path) == {"history": 3, "history_staged": 4}
    # 7 rows, the newest 4 by time kept: the oldest one is a staged row
    assert store.prune(now=1010.0) == 3
    assert [r.value for r in store.history("pump", "t")] == [2, 3, 4, 5]
    assert tables(path) == {"history": 1, "history_staged": 3}
    assert store.prune(now=1010.0) == 0  # the counts followed
    # by age: staged rows too
    store.report("pump", {"t": (7, "good", 1050.0)})
    assert store.prune(now=1104.5) == 3  # 1002 (merged), 1003 and 1004 (staged)
    assert [r.ts for r in store.history("pump", "t")] == [1005.0, 1050.0]
    # a reopened store counts staged rows from the file
    store.close()
    store = ShadowStore(str(path), max_rows=1, max_age=None)
    store.report("pump", {"t": (8, "good", 1060.0)})
    assert store.prune(now=1070.0) == 2
    assert [r.value for r in store.history("pump", "t")] == [8]
    store.close()


def test_merge_on_time_on_size_and_at_close(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    mono = Clock()
    store = ShadowStore(str(path), monotonic=mono, merge_interval=10.0, merge_rows=6)
    for i in range(4):
        store.report("pump", {"t": (i, "good", 100.0 + i)})
    assert tables(path) == {"history": 0, "history_staged": 4}
    mono.now = 10.5  # the interval has passed: the next recording merges
    store.report_many([("pump", {"t": (4, "good", 104.0)}), ("fan", {"t": (0, "good", 104.0)})])
    assert tables(path) == {"history": 6, "history_staged": 0} and store.merges == 1
    store.report_many([("pump", {f"p{i}": (i, "good", 105.0) for i in range(5)})])
    assert tables(path) == {"history": 6, "history_staged": 5}
    store.report("pump", {"p9": (1, "good", 106.0)})  # 6 staged: merged at once
    assert tables(path) == {"history": 12, "history_staged": 0} and store.merges == 2
    store.report("pump", {"t": (5, "good", 107.0)})
    store.close()
    assert tables(path) == {"history": 13, "history_staged": 0}


def test_a_failed_merge_waits_its_interval_even_past_merge_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past merge_rows a merge that failed (a lock, a full disk) was tried again at every
    reading, each a warning and a pass over all the staged rows."""
    mono = Clock()
    store = ShadowStore(str(tmp_path / "s.db"), monotonic=mono, merge_interval=10.0, merge_rows=3)
    tries = []

    def locked() -> int:
        tries.append(mono.now)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "merge", locked)
    for i in range(10):
        store.report("pump", {"t": (i, "good", 100.0 + i)})
    assert tries == [0.0]
    mono.now = 10.5
    store.report("pump", {"t": (10, "good", 110.0)})
    assert tries == [0.0, 10.5]
    assert len([r for r in caplog.records if "merging staged" in r.getMessage()]) == 2
    assert store.merge_failing and store.staged_rows == 11  # what the gateway's status shows
    monkeypatch.undo()
    mono.now = 21.0
    store.report("pump", {"t": (11, "good", 111.0)})
    assert tables(tmp_path / "s.db") == {"history": 12, "history_staged": 0}
    assert not store.merge_failing and store.staged_rows == 0 and store.merges == 1
    store.close()


def test_a_reading_dirties_a_few_pages_not_one_per_point(tmp_path: Path) -> None:
    """The point of staging: a transaction of readings of 60 points writes the staging table's
    last page and the document, not each point's page of the index."""
    path = tmp_path / "s.db"
    points = [f"p{i}" for i in range(60)]
    store = ShadowStore(str(path))
    for n in range(200):  # each point's index spans pages of its own
        store.report("pump", {p: (n, "good", 1000.0 + n) for p in points})
    store.close()  # merged
    store = ShadowStore(str(path))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.report_many([("pump", {p: (-1, "good", 2000.0)}) for p in points])
    frames = store.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    assert frames <= 6, frames  # before staging: 60 index pages and more
    store.close()


def test_rows_committed_before_a_kill_are_kept_and_merged_later(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from gateway.shadow.store import ShadowStore
        store = ShadowStore({str(path)!r})
        for i in range(50):
            store.report("pump", {{"t": (i, "good", 100.0 + i)}})
        print("recorded", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL and "recorded" in done.stdout, done.stderr
    store = ShadowStore(str(path), max_rows=40)
    assert [r.value for r in store.history("pump", "t")] == list(range(50))
    assert tables(path) == {"history": 0, "history_staged": 50}
    assert store.prune() == 10  # counted, staged rows included
    store.report("pump", {"t": (50, "good", 150.0)})
    store.close()  # merges what is staged, the earlier run's rows too
    assert tables(path) == {"history": 41, "history_staged": 0}
    store = ShadowStore(str(path))
    assert [r.value for r in store.history("pump", "t")] == list(range(10, 51))
    store.close()


def test_a_connection_closed_without_merging_leaves_every_row(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(str(path))
    store.report_many([("pump", {"t": (1, "good", 1.0)}), ("fan", {"t": (2, "good", 2.0)})])
    store.db.conn.close()  # no close(): no merge
    assert tables(path) == {"history": 0, "history_staged": 2}
    store = ShadowStore(str(path))
    assert [r.value for r in store.history("fan", "t")] == [2]
    store.merge()
    assert [r.value for r in store.history("pump", "t")] == [1]
    store.close()


def test_a_file_from_before_staging_opens_and_works(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the layout before staging, with a reading
        db.execute(
            "CREATE TABLE shadows (device TEXT PRIMARY KEY, version INTEGER, "
            "desired_rev INTEGER, timestamp FLOAT, body TEXT)"
        )
        db.execute(
            "CREATE TABLE history (id INTEGER PRIMARY KEY, device TEXT, point TEXT, "
            "ts FLOAT, value TEXT, quality TEXT)"
        )
        db.execute("CREATE INDEX history_point_ts ON history (device, point, ts)")
        db.execute(
            'INSERT INTO shadows VALUES (\'pump\', 1, 0, 10.0, \'{"reported":{"t":1},'
            '"desired":{},"metadata":{"reported":{},"desired":{}},"errors":{}}\')'
        )
        db.execute(
            "INSERT INTO history (device, point, ts, value, quality) VALUES "
            "('pump', 't', 10.0, '1', 'good')"
        )
    db.close()
    store = ShadowStore(str(path), max_rows=2)
    assert store.get("pump").reported == {"t": 1}
    store.report("pump", {"t": (2, "good", 11.0)})
    store.report("pump", {"t": (3, "good", 12.0)})
    assert tables(path) == {"history": 1, "history_staged": 2}
    assert [r.value for r in store.history("pump", "t")] == [1, 2, 3]
    assert store.prune(now=20.0) == 1
    store.close()
    assert tables(path) == {"history": 2, "history_staged": 0}
