"""The outbox on a bad disk: it writes again soon after space returns without flapping, and a
damaged file or log is never silent (nor moved or deleted: it holds accepted data)."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.uplink.outbox import Outbox

MiB = 1 << 20
BIG = [("t", b"x" * 2000, 1, False)] * 20


def fill(box: Outbox) -> None:
    """The disk is full for the outbox (its file may not grow) until `room`."""
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count={pages}")
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for _ in range(5):
        box.append(BIG)
    assert box.disk_full


def room(box: Outbox) -> None:
    box._db.execute("PRAGMA max_page_count=1073741823")


def test_it_writes_again_at_the_reserve_plus_an_eighth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    free = {"bytes": 0}
    box = Outbox(tmp_path / "o.db")
    box.append(BIG)
    box.commit()
    monkeypatch.setattr(
        os, "statvfs", lambda _p: SimpleNamespace(f_bavail=free["bytes"] // 4096, f_frsize=4096)
    )
    fill(box)
    assert "until 2.25 MiB are free" in caplog.text
    room(box)
    free["bytes"] = 2 * MiB + 200 * 1024  # under the spare file plus an eighth: still full
    time.sleep(1.05)
    box.append(BIG)
    assert box.disk_full
    free["bytes"] = 3 * MiB  # was not enough before (twice the spare file, 4 MiB)
    time.sleep(1.05)
    assert box.append(BIG) == 20
    assert not box.disk_full and "room again" in caplog.text
    box.close()


def test_full_again_soon_after_it_waits_longer_before_looking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(os, "statvfs", lambda _p: SimpleNamespace(f_bavail=1024, f_frsize=4096))
    box = Outbox(tmp_path / "o.db")  # 4 MiB free, as far as it can tell
    box.append(BIG)
    box.commit()
    fill(box)
    room(box)
    time.sleep(1.05)
    box.append(BIG)
    assert not box.disk_full
    fill(box)  # full again at once: the next look waits 2 s
    assert "looks again in 2 s" in caplog.text
    room(box)
    time.sleep(1.05)
    box.append(BIG)
    assert box.disk_full
    time.sleep(1.0)
    box.append(BIG)
    assert not box.disk_full
    box.close()


def test_a_damaged_file_is_left_alone_and_the_error_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    data = os.urandom(40_000)
    path.write_bytes(data)
    with pytest.raises(Exception) as err:
        Outbox(path)
    text = str(err.value)
    assert str(path) in text and "move it aside" in text and "sqlite3" in text
    assert path.read_bytes() == data


def test_another_sqlite_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """outbox.path pointing at the shadow store (or any application's database) by a slip:
    the outbox created its tables in it and went on; now it refuses, writing nothing."""
    from gateway.shadow.store import ShadowStore

    path = tmp_path / "shadow.db"
    store = ShadowStore(str(path))
    store.report("pump", {"flow": (1.0, "good", 1.0)})
    store.close()
    before = path.read_bytes()
    with pytest.raises(sqlite3.DatabaseError) as err:
        Outbox(path)
    text = str(err.value)
    assert str(path) in text and "not an outbox" in text and "history" in text
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "outbox" not in tables and "meta" not in tables
    assert ShadowStore(str(path)).get("pump").reported == {"flow": 1.0}  # still the shadow's


def test_the_log_of_a_damaged_file_is_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    data, log_bytes = os.urandom(40_000), os.urandom(50_000)
    path.write_bytes(data)
    wal = tmp_path / "o.db-wal"
    wal.write_bytes(log_bytes)  # SQLite deletes it when a connection to such a file closes
    for _ in range(2):  # the gateway is restarted, and again
        with pytest.raises(Exception, match="move it aside"):
            Outbox(path)
    assert wal.read_bytes() == log_bytes and path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.db", "o.db-wal", "o.db.lock"]


def test_an_empty_file_starts_an_empty_outbox_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    path.touch()
    box = Outbox(path)
    assert box.rows == 0
    box.close()
    said = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "was empty (0 bytes" in said[0].getMessage()
    Outbox(path).close()  # a new outbox on no file, or a good one: nothing to say
    Outbox(tmp_path / "new.db").close()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


CRASH = r"""
import os, sys
from gateway.uplink.outbox import Outbox
box = Outbox(sys.argv[1])
for i in range(100):
    box.append([("t/%d" % i, b"x" * 200, 1, False)])
os._exit(0)  # no close: the log stays, as after a crash
"""


def crashed(path: Path) -> Path:
    subprocess.run([sys.executable, "-c", CRASH, str(path)], check=True, cwd=Path.cwd())
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0
    return wal


def damage(wal: Path, offset: int) -> bytes:
    data = bytearray(wal.read_bytes())
    data[offset] ^= 0xFF
    wal.write_bytes(bytes(data))
    return bytes(data)


def test_the_log_of_a_crash_is_applied_without_a_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    crashed(path)
    box = Outbox(path)
    assert box.rows == 100
    box.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("where", ["header", "frame"])
def test_a_damaged_log_is_said_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    path = tmp_path / "o.db"
    wal = crashed(path)
    page = 4096
    damaged = damage(wal, 5 if where == "header" else 32 + (24 + page) * 3 + 24 + 100)
    box = Outbox(path)
    lost = 100 - box.rows
    assert lost > 0  # what SQLite does; the outbox cannot undo it, only say it
    box.close()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1, said
    assert str(wal) in said[0] and "damaged" in said[0]
    copy = tmp_path / "o.db-wal.bad"
    assert str(copy) in said[0] and copy.read_bytes() == damaged
