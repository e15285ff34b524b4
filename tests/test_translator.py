"""Translator: tokenizer, corpus, training on a tiny corpus, shipped model, few-shot, scoring."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from gateway.translator.evaluate import Baseline, scores
from gateway.translator.fewshot import FewShot
from gateway.translator.model import DEFAULT_MODEL, Prediction, Translator, load, top_k
from gateway.translator.site import predict_site
from gateway.translator.siteprior import reweight, site_weights, with_site_prior
from gateway.translator.tokenize import GRAMS, Point, encode, pieces
from gateway.translator.vocab import brick_classes, canonical, same_class
from models.translator.corpus import Renderer


def test_pieces_split_vendor_names() -> None:
    assert pieces("SDH.PXCM-08.AH2.SF-VFD:PRESENT_VALUE") == [
        "sdh",
        "pxcm",
        "#",
        "ah",
        "#",
        "sf",
        "vfd",
        "present",
        "value",
    ]
    assert pieces("Return Air CO2 Sensordac1UIP36") == [
        "return",
        "air",
        "co2",
        "sensordac",
        "#",
        "uip",
        "#",
    ]
    assert pieces("ZoneTempSP") == ["zone", "temp", "sp"]
    assert pieces("") == []


def test_encode_pads_to_the_longest_point() -> None:
    batch = encode([Point("AHU1_SAT"), Point("a_b_c_d_e", "zone air", "degF", "float")])
    assert batch.ids.shape == (2, 9, GRAMS)
    assert list(batch.seg[0]) == [1, 1, 1] + [0] * 6
    assert list(batch.seg[1]) == [1] * 5 + [3, 4, 2, 2]
    assert list(batch.rpos[1][:5]) == [4, 3, 2, 1, 0]
    assert (batch.ids[0, 3:] == 0).all() and (batch.ids[0, :3, 0] > 0).all()


def test_vocabulary_and_aliases() -> None:
    names = {c.name for c in brick_classes()}
    assert len(names) == 793 and "Supply_Air_Temperature_Sensor" in names
    assert canonical("Discharge_Air_Temperature_Sensor") == "Supply_Air_Temperature_Sensor"
    assert same_class("Room_Air_Temperature_Sensor", "Zone_Air_Temperature_Sensor")
    assert not same_class("Zone_Air_Temperature_Sensor", "Supply_Air_Temperature_Sensor")


def test_corpus_is_seeded_and_varied() -> None:
    a = [(p.name, k) for p, k in Renderer(seed=3).stream(300)]
    b = [(p.name, k) for p, k in Renderer(seed=3).stream(300)]
    assert a == b
    names = {n for n, _ in a}
    assert len(names) > 290  # almost every rendering differs
    assert len({k for _, k in a}) > 200
    # one class, many spellings
    r = Renderer(seed=1)
    k = r.index["Supply_Air_Temperature_Sensor"]
    spellings = {r.sample(k).name for _ in range(200)}
    assert len(spellings) > 150


def test_class_prior_favours_common_points() -> None:
    from models.translator.prior import class_weights

    classes = brick_classes()
    w = dict(zip((c.name for c in classes), class_weights(classes), strict=True))
    assert abs(np.mean(list(w.values())) - 1) < 1e-9
    assert w["Supply_Air_Temperature_Sensor"] > 10 * w["Derivative_Gain_Parameter"]
    assert w["Valve_Position_Command"] > w["Air_Temperature_Integral_Time_Parameter"]
    r = Renderer(seed=2)
    drawn = [r.classes[k].name for _, k in r.stream(4000, prior=1.0)]
    uniform = [r.classes[k].name for _, k in Renderer(seed=2).stream(4000)]
    staple = "Zone_Air_Temperature_Sensor"
    assert drawn.count(staple) > 3 * max(1, uniform.count(staple))


def test_descriptive_names_read_like_typed_text() -> None:
    r = Renderer(seed=4)
    cls = r.classes[r.index["Supply_Air_Temperature_Sensor"]]
    names = [r._descriptive(cls) for _ in range(300)]
    assert any(" " in n and n == n.lower() for n in names)
    assert any("discharge" in n.lower() for n in names)
    spelled = [n for n in names if "tem" in n.lower() or "tmp" in n.lower()]
    assert len(spelled) > 0.9 * len(names)  # the quantity stays readable
    assert any("sensor" not in n.lower() for n in names)


def test_soft_targets_put_smoothing_on_ancestors() -> None:
    from models.translator.train import TrainConfig, soft_targets

    classes = brick_classes()
    t = soft_targets(len(classes), TrainConfig()).numpy()
    assert np.allclose(t.sum(1), 1, atol=1e-5)
    names = [c.name for c in classes]
    i = names.index("Air_Temperature_Setpoint")
    assert t[i, i] > 0.89
    assert t[i, names.index("Temperature_Setpoint")] > 10 * t[i, names.index("CO2_Sensor")]


def test_tiny_training_loss_falls_and_exports(tmp_path: Path) -> None:
    from models.translator.train import TrainConfig, export_onnx, train

    only = (
        "Supply_Air_Temperature_Sensor",
        "Return_Air_Temperature_Sensor",
        "Zone_Air_Temperature_Sensor",
        "Run_Status",
        "Valve_Position_Command",
        "CO2_Sensor",
    )
    cfg = TrainConfig(
        steps=80, batch=32, lr=5e-3, d=32, d_gram=16, heads=2, ff=64, layers=1, only=only
    )
    net, losses = train(cfg, progress=False)
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3
    path = tmp_path / "tiny.onnx"
    export_onnx(net, path)
    pred = Translator(path).predict([Point("AHU1_SAT"), Point("ZN-T"), Point("")])
    assert pred.probs.shape == (3, 793)
    assert np.allclose(pred.probs.sum(1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(pred.embeddings, axis=1), 1, atol=1e-3)


def test_ensemble_averages_its_members(tmp_path: Path) -> None:
    """The merged graph gives the mean of the members' distributions, and an embedding whose
    cosines are the mean of the members' cosines."""
    from models.translator.ensemble import merge
    from models.translator.train import TrainConfig, export_onnx, train

    only = ("Supply_Air_Temperature_Sensor", "Run_Status", "CO2_Sensor", "Valve_Position_Command")
    paths = []
    for seed in (0, 1):
        cfg = TrainConfig(
            steps=30, batch=16, d=32, d_gram=16, heads=2, ff=64, layers=1, only=only, seed=seed
        )
        net, _ = train(cfg, progress=False)
        paths.append(tmp_path / f"m{seed}.onnx")
        export_onnx(net, paths[-1])
    merge(paths, tmp_path / "both.onnx")
    pts = [Point("AHU1_SAT"), Point("FAN_STS"), Point("co2 level"), Point("CHW VLV")]
    a, b = (Translator(p).predict(pts) for p in paths)
    both = Translator(tmp_path / "both.onnx").predict(pts)
    assert not np.allclose(a.probs, b.probs, atol=1e-3)  # two different members
    assert np.allclose(both.probs, (a.probs + b.probs) / 2, atol=1e-5)
    assert np.allclose(np.linalg.norm(both.embeddings, axis=1), 1, atol=1e-4)
    cos = (a.embeddings @ a.embeddings.T + b.embeddings @ b.embeddings.T) / 2
    assert np.allclose(both.embeddings @ both.embeddings.T, cos, atol=1e-4)


def test_train_command_ships_one_merged_model(tmp_path: Path) -> None:
    from models.translator.train import TrainConfig, run

    only = ("Supply_Air_Temperature_Sensor", "Run_Status", "CO2_Sensor")
    cfg = TrainConfig(steps=20, batch=16, d=32, d_gram=16, heads=2, ff=64, layers=1, only=only)
    meta = run(cfg, tmp_path, members=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "translator.onnx"]
    assert [m["seed"] for m in meta["members"]] == [0, 1]
    assert Translator(tmp_path / "translator.onnx").predict([Point("SAT")]).probs.shape == (1, 793)


def test_shipped_model_is_small_and_loads_offline() -> None:
    assert DEFAULT_MODEL.exists()
    assert DEFAULT_MODEL.stat().st_size <= 5 * 1024 * 1024
    t = load()
    assert len(t.classes) == 793


@pytest.mark.parametrize(
    "name, expected",
    [
        ("AHU1_SAT", {"Supply_Air_Temperature_Sensor"}),
        ("AHU-2 Return Air Temp", {"Return_Air_Temperature_Sensor"}),
        ("OAT", {"Outside_Air_Temperature_Sensor"}),
        ("VAV_2_14_ZN_T", {"Zone_Air_Temperature_Sensor"}),
        (
            "CHWS_TEMP",
            {"Leaving_Chilled_Water_Temperature_Sensor", "Chilled_Water_Temperature_Sensor"},
        ),
        ("Zone CO2", {"CO2_Sensor", "Zone_CO2_Level_Sensor"}),
        ("FCU_3_CLG_VLV", {"Valve_Position_Command", "Valve_Command"}),
    ],
)
def test_shipped_model_classifies_known_names(name: str, expected: set[str]) -> None:
    t = load()
    top = top_k(t.predict([Point(name)]).probs, t.classes, 3)[0]
    assert any(same_class(c, e) for c, _ in top for e in expected), top


def test_shipped_model_top1_on_clear_names() -> None:
    t = load()
    names = {
        "AHU1_SAT": "Supply_Air_Temperature_Sensor",
        "RTU3.RAT": "Return_Air_Temperature_Sensor",
        "AHU2_MAT": "Mixed_Air_Temperature_Sensor",
        "BLDG_OAT": "Outside_Air_Temperature_Sensor",
    }
    probs = t.predict([Point(n) for n in names]).probs
    hits = sum(t.classes[int(i)] == c for i, c in zip(probs.argmax(1), names.values(), strict=True))
    assert hits >= 3


def test_few_shot_memory_teaches_a_site_convention() -> None:
    t = load()
    # An opaque site code the model cannot know: the examples teach it.
    examples = [
        (Point(f"QX{n}_ZQW7"), "Hot_Water_Differential_Pressure_Sensor") for n in (1, 2, 3)
    ] + [(Point(f"QX{n}_PLK9"), "Run_Status") for n in (1, 2)]
    query = [Point("QX9_ZQW7"), Point("QX8_PLK9")]
    before = t.predict(query).probs.argmax(1)
    adapted = FewShot.fit(t, examples).predict(query)
    after = [t.classes[int(i)] for i in adapted.probs.argmax(1)]
    assert after == ["Hot_Water_Differential_Pressure_Sensor", "Run_Status"]
    assert t.classes[int(before[0])] != "Hot_Water_Differential_Pressure_Sensor"
    assert np.allclose(adapted.probs.sum(1), 1, atol=1e-4)


def test_few_shot_rejects_unknown_classes() -> None:
    with pytest.raises(ValueError, match="Not_A_Class"):
        FewShot.fit(load(), [(Point("x"), "Not_A_Class")])


def test_scores_top1_top5_macro_f1() -> None:
    truth = ["A_Sensor", "A_Sensor", "B_Sensor", "Zone_Air_Temperature_Sensor"]
    ranked = [
        ["A_Sensor", "B_Sensor"],
        ["B_Sensor", "A_Sensor"],
        ["B_Sensor"],
        ["Room_Air_Temperature_Sensor"],  # Room and Zone count as the same
    ]
    s = scores(truth, ranked)
    assert s["top1"] == 0.75
    assert s["top5"] == 1.0
    # A: p=1, r=0.5 -> 2/3; B: p=0.5, r=1 -> 2/3; Zone: 1
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_baseline_uses_examples() -> None:
    b = Baseline(["Supply_Air_Temperature_Sensor", "Run_Status"])
    zero = b.rank([Point("supply air temperature")])
    assert zero[0][0] == "Supply_Air_Temperature_Sensor"
    shot = b.rank([Point("FAN_RUN_7")], [(Point("FAN_RUN_1"), "Run_Status")])
    assert shot[0][0] == "Run_Status"


def test_few_shot_head_improves_a_synthetic_site() -> None:
    from gateway.translator.evaluate import scores
    from models.translator.sites import site

    t = load()
    data = site(7, points=160, classes=12, novel=0.5)  # one convention, codes the model never saw
    train, test = data[:40], data[40:]
    truth = [c for _, c in test]
    points = [p for p, _ in test]

    def top1(probs: np.ndarray) -> float:
        return scores(truth, [[t.classes[int(i)]] for i in probs.argmax(1)])["top1"]

    zero = top1(t.predict(points).probs)
    adapted = FewShot.fit(t, train)
    assert adapted.w.any()  # the head learned something from the examples
    few = top1(adapted.predict(points).probs)
    assert few > zero + 0.1
    # classes no example shows keep their zero-shot ranking among themselves
    base = t.predict(points[:5]).probs
    after = adapted.predict(points[:5]).probs
    unseen = np.setdiff1d(np.arange(len(t.classes)), adapted.seen)[:50]
    ratio = after[:, unseen] / base[:, unseen]
    assert np.allclose(ratio, ratio[:, :1], rtol=1e-3)


def test_an_equipment_site_names_every_point_after_its_equipment() -> None:
    from models.translator.sites import equipment_site

    data = equipment_site(3, points=200, classes=12, kinds=3)
    assert data == equipment_site(3, points=200, classes=12, kinds=3)  # seeded
    by_kind: dict[str, set[str]] = {}
    for p, c in data:
        first = pieces(p.name)[0]  # the equipment word: instance numbers are one '#' piece
        by_kind.setdefault(first, set()).add(c)
    assert len({c for _, c in data}) == 12
    assert 2 <= len(by_kind) <= 3  # one id per kind of equipment (two kinds may share a word)
    assert all(len(classes) >= 4 for classes in by_kind.values())  # shared by unlike points
    # every instance of a kind has one point of each of its classes: a class comes as often
    # as its kind has instances, so there are as many different counts as kinds at most
    counts = Counter(c for _, c in data)
    assert len(set(counts.values())) <= 3 and max(counts.values()) >= 5


def test_site_prior_is_the_smoothed_mean_prediction_of_the_list() -> None:
    probs = np.array([[0.9, 0.1, 0.0]] * 10 + [[0.45, 0.55, 0.0]], dtype=np.float32)
    emb = np.zeros((11, 2), dtype=np.float32)
    w = site_weights(probs, alpha=1.0)
    assert np.allclose(w, (probs.sum(0) + 1.0) / (11 + 3) * 3)
    out = reweight(Prediction(probs, emb), w)
    assert np.allclose(out.probs.sum(1), 1.0)
    assert out.probs[-1].argmax() == 0  # the ambiguous point follows the rest of its list
    alone = with_site_prior(Prediction(probs[-1:], emb[-1:]))
    assert alone.probs[0].argmax() == 1  # on its own a point keeps its best class
    empty = with_site_prior(Prediction(probs[:0], emb[:0]))
    assert empty.probs.shape == (0, 3)


def test_an_example_that_is_also_in_the_list_counts_once_in_the_site_prior() -> None:
    # classify IN.csv --examples LABELED.csv, where LABELED.csv labels some rows of IN.csv
    from gateway.translator.site import _site_pass

    rng = np.random.default_rng(0)
    table = {f"p{i}": rng.dirichlet(np.ones(5)).astype(np.float32) for i in range(12)}

    class Fixed:  # a translator whose distribution depends on the name only
        def predict(self, points: list[Point]) -> Prediction:
            probs = np.array([table[p.name] for p in points], dtype=np.float32).reshape(-1, 5)
            return Prediction(probs, np.zeros((len(points), 2), dtype=np.float32))

    points = [Point(name) for name in table]
    listed = [(points[0], "A"), (points[1], "B")]
    outside = [(Point("p11"), "A")]
    fixed = cast(Translator, Fixed())
    alone = Fixed().predict(points)
    weights = site_weights(alone.probs)
    own, shown = _site_pass(fixed, points, listed, prior=True)
    assert np.allclose(own.probs, reweight(alone, weights).probs)
    assert np.allclose(shown.probs, own.probs[:2])
    # an example from outside the list is one more point of the site
    own, _ = _site_pass(fixed, points[:11], outside, prior=True)
    assert np.allclose(own.probs, reweight(alone, weights).probs[:11])


def test_site_prior_helps_a_synthetic_site_zero_shot() -> None:
    from models.translator.sites import site

    t = load()
    data = site(5, points=300, classes=40)  # one convention, Zipf-like class counts
    points = [p for p, _ in data]
    truth = [c for _, c in data]

    def top1(pred: Prediction, skip: int = 0) -> float:
        ranked = [[t.classes[int(i)]] for i in pred.probs.argmax(1)]
        return scores(truth[skip:], ranked)["top1"]

    plain = top1(predict_site(t, points, prior=False))
    assert plain == top1(t.predict(points))
    assert top1(predict_site(t, points)) > plain + 0.05  # measured 0.697 -> 0.790
    # with examples the head runs on top of the prior and still learns from them
    shown = predict_site(t, points[60:], data[:60])
    assert top1(shown, 60) > top1(predict_site(t, points[60:]), 60)


def test_few_shot_memory_does_not_pull_a_sibling_class_into_an_examples_class() -> None:
    from models.translator.sites import sibling_site

    t = load()
    data = sibling_site(200, points=400, stems=12)  # sensor / setpoint / alarm families
    examples, rest = data[:50], data[50:]
    truth = [canonical(c) for _, c in rest]
    unseen = np.array([c not in {canonical(e) for _, e in examples} for c in truth])
    assert 20 < unseen.sum() < len(rest)
    points = [p for p, _ in rest]

    def hits(pred: Prediction) -> np.ndarray:
        return np.array(
            [
                same_class(t.classes[int(i)], c)
                for i, c in zip(pred.probs.argmax(1), truth, strict=True)
            ]
        )

    zero, few = hits(predict_site(t, points)), hits(predict_site(t, points, examples))
    assert few.mean() > zero.mean() + 0.05  # measured 0.78 -> 0.87
    # points whose class no example shows keep most of their zero-shot accuracy (0.76 -> 0.68;
    # with the vote starting at cosine 0.5 they fell to 0.38)
    assert few[unseen].mean() > zero[unseen].mean() - 0.15


def _kinds(counts: list[int], confidence: list[float]) -> Prediction:
    """Points in tight groups (one embedding direction per kind) with a given top probability."""
    rng = np.random.default_rng(0)
    emb, probs = [], []
    for k, (n, conf) in enumerate(zip(counts, confidence, strict=True)):
        for _ in range(n):
            v = np.zeros(8)
            v[k] = 1.0
            v += rng.normal(0, 0.05, 8)
            emb.append(v / np.linalg.norm(v))
            probs.append([conf, 1 - conf])
    return Prediction(np.array(probs, np.float32), np.array(emb, np.float32))


def test_pick_covers_the_kinds_of_point_before_repeating_one() -> None:
    from gateway.translator.pick import pick

    pred = _kinds([40, 5, 3], [0.6, 0.6, 0.6])
    first = pick(pred, 3)
    kinds = [0 if i < 40 else 1 if i < 45 else 2 for i in first]
    assert kinds == [0, 1, 2]  # biggest kind first, then every other kind once
    assert pick(pred, 3) == first  # deterministic
    assert len(pick(pred, 100)) == 48 and pick(pred, 0) == []


def test_pick_asks_first_where_the_model_is_unsure() -> None:
    from gateway.translator.pick import pick

    pred = _kinds([10, 10], [0.99, 0.4])  # same size, the second kind is uncertain
    assert pick(pred, 1)[0] >= 10


def test_pick_skips_what_the_labeled_points_already_cover() -> None:
    from gateway.translator.pick import pick

    pred = _kinds([40, 5, 3], [0.6, 0.6, 0.6])
    assert pick(pred, 1)[0] < 40
    after = pick(pred, 2, labeled=pred.embeddings[:1])  # kind 0 is labeled
    assert [0 if i < 40 else 1 if i < 45 else 2 for i in after] == [1, 2]


def test_pick_samples_candidates_on_a_long_list(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.translator.pick as pk

    pred = _kinds([30, 30, 30], [0.6, 0.6, 0.6])
    full = pk.pick(pred, 3)
    monkeypatch.setattr(pk, "CANDIDATES", 20)
    sampled = pk.pick(pred, 3)
    assert sorted(i // 30 for i in sampled) == sorted(i // 30 for i in full) == [0, 1, 2]
    assert len(set(pk.pick(pred, 50))) == 20  # no more picks than candidates


def test_picked_examples_teach_a_synthetic_site_more_than_random_ones() -> None:
    from gateway.translator.evaluate import evaluate
    from models.translator.sites import site

    t = load()
    data = site(300, points=300, classes=30)
    rand = evaluate(t, data, [10], 3)["10"]["model"]["top1"]
    picked = evaluate(t, data, [10], 3, select="pick")["10"]["model"]["top1"]
    assert picked > rand + 0.05  # measured 0.757 -> 0.883
    with pytest.raises(ValueError, match="select"):
        evaluate(t, data, [10], 1, select="best")


def test_class_labels_read_in_any_spelling() -> None:
    want = "Return_Air_CO2_Sensor"
    for written in (
        "return_air_co2_sensor",
        " Return Air CO2 Sensor ",
        "return-air-co2-sensor",
        "brick:Return_Air_CO2_Sensor",
        "BRICK:return air co2 sensor",
        "http://brickschema.org/schema/Brick#Return_Air_CO2_Sensor",
        "https://brickschema.org/schema/Brick#Return_Air_CO2_Sensor",
        "<https://brickschema.org/schema/Brick#Return_Air_CO2_Sensor>",
    ):
        assert canonical(written) == want, written
    assert canonical("discharge air temperature sensor") == "Supply_Air_Temperature_Sensor"
    # not a class of ours: its prefix goes, the rest stays as written
    assert canonical("brick:Lighting_Correlated_Color_Temperature_Sensor") == (
        "Lighting_Correlated_Color_Temperature_Sensor"
    )
    assert canonical("https://example.com/x#Foo") == "https://example.com/x#Foo"


def _reference_baseline(
    baseline: Baseline, points: list[Point], test: np.ndarray, train: np.ndarray, labels: list[str]
) -> list[list[str]]:
    """The baseline computed straight, as evaluate did before it prepared the names once:
    one cdist of the split's points against the class texts and its examples' names."""
    from rapidfuzz import fuzz, process

    from gateway.translator.evaluate import _text

    choices = baseline.class_text + [_text(points[i].name) for i in train]
    names = baseline.classes + [labels[i] for i in train]
    sim = process.cdist([_text(points[i].name) for i in test], choices, scorer=fuzz.WRatio)
    out = []
    for row in sim:
        ranked: list[str] = []
        for j in np.argsort(-row, kind="stable"):
            if names[j] not in ranked:
                ranked.append(names[j])
            if len(ranked) == 5:
                break
        out.append(ranked)
    return out


def test_evaluate_splits_rank_as_the_straight_computation() -> None:
    from gateway.translator.evaluate import Names
    from gateway.translator.fewshot import features
    from models.translator.sites import site

    data = site(11, points=160, classes=20)
    points = [p for p, _ in data]
    labels = [c for _, c in data]
    t = load()
    baseline = Baseline(t.classes)
    names = Names(points, baseline)
    base = t.predict(points)
    for seed, k in ((0, 0), (1, 10), (2, 50)):
        order = np.random.default_rng(seed).permutation(len(points))
        train, test = order[:k], order[k:]
        want = _reference_baseline(baseline, points, test, train, labels)
        assert names.rank(test, train, [labels[i] for i in train]) == want
        # the head's features computed once give the same adaptation as per call
        if k:
            head = FewShot(
                t,
                [points[i] for i in train],
                [labels[i] for i in train],
                Prediction(base.probs[train], base.embeddings[train]),
            )
            sub = Prediction(base.probs[test], base.embeddings[test])
            rest = [points[i] for i in test]
            once = head.adapt(sub, rest, feats=[features(p) for p in rest])
            assert np.array_equal(once.probs, head.adapt(sub, rest).probs)


def test_evaluate_says_what_runs_and_refuses_too_many_shots() -> None:
    from gateway.translator.evaluate import evaluate
    from models.translator.sites import site

    data = site(12, points=40, classes=8)
    said: list[str] = []
    result = evaluate(load(), data, [0, 5], 2, progress=said.append)
    assert set(result) == {"0", "5"}
    assert said == [
        "model and baseline over 40 points",
        "0 shots, split 1 of 1",
        "5 shots, split 1 of 2",
        "5 shots, split 2 of 2",
    ]
    with pytest.raises(ValueError, match="40 shots leave no point to evaluate"):
        evaluate(load(), data, [0, 40], 1)
