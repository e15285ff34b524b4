"""``gateway optimizer train|evaluate|traces``: the uplink packet optimizer from the shell.

Light at import: numpy, onnxruntime and (for train) torch are imported in the commands. Bad
input (missing folder, a file that is not a trace) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli import CommandError
from gateway.cliargs import (
    check_output_dir,
    nonnegative_float,
    nonnegative_int,
    path_text,
    positive_float,
    positive_int,
)
from gateway.text import counted

if TYPE_CHECKING:
    from gateway.optimizer.actions import Decision
    from gateway.optimizer.config import RewardWeights
    from gateway.optimizer.policy import OnnxPolicy

__all__ = ["register"]

POLICIES = ("immediate", "best_fixed", "hindsight_fixed", "heuristic", "learned")
DAY = 86_400.0  # seconds: the longest trace or episode; more is a typo, not a study
# evaluate over more simulated seconds than this (episodes x --length) says how far it is on
# stderr: 4 traces of 300 s took 31 s on one core, and a folder of 40 over 5 minutes
PROGRESS_SECONDS = 1000.0


def _seconds(least: float) -> Callable[[str], float]:
    """An argparse type: seconds from ``least`` to a day."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not least <= value <= DAY:  # NaN too: one message for every refusal, the range
            raise argparse.ArgumentTypeError(
                f"must be from {least:g} to {DAY:g} seconds, got {text!r}"
            )
        return value

    return seconds


# An episode shorter than the workload's longest poll period (10 s) may have no sample to
# score; a trace needs two samples, one a second.
episode_seconds = _seconds(20.0)
trace_seconds = _seconds(2.0)


def _share(text: str) -> float:
    """A share of the traces held out, above 0 and below 1: the split holds out at least one
    trace whatever the share, and all of them would leave none to train on."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be above 0 and below 1, got {text!r}")
    return value


TRACES_HELP = "a folder of traces (seconds<TAB>Mbit/s lines)"


def _episode_options(p: argparse.ArgumentParser) -> None:
    """--length and --seed: the simulated episodes evaluate and headroom run on the traces."""
    p.add_argument(
        "--length",
        type=episode_seconds,
        default=300.0,
        help="seconds of each trace used (%(default)s)",
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=1000,
        help="workload and RTT of trace i: seed + i (%(default)s)",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "optimizer",
        help="uplink packet optimizer: train, evaluate, traces",
        description="The uplink packet optimizer's send policy, in its simulator: train it, "
        "compare it with fixed and heuristic policies on bandwidth traces, bound what any "
        "policy could gain, or write traces.",
    )
    sub = p.add_subparsers(dest="optimizer_command", required=True)

    t = sub.add_parser(
        "train",
        help="PPO training; exports policy.onnx + policy.json",
        description="Train the send policy with PPO on synthetic mobile traces, plus a folder "
        "of FCC broadband traces if given (its held-out split kept out), and export it as "
        "ONNX with a .json beside it (reward weights, best fixed decision); prints one JSON "
        "object. Needs the [train] extra.",
    )
    t.add_argument(
        "--out",
        default="policy.onnx",
        help="where the .onnx goes, the .json beside it (%(default)s)",
    )
    t.add_argument(
        "--steps",
        type=positive_int,
        default=500_000,
        help="environment steps, all environments together (%(default)s)",
    )
    t.add_argument(
        "--fcc",
        type=path_text,
        metavar="DIR",
        help="trace folder to mix in (its held-out split kept out)",
    )
    t.add_argument(
        "--holdout", type=_share, default=0.25, help="share of --fcc kept out (%(default)s)"
    )
    t.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (%(default)s)")
    t.add_argument(
        "--envs", type=positive_int, default=8, help="parallel environments (%(default)s)"
    )
    t.add_argument(
        "--grid-episodes",
        type=positive_int,
        default=16,
        help="episodes of the best-fixed search (%(default)s)",
    )
    t.add_argument(
        "--lr", type=positive_float, default=1e-4, help="PPO learning rate (%(default)s)"
    )
    t.add_argument(
        "--ent-coef", type=nonnegative_float, default=0.0, help="PPO entropy bonus (%(default)s)"
    )
    t.add_argument(
        "--start-bias",
        type=nonnegative_float,
        default=4.0,
        help="logits towards the best fixed decision at the start, 0: uniform (%(default)s)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="every policy on every trace; last line one JSON object",
        description="Run each policy (immediate, best fixed, hindsight best fixed, the AIMD "
        "heuristic, the learned one) on every trace of a folder in the simulator: reward, "
        "telemetry and alarm latency, deadline misses, bytes and energy per sample, loss. The "
        "last line is one JSON object.",
    )
    e.add_argument("--traces", required=True, type=path_text, metavar="DIR", help=TRACES_HELP)
    e.add_argument(
        "--policies", default="all", help=f"all, or a comma list of {','.join(POLICIES)}"
    )
    e.add_argument(
        "--model", default="builtin", type=path_text, help="builtin or a path to a policy.onnx"
    )
    _episode_options(e)
    e.set_defaults(func=cmd_evaluate)

    h = sub.add_parser(
        "headroom",
        help="the most any policy could gain over the best fixed one (a simulator bound)",
        description="Bound, in the simulator, the most any send policy could gain over the "
        "best fixed one on a folder of traces; prints one JSON object.",
    )
    h.add_argument("--traces", required=True, type=path_text, metavar="DIR", help=TRACES_HELP)
    h.add_argument(
        "--model", default="builtin", type=path_text, help="whose policy.json names the best fixed"
    )
    _episode_options(h)
    h.set_defaults(func=cmd_headroom)

    g = sub.add_parser(
        "traces",
        help="write evaluation traces (synthetic mobile, or a held-out split)",
        description="Write bandwidth traces to a folder: synthetic mobile ones, or a copy of "
        "the held-out split of an FCC folder (the traces optimizer train keeps out).",
    )
    g.add_argument(
        "--out", required=True, type=path_text, metavar="DIR", help="the folder to write them in"
    )
    g.add_argument(
        "--kind",
        choices=["walk", "markov", "holdout"],
        default="walk",
        help="walk: the evaluation generator; markov: the training one; "
        "holdout: copy the held-out split of --fcc",
    )
    g.add_argument("--count", type=positive_int, default=20, help="synthetic traces (%(default)s)")
    g.add_argument("--seed", type=nonnegative_int, default=7, help="random seed (%(default)s)")
    g.add_argument(
        "--duration",
        type=trace_seconds,
        default=600.0,
        help="seconds per synthetic trace (%(default)s)",
    )
    g.add_argument(
        "--fcc", type=path_text, metavar="DIR", help="FCC trace folder, for --kind holdout"
    )
    g.add_argument(
        "--holdout", type=_share, default=0.25, help="share of --fcc held out (%(default)s)"
    )
    g.set_defaults(func=cmd_traces)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import stable_baselines3  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise CommandError(f"training needs the [train] extra ({exc.name} is missing)") from None
    from models.optimizer.traces import TraceError
    from models.optimizer.train import train

    if args.steps < 256 * args.envs:
        raise CommandError(f"--steps must be at least {256 * args.envs} (one rollout)")
    _check_model_out(Path(args.out))
    try:
        meta = train(
            args.out,
            steps=args.steps,
            fcc_dir=args.fcc,
            holdout=args.holdout,
            seed=args.seed,
            n_envs=args.envs,
            grid_episodes=args.grid_episodes,
            quiet=args.quiet,
            learning_rate=args.lr,
            ent_coef=args.ent_coef,
            start_bias=args.start_bias,
        )
    except TraceError as exc:
        raise CommandError(str(exc)) from None
    print(
        json.dumps(
            {
                "model": os.path.abspath(args.out),
                **meta["trained"],
                "best_fixed": meta["best_fixed"],
            }
        )
    )
    return 0


def _check_model_out(out: Path) -> None:
    """Refuse before the grid search and PPO an --out that could not be written after them."""
    for path in (out, out.with_suffix(".json")):
        if path.is_dir():
            raise CommandError(f"--out {out}: {path} is a directory")
    if out.suffix != ".onnx":  # else the .json would overwrite it, or land beside a .json
        raise CommandError(f"--out {out}: must end in .onnx (the .json goes beside it)")
    folder = check_output_dir(out.parent)
    if not os.access(folder, os.W_OK):
        raise CommandError(f"cannot write in the output folder {folder}: permission denied")


def cmd_traces(args: argparse.Namespace) -> int:
    import numpy as np

    from models.optimizer import traces as tr

    try:
        os.makedirs(args.out, exist_ok=True)
        if args.kind == "holdout":
            if not args.fcc:
                raise CommandError("--kind holdout needs --fcc DIR")
            _, held = tr.split(tr.load_dir(args.fcc), args.holdout, seed=0)
            for t in held:
                tr.write_trace(t, os.path.join(args.out, t.name))
            print(f"{counted(len(held), 'held-out trace')} in {args.out}")
            return 0
        gen = tr.synth_walk if args.kind == "walk" else tr.synth_markov
        for i in range(args.count):
            rng = np.random.default_rng(args.seed * 100_003 + i)
            t = gen(rng, args.duration, name=f"{args.kind}_{args.seed}_{i:03d}")
            tr.write_trace(t, os.path.join(args.out, t.name))
    except tr.TraceError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"{args.out}: {exc.strerror or exc}") from None
    print(f"{counted(args.count, args.kind + ' trace')} in {args.out}")
    return 0


def cmd_headroom(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise CommandError("the bound needs the [ml] extra (numpy)") from None
    from gateway.optimizer.heuristic import FixedPolicy
    from models.optimizer import traces as tr
    from models.optimizer.episodes import eval_episodes
    from models.optimizer.evaluate import check_traces, run_episode
    from models.optimizer.headroom import headroom

    try:
        scan = tr.scan_dir(args.traces)
    except tr.TraceError as exc:
        raise CommandError(str(exc)) from None
    traces = scan.traces
    _, weights, best = _learned(args.model)
    trace_checks, lines = check_traces(scan, args.length)  # as evaluate says them
    for line in lines:
        print(line, file=sys.stderr)
    episodes = eval_episodes(traces, seed=args.seed, length=args.length)
    runs = [run_episode(FixedPolicy(best), ep, weights)[1] for ep in episodes]
    report = {
        "traces": len(traces),
        **trace_checks,
        "best_fixed": best.as_dict(),
        **headroom(episodes, runs, weights),
    }
    print(json.dumps(report))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise CommandError("evaluation needs the [ml] extra (numpy, onnxruntime)") from None
    from gateway.optimizer.heuristic import IMMEDIATE, AimdPolicy, FixedPolicy, Policy
    from models.optimizer import evaluate as ev
    from models.optimizer import traces as tr
    from models.optimizer.episodes import eval_episodes
    from models.optimizer.evaluate import gain, grid_search, run_episode, summarize

    try:
        wanted = ev.parse_policies(args.policies, POLICIES)
        scan = tr.scan_dir(args.traces)
    except ValueError as exc:  # tr.TraceError is one
        raise CommandError(str(exc)) from None
    traces = scan.traces
    learned, weights, best_fixed = _learned(args.model)
    trace_checks, lines = ev.check_traces(scan, args.length)
    for line in lines:  # after the model: a bad --model stays a one-line error
        print(line, file=sys.stderr)
    episodes = eval_episodes(traces, seed=args.seed, length=args.length)
    long_run = len(episodes) * args.length > PROGRESS_SECONDS
    policies: dict[str, Policy] = {}
    for name in wanted:
        if name == "immediate":
            policies[name] = FixedPolicy(IMMEDIATE, name)
        elif name == "best_fixed":
            policies[name] = FixedPolicy(best_fixed, name)
        elif name == "hindsight_fixed":
            steps = len(ev.fixed_grid())
            what = f"hindsight_fixed: fixed decisions tried on {counted(len(episodes), 'episode')}"
            progress = _progress(steps, what) if long_run else None
            decision, _ = grid_search(episodes, weights, progress)
            policies[name] = FixedPolicy(decision, name)
        elif name == "heuristic":
            policies[name] = AimdPolicy()
        else:
            policies[name] = learned
    report: dict[str, Any] = {
        "traces": len(traces),
        "seconds_per_trace": args.length,
        "weights": weights.model_dump(),
        **trace_checks,
        "policies": {},
    }
    for n, (name, policy) in enumerate(policies.items(), 1):
        start = time.perf_counter()
        summary = summarize([run_episode(policy, ep, weights) for ep in episodes])
        if long_run:
            seconds = time.perf_counter() - start
            print(
                f"{name} {n}/{len(policies)}: {counted(len(episodes), 'episode')} in "
                f"{seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        if isinstance(policy, FixedPolicy):
            summary["decision"] = policy.decision.as_dict()
        report["policies"][name] = summary
        print(
            f"{name:<16} reward {summary['mean_reward']:>9.4f}  telemetry p50/p99 "
            f"{summary['telemetry_latency_p50_s']}/{summary['telemetry_latency_p99_s']} s  "
            f"alarms p99 {_latency(summary['alarm_latency_p99_s'])} misses "
            f"{summary['alarm_deadline_misses']}/{summary['alarms']}  "
            f"{summary['bytes_per_sample']} B/sample  "
            f"{summary['energy_j_per_sample']} J/sample  loss {summary['loss_rate']}"
        )
    pol = report["policies"]
    if "learned" in pol:
        report["gain_of_learned"] = {
            f"over_{other}": gain(pol["learned"], pol[other]) for other in pol if other != "learned"
        }
        report["gain_note"] = "relative cost reduction per sample = relative rise of mean reward"
    print(json.dumps(report))
    return 0


def _latency(seconds: float | None) -> str:
    """A latency for the table; a run without alarms has none ("-", null in the JSON)."""
    return "-" if seconds is None else f"{seconds} s"


def _progress(total: int, what: str) -> Callable[[int], None]:
    """A callback for ``total`` steps that says on stderr, at each tenth, how far and how long."""
    start, done = time.perf_counter(), 0

    def step(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done * 10 // total > before * 10 // total:
            seconds = time.perf_counter() - start
            print(f"{what}: {done}/{total} in {seconds:.0f} s", file=sys.stderr, flush=True)

    return step


def _learned(model: str) -> tuple[OnnxPolicy, RewardWeights, Decision]:
    """The policy ``--model`` names (builtin or a .onnx with its .json beside), its reward
    weights and best fixed decision; anything unusable in them is one line naming the file."""
    from gateway.optimizer.policy import OnnxPolicy, PolicyError, builtin_path

    path = builtin_path() if model == "builtin" else Path(model)
    # OnnxPolicy reads the .json first; a missing .onnx is the mistake to name
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise CommandError(f"{path}: {what} (--model: builtin or a policy .onnx)")
    try:
        policy = OnnxPolicy(path)
    except PolicyError as exc:
        raise CommandError(str(exc)) from None
    weights, best = _settings(policy.meta, path.with_suffix(".json"))
    _check_actor(policy, path)
    return policy, weights, best


def _settings(meta: dict[str, Any], meta_path: Path) -> tuple[RewardWeights, Decision]:
    """The reward weights and best fixed decision a policy.json records."""
    from pydantic import ValidationError

    from gateway.optimizer.actions import Decision, encode
    from gateway.optimizer.config import RewardWeights

    try:
        weights = RewardWeights(**meta["weights"])
        bf = meta["best_fixed"]
        best = Decision(bf["deadline"], bf["max_batch"], bf["compress"], bf["qos"], bf["window"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise CommandError(f"{meta_path}: {_meta_problem(exc)}") from None
    try:
        encode(best)
    except ValueError:
        raise CommandError(
            f"{meta_path}: best_fixed is not in the action tables ({best})"
        ) from None
    return weights, best


def _check_actor(policy: OnnxPolicy, path: Path) -> None:
    """One decision on a zero observation: the graph must be an actor of these action tables
    (another ONNX model loads as well, and fails only when it is run)."""
    from gateway.optimizer.actions import ACTION_DIMS
    from gateway.optimizer.features import FEATURES

    try:
        width = len(policy.logits([0.0] * len(FEATURES)))
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise CommandError(f"{path}: not an optimizer policy ({_first_line(exc)})") from None
    if width != sum(ACTION_DIMS):
        raise CommandError(
            f"{path}: not an optimizer policy ({width} outputs, not {sum(ACTION_DIMS)})"
        )


def _meta_problem(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # its own text takes several lines
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("weights", *first["loc"]))
        return f"{where}: {first['msg']}"
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r} (weights, best_fixed and its five settings)"
    return "weights and best_fixed must be JSON objects"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
