"""The level refresh: slow drift after calibration is learned as normal, a fault is not."""

from __future__ import annotations

import numpy as np
from anomaly_data import series

from gateway.anomaly.device import DeviceScorer
from gateway.anomaly.model import OnnxScorer, shipped
from gateway.anomaly.refresh import BLOCK, LevelRefresh

CALIBRATION = 400
ROWS = 2400


def drifting(fault: tuple[int, int] | None = None) -> np.ndarray:
    """The generated pump; after calibration its flow wanders by 6 calibration spreads."""
    values, _ = series(ROWS, seed=7)
    sd = values[:CALIBRATION, 0].std()
    values[CALIBRATION:, 0] += np.linspace(0, 6 * sd, ROWS - CALIBRATION)
    if fault is not None:
        values[fault[0] : fault[1], 0] -= 8 * sd  # a valve closes
    return values


def alarm_rows(values: np.ndarray, refresh: float) -> tuple[np.ndarray, int]:
    scorer = DeviceScorer(OnnxScorer(shipped("student")), refresh=refresh)
    scorer.calibrate(values[:CALIBRATION])
    rows = values[CALIBRATION:]
    active = np.array([scorer.score(rows[i : i + 1])[0].active for i in range(len(rows))])
    assert scorer.alarm is not None
    return active, scorer.alarm.raised


def test_slow_drift_is_learned_while_the_calibration_level_alarms() -> None:
    frozen, _ = alarm_rows(drifting(), refresh=0)
    learned, raised = alarm_rows(drifting(), refresh=100)
    assert frozen.mean() > 0.3  # the drift is a long false alarm without the refresh
    assert raised == 0 and not learned.any()


def test_a_fault_on_top_of_the_drift_is_one_alarm_and_not_learned_away() -> None:
    start, end = 1500, 1800
    active, raised = alarm_rows(drifting((start, end)), refresh=100)
    assert raised == 1
    fault = active[start - CALIBRATION : end - CALIBRATION]
    assert fault[20:].all()  # raised within 20 samples and held for the whole fault
    assert not active[: start - CALIBRATION].any()
    assert not active[end - CALIBRATION + 80 :].any()  # cleared once the fault is over


def test_a_learned_row_moves_the_level_two_blocks_later_and_only_fast_points() -> None:
    mean, scale = np.zeros(2), np.ones(2)
    r = LevelRefresh(mean, scale, np.array([False, True]), tau=10)
    r.learn(5, np.array([10.0, 10.0]))
    r.level_for(2 * BLOCK - 1)
    assert mean[0] == 0.0  # block 1 still uses the level of block -1
    r.level_for(2 * BLOCK)
    assert mean[0] == 1.0 and mean[1] == 0.0  # the slow point has its own running mean
    assert scale[0] > 1.0 and scale[1] == 1.0  # the spread grew with the reading's deviation


def test_the_spread_never_shrinks_below_the_calibration() -> None:
    mean, scale = np.zeros(1), np.full(1, 2.0)
    r = LevelRefresh(mean, scale, np.array([False]), tau=5)
    for i in range(3 * BLOCK):
        r.learn(i, np.zeros(1))
    r.level_for(5 * BLOCK)
    assert r.learned == 3 * BLOCK and scale[0] == 2.0 and mean[0] == 0.0


def test_batches_score_exactly_like_one_row_at_a_time_with_the_refresh() -> None:
    values = drifting((1500, 1800))
    model = OnnxScorer(shipped("student"))
    results = []
    for batch in (1, 37, BLOCK):
        scorer = DeviceScorer(model, refresh=100)
        scorer.calibrate(values[:CALIBRATION])
        rows = values[CALIBRATION:]
        scored = [s for i in range(0, len(rows), batch) for s in scorer.score(rows[i : i + batch])]
        assert scorer.refresh is not None and scorer.refresh.learned > 1000
        results.append(([s.score for s in scored], [s.change for s in scored]))
    for scores, changes in results[1:]:
        assert np.allclose(scores, results[0][0], rtol=1e-5)
        assert changes == results[0][1]
