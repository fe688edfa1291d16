"""medagg's datasheet: what the build holds (by source, modality, body part, class and split), what it
dropped and why, the sources' licenses — as datasheet.json, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def _counts(rows: list[dict], column: str) -> dict[str, dict[str, int]]:
    out: dict[str, Counter] = {}
    for x in rows:
        out.setdefault(x[column], Counter())[x["split"]] += 1
    return {k: {s: c.get(s, 0) for s in ("train", "val", "test")} for k, c in sorted(out.items())}


def _table(title: str, counts: dict[str, dict[str, int]]) -> list[str]:
    lines = [f"### {title}", "", f"| {title.split()[-1]} | train | val | test | total |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for k, c in counts.items():
        lines.append(f"| {k} | {c['train']} | {c['val']} | {c['test']} | {sum(c.values())} |")
    return lines + [""]


def write_datasheet(folder: Path, rows: list[dict], sources, dropped: Counter, bad: list[str], cfg) -> dict:
    unique = [x for x in rows if not int(x["copy"])]
    sheet = {
        "images": len(unique),
        "rows": len(rows),
        "oversampled_copies": len(rows) - len(unique),
        "by_source": _counts(rows, "source"),
        "by_modality": _counts(rows, "modality"),
        "by_body_part": _counts(rows, "body_part"),
        "by_class": _counts(rows, "label"),
        "licenses": {s.key: {"dataset": s.name, "license": s.license} for s in sources},
        "dropped": {f"{src}: {why}": n for (src, why), n in sorted(dropped.items())},
        "skipped_bad_files": bad,
        "config": {k: v for k, v in vars(cfg).items() if k not in ("sources", "out")}
        | {"sources": [name for name, _ in cfg.sources]},
    }
    by_reason: Counter = Counter()
    for (_, why), n in dropped.items():
        by_reason[why] += n
    sheet["dropped_by_reason"] = dict(sorted(by_reason.items()))
    (folder / "datasheet.json").write_text(json.dumps(sheet, indent=2, sort_keys=True) + "\n")

    md = ["# medagg datasheet", "",
          f"{sheet['images']} images ({sheet['rows']} rows with {sheet['oversampled_copies']} oversampled copies) "
          f"from {len(sources)} sources, {cfg.size}×{cfg.size}×{cfg.channels}, task label: {cfg.label}, "
          f"seed {cfg.seed}.",
          "", "Plot: [datasheet.png](datasheet.png)", ""]
    md += _table("Counts by source", sheet["by_source"])
    md += _table("Counts by modality", sheet["by_modality"])
    md += _table("Counts by body_part", sheet["by_body_part"])
    md += _table("Counts by class", sheet["by_class"])
    md += ["### Licenses", "", "| source | dataset | license |", "| --- | --- | --- |"]
    md += [f"| {k} | {v['dataset']} | {v['license']} |" for k, v in sheet["licenses"].items()] + [""]
    md += ["### Dropped", "", "| source: reason | images |", "| --- | ---: |"]
    md += [f"| {k} | {n} |" for k, n in sheet["dropped"].items()] or ["| (none) | 0 |"]
    md += [""]
    if bad:
        md += ["### Unreadable files skipped (--skip-bad)", ""] + [f"- {b}" for b in bad] + [""]
    md += ["### Build options", "", "```", json.dumps(sheet["config"], indent=2), "```", ""]
    (folder / "datasheet.md").write_text("\n".join(md))
    _plot(folder / "datasheet.png", sheet)
    return sheet


def _plot(path: Path, sheet: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("source", sheet["by_source"]), ("modality", sheet["by_modality"]),
              ("body part", sheet["by_body_part"]), ("class (top 30)", dict(sorted(
                  sheet["by_class"].items(), key=lambda kv: -sum(kv[1].values()))[:30]))]
    fig, axes = plt.subplots(1, 4, figsize=(20, 6))
    for ax, (title, counts) in zip(axes, panels):
        names = list(counts)
        left = [0] * len(names)
        for split, colour in (("train", "tab:blue"), ("val", "tab:orange"), ("test", "tab:green")):
            vals = [counts[n][split] for n in names]
            ax.barh(names, vals, left=left, color=colour, label=split)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_title(f"images by {title}")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})  # no version stamp: rebuilds compare equal
    plt.close(fig)
