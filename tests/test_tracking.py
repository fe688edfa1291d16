"""Experiment tracking (`train --log`, `experiment --log`): runs written through the real TensorBoard and MLflow
libraries into a temp MEDZOO_HOME and read back with their own readers (EventAccumulator, MlflowClient)."""

import csv
import json
import sys
import warnings
from pathlib import Path

import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import medzoo
from medzoo import store
from medzoo.registry import LoggerSpec, MedzooError, MedzooWarning, registry

ROOT = Path(__file__).resolve().parents[1]
TINY = ["epochs=2", "image_size=32", "batch_size=32"]
ARCH = "timm:test_resnet"
METRICS = ("lr", "train_loss", "val_loss", "val_auc", "val_accuracy")


def _history(ckpt: Path) -> list[dict]:
    with open(ckpt / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _mlflow(home: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


class _Flaky:
    """A third-party tracker whose server goes away after the run starts."""

    def __init__(self, calls):
        self.calls = calls

    def start(self, stage, params, lineage):
        self.calls.append("start")

    def log_epoch(self, epoch, metrics):
        self.calls.append("log_epoch")
        raise ConnectionError("tracking server went away")

    def end(self, outcome):
        self.calls.append("end")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One two-epoch stage logged to TensorBoard, MLflow and a tracker that fails at the first epoch."""
    import os

    home = tmp_path_factory.mktemp("tracked") / "home"
    old = os.environ.get("MEDZOO_HOME")
    os.environ["MEDZOO_HOME"] = str(home)
    medzoo.registry.reset()
    calls = []
    registry().add("loggers", LoggerSpec("flaky", lambda info: _Flaky(calls)), "test")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = medzoo.train(ARCH, "scratch,phantom_lesion", overrides=TINY, precision="fp32",
                                   log=["tensorboard", "mlflow", "flaky"])
    finally:
        medzoo.registry.reset()
        if old is None:
            os.environ.pop("MEDZOO_HOME", None)
        else:
            os.environ["MEDZOO_HOME"] = old
    return {"home": home, "result": results[-1], "warnings": [str(w.message) for w in caught
                                                              if issubclass(w.category, MedzooWarning)],
            "calls": calls}


def test_mlflow_run_has_every_epoch_the_recipe_and_the_checkpoint(tracked):
    home, result = tracked["home"], tracked["result"]
    history = _history(result.path)
    assert len(history) == 2
    client = _mlflow(home)
    exp = client.get_experiment_by_name("medzoo")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.name
    for metric in METRICS:
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(got) == [(int(h["epoch"]), pytest.approx(h[metric], rel=1e-9)) for h in history], metric
    ckpt = store.read_checkpoint(result.path)
    recipe = ckpt.lineage.last.recipe
    params = run.data.params
    assert params["epochs"] == "2" and params["image_size"] == "32" and params["lr"] == json.dumps(recipe["lr"])
    assert set(params) >= {k for k, v in recipe.items() if not isinstance(v, dict)}
    tags = run.data.tags
    assert tags["medzoo.checkpoint"] == result.name and tags["medzoo.checkpoint_path"] == str(result.path)
    assert tags["medzoo.weights_sha256"] == result.weights_sha256 == ckpt.lineage.weights_sha256
    assert tags["medzoo.chain"] == "scratch > phantom_lesion" and tags["medzoo.arch"] == ARCH
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"lineage.json", "learning_curve.png",
                                                                         "history.csv"}
    lineage = json.loads(Path(client.download_artifacts(run.info.run_id, "lineage.json")).read_text())
    assert lineage == json.loads(json.dumps(ckpt.lineage.to_dict()))  # what config.json holds, exactly


def test_tensorboard_run_has_every_epoch_the_curve_and_the_checkpoint(tracked):
    home, result = tracked["home"], tracked["result"]
    history = _history(result.path)
    (run_dir,) = (home / "tensorboard" / "medzoo").iterdir()
    assert run_dir.name.startswith(store.slug(result.name) + "~")
    acc = _events(run_dir)
    for metric in METRICS:
        got = [(e.step, e.value) for e in acc.Scalars(metric)]
        assert got == [(int(h["epoch"]), pytest.approx(h[metric], rel=1e-6, abs=1e-9)) for h in history], metric
    text = acc.Tensors("checkpoint/text_summary")[0].tensor_proto.string_val[0].decode()
    assert result.name in text and str(result.path) in text
    recipe = acc.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| epochs | 2 |" in recipe and "| image_size | 32 |" in recipe
    assert acc.Tags()["images"] == ["learning_curve"]


def test_a_failing_logger_warns_once_and_training_goes_on(tracked):
    flaky = [w for w in tracked["warnings"] if "flaky" in w]
    assert len(flaky) == 1 and "tracking server went away" in flaky[0] and "training goes on" in flaky[0]
    assert tracked["calls"] == ["start", "log_epoch"]  # dropped after its failure: never called again
    assert tracked["result"].epochs_run == 2 and (tracked["result"].path / store.WEIGHTS).is_file()


def test_unknown_logger_fails_with_did_you_mean_before_anything_trains():
    proc = run_cli("train", ARCH, "--stages", "scratch,phantom_lesion", "--log", "tensorbord", check=False)
    assert proc.returncode == 1
    assert "Error: unknown logger 'tensorbord'; did you mean 'tensorboard'?" in proc.stderr
    assert not store.checkpoints_dir().exists()


@pytest.mark.parametrize("logger,module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_extra_is_one_line_naming_the_install_before_training(monkeypatch, logger, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import mlflow` meets when the extra is not installed
    with pytest.raises(MedzooError) as exc:
        medzoo.train(ARCH, "scratch,phantom_lesion", overrides=TINY, log=logger)
    assert f"pip install 'medzoo[{logger}]'" in str(exc.value) and "\n" not in str(exc.value)
    assert not store.checkpoints_dir().exists() and not (store.home() / "mlruns").exists()


def test_a_grid_is_one_mlflow_experiment_and_one_tensorboard_folder_with_a_run_per_trained_stage(tmp_path):
    """The shipped synthetic grid (seed 0 only), logged: every stage a cell trained is one run, grouped by grid
    and tagged with its cell; stages a later cell reused are not logged twice."""
    home, out = tmp_path / "home", tmp_path / "out"
    run_cli("experiment", str(ROOT / "experiments" / "phantom.yaml"), "--seeds", "0", "--out", str(out),
            "--log", "tensorboard,mlflow", env={"MEDZOO_HOME": str(home)}, timeout=900)
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    trained = {name: c["cell"] for c in cells for name in c["trained"]}
    assert len(cells) == 4 and len(trained) == 5  # phantom_agg of seed 0 trained once for both targets
    client = _mlflow(home)
    assert {e.name for e in client.search_experiments()} - {"Default"} == {"phantom"}
    runs = client.search_runs([client.get_experiment_by_name("phantom").experiment_id])
    assert {r.data.tags["medzoo.checkpoint"]: r.data.tags["medzoo.cell"] for r in runs} == trained
    assert all(r.info.status == "FINISHED" for r in runs)
    grid = home / "tensorboard" / "phantom"
    events = list(grid.glob("*/*/events.out.tfevents.*"))
    keys = {name: store.read_checkpoint(home / "checkpoints" / name).lineage.key for name in trained}
    assert len(events) == 5 and {(p.parent.parent.name, p.parent.name) for p in events} == {
        (store.slug(cell), f"{store.slug(name.partition('~')[0])}~{keys[name][:8]}") for name, cell in trained.items()}


def test_grid_runtime_log_is_checked_when_the_grid_is_read(tmp_path):
    grid = (ROOT / "experiments" / "phantom.yaml").read_text().replace("runtime: {precision: fp32}",
                                                                        "runtime: {precision: fp32, log: [mlflw]}")
    path = tmp_path / "g.yaml"
    path.write_text(grid)
    from medzoo.experiment import load_grid

    with pytest.raises(MedzooError, match="runtime key 'log': unknown logger 'mlflw'; did you mean 'mlflow'"):
        load_grid(path)


class _CtrlC:
    def start(self, stage, params, lineage):
        pass

    def log_epoch(self, epoch, metrics):
        raise KeyboardInterrupt  # Ctrl-C arriving as the first epoch is logged

    def end(self, outcome):
        pass


def test_an_interrupted_stage_closes_its_mlflow_run_as_killed_and_writes_no_checkpoint():
    registry().add("loggers", LoggerSpec("ctrl_c", lambda info: _CtrlC()), "test")
    with pytest.raises(KeyboardInterrupt):
        medzoo.train(ARCH, "scratch,phantom_lesion", overrides=TINY, precision="fp32", log="mlflow,ctrl_c")
    client = _mlflow(store.home())
    (run,) = client.search_runs([client.get_experiment_by_name("medzoo").experiment_id])
    assert run.info.status == "KILLED" and "KeyboardInterrupt" in run.data.tags["medzoo.error"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1]
    assert not [p for p in store.checkpoints_dir().glob("*") if not p.name.startswith(".")]


def test_a_tracking_uri_without_log_is_refused_rather_than_ignored():
    proc = run_cli("train", ARCH, "--stages", "scratch,phantom_lesion", "--tracking-uri", "http://127.0.0.1:9",
                   check=False)
    assert proc.returncode == 1 and "add --log mlflow" in proc.stderr
    assert not store.checkpoints_dir().exists()


class _CtrlCWithPath(_CtrlC):
    def __init__(self, path):
        self.path = path

    def log_epoch(self, epoch, metrics):
        raise KeyboardInterrupt(f"while reading {self.path}")


def test_track_paths_0_sends_no_local_path_and_no_error_text_to_mlflow(monkeypatch):
    monkeypatch.setenv("MEDZOO_TRACK_PATHS", "0")
    home = store.home()
    result = medzoo.train(ARCH, "scratch,phantom_lesion", overrides=["epochs=1", "image_size=32", "batch_size=32"],
                          precision="fp32", log="mlflow")[-1]
    secret = home / "patients" / "P0001.dcm"
    registry().add("loggers", LoggerSpec("ctrl_c_path", lambda info: _CtrlCWithPath(secret)), "test")
    with pytest.raises(KeyboardInterrupt):
        medzoo.train(ARCH, "scratch,phantom_lesion", overrides=TINY, precision="fp32", log="mlflow,ctrl_c_path",
                     force=True)
    client = _mlflow(home)
    runs = {r.info.status: r for r in client.search_runs([client.get_experiment_by_name("medzoo").experiment_id])}
    done, killed = runs["FINISHED"], runs["KILLED"]
    assert done.data.tags["medzoo.checkpoint"] == result.name and "medzoo.checkpoint_path" not in done.data.tags
    assert killed.data.tags["medzoo.error"] == "KeyboardInterrupt (message left out: MEDZOO_TRACK_PATHS=0)"
    for run in (done, killed):  # nothing sent names the local home (the checkpoint folder, the file)
        sent = json.dumps([run.data.tags, run.data.params])
        assert str(home) not in sent and "P0001" not in sent
    # by default both are sent (what docs/tracking.md says)
    monkeypatch.delenv("MEDZOO_TRACK_PATHS")
    with pytest.raises(KeyboardInterrupt):
        medzoo.train(ARCH, "scratch,phantom_lesion", overrides=TINY, precision="fp32", log="mlflow,ctrl_c_path",
                     force=True)
    errors = [r.data.tags.get("medzoo.error", "") for r in client.search_runs([done.info.experiment_id])]
    assert any(str(secret) in e for e in errors)


def test_train_no_track_paths_flag_leaves_the_checkpoint_path_out():
    run_cli("train", ARCH, "--stages", "scratch,phantom_lesion", "--set", "epochs=1", "--set", "image_size=32",
            "--precision", "fp32", "--log", "mlflow", "--no-track-paths")
    client = _mlflow(store.home())
    (run,) = client.search_runs([client.get_experiment_by_name("medzoo").experiment_id])
    assert run.info.status == "FINISHED" and "medzoo.checkpoint" in run.data.tags
    assert "medzoo.checkpoint_path" not in run.data.tags
