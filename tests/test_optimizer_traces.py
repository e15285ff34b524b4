"""Reading evaluation traces as real mobile logs come: subfolders, headers, commas, extra
columns, NaN rates, repeated timestamps, junk files, milliseconds, short traces; and a
forgiving ``--policies`` list. Every repair or doubt is a note or warning on stderr and in
the JSON; only a folder with no usable trace at all is an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.cli import main
from gateway.optimizer.cli import POLICIES
from models.optimizer import evaluate as ev
from models.optimizer import traces as tr


def _write(path: Path, seconds: int = 60, step: float = 1.0, rate: float = 2.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{i * step:.3f}\t{rate + (i % 3) * 0.5:.6f}" for i in range(seconds)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _evaluate(
    folder: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any], str]:
    """(exit code, the last stdout line as JSON, stderr) of a quick evaluate on ``folder``."""
    argv = ["optimizer", "evaluate", "--traces", str(folder), "--length", "20"]
    code = main([*argv, "--policies", "immediate", *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if code == 0 else {}, err


def test_subfolders_are_read_and_named_by_their_relative_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for rel in ("norway/n0", "norway/n1", "belgium/b0", "top", ".git/objects/x", "README.md"):
        _write(tmp_path / rel)
    assert [t.name for t in tr.scan_dir(tmp_path).traces] == [
        "belgium/b0",
        "norway/n0",
        "norway/n1",
        "top",
    ]
    code, report, _ = _evaluate(tmp_path, capsys)
    assert code == 0 and report["traces"] == 4 and report["traces_skipped"] == 0


def test_messy_rows_are_read_and_each_repair_is_noted(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(
        "time_seconds,Mbit_per_s,cell\n"  # a header, commas, a third column
        "10.0, 1.0, 7\n"
        "11.0, nan, 7\n"  # dropped
        "11.0, 3.0, 7\n"  # 11.0 twice: one row, the mean of the readable ones
        "11.0, 5.0, 7\n"
        "12.0, -1, 7\n"  # a negative rate: dropped
        "13.0, 2.0, 7\n",
        encoding="utf-8",
    )
    t = tr.load_trace(tmp_path / "t")
    assert t.times.tolist() == [0.0, 1.0, 3.0] and t.mbps.tolist() == [1.0, 4.0, 2.0]
    notes = " | ".join(t.notes)
    assert "header line 'time_seconds,Mbit_per_s,cell'" in notes
    assert "commas" in notes and "columns after the second on 6 rows" in notes
    assert "dropped 2 rows with a NaN, infinite or negative value" in notes
    assert "merged 1 row repeating a timestamp" in notes


def test_decimal_commas_are_not_read_as_two_numbers(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("0,5;1,2\n1,5;1,4\n2,5;0,9\n", encoding="utf-8")
    with pytest.raises(tr.TraceError, match="not a trace"):
        tr.load_trace(tmp_path / "t")


def test_a_junk_file_is_skipped_counted_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "trace_0")
    (tmp_path / "notes.txt").write_text("hello world\nbus 7, morning\n", encoding="utf-8")
    (tmp_path / "backwards").write_text("5\t1\n6\t1\n1\t1\n", encoding="utf-8")
    code, report, err = _evaluate(tmp_path, capsys)
    assert code == 0 and report["traces"] == 1 and report["traces_skipped"] == 2
    assert set(report["skipped_files"]) == {"notes.txt", "backwards"}
    assert "line 3: times go backwards" in report["skipped_files"]["backwards"]
    assert "skipped notes.txt: not a trace" in err


def test_no_usable_trace_at_all_is_one_line_naming_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello world\n", encoding="utf-8")
    (tmp_path / "one").write_text("0\t1\n", encoding="utf-8")
    code, _, err = _evaluate(tmp_path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no usable trace: notes.txt: not a trace" in err and "and 1 other file" in err


def test_millisecond_times_are_a_warning_in_stderr_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "sub" / "ms_trace", seconds=60, step=1000.0)
    _write(tmp_path / "ok", seconds=60)
    code, report, err = _evaluate(tmp_path, capsys)
    assert code == 0 and report["traces"] == 2  # a warning keeps the run
    (warning,) = report["warnings"]
    assert warning.startswith("sub/ms_trace: median step 1000 s: times look like milliseconds")
    assert f"warning: {warning}" in err


def test_a_trace_with_few_samples_per_episode_is_a_warning() -> None:
    slow = tr.Trace("slow", np.arange(0.0, 600.0, 30.0), np.full(20, 2.0))
    warnings, _ = ev.trace_warnings(slow, 60.0)
    assert warnings == [
        "a 60 s episode sees only 2 samples of it (median step 30 s): nearly a constant link"
    ]


def test_a_short_trace_is_looped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "short").write_text("0\t1\n1\t2\n2\t0.5\n", encoding="utf-8")
    code, report, err = _evaluate(tmp_path, capsys)
    assert code == 0
    assert report["warnings"] == ["short: lasts 2 s, shorter than a 20 s episode: looped 10 times"]
    assert "warning: short: lasts 2 s" in err


def test_well_formed_traces_have_no_warnings_and_long_ones_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "a", seconds=60)
    _write(tmp_path / "b", seconds=15)  # 14 s: looped 1.4 times, a note, not a warning
    code, report, err = _evaluate(tmp_path, capsys)
    assert code == 0 and report["warnings"] == [] and report["traces_skipped"] == 0
    assert report["notes"] == ["b: lasts 14 s, shorter than a 20 s episode: looped 1.43 times"]
    assert report["traces_longer_than_episode"] == 1
    assert "note: 1 trace longer than 20 s: each episode uses the first 20 s" in err


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("learned, heuristic", ("learned", "heuristic")),
        ("LEARNED", ("learned",)),
        (" Immediate ,learned,immediate,", ("immediate", "learned")),
        ("all,learned", POLICIES),
        ("ALL", POLICIES),
    ],
)
def test_policy_lists_ignore_spaces_case_and_repeats(text: str, wanted: tuple[str, ...]) -> None:
    assert ev.parse_policies(text, POLICIES) == wanted


def test_a_policy_list_naming_none_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "a")
    argv = ["optimizer", "evaluate", "--traces", str(tmp_path), "--policies", " , "]
    assert main(argv) == 2
    assert "no policy named; choose from all, immediate" in capsys.readouterr().err


def test_a_spaced_mixed_case_policy_list_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "a")
    code, report, _ = _evaluate(tmp_path, capsys, "--policies", "Immediate, HEURISTIC,immediate")
    assert code == 0 and list(report["policies"]) == ["immediate", "heuristic"]


def test_headroom_says_what_evaluate_says_about_the_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "sub" / "ms_trace", seconds=60, step=1000.0)
    _write(tmp_path / "ok", seconds=60)
    argv = ["optimizer", "headroom", "--traces", str(tmp_path), "--length", "20"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["traces"] == 2  # the subfolder too
    (warning,) = report["warnings"]
    assert warning.startswith("sub/ms_trace: median step 1000 s: times look like milliseconds")
    assert f"warning: {warning}" in err
