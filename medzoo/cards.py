"""Model cards: README.md for a published checkpoint, rendered from ``model_cards/<task>.md`` with
huggingface_hub's ``ModelCard``/``ModelCardData`` (the YAML metadata block is theirs, never hand-made)."""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

from . import licenses, store
from .hublayout import HubLayout, layout_of
from .lineage import Lineage, SourceRecord, StageRecord
from .registry import MedzooError, registry

TEMPLATES = {"classification": "classification.md", "multilabel": "classification.md",
             "segmentation": "segmentation.md"}
PIPELINE_TAGS = {"classification": "image-classification", "multilabel": "image-classification",
                 "segmentation": "image-segmentation"}

# the architecture's library is cited by its hub layout (``HubLayout.citation``), the weights by their source
METHOD_CITATIONS = [
    "Ke et al., CheXtransfer: Performance and Parameter Efficiency of ImageNet Models for Chest X-Ray "
    "Interpretation, ACM CHIL 2021.",
    "Mei et al., RadImageNet: An Open Radiologic Deep Learning Research Dataset for Effective Transfer "
    "Learning, Radiology: Artificial Intelligence 2022.",
]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# bookkeeping in metrics.json and evaluations, not evaluation results (the AUC interval is shown beside the AUC)
NOT_METRICS = {"loss", "best_epoch", "epoch", "n_images", "auc_ci_low", "auc_ci_high"}


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k not in NOT_METRICS and not k.endswith(("_ci_low", "_ci_high"))
            and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def base_model(lineage: Lineage) -> str | None:
    """The Hub id of the chain's starting weights, when their source's spec names one."""
    spec = _source_spec(lineage.source)
    if spec is None or spec.base_model is None:
        return None
    return spec.base_model(arg=lineage.source.name.partition(":")[2] or None, tag=lineage.source.tag,
                           timm_name=lineage.timm_name)


def _source_spec(source: SourceRecord):
    """The registered spec of the source a chain started from (None: a stored checkpoint's name, or a source
    whose plugin is not installed here)."""
    return registry().entries["sources"].get(source.name.partition(":")[0])


def card_license(ckpt: store.Checkpoint, override: str | None = None) -> str:
    """The card's licence id: ``override`` (``--license``) when given, else what the lineage inherits."""
    return licenses.license_id(override) if override else ckpt.lineage.license()


def card_data(ckpt: store.Checkpoint, metrics: dict[str, Any], *, license: str | None = None):
    """The card's metadata (license, tags, datasets, base model, model-index results)."""
    from huggingface_hub import EvalResult, ModelCardData

    lin = ckpt.lineage
    stages = lin.stages
    task = lin.task
    pipeline = PIPELINE_TAGS.get(task, "image-classification")
    hf = card_license(ckpt, license)
    modalities = sorted({s.modality for s in stages if s.modality})
    last = _public(stages[-1].dataset) if stages else "unknown"
    split = "test" if metrics.get("split") == "test" else "validation"
    results = [EvalResult(task_type=pipeline, dataset_type=last, dataset_name=last, dataset_split=split,
                          metric_type=k, metric_name=f"{split} {k}", metric_value=round(v, 6))
               for k, v in finite_metrics(metrics).items()]
    extra: dict[str, Any] = {"license_name": "custom", "license_link": "LICENSE"} if hf == "other" else {}
    hub_layout = layout(ckpt)
    return ModelCardData(
        license=hf, library_name=hub_layout.hf_library, pipeline_tag=pipeline, model_name=ckpt.name,
        tags=list(dict.fromkeys(["medical-imaging", "transfer-learning", "medzoo",
                                 hub_layout.hf_library or hub_layout.library, pipeline, *modalities])),
        datasets=list(dict.fromkeys(_public(s.dataset) for s in stages)) or None, base_model=base_model(lin),
        eval_results=results or None, **extra)


def _public(dataset: str) -> str:
    # checkpoints written before schema 2 may record a path-given dataset with its path
    return store.public_dataset(dataset)


def layout(ckpt: store.Checkpoint) -> HubLayout:
    """The Hub layout of the checkpoint's architecture (its plugin's ``ArchSpec.hub_layout``): which library
    loads it and how; an architecture no installed plugin registers is refused, not guessed."""
    return layout_of(registry().resolve("archs", ckpt.lineage.arch).spec)


def render(ckpt: store.Checkpoint, *, repo_id: str | None = None, metrics: dict[str, Any] | None = None,
           license: str | None = None) -> str:
    """README.md for a checkpoint (what `medzoo card` prints and `medzoo publish` uploads). ``repo_id`` must
    already be valid (``hub.check_repo_id``): it is written into the card's code blocks."""
    from huggingface_hub import ModelCard

    lin, config = ckpt.lineage, ckpt.config
    task = lin.task
    if task not in TEMPLATES:
        raise MedzooError(f"no model card template for {task} checkpoints yet (model_cards/ has "
                          f"{', '.join(sorted(set(TEMPLATES.values())))}); see docs/zoo.md")
    metrics = metrics if metrics is not None else evaluation_metrics(ckpt)
    data = card_data(ckpt, metrics, license=license)
    rows = []
    for s in lin.stages:
        best = s.best
        d = s.data or {}
        rows.append({"dataset": _public(s.dataset), "task": s.task, "modality": s.modality, "freeze": s.freeze,
                     "epochs_run": s.epochs_run, "n_train": s.n_train if s.n_train is not None else "?",
                     "license": s.license, "license_url": s.license_url,
                     "data_text": (f"{d.get('records', '?')} records, "
                                   f"fingerprint `{str(d.get('fingerprint', ''))[:16]}`"
                                   if d else f"fingerprint `{s.fingerprint[:16]}`"),
                     "overlap_text": _overlap_text(s.overlap),
                     "best_text": f"{best.get('metric')} {_fmt(best['value'])} (epoch {best.get('epoch')})"
                     if s.best_value is not None else "–",
                     "classes_text": ", ".join(s.classes) or "–"})
    source = lin.source
    pcfg = config.get("pretrained_cfg") or {}
    licence = card_license(ckpt, license)
    timm_name = lin.timm_name
    hub_layout = layout(ckpt)
    template = resources.files("medzoo_model_cards").joinpath(TEMPLATES[task]).read_text()
    card = ModelCard.from_template(
        data, template_str=template, name=ckpt.name, repo_id=repo_id or f"<org>/{ckpt.name}",
        arch=lin.arch, timm_name_text=f"timm `{timm_name}`" if timm_name else "not a stock timm model",
        chain=" → ".join(lin.public_chain()),
        task_sentence=f"Task of the final stage: {task}.",
        source_text=f"{store.public_source(source.name)} (`{source.tag or '?'}`)",
        source_license=source.license or "–", stages=rows, weights_sha256=lin.weights_sha256 or "?",
        license_text=licence, license_given=bool(license), inherited_license=lin.license(),
        source_license_note=_source_note(source), upstream=_upstream(source),
        last_dataset=rows[-1]["dataset"] if rows else "?", best_epoch=metrics.get("best_epoch", "?"),
        eval_rows=[{"name": k, "value": _fmt(v) + _ci_text(k, metrics)} for k, v in finite_metrics(metrics).items()],
        eval_split=metrics.get("split"), eval_images=metrics.get("n_images", "?"),
        in_chans=lin.in_chans, image_size=lin.image_size or "?", mean=pcfg.get("mean"),
        std=pcfg.get("std"), label_names=ckpt.label_names or [], citations=_citations(ckpt, lin.stages),
        num_classes=ckpt.num_classes, library=hub_layout.library, op=_operating_text(ckpt),
        has_ece=isinstance(metrics.get("ece"), float), lineage_file=hub_layout.lineage_file,
        plain_code=hub_layout.plain_code(repo_id or f"<org>/{ckpt.name}", num_classes=ckpt.num_classes,
                                         in_chans=lin.in_chans, image_size=lin.image_size))
    return str(card)


def _overlap_text(overlap: dict[str, Any] | None) -> str:
    if not overlap:
        return ""
    examples = ", ".join(str(e) for e in (overlap.get("examples") or [])[:3])
    return (f"{overlap.get('pairs', '?')} image pair(s) of this stage's evaluation data also appear in earlier "
            f"training data; trained anyway with --allow-overlap" + (f" (e.g. {examples})" if examples else ""))


def _operating_text(ckpt: store.Checkpoint) -> dict[str, Any] | None:
    """The card's operating-point table: the stored point of these weights, its validation figures and, once
    `medzoo evaluate` scored it on the test split, the test figures with their intervals."""
    from .operating import read

    op = read(ckpt.config, f"checkpoint '{ckpt.name}'", weights_sha256=ckpt.lineage.weights_sha256)
    if op is None:
        return None
    test = op.test.get("figures") or {}

    def fig(figs: dict[str, Any], key: str, ci: bool = False) -> str:
        v = figs.get(key)
        if not isinstance(v, float):
            return "–"
        lo_hi = figs.get(f"{key}_ci") if ci else None
        return f"{v:.3f}" + (f" ({lo_hi[0]:.3f}–{lo_hi[1]:.3f})" if lo_hi and None not in lo_hi else "")

    rows = [{"cls": c, "threshold": f"{t:.4f}", "val_sens": fig(op.val.get(c, {}), "sensitivity"),
             "val_spec": fig(op.val.get(c, {}), "specificity"), "sens": fig(test.get(c, {}), "sensitivity", True),
             "spec": fig(test.get(c, {}), "specificity", True), "ppv": fig(test.get(c, {}), "ppv"),
             "npv": fig(test.get(c, {}), "npv")} for c, t in op.thresholds.items()]
    note = {"binary": f"An image is called '{op.classes[1]}' when its probability is at or above the threshold.",
            "multilabel": "Each label is called present when its probability is at or above its threshold.",
            "multiclass": "Decisions are the most probable class; the per-class (one-vs-rest) thresholds are "
                          "reported, not applied."}[op.kind]
    if not test:
        note += " Not yet scored on a test split (`medzoo evaluate NAME`)."
    else:
        note += f" Test figures: {op.test.get('dataset')}/{op.test.get('split')}, {op.test.get('n_images')} images."
    return {"split": op.split, "dataset": op.dataset, "rule_text": op.rule_text, "rows": rows, "note": note,
            "test_split": op.test.get("split", "test")}


def _upstream(source: SourceRecord) -> dict[str, Any] | None:
    """What the card says about upstream weights that recorded their provenance."""
    if not any((source.url, source.method, source.citation, source.license)) and source.redistributable:
        return None
    return {"method": source.method, "url": source.url, "license": source.license,
            "license_url": source.license_url or (licenses.url_of(source.license) if source.license else None),
            "citation": source.citation, "redistributable": source.redistributable}


def _ci_text(key: str, metrics: dict[str, Any]) -> str:
    lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if isinstance(lo, float) and isinstance(hi, float):
        return f" (95% CI {lo:.4f}–{hi:.4f})"
    return ""


def evaluation_metrics(ckpt: store.Checkpoint) -> dict[str, Any]:
    """The test-split evaluation of the last stage's dataset (``medzoo evaluate``) if one was recorded for
    these weights; else metrics.json of the checkpoint (validation, best epoch); else the last stage's
    validation metrics in the lineage."""
    import json

    lin = ckpt.lineage
    if lin.last is not None:
        ev = lin.evaluations.get(f"{_public(lin.last.dataset)}-test") or {}
        if ev.get("weights_sha256") == lin.weights_sha256 and finite_metrics(ev.get("metrics") or {}):
            return {"split": "test", "n_images": ev.get("n_images"), **ev["metrics"]}
    path = ckpt.path / "metrics.json"
    if path.is_file():
        try:
            metrics = json.loads(path.read_text())
        except ValueError as exc:
            raise MedzooError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
        if isinstance(metrics, dict) and finite_metrics(metrics):
            return metrics
    last = lin.last
    val = dict(last.val_metrics) if last else {}
    if last and val and last.best.get("epoch") is not None:
        val["best_epoch"] = last.best["epoch"]
    return val


def _source_note(source: SourceRecord) -> str:
    spec = _source_spec(source)
    return spec.terms_note.replace("{name}", source.name) if spec is not None else ""


def _citations(ckpt: store.Checkpoint, stages: list[StageRecord]) -> list[str]:
    lin = ckpt.lineage
    archs = registry()
    arch = archs.resolve("archs", lin.arch).spec
    # a segmentation architecture's encoder is its classifier's: both papers apply
    classifier = archs.resolve("archs", arch.classifier).spec if arch.classifier else None
    out = [c for c in (arch.citation, classifier and classifier.citation, layout(ckpt).citation) if c]
    out = list(dict.fromkeys(out))
    if lin.source.citation:
        out.append(f"{store.public_source(lin.source.name)} (upstream weights): {lin.source.citation}")
    for s in stages:
        name = _public(s.dataset)
        spec = registry().entries["datasets"].get(s.dataset.partition(":")[0])
        if spec is not None and spec.citation:
            out.append(f"{name}: {spec.citation}")
        elif spec is not None and spec.modality == "synthetic":
            out.append(f"{name}: synthetic data generated by medzoo (nothing to cite).")
        elif spec is not None and spec.docs:
            out.append(f"{name}: {spec.description or name} — cite as described in {spec.docs}")
        else:
            out.append(f"{name}: cite the dataset as its authors ask (see its documentation).")
    return out + METHOD_CITATIONS
