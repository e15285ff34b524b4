"""``gateway anomaly train|evaluate|status|recalibrate|carry``: the anomaly model from the shell.

Light at import (the CLI builds its parser on every command): numpy, ONNX Runtime and torch are
imported inside the commands. Bad input (a missing file, missing columns, text that is not
UTF-8 or not numbers) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.cli import CommandError
from gateway.cliargs import (
    check_output_dir,
    nonnegative_float,
    nonnegative_int,
    path_arg,
    path_text,
    positive_int,
)
from gateway.text import counted

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "anomaly",
        help="train or evaluate the anomaly model; status, recalibrate or carry the "
        "calibrations a gateway keeps",
        description="The anomaly model the gateway scores samples with: train the teacher "
        "autoencoder and its int8 student on clean SKAB-format data, or evaluate them by "
        "SKAB's protocol. And the calibrations a config's gateway keeps per device: show them "
        "(status), forget them (recalibrate), or move them to a renamed bridge (carry).",
    )
    sub = p.add_subparsers(dest="anomaly_command", required=True)

    t = sub.add_parser(
        "train",
        help="train teacher and student on clean CSV data (SKAB format)",
        description="Train the teacher autoencoder on clean readings (files without labels, "
        "and the calibration rows of labelled ones), distil it into the pruned int8 student "
        "and export both as ONNX; prints one JSON object. It writes into the package's model "
        "folder by default, replacing the shipped models: pass --out DIR to keep them. Needs "
        "the [train] extra (torch).",
    )
    t.add_argument(
        "--data",
        required=True,
        type=path_arg,
        metavar="DIR",
        help="SKAB-format CSVs (';', datetime, sensors): a file or a folder",
    )
    t.add_argument("--out", type=path_arg, metavar="DIR", help="default: the shipped model folder")
    t.add_argument(
        "--teacher-steps",
        type=positive_int,
        default=3000,
        help="teacher training steps (%(default)s)",
    )
    t.add_argument(
        "--student-steps",
        type=positive_int,
        default=6000,
        help="student distillation steps (%(default)s)",
    )
    t.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (%(default)s)")
    t.add_argument(
        "--keep-float", action="store_true", help="also write student-float.onnx (before int8)"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="SKAB protocol: F1/FAR/MAR of teacher, student, T²",
        description="Score labelled SKAB-format CSVs by SKAB's protocol (the first 400 rows of "
        "each calibrate): F1, false-alarm and missed-alarm rates of the teacher, the student "
        "and a Hotelling T² baseline. The last line is one JSON object.",
    )
    e.add_argument(
        "--data",
        required=True,
        type=path_arg,
        metavar="DIR",
        help="labelled SKAB-format CSVs (anomaly, changepoint columns): a file or a folder",
    )
    e.add_argument("--models", type=path_arg, metavar="DIR", help="default: the shipped models")
    e.add_argument(
        "--refresh",
        type=nonnegative_float,
        default=None,
        metavar="TAU",
        help="level refresh time constant in samples, 0: off (default: the anomaly: option's)",
    )
    e.set_defaults(func=cmd_evaluate)

    st = sub.add_parser(
        "status",
        help="the calibrations a config's gateway keeps",
        description="Show, for every bridge with anomaly: of a config, the calibration kept "
        "per device in the state folder (when, on how many readings, threshold, whether its "
        "alarm was active when last written), and the calibrations kept for bridges the config "
        "does not have (renamed or removed). Works while the gateway runs or after it stopped.",
    )
    st.add_argument("file", type=path_text, help="the gateway's YAML config")
    st.add_argument("--json", action="store_true", help="print the calibrations as JSON")
    st.set_defaults(func=cmd_status)

    r = sub.add_parser(
        "recalibrate",
        help="forget kept calibrations: devices calibrate again at the next start",
        description="Remove the calibrations a config's gateway keeps, so the devices learn "
        "normal again from their next clean period (after a repair, a new sensor, a process "
        "change). Run it while that gateway is stopped: a running gateway holds the file and "
        "this command refuses.",
    )
    r.add_argument("file", type=path_text, help="the gateway's YAML config")
    r.add_argument("--bridge", action="append", metavar="NAME", help="only this bridge (repeat)")
    r.add_argument("--device", action="append", metavar="NAME", help="only this device (repeat)")
    r.set_defaults(func=cmd_recalibrate)

    c = sub.add_parser(
        "carry",
        help="give a renamed bridge the calibrations kept under its old name",
        description="Calibrations are kept under the bridge's name: after a bridge is renamed in "
        "the config, this moves those kept under the old name (see `gateway anomaly status`) to "
        "the new one, so its devices go on with them at the next start instead of calibrating "
        "again. A device's record under the old name replaces one under the new name. Run it "
        "while the gateway is stopped.",
    )
    c.add_argument("file", type=path_text, help="the gateway's YAML config")
    c.add_argument("--from", dest="source", required=True, metavar="OLD", help="the old name")
    c.add_argument("--to", dest="target", required=True, metavar="NEW", help="a bridge of FILE")
    c.set_defaults(func=cmd_carry)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise CommandError("training needs torch: pip install 'protocol-brain[train]'") from None
    from gateway.anomaly.model import MODELS
    from models.anomaly.data import DataError
    from models.anomaly.train import train

    out = check_output_dir(args.out or MODELS)  # before minutes of training
    try:
        result = train(
            args.data,
            out,
            teacher_steps=args.teacher_steps,
            student_steps=args.student_steps,
            seed=args.seed,
            keep_float=args.keep_float,
        )
    except (DataError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(
        json.dumps(
            {
                "teacher": str(result.teacher),
                "student": str(result.student),
                "teacher_params": result.teacher_params,
                "student_params": result.student_params,
                "teacher_bytes": result.teacher_bytes,
                "student_bytes": result.student_bytes,
                "windows": result.windows,
                "teacher_loss": round(result.teacher_loss, 5),
                "student_loss": round(result.student_loss, 5),
            }
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gateway.anomaly.model import MODELS, ModelError, OnnxScorer
    from models.anomaly.data import DataError
    from models.anomaly.evaluate import evaluate_model, hotelling, load

    folder = args.models or MODELS
    if not folder.is_dir():
        raise CommandError(
            f"{folder}: not a folder (--models: where teacher.onnx and student.onnx are)"
        )
    try:
        loaded = load(args.data)
        series = loaded.series
        teacher = OnnxScorer(folder / "teacher.onnx")
        student = OnnxScorer(folder / "student.onnx")
    except (DataError, ModelError) as exc:
        raise CommandError(str(exc)) from None
    rows = sum(len(s.values) for s in series)
    held = sum(s.held for s in series)
    print(
        f"{counted(len(series), 'file')}, {counted(rows, 'row')}, "
        "first 400 rows of each for calibration"
        + (f"; {counted(held, 'missing reading')} held at the last value" if held else "")
    )
    options = {} if args.refresh is None else {"refresh": args.refresh}
    result: dict[str, Any] = {}
    for name, tally in (
        ("teacher", evaluate_model(teacher, series, **options)),
        ("student", evaluate_model(student, series, **options)),
        ("hotelling_t2", hotelling(series)),
    ):
        size = None if name == "hotelling_t2" else (teacher if name == "teacher" else student).size
        result[name] = tally.figures(size)
        f = result[name]
        f1 = "n/a" if f["f1"] is None else f"{f['f1']:.3f}"
        print(
            f"{name:<13} F1 {f1}  FAR {f['far']:.3f}  MAR {f['mar']:.3f}  "
            f"{f['us_per_sample']:.2f} us/sample" + (f"  {size} bytes" if size else "")
        )
    t_f1 = result["teacher"]["f1"]
    s_f1 = result["student"]["f1"]
    result["student_to_teacher_f1"] = round(s_f1 / t_f1, 4) if t_f1 and s_f1 is not None else None
    result["size_ratio"] = round(student.size / teacher.size, 4)
    # files the protocol could not score (no anomaly column, too short), by reason
    result["left_out"] = loaded.left_out
    print(json.dumps(result))
    return 0


def _scoring_bridges(
    file: str, only: list[str] | None = None, *, known: list[str] | None = None
) -> list[str]:
    """Names of the config's bridges with ``anomaly:`` (state folder set as gateway run does);
    ``known`` gets every bridge name of the config, switched off ones too."""
    from gateway.config import ConfigError, load_config
    from gateway.paths import keep_from_others, use_config_state_dir

    try:
        config = load_config(file, keep_unresolved=True)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    use_config_state_dir(file)
    keep_from_others()  # calibration files it writes are as private as gateway run's
    names = [b.name for b in config.bridges if b.anomaly is not None]
    if known is not None:
        known += [*names, *config.disabled_bridges]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise CommandError(
            f"{file}: no bridge with anomaly: named {', '.join(unknown)}"
            f" (has: {', '.join(names) or 'none'})"
        )
    if not names:
        raise CommandError(f"{file}: no bridge has an anomaly: option")
    return [n for n in names if not only or n in only]


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from gateway.anomaly.store import orphaned, read_records, store_path

    rows: list[dict[str, Any]] = []
    failed = 0
    known: list[str] = []
    bridges = _scoring_bridges(args.file, known=known)
    # a renamed (or removed) bridge's calibrations: nothing reads them any more
    orphans = []
    for name, path in orphaned(store_path(bridges[0]).parent, known).items():
        try:
            devices = sorted(read_records(path))
        except ValueError as exc:
            orphans.append({"bridge": name, "path": str(path), "devices": [], "error": str(exc)})
            continue
        orphans.append({"bridge": name, "path": str(path), "devices": devices})
    for bridge in bridges:
        path = store_path(bridge)
        if not path.exists():
            rows.append({"bridge": bridge, "path": str(path), "device": None})
            continue
        try:
            records = read_records(path)
        except ValueError as exc:
            failed = 1
            rows.append({"bridge": bridge, "path": str(path), "device": None, "error": str(exc)})
            continue
        if not records:  # written by a run that stopped before any device had calibrated
            rows.append({"bridge": bridge, "path": str(path), "device": None})
        for device, r in sorted(records.items()):
            rows.append(
                {
                    "bridge": bridge,
                    "path": str(path),
                    "device": device,
                    "calibrated_at": r.calibrated_at,
                    "readings": r.rows,
                    "points": r.points,
                    "threshold": r.cal.threshold,
                    "alarm": r.alarm,
                }
            )
    if args.json:
        print(json.dumps({"calibrations": rows, "orphaned": orphans}, indent=2))
        return failed
    head = ("bridge", "device", "calibrated", "readings", "threshold")
    print("{:<16} {:<16} {:<19} {:>8} {:>9} alarm".format(*head))
    for row in rows:
        if row["device"] is None:
            what = f"cannot read: {row['error']}" if "error" in row else "nothing kept yet"
            print(f"{row['bridge']:<16} {'-':<16} {what}  ({row['path']})")
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["calibrated_at"]))
        print(
            f"{row['bridge']:<16} {row['device']:<16} {when:<19} {row['readings']:>8} "
            f"{row['threshold']:>9.3g} {'active' if row['alarm'] else '-'}"
        )
    if orphans:
        print("\nkept for bridges not in the config (renamed or removed); nothing uses them:")
        for o in orphans:
            what = f"cannot read: {o['error']}" if "error" in o else ", ".join(o["devices"])
            print(f"{o['bridge']:<16} {what or 'no device'}  ({o['path']})")
        print(
            f"a renamed bridge: gateway anomaly carry {args.file} --from OLD --to NEW"
            " (gateway stopped); else delete the file"
        )
    return failed


def cmd_recalibrate(args: argparse.Namespace) -> int:
    from gateway.anomaly.store import forget, read_records, store_path
    from gateway.uplink.lock import OutboxInUse

    bridges = _scoring_bridges(args.file, args.bridge)
    if args.device:
        kept: set[str] = set()
        for bridge in bridges:
            path = store_path(bridge)
            try:
                kept |= set(read_records(path)) if path.exists() else set()
            except ValueError as exc:
                raise CommandError(f"{path}: {exc}", code=1) from None
        unknown = sorted(set(args.device) - kept)
        if unknown:  # a typo would otherwise forget nothing and say so as if all was well
            raise CommandError(
                f"no kept calibration for {', '.join(unknown)}"
                f" (kept: {', '.join(sorted(kept)) or 'none'})"
            )
    for bridge in bridges:
        path = store_path(bridge)
        try:
            gone = forget(path, args.device)
        except OutboxInUse as exc:
            raise CommandError(
                f"bridge {bridge}: its calibrations are held by a running gateway (pid "
                f"{exc.holder}); stop it, then run this again",
                code=1,
            ) from None
        except (ValueError, OSError) as exc:
            raise CommandError(f"{path}: {exc}", code=1) from None
        if gone:
            print(f"bridge {bridge}: {', '.join(gone)} will calibrate again at the next start")
        else:
            print(f"bridge {bridge}: no kept calibration to forget")
    return 0


def cmd_carry(args: argparse.Namespace) -> int:
    from gateway.anomaly.store import carry, store_path
    from gateway.uplink.lock import OutboxInUse

    scoring = _scoring_bridges(args.file)
    (target,) = _scoring_bridges(args.file, [args.target])
    if args.source in scoring:  # its calibrations are in use: moving them would lose them
        raise CommandError(
            f"{args.file}: bridge {args.source} still scores with anomaly:; carry moves the"
            " calibrations of a bridge no longer in the config (renamed or removed)"
        )
    source, dest = store_path(args.source), store_path(target)
    if source == dest:
        raise CommandError(f"--from and --to name the same file ({dest})")
    try:
        moved, replaced = carry(source, dest)
    except OutboxInUse as exc:
        raise CommandError(
            f"calibrations of {args.source} or {target} are held by a running gateway"
            f" (pid {exc.holder}); stop it, then run this again",
            code=1,
        ) from None
    except ValueError as exc:
        raise CommandError(f"{exc} (see gateway anomaly status {args.file})") from None
    except OSError as exc:
        raise CommandError(f"{dest}: {exc}", code=1) from None
    if not moved:
        print(f"{source} kept no calibration; removed")
        return 0
    print(
        f"bridge {target}: {', '.join(moved)} will go on with the calibration kept for"
        f" {args.source}" + (f" (replacing its own for {', '.join(replaced)})" if replaced else "")
    )
    return 0
