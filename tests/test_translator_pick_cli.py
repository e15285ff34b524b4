"""gateway translator pick: a capped --count is said so; a name listed twice is picked once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.translator import pick as picking


def _points(path: Path, names: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name"])
        w.writerows([n] for n in names)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _names(n: int) -> list[str]:
    from models.translator.sites import site

    out = list(dict.fromkeys(p.name for p, _ in site(311, points=4 * n, classes=12)))
    assert len(out) >= n
    return out[:n]


def test_pick_says_when_the_candidate_sample_caps_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As --count 4050 on a 4,100-point list (4,000 candidates), at a size a test can afford.
    monkeypatch.setattr(picking, "CANDIDATES", 10)
    src = _points(tmp_path / "in.csv", _names(15))
    out = tmp_path / "label.csv"
    assert main(["translator", "pick", str(src), "--count", "12", "--out", str(out)]) == 0
    assert len(_rows(out)) == 10
    err = capsys.readouterr().err.splitlines()
    capped = [line for line in err if "capped" in line]
    assert capped == [
        f"{out}: --count 12 capped at 10: a list of more than 10 points to label is picked "
        "from a seeded sample of 10 of them"
    ]
    assert any(line.startswith(f"{out}: 10 of 15 points to label") for line in err)
    # Fewer points than --count is no cap: nothing more is said.
    assert main(["translator", "pick", str(src), "--count", "9", "--out", str(out)]) == 0
    assert "capped" not in capsys.readouterr().err


def test_pick_picks_a_name_listed_twice_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _names(6)
    listed = [*names, names[0], names[3], names[0]]
    src = _points(tmp_path / "in.csv", listed)
    out = tmp_path / "label.csv"
    assert (
        main(["translator", "pick", str(src), "--count", str(len(listed)), "--out", str(out)]) == 0
    )
    picked = [r["name"] for r in _rows(out)]
    assert sorted(picked) == sorted(names)  # every distinct name, each once
    err = capsys.readouterr().err
    assert f"6 of {len(listed)} points to label" in err and "capped" not in err


def test_first_of_each() -> None:
    assert picking.first_of_each(["a", "b", "a", "c", "b"]) == [0, 1, 3]
    assert picking.first_of_each([]) == []
