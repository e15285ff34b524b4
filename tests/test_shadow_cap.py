"""``shadow.history.max_bytes``: a cap on the file's bytes in use, whatever the points' retention."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from test_shadow_store import pump_config

from gateway.config.model import ShadowHistory, ShadowSection
from gateway.shadow.store import CAP_TARGET, ShadowStore

MiB = 1 << 20
POINTS = ["a", "b", "c", "d"]
BIG = "x" * 900  # a value of about a kilobyte: a MiB is about a thousand rows


class Monotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def fill(store: ShadowStore, start: int, n: int) -> None:
    """``n`` readings from ``start``: every point changes (one row each), value ``i:BIG``."""
    for i in range(start, start + n):
        store.report("pump", {p: (f"{i}:{BIG}", "good", 1.0 + i) for p in POINTS})


def kept(store: ShadowStore, point: str) -> list[int]:
    return [int(r.value.split(":")[0]) for r in store.history("pump", point)]


def counted_in_file(path: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT device, point, count(*) FROM (SELECT device, point FROM history "
            "UNION ALL SELECT device, point FROM history_staged) GROUP BY device, point"
        ).fetchall()
    return {(d, p): n for d, p, n in rows}


def staged_in_file(path: Path) -> dict[tuple[str, str], list[tuple[float, int]]]:
    staged: dict[tuple[str, str], list[tuple[float, int]]] = {}
    with sqlite3.connect(path) as conn:
        for i, d, p, ts in conn.execute(
            "SELECT id, device, point, ts FROM history_staged ORDER BY id"
        ):
            staged.setdefault((d, p), []).append((ts, i))
    return staged


def test_the_cap_deletes_the_oldest_rows_file_wide_staged_ones_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    clock = Monotonic()
    store = ShadowStore(
        str(path), max_bytes=MiB, merge_rows=1 << 40, merge_interval=1e9, monotonic=clock
    )
    store.prune()  # counts kept from here on
    fill(store, 0, 500)  # 2,000 rows, about 2 MiB
    store.merge()
    fill(store, 500, 300)  # 1,200 more, staged
    assert store.used_bytes() > 3 * MiB
    deleted = store.prune()
    assert store.used_bytes() <= MiB * CAP_TARGET  # under the cap, with room to spare
    assert deleted > 0 and store.history_capped == deleted
    for point in POINTS:
        rows = kept(store, point)
        assert rows == list(range(rows[0], 800))  # the newest kept, every one of them
        assert rows[0] > 500  # every merged row gone, and the oldest staged ones
    assert store._counts == counted_in_file(path)  # per point, right after the deletes
    assert store._staged == staged_in_file(path)
    assert store.staged_rows == sum(len(v) for v in staged_in_file(path).values())
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "shadow.history.max_bytes (1.0 MiB)" in said[0], said
    assert f"{deleted} rows deleted" in said[0]

    # Retention per point still holds with the counts the cap left.
    store.max_rows = 5
    store.prune()
    for point in POINTS:
        assert kept(store, point) == list(range(795, 800))
    assert store._counts == counted_in_file(path) == {("pump", p): 5 for p in POINTS}

    # Over the cap again within the hour: rows deleted, no line; after the hour, one, counted.
    store.max_rows = None
    fill(store, 800, 1200)
    store.merge()
    more = store.prune()
    assert more > 0 and store.used_bytes() <= MiB
    assert store.history_capped == deleted + more
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    clock.t += 3600
    fill(store, 2000, 300)
    last = store.prune()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 2 and f"{more + last} rows deleted" in said[1], said
    assert store._counts == counted_in_file(path)
    assert kept(store, "a")[-1] == 2299
    store.close()


def test_under_the_cap_nothing_is_deleted_and_no_cap_keeps_all(tmp_path: Path) -> None:
    store = ShadowStore(str(tmp_path / "s.db"), max_bytes=64 * MiB)
    fill(store, 0, 100)
    assert store.prune() == 0 and store.history_capped == 0
    assert kept(store, "a") == list(range(100))
    store.close()
    store = ShadowStore(str(tmp_path / "t.db"), max_bytes=None)
    fill(store, 0, 1500)
    assert store.prune() == 0 and len(kept(store, "a")) == 1500
    store.close()


def test_max_bytes_is_a_config_key_with_a_default() -> None:
    assert ShadowHistory().max_bytes == 1 << 30
    assert ShadowHistory(max_bytes=None).max_bytes is None
    assert ShadowSection.model_validate({"history": {"max_bytes": 2 * MiB}}).history.max_bytes
    field = ShadowHistory.model_json_schema()["properties"]["max_bytes"]
    assert "oldest" in field["description"]
    with pytest.raises(ValueError):
        ShadowHistory(max_bytes=1000)  # under a MiB: a mistake


def test_gateway_validate_takes_max_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    cfg = pump_config(tmp_path, "{name: s, address: 0}")
    text = cfg.read_text()
    cfg.write_text(text.replace("{path: shadow.db}", "{history: {max_bytes: 104857600}}"))
    assert main(["validate", str(cfg)]) == 0
    capsys.readouterr()
    cfg.write_text(cfg.read_text().replace("104857600", "1000"))
    assert main(["validate", str(cfg)]) != 0
    said = capsys.readouterr()
    assert "shadow.history.max_bytes" in said.out + said.err, said


async def test_the_service_passes_the_cap_and_counts_it_in_its_status(tmp_path: Path) -> None:
    from types import SimpleNamespace
    from typing import Any

    from gateway.bus import Bus
    from gateway.shadow.service import ShadowService

    config = ShadowSection(
        path=str(tmp_path / "s.db"), devices=["pump"], history={"max_bytes": MiB, "max_age": None}
    )
    router: Any = SimpleNamespace(points=set())
    async with ShadowService(config, Bus(), router, {}) as shadow:
        store = shadow.store
        assert store is not None and store.max_bytes == MiB
        assert shadow.status()["history_capped"] == 0
        await shadow._call(lambda: fill(store, 0, 1000))
        await shadow._call(store.merge)
        deleted = await shadow._call(store.prune)
        assert deleted > 0 and shadow.status()["history_capped"] == deleted


def test_a_file_far_over_the_cap_comes_down_a_bounded_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of an older version (no cap) may be many times over it: each prune deletes at
    most CAP_PASSES transactions of CAP_BATCH rows, and later prunes go on."""
    import gateway.shadow.store as store_module

    monkeypatch.setattr(store_module, "CAP_BATCH", 100)
    monkeypatch.setattr(store_module, "CAP_PASSES", 3)
    path = tmp_path / "s.db"
    store = ShadowStore(str(path), max_bytes=MiB, merge_rows=1 << 40, merge_interval=1e9)
    store.prune()
    for start in range(0, 800, 100):  # 3,200 rows, about 3 MiB, merged a minute's worth at a time
        fill(store, start, 100)
        store.merge()
    prunes = []
    while store.used_bytes() > MiB * CAP_TARGET and len(prunes) < 50:
        prunes.append(store.prune())
    assert store.used_bytes() <= MiB * CAP_TARGET
    assert len(prunes) > 1 and all(0 < n <= 300 for n in prunes), prunes
    assert store._counts == counted_in_file(path)
    for point in POINTS:  # the newest of each point kept; the oldest went first
        rows = kept(store, point)
        assert rows and rows == list(range(rows[0], 800)) and rows[0] >= 500
