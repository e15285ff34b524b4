"""The cache of which point names a bridge's ``points``/``exclude`` globs select stays bounded:
with an MQTT ``points: keys`` source, names come from data and never stop arriving."""

from __future__ import annotations

import fnmatch

from gateway.anomaly import stage as stage_module
from gateway.anomaly.stage import AnomalyStage
from gateway.bus import Bus
from gateway.config.anomaly import AnomalyOptions
from gateway.types import Message, Sample


def test_the_glob_cache_is_bounded_and_verdicts_do_not_change() -> None:
    options = AnomalyOptions.model_validate(
        {"points": ["ahu*", "flow"], "exclude": ["*_sp"], "calibration": 100_000}
    )
    stage = AnomalyStage(options, Bus(), "b")
    names = [f"{p}{i}{s}" for i in range(6000) for p, s in (("ahu", ""), ("ahu", "_sp"), ("x", ""))]
    names += ["flow", "ahu1", "ahu1_sp"]  # seen again after the cache has started over

    for _ in range(2):
        assert [stage._selects(n) for n in names] == [
            (fnmatch.fnmatchcase(n, "ahu*") or n == "flow") and not n.endswith("_sp") for n in names
        ]
    assert len(stage._selected) < len(set(names)) // 2  # not one entry per name seen
    assert len(stage._selected) <= stage_module.SELECTED_CACHE_MAX

    # and through the stage itself (still calibrating: no model calls), a new key per message
    for i in range(2 * stage_module.SELECTED_CACHE_MAX):
        stage.process(Message.telemetry("dev", (Sample("flow", 1.0), Sample(f"ahu_{i}", 2.0))))
    assert len(stage._selected) <= stage_module.SELECTED_CACHE_MAX
    assert stage.devices["dev"].points == ["flow", "ahu_0"]
