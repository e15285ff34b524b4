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
from models.anomaly.evaluate import evaluate_model, hotelling, load_labelled
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
    data = load_labelled(folders[1])
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
    figures = hotelling(load_labelled(folders[1])).figures(None)
    assert 0.0 < figures["f1"] <= 1.0
    assert set(figures) == {"f1", "far", "mar", "us_per_sample"}


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
    assert "x.csv: missing columns anomaly, changepoint" in err

    text = "time;a;b\n1;2;3\n"
    (tmp_path / "notime").mkdir()
    (tmp_path / "notime" / "y.csv").write_text(text)
    code, err = _evaluate(tmp_path / "notime", capsys)
    assert code == 2 and "missing columns datetime, anomaly, changepoint" in err


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
