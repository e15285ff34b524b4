"""Arguments every command checks alike (gateway.cliargs): an empty path, an output folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

# Each command with an empty path where a file or folder goes (an unset shell variable): before,
# some read the current folder (anomaly evaluate, optimizer evaluate) or trained without the
# folder asked for (optimizer train --fcc '').
EMPTY = [
    (["run", ""], "file"),
    (["validate", ""], "file"),
    (["status", ""], "file"),
    (["classify", ""], "IN.csv"),
    (["classify", "x.csv", "--examples", ""], "--examples"),
    (["classify", "x.csv", "--out", " "], "--out"),
    (["suggest", "--source", "", "--target", "t.csv", "--out", "b.yaml"], "--source"),
    (["translator", "evaluate", "--data", ""], "--data"),
    (["translator", "pick", "x.csv", "--model", ""], "--model"),
    (["anomaly", "train", "--data", ""], "--data"),
    (["anomaly", "evaluate", "--data", "d", "--models", ""], "--models"),
    (["optimizer", "evaluate", "--traces", ""], "--traces"),
    (["optimizer", "train", "--fcc", ""], "--fcc"),
    (["optimizer", "traces", "--out", ""], "--out"),
    (["shadow", "get", "plc", "--config", ""], "--config"),
]


@pytest.mark.parametrize(("argv", "argument"), EMPTY, ids=[" ".join(a[:2]) for a, _ in EMPTY])
def test_an_empty_path_is_refused_before_any_work(
    argv: list[str], argument: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argument}: an empty path" in err, err


def test_an_output_folder_that_is_a_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "models.csv"
    taken.write_text("x\n")
    code = main(["anomaly", "train", "--data", str(tmp_path), "--out", str(taken)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot write into {taken}: it is a file, not a folder" in err, err
    assert taken.read_text() == "x\n"
