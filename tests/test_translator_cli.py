"""gateway classify / suggest / translator evaluate, the translate transform and its bridge."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from gateway.cli import main
from gateway.config import load_config_text
from gateway.config.translate import TranslateConfig
from gateway.translator.transform import Translate
from gateway.types import Message, MessageKind, Sample
from models.translator.corpus import Renderer


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("name\nTempérature\n".encode("latin-1"))
    return {
        "empty": _write(tmp_path / "empty.csv", ""),
        "header only": _write(tmp_path / "header.csv", "name,unit\n"),
        "no name column": _write(tmp_path / "cols.csv", "point,unit\nAHU1_SAT,degF\n"),
        "not utf-8": bad,
        "missing": tmp_path / "nope.csv",
        "ragged row": _write(tmp_path / "ragged.csv", "name,unit\nAHU1_SAT,degF\nA,1,2,3\n"),
        "name twice": _write(tmp_path / "twice.csv", "name,Name\nAHU1_SAT,x\n"),
        "unclosed quote": _write(tmp_path / "quote.csv", 'name\nAHU1_SAT\n"VAV_2\nVAV_3\n'),
    }


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "empty file"),
        ("header only", "no rows"),
        ("no name column", "no column name"),
        ("not utf-8", "not UTF-8"),
        ("missing", "no such file"),
        ("ragged row", "line 3: 4 fields, the header has 2"),
        ("name twice", "column name appears twice"),
        ("unclosed quote", "line 3: the name runs over several lines"),
    ],
)
def test_classify_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    path = _bad_inputs(tmp_path)[case]
    assert main(["classify", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("case", ["empty", "no name column", "not utf-8", "missing"])
def test_suggest_bad_input_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    good = _write(tmp_path / "good.csv", "name\nAHU1_SAT\n")
    bad = _bad_inputs(tmp_path)[case]
    out = tmp_path / "b.yaml"
    for src, tgt in ((bad, good), (good, bad)):
        assert main(["suggest", "--source", str(src), "--target", str(tgt), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_classify_ignores_empty_trailing_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "in.csv", "name,unit,\nAHU1_SAT,degF,\nVAV_2_14_ZNT,,,\n")
    assert main(["classify", str(src)]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["name"] for r in rows] == ["AHU1_SAT", "VAV_2_14_ZNT"]


def _unwritable(tmp_path: Path, case: str) -> Path:
    return {
        "no folder": tmp_path / "nodir" / "x.out",
        "a directory": tmp_path,
        "under /proc": Path("/proc/x.out"),
    }[case]


def _writing_commands(tmp_path: Path) -> dict[str, list[str]]:
    good = _write(tmp_path / "good.csv", "name\nAHU1_SAT\nVAV_2_14_ZNT\n")
    return {
        "classify": ["classify", str(good)],
        "pick": ["translator", "pick", str(good), "--count", "1"],
        "suggest": ["suggest", "--source", str(good), "--target", str(good)],
    }


@pytest.mark.parametrize("command", ["classify", "pick", "suggest"])
@pytest.mark.parametrize("case", ["no folder", "a directory", "under /proc"])
def test_an_unwritable_out_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, case: str
) -> None:
    out = _unwritable(tmp_path, case)
    assert main([*_writing_commands(tmp_path)[command], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}: ") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["classify", "suggest"])
def test_out_on_a_full_disk_leaves_no_partial_file(
    tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    import contextlib

    args = _writing_commands(tmp_path)[command]
    with (small_disk / "filler").open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    out = small_disk / "out"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {out}: No space left on device\n"
    assert not out.exists()


def test_counts_of_one_are_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = _write(tmp_path / "one.csv", "name\nAHU1_SAT\n")
    target = _write(tmp_path / "t.csv", "name\nDischarge Air Temp\n")
    labeled = _write(
        tmp_path / "lab.csv", "name,brick_class\nAHU1_SAT,Supply_Air_Temperature_Sensor\n"
    )
    out = tmp_path / "out.csv"
    assert main(["classify", str(one), "--out", str(out)]) == 0
    assert capsys.readouterr().err == f"{out}: 1 point classified\n"
    assert main(["translator", "pick", str(one), "--count", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().err.startswith(f"{out}: 1 of 1 point to label;")
    bridge = tmp_path / "bridge.yaml"
    args = ["suggest", "--source", str(one), "--target", str(target), "--out", str(bridge)]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"{bridge}: 1 of 1 mapping confident, 0 marked")
    args = ["translator", "evaluate", "--data", str(labeled), "--shots", "0", "--seeds", "1"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"{labeled}: 1 labeled point, 1 class\n")


def test_classify_writes_ranked_csv(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "in.csv",
        "id,name,description,unit\n1,AHU1_SAT,,degF\n2,RTU3.RAT,return air temp,\n",
    )
    out = tmp_path / "out.csv"
    assert main(["classify", str(src), "--top", "4", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["name"] for r in rows] == ["AHU1_SAT", "RTU3.RAT"]
    assert list(rows[0]) == ["name", "class", "score", "alternatives"]
    assert rows[0]["class"] == "Supply_Air_Temperature_Sensor"
    alts = rows[0]["alternatives"].split(";")
    assert len(alts) == 3
    scores = [float(rows[0]["score"])] + [float(a.rsplit(":", 1)[1]) for a in alts]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_classify_site_prior_reads_the_whole_list_unless_switched_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = _write(tmp_path / "short.csv", "name\nVAV0_ZNT\nRTU3.RAT\n")
    zones = "".join(f"VAV{i}_ZNT\n" for i in range(30))
    long = _write(tmp_path / "long.csv", "name\n" + zones)

    def first(path: Path, *flags: str) -> tuple[str, float]:
        assert main(["classify", str(path), *flags]) == 0
        rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
        assert rows[0]["name"] == "VAV0_ZNT"
        return rows[0]["class"], float(rows[0]["score"])

    alone_short, alone_long = first(short, "--no-site-prior"), first(long, "--no-site-prior")
    # each point on its own: the rest of the file does not matter (up to the int8 model's
    # per-batch activation scale, a few thousandths)
    assert alone_short[0] == alone_long[0] == "Zone_Air_Temperature_Sensor"
    assert abs(alone_short[1] - alone_long[1]) < 0.01
    # one site's list of thirty zone temperatures makes each of them surer
    listed = first(long)
    assert listed[0] == "Zone_Air_Temperature_Sensor" and listed[1] > alone_long[1] + 0.05


def test_classify_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    import subprocess
    import sys

    big = _write(tmp_path / "big.csv", "name\n" + "".join(f"AHU{i}_SAT\n" for i in range(3000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "classify", str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"name,class")
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_classify_with_examples_follows_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "in.csv", "name\nQX9_ZQW7\n")
    ex = _write(
        tmp_path / "ex.csv",
        "name,brick_class\nQX1_ZQW7,Hot_Water_Differential_Pressure_Sensor\n"
        "QX2_ZQW7,Hot_Water_Differential_Pressure_Sensor\n",
    )
    assert main(["classify", str(src), "--examples", str(ex)]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert rows[0]["class"] == "Hot_Water_Differential_Pressure_Sensor"
    bad = _write(tmp_path / "bad.csv", "name,brick_class\nX,Nonsense_Class\n")
    assert main(["classify", str(src), "--examples", str(bad)]) == 2
    assert "no point has a Brick point class we know" in capsys.readouterr().err
    # labels in other spellings are read; a class we do not know is left out with a warning
    ex = _write(
        tmp_path / "ex2.csv",
        "name,brick_class\nQX1_ZQW7,hot water differential pressure sensor\n"
        "QX2_ZQW7,<http://brickschema.org/schema/Brick#Hot_Water_Differential_Pressure_Sensor>\n"
        "QX3_ZQW7,Lighting_Correlated_Color_Temperature_Sensor\n",
    )
    assert main(["classify", str(src), "--examples", str(ex)]) == 0
    out, err = capsys.readouterr()
    assert list(csv.DictReader(out.splitlines()))[0]["class"] == (
        "Hot_Water_Differential_Pressure_Sensor"
    )
    assert err == (
        f"{ex}: left out 1 point whose brick_class is not a Brick point class we know: "
        "'Lighting_Correlated_Color_Temperature_Sensor'\n"
    )


def test_evaluate_prints_model_and_baseline_per_shot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = Renderer(seed=77)
    names = ["Supply_Air_Temperature_Sensor", "Run_Status", "Zone_Air_Temperature_Sensor"]
    lines = ["name,brick_class"]
    for c in names:
        lines += [f"{r.sample(r.index[c]).name.replace(',', ' ')},{c}" for _ in range(12)]
    data = _write(tmp_path / "lab.csv", "\n".join(lines) + "\n")
    assert (
        main(["translator", "evaluate", "--data", str(data), "--shots", "0,5", "--seeds", "2"]) == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["n"] == 36 and set(result["shots"]) == {"0", "5"}
    assert result["site_prior"] is True
    for k in ("0", "5"):
        for who in ("model", "baseline"):
            m = result["shots"][k][who]
            assert set(m) == {"top1", "top5", "macro_f1"}
            assert 0 <= m["top1"] <= m["top5"] <= 1
    assert result["shots"]["0"]["model"]["top1"] > result["shots"]["0"]["baseline"]["top1"]
    args = ["translator", "evaluate", "--data", str(data), "--shots", "0", "--no-site-prior"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["site_prior"] is False
    assert (
        main(["translator", "evaluate", "--data", str(data), "--shots", "5", "--select", "pick"])
        == 0
    )
    picked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert picked["select"] == "pick" and result["select"] == "random"
    assert main(["translator", "evaluate", "--data", str(data), "--shots", "x"]) == 2


def test_pick_writes_points_to_label_that_classify_then_learns_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.translator.sites import site

    data = site(301, points=120, classes=12)
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "unit"])
        w.writerows([p.name, "degF"] for p, _ in data)
    picked = tmp_path / "label.csv"
    assert main(["translator", "pick", str(src), "--count", "8", "--out", str(picked)]) == 0
    assert "fill in brick_class" in capsys.readouterr().err
    rows = list(csv.DictReader(picked.open(encoding="utf-8")))
    assert len(rows) == 8 and len({r["name"] for r in rows}) == 8
    assert all(r["brick_class"] == "" and r["suggestion"] and r["unit"] == "degF" for r in rows)
    # unlabeled rows are refused, not taken as the model's guess
    assert main(["classify", str(src), "--examples", str(picked)]) == 2
    assert "empty brick_class" in capsys.readouterr().err
    truth = {p.name: c for p, c in data}
    with picked.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "brick_class", "unit"])
        w.writerows([r["name"], truth[r["name"]], r["unit"]] for r in rows)

    def right() -> list[bool]:
        out = list(csv.DictReader(capsys.readouterr().out.splitlines()))
        return [r["class"] == truth[r["name"]] for r in out]

    assert main(["classify", str(src)]) == 0
    alone = right()
    assert main(["classify", str(src), "--examples", str(picked)]) == 0
    taught = right()
    assert sum(taught) > sum(alone)
    labeled = {r["name"] for r in rows}
    assert all(ok for (p, _), ok in zip(data, taught, strict=True) if p.name in labeled)
    more = tmp_path / "more.csv"
    args = ["translator", "pick", str(src), "--count", "8", "--examples", str(picked)]
    assert main([*args, "--out", str(more)]) == 0
    again = {r["name"] for r in csv.DictReader(more.open(encoding="utf-8"))}
    assert len(again) == 8 and not again & labeled  # the next picks, never a labeled one
    assert main([*args, "--out", str(picked)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["translator", "pick", str(src), "--count", "0"]) == 2
    assert main(["translator", "pick", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, command",
    [
        ("onnxruntime", "classify"),
        ("onnxruntime", "suggest"),
        ("onnxruntime", "pick"),
        ("onnxruntime", "evaluate"),
        ("rapidfuzz", "evaluate"),
    ],
)
def test_a_missing_library_is_one_line_naming_the_pip_install(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    command: str,
) -> None:
    points = str(_write(tmp_path / "p.csv", "name\nAHU1_SAT\n"))
    labeled = str(
        _write(tmp_path / "l.csv", "name,brick_class\nAHU1_SAT,Supply_Air_Temperature_Sensor\n")
    )
    argv = {
        "classify": ["classify", points],
        "suggest": [
            "suggest",
            "--source",
            points,
            "--target",
            points,
            "--out",
            str(tmp_path / "b.yaml"),
        ],
        "pick": ["translator", "pick", points],
        "evaluate": ["translator", "evaluate", "--data", labeled, "--shots", "0", "--seeds", "1"],
    }[command]
    monkeypatch.setitem(sys.modules, module, None)  # import of it fails as if not installed
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: needs {module}: pip install 'protocol-brain[ml]'\n"
    assert captured.out == ""


def _suggest(tmp_path: Path, src: str, tgt: str) -> str:
    out = tmp_path / "bridge.yaml"
    args = ["suggest", "--source", src, "--target", tgt, "--out", str(out)]
    assert main(args + ["--from", "plc", "--to", "broker"]) == 0
    return out.read_text(encoding="utf-8")


CONFIG = """
devices:
  plc:
    protocol: modbus
    host: 127.0.0.1
    port: 5020
    points:
      - {name: AHU1_SAT, address: 0, unit: degC}
      - {name: AHU1_RAT, address: 1, unit: degC}
      - {name: AHU1_SF_STS, table: coil, address: 0}
endpoints:
  broker:
    protocol: mqtt
    host: 127.0.0.1
    port: 1883
"""


def test_suggest_from_a_register_map_writes_a_bridge_validate_accepts_once_approved(
    tmp_path: Path,
) -> None:
    regmap = _write(tmp_path / "plant.yaml", CONFIG)
    target = _write(
        tmp_path / "target.csv",
        "name\nsupply_air_temperature\nreturn_air_temperature\nsupply_fan_status\n",
    )
    text = _suggest(tmp_path, f"{regmap}#plc", str(target))
    assert "approved: false" in text
    assert '"AHU1_SAT": "supply_air_temperature"' in text
    assert '"AHU1_RAT": "return_air_temperature"' in text
    config = CONFIG + text.split("\n", 8)[-1].replace(
        "  - name: translated", "  - name: t\n    topic: x/{point}"
    )
    # Not approved: the config is rejected, with the reason.
    with pytest.raises(Exception, match="not approved"):
        load_config_text(config, "c.yaml")
    approved = load_config_text(config.replace("approved: false", "approved: true"), "c.yaml")
    bridge = approved.bridges[0]
    assert bridge.translate is not None
    assert bridge.translate.map["AHU1_SAT"] == "supply_air_temperature"


def test_translate_examples_are_read_next_to_the_config_and_checked_on_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import ConfigError, load_config

    site = tmp_path / "site"
    site.mkdir()
    _write(site / "labeled.csv", "name,brick_class\nAHU1_SAT,Supply_Air_Temperature_Sensor\n")
    bridge = "bridges:\n  - {name: t, from: plc, to: broker, topic: 'x/{point}',\n"
    bridge += "     translate: {mode: auto, examples: labeled.csv}}\n"
    config = _write(site / "gw.yaml", CONFIG + bridge)
    monkeypatch.chdir(tmp_path)  # not the config's folder
    translate = load_config(config).bridges[0].translate
    assert translate is not None and translate.examples == str(site / "labeled.csv")
    # A bad examples file is a config error now, not a failure at the first new point name.
    _write(site / "labeled.csv", "name,brick_class\nAHU1_SAT,Not_A_Class\n")
    with pytest.raises(ConfigError, match="no point has a Brick point class we know"):
        load_config(config)
    (site / "labeled.csv").unlink()
    with pytest.raises(ConfigError, match=r"bridges\[0\]\.translate\.examples"):
        load_config(config)


def test_suggest_marks_unsure_mappings_for_review(tmp_path: Path) -> None:
    src = _write(tmp_path / "s.csv", "name\nAHU1_SAT\nXQZ_77\n")
    tgt = _write(tmp_path / "t.csv", "name\nDischarge Air Temp\nOccupancy Count\n")
    text = _suggest(tmp_path, str(src), str(tgt))
    assert '        "AHU1_SAT": "Discharge Air Temp"  # ' in text
    review = [ln for ln in text.splitlines() if "REVIEW" in ln and "XQZ_77" in ln]
    assert len(review) == 1 and review[0].lstrip().startswith("#")


def test_a_lone_unrelated_target_is_not_a_confident_match() -> None:
    """With one target, plain attention would give it weight 1 whatever it is; the "no match" key
    keeps an unrelated pair unconfident while a real match stays confident."""
    from gateway.translator.model import load
    from gateway.translator.suggest import attention
    from gateway.translator.tokenize import Point

    t = load()
    src = t.predict([Point("AHU1_SAT"), Point("XQZ_77")])
    w = attention(src, t.predict([Point("Discharge Air Temp")]))
    assert w[0, 0] > 0.9
    assert w[1, 0] < 0.5
    assert w[0, 0] - w[1, 0] > 0.5


def test_suggest_does_not_force_a_leftover_target_on_an_unrelated_source(tmp_path: Path) -> None:
    src = _write(tmp_path / "s.csv", "name\nAHU1_SAT\nXQZ_77\n")
    tgt = _write(tmp_path / "t.csv", "name\nDischarge Air Temp\nOccupancy Count\n")
    text = _suggest(tmp_path, str(src), str(tgt))
    assert '# REVIEW "XQZ_77": no matching target' in text
    assert "Occupancy Count" not in text


def test_suggest_from_an_mqtt_sample(tmp_path: Path) -> None:
    sample = _write(
        tmp_path / "sample.txt",
        'site/ahu1 {"sat": 13.2, "rat": 22.1, "fan": {"sts": 1}}\nsite/ahu1/oat 7.5\n',
    )
    tgt = _write(tmp_path / "t.csv", "name\nAHU1_SAT\nAHU1_RAT\nOAT\nAHU1_SF_STS\n")
    text = _suggest(tmp_path, str(sample), str(tgt))
    for key in ('"sat"', '"rat"', '"fan.sts"', '"oat"'):  # as gateway run names them
        assert key in text


def test_suggest_names_a_gateway_sample_payload_as_gateway_run_does(
    tmp_path: Path,
) -> None:
    from gateway.translator.sources import read_mqtt_sample
    from gateway.translator.tokenize import Point

    sample = {"id": "gw/cloud/812", "value": 21.5, "quality": "good", "ts": 1700000000.0}
    lines = [
        "site/ahu1/sat " + json.dumps({**sample, "unit": "degC"}),
        json.dumps({"topic": "site/ahu1/rat", "payload": {"value": 22.1, "timestamp": 1}}),
        'site/ahu2 {"temperature": 21.5, "humidity": 40}',  # telemetry: a point per field
        'site/ahu3 {"value": 1, "setpoint": 2}',  # value is one field among others
    ]
    path = _write(tmp_path / "sample.txt", "\n".join(lines) + "\n")
    # a points: keys subscription (codec.KeyDecoder): every key, ts (a time) excepted
    assert read_mqtt_sample(str(path)) == [
        Point("id"),
        Point("value"),
        Point("quality"),
        Point("unit"),
        Point("timestamp"),
        Point("temperature"),
        Point("humidity"),
        Point("setpoint"),
    ]
    tgt = _write(tmp_path / "t.csv", "name\nAHU1_SAT\nAHU1_RAT\n")
    text = _suggest(tmp_path, str(path), str(tgt))
    assert "site/" not in text.split("map:")[1] and '"ts"' not in text


def _suggest_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str], src: str) -> str:
    """The one line `suggest --source src` prints; nothing is written."""
    tgt = _write(tmp_path / "t.csv", "name\nAHU1_SAT\n")
    out = tmp_path / "bridge.yaml"
    assert main(["suggest", "--source", src, "--target", str(tgt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    named = src.partition("#")[0]  # the file, without a #device
    assert err.startswith(f"error: --source {named}") and err.count("\n") == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize(
    "text, device, message",
    [
        ("devices:\n  a:\n    points: 5\n", "", "devices.a.points must be a list of points"),
        ("points: {name: x}\n", "", "points must be a list of points"),
        ("devices:\n  1: {points: [{name: x}]}\n", "#zz", "no device 'zz' (has: 1)"),
        ("[" * 10000, "", "nested too deeply"),
        ("a: [\n", "", "invalid YAML"),
        ("- {name: x}\n", "#plc", "no devices: section"),
    ],
)
def test_suggest_a_bad_register_map_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, device: str, message: str
) -> None:
    regmap = _write(tmp_path / "map.yaml", text)
    assert message in _suggest_fails(tmp_path, capsys, f"{regmap}{device}")


def test_suggest_a_register_map_device_named_by_a_number(tmp_path: Path) -> None:
    regmap = _write(tmp_path / "map.yaml", "devices:\n  1: {points: [{name: AHU1_SAT}]}\n")
    tgt = _write(tmp_path / "t.csv", "name\nsupply_air_temperature\n")
    assert '"AHU1_SAT": "supply_air_temperature"' in _suggest(tmp_path, f"{regmap}#1", str(tgt))


@pytest.mark.parametrize(
    "url, message",
    [
        ("mqtt://127.0.0.1:1/site/#?seconds=inf", "seconds must be a positive finite number"),
        ("mqtt://127.0.0.1:1/site/#?seconds=-1", "seconds must be a positive finite number"),
        ("mqtt://127.0.0.1:1/site/#?seconds=nan", "seconds must be a positive finite number"),
        ("mqtt://127.0.0.1:1/site/#?seconds=7200", "seconds must be at most 3600"),
        ("mqtt://127.0.0.1:1/site/#?secs=5", "unknown option secs"),
        ("mqtt://127.0.0.1:99999/site", "the port must be a number from 1 to 65535"),
        ("mqtt://127.0.0.1:0/site", "the port must be a number from 1 to 65535"),
        ("mqtt://:1883/site", "the URL needs a host"),
        ("mqtt://127.0.0.1:1/a/#/b", "not a valid MQTT topic filter: '#' must be the last"),
        ("mqtt://127.0.0.1:1/a/b+", "not a valid MQTT topic filter: wildcards must fill"),
        ("opc.tcp://", "the URL needs a host (opc.tcp://host:port)"),
        ("opc.tcp://127.0.0.1:70000/", "the port must be a number from 1 to 65535"),
    ],
)
def test_suggest_a_bad_url_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    # port 1: nothing listens there, so an unchecked URL would fail differently
    assert message in _suggest_fails(tmp_path, capsys, url)


def test_suggest_a_directory_source_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    assert "is a directory" in _suggest_fails(tmp_path, capsys, str(folder))


@pytest.mark.parametrize("threshold", ["-1", "5", "nan"])
def test_suggest_threshold_is_a_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threshold: str
) -> None:
    good = str(_write(tmp_path / "good.csv", "name\nAHU1_SAT\n"))
    args = ["suggest", "--source", good, "--target", good, "--out", str(tmp_path / "b.yaml")]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--threshold", threshold])
    assert exit_.value.code == 2
    assert "--threshold: must be a number from 0 to 1" in capsys.readouterr().err


def test_suggest_writes_names_as_yaml_reads_them(tmp_path: Path) -> None:
    import yaml

    # a name with a line break (a register map's): it must not break out of its line
    sample = _write(
        tmp_path / "s.yaml", 'points:\n  - {name: sat}\n  - {name: "odd\\nname: \\"x"}\n'
    )
    tgt = _write(tmp_path / "t.csv", 'name\n"AHU1_SAT: ""main"""\n')
    out = tmp_path / "bridge.yaml"
    args = ["suggest", "--source", str(sample), "--target", str(tgt), "--out", str(out)]
    assert main([*args, "--from", "a: b", "--to", '"x']) == 0
    text = out.read_text(encoding="utf-8")
    bridge = yaml.safe_load(text)["bridges"][0]
    assert (bridge["from"], bridge["to"]) == ("a: b", '"x')
    assert bridge["translate"]["map"] == {"sat": 'AHU1_SAT: "main"'}
    assert '# REVIEW "odd\\nname: \\"x": no matching target' in text


def test_suggest_from_a_json_lines_sample(tmp_path: Path) -> None:
    lines = [
        {"topic": "site/ahu1", "payload": {"sat": 13.2, "fan": {"sts": 1}}},
        {"topic": "site/ahu1/rat", "payload": 22.1},
        {"topic": "site/ahu2", "payload": json.dumps({"oat": 7.5})},  # the published text
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + "site/ahu1/mat 15\n"
    sample = _write(tmp_path / "sample.jsonl", text)
    tgt = _write(tmp_path / "t.csv", "name\nAHU1_SAT\nAHU1_RAT\nOAT\n")
    bridge = _suggest(tmp_path, str(sample), str(tgt))
    for key in ('"sat"', '"fan.sts"', '"rat"', '"oat"', '"mat"'):  # as gateway run names them
        assert key in bridge
    assert "{" not in bridge.split("map:")[1].replace("{}", "")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"payload": 1}', 'line 2: a JSON line needs a "topic"'),
        ("{oops", "line 2: not valid JSON"),
    ],
)
def test_suggest_a_bad_json_line_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    sample = _write(tmp_path / "s.jsonl", '{"topic": "a/b"}\n' + line + "\n")
    assert message in _suggest_fails(tmp_path, capsys, str(sample))


@pytest.mark.parametrize(
    "model, message",
    [
        (Path(__file__).parents[1] / "models/anomaly/student.onnx", "not a translator model"),
        (Path(__file__).parent, "is a directory"),
    ],
)
def test_classify_refuses_a_model_that_is_not_the_translator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path, message: str
) -> None:
    good = _write(tmp_path / "good.csv", "name\nAHU1_SAT\n")
    assert main(["classify", str(good), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model}") and message in err and err.count("\n") == 1


@contextmanager
def _opcua_server(setup: Callable[[Any, int], Awaitable[None]]) -> Iterator[int]:
    """An asyncua server on a free port, set up by ``setup(server, port)``; yields the port."""
    import threading

    from asyncua import Server

    port = free_port()
    ready = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
        await setup(server, port)
        async with server:
            ready.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(20)
    try:
        yield port
    finally:
        stop.set()
        thread.join(10)


def test_suggest_browses_a_live_opcua_server(tmp_path: Path) -> None:
    async def setup(server: Any, _port: int) -> None:
        ns = await server.register_namespace("urn:test")
        ahu = await server.nodes.objects.add_object(ns, "AHU1")
        await ahu.add_variable(ns, "SupplyAirTemp", 13.0)
        await ahu.add_variable(ns, "ReturnAirTemp", 22.0)

    with _opcua_server(setup) as port:
        tgt = _write(tmp_path / "t.csv", "name\nAHU1_SAT\nAHU1_RAT\n")
        text = _suggest(tmp_path, f"opc.tcp://127.0.0.1:{port}/", str(tgt))
    assert '"SupplyAirTemp": "AHU1_SAT"' in text
    assert '"ReturnAirTemp": "AHU1_RAT"' in text


def test_suggest_from_an_opcua_server_without_a_none_endpoint_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from asyncua import ua

    from protocols.opcua.pki import ensure_certificate

    async def setup(server: Any, _port: int) -> None:
        cert, key = await ensure_certificate(tmp_path / "pki", "urn:test:secure", "localhost")
        await server.set_application_uri("urn:test:secure")
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])

    with _opcua_server(setup) as port:
        err = _suggest_fails(tmp_path, capsys, f"opc.tcp://127.0.0.1:{port}/")
    assert "needs a server endpoint with security policy None" in err
    assert "offers only secure ones" in err


def test_suggest_samples_a_live_mqtt_broker(tmp_path: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    infos = [
        pub.publish("site/ahu1", json.dumps({"SupplyAirTemp": 13.1, "FanStatus": 1}), retain=True),
        pub.publish("other/x", "1", retain=True),
    ]
    for info in infos:
        info.wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    tgt = _write(tmp_path / "t.csv", "name\nAHU1_SAT\nAHU1_SF_STS\n")
    text = _suggest(tmp_path, f"mqtt://127.0.0.1:{mosquitto.port}/site/#?seconds=1", str(tgt))
    assert '"SupplyAirTemp": "AHU1_SAT"' in text
    assert '"FanStatus"' in text and "other/x" not in text


def _fake(scores: dict[str, tuple[str, float]]):  # type: ignore[no-untyped-def]
    calls: list[list[str]] = []

    def classify(names: list[str]) -> list[list[tuple[str, float]]]:
        calls.append(names)
        return [[scores[n]] for n in names]

    return classify, calls


def test_translate_map_renames_and_drops_the_rest() -> None:
    t = Translate(TranslateConfig(map={"a": "supply_temp"}))
    out = t.apply("plc", (Sample("a", 1.0), Sample("b", 2.0)))
    assert [(s.point, s.value) for s in out] == [("supply_temp", 1.0)]
    assert t.source_name("supply_temp") == "a" and t.source_name("b") is None


def test_translate_auto_routes_confident_keys_and_reviews_the_rest() -> None:
    from gateway.bus import Bus

    bus = Bus()
    sub = bus.subscribe("translator/review/#", maxsize=10, name="test")
    classify, calls = _fake(
        {"sat": ("Supply_Air_Temperature_Sensor", 0.9), "zz9": ("Run_Status", 0.2)}
    )
    t = Translate(TranslateConfig(mode="auto", map={"known": "k"}), bus, classifier=classify)
    samples = (Sample("known", 1), Sample("sat", 13.0), Sample("zz9", 5))
    out = t.apply("ahu1", samples)
    assert [s.point for s in out] == ["k", "Supply_Air_Temperature_Sensor.sat"]
    msg = sub.get_nowait()
    assert msg.topic == "translator/review/ahu1" and msg.kind is MessageKind.EVENT
    assert [s.point for s in msg.samples] == ["zz9"]
    assert msg.meta["suggestions"]["zz9"][0][0] == "Run_Status"
    t.apply("ahu1", samples)  # decisions are cached: no second classification
    assert calls == [["sat", "zz9"]]
    assert t.source_name("Supply_Air_Temperature_Sensor.sat") == "sat"


def test_translate_auto_with_the_shipped_model() -> None:
    t = Translate(TranslateConfig(mode="auto", threshold=0.3))
    out = t.apply("ahu1", (Sample("AHU1_SAT", 13.0),))
    assert [s.point for s in out] == ["Supply_Air_Temperature_Sensor.AHU1_SAT"]


def test_bridge_applies_translate_last() -> None:
    from gateway.bridge import Bridge
    from gateway.bus import Bus
    from gateway.config import BridgeConfig

    sent: list[Message] = []

    class Target:
        name = "t"

        async def send(self, message: Message, route: object) -> None:
            sent.append(message)

    async def scenario() -> None:
        bus = Bus()
        cfg = BridgeConfig(
            "b", ("plc",), ("*",), "t", {}, None, TranslateConfig(map={"AHU1_SAT": "sat"})
        )
        bridge = Bridge(cfg, bus, Target())  # type: ignore[arg-type]
        bridge.subscribe()
        task = asyncio.create_task(bridge.run())
        await bus.publish(
            Message.telemetry("plc", (Sample("AHU1_SAT", 13.0), Sample("other", 1.0)))
        )
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert [s.point for s in sent[0].samples] == ["sat"]


@pytest.mark.parametrize(
    "args",
    [["--steps", "0"], ["--batch", "-1"], ["--threads", "0"], ["--members", "0"], ["--seed", "x"]],
)
def test_train_refuses_bad_settings_before_training(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["translator", "train", *args])
    assert exit_.value.code == 2
    assert f"argument {args[0]}: must be" in capsys.readouterr().err


def test_train_refuses_an_out_it_cannot_create_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = _write(tmp_path / "taken", "a file, not a folder")
    assert main(["translator", "train", "--steps", "1", "--out", str(taken)]) == 2
    assert f"cannot write into {taken}: it is a file, not a folder" in capsys.readouterr().err
    assert main(["translator", "train", "--steps", "1", "--out", str(taken / "sub")]) == 2
    err = capsys.readouterr().err
    assert f"cannot create the output folder {taken / 'sub'}: Not a directory" in err, err


def test_suggest_names_the_config_devices_in_from_and_to(tmp_path: Path) -> None:
    regmap = _write(tmp_path / "plant.yaml", CONFIG)
    target = _write(tmp_path / "scada.yaml", "devices:\n  hmi: {points: [{name: sat}]}\n")
    out = tmp_path / "bridge.yaml"
    args = ["suggest", "--source", f"{regmap}#plc", "--target", f"{target}#hmi"]
    assert main([*args, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "from: plc" in text and "to: hmi" in text  # no placeholder to replace by hand
    csv_target = _write(tmp_path / "t.csv", "name\nsat\n")
    args = ["suggest", "--source", f"{regmap}#plc", "--target", str(csv_target)]
    assert main([*args, "--out", str(out), "--to", "broker"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "from: plc" in text and "to: broker" in text


def _labeled_site(tmp_path: Path, label: Callable[[str], str] = str, sep: str = ",") -> Path:
    r = Renderer(seed=78)
    names = ["Supply_Air_Temperature_Sensor", "Run_Status", "Zone_Air_Temperature_Sensor"]
    lines = [f"name{sep}brick_class"]
    for c in names:
        lines += [f"{r.sample(r.index[c]).name.replace(sep, ' ')}{sep}{label(c)}" for _ in range(8)]
    return _write(tmp_path / "lab.csv", "\n".join(lines) + "\n")


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, Any], str]:
    assert main(["translator", "evaluate", *args]) == 0
    out, err = capsys.readouterr()
    return json.loads(out.strip().splitlines()[-1]), err


def test_evaluate_reads_labels_in_any_spelling_and_leaves_out_unknown_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _labeled_site(tmp_path)
    want, err = _evaluate(capsys, "--data", str(plain), "--shots", "0,5", "--seeds", "2")
    assert want["n"] == 24 and want["left_out"] == {"unknown_label": 0}
    assert want["skipped"] == {}
    assert "evaluate: 5 shots, split 2 of 2\n" in err  # progress on stderr, JSON last on stdout
    spellings = [
        lambda c: c.lower(),
        lambda c: c.replace("_", " "),
        lambda c: f"http://brickschema.org/schema/Brick#{c}",
        lambda c: f"<https://brickschema.org/schema/Brick#{c}>",
    ]
    for spelled in spellings:
        path = _labeled_site(tmp_path, spelled)
        got, _ = _evaluate(capsys, "--data", str(path), "--shots", "0,5", "--seeds", "2")
        assert got["shots"] == want["shots"]
    # classes we do not know: left out, said on stderr and counted; the rest is evaluated
    with plain.open("a", encoding="utf-8") as f:
        f.write("LCCT_1,Lighting_Correlated_Color_Temperature_Sensor\n")
        f.write("LCCT_2,Lighting_Correlated_Color_Temperature_Sensor\nX_9,Typo_Sensr\n")
    got, err = _evaluate(capsys, "--data", str(plain), "--shots", "0,5", "--seeds", "2")
    assert got["shots"] == want["shots"] and got["n"] == 24
    assert got["left_out"] == {"unknown_label": 3}
    assert err.startswith(
        f"{plain}: left out 3 points whose brick_class is not a Brick point class we know: "
        "'Lighting_Correlated_Color_Temperature_Sensor' (2), 'Typo_Sensr'\n"
    )


def test_evaluate_skips_shot_counts_too_large_for_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _labeled_site(tmp_path)
    want, _ = _evaluate(capsys, "--data", str(data), "--shots", "0,5", "--seeds", "2")
    got, err = _evaluate(capsys, "--data", str(data), "--shots", "0,5,50", "--seeds", "2")
    assert got["shots"] == want["shots"]
    why = "50 shots leave no point to evaluate (24 labeled)"
    assert got["skipped"] == {"50": why}
    assert f"{data}: skipped: {why}\n" in err
    args = ["translator", "evaluate", "--data", str(data), "--shots", "24,50"]
    assert main(args) == 2
    assert "no shot count leaves a point to evaluate" in capsys.readouterr().err


def test_classify_keeps_rows_without_a_name_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(
        tmp_path / "in.csv",
        "name,description,unit\nAHU1_SAT,supply air temp,\n,orphan description,\n\n"
        "AHU1_RAT,return air temp,\n,,\n,,degF\nAHU1_MAT,,\n",
    )
    out = tmp_path / "out.csv"
    assert main(["classify", str(src), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    # a row per input row with a field filled (blank lines are no rows, as in CSV tools)
    assert [r["name"] for r in rows] == ["AHU1_SAT", "", "AHU1_RAT", "", "AHU1_MAT"]
    assert [bool(r["class"]) for r in rows] == [True, False, True, False, True]
    assert capsys.readouterr().err == (
        f"{src}: 2 rows without a name (line 3, 7) not classified: written with an empty "
        f"class\n{out}: 3 points classified\n"
    )


@pytest.mark.parametrize("sep", [";", "\t"])
def test_point_lists_separated_by_semicolons_or_tabs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sep: str
) -> None:
    src = _write(tmp_path / "in.csv", f"name{sep}unit\nAHU1_SAT{sep}degF\nRTU3,RAT{sep}\n")
    assert main(["classify", str(src)]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["name"] for r in rows] == ["AHU1_SAT", "RTU3,RAT"]
    data = _labeled_site(tmp_path, sep=sep)
    got, _ = _evaluate(capsys, "--data", str(data), "--shots", "0", "--seeds", "1")
    assert got["n"] == 24
    bad = _write(tmp_path / "bad.csv", f"point{sep}unit\nAHU1_SAT{sep}degF\n")
    assert main(["classify", str(bad)]) == 2
    assert "no column name in the header (found: point, unit)" in capsys.readouterr().err


def test_classify_keeps_the_label_of_a_listed_point_an_example_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit's case: AHU1_DSP labeled Static_Pressure_Sensor in a name,brick_class file
    came back as Duct_Air_Static_Pressure_Setpoint (0.66): the example was read by its name
    alone while the list gives its description and unit, so the memory missed it."""
    src = _write(
        tmp_path / "in.csv",
        "name,description,unit\nAHU1_DSP,Duct Static Pressure,inH2O\n"
        "AHU2_DSP,Duct Static Pressure,inH2O\nAHU1_SAT,Supply Air Temp,degF\n"
        "VAV_1_01_ZNT,Zone Temp,degF\n",
    )
    ex = _write(
        tmp_path / "ex.csv",
        "name,brick_class\nAHU1_DSP,Static_Pressure_Sensor\n"
        "AHU1_SAT,Supply_Air_Temperature_Sensor\nVAV_1_01_ZNT,Zone_Air_Temperature_Sensor\n",
    )
    assert main(["classify", str(src), "--examples", str(ex), "--top", "2"]) == 0
    rows = {r["name"]: r for r in csv.DictReader(capsys.readouterr().out.splitlines())}
    assert (rows["AHU1_DSP"]["class"], rows["AHU1_DSP"]["score"]) == (
        "Static_Pressure_Sensor",
        "1.000",
    )
    assert rows["AHU1_SAT"]["class"] == "Supply_Air_Temperature_Sensor"
    # the unlabeled twin learns from the example as the list shows it
    assert rows["AHU2_DSP"]["class"] == "Static_Pressure_Sensor"


def test_out_that_is_an_input_is_refused_before_it_is_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`suggest --out plant.yaml` replaced the config it read with the bridge snippet, and
    `classify same.csv --out same.csv` the list it read."""
    points = _write(tmp_path / "points.csv", "name\nAHU1_SAT\nAHU1_RAT\n")
    labels = _write(
        tmp_path / "labels.csv", "name,brick_class\nAHU1_SAT,Supply_Air_Temperature_Sensor\n"
    )
    plant = _write(
        tmp_path / "plant.yaml",
        "devices:\n  plc: {protocol: modbus, host: h, points: [{name: AHU1_SAT, address: 0}]}\n",
    )
    before = {p: p.read_bytes() for p in (points, labels, plant)}
    for args, said in [
        (["classify", str(points), "--out", str(points)], "is the input file"),
        (["classify", str(points), "--examples", str(labels), "--out", str(labels)], "--examples"),
        (["translator", "pick", str(points), "--count", "1", "--out", str(points)], "input"),
        (
            ["suggest", "--source", f"{plant}#plc", "--target", str(points), "--out", str(plant)],
            "is the --source file",
        ),
        (
            ["suggest", "--source", str(points), "--target", str(plant), "--out",
             str(tmp_path / "." / "plant.yaml")],
            "is the --target file",
        ),
    ]:  # fmt: skip
        code = main(args)
        err = capsys.readouterr().err
        assert code != 0 and said in err and "write elsewhere" in err, (args, err)
    hard = tmp_path / "hard.csv"
    hard.hardlink_to(points)  # the same file under another name
    assert main(["classify", str(points), "--out", str(hard)]) != 0
    assert "is the input file" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before
    assert main(["classify", str(points), "--out", str(tmp_path / "out.csv")]) == 0
