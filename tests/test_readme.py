"""README's usage commands run as written (on the built-in synthetic data, overriding only epochs and image
size where a command trains), and every `medzoo …` line of README's code blocks is accounted for here: a
new README command without a test fails this file."""

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "epochs=1", "--set", "image_size=32"]

# README line -> where it runs: "here" (test_readme_commands below) or the test that runs it
ELSEWHERE = {
    "medzoo train swin_t --stages imagenet,medagg,inbreast":
        "tests/test_headline.py::test_imagenet_medagg_inbreast_from_an_offline_hf_cache[swin_t…] "
        "(medagg built from real layouts, an offline HF cache; epochs=1)",
    "medzoo experiment experiments/phantom.yaml --seeds 0,1":
        "tests/test_experiment.py::grid_run (the same grid and seeds through the CLI, killed and resumed)",
    "medzoo report runs/phantom":
        "tests/test_experiment.py::test_report_has_a_table_per_target_with_p_values_and_rebuilds",
    "medzoo experiment experiments/phantom.yaml --seeds 0 --log tensorboard,mlflow":
        "tests/test_tracking.py::test_a_grid_is_one_mlflow_experiment_and_one_tensorboard_folder_with_a_run_per_"
        "trained_stage (the same command, runs read back with MlflowClient and EventAccumulator)",
    "medzoo publish NAME --repo-id ORG/NAME --license cc-by-4.0":
        "tests/test_provenance.py::test_an_unknown_licence_makes_publish_refuse_unless_named (refused without "
        "--license, carded with it) and tests/test_zoo_hub.py (the upload itself, to the Hub test double)",
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("medzoo "):
                lines.append(line)
    return lines


def test_every_readme_command_is_run_by_a_test():
    here = set(COMMANDS)
    for line in readme_commands():
        assert line in here or line in ELSEWHERE, f"README command without a test: {line}"


def _cli(*args, env, **kw):
    return run_cli(*args, env=env, timeout=900, **kw)


# README line -> the argv run (the line itself, plus only epochs/image size for training, and the
# concrete values of its placeholders)
COMMANDS = {
    "medzoo train resnet18 --stages scratch,phantom_agg,phantom_lesion --set phantom_lesion.epochs=5":
        ["train", "resnet18", "--stages", "scratch,phantom_agg,phantom_lesion", "--set", "phantom_lesion.epochs=5",
         "--set", "phantom_agg.epochs=1", "--set", "image_size=32"],
    "medzoo list weights": ["list", "weights"],
    "medzoo list archs|datasets|policies|sources [--json]": None,  # expanded below
    "medzoo info swin_t": ["info", "swin_t"],
    "medzoo plugins": ["plugins"],
    "medzoo evaluate resnet18.scratch-phantom_agg-phantom_lesion":
        ["evaluate", "resnet18.scratch-phantom_agg-phantom_lesion"],
    "medzoo card NAME": ["card", "resnet18.scratch-phantom_agg-phantom_lesion"],
    "medzoo publish NAME --repo-id ORG/NAME [--dry-run]":
        ["publish", "resnet18.scratch-phantom_agg-phantom_lesion", "--repo-id", "my-lab/resnet18-phantom", "--dry-run"],
    "medzoo train resnet18 --stages scratch,phantom_lesion --log tensorboard,mlflow":
        ["train", "resnet18", "--stages", "scratch,phantom_lesion", "--log", "tensorboard,mlflow", *FAST],
    "medzoo errors resnet18.scratch-phantom_lesion": ["errors", "resnet18.scratch-phantom_lesion"],
    "medzoo experiment experiments/phantom.yaml --check": ["experiment", str(ROOT / "experiments" / "phantom.yaml"),
                                                           "--check"],
    "medzoo data export phantom_lesion --split test --limit 4 --out phantom_test":
        ["data", "export", "phantom_lesion", "--split", "test", "--limit", "4", "--out", "{tmp}/phantom_test"],
    "medzoo predict resnet18.scratch-phantom_lesion phantom_test/images --out predictions.csv --saliency maps":
        ["predict", "resnet18.scratch-phantom_lesion", "{tmp}/phantom_test/images", "--out", "{tmp}/predictions.csv",
         "--saliency", "{tmp}/maps"],
}


@pytest.mark.slow  # 340 s here under load with the current CPU precision default (bf16 autocast on AVX2)
def test_readme_commands(tmp_path):
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    out = {}
    for line, argv in COMMANDS.items():
        if argv is None:
            continue
        if argv[0] == "errors":  # the chain without the middle stage, as `make demo` trains it
            _cli("train", "resnet18", "--stages", "scratch,phantom_lesion", *FAST, env=env)
        out[line] = _cli(*[a.format(tmp=tmp_path) for a in argv], env=env).stdout
    for kind in ("archs", "datasets", "policies", "sources"):
        assert _cli("list", kind, env=env).stdout.startswith("NAME")
        rows = json.loads(_cli("list", kind, "--json", env=env).stdout)
        assert rows and all("name" in r for r in rows)
    assert "resnet18.scratch-phantom_agg-phantom_lesion" in out["medzoo list weights"]
    assert "swin_tiny_patch4_window7_224" in out["medzoo info swin_t"]
    assert "freeze_policies" in out["medzoo plugins"]
    assert "auc" in out["medzoo evaluate resnet18.scratch-phantom_agg-phantom_lesion"]
    assert out["medzoo card NAME"].startswith("---")
    assert "model.safetensors" in out["medzoo publish NAME --repo-id ORG/NAME [--dry-run]"]
    assert ".html" in out["medzoo errors resnet18.scratch-phantom_lesion"]
    home = tmp_path / "home"  # the tracked stage, before `errors` reused it: one run in each tracker
    assert len(list((home / "tensorboard" / "medzoo").glob("resnet18.scratch_phantom_lesion~*/events.out.*"))) == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("medzoo").experiment_id])
    assert run.data.tags["medzoo.checkpoint"] == "resnet18.scratch-phantom_lesion"
    assert out["medzoo experiment experiments/phantom.yaml --check"].startswith("grid 'phantom': 8 cells")
    assert "4 predictions" in out["medzoo predict resnet18.scratch-phantom_lesion phantom_test/images --out "
                                  "predictions.csv --saliency maps"]
    assert (tmp_path / "predictions.csv").read_text().startswith("path,p_")
    assert len(list((tmp_path / "maps").glob("*_saliency.png"))) == 4


@pytest.mark.slow  # 220 s here under load, for the same reason
def test_readme_python_snippet(tmp_path):
    import medzoo

    assert any(a.name == "densenet121" for a in medzoo.list_archs())
    assert medzoo.get_arch("swin_t").timm_name == "swin_tiny_patch4_window7_224"
    model = medzoo.create_model("resnet50@truncate=1", num_classes=2, in_chans=1)
    assert model.num_classes == 2
    results = medzoo.train("resnet18", ["scratch", "phantom_agg", "phantom_lesion"],
                           overrides=["epochs=2", "image_size=32"])
    assert [r.dataset for r in results] == ["phantom_agg", "phantom_lesion"]
    model = medzoo.load(results[-1].name)
    transform = medzoo.transforms_for(model)
    assert transform is not None
