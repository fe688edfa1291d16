"""Operating points and calibration of classifiers.

An ``OperatingPoint`` is a decision threshold per class chosen on the **validation** split (Youden's J, or
the highest specificity at a target sensitivity, or the reverse) and kept in the checkpoint's
``config.json`` under the top-level ``operating_point`` key, beside the timm config, so it travels with
``medzoo publish`` and comes back with ``medzoo.load``. ``read``/``write`` below are its one reader and
writer. Threshold-free figures (sensitivity at 90/95% specificity and the reverse, expected calibration
error) come from torchmetrics; classes of multi-class and multi-label models are scored one-vs-rest.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .naming import public_dataset
from .registry import MedzooError

KEY = "operating_point"  # top-level key of config.json
RULES = ("youden", "sensitivity", "specificity")  # Youden's J, or a target sensitivity / specificity
LEVELS = (0.90, 0.95)  # the fixed levels of the threshold-free figures
FIGURES = ("sensitivity", "specificity", "ppv", "npv")
ECE_BINS = 15  # torchmetrics' default, and the reliability diagram's bins


def kind_of(task: str, classes: list[str]) -> str:
    return "multilabel" if task == "multilabel" else ("binary" if len(classes) == 2 else "multiclass")


def series(probs: torch.Tensor, target: torch.Tensor, kind: str,
           classes: list[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(class, p(class), 0/1 truth) per scored class: the positive class for two classes, else every class
    one-vs-rest (every label for multi-label)."""
    probs, target = probs.double(), target.long()
    if kind == "binary":
        return [(classes[1], probs[:, 1].contiguous(), target)]
    if kind == "multilabel":
        return [(c, probs[:, i].contiguous(), target[:, i].contiguous()) for i, c in enumerate(classes)]
    return [(c, probs[:, i].contiguous(), (target == i).long()) for i, c in enumerate(classes)]


def _both(t: torch.Tensor) -> bool:
    return 0 < int(t.sum()) < len(t)


# -- threshold-free figures ---------------------------------------------------------------------

def threshold_free(p: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """Sensitivity at 90/95% specificity, specificity at 90/95% sensitivity (torchmetrics: the best value
    over the ROC's thresholds; 0 when no threshold reaches the level) and the ECE of one class."""
    import torchmetrics.functional.classification as F

    out: dict[str, float] = {}
    p = p.contiguous()  # torch.bucketize (in the ECE) warns on strided columns
    if _both(t):
        for level in LEVELS:
            pct = round(level * 100)
            out[f"sens_at_spec{pct}"] = float(F.binary_sensitivity_at_specificity(p, t, level, validate_args=False)[0])
            out[f"spec_at_sens{pct}"] = float(F.binary_specificity_at_sensitivity(p, t, level, validate_args=False)[0])
    else:
        out.update({f"{k}{round(level * 100)}": math.nan for level in LEVELS for k in ("sens_at_spec", "spec_at_sens")})
    out["ece"] = float(F.binary_calibration_error(p, t, n_bins=ECE_BINS, validate_args=False)) if len(t) else math.nan
    return out


def figures_at(p: torch.Tensor, t: torch.Tensor, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV when ``p >= threshold`` is called positive. Counted here because
    torchmetrics' stat scores call ``p > threshold`` positive, while its ROC (where the threshold comes
    from) counts ``p >= threshold``: a threshold at a score would flip that image."""
    pos = p >= threshold
    truth = t.bool()
    tp, fp = int((pos & truth).sum()), int((pos & ~truth).sum())
    fn, tn = int((~pos & truth).sum()), int((~pos & ~truth).sum())

    def ratio(a: int, b: int) -> float:
        return a / (a + b) if a + b else math.nan

    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn)}


def choose(p: torch.Tensor, t: torch.Tensor, rule: str, target: float | None) -> float:
    """The threshold of one class on validation data under ``rule``."""
    import torchmetrics.functional.classification as F

    if not _both(t):
        return math.nan
    if rule == "youden":
        fpr, tpr, thr = F.binary_roc(p, t, validate_args=False)
        j = tpr - fpr
        return float(thr[int(torch.argmax(j))])  # the first (highest) threshold of the best J
    if target is None:
        raise MedzooError(f"the '{rule}' rule needs a target level, e.g. 0.9")
    fn = F.binary_specificity_at_sensitivity if rule == "sensitivity" else F.binary_sensitivity_at_specificity
    return float(fn(p, t, float(target), validate_args=False)[1])


# -- the stored point ---------------------------------------------------------------------------

@dataclass
class OperatingPoint:
    """Thresholds chosen on a validation split, and what they gave there (and on test, once evaluated)."""

    thresholds: dict[str, float]  # class -> threshold; two classes: the positive (second) class only
    rule: str  # one of RULES
    target: float | None  # the target sensitivity/specificity (None for youden)
    split: str  # the split it was chosen on: never "test"
    dataset: str  # the dataset it was chosen on (public name)
    classes: list[str]  # the model's classes, in output order
    kind: str  # binary | multiclass | multilabel
    weights_sha256: str  # the weights it was chosen for
    val: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> figures on the split it was chosen on
    test: dict[str, Any] = field(default_factory=dict)  # dataset, split, n_images, per class figures (+ CI)
    chosen: str = ""  # UTC date

    @property
    def rule_text(self) -> str:
        if self.rule == "youden":
            return "Youden's J (max sensitivity + specificity − 1)"
        other = "specificity" if self.rule == "sensitivity" else "sensitivity"
        return f"highest {other} at {self.rule} ≥ {self.target:g}"

    def decide(self, probs) -> list[str]:
        """One decision per image (rows of an N×C probability array, or one C vector): two classes: the
        positive class if its probability ≥ its threshold, else the other; multi-label: the labels at or
        above their thresholds joined by ';' ('' for none); multi-class: the most probable class (the
        per-class thresholds are reported, not applied)."""
        p = torch.as_tensor(probs, dtype=torch.float64)
        p = p[None] if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[1] != len(self.classes):
            raise MedzooError(f"decide() needs N×{len(self.classes)} probabilities (classes {self.classes}), "
                              f"got shape {tuple(p.shape)}")
        if self.kind == "binary":
            t = self.thresholds[self.classes[1]]
            return [self.classes[1] if v >= t else self.classes[0] for v in p[:, 1].tolist()]
        if self.kind == "multilabel":
            ts = torch.tensor([self.thresholds[c] for c in self.classes], dtype=torch.float64)
            return [";".join(c for c, on in zip(self.classes, row) if on) for row in (p >= ts).tolist()]
        return [self.classes[i] for i in p.argmax(1).tolist()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config.json") -> OperatingPoint:
        def bad(what: str) -> MedzooError:
            return MedzooError(f"{where}: its {KEY} is broken ({what}); re-run `medzoo evaluate NAME "
                               "--store-threshold` to choose it again")

        if not isinstance(d, dict):
            raise bad("not an object")
        names = {f for f in cls.__dataclass_fields__}
        if missing := {"thresholds", "rule", "split", "dataset", "classes", "kind", "weights_sha256"} - set(d):
            raise bad(f"no {', '.join(sorted(missing))}")
        d = {k: v for k, v in d.items() if k in names}
        classes, th = d["classes"], d["thresholds"]
        if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
            raise bad("classes is not a list of names")
        if d["kind"] not in ("binary", "multiclass", "multilabel") or d["rule"] not in RULES:
            raise bad(f"kind {d['kind']!r} / rule {d['rule']!r}")
        if d["split"] == "test":
            raise bad("it was chosen on the test split, which would make the test figures optimistic")
        if not isinstance(th, dict) or not all(c in classes and isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for c, v in th.items()):
            raise bad("thresholds is not {class: number}")
        want = {"binary": {classes[1]}, "multilabel": set(classes)}.get(d["kind"])
        if (set(th) != want) if want is not None else not set(th) <= set(classes):
            raise bad("its thresholds do not match its classes")
        target = d.get("target")
        if d["rule"] != "youden" and not (isinstance(target, (int, float)) and 0 < target < 1):
            raise bad(f"target {target!r}")
        return cls(**d)


def read(config: dict[str, Any], where: str = "config.json", *,
         weights_sha256: str | None = None) -> OperatingPoint | None:
    """The operating point stored in a checkpoint's config.json (with or without its "medzoo" key), or None.
    A point chosen for other weights than ``weights_sha256`` is stale: None, never applied to these."""
    raw = config.get(KEY)
    if raw is None:
        return None
    op = OperatingPoint.from_dict(raw, where)
    labels = config.get("label_names")
    if labels is not None and list(labels) != op.classes:
        raise MedzooError(f"{where}: its {KEY} is for classes {op.classes}, the model predicts {labels}; "
                          "re-run `medzoo evaluate NAME --store-threshold`")
    if weights_sha256 and op.weights_sha256 != weights_sha256:
        return None
    return op


def write(path: Path, op: OperatingPoint) -> None:
    """Store ``op`` in the checkpoint at ``path`` (config.json rewritten atomically, the rest as it was)."""
    from . import store

    OperatingPoint.from_dict(op.to_dict(), str(path))  # never write what read() would refuse
    fresh = store.read_checkpoint(path)
    store.write_config(path, {**fresh.config, KEY: _finite(op.to_dict())}, fresh.lineage)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def rule_of(target_sensitivity: float | None, target_specificity: float | None) -> tuple[str, float | None] | None:
    """The rule the flags ask for (None when neither is given); one line for a bad value."""
    if target_sensitivity is not None and target_specificity is not None:
        raise MedzooError("--target-sensitivity and --target-specificity exclude each other; give one")
    for flag, value, rule in (("--target-sensitivity", target_sensitivity, "sensitivity"),
                              ("--target-specificity", target_specificity, "specificity")):
        if value is not None:
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise MedzooError(f"{flag} {value!r} is not a fraction between 0 and 1; write e.g. {flag} 0.9")
            return rule, float(value)
    return None


def choose_point(probs: torch.Tensor, target: torch.Tensor, task: str, classes: list[str], *, rule: str,
                 level: float | None, split: str, dataset: str, weights_sha256: str) -> OperatingPoint:
    """Choose thresholds on a validation split (refused on test) and record the figures they give there."""
    if split == "test":
        raise MedzooError("a threshold chosen on the test split would make its test figures optimistic; "
                          "choose it on the validation split")
    kind = kind_of(task, classes)
    thresholds, val = {}, {}
    for c, p, t in series(probs, target, kind, classes):
        th = choose(p, t, rule, level)
        if math.isnan(th):
            if kind != "multiclass":
                lacks = "positives" if not int(t.sum()) else "negatives"
                raise MedzooError(f"the {split} split of {dataset} has no {lacks} for '{c}', so no threshold can "
                                  f"be chosen on it; evaluate on a dataset whose {split} split has both")
            continue
        figs = figures_at(p, t, th)
        if rule != "youden" and level is not None and figs[rule] < level:
            raise MedzooError(f"no threshold reaches {rule} {level:g} for '{c}' on the {split} split of {dataset} "
                              f"(best {figs[rule]:.3f}); lower the target")
        # undefined figures (no calls, so no PPV) are None, as config.json keeps them
        thresholds[c], val[c] = th, _finite({**figs, "n_positive": int(t.sum()), "n_negative": int(len(t) - t.sum())})
    return OperatingPoint(thresholds, rule, level, split, dataset, list(classes), kind, weights_sha256, val,
                          chosen=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# -- in `medzoo evaluate` -----------------------------------------------------------------------

def _figures_free(probs, target, kind, classes) -> dict[str, float]:
    """Threshold-free figures, flat: ``name`` (binary: the positive class; else the macro mean over classes
    that have positives and negatives) and ``class/name`` per class."""
    out: dict[str, float] = {}
    per = {c: threshold_free(p, t) for c, p, t in series(probs, target, kind, classes)}
    for c, figs in per.items():
        out.update({f"{c}/{k}": v for k, v in figs.items()})
    for k in next(iter(per.values()), {}):
        vals = [figs[k] for figs in per.values() if not math.isnan(figs[k])]
        out[k] = sum(vals) / len(vals) if vals else math.nan
    return out


def calibration_report(probs: torch.Tensor, target: torch.Tensor, task: str, classes: list[str], *,
                       groups: list[str | None] | None, resamples: int,
                       seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Sensitivity at 90/95% specificity, specificity at 90/95% sensitivity and ECE, each with a bootstrap
    interval (by patient when there are patient ids): scalars for metrics.json, per class for details."""
    from .metrics import bootstrap

    kind = kind_of(task, classes)
    point = _figures_free(probs, target, kind, classes)
    names = [k for k in point if "/" not in k]
    metrics = {k: point[k] for k in names}
    ci: dict[str, tuple[float, float]] = {}
    if resamples > 0:
        # the per-class figures are computed for the macro mean anyway: their intervals cost only the quantiles
        ci = bootstrap(lambda p, t: _figures_free(p, t, kind, classes), probs, target, groups=groups,
                       resamples=resamples, seed=seed)["ci"]
        for k in names:
            metrics[f"{k}_ci_low"], metrics[f"{k}_ci_high"] = ci.get(k, (math.nan, math.nan))
    details: dict[str, Any] = {"ece_bins": ECE_BINS}
    if kind != "binary":
        details["per_class_operating"] = {
            c: {**{k: point[f"{c}/{k}"] for k in names},
                **{f"{k}_ci": [*ci[f"{c}/{k}"]] for k in names if f"{c}/{k}" in ci}} for c in classes}
    return metrics, details


def _applied(op: OperatingPoint, probs, target, *, groups, resamples, seed) -> dict[str, Any]:
    """The figures of ``op``'s thresholds on an evaluated split, per class, with bootstrap intervals."""
    from .metrics import bootstrap

    kind = op.kind

    def stat(p, t):
        return {f"{c}/{k}": v for c, pc, tc in series(p, t, kind, op.classes) if c in op.thresholds
                for k, v in figures_at(pc, tc, op.thresholds[c]).items()}

    point = stat(probs, target)
    ci = bootstrap(stat, probs, target, groups=groups, resamples=resamples, seed=seed)["ci"] if resamples > 0 else {}
    per = {}
    for c in op.thresholds:
        per[c] = {k: point[f"{c}/{k}"] for k in FIGURES}
        per[c].update({f"{k}_ci": list(ci[f"{c}/{k}"]) for k in FIGURES if f"{c}/{k}" in ci})
    return per


def at_evaluation(model, source, split: str, preds, *, dataset: str, groups, stored: OperatingPoint | None,
                  asked: tuple[str, float | None] | None, store_it: bool, can_store: bool, resamples: int, seed: int,
                  val_preds) -> tuple[OperatingPoint, dict[str, Any], bool] | None:
    """The operating point of an evaluation: the stored one (or, with ``asked``, one chosen now on the
    validation split), applied to the evaluated split. Returns the point, what metrics.json reports of it,
    and whether the caller should (re)write it into the checkpoint; None when none could be chosen."""
    lin = model.medzoo_lineage
    if stored is not None and stored.classes != list(preds.classes):
        stored = None
    if asked is None and store_it:
        asked = ("youden", None)
    if asked is None and stored is not None:
        op, chosen_now = stored, False
    else:
        rule, level = asked or ("youden", None)
        try:
            vp = preds if split == "val" else val_preds()
            op = choose_point(vp.probs, vp.target, source.task, list(preds.classes), rule=rule, level=level,
                              split="val", dataset=dataset, weights_sha256=lin.weights_sha256 or "")
        except MedzooError as exc:
            if asked is not None:
                raise
            print(f"[{lin.name}] no operating point: {exc}", flush=True)
            return None
        chosen_now = True
    # a point chosen on another dataset's validation split is stored only when asked: it would become the
    # checkpoint's permanent threshold (card, predict) for data it was not trained to
    own = _own_dataset(lin)
    foreign = own is not None and public_dataset(op.dataset) != own
    replace = chosen_now and can_store and (store_it or (stored is None and not foreign))
    if chosen_now and stored is None and can_store and foreign and not store_it:
        print(f"[{lin.name}] reported, not stored: the threshold was chosen on {op.dataset}, not on the checkpoint's "
              f"own dataset {own}; pass --store-threshold to store it", flush=True)
    applied = _applied(op, preds.probs, preds.target, groups=groups, resamples=resamples, seed=seed)
    if split == "test" and dataset == op.dataset and (replace or not chosen_now):
        op.test = _finite({"dataset": dataset, "split": split, "n_images": len(preds.records), "figures": applied})
    if chosen_now and stored is not None and not store_it:
        print(f"[{lin.name}] reported, not stored: the checkpoint keeps its {stored.rule_text} threshold; "
              "pass --store-threshold to replace it", flush=True)
    updated_test = not chosen_now and can_store and split == "test" and dataset == op.dataset
    report = {**op.to_dict(), "rule_text": op.rule_text, "stored": replace or (not chosen_now and can_store),
              "applied": {"dataset": dataset, "split": split, "n_images": len(preds.records), "figures": applied}}
    return op, report, replace or updated_test


def _own_dataset(lin) -> str | None:
    """The dataset of the checkpoint's last stage, named as evaluations name it; None when unknown."""
    return public_dataset(lin.stages[-1].dataset) if getattr(lin, "stages", None) else None


def summary(report: dict[str, Any]) -> str:
    """One console line: the rule, the threshold(s) and what they give on the evaluated split."""
    applied = report["applied"]
    parts = []
    for c, t in report["thresholds"].items():
        f = applied["figures"].get(c, {})
        parts.append(f"{c} ≥ {t:.4f}: sensitivity {f.get('sensitivity', math.nan):.3f} specificity "
                     f"{f.get('specificity', math.nan):.3f}")
    where = "stored" if report["stored"] else "not stored"
    return (f"operating point ({report['rule_text']}, chosen on {report['dataset']}/{report['split']}, {where}) on "
            f"{applied['dataset']}/{applied['split']}: " + "; ".join(parts[:4]) + (" …" if len(parts) > 4 else ""))
