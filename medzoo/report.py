"""The report of an experiment grid: ``medzoo report DIR`` (also written at the end of ``medzoo experiment``).

Built only from the folder (``grid.json`` and ``cells/*.json``), so it can be rebuilt at any time, also
from a grid that is still running or was killed. Statistics (scipy): for each target, architecture and
metric, every chain is compared with the baseline chain over seeds by a paired t-test (pairs = runs with
the same seed, which share data order and initialisation seed) and by an independent two-sample
Student t-test (equal variances), the test the systematic benchmark of transfer learning for medical
imaging used on repeated runs. With few seeds both have little power: read the p-values as such.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import store
from .grid import Cell, Grid, Target, read_cell
from .registry import MedzooError

STATS_NOTE = (
    "Mean ± sample standard deviation (ddof = 1) over seeds; *n* = number of seeds that finished. "
    "Δ = chain mean − baseline mean. **p (paired)**: paired t-test over the seeds both chains finished "
    "(`scipy.stats.ttest_rel`); **p (indep.)**: independent two-sample Student t-test, equal variances "
    "(`scipy.stats.ttest_ind`), as in the systematic benchmark of transfer learning for medical imaging. "
    "Two-sided; no correction for multiple comparisons. 'n/a': fewer than 2 runs per side, or no "
    "variation to test.")


def compare(base: dict[int, float], other: dict[int, float]) -> dict[str, Any]:
    """Δ of means and the two tests' p-values for one metric; seeds → values (NaN left out)."""
    import warnings

    from scipy import stats

    # near-constant samples: p is still right
    warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
    a = {s: v for s, v in base.items() if v is not None and not math.isnan(v)}
    b = {s: v for s, v in other.items() if v is not None and not math.isnan(v)}
    diff = float(np.mean(list(b.values())) - np.mean(list(a.values()))) if a and b else math.nan
    out: dict[str, Any] = {"diff": diff, "p_paired": math.nan, "p_indep": math.nan, "n_pairs": 0}
    pairs = sorted(set(a) & set(b))
    out["n_pairs"] = len(pairs)
    if len(pairs) >= 2:
        d = np.array([b[s] - a[s] for s in pairs])
        if np.ptp(d) > 1e-12:
            out["p_paired"] = float(stats.ttest_rel([b[s] for s in pairs], [a[s] for s in pairs]).pvalue)
    if len(a) >= 2 and len(b) >= 2 and (np.ptp(list(a.values())) > 1e-12 or np.ptp(list(b.values())) > 1e-12):
        out["p_indep"] = float(stats.ttest_ind(list(b.values()), list(a.values()), equal_var=True).pvalue)
    return out


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan


def _fmt(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f} ({n})" if not math.isnan(std) else f"{mean:.3f} ({n})"


def load_folder(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any] | None]]:
    """grid, its cells, and each cell's stored record (None: not run yet, or run with an older spec)."""
    try:
        doc = json.loads((out / "grid.json").read_text())
        grid, cells = doc["grid"], doc["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MedzooError(f"'{out}' is not an experiment folder (no readable grid.json); run "
                          f"`medzoo experiment GRID.yaml --out {out}` first") from None
    g = Grid(**{**grid, "targets": [Target(**t) for t in grid["targets"]]})
    records = [read_cell(out, Cell(**c), g) for c in cells]
    return grid, cells, records


def build_report(out: str | Path) -> Path:
    """Write ``results.csv``, ``report.md`` and ``plots/`` in an experiment folder; returns report.md."""
    from .plots import plot_bars, plot_learning_curves

    out = Path(out)
    grid, cells, records = load_folder(out)
    _write_results(out, cells, records)
    chains, baseline = list(grid["chains"]), grid["baseline"]
    lines = [f"# Experiment: {grid['name']}", ""]
    if grid.get("description"):
        lines += [grid["description"], ""]
    if grid.get("reference"):
        lines += [f"**Published reference:** {grid['reference']}", ""]
    ok = [r for r in records if r and r["status"] == "ok"]
    failed = [r for r in records if r and r["status"] != "ok"]
    missing = [c for c, r in zip(cells, records) if r is None]
    lines += ["Chains (stages before the target): " + "; ".join(
                  f"**{k}** = {' → '.join(v) or '–'}" + (" (baseline)" if k == baseline else "")
                  for k, v in grid["chains"].items()) + ".",
              f"Seeds: {', '.join(map(str, grid['seeds']))}. Metrics on the **{grid['split']}** split of each target "
              f"(`medzoo evaluate`). Cells: {len(cells)} — {len(ok)} finished, {len(failed)} failed, "
              f"{len(missing)} not run. Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
              STATS_NOTE, ""]
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    for target in grid["targets"]:
        label, metrics = target["label"], target["metrics"]
        lines += [f"## Target: {label} (dataset `{target['dataset']}`, {target['task']})", ""]
        rows: dict[tuple[str, str], Any] = {}
        for c, r in zip(cells, records):
            if c["target"] == label and r and r["status"] == "ok":
                rows.setdefault((c["arch"], c["chain"]), {})[c["seed"]] = r
        if not rows:
            lines += ["No finished runs yet.", ""]
            continue
        lines += ["| arch | chain | " + " | ".join(metrics) + " |", "| --- | --- |" + " --- |" * len(metrics)]
        bars: dict[str, list[tuple[float, float]]] = {}
        archs = target["archs"]
        for arch in archs:
            for chain in chains:
                runs = rows.get((arch, chain), {})
                cells_txt = []
                for m in metrics:
                    mean, std = _mean_std([run["metrics"].get(m) for run in runs.values()])
                    n = sum(1 for run in runs.values() if _finite(run["metrics"].get(m)))
                    cells_txt.append(_fmt(mean, std, n))
                tag = f"{chain} (baseline)" if chain == baseline else chain
                lines.append(f"| {arch} | {tag} | " + " | ".join(cells_txt) + " |")
        for chain in chains:
            bars[chain] = [_mean_std([run["metrics"].get(m) for run in rows.get((a, chain), {}).values()])
                           for m in metrics for a in archs]
        lines += ["", f"Difference against the baseline chain **{baseline}** (Δ, p paired, p indep.):", "",
                  "| arch | chain | metric | baseline | chain | Δ | p (paired) | p (indep.) | pairs |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arch in archs:
            base = rows.get((arch, baseline), {})
            for chain in chains:
                if chain == baseline:
                    continue
                other = rows.get((arch, chain), {})
                for m in metrics:
                    a = {s: run["metrics"].get(m) for s, run in base.items()}
                    b = {s: run["metrics"].get(m) for s, run in other.items()}
                    st = compare(_clean(a), _clean(b))
                    bm, bs = _mean_std(list(_clean(a).values()))
                    cm, cs = _mean_std(list(_clean(b).values()))
                    diff = "–" if math.isnan(st["diff"]) else f"{st['diff']:+.3f}"
                    lines.append(f"| {arch} | {chain} | {m} | {_fmt(bm, bs, len(_clean(a)))} "
                                 f"| {_fmt(cm, cs, len(_clean(b)))} "
                                 f"| {diff} | {_p(st['p_paired'])} | {_p(st['p_indep'])} | {st['n_pairs']} |")
        slug = store.slug(label)
        plot_bars(archs, bars, metrics, plots / f"{slug}-bars.png", f"{grid['name']}: {label}")
        lines += ["", f"![{label}: metrics by chain](plots/{slug}-bars.png)", ""]
        for arch in archs:
            curves = {chain: [run.get("history") or [] for run in rows.get((arch, chain), {}).values()]
                      for chain in chains if rows.get((arch, chain))}
            metric = next((run["val_metric"] for run in ok if run["arch"] == arch and run["target"] == label), "auc")
            name = f"{slug}-{store.slug(arch)}-curves.png"
            plot_learning_curves(curves, metric, plots / name, f"{label}, {arch}: final stage, validation "
                                 "(mean over seeds, band min–max)")
            lines += [f"![{label}, {arch}: learning curves](plots/{name})", ""]
    if failed:
        lines += ["## Failed cells", "", "| cell | error |", "| --- | --- |"]
        lines += [f"| {r['cell']} | {r['error'].replace('|', '/')} |" for r in failed]
        lines += ["", "Logs are in `logs/`; rerun `medzoo experiment` to retry them (finished cells are skipped).", ""]
    if missing:
        lines += ["## Not run yet", "", ", ".join(c["id"] for c in missing), ""]
    lines += ["## Runs", "", "One row per run in [results.csv](results.csv); checkpoints are in the medzoo store "
              "(`medzoo list weights`), each with its `eval/` folder.", ""]
    path = out / "report.md"
    store.atomic_write(path, "\n".join(lines))
    return path


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def _clean(values: dict[int, Any]) -> dict[int, float]:
    return {s: float(v) for s, v in values.items() if _finite(v)}


def _write_results(out: Path, cells: list[dict[str, Any]], records: list[dict[str, Any] | None]) -> None:
    metric_keys = list(dict.fromkeys(k for r in records if r and r.get("metrics") for k in r["metrics"]))
    cols = ["cell", "target", "dataset", "arch", "chain", "seed", "status", "checkpoint", "stages", "trained",
            "reused", "val_metric", "val_best", "n_test", *metric_keys, "seconds", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for c, r in zip(cells, records):
        row = {"cell": c["id"], "target": c["target"], "dataset": c["dataset"], "arch": c["arch"],
               "chain": c["chain"], "seed": c["seed"], "stages": ",".join(c["stages"]), "status": "not run"}
        if r:
            row.update({k: r.get(k) for k in ("status", "checkpoint", "val_metric", "val_best", "n_test", "seconds",
                                              "error")})
            row.update(trained=len(r.get("trained", [])), reused=len(r.get("reused", [])))
            row.update({k: v for k, v in (r.get("metrics") or {}).items()})
        w.writerow(row)
    store.atomic_write(out / "results.csv", buf.getvalue())
