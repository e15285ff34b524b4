"""``gateway optimizer train|evaluate|traces``: the uplink packet optimizer from the shell.

Light at import: numpy, onnxruntime and (for train) torch are imported in the commands. Bad
input (missing folder, a file that is not a trace) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from gateway.cli import CommandError

__all__ = ["register"]

POLICIES = ("immediate", "best_fixed", "hindsight_fixed", "heuristic", "learned")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("optimizer", help="uplink packet optimizer: train, evaluate, traces")
    sub = p.add_subparsers(dest="optimizer_command", required=True)

    t = sub.add_parser("train", help="PPO training; exports policy.onnx + policy.json")
    t.add_argument("--out", default="policy.onnx", help="where the .onnx goes (.json beside it)")
    t.add_argument("--steps", type=int, default=500_000)
    t.add_argument(
        "--fcc", metavar="DIR", help="trace folder to mix in (its held-out split kept out)"
    )
    t.add_argument("--holdout", type=float, default=0.25, help="share of --fcc kept out")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--envs", type=int, default=8)
    t.add_argument(
        "--grid-episodes", type=int, default=16, help="episodes of the best-fixed search"
    )
    t.add_argument("--lr", type=float, default=1e-4, help="PPO learning rate")
    t.add_argument("--ent-coef", type=float, default=0.0, help="PPO entropy bonus")
    t.add_argument(
        "--start-bias",
        type=float,
        default=4.0,
        help="logits towards the best fixed decision at the start (0: uniform)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="every policy on every trace; last line one JSON object")
    e.add_argument("--traces", required=True, metavar="DIR")
    e.add_argument(
        "--policies", default="all", help=f"all, or a comma list of {','.join(POLICIES)}"
    )
    e.add_argument("--model", default="builtin", help="builtin or a path to a policy.onnx")
    e.add_argument("--length", type=float, default=300.0, help="seconds of each trace used")
    e.add_argument("--seed", type=int, default=1000, help="workload and RTT of trace i: seed + i")
    e.set_defaults(func=cmd_evaluate)

    h = sub.add_parser(
        "headroom",
        help="the most any policy could gain over the best fixed one (a simulator bound)",
    )
    h.add_argument("--traces", required=True, metavar="DIR")
    h.add_argument("--model", default="builtin", help="whose policy.json names the best fixed")
    h.add_argument("--length", type=float, default=300.0, help="seconds of each trace used")
    h.add_argument("--seed", type=int, default=1000, help="workload and RTT of trace i: seed + i")
    h.set_defaults(func=cmd_headroom)

    g = sub.add_parser(
        "traces", help="write evaluation traces (synthetic mobile, or a held-out split)"
    )
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument(
        "--kind",
        choices=["walk", "markov", "holdout"],
        default="walk",
        help="walk: the evaluation generator; markov: the training one; "
        "holdout: copy the held-out split of --fcc",
    )
    g.add_argument("--count", type=int, default=20)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--duration", type=float, default=600.0)
    g.add_argument("--fcc", metavar="DIR")
    g.add_argument("--holdout", type=float, default=0.25)
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
            print(f"{len(held)} held-out traces in {args.out}")
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
    print(f"{args.count} {args.kind} traces in {args.out}")
    return 0


def cmd_headroom(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise CommandError("the bound needs the [ml] extra (numpy)") from None
    from gateway.optimizer.heuristic import FixedPolicy
    from gateway.optimizer.policy import OnnxPolicy, PolicyError, builtin_path
    from models.optimizer import traces as tr
    from models.optimizer.episodes import eval_episodes
    from models.optimizer.evaluate import run_episode
    from models.optimizer.headroom import headroom

    try:
        traces = tr.load_dir(args.traces)
        meta = OnnxPolicy(builtin_path() if args.model == "builtin" else args.model).meta
    except (tr.TraceError, PolicyError) as exc:
        raise CommandError(str(exc)) from None
    from gateway.optimizer.actions import Decision
    from gateway.optimizer.config import RewardWeights

    weights = RewardWeights(**meta["weights"])
    bf = meta["best_fixed"]
    best = Decision(bf["deadline"], bf["max_batch"], bf["compress"], bf["qos"], bf["window"])
    episodes = eval_episodes(traces, seed=args.seed, length=args.length)
    runs = [run_episode(FixedPolicy(best), ep, weights)[1] for ep in episodes]
    report = {
        "traces": len(traces),
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
    from gateway.optimizer.actions import Decision
    from gateway.optimizer.heuristic import IMMEDIATE, AimdPolicy, FixedPolicy, Policy
    from gateway.optimizer.policy import OnnxPolicy, PolicyError, builtin_path
    from models.optimizer import traces as tr
    from models.optimizer.episodes import eval_episodes
    from models.optimizer.evaluate import gain, grid_search, run_episode, summarize

    wanted = POLICIES if args.policies == "all" else tuple(args.policies.split(","))
    unknown = [p for p in wanted if p not in POLICIES]
    if unknown:
        raise CommandError(f"unknown policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    try:
        traces = tr.load_dir(args.traces)
    except tr.TraceError as exc:
        raise CommandError(str(exc)) from None
    path = builtin_path() if args.model == "builtin" else args.model
    try:
        learned = OnnxPolicy(path)
    except PolicyError as exc:
        raise CommandError(str(exc)) from None
    from gateway.optimizer.config import RewardWeights

    weights = RewardWeights(**learned.meta["weights"])
    bf = learned.meta["best_fixed"]
    best_fixed = Decision(bf["deadline"], bf["max_batch"], bf["compress"], bf["qos"], bf["window"])
    episodes = eval_episodes(traces, seed=args.seed, length=args.length)
    policies: dict[str, Policy] = {}
    for name in wanted:
        if name == "immediate":
            policies[name] = FixedPolicy(IMMEDIATE, name)
        elif name == "best_fixed":
            policies[name] = FixedPolicy(best_fixed, name)
        elif name == "hindsight_fixed":
            decision, _ = grid_search(episodes, weights)
            policies[name] = FixedPolicy(decision, name)
        elif name == "heuristic":
            policies[name] = AimdPolicy()
        else:
            policies[name] = learned
    report: dict[str, Any] = {
        "traces": len(traces),
        "seconds_per_trace": args.length,
        "weights": weights.model_dump(),
        "policies": {},
    }
    for name, policy in policies.items():
        summary = summarize([run_episode(policy, ep, weights) for ep in episodes])
        if isinstance(policy, FixedPolicy):
            summary["decision"] = policy.decision.as_dict()
        report["policies"][name] = summary
        print(
            f"{name:<16} reward {summary['mean_reward']:>9.4f}  telemetry p50/p99 "
            f"{summary['telemetry_latency_p50_s']}/{summary['telemetry_latency_p99_s']} s  "
            f"alarms p99 {summary['alarm_latency_p99_s']} s misses "
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
