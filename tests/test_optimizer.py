"""Uplink packet optimizer: simulator arithmetic, env contract, determinism, batch format,
heuristic, shipped policy, and the ``gateway optimizer`` commands (small generated traces)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.optimizer.actions import ACTION_DIMS, Decision, decode, encode
from gateway.optimizer.batch import BatchError, decode_batch, encode_batch
from gateway.optimizer.config import RewardWeights
from gateway.optimizer.features import FEATURES, LinkStats, observation
from gateway.optimizer.heuristic import IMMEDIATE, AimdPolicy
from gateway.optimizer.policy import OnnxPolicy, PolicyError, builtin_path, load_policy
from models.optimizer import traces as tr
from models.optimizer.episodes import TrainSource
from models.optimizer.sim import LinkModel, UplinkSim, compression_ratio, publish_bytes
from models.optimizer.workload import Workload

QUIET = LinkModel(base_rtt=0.1, drop_rate=0.0)


def run(sim: UplinkSim, d: Decision) -> float:
    cost = 0.0
    while not sim.done:
        cost += sim.step(d)
    return cost


def constant(mbps: float, seconds: float, dt: float = 0.1) -> np.ndarray:
    return np.full(int(round(seconds / dt)), mbps * 1e6)


# --- reward arithmetic on hand-made traces ----------------------------------------------------


def test_one_sample_costs_what_the_model_says() -> None:
    """8 Mbit/s, RTT 100 ms, one sample at 0.05 s: sent at the 0.1 s tick after a 0.26 s radio
    promotion, delivered half an RTT after its last byte; then an RTT to the PUBACK, then the
    11.576 s tail. Every term computed by hand."""
    link = QUIET
    w = RewardWeights()
    sim = UplinkSim(constant(8, 20), Workload(np.array([0.05]), np.array([])), w, link=link)
    cost = run(sim, IMMEDIATE)
    wire = publish_bytes(1, False) + link.seg_overhead
    busy = wire / 1e6  # 8 Mbit/s = 1e6 bytes/s
    sent_at = 0.1 + link.promo_time + busy
    latency = sent_at + link.base_rtt / 2 - 0.05
    last_active = sent_at + link.base_rtt  # the PUBACK
    energy = (
        link.promo_power * link.promo_time
        + (link.tx_base + link.tx_per_mbps * 8) * busy
        + link.tail_power * (last_active + link.tail_time - 0.4)  # tail from the next tick on
    )
    t = sim.totals
    assert t.tel_latency == [] and t.samples == 1  # record=False keeps no lists
    assert math.isclose(t.energy, energy, rel_tol=1e-9)
    assert t.bytes_up == wire and t.bytes_down == link.ack_bytes
    want = w.latency * latency + w.energy * energy + w.bytes * (wire + link.ack_bytes) / 1000
    assert math.isclose(cost, want, rel_tol=1e-9)
    assert math.isclose(t.cost, cost)


def test_alarm_deadline_miss_is_charged() -> None:
    """40 kbit/s: an alarm queued behind 60 samples sent one by one misses its deadline."""
    w = RewardWeights()
    load = Workload(np.full(60, 0.01), np.array([0.15]))
    sim = UplinkSim(constant(0.04, 30), load, w, link=QUIET, record=True)
    run(sim, Decision(0.0, 1, False, 1, 64))
    assert sim.totals.deadline_misses == 1
    assert sim.totals.alarm_latency[0] > w.alarm_deadline
    fast = UplinkSim(constant(0.04, 30), load, w, link=QUIET, record=True)
    run(fast, Decision(0.0, 64, True, 1, 64))  # one compressed batch ahead of it instead
    assert fast.totals.deadline_misses == 0
    assert fast.totals.cost < sim.totals.cost - w.deadline_miss


def test_outage_loses_qos0_but_not_qos1() -> None:
    bw = constant(1, 40)
    bw[100:200] = 0.0  # 10 s without bandwidth: the connection drops after 3 s
    load = Workload(np.arange(0.0, 38.0, 0.1), np.array([]))
    lost = {}
    for qos in (0, 1):
        sim = UplinkSim(bw, load, link=QUIET, record=True)
        run(sim, Decision(0.0, 4, False, qos, 16))
        lost[qos] = sim.totals.lost
        if qos:
            assert len(sim.totals.tel_latency) == sim.totals.samples  # all delivered
    assert lost[0] > 0 and lost[1] == 0


def test_batching_and_compression_save_bytes() -> None:
    load = Workload(np.sort(np.random.default_rng(0).uniform(0, 20, 2000)), np.array([]))
    per = {}
    for d in (IMMEDIATE, Decision(0.5, 64, False, 1, 16), Decision(0.5, 64, True, 1, 16)):
        sim = UplinkSim(constant(5, 25), load, link=QUIET)
        run(sim, d)
        per[d] = (sim.totals.bytes_up + sim.totals.bytes_down) / sim.totals.samples
    a, b, c = per.values()
    assert a > 1.4 * b and b > 3 * c  # headers and acks shared; then zlib on similar rows
    assert compression_ratio(64) < 0.3 < compression_ratio(1)


# --- env contract and determinism -------------------------------------------------------------


def test_env_passes_gymnasium_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    from models.optimizer.env import UplinkEnv

    env = UplinkEnv(TrainSource([], seed=1, length=30.0))
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (len(FEATURES),)
    assert tuple(env.action_space.nvec) == ACTION_DIMS


def test_env_is_deterministic_with_a_seed() -> None:
    from models.optimizer.env import UplinkEnv

    def rollout(seed: int) -> list[float]:
        env = UplinkEnv(TrainSource([], length=30.0))
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [float(obs.sum())]
        done = False
        while not done:
            obs, reward, term, trunc, _ = env.step(env.action_space.sample())
            out += [float(reward), float(obs.sum())]
            done = term or trunc
        return out

    assert rollout(3) == rollout(3)
    assert rollout(3) != rollout(4)


def test_augment_and_generators_make_valid_traces(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = tr.Trace("t", np.arange(0, 100, 5.0), np.full(20, 2.0))
    for t in (tr.augment(base, rng), tr.synth_markov(rng, 120), tr.synth_walk(rng, 120)):
        assert (t.mbps >= 0).all() and (np.diff(t.times) > 0).all()
        assert (t.mbps == 0).any() or t.mbps.min() < t.mbps.max()
        tr.write_trace(t, tmp_path / t.name)
        back = tr.load_trace(tmp_path / t.name)
        assert np.allclose(back.mbps, t.mbps, atol=1e-6)
    train, held = tr.split([tr.Trace(f"n{i}", base.times, base.mbps) for i in range(8)], 0.25)
    assert len(held) == 2 and not {t.name for t in train} & {t.name for t in held}


# --- runtime pieces ---------------------------------------------------------------------------


def test_batch_round_trip_keeps_order_and_bytes() -> None:
    items = [("a/b", b'{"id":"g/e/1","value":1}'), ("a/c", b"\xff\x00raw"), ("a/b", b"2")]
    for compress in (False, True):
        payload = encode_batch(items, compress=compress)
        assert (payload[:1] == b"\x78") == compress
        assert decode_batch(payload) == items
    with pytest.raises(BatchError):
        decode_batch(b'{"value":1}')


def test_actions_round_trip() -> None:
    d = decode([len(n) - 1 for n in map(range, ACTION_DIMS)])
    assert encode(d) == tuple(n - 1 for n in ACTION_DIMS)
    assert len(observation(LinkStats())) == len(FEATURES)


def test_heuristic_grows_batches_when_rtt_grows() -> None:
    h = AimdPolicy()
    calm = [h.decide(LinkStats(rtt=0.05)).max_batch for _ in range(5)]
    busy = [h.decide(LinkStats(rtt=0.5, backlog=100)).max_batch for _ in range(5)]
    assert calm[-1] == 1 and busy == sorted(busy) and busy[-1] > 16
    back = [h.decide(LinkStats(rtt=0.05)).max_batch for _ in range(8)]
    assert back[-1] == 1


def test_shipped_policy_loads_and_decides() -> None:
    p = load_policy("builtin")
    assert isinstance(p, OnnxPolicy)
    narrow = p.decide(
        LinkStats(
            backlog=3000,
            backlog_age=8,
            rtt=4.0,
            timeouts=5,
            goodput=2000,
            arrival_rate=300,
            inflight=16,
        )
    )
    assert isinstance(narrow, Decision)
    assert p.meta["best_fixed"]["max_batch"] in (1, 4, 16, 64, 256)


def test_policy_with_other_tables_is_refused(tmp_path: Path) -> None:
    onnx = tmp_path / "p.onnx"
    onnx.write_bytes(builtin_path().read_bytes())
    meta = json.loads(builtin_path().with_suffix(".json").read_text())
    meta["actions"]["max_batch"] = [1, 2, 3, 4, 5]
    onnx.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="other features or action tables"):
        OnnxPolicy(onnx)


def test_a_policy_file_that_is_not_there_is_named_before_its_json(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.onnx: no such file"):
        load_policy(str(tmp_path / "nope.onnx"))
    with pytest.raises(PolicyError, match="a directory"):
        OnnxPolicy(tmp_path)
    onnx = tmp_path / "p.onnx"
    onnx.write_bytes(builtin_path().read_bytes())
    onnx.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(PolicyError, match="not a policy description"):
        OnnxPolicy(onnx)
    trace = tmp_path / "a.txt"  # a trace given as --model by mistake: its own name, no .json
    trace.write_text("0\t1.0\n")
    with pytest.raises(PolicyError, match=r"a\.txt: not a policy model \(the \.onnx file"):
        OnnxPolicy(trace)


# --- commands ---------------------------------------------------------------------------------


def test_evaluate_prints_one_json_line_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "traces"
    assert main(["optimizer", "traces", "--out", str(d), "--count", "2", "--duration", "60"]) == 0
    capsys.readouterr()
    code = main(
        [
            "optimizer",
            "evaluate",
            "--traces",
            str(d),
            "--length",
            "40",
            "--policies",
            "immediate,heuristic,learned",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    report = json.loads(out[-1])
    assert set(report["policies"]) == {"immediate", "heuristic", "learned"}
    for fig in report["policies"].values():
        assert fig["mean_reward"] <= 0 and fig["samples"] > 0
        assert fig["qos1_lost"] == 0 and fig["bytes_per_sample"] > 0
        assert fig["telemetry_latency_p99_s"] >= fig["telemetry_latency_p50_s"]
    assert set(report["gain_of_learned"]) == {"over_immediate", "over_heuristic"}


def test_a_long_evaluate_says_how_far_it_is_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.optimizer import cli as optimizer_cli

    d = tmp_path / "traces"
    assert main(["optimizer", "traces", "--out", str(d), "--count", "2", "--duration", "60"]) == 0
    capsys.readouterr()
    argv = ["optimizer", "evaluate", "--traces", str(d), "--length", "20", "--policies"]
    policies = "immediate,hindsight_fixed"
    assert main([*argv, policies]) == 0
    quiet = capsys.readouterr()
    assert "fixed decisions tried" not in quiet.err  # a short run says no more than its notes
    monkeypatch.setattr(optimizer_cli, "PROGRESS_SECONDS", 10.0, raising=False)
    assert main([*argv, policies]) == 0
    loud = capsys.readouterr()
    assert loud.out == quiet.out  # the same figures
    lines = loud.err.splitlines()
    assert "hindsight_fixed: fixed decisions tried on 2 episodes: 280/280 in " in lines[-3]
    assert lines[-2].startswith("immediate 1/2: 2 episodes in ")
    assert lines[-1].startswith("hindsight_fixed 2/2: 2 episodes in ")


def test_a_run_without_alarms_shows_no_alarm_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Short episodes may see no alarm: the table says "-", the JSON null (not "None s")."""
    d = tmp_path / "traces"
    assert main(["optimizer", "traces", "--out", str(d), "--count", "1", "--duration", "30"]) == 0
    capsys.readouterr()
    argv = ["optimizer", "evaluate", "--traces", str(d), "--length", "20"]
    assert main([*argv, "--policies", "immediate", "--seed", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    report = json.loads(out[-1])["policies"]["immediate"]
    assert report["alarms"] == 0 and report["alarm_latency_p99_s"] is None  # 20 s, seed 3
    assert "alarms p99 - misses 0/0" in out[0] and "None" not in out[0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"0.0\t1.0\n1.0\tnope\n", "fewer than two samples (1 line not two numbers"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"0.0 1.0 2.0\n", "fewer than two samples"),
        (b"1.0\t1.0\n0.0\t1.0\n", "line 2: times go backwards"),
    ],
)
def test_bad_traces_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, needle: str
) -> None:
    (tmp_path / "bad").write_bytes(content)
    assert main(["optimizer", "evaluate", "--traces", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_trace_comments_bom_and_start_offset_are_read(tmp_path: Path) -> None:
    # A trace cut from a longer log starts late and may say where it came from.
    (tmp_path / "t").write_bytes(
        b"\xef\xbb\xbf# mobile, bus route 7\n100.0\t5.0\n\n# gap\n101.5\t0\n"
    )
    t = tr.load_trace(tmp_path / "t")
    assert t.times.tolist() == [0.0, 1.5] and t.mbps.tolist() == [5.0, 0.0]


def test_missing_folder_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimizer", "evaluate", "--traces", str(tmp_path / "none")]) == 2
    assert "not a folder" in capsys.readouterr().err


def _rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's refusal of an option value: exit 2 and its one-line reason."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["-1", "0", "1", "nan", "inf", "1e12"])
def test_trace_seconds_are_checked(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["optimizer", "traces", "--out", str(tmp_path / "t"), "--duration", value]
    assert "--duration: must be from 2 to 86400 seconds" in _rejected(argv, capsys)
    for command in ("evaluate", "headroom"):
        argv = ["optimizer", command, "--traces", str(tmp_path), "--length", value]
        assert "--length: must be from 20 to 86400 seconds" in _rejected(argv, capsys)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_trace_count_is_checked(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["optimizer", "traces", "--out", str(tmp_path / "t"), "--count", value]
    assert "--count: must be a positive integer" in _rejected(argv, capsys)


@pytest.mark.parametrize("value", ["nan", "2", "-1", "0", "1"])
def test_holdout_is_a_share_of_the_traces(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = ["optimizer", "traces", "--out", str(tmp_path), "--kind", "holdout"]
    train = ["optimizer", "train", "--out", str(tmp_path / "p.onnx")]
    for argv in (traces, train):
        err = _rejected([*argv, "--fcc", str(tmp_path), "--holdout", value], capsys)
        assert "--holdout: must be above 0 and below 1" in err


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--envs", "0", "positive integer"),
        ("--envs", "-1", "positive integer"),
        ("--grid-episodes", "0", "positive integer"),
        ("--grid-episodes", "-1", "positive integer"),
        ("--lr", "-1", "positive finite number"),
        ("--lr", "nan", "positive finite number"),
        ("--steps", "0", "positive integer"),
    ],
)
def test_train_options_are_checked(
    option: str, value: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["optimizer", "train", "--out", str(tmp_path / "p.onnx"), option, value]
    assert f"{option}: must be a {needle}" in _rejected(argv, capsys)


def test_train_refuses_an_output_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("stable_baselines3")
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "j" / "p.json").mkdir(parents=True)
    for out, needle in [
        (blocker / "p.onnx", f"cannot write into {blocker}: it is a file, not a folder"),
        (blocker / "sub" / "p.onnx", f"cannot create the output folder {blocker / 'sub'}: "),
        (tmp_path / "dir.onnx", "dir.onnx is a directory"),
        (tmp_path / "j" / "p.onnx", "p.json is a directory"),
        (tmp_path / "p.json", "must end in .onnx"),
    ]:
        assert main(["optimizer", "train", "--quiet", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1  # no grid search started


def _policy_copy(
    folder: Path, edit: tuple[str, str, object] | None = None, onnx: Path | None = None
) -> Path:
    """The shipped policy.onnx (or ``onnx``) and its .json with one field set (or deleted, with
    a value of None): ``edit`` is (section, field, value)."""
    meta = json.loads(builtin_path().with_suffix(".json").read_text())
    if edit is not None:
        section, field, value = edit
        if value is None:
            del meta[section][field]
        else:
            meta[section][field] = value
    folder.mkdir(parents=True)
    (folder / "policy.json").write_text(json.dumps(meta))
    (folder / "policy.onnx").write_bytes((onnx or builtin_path()).read_bytes())
    return folder / "policy.onnx"


def test_a_broken_policy_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    tr.write_trace(tr.synth_walk(np.random.default_rng(1), 60, name="w"), traces / "w")
    missing = _policy_copy(tmp_path / "missing")
    missing.unlink()
    anomaly = Path(__file__).resolve().parents[1] / "models" / "anomaly" / "student.onnx"
    cases = [
        (_policy_copy(tmp_path / "text", ("weights", "latency", "x")), "weights.latency: Input"),
        (_policy_copy(tmp_path / "noqos", ("best_fixed", "qos", None)), "missing 'qos'"),
        (_policy_copy(tmp_path / "qos7", ("best_fixed", "qos", 7)), "not in the action tables"),
        (_policy_copy(tmp_path / "anomaly", onnx=anomaly), "not an optimizer policy"),
        (missing, "policy.onnx: no such file"),
    ]
    for model, needle in cases:
        for command in ("evaluate", "headroom"):
            argv = ["optimizer", command, "--traces", str(traces), "--length", "20"]
            assert main([*argv, "--model", str(model)]) == 2
            err = capsys.readouterr().err.strip()
            assert needle in err and len(err.splitlines()) == 1, (command, err)
            assert str(model.parent) in err


def test_endpoint_optimizer_needs_a_strict_durable_outbox() -> None:
    from protocols.mqtt.config import MqttEndpoint

    ok = MqttEndpoint(host="h", optimizer={"model": "heuristic", "interval": 0.5})
    assert ok.optimizer is not None and ok.check() == []
    assert ok.optimizer.weights.loss == RewardWeights().loss
    for outbox in (None, {"drain_order": "live_first"}):
        bad = MqttEndpoint(host="h", optimizer={}, outbox=outbox)
        assert [p.path for p in bad.check()] == [("optimizer",)]


def test_uplink_optimizer_falls_back_and_measures(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.optimizer.config import OptimizerConfig
    from gateway.optimizer.uplink import UplinkOptimizer

    now = [0.0]
    opt = UplinkOptimizer(OptimizerConfig(model="/nonexistent/p.onnx"), clock=lambda: now[0])
    assert opt.policy.name == "heuristic" and "not loaded" in caplog.text
    opt.note_arrivals(50)
    opt.note_sent(7, 1000, 10)
    now[0] = 0.4
    opt.note_ack(7)
    d = opt.maybe_decide(backlog=5, backlog_age=0.1, inflight=0, connected=True)
    assert opt.stats.rtt == pytest.approx(0.4) and opt.stats.arrival_rate == pytest.approx(25.0)
    assert opt.maybe_decide(backlog=0, backlog_age=0, inflight=0, connected=True) is d
    assert opt.decisions == 1  # the next one is due an interval later
