"""``gateway classify``, ``gateway suggest`` and ``gateway translator train|evaluate``.

Light at import (the CLI builds its parser on every command): numpy, ONNX Runtime and torch are
imported inside the commands. Bad input files give one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli import CommandError
from gateway.cliargs import (
    check_output_dir,
    fraction,
    nonnegative_int,
    output_file,
    path_text,
    positive_int,
)
from gateway.text import counted

if TYPE_CHECKING:
    from gateway.translator.browse import BrowseOptions
    from gateway.translator.pointlist import Labeled

__all__ = ["register"]

EXIT_INPUT = 2


MODEL_HELP = "an ONNX model other than the shipped one"
POINTS_HELP = "header with name (description, unit, ...)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "classify",
        help="Brick class of each point in a CSV point list",
        description="Classify each point of a CSV point list into Brick classes with the "
        "semantic translator: a CSV of name, class, score and the next classes. The file is "
        "read as one site's list; labeled points of the site (--examples) teach it the site.",
    )
    p.add_argument("input", type=path_text, metavar="IN.csv", help=POINTS_HELP)
    p.add_argument(
        "--examples",
        type=path_text,
        metavar="LABELED.csv",
        help="name,brick_class from this site (few-shot)",
    )
    p.add_argument(
        "--top", type=int, default=3, metavar="K", help="classes per point (%(default)s)"
    )
    p.add_argument("--out", type=path_text, metavar="OUT.csv", help="default: standard output")
    p.add_argument("--model", type=path_text, help=MODEL_HELP)
    _prior_flag(p)
    p.set_defaults(func=_guard(cmd_classify))

    s = subparsers.add_parser(
        "suggest",
        help="propose a source -> target point map (a bridge)",
        description="Propose a bridge that maps the points of a source to those of a target, "
        "matched by the translator. It is written with approved: false, mappings below "
        "--threshold commented out as REVIEW: gateway validate refuses it until you have "
        "reviewed it and set approved: true. Nothing is applied.",
    )
    s.add_argument("--source", required=True, type=path_text, metavar="SRC", help=_SOURCE_HELP)
    s.add_argument(
        "--target", required=True, type=path_text, metavar="TGT", help="same kinds as --source"
    )
    s.add_argument(
        "--out", required=True, type=path_text, metavar="bridge.yaml", help="the bridge to write"
    )
    _browse_flags(s)
    s.add_argument(
        "--from",
        dest="from_device",
        help="the bridge's from: (default: the device of a FILE.yaml#device source, else "
        "SOURCE_DEVICE)",
    )
    s.add_argument(
        "--to",
        dest="to_device",
        help="the bridge's to: (default: the device of a FILE.yaml#device target, else "
        "TARGET_ENDPOINT)",
    )
    s.add_argument(
        "--threshold",
        type=fraction,
        default=0.5,
        help="mappings below it are marked REVIEW (%(default)s)",
    )
    s.add_argument(
        "--examples", type=path_text, metavar="LABELED.csv", help="name,brick_class (few-shot)"
    )
    s.add_argument("--model", type=path_text, help=MODEL_HELP)
    _prior_flag(s)
    s.set_defaults(func=_guard(cmd_suggest))

    t = subparsers.add_parser(
        "translator",
        help="train or evaluate the semantic translator, pick points to label",
        description="The semantic translator's model: train it, evaluate it on labeled points, "
        "or pick which points of a list to label first.",
    )
    sub = t.add_subparsers(dest="translator_command", required=True)
    tr = sub.add_parser(
        "train",
        help="train on the generated corpus, export ONNX (needs [train])",
        description="Train the translator on the corpus it generates itself and export it as "
        "ONNX; prints one JSON object. It writes into the package's models/translator by "
        "default, replacing the shipped model: pass --out DIR to keep it. Needs the [train] "
        "extra (torch).",
    )
    tr.add_argument("--steps", type=positive_int, help="optimizer steps (default 7000)")
    tr.add_argument("--batch", type=positive_int, help="samples per step (default 128)")
    tr.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (%(default)s)")
    tr.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads (default %(default)s)"
    )
    tr.add_argument(
        "--members",
        type=positive_int,
        default=2,
        help="networks averaged in the shipped model (default %(default)s)",
    )
    tr.add_argument(
        "--out", type=path_text, metavar="DIR", help="default: the package's models/translator"
    )
    tr.set_defaults(func=_guard(cmd_train))

    ev = sub.add_parser(
        "evaluate",
        help="few-shot top-1/top-5/macro-F1 vs a rapidfuzz baseline",
        description="Evaluate on labeled points: top-1, top-5 and macro-F1 of the model and of "
        "a rapidfuzz name-matching baseline, given 0, 10, 50... labeled examples from the same "
        "file (the rest scored), averaged over seeds. The last line is one JSON object.",
    )
    ev.add_argument(
        "--data", required=True, type=path_text, metavar="LABELED.csv", help="name,brick_class"
    )
    ev.add_argument(
        "--shots", default="0,10,50", help="example counts, comma-separated (%(default)s)"
    )
    ev.add_argument(
        "--seeds", type=int, default=5, help="random draws per example count (%(default)s)"
    )
    ev.add_argument("--model", type=path_text, help=MODEL_HELP)
    ev.add_argument(
        "--select",
        choices=("random", "pick"),
        default="random",
        help="examples drawn at random (default) or chosen as `translator pick` would",
    )
    _prior_flag(ev)
    ev.set_defaults(func=_guard(cmd_evaluate))

    pk = sub.add_parser(
        "pick",
        help="which points of a list to label first (for --examples)",
        description="Choose which points of a list to label first (those that cover the "
        "site's kinds of point, the uncertain ones first): a CSV with an empty brick_class "
        "column to fill in, then to pass to classify or suggest as --examples.",
    )
    pk.add_argument("input", type=path_text, metavar="IN.csv", help=POINTS_HELP)
    pk.add_argument("--count", type=int, default=50, help="points to label (%(default)s)")
    pk.add_argument(
        "--examples",
        type=path_text,
        metavar="LABELED.csv",
        help="points labeled so far: pick the next ones",
    )
    pk.add_argument("--out", type=path_text, metavar="LABELED.csv", help="default: standard output")
    pk.add_argument("--model", type=path_text, help=MODEL_HELP)
    _prior_flag(pk)
    pk.set_defaults(func=_guard(cmd_pick))


def _browse_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--browse",
        action="store_true",
        help="connect to each FILE.yaml#device live with its settings in that config (OPC UA "
        "client: security, certificate, trust list, user; MQTT endpoint: TLS, user) instead of "
        "reading its points:",
    )
    p.add_argument(
        "--browse-seconds",
        type=_sample_seconds,
        metavar="N",
        help="with --browse, seconds to sample an MQTT endpoint (default 10, as mqtt://)",
    )
    p.add_argument(
        "--browse-topic",
        type=_topic_filter,
        metavar="FILTER",
        help="with --browse, the topic filter to sample an MQTT endpoint on (default: the "
        "filters it reads points from: its points: keys subscriptions and declared points)",
    )


# Checked by argparse, imported only when used: the sources module brings numpy.
def _sample_seconds(text: str) -> float:
    from gateway.translator.sources import sample_seconds

    return sample_seconds(text)


def _topic_filter(text: str) -> str:
    from gateway.translator.sources import topic_filter

    return topic_filter(text)


def _prior_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-site-prior",
        dest="site_prior",
        action="store_false",
        help="score each point on its own (for a list that mixes many unrelated sites)",
    )


_SOURCE_HELP = (
    "a .csv point list, a .yaml register map or config (FILE.yaml#device; live with --browse), "
    "a .txt/.jsonl MQTT topic sample, opc.tcp://host:port (live browse, security None) or "
    "mqtt://host:port/filter?seconds=N"
)


def _guard(body: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from gateway.translator.model import ModelError
        from gateway.translator.pointlist import InputError

        try:
            return int(body(args))
        except (InputError, ModelError, ValueError) as exc:
            raise CommandError(str(exc), EXIT_INPUT) from None

    return run


def _translator(args: argparse.Namespace) -> Any:
    from gateway.translator.model import DEFAULT_MODEL, Translator

    return Translator(args.model or DEFAULT_MODEL)


def _examples(args: argparse.Namespace, translator: Any) -> list[Any]:
    """The --examples points; those of a class we do not know, or that ``translator`` (a
    --model trained on fewer classes) does not score, are left out, said on stderr."""
    from gateway.translator.fewshot import known_to

    if not args.examples:
        return []
    kept, left = known_to(translator, _labeled(args.examples).points)
    if left:
        print(
            f"{args.examples}: left out the examples of {counted(len(left), 'class', 'classes')}"
            f" the model does not score: {', '.join(left[:3])}{', ...' if len(left) > 3 else ''}",
            file=sys.stderr,
        )
    return kept


def _labeled(path: str) -> Labeled:
    from gateway.translator.pointlist import read_labeled_known

    labeled = read_labeled_known(path)
    if note := labeled.note(path):
        print(note, file=sys.stderr)
    return labeled


@contextmanager
def _written(path: str) -> Iterator[Any]:
    """``path`` open to write; if writing fails (disk full), the partial file is removed and
    the failure is one line naming it."""
    out = output_file(path)
    try:
        with out:
            yield out
    except OSError as exc:
        if Path(path).is_file():  # not a device such as /dev/full
            Path(path).unlink()
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextmanager
def _csv_out(path: str | None) -> Iterator[Any]:
    """A CSV writer on ``path``, or on standard output without one."""
    if not path:
        yield csv.writer(sys.stdout)
        return
    with _written(path) as out:
        yield csv.writer(out)


def cmd_classify(args: argparse.Namespace) -> int:
    from gateway.translator.model import top_k
    from gateway.translator.pointlist import read_point_rows
    from gateway.translator.site import predict_site

    if args.top < 1:
        raise CommandError("--top must be at least 1")
    _not_overwritten(args.out, {"input": args.input, "--examples": args.examples})
    rows = read_point_rows(args.input)
    points = [p for _, p in rows if p.name]
    translator = _translator(args)
    pred = predict_site(translator, points, _examples(args, translator), prior=args.site_prior)
    ranked = iter(top_k(pred.probs, translator.classes, args.top))
    with _csv_out(args.out) as w:
        # One output row per input row, so that the two line up; a row without a name (a
        # description or unit only) has nothing to classify and keeps an empty class.
        w.writerow(["name", "class", "score", "alternatives"])
        for _, p in rows:
            if not p.name:
                w.writerow(["", "", "", ""])
                continue
            top = next(ranked)
            alts = ";".join(f"{c}:{s:.3f}" for c, s in top[1:])
            w.writerow([p.name, top[0][0], f"{top[0][1]:.3f}", alts])
    unnamed = [line for line, p in rows if not p.name]
    if unnamed:
        lines = ", ".join(map(str, unnamed[:5])) + (", ..." if len(unnamed) > 5 else "")
        print(
            f"{args.input}: {counted(len(unnamed), 'row')} without a name (line {lines}) "
            "not classified: written with an empty class",
            file=sys.stderr,
        )
    if args.out:
        print(f"{args.out}: {counted(len(points), 'point')} classified", file=sys.stderr)
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from gateway.translator.site import predict_site
    from gateway.translator.suggest import bridge_yaml, confident, match, points_yaml

    _not_overwritten(
        args.out, {"--source": args.source, "--target": args.target, "--examples": args.examples}
    )
    browse = _browse_options(args)
    sources = _source("--source", args.source, browse)
    targets = _source("--target", args.target, browse)
    translator = _translator(args)
    examples = _examples(args, translator)  # read once, used for both lists
    matches = match(
        translator,
        [p.name for p in sources],
        predict_site(translator, sources, examples, prior=args.site_prior),
        [p.name for p in targets],
        predict_site(translator, targets, examples, prior=args.site_prior),
    )
    from_device = args.from_device or _config_entry(args.source) or "SOURCE_DEVICE"
    text = bridge_yaml(
        matches,
        source=_label(args.source, browse),
        target=_label(args.target, browse),
        from_device=from_device,
        to_device=args.to_device or _config_entry(args.target) or "TARGET_ENDPOINT",
        threshold=args.threshold,
    )
    if any(p.address for p in sources):  # browsed: the device still needs its points
        text += points_yaml(from_device, sources)
    with _written(args.out) as out:  # opened only now: a failure above leaves no file
        out.write(text)
    n_confident = sum(1 for m in matches if confident(m, args.threshold))
    print(
        f"{args.out}: {n_confident} of {counted(len(matches), 'mapping')} confident, "
        f"{len(matches) - n_confident} marked REVIEW; nothing applied (approved: false)"
    )
    return 0


def _not_overwritten(out: str | None, inputs: dict[str, str | None]) -> None:
    """CommandError, before any work, when ``--out`` is one of the files the command reads
    (``FILE.yaml#device`` is FILE): `suggest --out plant.yaml` replaced the config it read."""
    if not out:
        return
    target = Path(out).resolve()
    for what, spec in inputs.items():
        if spec and spec != "-":
            path = Path(spec.partition("#")[0] if _config_entry(spec) else spec)
            same = path.resolve() == target
            with suppress(OSError):  # a hard link is the same file too
                same = same or os.path.samefile(path, target)
            if same:
                raise CommandError(
                    f"--out {out} is the {what} file, which it would overwrite: write elsewhere"
                )


def _config_entry(spec: str) -> str | None:
    """``device`` of a ``FILE.yaml#device`` argument: the bridge's from:/to: then names it."""
    path, _, device = spec.partition("#")
    if device and Path(path).suffix.lower() in (".yaml", ".yml"):
        return device
    return None


def _browse_options(args: argparse.Namespace) -> BrowseOptions | None:
    """`BrowseOptions` with --browse, else None; the --browse-* flags only go with it."""
    from gateway.translator.browse import BrowseOptions
    from gateway.translator.sources import config_device

    if not args.browse:
        if args.browse_seconds is not None or args.browse_topic is not None:
            raise CommandError("--browse-seconds and --browse-topic go with --browse")
        return None
    if config_device(args.source) is None and config_device(args.target) is None:
        raise CommandError(
            "--browse connects to a device of a config: give --source or --target as "
            "FILE.yaml#device"
        )
    defaults = BrowseOptions()
    return BrowseOptions(
        seconds=args.browse_seconds or defaults.seconds, topic=args.browse_topic or defaults.topic
    )


def _label(spec: str, browse: BrowseOptions | None) -> str:
    """What the bridge's header says a side was read from."""
    from gateway.translator.sources import config_device

    live = browse is not None and config_device(spec) is not None
    return f"{spec} (browsed live)" if live else spec


def _source(option: str, spec: str, browse: BrowseOptions | None = None) -> list[Any]:
    """The points of --source or --target; a problem names the option as well as the file."""
    from gateway.translator.pointlist import InputError
    from gateway.translator.sources import read_source

    try:
        return read_source(spec, browse)
    except InputError as exc:
        raise CommandError(f"{option} {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CommandError("training needs torch: pip install 'protocol-brain[train]'") from None
    from gateway.translator.vocab import MODEL_DIR
    from models.translator.train import TrainConfig, run

    cfg = TrainConfig(seed=args.seed, threads=args.threads)
    if args.steps is not None:
        cfg.steps = args.steps
    if args.batch is not None:
        cfg.batch = args.batch
    out = check_output_dir(Path(args.out) if args.out else MODEL_DIR)
    meta = run(cfg, out, members=args.members)
    summary = {k: v for k, v in meta.items() if k != "classes"}
    print(json.dumps(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import rapidfuzz  # noqa: F401  (the baseline's; missing, say so before the model's minutes)

    from gateway.translator.evaluate import evaluate, too_few

    try:
        shots = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        raise CommandError(
            f"--shots: expected comma-separated integers, got {args.shots!r}"
        ) from None
    if not shots or min(shots) < 0 or args.seeds < 1:
        raise CommandError("--shots needs counts >= 0 and --seeds at least 1")
    labeled = _labeled(args.data)
    data = labeled.points
    skipped = too_few(shots, len(data))
    for why in skipped.values():
        print(f"{args.data}: skipped: {why}", file=sys.stderr)
    shots = [k for k in shots if str(k) not in skipped]
    if not shots:
        raise CommandError(f"{args.data}: no shot count leaves a point to evaluate", EXIT_INPUT)
    result = evaluate(
        _translator(args),
        data,
        shots,
        args.seeds,
        prior=args.site_prior,
        select=args.select,
        progress=lambda what: print(f"evaluate: {what}", file=sys.stderr, flush=True),
    )
    classes = counted(len({c for _, c in data}), "class", "classes")
    print(f"{args.data}: {counted(len(data), 'labeled point')}, {classes}")
    print(f"{'shots':>5}  {'who':<9} {'top1':>6} {'top5':>6} {'macroF1':>7}")
    for k, row in result.items():
        for who, m in row.items():
            print(f"{k:>5}  {who:<9} {m['top1']:6.3f} {m['top5']:6.3f} {m['macro_f1']:7.3f}")
    # n counts the points the figures are over: those of a known class (left_out says how
    # many were not); skipped names the shot counts too large for the file, with why.
    summary = {"data": args.data, "n": len(data), "seeds": args.seeds}
    options = {"site_prior": args.site_prior, "select": args.select}
    left_out = {"unknown_label": len(labeled.unknown)}
    print(
        json.dumps(
            {**summary, **options, "shots": result, "left_out": left_out, "skipped": skipped}
        )
    )
    return 0


PICK_COLUMNS = ["name", "brick_class", "suggestion", "score", "description", "unit", "datatype"]


def cmd_pick(args: argparse.Namespace) -> int:
    from gateway.translator import pick as picking
    from gateway.translator.model import top_k
    from gateway.translator.pointlist import read_points
    from gateway.translator.site import pick_site

    if args.count < 1:
        raise CommandError("--count must be at least 1")
    _not_overwritten(args.out, {"input": args.input, "--examples": args.examples})
    points = read_points(args.input)
    translator = _translator(args)
    examples = _examples(args, translator)
    listed = len(points)
    # A name listed twice is one point to label (labels are kept by name): its first row only.
    if len(keep := picking.first_of_each([p.name for p in points])) < listed:
        points = [points[i] for i in keep]
    chosen, pred = pick_site(translator, points, args.count, examples, prior=args.site_prior)
    guesses = top_k(pred.probs[chosen], translator.classes, 1)
    with _csv_out(args.out) as w:
        # brick_class is left empty on purpose: the user's label, not the model's guess, is
        # what teaches the few-shot head (an unfilled row is an error in --examples).
        w.writerow(PICK_COLUMNS)
        for i, top in zip(chosen, guesses, strict=True):
            p = points[i]
            guess, score = top[0]
            w.writerow([p.name, "", guess, f"{score:.3f}", p.description, p.unit, p.datatype])
    labeled = {p.name for p, _ in examples}
    todo = sum(1 for p in points if p.name not in labeled)
    if len(chosen) < min(args.count, todo):  # only the candidate sample caps it
        print(
            f"{args.out or args.input}: --count {args.count} capped at {len(chosen)}: a list of "
            f"more than {picking.CANDIDATES} points to label is picked from a seeded sample of "
            f"{picking.CANDIDATES} of them",
            file=sys.stderr,
        )
    if args.out:
        print(
            f"{args.out}: {len(chosen)} of {counted(listed, 'point')} to label; fill in "
            "brick_class (the suggestion is the model's guess), then use the rows as --examples",
            file=sys.stderr,
        )
    return 0
