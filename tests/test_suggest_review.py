"""gateway suggest: a high attention weight alone is not a confident mapping.

Two vague class distributions (made-up codes read as "some Sensor") overlap as much as two sure
ones, so a mapping is active only when both sides' top classes agree (the same class, or one a
Brick ancestor of the other short of a bare kind of point) and neither side is unsure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.config import ConfigError, load_config_text
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
    assert lines[-1] == "# no confident mapping: the map is empty until you accept REVIEW lines"


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
    return [line for line in lines if not line.startswith("# no confident mapping")]


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


# -- A REVIEW line accepted as the file says (`# REVIEW ` deleted) keeps the file a config -----


def _config(bridge: str, sources: list[str]) -> str:
    """The bridge as the user pastes it after review: devices named, approved."""
    points = ", ".join(f"{{name: {json.dumps(n)}, address: {k}}}" for k, n in enumerate(sources))
    bridge = bridge.replace("approved: false", "approved: true")
    bridge = bridge.replace("from: SOURCE_DEVICE", "from: plc")
    bridge = bridge.replace("    to: TARGET_ENDPOINT", "    to: broker\n    topic: x/{point}")
    return (
        f"devices:\n  plc: {{protocol: modbus, host: h, points: [{points}]}}\n"
        "endpoints:\n  broker: {protocol: mqtt, host: h}\n" + bridge
    )


CASES = [
    (["AHU1_SAT", "AHU1_RAT"], ["AHU-01 Supply Air Temp", "AHU-01 Return Air Temp"]),
    (["XQZ_77", "foo", "P1", "AHU1_DSP"], ["ABC_12", "bar", "Q9"]),  # none confident
    (["AHU1_SAT", "XQZ_77", "foo", "P1", "AHU1_DSP"], ["AHU-01 Supply Air Temp", "ABC_12"]),
]


def test_any_review_lines_accepted_leave_a_config_validate_reads(tmp_path: Path) -> None:
    """All confident, none, some: with none, all, or any one of the REVIEW lines accepted the
    file stays YAML; a source with no target is refused with the reason; the others load as
    the lines say."""
    for sources, targets in CASES:
        _check_every_acceptance(tmp_path, sources, targets)


def _check_every_acceptance(tmp_path: Path, sources: list[str], targets: list[str]) -> None:
    text = "\n".join(_suggest(tmp_path, sources, targets)) + "\n"
    review = [line for line in text.splitlines() if line.startswith("        # REVIEW ")]
    subsets = [[], review, *([line] for line in review)]
    for chosen in subsets:
        edited = text
        for line in chosen:
            edited = edited.replace(line, line.replace("# REVIEW ", "", 1))
        assert isinstance(yaml.safe_load(edited), dict)
        config = _config(edited, sources)
        active = yaml.safe_load(edited)["bridges"][0]["translate"]["map"] or {}
        if "no matching target" in active.values():
            with pytest.raises(ConfigError, match="placeholder of a suggested bridge") as info:
                load_config_text(config, "c.yaml")
            assert info.value.problems[0].dotted == "bridges[0].translate.map"
        elif not active:
            with pytest.raises(ConfigError, match=r"translate\.map: found an empty value"):
                load_config_text(config, "c.yaml")
        else:
            translate = load_config_text(config, "c.yaml").bridges[0].translate
            assert translate is not None and translate.map == active


# -- What the names share beyond the class: equipment ids, the same name -------------------

AUDIT_SOURCES = [
    "fcu 3 discharge air temp",
    "AHU2_SF_STS",
    "AHU3_SAT",
    "AHU2_SAT",
    "AHU1_RAT",
    "fcu 4 discharge air temp",
    "AHU1_SF_STS",
    "AHU1_SAT",
    "AHU2_RAT",
    "AHU1_MAT",
]
AUDIT_TARGETS = [
    "ahu1/supply_air_temperature",
    "ahu1/return_air_temperature",
    "ahu1/mixed_air_temperature",
    "ahu1/supply_fan_status",
]


def test_a_target_is_linked_to_the_source_of_its_own_equipment(tmp_path: Path) -> None:
    lines = _map_lines(_suggest(tmp_path, AUDIT_SOURCES, AUDIT_TARGETS))
    active = {line.split("  # ")[0] for line in lines if not line.startswith("#")}
    assert active == {
        '"AHU1_SAT": "ahu1/supply_air_temperature"',
        '"AHU1_RAT": "ahu1/return_air_temperature"',
        '"AHU1_MAT": "ahu1/mixed_air_temperature"',
        '"AHU1_SF_STS": "ahu1/supply_fan_status"',
    }


def test_several_sources_of_a_class_for_a_target_naming_no_equipment_are_review(
    tmp_path: Path,
) -> None:
    lines = _map_lines(_suggest(tmp_path, ["AHU2_SAT", "AHU1_SAT", "AHU3_SAT"], ["SAT"]))
    (made,) = [line for line in lines if '"SAT"' in line]
    assert made.startswith("# REVIEW ")
    assert made.endswith("; 3 sources of this class; none names the target's equipment")


def test_a_source_of_other_equipment_is_review(tmp_path: Path) -> None:
    lines = _map_lines(_suggest(tmp_path, ["AHU2_SF_STS"], ["ahu1/supply_fan_status"]))
    assert lines[0].startswith('# REVIEW "AHU2_SF_STS": "ahu1/supply_fan_status"  # ')
    assert lines[0].endswith("other equipment (ahu2 / ahu1)")


def test_a_list_matched_against_itself_pairs_every_name_with_itself_confidently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"{e}{n}_{p}" for e in ("AHU", "VAV") for n in (1, 2, 3) for p in ("SAT", "DPR")]
    names += ["XQZ_77", "P1", "OAT"]
    lines = _map_lines(_suggest(tmp_path, names, names))
    assert f"{len(names)} of {len(names)} mappings confident" in capsys.readouterr().out
    pairs = {line.split("  # ")[0] for line in lines}
    assert pairs == {f'"{n}": "{n}"' for n in names}
    # and spelled another way on the other side: separators, case, leading zeros
    other = [n.lower().replace("1_", "-01 ").replace("_", " ") for n in names]
    lines = _map_lines(_suggest(tmp_path, names, other))
    assert f"{len(names)} of {len(names)} mappings confident" in capsys.readouterr().out
    pairs = {line.split("  # ")[0] for line in lines}
    assert pairs == {f'"{n}": "{o}"' for n, o in zip(names, other, strict=True)}
