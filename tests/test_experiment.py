"""Experiment grids: the phantom grid end to end (killed, resumed), shared stages, the report and its
statistics, failed cells, bad grids, the shipped grids."""

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, run_cli

from medzoo import experiment, report
from medzoo.registry import MedzooError

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = ROOT / "experiments" / "phantom.yaml"


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """experiments/phantom.yaml through the CLI: killed (SIGKILL) once a cell has finished, then rerun."""
    base = tmp_path_factory.mktemp("grid")
    env = {**os.environ, "MEDZOO_HOME": str(base / "home")}
    out = base / "out"
    cmd = [str(BIN / "medzoo"), "experiment", str(PHANTOM), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((out / "cells").glob("*.json")) and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    resumed = run_cli("experiment", str(PHANTOM), "--out", str(out), env={"MEDZOO_HOME": str(base / "home")})
    return {"out": out, "home": base / "home", "before": before, "resumed": resumed.stdout + resumed.stderr}


def _cells(out):
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def test_phantom_grid_runs_every_cell_and_trains_the_shared_stage_once(grid_run):
    out, home = grid_run["out"], grid_run["home"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert {(r["target"], r["chain"], r["seed"]) for r in rows} == {
        (t, c, s) for t in ("lesion", "lesion_probe") for c in ("scratch", "agg") for s in ("0", "1")}
    # 8 cells run 12 stages; the phantom_agg stage of each seed is trained once for both targets -> 10 trainings
    stored = [p for p in (home / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert len(stored) == 10
    cells = _cells(out)
    for seed in (0, 1):
        parents = {c["target"]: _lineage(home, c["checkpoint"])["stages"][0]["checkpoint"]
                   for c in cells if c["chain"] == "agg" and c["seed"] == seed}
        assert parents["lesion"] == parents["lesion_probe"]  # both targets fine-tuned from one agg checkpoint
        assert _lineage(home, parents["lesion"])["stages"][0]["seed"] == seed
    # the probe target really trained only the head, the other one the whole network
    probe = next(c for c in cells if c["target"] == "lesion_probe" and c["chain"] == "agg")
    assert _lineage(home, probe["checkpoint"])["stages"][-1]["freeze"] == "head"
    for c in cells:
        ev = home / "checkpoints" / c["checkpoint"] / "eval" / "phantom_lesion-test" / "metrics.json"
        assert json.loads(ev.read_text())["metrics"]["auc"] == pytest.approx(c["metrics"]["auc"])
        assert c["history"] and "val_auc" in c["history"][0]


def _lineage(home, name):
    return json.loads((home / "checkpoints" / name / "config.json").read_text())["medzoo"]


def test_killed_grid_resumes_without_redoing_finished_cells(grid_run):
    out, before = grid_run["out"], grid_run["before"]
    assert 1 <= len(before) < 8, "the kill should land after the first cell and before the last"
    for name, content in before.items():  # finished before the kill: skipped, not re-run
        assert (out / "cells" / name).read_bytes() == content
    assert f"{len(before)} of 8 cells already finished" in grid_run["resumed"]
    assert "8 of 8 cells finished, 0 failed" in grid_run["resumed"]


def test_report_has_a_table_per_target_with_p_values_and_rebuilds(grid_run, tmp_path):
    text = (grid_run["out"] / "report.md").read_text()
    for target in ("lesion", "lesion_probe"):
        assert f"## Target: {target} (dataset `phantom_lesion`, classification)" in text
        assert f"![{target}: metrics by chain](plots/{target}-bars.png)" in text
        assert (grid_run["out"] / "plots" / f"{target}-bars.png").stat().st_size > 0
        assert (grid_run["out"] / "plots" / f"{target}-timm_test_resnet-curves.png").stat().st_size > 0
    assert text.count("| arch | chain | auc | accuracy | f1 | rmse |") == 2
    assert text.count("| timm:test_resnet | scratch (baseline) |") == 2
    assert re.search(r"\| timm:test_resnet \| agg \| \d\.\d{3} ± \d\.\d{3} \(2\) \|", text)
    comparisons = re.findall(r"\| timm:test_resnet \| agg \| (auc|accuracy|f1|rmse) \| .*? "
                             r"\| ([+-]\d\.\d{3}|–) \| (\S+) \| (\S+) \| 2 \|", text)
    assert len(comparisons) == 8  # 2 targets × 4 metrics
    p_values = [p for *_, pp, pi in comparisons for p in (pp, pi) if p != "n/a"]
    assert p_values and all(p == "<0.001" or 0 <= float(p) <= 1 for p in p_values)
    assert "paired t-test" in text and "independent two-sample Student t-test" in text
    # `medzoo report` rebuilds the same tables from the folder alone
    copy = tmp_path / "copy"
    shutil.copytree(grid_run["out"], copy)
    (copy / "report.md").unlink()
    (copy / "results.csv").unlink()
    run_cli("report", str(copy))
    strip = lambda t: re.sub(r"Built .*? UTC", "", t)  # noqa: E731
    assert strip((copy / "report.md").read_text()) == strip(text)
    assert (copy / "results.csv").read_text() == (grid_run["out"] / "results.csv").read_text()
    proc = run_cli("report", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 1 and "is not an experiment folder" in proc.stderr and proc.stderr.count("\n") == 1


def test_t_tests_against_hand_computed_p_values():
    # paired: differences 0.1, 0.2, 0.05 -> t² = 7 with 2 df, two-sided p = 1 - t/sqrt(t² + 2) = 1 - sqrt(7)/3
    r = report.compare({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.6, 1: 0.8, 2: 0.75})
    assert r["p_paired"] == pytest.approx(1 - math.sqrt(7) / 3) and r["diff"] == pytest.approx(0.35 / 3)
    # independent, 2 + 2 runs: means 0.6 vs 0.9, pooled variance 0.02 -> t² = 4.5, p = 1 - t/sqrt(t² + 2)
    r = report.compare({0: 0.5, 1: 0.7}, {0: 0.8, 1: 1.0})
    assert r["p_indep"] == pytest.approx(1 - math.sqrt(4.5 / 6.5))
    assert math.isnan(r["p_paired"])  # constant difference: nothing to test
    r = report.compare({0: 0.5}, {0: 0.7, 1: float("nan")})
    assert math.isnan(r["p_paired"]) and math.isnan(r["p_indep"]) and r["n_pairs"] == 1


def test_a_failing_cell_is_reported_and_the_grid_goes_on(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(f"""
name: mixed
archs: ["timm:test_resnet"]
chains: {{scratch: [scratch]}}
targets:
  lesion: {{dataset: phantom_lesion}}
  missing: {{dataset: "imagefolder:{tmp_path / 'no_such_folder'}"}}
recipe: {{defaults: {{epochs: 1, image_size: 32, batch_size: 64, augment: none}}}}
bootstrap: 0
runtime: {{precision: fp32}}
""")
    result = experiment.run_grid(grid, out=tmp_path / "out")
    assert result["failed"] == 1 and result["cells"] == 2
    rows = {r["target"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert rows["lesion"]["status"] == "ok" and rows["missing"]["status"] == "failed"
    assert "MedzooError" in rows["missing"]["error"] and (tmp_path / "out" / "logs").is_dir()
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed cells" in text and "missing.timm_test_resnet.scratch.s0" in text


@pytest.mark.parametrize("doc, message", [
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nseedz: [1]",
     "unknown key 'seedz'; did you mean 'seeds'"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nbaseline: b",
     "baseline 'b' is not a chain"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet81]", "unknown architecture 'resnet81'"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nrecipe: {phantom_lesion: {epoch: 1}}",
     "unknown recipe key 'epoch'"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nrecipe: {inbreast: {epochs: 1}}",
     "recipe section 'inbreast' is not a dataset of any chain"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nseeds: [0, 0]", "seeds must be distinct"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]", "target 'phantom_lesion' has no architectures"),
    ("chains: {a: [scratch]}\ntargets: {phantom_lesion: {metrics: [dice]}}\narchs: [resnet18]",
     "target 'phantom_lesion' is classification, which has no metric 'dice'"),
])
def test_bad_grids_fail_before_anything_runs(tmp_path, doc, message):
    grid = tmp_path / "bad.yaml"
    grid.write_text(doc)
    with pytest.raises(MedzooError, match=re.escape(message)):
        experiment.run_grid(grid, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_folder_of_another_grid(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps({"grid": {"name": "other"}, "cells": []}))
    proc = run_cli("experiment", str(PHANTOM), "--out", str(out), "--seeds", "0", check=False)
    assert proc.returncode == 1 and "holds the results of another grid ('other')" in proc.stderr
    proc = run_cli("experiment", str(PHANTOM), "--seeds", "zero", check=False)
    assert proc.returncode == 1 and "seeds must be whole numbers" in proc.stderr


def test_shipped_grids_are_valid():
    light = experiment.load_grid(ROOT / "experiments" / "lightweight_multistage.yaml")
    assert [c.stages for c in experiment.cells(light)][:2] == [["imagenet", "head_ct"],
                                                               ["imagenet", "chest_xray", "head_ct"]]
    assert light.recipe["chest_xray"] == {"batch_size": 16, "optimizer": "adam", "epochs": 20, "freeze": "top:2"}
    design = experiment.load_grid(ROOT / "experiments" / "two_stage_design.yaml")
    assert set(design.chains) == {"none", "imagenet", "medagg", "imagenet_medagg"} and design.baseline == "imagenet"
    per_seed = [c for c in experiment.cells(design) if c.seed == 0]
    assert len({(c.chain, c.target) for c in per_seed}) == 12  # 4 chains × (INbreast, CBIS-DDSM, BCSS)
    assert {c.target for c in per_seed if c.arch == "swin_t"} == {"inbreast", "cbis_ddsm"}
    phantom = experiment.load_grid(PHANTOM)
    assert len(experiment.cells(phantom)) == 8


def test_a_cell_whose_target_is_a_folder_given_by_path_is_evaluated(tmp_path):
    import datagen as g

    data, seed = tmp_path / "site" / "scans", 0
    for split, n in {"train": 5, "val": 2, "test": 3}.items():
        for c in "ab":
            for i in range(n):
                seed += 1
                g.write_png(data / split / c / f"{i}.png", g.pattern(seed + (50 if c == "b" else 0), (40, 40)))
    grid = tmp_path / "g.yaml"
    grid.write_text(f"""
name: bypath
archs: ["timm:test_resnet"]
chains: {{scratch: [scratch]}}
targets:
  scans: {{dataset: "imagefolder:{data}"}}
recipe: {{defaults: {{epochs: 1, image_size: 32, batch_size: 64, augment: none}}}}
bootstrap: 0
runtime: {{precision: fp32}}
""")
    result = experiment.run_grid(grid, out=tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert result["failed"] == 0 and rows[0]["status"] == "ok", rows[0].get("error")
    assert int(rows[0]["n_test"]) == 6
