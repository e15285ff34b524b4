"""gateway suggest: a high attention weight alone is not a confident mapping.

Two vague class distributions (made-up codes read as "some Sensor") overlap as much as two sure
ones, so a mapping is active only when both sides' top classes agree (the same class, or one a
Brick ancestor of the other short of a bare kind of point) and neither side is unsure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.translator.suggest import Match, bridge_yaml


def _list(path: Path, *names: str) -> Path:
    path.write_text("name\n" + "".join(f"{n}\n" for n in names), encoding="utf-8")
    return path


def _suggest(tmp_path: Path, sources: list[str], targets: list[str]) -> list[str]:
    src = _list(tmp_path / "s.csv", *sources)
    tgt = _list(tmp_path / "t.csv", *targets)
    out = tmp_path / "b.yaml"
    assert main(["suggest", "--source", str(src), "--target", str(tgt), "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8").splitlines()


def _map_lines(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines[lines.index("      map:") + 1 :]]


def test_the_audits_meaningless_names_are_review_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _map_lines(_suggest(tmp_path, ["XQZ_77", "foo", "P1"], ["ABC_12", "bar", "Q9"]))
    assert "0 of 3 mappings confident, 3 marked REVIEW" in capsys.readouterr().out
    # Each high-weight pair is kept for review, with the reason after the classes.
    review = {line.split(":")[0].removeprefix("# REVIEW "): line for line in lines}
    assert review['"XQZ_77"'].startswith('# REVIEW "XQZ_77": "ABC_12"  # ')
    assert "classes differ" in review['"XQZ_77"']
    assert review['"P1"'].startswith('# REVIEW "P1": "bar"  # ')
    assert "classes agree only as Sensor" in review['"P1"']
    assert lines[-1] == "{}  # no confident mapping; see the REVIEW lines"


def test_a_clear_same_class_pair_stays_confident_beside_nonsense(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _map_lines(
        _suggest(
            tmp_path,
            ["AHU1_SAT", "XQZ_77", "foo", "P1"],
            ["AHU-01 Supply Air Temp", "ABC_12", "bar", "Q9"],
        )
    )
    assert "1 of 4 mappings confident, 3 marked REVIEW" in capsys.readouterr().out
    active = [line for line in lines if not line.startswith("#")]
    assert len(active) == 1
    assert active[0].startswith('"AHU1_SAT": "AHU-01 Supply Air Temp"  # 1.00 ')
    assert active[0].endswith("Supply_Air_Temperature_Sensor")


def _bridge(*matches: Match) -> list[str]:
    text = bridge_yaml(
        matches, source="s", target="t", from_device="a", to_device="b", threshold=0.5
    )
    lines = _map_lines(text.splitlines())
    return [line for line in lines if not line.startswith("{}  # no confident mapping")]


@pytest.mark.parametrize(
    "source_class, target_class, probs, reason",
    [
        ("Supply_Air_Temperature_Sensor", "Supply_Air_Temperature_Sensor", (0.9, 0.8), None),
        # an ancestor short of a bare kind: still the same quantity
        ("Supply_Air_Temperature_Sensor", "Air_Temperature_Sensor", (0.9, 0.8), None),
        ("Room_Air_Temperature_Sensor", "Zone_Air_Temperature_Sensor", (0.9, 0.8), None),
        ("Sensor", "Command", (0.9, 0.8), "classes differ"),
        ("Active_Power_Sensor", "Sensor", (0.9, 0.8), "classes agree only as Sensor"),
        ("Sensor", "Sensor", (0.9, 0.8), "classes agree only as Sensor"),
        ("Temperature_Sensor", "Temperature_Sensor", (0.2, 0.25), "unsure of both"),
        ("Temperature_Sensor", "Temperature_Sensor", (0.2, 0.9), "unsure of the source"),
        ("Temperature_Sensor", "Temperature_Sensor", (0.9, 0.29), "unsure of the target"),
        ("Sensor", "Command", (0.1, 0.1), "classes differ, unsure of both"),
    ],
)
def test_a_high_weight_mapping_is_reviewed_for_a_reason(
    source_class: str, target_class: str, probs: tuple[float, float], reason: str | None
) -> None:
    m = Match("A", "B", 0.99, source_class, target_class, *probs)
    (line,) = _bridge(m)
    if reason is None:
        assert line.startswith('"A": "B"  # 0.99 ') and not line.startswith("#")
    else:
        assert line.startswith('# REVIEW "A": "B"  # 0.99 ') and line.endswith(f"; {reason}")


def test_a_low_weight_mapping_stays_review_without_a_reason() -> None:
    m = Match("A", "B", 0.3, "Sensor", "Command", 0.1, 0.1)
    assert _bridge(m) == ['# REVIEW "A": "B"  # 0.30 Sensor -> Command']
