"""ONNX Runtime sessions: one per model file for all the bridges of a run, small calls.

Before, every bridge with ``anomaly:`` opened its own session, and a calibration sent the model
8,192 windows per call, which grew each session's CPU arena by ~80 MB for good: a gateway of four
250-point devices went from 125 to 463 MB RSS when calibration ended. Now the stages share a
session per model file (released with the last stage that holds it, so a reload does not keep
the old ones), and a call takes at most `model.BATCH` windows; scores are unchanged, as a
window's error does not depend on the other windows of its call.
"""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from gateway.anomaly import model
from gateway.anomaly.model import STUDENT, TEACHER, OnnxScorer
from gateway.anomaly.stage import AnomalyStage
from gateway.bus import Bus
from gateway.config.anomaly import AnomalyOptions


def stage(name: str, model_name: str = "student") -> AnomalyStage:
    return AnomalyStage(AnomalyOptions(model=model_name), Bus(), name)


def test_the_bridges_of_a_run_share_one_session_per_model_file(tmp_path: Path) -> None:
    a, b = stage("a"), stage("b")
    assert a.model is b.model
    assert stage("c", str(STUDENT)).model is a.model  # the same file, named by its path
    assert stage("t", "teacher").model is not a.model
    # A model file replaced in place (before a reload) is not served by its old session.
    copy = tmp_path / "m.onnx"
    shutil.copyfile(STUDENT, copy)
    first = stage("x", str(copy))
    shutil.copyfile(TEACHER, copy)
    again = stage("y", str(copy))
    assert again.model is not first.model
    assert again.model.session is not first.model.session


def test_a_session_goes_with_the_last_stage_that_holds_it() -> None:
    old = [stage("a"), stage("b")]  # a gateway run
    assert old[0].model is old[1].model
    session = weakref.ref(old[0].model.session)
    for s in old:
        s.close()
    del old, s
    gc.collect()  # a reload drops the old stages
    assert session() is None  # nothing keeps the old session
    new = [stage("a"), stage("b")]  # the reloaded run shares a session of its own
    assert new[0].model is new[1].model


class Spy:
    """A session that records the size of each call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
        (windows,) = feeds.values()
        self.sizes.append(len(windows))
        return self.inner.run(outputs, feeds)


def test_a_model_call_takes_at_most_a_batch_of_windows_with_the_same_errors() -> None:
    scorer = OnnxScorer(STUDENT)
    n = 2 * model.BATCH + 37
    windows = np.random.default_rng(3).normal(0, 1, (n, 1, scorer.window)).astype(np.float32)
    whole = scorer.session.run(None, {scorer._input: windows})[0].reshape(-1)
    spy = Spy(scorer.session)
    scorer.session = spy
    got = scorer.errors(windows)
    assert spy.sizes == [model.BATCH, model.BATCH, 37]
    assert got.dtype == np.float32 and np.array_equal(got, whole)
