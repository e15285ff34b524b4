"""The simulator's headroom bound: no policy beats it, and it moves with the link."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.optimizer.actions import Decision
from gateway.optimizer.heuristic import IMMEDIATE, AimdPolicy, FixedPolicy
from models.optimizer import traces as tr
from models.optimizer.episodes import Episode, eval_episodes
from models.optimizer.evaluate import run_episode
from models.optimizer.headroom import bound_cost, headroom, parts


def _episodes(n: int = 3) -> list[Episode]:
    rng = np.random.default_rng(5)
    return eval_episodes([tr.synth_walk(rng, 120, name=f"w{i}") for i in range(n)], length=120)


def test_no_policy_costs_less_than_the_bound() -> None:
    policies = [
        FixedPolicy(IMMEDIATE),
        FixedPolicy(Decision(0.0, 256, True, 1, 4)),
        FixedPolicy(Decision(5.0, 64, True, 0, 64)),
        AimdPolicy(),
    ]
    for ep in _episodes():
        bound = bound_cost(ep)
        assert bound > 0
        for p in policies:
            cost, tot = run_episode(p, ep)
            assert cost / tot.samples >= bound - 1e-9


def test_parts_add_up_to_the_cost() -> None:
    ep = _episodes(1)[0]
    cost, tot = run_episode(FixedPolicy(Decision(1.0, 16, False, 0, 4)), ep)
    assert sum(parts(tot).values()) == pytest.approx(cost / tot.samples, rel=1e-9)


def test_headroom_is_larger_on_a_slower_link() -> None:
    eps = _episodes(2)
    best = FixedPolicy(Decision(0.0, 256, True, 1, 4))
    fast = headroom(eps, [run_episode(best, ep)[1] for ep in eps])
    slow_eps = [
        type(ep)(ep.name, np.minimum(ep.bandwidth, 2e4), ep.load, ep.link, ep.seed) for ep in eps
    ]
    slow = headroom(slow_eps, [run_episode(best, ep)[1] for ep in slow_eps])
    assert 0 <= fast["max_gain_same_energy_bytes"] <= fast["max_gain"] < 1
    assert slow["max_gain_same_energy_bytes"] > fast["max_gain_same_energy_bytes"]


def test_headroom_command_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    for i in range(2):
        tr.write_trace(tr.synth_walk(rng, 120, name=f"t{i}"), tmp_path / f"t{i}")
    assert main(["optimizer", "headroom", "--traces", str(tmp_path), "--length", "60"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["traces"] == 2
    assert report["bound_latency_alarms"] <= report["policy_cost_per_sample"]
    assert main(["optimizer", "headroom", "--traces", str(tmp_path / "none")]) == 2
