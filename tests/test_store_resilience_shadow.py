"""The shadow store on a bad disk: it leaves the outbox's room alone when the disk is nearly full,
and a file that is not a shadow store is moved aside instead of stopping the gateway."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import resize, wait_for
from test_opcua_server import running_gateway
from test_shadow_service import config, shadow_of

from gateway.anomaly.store import CalibrationStore
from gateway.shadow import store as shadow_store
from gateway.shadow.store import ShadowStore
from gateway.uplink.outbox import Outbox, OutboxConfig
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

MiB = 1 << 20


class Monotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0  # a look at the free space on every call that may look
        return self.t


def stored(path: Path, device: str) -> dict[str, Any]:
    """The reported state in the file, as another process (the CLI) sees it."""
    other = ShadowStore(str(path))
    try:
        return other.get(device).reported
    finally:
        other.close()


# -- the outbox's room ----------------------------------------------------------------------


def test_below_the_document_floor_readings_wait_in_memory_and_are_written_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    free = {"bytes": 100 * MiB}
    monkeypatch.setattr(
        os, "statvfs", lambda _p: SimpleNamespace(f_bavail=free["bytes"] // 4096, f_frsize=4096)
    )
    path = tmp_path / "s.db"
    store = ShadowStore(str(path), min_free=64 * MiB, monotonic=Monotonic())
    store.report("pump", {"t": (1, "good", 1.0)})
    assert stored(path, "pump") == {"t": 1}

    free["bytes"] = 3 * MiB  # under the floor: nothing more goes to the file
    for v in (2, 3, 4):
        doc = store.report("pump", {"t": (v, "good", float(v))})
        assert doc is not None and doc.reported == {"t": v}
    assert store.documents_paused and store.unsaved == 1
    assert stored(path, "pump") == {"t": 1}
    assert store.get("pump").reported == {"t": 4}  # the gateway sees the readings
    assert store.report("fan", {"rpm": (9, "good", 1.0)}) is not None
    assert store.devices() == ["fan", "pump"]
    # a desired value set meanwhile by another process is kept when the readings are written
    cli = ShadowStore(str(path))
    cli.update("pump", desired={"t": 7})
    cli.close()

    free["bytes"] = 4 * MiB + 100_000  # over the floor, not over floor + an eighth: still paused
    store.report("pump", {"t": (5, "good", 5.0)})
    assert store.documents_paused and stored(path, "pump") == {"t": 1}
    free["bytes"] = 5 * MiB
    store.report("pump", {"t": (6, "good", 6.0)})
    assert not store.documents_paused and store.unsaved == 0
    assert stored(path, "pump") == {"t": 6} and stored(path, "fan") == {"rpm": 9}
    assert store.get("pump").desired == {"t": 7} and store.get("pump").delta == {"t": 7}

    said = [r.getMessage() for r in caplog.records if "documents" in r.getMessage()]
    assert len(said) == 2, said
    assert "documents paused: 3.0 MiB free" in said[0] and "outbox" in said[0]
    assert "written again" in said[1] and "2 documents kept in memory" in said[1]
    assert shadow_store.DOCUMENT_FLOOR == 4 * MiB  # twice the outbox's spare file
    store.close()


def test_documents_kept_in_memory_are_written_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "statvfs", lambda _p: SimpleNamespace(f_bavail=256, f_frsize=4096))
    path = tmp_path / "s.db"
    store = ShadowStore(str(path), min_free=64 * MiB, monotonic=Monotonic())
    store.report("pump", {"t": (1, "good", 1.0)})
    assert store.documents_paused and store.unsaved == 1
    store.close()  # the disk is not really full: they go in
    assert stored(path, "pump") == {"t": 1}


def test_when_the_outbox_gives_back_its_spare_room_the_shadow_does_not_take_it(
    small_disk: Path,
) -> None:
    resize(small_disk, "16m")
    shadow = ShadowStore(str(small_disk / "shadow.db"), min_free=8 * MiB, monotonic=Monotonic())
    points = [f"p{i}" for i in range(40)]
    shadow.report("pump", {p: (0, "good", 0.0) for p in points})
    shadow.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a small log, as after a restart
    outbox = Outbox(small_disk / "outbox.db", OutboxConfig(policy="drop_oldest"))
    n = 0
    while not outbox.disk_full:  # the broker is away: the backlog fills the disk
        outbox.append([(f"t/{n}", b"x" * 4000, 1, False)] * 8)
        n += 1
        assert n < 10_000
    st = os.statvfs(small_disk)
    before = st.f_bavail * st.f_frsize  # the room the outbox's spare file gave back
    for v in range(1, 300):  # every reading changes the document
        try:
            shadow.report("pump", {p: (v, "good", float(v)) for p in points})
        except sqlite3.OperationalError:
            pass  # what the old store did, once it had taken all of that room
    st = os.statvfs(small_disk)
    assert st.f_bavail * st.f_frsize >= before - 64 * 1024, (before, st.f_bavail * st.f_frsize)
    assert shadow.get("pump").reported["p0"] == 299
    outbox.close()
    shadow.close()


# -- a bad file -------------------------------------------------------------------------------


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(40_000))


def _truncated(path: Path) -> None:
    store = ShadowStore(str(path))
    for i in range(300):
        store.report(f"d{i}", {"p": (i, "good", 1.0)})
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        db.execute("INSERT INTO orders (item) VALUES ('bolts')")
    db.close()


def _foreign_history(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE history (a TEXT)")
    db.close()


DAMAGE = {
    "random": _random,
    "truncated": _truncated,
    "foreign": _foreign,
    "foreign_history": _foreign_history,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_bad_file_is_moved_aside_and_the_shadow_starts_empty(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shadow.db"
    DAMAGE[damage](path)
    original = path.read_bytes()
    earlier = tmp_path / "shadow.db.bad"
    earlier.write_bytes(b"an earlier bad file")  # never overwritten
    store = ShadowStore(str(path), set_aside=True)
    assert store.devices() == []
    store.report("pump", {"t": (1, "good", 1.0)})
    assert store.get("pump").reported == {"t": 1}
    store.close()
    aside = tmp_path / "shadow.db.bad.1"
    assert aside.read_bytes() == original and earlier.read_bytes() == b"an earlier bad file"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert str(path) in text and str(aside) in text and "starts empty" in text


def test_a_bad_file_goes_aside_with_its_log(tmp_path: Path) -> None:
    path = tmp_path / "shadow.db"
    _random(path)
    (tmp_path / "shadow.db-wal").write_bytes(b"w" * 100)
    ShadowStore(str(path), set_aside=True).close()
    assert (tmp_path / "shadow.db.bad-wal").read_bytes() == b"w" * 100
    assert (tmp_path / "shadow.db.bad").exists()


def test_without_set_aside_a_bad_file_is_left_alone_and_the_error_says_what_to_do(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shadow.db"
    _random(path)
    original = path.read_bytes()
    (tmp_path / "shadow.db-wal").write_bytes(b"w" * 100)
    with pytest.raises(shadow_store.ShadowFileError) as err:
        ShadowStore(str(path))  # the CLI: never moves a file a running gateway may hold
    assert str(path) in str(err.value) and "move it aside" in str(err.value)
    assert path.read_bytes() == original
    assert (tmp_path / "shadow.db-wal").read_bytes() == b"w" * 100  # SQLite deletes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shadow.db", "shadow.db-wal"]


def test_a_folder_at_the_path_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "shadow.db"
    path.mkdir()
    with pytest.raises(
        shadow_store.ShadowFileError, match="is a folder.*point shadow.path at a file"
    ):
        ShadowStore(str(path), set_aside=True)
    assert path.is_dir()


def test_an_empty_file_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shadow.db"
    path.touch()
    ShadowStore(str(path), set_aside=True).close()
    assert "was empty (0 bytes; it may have been truncated)" in caplog.text


async def test_a_gateway_with_a_damaged_shadow_file_runs_on(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_value("input", 0, 215, DataType.INT16)
    db = tmp_path / "shadow.db"
    _random(db)
    async with running_gateway(config(device.port, db)) as gateway:
        shadow = shadow_of(gateway)

        def temp() -> Any:
            doc = shadow.state("pump")
            return doc.reported.get("temp") if doc is not None else None

        await wait_for(lambda: temp() == 21.5, message="the shadow follows the device")
    assert (tmp_path / "shadow.db.bad").exists()
    assert "moved aside to" in caplog.text


def test_an_unreadable_calibration_file_never_overwrites_an_earlier_bad_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "up.json"
    path.write_text("{not json")
    earlier = tmp_path / "up.json.bad"
    earlier.write_text("first")
    store = CalibrationStore(path)
    assert store.open() == {}
    store.close()
    assert earlier.read_text() == "first"
    assert (tmp_path / "up.json.bad.1").read_text() == "{not json"
