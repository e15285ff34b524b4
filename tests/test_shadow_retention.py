"""Shadow history retention: the documented semantics, at a cost that does not grow with the table.

Costs are counted in SQLite virtual-machine steps (``set_progress_handler``), not in seconds, so
the comparisons are exact and do not depend on the machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.shadow.store import ShadowStore

T = TypeVar("T")
POINTS = [f"p{i}" for i in range(10)]


def vm_steps(store: ShadowStore, fn: Callable[[], T]) -> tuple[int, T]:
    """The steps SQLite takes for ``fn()``, and what it returned."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    store.db.conn.set_progress_handler(count, 1)
    try:
        result = fn()
    finally:
        store.db.conn.set_progress_handler(None, 1)
    return steps, result


def fill(store: ShadowStore, n: int, start: float) -> None:
    """``n`` changes of every point, one a second from ``start``."""
    for i in range(n):
        store.report("pump", {p: (start + i, "good", start + i) for p in POINTS})


def test_prune_with_nothing_to_delete_does_not_read_the_table(tmp_path: Path) -> None:
    store = ShadowStore(str(tmp_path / "s.db"), max_age=1e9, max_rows=100_000)
    fill(store, 50, 1000.0)
    store.prune(now=2000.0)  # the first prune counts the rows per point once
    small, _ = vm_steps(store, lambda: store.prune(now=2000.0))
    fill(store, 950, 2000.0)  # 20 times the rows, the same points
    large, _ = vm_steps(store, lambda: store.prune(now=3000.0))
    assert store.prune(now=3000.0) == 0
    assert large == small  # a seek per point, however many rows each has
    store.close()


def test_retention_holds_at_a_cost_of_the_rows_deleted(tmp_path: Path) -> None:
    """Random changes, prunes and a reopen against a plain model of the documented rule: after
    each prune a point keeps its rows not older than max_age, at most the newest max_rows."""
    rng = random.Random(7)
    path = str(tmp_path / "s.db")
    max_age, max_rows = 40.0, 12
    store = ShadowStore(path, max_age=max_age, max_rows=max_rows)
    model: dict[str, list[float]] = {p: [] for p in POINTS}
    t = 1000.0
    for round_ in range(12):
        for _ in range(rng.randrange(5, 60)):
            t += 1.0
            changed = rng.sample(POINTS, rng.randrange(1, 4))
            store.report("pump", {p: (t, "good", t) for p in changed})
            for p in changed:
                model[p].append(t)
        if round_ == 6:  # a restart: the counts come from the file
            store.close()
            store = ShadowStore(path, max_age=max_age, max_rows=max_rows)
        before = sum(len(v) for v in model.values())
        for p, ts in model.items():
            model[p] = [x for x in ts if x >= t - max_age][-max_rows:]
        expected = before - sum(len(v) for v in model.values())
        steps, deleted = vm_steps(store, lambda s=store, now=t: s.prune(now=now))
        assert deleted == expected
        for p in POINTS:
            assert [r.ts for r in store.history("pump", p)] == model[p], (round_, p)
        if round_ not in (0, 6):  # not the prunes that count the rows per point first
            assert steps <= 30 * len(POINTS) + 12 * deleted, (steps, deleted)
    store.close()
