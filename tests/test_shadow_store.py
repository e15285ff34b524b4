"""ShadowStore: versions and conflicts, null deletes, delta, metadata, history and retention."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.shadow.store import ShadowStore, VersionConflict, compute_delta


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ShadowStore:
    return ShadowStore(str(tmp_path / "shadow.db"), clock=clock)


def test_versions_and_conflict(store: ShadowStore, tmp_path: Path) -> None:
    assert store.get("pump").version == 0
    doc = store.update("pump", desired={"speed": 10})
    assert doc.version == 1
    doc = store.update("pump", desired={"speed": 20}, version=1)
    assert doc.version == 2
    with pytest.raises(VersionConflict) as exc:
        store.update("pump", desired={"speed": 30}, version=1)
    assert exc.value.actual == 2
    assert store.get("pump").desired == {"speed": 20}


def test_two_concurrent_writers_with_the_same_version(tmp_path: Path) -> None:
    path = str(tmp_path / "shadow.db")
    ShadowStore(path).update("pump", desired={"speed": 1})
    results: list[str] = []
    barrier = threading.Barrier(2)

    def writer(value: int) -> None:
        store = ShadowStore(path)
        version = store.get("pump").version
        barrier.wait()
        try:
            store.update("pump", desired={"speed": value}, version=version)
            results.append("ok")
        except VersionConflict:
            results.append("conflict")
        store.close()

    threads = [threading.Thread(target=writer, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict", "ok"]
    assert ShadowStore(path).get("pump").version == 2


def test_null_deletes_and_nested_merge(store: ShadowStore) -> None:
    store.update("pump", desired={"speed": 10, "mode": "auto", "pid": {"p": 1, "i": 2}})
    doc = store.update("pump", desired={"mode": None, "pid": {"i": None, "d": 3}})
    assert doc.desired == {"speed": 10, "pid": {"p": 1, "d": 3}}
    assert "mode" not in doc.metadata["desired"]
    doc = store.update("pump", desired={"pid": {"p": None, "d": None}})
    assert doc.desired == {"speed": 10}


def test_delta(store: ShadowStore) -> None:
    assert compute_delta({"a": 1, "b": 2.0, "c": {"x": 1}}, {"a": 1, "b": 2.0000001}) == {
        "c": {"x": 1}
    }
    assert compute_delta({"on": True}, {"on": 1}) == {"on": True}
    store.update("pump", desired={"speed": 10, "mode": "auto"})
    store.report("pump", {"speed": (5, "good", 1.0), "mode": ("auto", "good", 1.0)})
    doc = store.get("pump")
    assert doc.delta == {"speed": 10}
    assert doc.to_json()["state"]["delta"] == {"speed": 10}
    store.report("pump", {"speed": (10, "good", 2.0)})
    doc = store.get("pump")
    assert doc.delta == {}
    assert "delta" not in doc.to_json()["state"]


def test_metadata_timestamps(store: ShadowStore, clock: Clock) -> None:
    store.update("pump", desired={"speed": 10, "mode": "auto"})
    clock.t = 2000.0
    doc = store.update("pump", desired={"speed": 11})
    assert doc.metadata["desired"]["speed"] == {"timestamp": 2000.0}
    assert doc.metadata["desired"]["mode"] == {"timestamp": 1000.0}
    assert doc.timestamp == 2000.0
    doc = store.report("pump", {"speed": (11, "good", 1500.0)})  # type: ignore[assignment]
    assert doc.metadata["reported"]["speed"] == {"timestamp": 1500.0}


def test_reports_only_write_changes_and_keep_quality(store: ShadowStore) -> None:
    assert store.report("pump", {"t": (1, "good", 1.0)}) is not None
    assert store.report("pump", {"t": (1, "good", 2.0)}) is None  # unchanged: nothing written
    doc = store.report("pump", {"t": (None, "bad", 3.0)})
    assert doc is not None and doc.reported == {"t": 1} and doc.quality == {"t": "bad"}
    doc = store.report("pump", {"t": (1, "good", 4.0)})
    assert doc is not None and doc.quality == {}
    assert [r.quality for r in store.history("pump", "t")] == ["good", "bad", "good"]


def test_uncertain_readings_are_reported_and_kept_in_history(store: ShadowStore) -> None:
    """A reading outside low..high is uncertain but still the device's value: an excursion's
    values must reach reported and history, not only the change of quality."""
    store.report("pump", {"t": (99.0, "good", 1.0)})
    doc = store.report("pump", {"t": (101.0, "uncertain", 2.0)})
    assert doc is not None and doc.reported == {"t": 101.0} and doc.quality == {"t": "uncertain"}
    doc = store.report("pump", {"t": (104.5, "uncertain", 3.0)})  # the peak of the excursion
    assert doc is not None and doc.reported == {"t": 104.5}
    assert store.report("pump", {"t": (104.5, "uncertain", 4.0)}) is None  # unchanged
    doc = store.report("pump", {"t": (65535, "bad", 5.0)})  # a bad reading's value is not kept
    assert doc is not None and doc.reported == {"t": 104.5} and doc.quality == {"t": "bad"}
    store.report("pump", {"t": (98.0, "good", 6.0)})
    history = [(r.value, r.quality) for r in store.history("pump", "t")]
    assert history == [
        (99.0, "good"),
        (101.0, "uncertain"),
        (104.5, "uncertain"),
        (65535, "bad"),
        (98.0, "good"),
    ]


def test_errors_stay_until_desired_changes_or_is_reached(store: ShadowStore) -> None:
    store.update("pump", desired={"speed": 999})
    store.set_error("pump", "speed", 999, "out_of_range", "999 is above 100")
    doc = store.get("pump")
    assert doc.errors["speed"]["status"] == "out_of_range" and doc.delta == {"speed": 999}
    doc = store.update("pump", desired={"speed": 50})
    assert doc.errors == {}


def test_a_key_that_is_no_point_is_metadata_and_not_in_the_delta(store: ShadowStore) -> None:
    store.update("pump", desired={"speed": 999, "area": "north", "mode": 2})
    assert store.get("pump").delta == {"speed": 999, "area": "north", "mode": 2}
    store.set_error("pump", "area", "north", "unknown_point", "pump has no point 'area'")
    # a real point whose write failed is still wanted, whatever the reason
    store.set_error("pump", "speed", 999, "out_of_range", "999 is above 100")
    store.set_error("pump", "mode", 2, "not_writable", "mode is read-only")
    doc = store.get("pump")
    assert doc.delta == {"speed": 999, "mode": 2}
    assert doc.to_json()["state"]["delta"] == {"speed": 999, "mode": 2}
    assert doc.unreached == {"speed": 999, "area": "north", "mode": 2}
    assert doc.desired["area"] == "north" and doc.errors["area"]["status"] == "unknown_point"
    # kept as metadata: a report of another key does not clear its error
    doc = store.report("pump", {"speed": (999, "good", 1000.0)})
    assert doc is not None and doc.delta == {"mode": 2} and "area" in doc.errors
    # a new value is wanted again until it is recorded
    assert store.update("pump", desired={"area": "south"}).delta == {"area": "south", "mode": 2}
    store.set_error("pump", "mode", 2, "device_error", "exception 4")
    assert store.get("pump").delta == {"area": "south", "mode": 2}


def test_history_queries(store: ShadowStore) -> None:
    for i in range(10):
        store.report("pump", {"t": (i, "good", 100.0 + i)})
    assert [r.value for r in store.history("pump", "t", last=3)] == [7, 8, 9]
    rows = store.history("pump", "t", since=102.0, until=104.0)
    assert [(r.ts, r.value) for r in rows] == [(102.0, 2), (103.0, 3), (104.0, 4)]
    assert store.history("pump", "other") == []


def test_history_retention_by_age_and_rows(tmp_path: Path, clock: Clock) -> None:
    store = ShadowStore(str(tmp_path / "s.db"), max_age=50, max_rows=5, clock=clock)
    for i in range(20):
        store.report("pump", {"t": (i, "good", 900.0 + i * 10)})  # 900 .. 1090
        store.report("pump", {"u": (i, "good", 1070.0 + i)})  # 1070 .. 1089
    deleted = store.prune(now=1100.0)
    t = store.history("pump", "t")
    assert [r.ts for r in t] == [1050.0, 1060.0, 1070.0, 1080.0, 1090.0]  # by age
    u = store.history("pump", "u")
    assert [r.value for r in u] == [15, 16, 17, 18, 19]  # by rows: the newest 5
    assert deleted == 15 + 15


# -- CLI: gateway shadow get/set/history against a store file ---------------------------------


def _cli_config(tmp_path: Path, shadow: bool = True) -> Path:
    path = tmp_path / "gw.yaml"
    text = (
        "devices:\n  pump: {protocol: modbus, host: 127.0.0.1, points: [{name: s, address: 0}]}\n"
    )
    if shadow:
        text += "shadow: {path: shadow.db}\n"  # relative to the config file
    path.write_text(text)
    return path


def test_cli_get_set_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.cli import main

    cfg = str(_cli_config(tmp_path))
    assert main(["shadow", "get", "pump", "--config", cfg]) == 1
    assert "no shadow store" in capsys.readouterr().err
    assert main(["shadow", "set", "pump", "speed=42", "mode=auto", "--config", cfg]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"]["desired"] == {"speed": 42, "mode": "auto"} and doc["version"] == 1
    assert main(["shadow", "set", "pump", "mode=null", "--version", "1", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["shadow", "set", "pump", "speed=1", "--version", "1", "--config", cfg]) == 1
    assert "version conflict" in capsys.readouterr().err
    assert main(["shadow", "get", "pump", "--config", cfg]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"]["desired"] == {"speed": 42} and doc["state"]["delta"] == {"speed": 42}
    assert main(["shadow", "get", "boiler", "--config", cfg]) == 1
    assert "no shadow for 'boiler'" in capsys.readouterr().err

    store = ShadowStore(str(tmp_path / "shadow.db"))
    for i in range(5):
        store.report("pump", {"speed": (i, "good", 1_700_000_000.0 + i)})
    assert main(["shadow", "history", "pump", "speed", "--last", "2", "--config", cfg]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "2023-11-14T22:13:23.000+00:00  3  good",
        "2023-11-14T22:13:24.000+00:00  4  good",
    ]
    args = ["--since", "2023-11-14T22:13:21Z", "--until", "1700000002", "--json"]
    assert main(["shadow", "history", "pump", "speed", *args, "--config", cfg]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["value"] for r in rows] == [1, 2]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    cfg = str(_cli_config(tmp_path, shadow=False))
    assert main(["shadow", "get", "pump", "--config", cfg]) == 1
    assert "has no shadow: section" in capsys.readouterr().err
    assert main(["shadow", "set", "pump", "speed", "--config", cfg]) == 1
    assert main(["shadow", "get", "pump", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
    cfg = str(_cli_config(tmp_path))
    assert main(["shadow", "set", "pump", "speed", "--config", cfg]) == 1
    assert "expected KEY=VALUE" in capsys.readouterr().err
    (tmp_path / "shadow.db").write_text("not a database" * 100)
    assert main(["shadow", "get", "pump", "--config", cfg]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open the shadow store") and "Traceback" not in err
    args = ["--since", "yesterday", "--config", cfg]
    assert main(["shadow", "history", "pump", "speed", *args]) == 1


def pump_config(tmp_path: Path, *points: str) -> Path:
    """A config with one Modbus device, pump, with ``points`` (YAML flow mappings), and a
    shadow in tmp_path/shadow.db."""
    cfg = tmp_path / "gw.yaml"
    lines = "".join(f"      - {p}\n" for p in points)
    cfg.write_text(
        "devices:\n  pump:\n    protocol: modbus\n    host: 127.0.0.1\n    points:\n"
        f"{lines}shadow: {{path: shadow.db}}\n"
    )
    return cfg


def test_cli_set_refuses_what_the_gateway_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    cfg = pump_config(
        tmp_path,
        "{name: flow, address: 0}",
        "{name: speed, table: holding, address: 1, access: rw, low: 0, high: 100}",
    )

    def shadow(*args: str) -> tuple[int, str]:
        code = main(["shadow", *args, "--config", str(cfg)])
        return code, capsys.readouterr().err

    for pair, said in [
        ("flow=5", "pump/flow is not writable"),
        ("speed=500", "500 is above pump/speed's high 100.0"),
        ("speed=NaN", "NaN is not a finite number"),
        ("speed=1e999", "1e999 is not a finite number"),
    ]:
        code, err = shadow("set", "pump", pair)
        assert code == 1 and said in err, (pair, err)
    code, err = shadow("set", "boiler", "speed=5")
    assert code == 1 and "'boiler' has no shadow" in err and "devices: pump" in err
    assert (
        not (tmp_path / "shadow.db").exists()
        or ShadowStore(str(tmp_path / "shadow.db")).get("pump").desired == {}
    )  # nothing refused was stored
    code, err = shadow("set", "pump", "speed=40", "area=north")
    assert code == 0 and "note: area is not a point of pump" in err and "speed" not in err
    assert ShadowStore(str(tmp_path / "shadow.db")).get("pump").desired == {
        "speed": 40,
        "area": "north",
    }
    for args, said in [
        (("boiler", "speed"), "no shadow for 'boiler'"),
        (("pump", "nosuch"), "no history of pump/nosuch: it was never reported"),
        (("pump", "speed", "--since", "nan"), "expected epoch seconds"),
        (("pump", "speed", "--since", "2030-01-01", "--until", "2020-01-01"), "is after --until"),
    ]:
        code, err = shadow("history", *args)
        assert code == 1 and said in err, (args, err)


@pytest.mark.parametrize("pair", ["speed=fast", "speed=[1,2]", "speed=nan", 'speed="7"'])
def test_shadow_set_refuses_a_value_of_the_wrong_kind(
    pair: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    cfg = pump_config(
        tmp_path,
        "{name: speed, table: holding, address: 1, type: float32, access: rw, low: 0, high: 3000}",
        "{name: label, table: holding, address: 10, type: string, length: 4, access: rw}",
    )
    code = main(["shadow", "set", "pump", pair, "--config", str(cfg)])
    err = capsys.readouterr().err
    key = pair.partition("=")[0]
    assert code == 1 and f"pump/{key}: " in err and "needs a" in err, err
    db = tmp_path / "shadow.db"
    assert not db.exists() or ShadowStore(str(db)).get("pump").desired == {}


def test_shadow_set_takes_a_string_point_s_value_as_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A string point's value is the text: label=42 used to be refused as a number (the
    docs asked for label='"42"'); quotes still work, null still deletes, and a key that is no
    point still reads as JSON."""
    from gateway.cli import main

    cfg = pump_config(
        tmp_path,
        "{name: speed, table: holding, address: 1, type: float32, access: rw, low: 0, high: 3000}",
        "{name: label, table: holding, address: 10, type: string, length: 4, access: rw}",
    )

    def desired(*pairs: str) -> dict[str, object]:
        code = main(["shadow", "set", "pump", *pairs, "--config", str(cfg)])
        assert code == 0, capsys.readouterr().err
        return ShadowStore(str(tmp_path / "shadow.db")).get("pump").desired

    assert desired("label=42", "speed=42", "spare=42") == {"label": "42", "speed": 42, "spare": 42}
    assert desired("label=true")["label"] == "true"
    assert desired('label="4 2"')["label"] == "4 2"
    assert desired("label=[1,2]")["label"] == "[1,2]"
    assert "label" not in desired("label=null")
    assert desired("label=NaN", "spare=1")["label"] == "NaN"  # text, not a number refused
    code = main(["shadow", "set", "pump", "spare=1e999", "--config", str(cfg)])
    assert code == 1 and "spare=1e999: 1e999 is not a finite number" in capsys.readouterr().err
