"""``gateway anomaly train|evaluate``: the anomaly model from the shell.

Light at import (the CLI builds its parser on every command): numpy, ONNX Runtime and torch are
imported inside the commands. Bad input (a missing file, missing columns, text that is not
UTF-8 or not numbers) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.cli import CommandError
from gateway.cliargs import check_output_dir, nonnegative_float, nonnegative_int, positive_int
from gateway.text import counted

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "anomaly",
        help="train or evaluate the local anomaly model",
        description="The anomaly model the gateway scores samples with: train the teacher "
        "autoencoder and its int8 student on clean SKAB-format data, or evaluate them by "
        "SKAB's protocol.",
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
        type=Path,
        metavar="DIR",
        help="SKAB-format CSVs (';', datetime, sensors): a file or a folder",
    )
    t.add_argument("--out", type=Path, metavar="DIR", help="default: the shipped model folder")
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
        type=Path,
        metavar="DIR",
        help="labelled SKAB-format CSVs (anomaly, changepoint columns): a file or a folder",
    )
    e.add_argument("--models", type=Path, metavar="DIR", help="default: the shipped models")
    e.add_argument(
        "--refresh",
        type=nonnegative_float,
        default=None,
        metavar="TAU",
        help="level refresh time constant in samples, 0: off (default: the anomaly: option's)",
    )
    e.set_defaults(func=cmd_evaluate)


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
    from models.anomaly.evaluate import evaluate_model, hotelling, load_labelled

    folder = args.models or MODELS
    if not folder.is_dir():
        raise CommandError(
            f"{folder}: not a folder (--models: where teacher.onnx and student.onnx are)"
        )
    try:
        series = load_labelled(args.data)
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
        print(
            f"{name:<13} F1 {f['f1']:.3f}  FAR {f['far']:.3f}  MAR {f['mar']:.3f}  "
            f"{f['us_per_sample']:.2f} us/sample" + (f"  {size} bytes" if size else "")
        )
    t_f1 = result["teacher"]["f1"]
    result["student_to_teacher_f1"] = round(result["student"]["f1"] / t_f1, 4) if t_f1 else None
    result["size_ratio"] = round(student.size / teacher.size, 4)
    print(json.dumps(result))
    return 0
