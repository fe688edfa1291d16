"""Figures of evaluations and experiment reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(probs: torch.Tensor, target: torch.Tensor, task: str, classes: list[str], out: Path,
                title: str) -> None:
    """``roc.png`` and ``pr.png``: the positive class for two classes, one curve per class (one-vs-rest)
    or per label otherwise. Classes without positives or negatives have no curve."""
    import torchmetrics.functional.classification as F

    plt = _plt()
    target = target.long()
    if task != "multilabel" and len(classes) == 2:
        series = [(classes[1], probs[:, 1].double(), target)]
    elif task == "multilabel":
        series = [(c, probs[:, i].double(), target[:, i]) for i, c in enumerate(classes)]
    else:
        series = [(c, probs[:, i].double(), (target == i).long()) for i, c in enumerate(classes)]
    series = [s for s in series if 0 < int(s[2].sum()) < len(s[2])]
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        for label, p, t in series:
            if kind == "roc":
                x, y, _ = F.binary_roc(p, t)
                auc = float(F.binary_auroc(p, t))
                ax.plot(x.numpy(), y.numpy(), label=f"{label} (AUC {auc:.3f})")
            else:
                y, x, _ = F.binary_precision_recall_curve(p, t)
                ap = float(F.binary_average_precision(p, t))
                ax.step(x.numpy(), y.numpy(), where="post", label=f"{label} (AP {ap:.3f})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
            ax.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)")
        else:
            ax.set(xlabel="recall (sensitivity)", ylabel="precision")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=("ROC" if kind == "roc" else "precision–recall"))
        if series:
            ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        else:
            ax.text(0.5, 0.5, "undefined: one class only", ha="center")
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{kind}.png", dpi=90)
        plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Counts with row-normalised shading (rows: truth); multilabel (L×2×2) gets one panel per label."""
    plt = _plt()
    mats = [(None, cm)] if cm.ndim == 2 else list(zip(classes, cm))
    fig, axes = plt.subplots(1, len(mats), figsize=(min(3.2 + 0.45 * cm.shape[-1], 12) * len(mats) ** 0.5 + 1,
                                                     3 + 0.4 * cm.shape[-1]), squeeze=False)
    for ax, (label, m) in zip(axes[0], mats):
        names = classes if label is None else ["neg", "pos"]
        rows = m.sum(1, keepdims=True)
        ax.imshow(np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0), cmap="Blues", vmin=0, vmax=1)
        big = m.max() > 0
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="white" if big and rows[i, 0] and v / rows[i, 0] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=label or "")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_bars(groups: list[str], series: dict[str, list[tuple[float, float]]], metrics: list[str], path: Path,
              title: str) -> None:
    """One panel per metric; bars = mean over seeds, error bars = standard deviation.
    ``series[chain]`` holds (mean, std) per (group, metric), in ``groups`` × ``metrics`` order."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 + 1.1 * len(groups) * len(series) ** 0.5, 3.4)
                             if len(metrics) == 1 else (3.2 * len(metrics), 3.4), squeeze=False)
    width = 0.8 / max(1, len(series))
    for m, (ax, metric) in enumerate(zip(axes[0], metrics)):
        for k, (chain, values) in enumerate(series.items()):
            pts = values[m * len(groups):(m + 1) * len(groups)]
            x = np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width
            ax.bar(x, [p[0] for p in pts], width, yerr=[0 if np.isnan(p[1]) else p[1] for p in pts], capsize=3,
                   label=chain)
        ax.set_xticks(range(len(groups)), groups, fontsize=7)
        ax.set(title=metric)
        if metric in ("auc", "accuracy", "f1", "precision", "recall", "specificity", "dice", "iou"):
            ax.set_ylim(0, 1.05)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + "  (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, list[list[dict]]], metric: str, path: Path, title: str) -> None:
    """Validation loss and metric of the final stage by epoch: mean over seeds, band = min..max."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, (label, runs) in enumerate(curves.items()):
        for ax, key in zip(axes, ("val_loss", f"val_{metric}")):
            epochs = max((len(r) for r in runs), default=0)
            rows = [[float(r[e][key]) if e < len(r) and r[e].get(key) not in (None, "") else np.nan
                     for e in range(epochs)] for r in runs]
            if not rows or not epochs:
                continue
            arr = np.asarray(rows, dtype=float)
            x = np.arange(1, epochs + 1)
            with np.errstate(all="ignore"):
                ax.plot(x, np.nanmean(arr, 0), "o-", ms=3, color=f"C{k}", label=label)
                if len(runs) > 1 and epochs > 1:
                    ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), color=f"C{k}", alpha=0.15)
                elif len(runs) > 1:  # one epoch: the band is a bar
                    mid = np.nanmean(arr, 0)
                    ax.errorbar(x, mid, yerr=[mid - np.nanmin(arr, 0), np.nanmax(arr, 0) - mid], color=f"C{k}",
                                capsize=3, fmt="none")
    from matplotlib.ticker import MaxNLocator

    longest = max((len(r) for runs in curves.values() for r in runs), default=1)
    for ax in axes:
        if longest <= 20:
            ax.set_xticks(range(1, longest + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, longest + 0.5)
    axes[0].set(xlabel="epoch", ylabel="validation loss")
    axes[1].set(xlabel="epoch", ylabel=f"validation {metric}")
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reliability(probs: torch.Tensor, target: torch.Tensor, task: str, classes: list[str], path: Path,
                     title: str, bins: int = 15) -> None:
    """Reliability diagram: in equal-width bins of predicted probability (the bins of the ECE), the observed
    fraction of positives against the mean prediction; marker size ∝ images in the bin.
    The positive class for two classes, each class one-vs-rest (each label) otherwise."""
    from .operating import kind_of, series

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for c, p, t in series(probs, target, kind_of(task, classes), classes)[:10]:
        pn, tn = p.numpy(), t.numpy()
        which = np.digitize(pn, edges[1:-1])  # bin k holds [k/bins, (k+1)/bins), as torchmetrics bins
        count = np.bincount(which, minlength=bins)
        used = count > 0
        conf = np.bincount(which, pn, bins)[used] / count[used]
        frac = np.bincount(which, tn.astype(float), bins)[used] / count[used]
        ax.plot(conf, frac, "-", lw=1)
        ax.scatter(conf, frac, s=8 + 60 * count[used] / max(1, count.max()), label=c)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="mean predicted probability",
           ylabel="observed fraction of positives", title=f"reliability ({bins} bins)")
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
