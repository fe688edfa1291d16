"""Shipped configuration is validated, not trusted: every dataset's default recipe, every grid in
experiments/, and recipe values / CLI edge cases, all refused before anything trains."""

from pathlib import Path

import pytest
from conftest import run_cli

import medzoo
from medzoo import recipe as mzrecipe
from medzoo import store
from medzoo.experiment import load_grid, plan
from medzoo.registry import MedzooError, registry

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted((ROOT / "experiments").glob("*.yaml"))
TINY = ["epochs=1", "image_size=32", "batch_size=32"]


def _nothing_written():
    return not store.home().exists() or not list(store.home().rglob("*.safetensors"))


@pytest.mark.parametrize("name", sorted(registry().entries["datasets"]))
def test_every_registered_default_recipe_resolves(name):
    spec = registry().entries["datasets"][name]
    recipe = mzrecipe.resolve(name, spec.recipe, {}, {}, [name], task=spec.task)
    assert recipe["freeze"] and recipe["epochs"] >= 1
    # the freeze policy with its argument resolves through the registry (medagg shipped 'none', which is none)
    ref = registry().resolve("policies", recipe["freeze"])
    if ref.spec.check is not None:
        ref.spec.check(ref.arg)


def test_medagg_default_freeze_is_a_registered_policy():
    assert registry().entries["datasets"]["medagg"].recipe["freeze"] == "full"


@pytest.mark.parametrize("grid", GRIDS, ids=[g.name for g in GRIDS])
def test_every_shipped_grid_resolves_every_cell(grid):
    g = load_grid(grid)  # check=True: archs, chain sources, datasets and each cell's recipe
    lines = plan(g)
    assert len(lines) == 1 + len(g.seeds) * sum(len(t.archs) for t in g.targets) * len(g.chains)


def test_experiment_check_prints_the_plan_and_trains_nothing(tmp_path):
    proc = run_cli("experiment", str(ROOT / "experiments" / "phantom.yaml"), "--check",
                   env={"MEDZOO_HOME": str(tmp_path / "home")})
    assert proc.stdout.startswith("grid 'phantom': 8 cells")
    assert "lesion.timm_test_resnet.agg.s0: timm:test_resnet  scratch > phantom_agg > phantom_lesion" in proc.stdout
    assert not (tmp_path / "home").exists() and not (Path.cwd() / "runs" / "phantom").exists()


@pytest.mark.parametrize("body, message", [
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nrecipe: {defaults: {freeze: none}}",
     "recipe key 'freeze' in --set: unknown freeze policy 'none'"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nrecipe: {defaults: {freeze: 'lld:7'}}",
     r"needs a decay in \(0, 1\]"),
    ("chains: {a: [scrach]}\ntargets: [phantom_lesion]\narchs: [resnet18]", "did you mean 'scratch'"),
    ("chains: {a: [scratch]}\ntargets: {l: {dataset: phantom_lesion, set: {metric: dice}}}\narchs: [resnet18]",
     "a classification stage does not report"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nruntime: {num_workers: lots}",
     "runtime key 'num_workers': --workers must be a whole number >= 0 or auto, not 'lots'"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nruntime: {precision: bf8}",
     "runtime key 'precision': --precision must be bf16, fp16, fp32 or auto, not 'bf8'"),
    ("chains: {a: [scratch]}\ntargets: [phantom_lesion]\narchs: [resnet18]\nruntime: {skip_bad: maybe}",
     "runtime key 'skip_bad' must be true or false, not 'maybe'"),
    ("chains: {a: [ssl:mocov2]}\ntargets: [phantom_lesion]\narchs: [resnet50]",
     "unknown weight source 'ssl:mocov2'; did you mean 'ssl:moco_v2'"),
])
def test_bad_grids_fail_on_check_naming_the_file_and_key(tmp_path, body, message):
    path = tmp_path / "g.yaml"
    path.write_text(body)
    with pytest.raises(MedzooError, match=message) as err:
        load_grid(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_experiment_check_catches_a_catalogue_source_typo_and_accepts_runtime_values(tmp_path):
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    grid = tmp_path / "g.yaml"
    grid.write_text("chains: {moco: [ssl:mocov2]}\ntargets: [phantom_lesion]\narchs: [resnet50]")
    proc = run_cli("experiment", str(grid), "--check", env=env, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"Error: grid '{grid}' chain 'moco': unknown weight source 'ssl:mocov2'; did you mean 'ssl:moco_v2' or "
        "'ssl:moco_v1'? (`medzoo list sources` shows all); a chain starts with a weight source or a stored checkpoint"]
    grid.write_text("chains: {moco: [ssl:moco_v2]}\ntargets: [phantom_lesion]\narchs: [resnet50]\n"
                    "runtime: {allow_overlap: true, num_workers: auto, precision: fp32, skip_bad: false}")
    proc = run_cli("experiment", str(grid), "--check", env=env)
    assert "phantom_lesion.resnet50.moco.s0: resnet50  ssl:moco_v2 > phantom_lesion" in proc.stdout
    assert not (tmp_path / "home").exists()


def test_a_bad_dataset_default_recipe_names_the_dataset_key_and_choices():
    with pytest.raises(MedzooError) as err:
        mzrecipe.resolve("medagg", {"freeze": "none"}, {}, {}, ["medagg"])
    text = str(err.value)
    assert "'medagg' dataset's default recipe" in text and "unknown freeze policy 'none'" in text
    assert "policies: auto" in text and "lld:<DECAY>" in text


@pytest.mark.parametrize("override, message", [
    ("epochs=0", r"'epochs' in --set must be ≥ 1"),
    ("epochs=-1", r"'epochs' in --set must be ≥ 1"),
    ("batch_size=0", r"'batch_size' in --set must be ≥ 1"),
    ("lr=-1", r"'lr' in --set must be > 0"),
    ("image_size=0", r"'image_size' in --set must be ≥ 16"),
    ("in_chans=2", r"must be 1 \(grey\) or 3 \(RGB\), got 2"),
    ("metric=dice", r"'metric' for the 'phantom_lesion' stage is 'dice', which a classification stage does not "
                    r"report; use one of auto, auc, accuracy, loss"),
    ("loss=dice_ce", r"does not fit a classification stage"),
    ("freeze=top:x", r"freeze policy 'top' needs a whole number"),
    ("freeze=auto:5", r"two thresholds"),
])
def test_bad_recipe_values_are_refused_before_anything_trains(override, message):
    with pytest.raises(MedzooError, match=message):
        medzoo.train("resnet18", "scratch,phantom_lesion", overrides=TINY + [override])
    assert _nothing_written()


def test_stages_typos_trailing_comma_and_checkpoint_did_you_mean(tmp_path):
    with pytest.raises(MedzooError, match=r"has an empty name at position 3 \(a stray comma\?\); write e\.g\. "
                                          r"--stages scratch,phantom_lesion$"):
        medzoo.train("resnet18", "scratch,phantom_lesion,", overrides=TINY)
    fake = store.checkpoints_dir() / "resnet18.scratch-phantom_agg"
    fake.mkdir(parents=True)
    with pytest.raises(MedzooError, match=r"neither a weight source nor a stored checkpoint; did you mean "
                                          r"'resnet18.scratch-phantom_agg'"):
        medzoo.train("resnet18", "resnet18.scratch-phantom_ag,phantom_lesion", overrides=TINY)


def test_cli_edge_cases_one_line_each(tmp_path):
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    bad = run_cli("train", "resnet18", "--stages", "scratch,phantom_lesion", "--set", "epochs=0", env=env, check=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "Error: recipe key 'epochs' in --set must be ≥ 1 and ≤ 100000, got 0"]
    for name, first in [("top", "top:<K> (freeze policy)"), ("lld", "lld:<DECAY> (freeze policy)"),
                        ("imagefolder", "imagefolder:<folder> (dataset)")]:
        assert run_cli("info", name, env=env).stdout.splitlines()[0] == first
    proc = run_cli("list", "policies", env={**env, "MEDZOO_LOAD_PLUGINS": "freeze_policies,freeze_policy"})
    assert ("MEDZOO_LOAD_PLUGINS names 'freeze_policy', which no installed plugin is; did you mean "
            "'freeze_policies'?") in proc.stderr and "timm_archs" in proc.stderr
    assert "full" in proc.stdout  # the plugin that does exist is loaded: only the unknown name is warned about
