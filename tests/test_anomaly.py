"""The anomaly model: training finds injected faults, the shipped models load offline, and
``gateway anomaly evaluate`` refuses files it cannot score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from anomaly_data import series, write_csv

from gateway.anomaly.core import calibrate, score_series
from gateway.anomaly.model import STUDENT, TEACHER, ModelError, OnnxScorer
from gateway.cli import main
from models.anomaly.evaluate import evaluate_model, hotelling, load
from models.anomaly.train import train

FAULTS = [(550, 700)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("anomaly")
    for i in range(2):  # clean runs, unlabelled, like SKAB's anomaly-free.csv
        write_csv(root / "train" / f"free{i}.csv", *series(1500, seed=i)[:1], None)
    for i in range(3):
        write_csv(root / "eval" / f"{i}.csv", *series(900, seed=10 + i, faults=FAULTS))
    return root / "train", root / "eval"


@pytest.fixture(scope="module")
def trained(folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    train(
        folders[0],
        out,
        teacher_steps=250,
        student_steps=200,
        teacher_widths=(8, 16, 16),
        student_widths=(4, 8, 8),
    )
    return out


def test_training_finds_the_injected_faults(folders: tuple[Path, Path], trained: Path) -> None:
    data = load(folders[1]).series
    teacher = OnnxScorer(trained / "teacher.onnx")
    student = OnnxScorer(trained / "student.onnx")
    assert student.size < teacher.size
    for model in (teacher, student):
        tally = evaluate_model(model, data)
        figures = tally.figures(model.size)
        assert figures["f1"] >= 0.8, figures
        assert figures["far"] <= 0.15, figures  # the alarm outlasts a fault by ~20 samples
        assert min(tally.per_file.values()) >= 0.6, tally.per_file
    # The fault is found where it is: scores inside it are far above those around it.
    values, label = series(900, seed=99, faults=FAULTS)
    cal = calibrate(student, values[:400])
    scores = score_series(student, cal, values, 400)
    inside = scores[label[400:] == 1]
    outside = scores[label[400:] == 0]
    assert np.median(inside) > 3 * np.median(outside)
    assert (inside > cal.threshold).mean() > 0.8


def test_baseline_is_computed_on_the_same_files(folders: tuple[Path, Path]) -> None:
    figures = hotelling(load(folders[1]).series).figures(None)
    assert 0.0 < figures["f1"] <= 1.0
    assert set(figures) == {"f1", "far", "mar", "us_per_sample", "us_per_row"}


def test_shipped_models_load_offline_and_react_to_a_level_shift() -> None:
    teacher, student = OnnxScorer(TEACHER), OnnxScorer(STUDENT)
    assert student.window == teacher.window == 32
    assert student.size <= 200_000
    assert student.size * 10 <= teacher.size
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, (64, 1, 32)).astype(np.float32)
    shifted = normal + np.float32(5.0)
    for model in (teacher, student):
        e_normal, e_shifted = model.errors(normal), model.errors(shifted)
        assert e_normal.shape == (64,) and np.isfinite(e_normal).all()
        assert np.median(e_shifted) > 3 * np.median(e_normal)


def test_a_missing_or_bad_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        OnnxScorer(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="a directory, not a model file"):
        OnnxScorer(tmp_path)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxScorer(tmp_path / "bad.onnx")


def test_cli_train_then_evaluate(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    args = ["anomaly", "train", "--data", str(folders[0]), "--out", str(out)]
    assert main([*args, "--teacher-steps", "30", "--student-steps", "30"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["student_bytes"] < trained["teacher_bytes"]
    assert main(["anomaly", "evaluate", "--data", str(folders[1]), "--models", str(out)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("teacher", "student", "hotelling_t2"):
        assert {"f1", "far", "mar", "us_per_sample"} <= set(last[name])
    assert last["student"]["size_bytes"] == (out / "student.onnx").stat().st_size
    assert last["teacher"]["size_bytes"] == (out / "teacher.onnx").stat().st_size


def _evaluate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["anomaly", "evaluate", "--data", str(path)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_evaluate_rejects_files_without_the_required_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values, _ = series(600, seed=1)
    bad = write_csv(tmp_path / "nolabels" / "x.csv", values, None)
    code, err = _evaluate(bad.parent, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "x.csv: missing column anomaly" in err

    text = "time;a;b\n1;2;3\n"
    (tmp_path / "notime").mkdir()
    (tmp_path / "notime" / "y.csv").write_text(text)
    code, err = _evaluate(tmp_path / "notime", capsys)
    assert code == 2 and "y.csv: missing column datetime" in err


def test_evaluate_rejects_unreadable_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _evaluate(tmp_path / "missing", capsys)
    assert code == 2 and "no such file or folder" in err

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "z.csv").write_bytes(b"datetime;a;anomaly;changepoint\n\xff\xfe;1;0;0\n")
    code, err = _evaluate(tmp_path / "bin", capsys)
    assert code == 2 and "not UTF-8" in err

    values, label = series(600, seed=2)
    path = write_csv(tmp_path / "text" / "w.csv", values, label)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(";")[1], "oops", 1)
    path.write_text("\n".join(lines))
    code, err = _evaluate(path.parent, capsys)
    assert code == 2 and "line 6" in err and len(err.splitlines()) == 1

    short = write_csv(tmp_path / "short" / "s.csv", values[:300], label[:300])
    code, err = _evaluate(short.parent, capsys)
    assert code == 2 and "needs more than 400" in err

    (tmp_path / "empty").mkdir()
    code, err = _evaluate(tmp_path / "empty", capsys)
    assert code == 2 and "no .csv files" in err


def _one_sensor(path: Path, rows: int = 1200, labels: list[str] | None = None) -> Path:
    """A SKAB-style file of a device with one sensor: ``datetime;S1;anomaly;changepoint``."""
    rng = np.random.default_rng(5)
    lines = ["datetime;S1;anomaly;changepoint"]
    for i in range(rows):
        fault = 800 <= i < 900
        label = labels[i] if labels else str(int(fault))
        lines.append(f"2024-01-01 00:{i // 60:02d}:{i % 60:02d};{rng.normal(5 * fault, 1):.5f}")
        lines[-1] += f";{label};0"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's refusal of an option value: exit 2 and its one-line reason."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_evaluate_scores_a_device_with_one_sensor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _one_sensor(tmp_path / "one" / "x.csv")
    assert main(["anomaly", "evaluate", "--data", str(path.parent)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("1 file, 1200 rows")
    report = json.loads(out[-1])
    for name in ("teacher", "student", "hotelling_t2"):
        assert report[name]["f1"] > 0.5, report  # the shift of 5 spreads is found


def test_evaluate_names_the_line_and_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "h.csv").write_text("datetime;S1;anomaly;changepoint\n")
    code, err = _evaluate(tmp_path / "head", capsys)
    assert code == 2 and "h.csv: no data rows" in err

    labels = ["0"] * 1200
    labels[900] = "abc"  # line 902: the header is line 1
    code, err = _evaluate(_one_sensor(tmp_path / "text" / "t.csv", labels=labels), capsys)
    assert code == 2 and "t.csv: line 902: anomaly must be 0 or 1, got 'abc'" in err
    for bad in ("2", "-1", "300"):
        labels[900] = bad
        code, err = _evaluate(_one_sensor(tmp_path / bad / "b.csv", labels=labels), capsys)
        assert code == 2 and f"line 902: anomaly must be 0 or 1, got '{bad}'" in err
        assert len(err.splitlines()) == 1


def test_missing_readings_keep_the_last_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.anomaly.data import read_series

    values, label = series(600, seed=4)
    path = write_csv(tmp_path / "gaps" / "g.csv", values, label)
    lines = path.read_text().splitlines()

    def blank(line: int, col: int, text: str) -> None:
        cells = lines[line].split(";")
        cells[col] = text
        lines[line] = ";".join(cells)

    blank(1, 2, "")  # the first reading of Pressure: takes the first one present
    for line in (11, 12):
        blank(line, 1, "")  # Flow missing on two rows
    blank(13, 3, "NaN")
    path.write_text("\n".join(lines) + "\n")
    s = read_series(path, labelled=True)
    assert s.held == 4 and np.isfinite(s.values).all()
    assert s.values[0, 1] == pytest.approx(values[1, 1], abs=1e-4)
    assert s.values[10, 0] == s.values[11, 0] == pytest.approx(values[9, 0], abs=1e-4)
    assert s.values[12, 2] == pytest.approx(values[11, 2], abs=1e-4)
    assert main(["anomaly", "evaluate", "--data", str(path.parent)]) == 0
    assert "4 missing readings held at the last value" in capsys.readouterr().out

    for line in range(1, len(lines)):
        blank(line, 4, "")
    path.write_text("\n".join(lines) + "\n")
    code, err = _evaluate(path.parent, capsys)
    assert code == 2 and "g.csv: column 'Current' has no readings" in err
    blank(20, 4, "inf")
    path.write_text("\n".join(lines) + "\n")
    code, err = _evaluate(path.parent, capsys)
    assert code == 2 and "line 21: sensor values must be finite numbers" in err


def test_evaluate_reads_a_file_with_a_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _one_sensor(tmp_path / "bom" / "x.csv")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as spreadsheets export UTF-8
    assert main(["anomaly", "evaluate", "--data", str(path.parent)]) == 0
    assert "hotelling_t2" in capsys.readouterr().out


def test_evaluate_says_a_model_path_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _one_sensor(tmp_path / "data" / "x.csv").parent
    models = tmp_path / "models"
    (models / "teacher.onnx").mkdir(parents=True)
    (models / "student.onnx").write_bytes(STUDENT.read_bytes())
    args = ["anomaly", "evaluate", "--data", str(data), "--models"]
    assert main([*args, str(models)]) == 2
    assert "teacher.onnx: a directory, not a model file" in capsys.readouterr().err
    assert main([*args, str(models / "student.onnx")]) == 2
    assert "student.onnx: not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_option_values_are_checked_before_any_work(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = ["anomaly", "train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]
    for option in ("--teacher-steps", "--student-steps"):
        assert "must be a positive integer" in _rejected([*train, option, value], capsys)
    evaluate = ["anomaly", "evaluate", "--data", str(tmp_path), "--refresh", value]
    if value == "0":  # refresh: 0 is off
        assert main(evaluate) == 2  # ... and the empty folder is what is wrong
        assert "no .csv files" in capsys.readouterr().err
    else:
        assert "--refresh: must be a finite number of 0 or more" in _rejected(evaluate, capsys)
    assert not (tmp_path / "m").exists()


def test_train_refuses_an_output_it_cannot_write_and_a_short_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _one_sensor(tmp_path / "data" / "x.csv").parent
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["anomaly", "train", "--data", str(data), "--teacher-steps", "1", "--student-steps"]
    for out, said in (
        (blocker, f"error: cannot write into {blocker}: it is a file, not a folder"),
        (blocker / "sub", f"error: cannot create the output folder {blocker / 'sub'}: "),
    ):
        assert main([*args, "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(said), err
        assert len(err.splitlines()) == 1  # said before training, no progress bar

    _one_sensor(tmp_path / "short" / "s.csv", rows=5)
    args[3] = str(tmp_path / "short")
    assert main([*args, "1", "--out", str(tmp_path / "m")]) == 2
    assert "s.csv: 5 rows; training needs at least 32" in capsys.readouterr().err
