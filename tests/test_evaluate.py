"""Evaluation: metrics against hand-computed values, the bootstrap CI, and `medzoo evaluate` end to end."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli
from huggingface_hub import ModelCard
from zoofixtures import ckpt, trained  # noqa: F401

import medzoo
from medzoo import cards, models, store
from medzoo.evaluation import bootstrap_auc_ci, classification_report, evaluate
from medzoo.registry import ArchSpec, DatasetSpec, MedzooError, registry


def close(a, b, **kw):
    return math.isclose(a, b, rel_tol=1e-6, **kw)  # torchmetrics' ratios are float32


def onehot_probs(pred, num, hit=0.8):
    """Probabilities that put `hit` on the predicted class and share the rest."""
    p = torch.full((len(pred), num), (1 - hit) / (num - 1), dtype=torch.float64)
    p[torch.arange(len(pred)), torch.tensor(pred)] = hit
    return p


def test_binary_metrics_from_a_known_confusion_matrix():
    # TP 3, FN 1, FP 2, TN 4
    truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    m, d = classification_report(onehot_probs(pred, 2), torch.tensor(truth), "classification", ["neg", "pos"])
    assert d["confusion_matrix"] == [[4, 2], [1, 3]]  # rows truth, columns prediction
    assert close(m["precision"], 3 / 5) and close(m["recall"], 3 / 4)
    assert close(m["specificity"], 4 / 6) and close(m["accuracy"], 7 / 10)
    assert close(m["f1"], 2 * 3 / (2 * 3 + 2 + 1))
    # RMSE of p(pos): right answers are 0.2 off, wrong ones 0.8
    assert close(m["rmse"], math.sqrt((7 * 0.2**2 + 3 * 0.8**2) / 10))


def test_known_auc_and_average_precision():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8], dtype=torch.float64)
    probs = torch.stack([1 - scores, scores], 1)
    m, _ = classification_report(probs, torch.tensor([0, 0, 1, 1]), "classification", ["a", "b"])
    # 3 of the 4 (positive, negative) pairs are ranked right
    assert close(m["auc"], 0.75)
    assert close(m["average_precision"], (1 + 2 / 3) / 2)
    assert close(m["rmse"], math.sqrt((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4))


def test_multiclass_macro_averages_by_hand():
    # confusion matrix (rows truth): [[3,0,0],[1,2,1],[1,0,2]]
    truth = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    pred = [0, 0, 0, 0, 1, 1, 2, 0, 2, 2]
    m, d = classification_report(onehot_probs(pred, 3), torch.tensor(truth), "classification", ["a", "b", "c"])
    assert d["confusion_matrix"] == [[3, 0, 0], [1, 2, 1], [1, 0, 2]]
    assert close(m["accuracy"], 7 / 10)  # micro
    assert close(m["precision"], (3 / 5 + 2 / 2 + 2 / 3) / 3)
    assert close(m["recall"], (3 / 3 + 2 / 4 + 2 / 3) / 3)
    assert close(m["specificity"], (5 / 7 + 6 / 6 + 6 / 7) / 3)
    assert close(m["f1"], (2 * 3 / 8 + 2 * 2 / 6 + 2 * 2 / 6) / 3)
    assert close(d["per_class"]["b"]["recall"], 0.5) and d["support"] == {"a": 3, "b": 4, "c": 3}
    # right rows: 0.2² + 2·0.1²; wrong rows: 0.8² + 0.9² + 0.1²; over 30 entries
    assert close(m["rmse"], math.sqrt((7 * 0.06 + 3 * 1.46) / 30))


def test_multilabel_is_macro_over_labels():
    target = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]])
    probs = torch.tensor([[0.9, 0.2], [0.3, 0.8], [0.1, 0.6], [0.2, 0.7]], dtype=torch.float64)
    m, d = classification_report(probs, target, "multilabel", ["x", "y"])
    # label x: TP1 FN1 TN2 -> recall 0.5, precision 1; label y: TP2 FP1 TN1 -> recall 1, precision 2/3
    assert close(m["recall"], 0.75) and close(m["precision"], (1 + 2 / 3) / 2)
    assert close(m["accuracy"], (3 / 4 + 3 / 4) / 2)
    assert d["confusion_matrix"][0] == [[2, 0], [1, 1]]
    assert close(m["auc"], (1.0 + 1.0) / 2)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (80,), generator=g)
    scores = (target + torch.randn(80, generator=g)).sigmoid().double()
    probs = torch.stack([1 - scores, scores], 1)
    a = bootstrap_auc_ci(probs, target, "classification", resamples=300, seed=1)
    b = bootstrap_auc_ci(probs, target, "classification", resamples=300, seed=1)
    c = bootstrap_auc_ci(probs, target, "classification", resamples=300, seed=2)
    auc = classification_report(probs, target, "classification", ["a", "b"])[0]["auc"]
    assert a == b and a != c and a["low"] < auc < a["high"] and a["resamples"] == 300 and a["unit"] == "image"
    # patients as the resampling unit: fewer independent units, a wider interval
    pairs = bootstrap_auc_ci(probs, target, "classification", groups=[f"p{i // 2}" for i in range(80)],
                             resamples=300, seed=1)
    assert pairs["unit"] == "patient"
    perfect = torch.stack([1 - target.double(), target.double()], 1)
    assert bootstrap_auc_ci(perfect, target, "classification", resamples=50)[("low")] == 1.0
    one_class = bootstrap_auc_ci(probs, torch.zeros(80, dtype=torch.long), "classification", resamples=50)
    assert math.isnan(one_class["low"]) and one_class["resamples"] == 0


def test_evaluate_writes_results_records_them_and_the_card_shows_test_metrics(ckpt):
    result = evaluate(ckpt, bootstrap=100)
    path = store.get_local(ckpt).path
    out = path / "eval" / "phantom_lesion-test"
    assert result.out_dir == out and result.n == 48
    for f in ("metrics.json", "predictions.csv", "roc.png", "pr.png", "confusion_matrix.png"):
        assert (out / f).stat().st_size > 0
    saved = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 48 and saved["n_images"] == 48 and "positive class" in saved["averaging"]
    # the metrics are the predictions' metrics: recount accuracy and the confusion matrix from the CSV
    right = sum(r["label"] == r["predicted"] for r in rows)
    assert close(saved["metrics"]["accuracy"], right / 48)
    cm = np.zeros((2, 2), int)
    for r in rows:
        cm[int(r["label"]), int(r["predicted"])] += 1
        assert close(float(r["p_absent"]) + float(r["p_present"]), 1, abs_tol=1e-5)
    assert saved["confusion_matrix"] == cm.tolist()
    # the test split is the dataset's own: same ids as its records
    source = medzoo.data.open_dataset("phantom_lesion")
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in source.split("test"))
    # recorded for the card, which now reports the test split
    lin = store.get_local(ckpt).lineage
    assert lin.evaluations["phantom_lesion-test"]["metrics"]["auc"] == saved["metrics"]["auc"]
    card = ModelCard(cards.render(store.get_local(ckpt), repo_id="lab/x"))
    assert "Test split of **phantom_lesion** (48 images" in card.text and "95% CI" in card.text
    assert card.data.to_dict()["model-index"][0]["results"][0]["dataset"]["split"] == "test"
    # another split goes to its own folder; the test results stay
    evaluate(ckpt, split="val", bootstrap=0)
    assert (path / "eval" / "phantom_lesion-val" / "metrics.json").is_file() and (out / "metrics.json").is_file()
    assert set(store.get_local(ckpt).lineage.evaluations) == {"phantom_lesion-test", "phantom_lesion-val"}
    # stale: other weights than the evaluated ones -> the card falls back to validation numbers
    config = json.loads((path / store.CONFIG).read_text())
    config["medzoo"]["evaluations"]["phantom_lesion-test"]["weights_sha256"] = "0" * 64
    (path / store.CONFIG).write_text(json.dumps(config))
    assert cards.evaluation_metrics(store.get_local(ckpt)).get("split") != "test"


def test_bad_input_is_one_line_and_writes_nothing(ckpt):
    path = store.get_local(ckpt).path
    before = (path / store.CONFIG).read_text()
    with pytest.raises(MedzooError, match="predicts classes .* but dataset 'phantom_agg'"):
        evaluate(ckpt, dataset="phantom_agg")
    with pytest.raises(MedzooError, match="unknown split 'tset'"):
        evaluate(ckpt, split="tset")
    assert not (path / "eval").exists() and (path / store.CONFIG).read_text() == before
    proc = run_cli("evaluate", ckpt, "--dataset", "phantom_lesoin", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "did you mean 'phantom_lesion'" in proc.stderr


class TinySeg(torch.nn.Module):
    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_chans, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_segmentation_confusion_matrix_is_accumulated_batch_by_batch(tmp_path):
    from medzoo.metrics import confusion_matrix, segmentation_metrics
    from medzoo_plugins.phantom import open_lesion

    registry().add("archs", ArchSpec(name="tiny_seg_eval", task="segmentation", build=lambda *, num_classes,
                                     in_chans=3, **kw: TinySeg(num_classes, in_chans)), plugin="test")
    registry().add("datasets", DatasetSpec(name="seg_eval", task="segmentation", open=lambda root=None, arg=None:
                                           open_lesion(task="segmentation", name="seg_eval")), plugin="test")
    d = store.checkpoints_dir() / "tiny_seg_eval-seg_eval"
    d.mkdir(parents=True)
    torch.manual_seed(0)
    store.save_tensors(d / store.WEIGHTS, TinySeg(2, 1).state_dict())
    stage = {"dataset": "seg_eval", "task": "segmentation", "classes": ["background", "lesion"],
             "recipe": {"image_size": 32, "in_chans": 1, "preprocess": None}}
    lineage = {"name": d.name, "arch": "tiny_seg_eval", "task": "segmentation", "in_chans": 1, "image_size": 32,
               "weights_sha256": models.sha256_file(d / store.WEIGHTS), "stages": [stage]}
    (d / store.CONFIG).write_text(json.dumps({"num_classes": 2, "label_names": ["background", "lesion"],
                                              "medzoo": lineage, "pretrained_cfg": {"mean": [0.5], "std": [0.25]}}))
    result = evaluate(d.name, batch_size=5)
    # the same numbers from all the split's logits at once
    model = medzoo.load(d.name)
    ds = medzoo.evaluation.eval_dataset(model, medzoo.data.open_dataset("seg_eval"), "test")
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    with torch.no_grad():
        cm = confusion_matrix(model(torch.stack(xs)), torch.stack(ys), 2)
    assert result.details["confusion_matrix"] == cm.tolist() and cm.sum() == 48 * 32 * 32
    expected = segmentation_metrics(cm, ["background", "lesion"])
    assert result.metrics["dice_lesion"] == pytest.approx(expected["dice_lesion"])
    assert "dice" in json.loads((d / "eval" / "seg_eval-test" / "metrics.json").read_text())["metrics"]


def test_errors_gallery_lists_exactly_the_misclassified_images(ckpt):
    import base64
    import re

    from medzoo.gallery import gallery

    path, wrong, shown = gallery(ckpt, right=5)
    assert path == store.get_local(ckpt).path / "eval" / "errors-phantom_lesion-test.html"
    page = path.read_text()
    # the reference: predictions of `medzoo evaluate`, from its predictions.csv
    result = evaluate(ckpt, bootstrap=0)
    rows = list(csv.DictReader(open(result.out_dir / "predictions.csv")))
    mistakes = {r["id"] for r in rows if r["label"] != r["predicted"]}
    assert mistakes, "the 1-epoch model should make mistakes, or this test checks nothing"
    cards = re.findall(r'<div class="card (wrong|right)" data-id="([^"]+)">', page)
    listed_wrong = [i for kind, i in cards if kind == "wrong"]
    assert len(listed_wrong) == wrong == len(set(listed_wrong)) and set(listed_wrong) == mistakes
    # sorted by confidence: mistakes most confident first, right answers least confident first
    conf = {r["id"]: max(float(r["p_absent"]), float(r["p_present"])) for r in rows}
    assert [conf[i] for i in listed_wrong] == sorted((conf[i] for i in listed_wrong), reverse=True)
    listed_right = [i for kind, i in cards if kind == "right"]
    rights = sorted(conf[r["id"]] for r in rows if r["label"] == r["predicted"])[:5]
    assert shown == 5 and [conf[i] for i in listed_right] == pytest.approx(rights, abs=1e-6)
    # self-contained: three embedded PNGs per card (original, model input, Grad-CAM), nothing fetched
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 * len(cards) and base64.b64decode(images[0])[:4] == b"\x89PNG"
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "true <b>" in page and "predicted <b>" in page and "p=" in page
    proc = run_cli("errors", ckpt, "--dataset", "nope", check=False)
    assert proc.returncode == 1 and "unknown dataset 'nope'" in proc.stderr


def test_errors_gallery_decides_at_the_stored_operating_point_and_keeps_foreign_files(ckpt, tmp_path):
    import re

    from medzoo import operating
    from medzoo.gallery import gallery

    result = evaluate(ckpt, bootstrap=0)  # stores the validation (Youden) point
    t = operating.read(store.get_local(ckpt).full_config()).thresholds["present"]
    rows = list(csv.DictReader(open(result.out_dir / "predictions.csv")))
    decided = {r["id"]: "1" if float(r["p_present"]) >= t else "0" for r in rows}
    mistakes = {r["id"] for r in rows if r["label"] != decided[r["id"]]}
    argmax_mistakes = {r["id"] for r in rows if r["label"] != r["predicted"]}
    assert mistakes != argmax_mistakes, "the threshold should move some decisions, or this test checks nothing"
    out = tmp_path / "errors.html"
    path, wrong, _ = gallery(ckpt, out=out, saliency=False)
    page = out.read_text()
    cards = re.findall(r'<div class="card (wrong|right)" data-id="([^"]+)">', page)
    listed = {i for kind, i in cards if kind == "wrong"}
    assert listed == mistakes and wrong == len(mistakes)
    assert "stored operating point" in page and f"p(present) ≥ {t:.4f}" in page
    # a file medzoo did not write is kept unless --overwrite; its own gallery is replaced
    gallery(ckpt, out=out, saliency=False)
    mine = tmp_path / "report.html"
    mine.write_text("<html>my notes</html>")
    with pytest.raises(MedzooError, match=r"report.html: a file medzoo did not write is there; .* --overwrite"):
        gallery(ckpt, out=mine, saliency=False)
    assert mine.read_text() == "<html>my notes</html>"
    proc = run_cli("errors", ckpt, "-o", str(mine), "--no-saliency", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and mine.read_text() == "<html>my notes</html>"
    run_cli("errors", ckpt, "-o", str(mine), "--no-saliency", "--overwrite")
    assert "my notes" not in mine.read_text() and "medzoo errors" in mine.read_text()


def test_out_folder_keeps_its_other_files_and_records_nothing(ckpt, tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "notes.txt").write_text("mine")
    before = (store.get_local(ckpt).path / store.CONFIG).read_text()
    result = evaluate(ckpt, out=res, bootstrap=0)
    assert result.out_dir == res / "phantom_lesion-test" and (result.out_dir / "metrics.json").is_file()
    assert (res / "notes.txt").read_text() == "mine"
    assert (store.get_local(ckpt).path / store.CONFIG).read_text() == before


def test_evaluating_a_dataset_given_by_a_300_character_path_keeps_the_path_out(tmp_path):
    import datagen as g
    from click.testing import CliRunner

    from medzoo.cli import cli
    from medzoo.gallery import gallery

    deep = tmp_path
    while len(str(deep)) < 300:
        deep = deep / "hospital_site_department_study_2026"
    data, seed = deep / "scans", 0
    for split, n in {"train": 5, "val": 2, "test": 3}.items():
        for c in "ab":
            for i in range(n):
                seed += 1
                g.write_png(data / split / c / f"{i}.png", g.pattern(seed + (50 if c == "b" else 0), (40, 40)))
    dataset = f"imagefolder:{data}"
    name = medzoo.train("timm:test_resnet", ["scratch", dataset], overrides=["epochs=1", "image_size=32",
                                                                             "batch_size=4"], precision="fp32")[-1].name
    res = CliRunner().invoke(cli, ["evaluate", name, "--dataset", dataset, "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    ckpt_ = store.get_local(name)
    config = (ckpt_.path / store.CONFIG).read_text()
    assert "hospital_site" not in config and str(tmp_path) not in config
    assert list(ckpt_.lineage.evaluations) == ["imagefolder:scans-test"]
    folder = ckpt_.path / ckpt_.lineage.evaluations["imagefolder:scans-test"]["path"]
    assert folder.parent == ckpt_.path / "eval" and folder.name.startswith("imagefolder_scans_")
    assert folder.name.endswith("-test") and len(folder.name) <= store.MAX_PART + 5
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["dataset"] == "imagefolder:scans" and "hospital_site" not in json.dumps(metrics)
    # the card reports the test evaluation, not the validation metrics
    assert cards.evaluation_metrics(ckpt_)["split"] == "test"
    assert "hospital_site" not in cards.render(ckpt_)
    path, _, _ = gallery(name, dataset=dataset)
    assert path.parent == ckpt_.path / "eval" and path.name.startswith("errors-imagefolder_scans_")
    assert "hospital_site" not in path.read_text()
