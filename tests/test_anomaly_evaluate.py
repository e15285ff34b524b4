"""``gateway anomaly evaluate`` on real-world folders: what it reads past (index columns, blank
lines, header case, ``.CSV``), what it leaves out with a note (unlabelled and short files),
what it warns about, and that scoring in batches gives the scores of one row at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from anomaly_data import series, write_csv

from gateway.anomaly.model import STUDENT, TEACHER, OnnxScorer
from gateway.cli import main
from models.anomaly import data, evaluate

FAULTS = [(550, 700)]


def _plain(path: Path, seed: int = 10) -> Path:
    return write_csv(path, *series(900, seed=seed, faults=FAULTS))


def _run(data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    """The figures of the last stdout line without the timings, and stderr."""
    assert main(["anomaly", "evaluate", "--data", str(data)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    for figures in report.values():
        if isinstance(figures, dict):
            for key in [k for k in figures if k.startswith("us_per_")]:
                del figures[key]
    return report, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _plain(tmp_path_factory.mktemp("plain") / "a.csv")


def _edited(path: Path, reference: Path, edit: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = reference.read_text().splitlines()
    path.write_text(edit(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name",
    ["", "Unnamed: 0", "index"],
)
def test_a_row_index_column_is_not_scored(
    name: str, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pandas' ``to_csv(sep=';')`` writes the row index first, with an empty header."""

    def indexed(lines: list[str]) -> str:
        return "\n".join(f"{name if i == 0 else i - 1};{x}" for i, x in enumerate(lines)) + "\n"

    expected, _ = _run(reference, capsys)
    got, err = _run(_edited(tmp_path / "idx" / "a.csv", reference, indexed), capsys)
    assert got == expected
    assert "1 file: 4 sensor columns scored: Flow, Pressure, Temperature, Current" in err
    assert f"left aside: {name!r} (blank or a row index)" in err


def test_which_columns_are_index_columns() -> None:
    assert data.index_column("", ["0", "1", "2"]) and data.index_column(
        "Unnamed: 3", ["5", "9", "12"]
    )
    assert data.index_column("INDEX", ["0", "1"]) and data.index_column("", ["", " "])
    assert not data.index_column("", ["0", "2", "1"])  # not increasing: readings
    assert not data.index_column("Unnamed: 0", ["0.5", "1.5"])  # not whole numbers
    assert not data.index_column("Counter", ["0", "1", "2"])  # a named column is a sensor


def test_each_distinct_sensor_set_is_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(2):
        _plain(tmp_path / f"{i}.csv", seed=10 + i)
    values, label = series(900, seed=12, faults=FAULTS)
    one = write_csv(tmp_path / "z.csv", values, label)
    lines = one.read_text().splitlines()
    one.write_text("\n".join(";".join(x.split(";")[:2] + x.split(";")[-2:]) for x in lines))
    _, err = _run(tmp_path, capsys)
    assert "2 files: 4 sensor columns scored: Flow, Pressure, Temperature, Current" in err
    assert "1 file: 1 sensor columns scored: Flow" in err


@pytest.mark.parametrize(
    "quirk",
    ["blank line at the end", "; at the end of each line", "header case", "upper-case .CSV"],
)
def test_harmless_quirks_give_the_same_figures(
    quirk: str, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected, _ = _run(reference, capsys)
    name = "A.CSV" if quirk == "upper-case .CSV" else "a.csv"

    def edit(lines: list[str]) -> str:
        if quirk == "blank line at the end":
            return "\r\n".join(lines) + "\r\n\r\n"
        if quirk == "; at the end of each line":
            return "\n".join(f"{x};" for x in lines) + "\n"
        if quirk == "header case":
            lines[0] = lines[0].replace("datetime", "Datetime").replace("anomaly", "Anomaly")
        return "\n".join(lines) + "\n"

    got, _ = _run(_edited(tmp_path / "q" / name, reference, edit).parent, capsys)
    assert got == expected


def test_unlabelled_and_short_files_are_left_out_with_a_note(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SKAB's data/ folder holds anomaly-free/anomaly-free.csv, which has no label columns."""
    expected, _ = _run(reference, capsys)
    root = tmp_path / "data"
    _edited(root / "valve" / "a.csv", reference, lambda lines: "\n".join(lines) + "\n")
    write_csv(root / "anomaly-free" / "anomaly-free.csv", series(600, seed=3)[0], None)
    values, label = series(900, seed=4, faults=FAULTS)
    write_csv(root / "valve" / "short.csv", values[:400], label[:400])
    got, err = _run(root, capsys)
    assert expected.pop("left_out") == {}
    assert got.pop("left_out") == {
        "unlabelled": ["anomaly-free/anomaly-free.csv"],
        "short": ["valve/short.csv"],
    }
    assert got == expected
    assert "left out: " in err and "anomaly-free.csv: missing column anomaly" in err
    assert "short.csv: 400 rows; needs more than 400" in err
    assert evaluate.load(root, note=lambda _: None).left_out == {
        "unlabelled": ["anomaly-free/anomaly-free.csv"],
        "short": ["valve/short.csv"],
    }


def test_changepoint_is_not_required(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected, _ = _run(reference, capsys)

    def without(lines: list[str]) -> str:
        return "\n".join(x.rsplit(";", 1)[0] for x in lines) + "\n"

    got, _ = _run(_edited(tmp_path / "nocp" / "a.csv", reference, without), capsys)
    assert got == expected


def test_nothing_to_score_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(2):
        write_csv(tmp_path / f"free{i}.csv", series(600, seed=i)[0], None)
    assert main(["anomaly", "evaluate", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no file to score (2 unlabelled; e.g. " in err
    assert "free0.csv: missing column anomaly" in err


def test_labels_in_the_calibration_rows_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "early.csv", *series(900, seed=5, faults=[(100, 130), (550, 700)]))
    _, err = _run(tmp_path, capsys)
    assert (
        "warning: early.csv: 30 of the first 400 rows are labelled anomalous; "
        "they calibrate as normal and are not scored"
    ) in err


def test_f1_is_undefined_without_labelled_anomalies_or_alarms() -> None:
    t = evaluate.Tally()
    t.add("clean", np.zeros(5, np.int8), np.zeros(5, np.int8))
    assert t.f1 is None
    assert t.figures(None)["f1"] is None  # null in the JSON, "n/a" in the text line
    t.add("alarm", np.ones(5, np.int8), np.zeros(5, np.int8))
    assert t.f1 == 0.0


def test_an_all_normal_folder_reports_f1_as_undefined(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No labelled anomaly: F1 is 0 with a false alarm (precision 0), undefined without (was 0.0)
    values, _ = series(900, seed=6)
    write_csv(tmp_path / "clean.csv", values, np.zeros(len(values), np.int8))
    assert main(["anomaly", "evaluate", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    for name in ("teacher", "student", "hotelling_t2"):
        figures = report[name]
        assert figures["f1"] == (None if figures["far"] == 0 else 0.0), figures
        line = next(x for x in out.splitlines() if x.startswith(name))
        assert ("F1 n/a" in line) is (figures["f1"] is None), line
    assert any(report[n]["f1"] is None for n in ("teacher", "student")), report
    assert report["student_to_teacher_f1"] is None


def test_a_malformed_file_names_its_line_and_column(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def comma(lines: list[str]) -> str:
        cells = lines[3].split(";")
        cells[1] = cells[1].replace(".", ",")
        lines[3] = ";".join(cells)
        return "\n".join(lines) + "\n"

    path = _edited(tmp_path / "c" / "a.csv", reference, comma)
    assert main(["anomaly", "evaluate", "--data", str(path.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a.csv: line 4: column 'Flow':" in err and "a decimal comma?" in err


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ("header_twice", "a.csv: column 'Flow' appears twice in the header"),
        ("values_past_header", "a.csv: line 5: "),
    ],
)
def test_a_column_named_twice_or_values_past_the_header_are_refused(
    edit: str, said: str, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Either would score the wrong readings without a word: which 'Flow' is the sensor, and
    which cells of a row that has more than the header names?"""

    def change(lines: list[str]) -> str:
        if edit == "header_twice":
            cells = lines[0].split(";")
            cells[2] = cells[1]
            lines[0] = ";".join(cells)
        else:
            lines[4] += ";5;6"
        return "\n".join(lines) + "\n"

    path = _edited(tmp_path / "d" / "a.csv", reference, change)
    assert main(["anomaly", "evaluate", "--data", str(path.parent)]) == 2
    assert said in capsys.readouterr().err


def test_hidden_files_are_not_data(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A macOS ``._a.csv`` (binary) or any hidden file beside the data is left out, as the
    optimizer's trace folders do."""
    expected, _ = _run(reference, capsys)
    folder = tmp_path / "h"
    _edited(folder / "a.csv", reference, lambda lines: "\n".join(lines) + "\n")
    (folder / "._a.csv").write_bytes(b"\x00\x05\x16\x07\xff\xfe Mac OS X")
    _edited(folder / ".old" / "b.csv", reference, lambda lines: "\n".join(lines[:3]) + "\n")
    got, _ = _run(folder, capsys)
    assert got == expected


class CountingModel:
    """A shipped model that counts its calls."""

    def __init__(self, path: Path) -> None:
        self.inner = OnnxScorer(path)
        self.window = self.inner.window
        self.calls = 0

    def errors(self, windows: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.inner.errors(windows)


class PerCallScale(CountingModel):
    """Errors that depend on the other windows of the call, as activation scales computed per
    call (dynamic quantization) would make them."""

    def errors(self, windows: np.ndarray) -> np.ndarray:
        out = super().errors(windows)
        return (out * (1 + 0.01 * np.abs(windows).max())).astype(np.float32)


@pytest.mark.parametrize("path", [STUDENT, TEACHER], ids=["student", "teacher"])
@pytest.mark.parametrize("refresh", [0.0, 100.0])
def test_batches_give_the_scores_of_one_row_at_a_time(path: Path, refresh: float) -> None:
    values, _ = series(3000, seed=7, faults=[(1200, 1500), (2200, 2300)])
    one = CountingModel(path)
    batched = CountingModel(path)
    s1, a1 = evaluate.scored(one, values, batch=1, refresh=refresh)
    sb, ab = evaluate.scored(batched, values, refresh=refresh)
    assert np.array_equal(s1, sb) and np.array_equal(a1, ab)
    assert a1.any() and not a1.all()
    calibration = 1  # one call for the calibration windows
    assert one.calls == calibration + len(values) - 400
    probe = evaluate.PROBE
    per_batch = evaluate.BATCH if refresh == 0 else 64
    assert batched.calls == calibration + probe + -(-(len(values) - 400) // per_batch)


def test_a_model_whose_errors_depend_on_the_call_is_called_per_row() -> None:
    values, _ = series(1500, seed=8, faults=FAULTS)
    reference = evaluate.scored(PerCallScale(STUDENT), values, batch=1)
    model = PerCallScale(STUDENT)
    got = evaluate.scored(model, values)
    assert np.array_equal(got[0], reference[0]) and np.array_equal(got[1], reference[1])
    assert np.array_equal(evaluate.alarm_states(PerCallScale(STUDENT), values), reference[1])


def test_long_runs_say_how_far_they_are_and_time_per_row(
    reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate, "PROGRESS_ROWS", 100)
    notes: list[str] = []
    files = [data.read_series(reference, labelled=True)] * 2
    figures = evaluate.evaluate_model(OnnxScorer(STUDENT), files, note=notes.append).figures(1)
    assert [n.split(" in ")[0] for n in notes] == [
        "student 1/2 a.csv: 900 rows",
        "student 2/2 a.csv: 900 rows",
    ]
    assert figures["us_per_row"] == pytest.approx(figures["us_per_sample"] * 4, rel=0.01)
