"""The held-out check's fault injection: where the faults go and what they change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.anomaly.data import CALIBRATION_ROWS, Series
from models.anomaly.heldout import KINDS, SCORED, cases, inject, pseudo_files


def _run(rows: int = 3 * (CALIBRATION_ROWS + SCORED) + 7) -> Series:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(rows, 3)) + np.array([10.0, -5.0, 100.0])
    return Series(Path("clean.csv"), ("a", "b", "c"), values, None)


def test_pseudo_files_are_whole_and_disjoint() -> None:
    run = _run()
    files = pseudo_files(run.values)
    assert len(files) == 3
    assert all(len(f) == CALIBRATION_ROWS + SCORED for f in files)
    assert np.array_equal(np.concatenate(files), run.values[: 3 * len(files[0])])


@pytest.mark.parametrize("kind", KINDS)
def test_a_fault_changes_one_sensor_only_where_labelled(kind: str) -> None:
    files = pseudo_files(_run().values)
    x, label = inject(files[0], kind, np.random.default_rng(3), files[1])
    changed = x != files[0]
    assert label[:CALIBRATION_ROWS].sum() == 0  # the calibration rows stay clean
    assert 150 <= label.sum() < 400
    assert not changed[label == 0].any()
    cols = np.flatnonzero(changed.any(axis=0))
    assert len(cols) == 1
    assert changed[label == 1, cols[0]].mean() > 0.9


def test_cases_one_faulty_copy_per_kind_and_seeded() -> None:
    clean, faulty = cases(_run(), seed=5)
    assert [c.kind for c in clean] == ["clean"] * 3
    assert sorted(c.kind for c in faulty) == sorted(KINDS * 3)
    again = cases(_run(), seed=5)[1]
    assert all(np.array_equal(a.values, b.values) for a, b in zip(faulty, again, strict=True))
    assert all(c.anomaly.sum() == 0 for c in clean)
