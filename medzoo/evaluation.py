"""Evaluating a checkpoint on a dataset split: ``medzoo evaluate NAME [--dataset D] [--split test]``.

The model is loaded with ``medzoo.load`` and fed exactly the trainer's evaluation input (the dataset opened
with the last stage's preprocessing, then ``medzoo.zoo.transform_config``). Classification metrics come from
torchmetrics; segmentation accumulates one pixel confusion matrix batch by batch (logits of a whole split
would not fit in memory for real slides) and scores it with ``medzoo.metrics.segmentation_metrics``.
Results go to ``eval/<dataset>-<split>/`` inside the checkpoint (replaced as a whole, never half-written)
and into ``config.json["medzoo"]["evaluations"]``, where the model card finds them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache as mzcache
from . import data as mzdata
from . import store
from ._version import __version__
from .metrics import bootstrap
from .registry import MedzooError

# How multi-class and multi-label results are averaged: written into every metrics.json and the docs.
AVERAGING = {
    "binary": "positive class = the second class ('{positive}'): precision, recall (sensitivity), specificity "
              "and F1 threshold its probability at 0.5; AUC and average precision rank it; sensitivity/"
              "specificity at 90/95% of the other, ECE and the operating point are those of the positive class",
    "multiclass": "prediction = the most probable class; precision, recall, specificity, F1, AUC (one-vs-rest) "
                  "and average precision are macro averages over the classes present (each class counts "
                  "equally); accuracy is micro (the fraction of images predicted right); sensitivity/specificity "
                  "at 90/95% of the other and ECE are per class one-vs-rest (per_class_operating), their macro "
                  "mean over classes with positives and negatives in metrics; the operating point has one-vs-rest "
                  "thresholds per class, reported only (the decision stays the most probable class)",
    "multilabel": "each label thresholded at 0.5; precision, recall, specificity, F1, accuracy, AUC and average "
                  "precision are macro averages over labels (each label counts equally); sensitivity/specificity "
                  "at 90/95% of the other and ECE per label (per_class_operating), their macro mean in metrics; "
                  "the operating point has one threshold per label, each applied to its label",
    "segmentation": "Dice and IoU per class from the summed pixel confusion matrix; the means leave out "
                    "'background', the ignored code and classes absent from truth and prediction",
}
RMSE_DEFINITION = ("root mean squared difference between the predicted probabilities and the one-hot truth, "
                   "over images and classes (for two classes: between p(positive) and the 0/1 label)")


@dataclass
class Predictions:
    """Per-image outputs of a classification model on one split."""

    records: list[mzdata.Record]
    probs: torch.Tensor  # N×C probabilities (softmax; sigmoid for multilabel)
    target: torch.Tensor  # N class indices (N×C multi-hot for multilabel)
    classes: list[str]
    task: str

    @property
    def predicted(self) -> torch.Tensor:
        return (self.probs >= 0.5).long() if self.task == "multilabel" else self.probs.argmax(1)


@dataclass
class Evaluation:
    name: str
    dataset: str
    split: str
    task: str
    n: int
    metrics: dict[str, Any]  # scalars (NaN where undefined)
    details: dict[str, Any] = field(default_factory=dict)  # confusion matrix, per class, CI, averaging
    out_dir: Path | None = None
    operating_point: Any = None  # medzoo.operating.OperatingPoint applied to the split (classifiers)


# -- metrics ------------------------------------------------------------------------------------

def classification_report(probs: torch.Tensor, target: torch.Tensor, task: str,
                          classes: list[str]) -> tuple[dict, dict]:
    """Scalar metrics and details (confusion matrix, per-class values) from probabilities and truth."""
    import torchmetrics.functional.classification as F

    probs, n = probs.double(), len(classes)
    if task == "multilabel":
        target = target.long()
        kw: dict[str, Any] = {"num_labels": n, "validate_args": False}
        fns: dict[str, Callable[..., torch.Tensor]] = {
            "precision": F.multilabel_precision, "recall": F.multilabel_recall,
            "specificity": F.multilabel_specificity, "f1": F.multilabel_f1_score}
        scalars: dict[str, torch.Tensor | float] = {k: fn(probs, target, average="macro", **kw)
                                                    for k, fn in fns.items()}
        per = {k: fn(probs, target, average=None, **kw) for k, fn in fns.items()}
        scalars["accuracy"] = F.multilabel_accuracy(probs, target, average="macro", **kw)
        auc_ok = [c for c in range(n) if 0 < int(target[:, c].sum()) < len(target)]
        per_auc = F.multilabel_auroc(probs, target, average=None, **kw)
        scalars["auc"] = per_auc[auc_ok].mean() if auc_ok else float("nan")
        scalars["average_precision"] = F.multilabel_average_precision(probs, target, average="macro", **kw)
        cm = F.multilabel_confusion_matrix(probs, target, **kw)
        onehot = target.double()
        support = target.sum(0)
    elif n == 2:
        p1, target = probs[:, 1], target.long()
        kw = {"validate_args": False}
        fns = {"precision": F.binary_precision, "recall": F.binary_recall, "specificity": F.binary_specificity,
               "f1": F.binary_f1_score, "accuracy": F.binary_accuracy}
        scalars = {k: fn(p1, target, **kw) for k, fn in fns.items()}
        both = target.unique().numel() == 2
        scalars["auc"] = F.binary_auroc(p1, target, **kw) if both else float("nan")
        scalars["average_precision"] = F.binary_average_precision(p1, target, **kw) if both else float("nan")
        cm = F.binary_confusion_matrix(p1, target, **kw)
        per = {}
        onehot = torch.nn.functional.one_hot(target, 2).double()
        support = torch.bincount(target, minlength=2)
    else:
        target = target.long()
        kw = {"num_classes": n, "validate_args": False}
        fns = {"precision": F.multiclass_precision, "recall": F.multiclass_recall,
               "specificity": F.multiclass_specificity, "f1": F.multiclass_f1_score}
        scalars = {k: fn(probs, target, average="macro", **kw) for k, fn in fns.items()}
        per = {k: fn(probs, target, average=None, **kw) for k, fn in fns.items()}
        scalars["accuracy"] = F.multiclass_accuracy(probs, target, average="micro", **kw)
        support = torch.bincount(target, minlength=n)
        present = [c for c in range(n) if 0 < int(support[c]) < len(target)]
        per_auc = F.multiclass_auroc(probs, target, average=None, **kw)
        scalars["auc"] = per_auc[present].mean() if present else float("nan")
        scalars["average_precision"] = F.multiclass_average_precision(probs, target, average="macro", **kw)
        cm = F.multiclass_confusion_matrix(probs, target, **kw)
        onehot = torch.nn.functional.one_hot(target, n).double()
    scalars["rmse"] = torch.sqrt(((probs - onehot) ** 2).mean())
    metrics = {k: _num(v) for k, v in scalars.items()}
    details: dict[str, Any] = {"confusion_matrix": cm.tolist(),
                               "support": {c: int(s) for c, s in zip(classes, support)}}
    if per:
        per["auc"] = per_auc
        details["per_class"] = {c: {k: _num(v[i]) for k, v in per.items()} for i, c in enumerate(classes)}
    return metrics, details


def _num(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def auc_of(probs: torch.Tensor, target: torch.Tensor, task: str, num: int) -> float:
    """The AUC that ``classification_report`` reports (NaN where a class has no positives or negatives)."""
    import torchmetrics.functional.classification as F

    if task == "multilabel":
        ok = [c for c in range(num) if 0 < int(target[:, c].sum()) < len(target)]
        if not ok:
            return math.nan
        return float(F.multilabel_auroc(probs, target.long(), num, average=None, validate_args=False)[ok].mean())
    if num == 2:
        if target.unique().numel() != 2:
            return math.nan
        return float(F.binary_auroc(probs[:, 1], target, validate_args=False))
    counts = torch.bincount(target, minlength=num)
    ok = [c for c in range(num) if 0 < int(counts[c]) < len(target)]
    if not ok:
        return math.nan
    return float(F.multiclass_auroc(probs, target, num, average=None, validate_args=False)[ok].mean())


def bootstrap_auc_ci(probs: torch.Tensor, target: torch.Tensor, task: str, *, groups: list[str | None] | None = None,
                     resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap confidence interval of the AUC (``bootstrap`` below)."""
    num = probs.shape[1]
    target = target.long()
    if resamples <= 0 or math.isnan(auc_of(probs, target, task, num)):
        return {"low": math.nan, "high": math.nan, "resamples": 0, "seed": seed, "level": level, "unit": "none"}
    out = bootstrap(lambda p, t: {"auc": auc_of(p, t, task, num)}, probs, target, groups=groups,
                    resamples=resamples, seed=seed, level=level)
    low, high = out.pop("ci")["auc"]
    return {"low": low, "high": high, **out}


# -- running the model --------------------------------------------------------------------------

def open_for(model, dataset: str | None, split: str,
             data_root: str | dict | None = None) -> tuple[mzdata.DataSource, str]:
    """The dataset a checkpoint is evaluated on, opened with its last stage's preprocessing; checks that
    the classes match the model's outputs and that the split has images. ``data_root``: a path, or
    ``{dataset: path}`` (the CLI's ``--data-root``)."""
    lin = model.medzoo_lineage
    last = lin.last
    if not dataset and last is not None and (last.data or {}).get("given_by_path"):
        raise MedzooError(f"{model.medzoo_origin} was trained on a dataset given by path ({last.dataset}), which "
                          f"its metadata does not record; name it with --dataset {last.dataset.partition(':')[0]}:PATH")
    dataset = dataset or (last.dataset if last else None)
    if not dataset:
        raise MedzooError(f"{model.medzoo_origin} records no training dataset; name one with --dataset")
    recipe = last.recipe if last else {}
    # the model's input is what the last stage trained on: its preprocessing, whichever dataset is scored
    root = mzdata.root_for(data_root, dataset)
    source = mzcache.open_dataset(dataset, root, preprocess=recipe.get("preprocess"))
    task = lin.task
    if source.task != task:
        raise MedzooError(f"{model.medzoo_origin} is a {task} model but dataset '{dataset}' is {source.task}; "
                          f"evaluate it on a {task} dataset")
    classes = list(last.classes) if last else []
    if classes and list(source.classes) != classes:
        raise MedzooError(f"{model.medzoo_origin} predicts classes {classes} but dataset '{dataset}' has "
                          f"{list(source.classes)}; evaluate on a dataset with the same classes in the same order")
    if split not in mzdata.SPLITS:
        raise MedzooError(f"unknown split '{split}'; use one of {', '.join(mzdata.SPLITS)}")
    if split == "val" and not source.split("val"):
        mzdata.carve_val_split(source)  # the validation set the trainer carved out of training
    if not source.split(split):
        counts = {s: len(source.split(s)) for s in mzdata.SPLITS if source.split(s)}
        raise MedzooError(f"dataset '{dataset}' has no '{split}' images (it has {counts}); pick another --split")
    return source, dataset


def eval_dataset(model, source: mzdata.DataSource, split: str) -> mzdata.TorchDataset:
    from .zoo import transform_config

    cfg = transform_config(model)
    return mzdata.TorchDataset(source, split, mzdata.build_transform(cfg, train=False), cfg.in_chans)


def _batches(model, ds, device, batch_size: int):
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.inference_mode():
        for x, y in loader:
            yield model(x.to(device)).float().cpu(), y


def predict(model, source: mzdata.DataSource, split: str, *, device: torch.device, batch_size: int = 64) -> Predictions:
    """Class probabilities for every image of a split, in the split's record order."""
    ds = eval_dataset(model, source, split)
    outs, targets = [], []
    for logits, y in _batches(model, ds, device, batch_size):
        outs.append(logits.sigmoid() if source.task == "multilabel" else logits.softmax(1))
        targets.append(y)
    return Predictions(ds.records, torch.cat(outs), torch.cat(targets), list(source.classes), source.task)


def segmentation_confmat(model, source: mzdata.DataSource, split: str, *, device: torch.device,
                         batch_size: int = 16) -> torch.Tensor:
    """The pixel confusion matrix of a split, summed batch by batch (logits are dropped after each batch)."""
    from .metrics import confusion_matrix

    n = len(source.classes)
    total = torch.zeros(n, n, dtype=torch.long)
    for logits, y in _batches(model, eval_dataset(model, source, split), device, batch_size):
        total += confusion_matrix(logits, y.long(), n, ignore_index=source.ignore_index).long()
    return total


# -- the command --------------------------------------------------------------------------------

def evaluate(name: str, *, dataset: str | None = None, split: str = "test", data_root: str | dict | None = None,
             device: str | None = None, batch_size: int = 64, bootstrap: int = 1000, seed: int = 0,
             out: str | Path | None = None, write: bool = True, model=None, target_sensitivity: float | None = None,
             target_specificity: float | None = None, store_threshold: bool = False) -> Evaluation:
    """Evaluate checkpoint ``name`` (anything ``medzoo.load`` accepts) on a split of a dataset.

    Writes ``metrics.json``, ``predictions.csv`` and plots to ``<dataset>-<split>/`` in ``out`` (default:
    ``eval/`` in a local checkpoint, ``$MEDZOO_HOME/evaluations/<name>/`` otherwise) and, for a local
    checkpoint without ``out``, records the metrics in its ``config.json`` for the model card.

    Classifiers also get an operating point (``medzoo.operating``): the stored one, else one chosen on the
    validation split (Youden's J, or ``target_sensitivity``/``target_specificity``) and stored in a local
    checkpoint that has none; a stored point is replaced only with ``store_threshold``.
    """
    from . import operating
    from .devices import pick_device
    from .zoo import load

    dev = pick_device(device)
    if batch_size < 1 or bootstrap < 0:
        raise MedzooError("--batch-size must be ≥ 1 and --bootstrap ≥ 0")
    asked = operating.rule_of(target_sensitivity, target_specificity)
    local = store.find_local(str(name)) if write else None
    can_store = local is not None and not out
    op_point, write_point = None, False
    if store_threshold and not can_store:
        raise MedzooError("--store-threshold stores the point in a local checkpoint's config.json, and this evaluation "
                          "records nothing (a model outside the local store, or --out); drop --store-threshold")
    model = model if model is not None else load(name, device=dev)
    source, dataset = open_for(model, dataset, split, data_root)
    task = source.task
    if task == "segmentation" and (asked or store_threshold):
        raise MedzooError("--target-sensitivity, --target-specificity and --store-threshold choose a classifier's "
                          "decision threshold; a segmentation model has none: drop them")
    started = time.time()
    if task == "segmentation":
        from .metrics import segmentation_metrics

        cm = segmentation_confmat(model, source, split, device=dev, batch_size=batch_size)
        metrics = segmentation_metrics(cm, list(source.classes), source.ignore_index)
        details: dict[str, Any] = {"confusion_matrix": cm.tolist(), "averaging": AVERAGING["segmentation"]}
        preds = None
        n = len(source.split(split))
    else:
        preds = predict(model, source, split, device=dev, batch_size=batch_size)
        metrics, details = classification_report(preds.probs, preds.target, task, preds.classes)
        ci = bootstrap_auc_ci(preds.probs, preds.target, task, groups=[r.patient for r in preds.records],
                              resamples=bootstrap, seed=seed)
        metrics["auc_ci_low"], metrics["auc_ci_high"] = ci["low"], ci["high"]
        kind = "multilabel" if task == "multilabel" else ("binary" if len(preds.classes) == 2 else "multiclass")
        details.update(averaging=AVERAGING[kind].format(positive=preds.classes[-1]), rmse=RMSE_DEFINITION,
                       auc_ci=ci)
        groups = [r.patient for r in preds.records]
        cal_metrics, cal_details = operating.calibration_report(preds.probs, preds.target, task, preds.classes,
                                                                groups=groups, resamples=bootstrap, seed=seed)
        metrics.update(cal_metrics)
        details.update(cal_details)

        def val_preds() -> Predictions:
            if not source.split("val"):
                mzdata.carve_val_split(source)
            if not source.split("val"):
                raise MedzooError(f"dataset '{dataset}' has no validation images to choose a threshold on")
            return predict(model, source, "val", device=dev, batch_size=batch_size)

        # what the store holds decides what is kept or replaced (a model passed in may not say); a broken
        # stored point stops the evaluation, unless --store-threshold is there to replace it
        try:
            stored_point = (operating.read(local.full_config(), f"checkpoint '{local.name}'",
                                           weights_sha256=model.medzoo_lineage.weights_sha256) if local is not None
                            else getattr(model, "medzoo_operating_point", None))
        except MedzooError:
            if not store_threshold:
                raise
            stored_point = None
        chosen = operating.at_evaluation(model, source, split, preds, dataset=store.public_dataset(dataset),
                                         groups=groups, stored=stored_point, asked=asked, store_it=store_threshold,
                                         can_store=can_store,
                                         resamples=bootstrap, seed=seed, val_preds=val_preds)
        if chosen is not None:
            op_point, details["operating_point"], write_point = chosen
        n = len(preds.records)
    lin = model.medzoo_lineage
    # a path-given dataset is named by its folder in what is kept and published (config.json, metrics.json)
    pub = store.public_dataset(dataset)
    result = Evaluation(lin.name or str(name), pub, split, task, n, metrics, details,
                        operating_point=op_point)
    log = f"[{result.name}] {dataset}/{split} ({n} images): " + "  ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if k in HEADLINE and not math.isnan(v))
    if not math.isnan(metrics.get("auc_ci_low", math.nan)):
        log += f"  (AUC 95% CI {metrics['auc_ci_low']:.4f}–{metrics['auc_ci_high']:.4f})"
    print(log, flush=True)
    if result.operating_point is not None:
        print(f"[{result.name}] " + operating.summary(details["operating_point"]), flush=True)
    if write:
        parent = Path(out) if out else (local.path / "eval" if local
                                        else store.home() / "evaluations" / store.slug(str(name)))
        # a folder of its own (--out DIR's other files stay), bounded in length and path-free
        where = parent / f"{eval_folder(dataset, source)}-{split}"
        payload = {"checkpoint": result.name, "origin": model.medzoo_origin,
                   "weights_sha256": lin.weights_sha256, "dataset": pub, "split": split, "task": task,
                   "n_images": n, "classes": list(source.classes), "metrics": metrics, **details,
                   "evaluated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "seconds": round(time.time() - started, 1), "medzoo": __version__}
        result.out_dir = _write(where, payload, preds)
        if local is not None and not out:
            record(local, payload, result.out_dir)
            if result.operating_point is not None and write_point:
                operating.write(local.path, result.operating_point)
        print(f"[{result.name}] wrote {result.out_dir}", flush=True)
    return result


def eval_folder(dataset: str, source: mzdata.DataSource) -> str:
    """How a dataset is named in evaluation folders and gallery files: as in checkpoint names (a path-given
    one by its folder's name and a hash of its identity), never long enough to hit a file-name limit."""
    return store.dataset_part(dataset, source.fingerprint() if store.is_path_arg(dataset.partition(":")[2]) else "")


HEADLINE = ("auc", "accuracy", "f1", "precision", "recall", "specificity", "rmse", "dice", "iou")


def json_safe(obj: Any) -> Any:
    """NaN is not JSON: undefined values are written as null."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _write(final: Path, payload: dict[str, Any], preds: Predictions | None) -> Path:
    """Assemble the evaluation folder under a temporary name, then swap it in: a reader sees the old
    results or the new, and other datasets' and splits' folders are never touched."""
    from .plots import plot_confusion, plot_curves, plot_reliability

    tmp = store.new_tmp_dir(final.parent, final.name)
    try:
        (tmp / "metrics.json").write_text(json.dumps(json_safe(payload), indent=2))
        title = f"{payload['checkpoint']}\n{payload['dataset']}/{payload['split']}"
        if preds is not None:
            (tmp / "predictions.csv").write_text(predictions_csv(preds))
            plot_curves(preds.probs, preds.target, preds.task, preds.classes, tmp, title)
            plot_reliability(preds.probs, preds.target, preds.task, preds.classes, tmp / "reliability.png", title)
        plot_confusion(np.asarray(payload["confusion_matrix"]), payload["classes"], tmp / "confusion_matrix.png", title)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store.swap_dir(tmp, final)
    return final


def predictions_csv(preds: Predictions) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "patient", "label", "predicted", *[f"p_{c}" for c in preds.classes]])
    for r, t, p, probs in zip(preds.records, preds.target.tolist(), preds.predicted.tolist(), preds.probs.tolist()):
        w.writerow([r.id, r.patient or "", t, p, *[f"{v:.6f}" for v in probs]])
    return buf.getvalue()


def record(ckpt: store.Checkpoint, payload: dict[str, Any], out_dir: Path) -> None:
    """Note the evaluation in the checkpoint's config.json (``medzoo.evaluations["<dataset>-<split>"]``): the
    model card reports it, ``medzoo publish`` ships it. The weights hash says which weights were scored."""
    fresh = store.read_checkpoint(ckpt.path)  # re-read: another evaluation may have been recorded since
    fresh.lineage.evaluations[f"{payload['dataset']}-{payload['split']}"] = json_safe({
        k: payload[k] for k in ("dataset", "split", "n_images", "metrics", "averaging", "weights_sha256", "evaluated")
        if k in payload} | {"path": str(out_dir.relative_to(ckpt.path))})
    store.write_config(fresh.path, fresh.config, fresh.lineage)
