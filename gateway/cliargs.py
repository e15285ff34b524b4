"""Checks shared by the command line: option values and output files.

argparse types reject a bad number where the option is read (``gateway X: error: argument
--steps: must be a positive integer, got '0'``, exit 2), so a command never starts minutes of
work on a value it cannot use. `output_file` opens a file to write and turns the operating
system's refusal into one line instead of a traceback.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import IO


def _number(text: str, kind: type[int] | type[float], what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int, "a positive integer"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(_number(text, int, "an integer of 0 or more"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer of 0 or more, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive finite number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text, float, "a finite number of 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1 (a threshold on a probability)."""
    value = _number(text, float, "a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def port(text: str) -> int:
    value = int(_number(text, int, "a port number from 0 to 65535"))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return value


def path_text(text: str) -> str:
    """A file or folder argument; an empty one (an unset shell variable) is refused rather
    than read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


def path_arg(text: str) -> Path:
    """`path_text` as a Path."""
    return Path(path_text(text))


def output_file(path: str | Path) -> IO[str]:
    """``path`` opened to write UTF-8 text (newlines as written, as csv wants); a path that
    cannot be written (no such folder, a directory, read-only) is a CommandError."""
    from gateway.cli import CommandError

    try:
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_output_dir(path: str | Path) -> Path:
    """Create ``path`` (a folder for outputs) now, before any long work; CommandError if not."""
    from gateway.cli import CommandError

    folder = Path(path)
    if folder.exists() and not folder.is_dir():  # mkdir would say only "File exists"
        raise CommandError(f"cannot write into {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"cannot create the output folder {folder}: {exc.strerror or exc}"
        ) from None
    return folder
