"""Operating points and calibration: figures against hand-computed values, the threshold chosen on
validation and applied to test, its round trip through config.json, the model card, publish and load."""

import csv
import json
import math

import pytest
import torch
from conftest import run_cli
from huggingface_hub import ModelCard
from zoofixtures import ckpt, hub, rewrite_config, trained  # noqa: F401 — pytest fixtures

import medzoo
from medzoo import cards, operating, store
from medzoo import hub as mzhub
from medzoo.evaluation import evaluate
from medzoo.operating import (
    OperatingPoint,
    calibration_report,
    choose_point,
    figures_at,
    threshold_free,
)
from medzoo.registry import MedzooError

# 5 positives, 4 negatives; by descending score: P P N P P N P N N. No score sits on a boundary of the
# 15 ECE bins (multiples of 1/15), and 0.22 and 0.25 share bin 3.
SCORES = [0.1, 0.22, 0.3, 0.75, 0.42, 0.62, 0.82, 0.9, 0.25]
TRUTH = [0, 0, 0, 0, 1, 1, 1, 1, 1]


def binary():
    p = torch.tensor(SCORES, dtype=torch.float64)
    return torch.stack([1 - p, p], 1), torch.tensor(TRUTH)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def test_threshold_free_figures_and_ece_by_hand():
    probs, target = binary()
    f = threshold_free(probs[:, 1], target)
    # specificity ≥ 0.9 needs no false positive: threshold 0.82, 2 of 5 positives found
    assert close(f["sens_at_spec90"], 2 / 5) and close(f["sens_at_spec95"], 2 / 5)
    # sensitivity ≥ 0.9 needs all 5 positives: threshold 0.25, 2 of 4 negatives below it
    assert close(f["spec_at_sens90"], 2 / 4) and close(f["spec_at_sens95"], 2 / 4)
    # ECE: |mean p − fraction positive| per bin, weighted by the bin's share; 0.22 (neg) and 0.25 (pos) share a bin
    singles = [0.1, 0.3, 1 - 0.42, 1 - 0.62, 0.75, 1 - 0.82, 1 - 0.9]
    assert close(f["ece"], (sum(singles) + 2 * abs((0.22 + 0.25) / 2 - 0.5)) / 9)
    metrics, _ = calibration_report(probs, target, "classification", ["neg", "pos"], groups=None, resamples=50, seed=0)
    assert close(metrics["ece"], f["ece"]) and metrics["ece_ci_low"] <= metrics["ece"] <= metrics["ece_ci_high"]


def test_validation_threshold_rules_by_hand():
    probs, target = binary()
    kw = {"split": "val", "dataset": "d", "weights_sha256": "a" * 64}
    # Youden's J = TPR − FPR by threshold: 0.9 .2, 0.82 .4, 0.75 .15, 0.62 .35, 0.42 .55 (max), 0.3 .3, 0.25 .5 …
    op = choose_point(probs, target, "classification", ["neg", "pos"], rule="youden", level=None, **kw)
    assert op.thresholds == {"pos": 0.42} and op.kind == "binary"
    assert op.val["pos"] == {"sensitivity": 4 / 5, "specificity": 3 / 4, "ppv": 4 / 5, "npv": 3 / 4,
                             "n_positive": 5, "n_negative": 4}
    # target sensitivity 0.9: the positive scored 0.25 must be called positive, so p ≥ t counts (not p > t)
    op = choose_point(probs, target, "classification", ["neg", "pos"], rule="sensitivity", level=0.9, **kw)
    assert op.thresholds == {"pos": 0.25} and op.val["pos"]["sensitivity"] == 1 and op.val["pos"]["specificity"] == 0.5
    op = choose_point(probs, target, "classification", ["neg", "pos"], rule="specificity", level=0.75, **kw)
    assert op.thresholds == {"pos": 0.42}
    assert figures_at(probs[:, 1], target, 0.25)["sensitivity"] == 1.0
    assert op.decide(probs) == ["neg", "neg", "neg", "pos", "pos", "pos", "pos", "pos", "neg"]
    assert op.decide([0.58, 0.42]) == ["pos"]  # at the threshold: positive


def test_a_threshold_is_never_chosen_on_test_and_unreachable_targets_are_refused():
    probs, target = binary()
    kw = {"dataset": "d", "weights_sha256": "a" * 64}
    with pytest.raises(MedzooError, match="chosen on the test split would make its test figures optimistic"):
        choose_point(probs, target, "classification", ["neg", "pos"], rule="youden", level=None, split="test", **kw)
    tied = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # a negative scored 1.0
    with pytest.raises(MedzooError, match="no threshold reaches specificity 0.9 for 'pos'"):
        choose_point(tied, torch.tensor([1, 0, 0]), "classification", ["neg", "pos"], rule="specificity", level=0.9,
                     split="val", **kw)
    op = choose_point(probs, target, "classification", ["neg", "pos"], rule="youden", level=None, split="val", **kw)
    bad = {**op.to_dict(), "split": "test"}
    with pytest.raises(MedzooError, match="chosen on the test split"):
        operating.read({"operating_point": bad})


def test_multilabel_and_multiclass_are_per_class():
    p_a = torch.tensor(SCORES, dtype=torch.float64)
    p_b = torch.tensor([0.7, 0.6, 0.2, 0.3, 0.1, 0.4, 0.05, 0.15, 0.55], dtype=torch.float64)
    truth = torch.tensor([TRUTH, [1, 1, 0, 0, 0, 0, 0, 0, 1]]).T
    probs = torch.stack([p_a, p_b], 1)
    op = choose_point(probs, truth, "multilabel", ["a", "b"], rule="youden", level=None, split="val", dataset="d",
                      weights_sha256="a" * 64)
    # label b is perfectly ranked: its threshold is its lowest positive score
    assert op.thresholds == {"a": 0.42, "b": 0.55} and op.kind == "multilabel"
    assert op.val["b"]["sensitivity"] == 1 and op.val["b"]["specificity"] == 1
    assert op.decide([[0.5, 0.6], [0.1, 0.2], [0.42, 0.1]]) == ["a;b", "", "a"]
    metrics, details = calibration_report(probs, truth, "multilabel", ["a", "b"], groups=None, resamples=0, seed=0)
    per = details["per_class_operating"]
    assert close(per["a"]["sens_at_spec90"], 2 / 5) and per["b"]["sens_at_spec90"] == 1.0
    assert close(metrics["sens_at_spec90"], (2 / 5 + 1) / 2)  # macro over labels
    # with resamples, each label's figures get their own interval (the issue: CIs per class, not only the macro)
    _, details = calibration_report(probs, truth, "multilabel", ["a", "b"], groups=None, resamples=50, seed=0)
    for c in ("a", "b"):
        figs = details["per_class_operating"][c]
        for k in ("sens_at_spec90", "spec_at_sens95", "ece"):
            lo, hi = figs[f"{k}_ci"]
            assert 0 <= lo <= hi <= 1
    lo, hi = details["per_class_operating"]["a"]["ece_ci"]
    assert lo < hi  # resampled, so not a point
    # multi-class: one-vs-rest thresholds are reported; the decision is the most probable class
    mc = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]], dtype=torch.float64)
    op = choose_point(mc, torch.tensor([0, 1, 2, 2]), "classification", ["x", "y", "z"], rule="youden", level=None,
                      split="val", dataset="d", weights_sha256="a" * 64)
    assert set(op.thresholds) == {"x", "y", "z"} and op.decide(mc) == ["x", "y", "z", "x"]


def _csv(path):
    return list(csv.DictReader(open(path)))


def _youden_by_hand(rows):
    p = [float(r["p_present"]) for r in rows]
    t = [int(r["label"]) for r in rows]
    pos, neg = sum(t), len(t) - sum(t)
    best = max(sorted(set(p), reverse=True), key=lambda th: sum(a >= th and b for a, b in zip(p, t)) / pos
               - sum(a >= th and not b for a, b in zip(p, t)) / neg)  # max() keeps the first (highest) of ties
    return best


def test_evaluate_stores_the_validation_point_and_only_replaces_it_when_asked(ckpt, tmp_path):
    path = store.get_local(ckpt).path
    result = evaluate(ckpt, bootstrap=20)
    op = operating.read(json.loads((path / store.CONFIG).read_text()))
    assert op is not None and op == result.operating_point and op.split == "val" and op.rule == "youden"
    assert (result.out_dir / "reliability.png").stat().st_size > 0
    saved = json.loads((result.out_dir / "metrics.json").read_text())
    assert {"sens_at_spec90", "spec_at_sens95", "ece", "ece_ci_low"} <= set(saved["metrics"])
    # the threshold is Youden's on the validation predictions, recomputed here from predictions.csv
    val = evaluate(ckpt, split="val", bootstrap=0, out=tmp_path)
    assert op.thresholds["present"] == pytest.approx(_youden_by_hand(_csv(val.out_dir / "predictions.csv")), abs=1e-6)
    # applied to test: the stored test figures are the counts of predictions.csv at that threshold
    rows = _csv(result.out_dir / "predictions.csv")
    called = [(float(r["p_present"]) >= op.thresholds["present"] - 1e-6, r["label"] == "1") for r in rows]
    tp = sum(c and y for c, y in called)
    assert op.test["figures"]["present"]["sensitivity"] == pytest.approx(tp / sum(y for _, y in called))
    assert op.test["n_images"] == 48 and len(op.test["figures"]["present"]["sensitivity_ci"]) == 2
    # another rule is reported, not stored, unless asked
    other = evaluate(ckpt, bootstrap=0, target_sensitivity=0.9)
    assert other.details["operating_point"]["rule"] == "sensitivity" and not other.details["operating_point"]["stored"]
    assert operating.read(store.get_local(ckpt).full_config()).rule == "youden"
    evaluate(ckpt, bootstrap=0, target_sensitivity=0.9, store_threshold=True)
    new = operating.read(store.get_local(ckpt).full_config())
    assert new.rule == "sensitivity" and new.target == 0.9 and new.val["present"]["sensitivity"] >= 0.9
    # the card shows it, with the test figures and calibration
    card = cards.render(store.get_local(ckpt), repo_id="lab/x")
    assert "### Operating point" in card and "highest specificity at sensitivity ≥ 0.9" in card
    assert f"| present | {new.thresholds['present']:.4f} |" in card and "| ece |" in card


def test_a_threshold_chosen_on_another_dataset_is_stored_only_when_asked(ckpt, tmp_path, capsys):
    import datagen as g

    data, seed = tmp_path / "other", 0
    for split, n in {"train": 4, "val": 6, "test": 6}.items():
        for c in ("absent", "present"):
            for i in range(n):
                seed += 1
                g.write_png(data / split / c / f"{i}.png", g.pattern(seed + (50 if c == "present" else 0), (40, 40)))
    assert operating.read(store.get_local(ckpt).full_config()) is None
    result = evaluate(ckpt, dataset=f"imagefolder:{data}", bootstrap=0)
    report = result.details["operating_point"]
    assert report["dataset"] == "imagefolder:other" and not report["stored"]
    assert "not on the checkpoint's own dataset phantom_lesion; pass --store-threshold" in capsys.readouterr().out
    assert operating.read(store.get_local(ckpt).full_config()) is None  # card and predict see no threshold
    evaluate(ckpt, dataset=f"imagefolder:{data}", bootstrap=0, store_threshold=True)
    assert operating.read(store.get_local(ckpt).full_config()).dataset == "imagefolder:other"


def test_the_point_travels_with_publish_and_load(ckpt, hub):
    evaluate(ckpt, bootstrap=0)
    stored = operating.read(store.get_local(ckpt).full_config())
    result = mzhub.publish(ckpt, "lab/lesion-net")
    published = json.loads(hub.repos["lab/lesion-net"].commits[result.commit].files["config.json"])
    assert OperatingPoint.from_dict(published["operating_point"]) == stored
    model = medzoo.load("hf-hub:lab/lesion-net")
    assert model.medzoo_operating_point == stored
    import timm

    timm.create_model("hf-hub:lab/lesion-net", pretrained=True)  # plain timm still loads it (it ignores the key)
    assert medzoo.load(ckpt).medzoo_operating_point == stored
    readme = ModelCard(hub.repos["lab/lesion-net"].commits[result.commit].files["README.md"].decode()).text
    assert "### Operating point" in readme and f"{stored.thresholds['present']:.4f}" in readme
    # a point chosen for other weights is never applied to these
    rewrite_config(ckpt, lambda c: c["operating_point"].update(weights_sha256="0" * 64))
    assert medzoo.load(ckpt).medzoo_operating_point is None
    assert "### Operating point" not in cards.render(store.get_local(ckpt), repo_id="lab/x")


def test_bad_flags_are_one_line(ckpt, tmp_path, capsys):
    before = (store.get_local(ckpt).path / store.CONFIG).read_text()
    for args, message in ((["--target-sensitivity", "1.5"], "--target-sensitivity 1.5 is not a fraction"),
                          (["--target-sensitivity", "0.9", "--target-specificity", "0.9"], "exclude each other"),
                          (["--store-threshold", "--out", str(tmp_path / "o")], "drop --store-threshold")):
        proc = run_cli("evaluate", ckpt, *args, check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert (store.get_local(ckpt).path / store.CONFIG).read_text() == before
    # the flags as typed: the first point of a checkpoint is stored, whatever its rule
    out = json.loads(run_cli("evaluate", ckpt, "--bootstrap", "0", "--json", "--target-specificity", "0.5").stdout)
    point = out["operating_point"]
    assert point["rule"] == "specificity" and point["target"] == 0.5 and point["stored"]
    assert point["val"]["present"]["specificity"] >= 0.5 and point["applied"]["split"] == "test"
    assert operating.read(store.get_local(ckpt).full_config()).thresholds == point["thresholds"]

    # a broken point: the weights load without it (one warning line), evaluate and the card refuse it, and
    # --store-threshold replaces it
    rewrite_config(ckpt, lambda c: c.update(operating_point={"rule": "youden"}))
    assert medzoo.load(ckpt).medzoo_operating_point is None
    assert "its operating_point is broken" in capsys.readouterr().err
    with pytest.raises(MedzooError, match="its operating_point is broken"):
        cards.render(store.get_local(ckpt), repo_id="lab/x")
    with pytest.raises(MedzooError, match="its operating_point is broken .* --store-threshold"):
        evaluate(ckpt, bootstrap=0)
    evaluate(ckpt, bootstrap=0, store_threshold=True)
    assert operating.read(store.get_local(ckpt).full_config()).rule == "youden"


def test_multilabel_checkpoint_gets_a_threshold_per_label_end_to_end(tmp_path, monkeypatch):
    import datagen

    datagen.make_medmnist(tmp_path / "mm", "chestmnist", 28, n=(24, 16, 16), multilabel=14)
    monkeypatch.setenv("MEDZOO_DATA_MEDMNIST", str(tmp_path / "mm"))
    name = medzoo.train("timm:test_resnet", "scratch,medmnist:chestmnist", overrides=["epochs=1", "image_size=28"],
                       precision="fp32")[-1].name
    result = evaluate(name, bootstrap=0)
    op = result.operating_point
    classes = store.get_local(name).label_names
    assert op.kind == "multilabel" and op.classes == classes
    # one threshold per label, and what is stored is what was applied (undefined figures as null both ways)
    stored = operating.read(store.get_local(name).full_config())
    assert stored == op and set(op.thresholds) == set(classes)
    rows = _csv(result.out_dir / "predictions.csv")
    probs = torch.tensor([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=torch.float64)
    truth = torch.tensor([json.loads(r["label"]) for r in rows])
    for i, c in enumerate(classes):  # each label's test figures are its own counts at its own threshold
        called = probs[:, i] >= op.thresholds[c] - 1e-6
        pos = truth[:, i].bool()
        if pos.any():
            assert op.test["figures"][c]["sensitivity"] == pytest.approx(float((called & pos).sum() / pos.sum()))
    decisions = op.decide(probs)
    assert len(decisions) == 16 and all(set(d.split(";")) <= set(classes) for d in decisions if d)
    assert "per_class_operating" in json.loads((result.out_dir / "metrics.json").read_text())
