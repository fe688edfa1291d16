"""The staged trainer: ``medzoo train ARCH --stages SOURCE,DATASET,DATASET…``.

Each stage builds the model for its dataset, takes the previous stage's weights (backbone always, head
when the classes match), applies its freeze policy, trains with its recipe, keeps the best epoch by the
validation metric and writes a checkpoint with the whole lineage. A stage whose inputs match a stored
checkpoint is reused; a killed stage resumes from its last finished epoch with identical results.
This module plans the chain; ``medzoo.stage`` trains one stage.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from . import cache as mzcache
from . import data as mzdata
from . import licenses, models, store
from . import recipe as mzrecipe
from . import weights as weights_reader
from .lineage import Lineage, SourceRecord
from .overlap import check_chain
from .registry import MedzooError, Ref, did_you_mean, registry
from .stage import Parent, Runtime, StageResult, StageTrainer, log  # noqa: F401 — StageTrainer re-exported
from .tracking import Loggers, RunInfo, open_loggers

FORMAT = 1  # bump when a change to training makes old checkpoints non-reusable


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


# -- the chain ----------------------------------------------------------------------------------

def train(arch: str, stages: list[str] | str, *, overrides: list[str] | dict | None = None,
          recipe_file: str | Path | None = None, runtime: Runtime | None = None, **runtime_kw) -> list[StageResult]:
    """Train a chain; returns one result per training stage. ``overrides``: ``["inbreast.epochs=5"]`` or
    ``{"inbreast": {"epochs": 5}}``."""
    runtime = runtime or Runtime(**runtime_kw)
    text = stages if isinstance(stages, str) else ",".join(stages)
    stages = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else [str(s).strip() for s in stages]
    if not any(stages):
        raise MedzooError(f"--stages is empty; write e.g. --stages {registry().default_source()},DATASET1,DATASET2 "
                          "(`medzoo list datasets` names them)")
    if not all(stages):
        where = stages.index("") + 1
        raise MedzooError(f"--stages '{text}' has an empty name at position {where} (a stray comma?); "
                          f"write e.g. --stages {','.join(s for s in stages if s)}")
    arch_ref = registry().resolve("archs", arch)
    first, datasets = split_source(stages)
    _check_source(first)
    if not datasets:
        raise MedzooError(f"--stages '{','.join(stages)}' has no training stage after the source '{first}'; "
                          f"add a dataset, e.g. --stages {first},DATASET (`medzoo list datasets` names them)")
    for d in datasets:
        registry().resolve("datasets", d)
    # created on every rank (a typo or a missing extra fails everywhere alike, before any data is opened);
    # only rank 0 logs
    loggers = open_loggers(runtime.log, RunInfo(arch=arch_ref.name, home=store.home(),
                                                experiment=runtime.experiment or "medzoo", group=runtime.run_group,
                                                tracking_uri=runtime.tracking_uri))
    sets = overrides if isinstance(overrides, dict) else mzrecipe.parse_sets(overrides, datasets)
    file = mzrecipe.read_recipe_file(recipe_file)
    # Open and check every dataset and recipe before anything trains: a typo in the last stage must not
    # cost the first stage's hours, nor leave anything behind.
    specs = [registry().resolve("datasets", d).spec for d in datasets]
    # a dataset with an argument may change its task (medmnist:chestmnist is multilabel): checked once opened
    recipes = [mzrecipe.resolve(d, spec.recipe, file, sets, datasets, task=None if spec.takes_arg else spec.task)
               for d, spec in zip(datasets, specs)]
    sources = {}
    for d, r in zip(datasets, recipes):
        key = (d, json.dumps(r["preprocess"], sort_keys=True))
        if key not in sources:
            sources[key] = mzcache.open_dataset(d, mzdata.root_for(runtime.data_roots, d), preprocess=r["preprocess"],
                                               skip_bad=runtime.skip_bad, trainable=True)
    source_of = [sources[(d, json.dumps(r["preprocess"], sort_keys=True))] for d, r in zip(datasets, recipes)]
    for d, r, src in zip(datasets, recipes, source_of):
        mzrecipe.check_task(r, src.task, f"the '{d}' stage")
    stage_archs = [arch_for_task(arch_ref, src.task, d) for d, src in zip(datasets, source_of)]
    for src in source_of:  # the validation split each stage will carve, so the overlap check sees it
        if not src.split("val"):
            mzdata.carve_val_split(src)
    overlaps = check_chain(list(zip(datasets, source_of)), allow=runtime.allow_overlap)
    _init_distributed()
    parent = _start(classifier_of(arch_ref), first, {a.name for a in stage_archs})
    results = []
    for i, (dataset, recipe, source, stage_arch) in enumerate(zip(datasets, recipes, source_of, stage_archs)):
        result, parent = _run_stage(stage_arch, parent, dataset, source, recipe, runtime, overlaps.get(i),
                                    loggers, i + 1)
        results.append(result)
    _summary(results)
    return results


def split_source(stages: list[str]) -> tuple[str, list[str]]:
    """``medagg,inbreast`` (no source) means ``<default source>,medagg,inbreast`` (``imagenet`` as shipped)."""
    first = stages[0]
    base = first.partition(":")[0]
    is_dataset = base in registry().entries["datasets"]
    is_source = base in registry().entries["sources"] or store.find_local(first) is not None
    if is_dataset and not is_source:
        return registry().default_source(), stages
    return first, stages[1:]


def _check_source(first: str) -> None:
    """The chain's first name is a stored checkpoint or a weight source; a typo of a checkpoint name gets
    its did-you-mean here, before any dataset is opened."""
    if store.find_local(first) is not None:
        return
    try:
        registry().resolve("sources", first)
    except MedzooError:
        root = store.checkpoints_dir()
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        hint = did_you_mean(first, names)
        if not hint:
            raise
        raise MedzooError(f"'{first}' is neither a weight source nor a stored checkpoint{hint} "
                          "(`medzoo list weights` shows the checkpoints)") from None


def arch_for_task(arch_ref: Ref, task: str, dataset: str) -> Ref:
    """The architecture a stage trains: a segmentation arch's classification stages train its classifier
    (a UNet on Swin-T trains Swin-T on a classification dataset, and the UNet's encoder then starts from it)."""
    spec = arch_ref.spec
    if task == "segmentation":
        if spec.task == "segmentation":
            return arch_ref
        # segmentation architectures whose encoder is this classifier (their ArchSpec.classifier)
        seg = [s.name for s in registry().list("archs") if s.task == "segmentation" and s.classifier == arch_ref.name]
        hint = f"use {' or '.join(repr(n) for n in seg)}" if seg else "`medzoo list archs` shows segmentation archs"
        raise MedzooError(f"'{dataset}' is a segmentation dataset but '{arch_ref.name}' is a classification "
                          f"architecture; {hint}")
    if spec.task == "segmentation":
        return classifier_of(arch_ref, dataset)
    return arch_ref


def classifier_of(arch_ref: Ref, dataset: str | None = None) -> Ref:
    if arch_ref.spec.task != "segmentation":
        return arch_ref
    if not arch_ref.spec.classifier:
        if dataset is None:
            return arch_ref
        raise MedzooError(f"'{arch_ref.name}' has no classification counterpart to train on '{dataset}'; "
                          "start its chain with a segmentation dataset")
    return registry().resolve("archs", arch_ref.spec.classifier)


def _start(arch_ref: Ref, first: str, stage_archs: set[str]) -> Parent:
    local = store.find_local(first)
    if local is not None:
        lin = local.lineage
        if lin.arch not in stage_archs | {arch_ref.name}:
            raise MedzooError(f"checkpoint '{first}' is a {lin.arch}, not a {arch_ref.name}; "
                              f"train {lin.arch} from it, or pick a {arch_ref.name} checkpoint")
        state, sha = load_weights(local)
        return Parent(first, lin.arch, state, sha, local.label_names, lin.prefix(), f"checkpoint '{first}'")
    ref = registry().resolve("sources", first)
    weights = ref.spec.load(arch=arch_ref, arg=ref.arg)
    arch = weights.arch or arch_ref.name
    if arch not in stage_archs | {arch_ref.name}:
        raise MedzooError(f"'{first}' holds a {arch}, which no stage of this chain trains; train {arch} from it")
    if weights.state_dict is None:
        sha = "scratch"
    else:
        sha = weights.sha256 or models.state_sha256(weights.state_dict)
    name = store.slug(arch) + store.source_suffix(first, weights.tag)
    # file: weights by their file name: the hash in tag and sha256 says which, a local path is nobody's business
    source = SourceRecord(name=store.public_source(first), tag=weights.tag, sha256=sha, url=weights.url,
                          license=licenses.license_id(weights.license) if weights.license else None,
                          license_url=weights.license_url, citation=weights.citation, method=weights.method,
                          redistributable=weights.redistributable)
    return Parent(name, arch, weights.state_dict, sha, None, Lineage(arch=arch, source=source), f"'{first}'")


def load_weights(ckpt: store.Checkpoint) -> tuple[dict[str, torch.Tensor], str]:
    """A stored checkpoint's weights, after checking they are the ones its metadata names."""
    return weights_reader.read(ckpt.path / store.WEIGHTS, [ckpt.lineage.weights_sha256], f"checkpoint '{ckpt.name}'")


def stage_key(arch: str, parent_sha: str, dataset: str, fingerprint: str, recipe: dict) -> str:
    blob = json.dumps({"format": FORMAT, "arch": arch, "parent": parent_sha, "dataset": dataset,
                       "fingerprint": fingerprint, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _reusable(name: str, key: str) -> store.Checkpoint | None:
    for candidate in (name, f"{name}~{key[:8]}"):
        ckpt = store.find_local(candidate)
        if ckpt is not None and ckpt.lineage.key == key:
            return ckpt
    return None


# -- one stage ----------------------------------------------------------------------------------

def _run_stage(arch_ref: Ref, parent: Parent, dataset: str, source: mzdata.DataSource, recipe: dict,
               runtime: Runtime, overlap: dict | None = None, loggers: Loggers | None = None,
               index: int = 1) -> tuple[StageResult, Parent]:
    fingerprint = source.fingerprint()
    name = store.stage_name(parent.name, dataset, fingerprint)
    if arch_ref.name != parent.arch:  # classifier → segmentation: the name says which model it now is
        name = store.stage_name(store.rename_arch(parent.name, parent.arch, arch_ref.name), dataset, fingerprint)
    # the public name: moving a path-given dataset's folder does not retrain (its fingerprint guards the content)
    key = stage_key(arch_ref.name, parent.sha256, store.public_dataset(dataset), fingerprint, recipe)
    found = None if runtime.force else _reusable(name, key)
    if found is not None:
        lin = found.lineage
        last = lin.last
        log(f"[{found.name}] reusing the stored checkpoint: same arch, parent weights, data and recipe "
            f"(--force retrains)")
        state, sha = load_weights(found)
        result = StageResult(found.name, found.path, dataset, True, last.best.get("metric", "") if last else "",
                             last.best_value if last else None, last.epochs_run if last else 0, 0.0, sha)
        return result, Parent(found.name, arch_ref.name, state, sha, found.label_names, lin.prefix(),
                              f"checkpoint '{found.name}'")
    trainer = StageTrainer(arch_ref, parent, dataset, source, recipe, runtime, name, key)
    trainer.overlap = overlap
    if loggers:
        trainer.loggers, trainer.stage_index = loggers, index
        try:
            return trainer.run()
        except BaseException as exc:  # the tracker's run is closed as failed/killed, then the error goes on
            loggers.stage_failed(exc)
            raise
    return trainer.run()


def _summary(results: list[StageResult]) -> None:
    rows = [(r.dataset, r.name, f"{r.metric} {r.best:.4f}" if isinstance(r.best, float) else "-",
             "reused" if r.reused else f"{r.seconds:.0f}s") for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows))
              for i, h in enumerate(("stage", "checkpoint", "best", "time"))]
    log("")
    for row in [("stage", "checkpoint", "best", "time"), *rows]:
        log("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if results:
        log(f"checkpoints in {results[-1].path.parent}")
