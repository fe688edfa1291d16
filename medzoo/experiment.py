"""Experiment grids: ``medzoo experiment GRID.yaml [--seeds 0,1,2] [--out DIR]``.

A grid is architectures × stage chains × target datasets × seeds. Every cell is one ``medzoo.train``
chain ending on its target, then ``medzoo evaluate`` on the target's test split. Cells share stages
through the trainer's own reuse (a stage whose arch, parent weights, data and recipe match a stored
checkpoint is not trained again), so the medagg stage of an arch and seed is trained once for every
target. Each finished cell leaves ``cells/<cell>.json`` in the output folder, written atomically: a rerun
skips them, which is how a killed grid resumes. ``medzoo.report`` turns the folder into
``results.csv`` and ``report.md``.
"""

from __future__ import annotations

import csv
import json
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from . import recipe as mzrecipe
from . import speed, store
from .grid import Cell, Grid, Target, cell_path, read_cell
from .registry import MedzooError, did_you_mean, registry

GRID_KEYS = ("name", "description", "reference", "archs", "chains", "baseline", "targets", "seeds", "recipe",
             "metrics", "split", "bootstrap", "runtime")
TARGET_KEYS = ("dataset", "archs", "set", "metrics")
RUNTIME_KEYS = ("device", "precision", "channels_last", "num_workers", "skip_bad", "allow_overlap", "log",
                "tracking_uri")
BOOL_RUNTIME_KEYS = ("channels_last", "skip_bad", "allow_overlap")
CLASSIFICATION_METRICS = {"auc", "average_precision", "accuracy", "f1", "precision", "recall", "specificity", "rmse",
                          "auc_ci_low", "auc_ci_high", "sens_at_spec90", "sens_at_spec95", "spec_at_sens90",
                          "spec_at_sens95", "ece"}


def metric_fits(metric: str, task: str) -> bool:
    """Whether ``medzoo evaluate`` reports ``metric`` for a ``task`` model (dice_<class>/iou_<class> included)."""
    if task == "segmentation":
        return metric in ("dice", "iou", "pixel_accuracy") or metric.startswith(("dice_", "iou_"))
    return metric in CLASSIFICATION_METRICS


DEFAULT_METRICS = {"classification": ["auc", "accuracy", "f1", "precision", "recall", "specificity", "rmse"],
                   "multilabel": ["auc", "accuracy", "f1", "precision", "recall", "rmse"],
                   "segmentation": ["dice", "iou", "pixel_accuracy"]}


# -- reading a grid -----------------------------------------------------------------------------

def _fail(where: str, problem: str) -> MedzooError:
    return MedzooError(f"grid {where}: {problem}")


def _names(value: Any, where: str, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, f"'{what}' must be a non-empty list of names")
    return [v.strip() for v in value]


def parse_seeds(text: str | list | None) -> list[int] | None:
    """``"0,1,2"`` or ``[0, 1, 2]`` → ``[0, 1, 2]``."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else text
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError):
        raise MedzooError(f"seeds must be whole numbers, as in --seeds 0,1,2 (got {text!r})") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise MedzooError(f"seeds must be distinct numbers ≥ 0, at least one (got {text!r})")
    return seeds


def load_grid(path: str | Path, *, seeds: list[int] | None = None, check: bool = True) -> Grid:
    """Read and validate a grid file; ``check`` also resolves every name and recipe against the registry,
    so a typo in the last cell fails before the first one trains."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MedzooError(f"cannot read grid file '{path}': {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MedzooError(f"grid file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    where = f"'{path}'"
    if not isinstance(doc, dict):
        raise _fail(where, "must be a mapping with chains, targets, … (see docs/evaluation.md)")
    for key in doc:
        if key not in GRID_KEYS:
            raise _fail(where, f"unknown key '{key}'{did_you_mean(str(key), list(GRID_KEYS))} "
                               f"(keys: {', '.join(GRID_KEYS)})")
    chains = doc.get("chains")
    if not isinstance(chains, dict) or not chains:
        src = registry().default_source()
        raise _fail(where, "needs 'chains': a mapping of chain name -> stages before the target, e.g. "
                           f"{{{src}: [{src}], pretrain: [{src}, DATASET]}}")
    chains = {str(k): _names(v, where, f"chains.{k}") for k, v in chains.items()}
    baseline = str(doc.get("baseline", next(iter(chains))))
    if baseline not in chains:
        raise _fail(where, f"baseline '{baseline}' is not a chain{did_you_mean(baseline, list(chains))} "
                           f"(chains: {', '.join(chains)})")
    default_archs = _names(doc["archs"], where, "archs") if "archs" in doc else None
    targets = _targets(doc.get("targets"), default_archs, doc.get("metrics"), where)
    grid = Grid(name=store.slug(str(doc.get("name") or path.stem)), chains=chains, baseline=baseline, targets=targets,
                seeds=seeds or parse_seeds(doc.get("seeds", [0])) or [0], recipe=_recipe(doc.get("recipe"), where),
                description=str(doc.get("description") or "").strip(),
                reference=str(doc.get("reference") or "").strip(),
                split=str(doc.get("split", "test")), bootstrap=int(doc.get("bootstrap", 1000)),
                runtime=dict(doc.get("runtime") or {}))
    if grid.split not in ("test", "val"):
        raise _fail(where, f"split must be test or val, not '{grid.split}'")
    _check_runtime(grid.runtime, where)
    if check:
        _check(grid, where)
    return grid


def _targets(value: Any, default_archs: list[str] | None, metrics: Any, where: str) -> list[Target]:
    if isinstance(value, list):
        value = {str(v): {} for v in value}
    if not isinstance(value, dict) or not value:
        raise _fail(where, "needs 'targets': target datasets, as a list or a mapping "
                           "label -> {dataset, archs, set, metrics}")
    out = []
    for label, spec in value.items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise _fail(where, f"target '{label}' must be a mapping of {', '.join(TARGET_KEYS)}")
        for key in spec:
            if key not in TARGET_KEYS:
                raise _fail(where, f"target '{label}' has unknown key "
                                   f"'{key}'{did_you_mean(str(key), list(TARGET_KEYS))}")
        archs = _names(spec["archs"], where, f"targets.{label}.archs") if "archs" in spec else default_archs
        if not archs:
            raise _fail(where, f"target '{label}' has no architectures: give 'archs' at the top or in the target")
        sets = spec.get("set") or {}
        if not isinstance(sets, dict):
            raise _fail(where, f"targets.{label}.set must map recipe keys to values")
        names = spec.get("metrics", metrics)
        out.append(Target(str(label), str(spec.get("dataset", label)), archs, dict(sets),
                          _names(names, where, "metrics") if names else [], own_metrics="metrics" in spec))
    return out


def _recipe(value: Any, where: str) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise _fail(where, "'recipe' must map 'defaults' or a dataset name to recipe keys, e.g. "
                           "{defaults: {epochs: 5}, DATASET: {batch_size: 8}}")
    return {str(k): dict(v) for k, v in value.items()}


def _check(grid: Grid, where: str) -> None:
    reg = registry()
    used: set[str] = set()
    for target in grid.targets:
        for arch in target.archs:
            reg.resolve("archs", arch)
        target.task = reg.resolve("datasets", target.dataset).spec.task
        unfit = [m for m in target.metrics if not metric_fits(m, target.task)]
        if unfit and target.own_metrics:
            raise _fail(where, f"target '{target.label}' is {target.task}, which has no metric '{unfit[0]}' "
                               f"(e.g. {', '.join(DEFAULT_METRICS[target.task])})")
        if not target.metrics or unfit:  # the grid-wide list is for another task: this task's defaults
            target.metrics = DEFAULT_METRICS[target.task]
        for cell in cells(grid, [target]):
            used.update(cell.stages)
            datasets = _datasets(cell.stages)
            _check_source(cell.stages, datasets, f"{where} chain '{cell.chain}'")
            for d in datasets:  # every recipe of every cell resolves: bad keys and values fail here
                spec = reg.resolve("datasets", d).spec
                try:
                    mzrecipe.resolve(d, spec.recipe, {}, cell.overrides, datasets,
                                     task=None if spec.takes_arg else spec.task)
                except MedzooError as exc:
                    raise _fail(where, f"cell {cell.id}: {exc}") from None
    for section, keys in grid.recipe.items():
        if section != mzrecipe.FILE_DEFAULTS_SECTION and section not in used:
            raise _fail(where, f"recipe section '{section}' is not a dataset of any chain or target"
                               f"{did_you_mean(section, sorted(used))}")
        if "seed" in keys:
            raise _fail(where, f"recipe section '{section}' sets 'seed'; the grid's 'seeds' (or --seeds) set it")
    for target in grid.targets:
        if "seed" in target.set:
            raise _fail(where, f"target '{target.label}' sets 'seed'; the grid's 'seeds' (or --seeds) set it")


def _check_runtime(runtime: dict[str, Any], where: str) -> None:
    """Keys and values, so that ``num_workers: lots`` fails on load, not in every cell at train time."""
    for key in runtime:
        if key not in RUNTIME_KEYS:
            raise _fail(where, f"unknown runtime key '{key}'{did_you_mean(key, list(RUNTIME_KEYS))} "
                               f"(keys: {', '.join(RUNTIME_KEYS)})")
    hw = speed.Hardware()  # the values' validity does not depend on the machine
    for key, check in (("num_workers", lambda v: speed.workers(v, hw)),
                       ("precision", lambda v: speed.precision(v, hw))):
        if runtime.get(key) is not None:
            try:
                check(runtime[key])
            except MedzooError as exc:  # speed's message names the CLI flag; the grid names the key
                raise _fail(where, f"runtime key '{key}': {exc}") from None
    for key in BOOL_RUNTIME_KEYS:
        value = runtime.get(key)
        if value is not None and not isinstance(value, bool):
            raise _fail(where, f"runtime key '{key}' must be true or false, not '{value}'")
    if runtime.get("log") is not None:
        from .tracking import check_names

        try:
            check_names(runtime["log"])
        except MedzooError as exc:
            raise _fail(where, f"runtime key 'log': {exc}") from None


def _check_source(stages: list[str], datasets: list[str], where: str) -> None:
    if len(datasets) == len(stages):  # no source named: the chain starts from the default source
        try:
            registry().default_source()
        except MedzooError as exc:
            raise _fail(where, str(exc)) from None
        return
    first = stages[0]
    if store.find_local(first) is None:
        try:
            registry().resolve("sources", first)
        except MedzooError as exc:
            raise _fail(where, f"{exc}; a chain starts with a weight source or a stored checkpoint") from None


def plan(grid: Grid) -> list[str]:
    """What ``run_grid`` would do, one line per cell, and how many stages it trains (shared ones once)."""
    lines, stages = [], set()
    for cell in cells(grid):
        datasets = _datasets(cell.stages)
        source = cell.stages[0] if len(datasets) < len(cell.stages) else registry().default_source()
        for i in range(1, len(datasets) + 1):
            part = {d: cell.overrides.get(d, {}) for d in datasets[:i]}
            stages.add(json.dumps([cell.arch, source, datasets[:i], cell.overrides.get(mzrecipe.FILE_DEFAULTS_SECTION),
                                   part], sort_keys=True, default=str))
        sets = cell.overrides.get(cell.dataset)
        lines.append(f"  {cell.id}: {cell.arch}  {' > '.join([source, *datasets])}"
                     + (f"  set {json.dumps(sets, default=str)}" if sets else ""))
    head = (f"grid '{grid.name}': {len(lines)} cells ({len(grid.targets)} targets × chains "
            f"{', '.join(grid.chains)} × seeds {', '.join(map(str, grid.seeds))}), at most {len(stages)} "
            f"stages to train (a stage shared by cells trains once), baseline '{grid.baseline}', "
            f"scored on the {grid.split} split")
    return [head, *lines]


def _datasets(stages: list[str]) -> list[str]:
    from .trainer import split_source

    return split_source(stages)[1]


def cells(grid: Grid, targets: list[Target] | None = None) -> list[Cell]:
    """Every (target, arch, chain, seed), in an order that trains shared stages once and early:
    seed-major, so a killed grid has complete seeds to report."""
    out = []
    for seed in grid.seeds:
        for target in targets or grid.targets:
            for arch in target.archs:
                for chain, stages in grid.chains.items():
                    overrides = {k: dict(v) for k, v in grid.recipe.items()}
                    overrides.setdefault(mzrecipe.FILE_DEFAULTS_SECTION, {})["seed"] = seed
                    if target.set:
                        overrides[target.dataset] = {**overrides.get(target.dataset, {}), **target.set}
                    cid = store.slug(f"{target.label}.{arch}.{chain}.s{seed}")
                    out.append(Cell(cid, target.label, target.dataset, arch, chain, stages + [target.dataset],
                                    seed, overrides))
    return out


# -- running ------------------------------------------------------------------------------------

def grid_json(grid: Grid) -> dict[str, Any]:
    return {"grid": asdict(grid), "cells": [asdict(c) for c in cells(grid)]}


def run_grid(path: str | Path, *, seeds: list[int] | None = None, out: str | Path | None = None,
             data_roots: dict[str, str] | None = None, **runtime_kw) -> dict[str, Any]:
    """Run every unfinished cell of a grid, then write the report. Returns counts and the report's path."""
    from tqdm.auto import tqdm

    from .report import build_report

    grid = load_grid(path, seeds=seeds)
    out = Path(out) if out else Path("runs") / grid.name
    existing = out / "grid.json"
    if existing.is_file():
        try:
            old = json.loads(existing.read_text())["grid"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            old = None
        if old != grid.name:
            raise MedzooError(f"'{out}' holds the results of another grid ('{old}'); pick another --out")
    elif out.exists() and any(out.iterdir()):
        raise MedzooError(f"'{out}' exists and is not an experiment folder (no grid.json); pick another --out")
    store.atomic_write(existing, json.dumps(grid_json(grid), indent=2, default=str))
    todo = cells(grid)
    done = [c for c in todo if (r := read_cell(out, c, grid)) is not None and r["status"] == "ok"]
    pending = [c for c in todo if c not in done]
    runtime = {**grid.runtime, **{k: v for k, v in runtime_kw.items() if v is not None}}
    if runtime.get("log"):  # a typo or a missing extra fails once here, not in every cell
        from .tracking import RunInfo, open_loggers

        open_loggers(runtime["log"], RunInfo(arch="", home=store.home(), experiment=grid.name,
                                             tracking_uri=runtime.get("tracking_uri")))
    say = tqdm.write
    if done:
        say(f"[{grid.name}] {len(done)} of {len(todo)} cells already finished in {out}; "
            f"running the other {len(pending)}")
    failed = 0
    bar = tqdm(total=len(todo), initial=len(done), unit="cell", desc=grid.name, dynamic_ncols=True)
    for cell in pending:
        bar.set_postfix_str(cell.id)
        rec = run_cell(cell, grid, out, data_roots or {}, runtime)
        if rec["status"] != "ok":
            failed += 1
            say(f"[{grid.name}] cell {cell.id} FAILED: {rec['error']} (log: {out / 'logs' / (cell.id + '.log')}); "
                "going on with the others")
        bar.update(1)
    bar.close()
    report = build_report(out)
    say(f"[{grid.name}] {len(todo) - failed} of {len(todo)} cells finished, {failed} failed; report: {report}")
    return {"cells": len(todo), "skipped": len(done), "ran": len(pending), "failed": failed, "report": report,
            "out": out}


def run_cell(cell: Cell, grid: Grid, out: Path, data_roots: dict[str, str], runtime: dict[str, Any]) -> dict[str, Any]:
    from .evaluation import evaluate, json_safe
    from .trainer import Runtime, train

    started = time.time()
    rec: dict[str, Any] = {**asdict(cell), "cell": cell.id, "spec_hash": cell.spec_hash(grid)}
    try:
        # trackers group the grid's runs: an MLflow experiment / a TensorBoard folder per grid, a cell per chain
        results = train(cell.arch, cell.stages, overrides=cell.overrides,
                        runtime=Runtime(data_roots=data_roots, experiment=grid.name, run_group=cell.id, **runtime))
        last = results[-1]
        # the target by name: a path-given dataset is not in the checkpoint's metadata
        ev = evaluate(last.name, dataset=cell.dataset, split=grid.split, bootstrap=grid.bootstrap, seed=cell.seed,
                      data_root=data_roots, device=runtime.get("device"))
        rec.update(status="ok", checkpoint=last.name, trained=[r.name for r in results if not r.reused],
                   reused=[r.name for r in results if r.reused], val_metric=last.metric, val_best=last.best,
                   task=ev.task, n_test=ev.n, metrics=ev.metrics, history=_history(last.path / "history.csv"))
    except Exception as exc:  # a failed cell is reported and the grid goes on (KeyboardInterrupt still stops)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        rec.update(status="failed", error=f"{type(exc).__name__}: {message}"[:500])
        store.atomic_write(out / "logs" / f"{cell.id}.log", traceback.format_exc())
    rec["seconds"] = round(time.time() - started, 1)
    store.atomic_write(cell_path(out, cell.id), json.dumps(json_safe(rec), indent=2, default=str))
    return rec


def _history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text
