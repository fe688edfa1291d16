"""Metrics and the plots and tables of a stage's history."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _float(x: torch.Tensor | None) -> float:
    # torchmetrics' functional metrics are typed Optional: None (no value) reads as NaN, like an undefined AUC
    return float("nan") if x is None else float(x)


def classification_metrics(task: str, logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    from torchmetrics.functional.classification import accuracy, auroc

    kw: dict[str, Any]
    if task == "multilabel":
        probs, target = logits.sigmoid(), target.long()
        kw = {"task": "multilabel", "num_labels": num_classes}
        return {"auc": _float(auroc(probs, target, average="macro", **kw)),
                "accuracy": _float(accuracy(probs, target, **kw))}
    probs = logits.softmax(1)
    if num_classes == 2:
        p1 = probs[:, 1]
        auc = _float(auroc(p1, target, task="binary")) if target.unique().numel() > 1 else float("nan")
        return {"auc": auc, "accuracy": _float(accuracy(p1, target, task="binary"))}
    kw = {"task": "multiclass", "num_classes": num_classes}
    return {"auc": _float(auroc(probs, target, average="macro", **kw)),
            "accuracy": _float(accuracy(probs, target, average="micro", **kw))}


def write_history(history: list[dict], path: Path) -> None:
    import csv

    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def plot_history(history: list[dict], path: Path, title: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(epochs, [h.get(f"val_{metric}") for h in history], "o-", color="C2")
    b.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion_matrix(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """Pixel confusion matrix (rows: truth, columns: prediction) of a batch of segmentation logits."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(logits.argmax(1), target, num_classes, ignore_index=ignore_index,
                                       validate_args=False)


def segmentation_metrics(confmat: torch.Tensor, classes: list[str],
                         ignore_index: int | None = None) -> dict[str, float]:
    """Dice and IoU per class and their means, from a summed pixel confusion matrix.

    The means leave out the ignored code and a class named 'background' (it would flatter every model),
    and classes absent from both truth and prediction (their Dice is undefined, not perfect).
    """
    cm = confmat.double()
    tp = cm.diag()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    dice = 2 * tp / (2 * tp + fp + fn)
    iou = tp / (tp + fp + fn)
    out: dict[str, float] = {}
    counted = []
    for c, name in enumerate(classes):
        if c == ignore_index:
            continue
        out[f"dice_{name}"], out[f"iou_{name}"] = float(dice[c]), float(iou[c])
        if name != "background" and (tp[c] + fp[c] + fn[c]) > 0:
            counted.append(c)
    idx = torch.tensor(counted, dtype=torch.long)
    out["dice"] = float(dice[idx].mean()) if counted else float("nan")
    out["iou"] = float(iou[idx].mean()) if counted else float("nan")
    out["pixel_accuracy"] = float(tp.sum() / cm.sum()) if cm.sum() > 0 else float("nan")
    return out


class DiceCELoss(torch.nn.Module):
    """Cross-entropy + Dice (MONAI's MaskedDiceLoss), both blind to the ignore code (e.g. BCSS's 'outside ROI').

    MONAI's DiceCELoss has no ignore index, hence the pair. A class named 'background' at index 0 (or an
    ignored code 0) stays out of the Dice term, as is usual.
    """

    def __init__(self, ignore_index: int | None = None, background: bool = False):
        from monai.losses import DiceLoss, MaskedDiceLoss

        super().__init__()
        self.ignore_index = ignore_index
        self.ce = torch.nn.CrossEntropyLoss(ignore_index=-100 if ignore_index is None else ignore_index)
        dice = DiceLoss if ignore_index is None else MaskedDiceLoss
        self.dice = dice(include_background=not (background or ignore_index == 0), to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is None:
            return self.ce(logits, target) + self.dice(logits, target[:, None])
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))  # any real class: masked out below
        return self.ce(logits, target) + self.dice(logits, safe[:, None], mask=valid[:, None].float())


def plot_segmentation(images, truths, preds, classes, ignore_index, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20", max(2, len(classes)))
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.5 * len(images)), squeeze=False)
    for row, (img, truth, pred) in enumerate(zip(images, truths, preds)):
        x = img.float()
        x = ((x - x.min()) / (x.max() - x.min() + 1e-8)).permute(1, 2, 0).numpy()
        x = x[..., 0] if x.shape[-1] == 1 else x
        for col, (mask, label) in enumerate(((None, "image"), (truth, "truth"), (pred, "prediction"))):
            ax = axes[row][col]
            ax.imshow(x, cmap="gray")
            if mask is not None:
                m = mask.numpy().astype(float)
                hide = (m == ignore_index) if ignore_index is not None else np.zeros(m.shape, bool)
                if classes and classes[0] == "background":
                    hide |= m == 0
                ax.imshow(np.ma.masked_where(hide, m), cmap=cmap, vmin=0, vmax=len(classes) - 1, alpha=0.5,
                          interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def bootstrap(stat, probs: torch.Tensor, target: torch.Tensor, *, groups: Sequence[str | None] | None = None,
              resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap intervals of the figures ``stat(probs, target) -> {name: value}`` returns.

    Resamples *patients* with replacement when ``groups`` (patient ids) are given — two views of one
    patient are not independent evidence — else images. A resample in which no figure is defined (NaN:
    e.g. a class present in the data has no positives or no negatives) is drawn again, up to 10×
    ``resamples`` draws in all; each figure's interval is taken over the resamples that define it.
    Returns ``{"ci": {name: (low, high)}, "resamples", "seed", "level", "unit"}``.
    """
    target = target.long()
    rng = np.random.default_rng(seed)
    keys = groups if groups is not None and all(groups) else None
    if keys is not None:
        members: dict[str | None, list[int]] = {}
        for i, g in enumerate(keys):
            members.setdefault(g, []).append(i)
        clusters = [np.asarray(v) for v in members.values()]
    else:
        clusters = [np.asarray([i]) for i in range(len(target))]
    values: dict[str, list[float]] = {}
    kept, draws = 0, 0
    threads = torch.get_num_threads()
    # each resample is a few tiny tensors: handing them to the intra-op thread pool costs more than the work
    # (torchmetrics' ECE went from 0.25 ms to 7 ms per call with 2 threads on a busy 2-core machine)
    torch.set_num_threads(1)
    try:
        while kept < resamples and draws < 10 * resamples:
            draws += 1
            pick = rng.integers(0, len(clusters), len(clusters))
            idx = torch.from_numpy(np.concatenate([clusters[j] for j in pick]))
            figures = stat(probs[idx], target[idx])
            if all(math.isnan(v) for v in figures.values()):
                continue
            kept += 1
            for k, v in figures.items():
                if not math.isnan(v):
                    values.setdefault(k, []).append(v)
    finally:
        torch.set_num_threads(threads)
    tail = (1 - level) / 2 * 100
    ci = {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in values.items()}
    return {"ci": ci, "resamples": kept, "seed": seed, "level": level,
            "unit": "patient" if keys is not None else "image"}
