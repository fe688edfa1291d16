"""First-party experiment trackers for ``medzoo train --log``: TensorBoard and MLflow.

Each is an optional extra (``pip install 'medzoo[tensorboard]'``, ``'medzoo[mlflow]'``) imported only when asked
for: mlflow alone takes about a second to import, and the core install stays lean. A run is one trained stage;
runs are grouped by ``RunInfo.experiment`` (an MLflow experiment, a TensorBoard folder: a grid's name under
``medzoo experiment``) and ``RunInfo.group`` (the grid cell).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from medzoo.plugin import LoggerSpec, MedzooError, Outcome, RunInfo, StageRun, hookimpl, slug


def _need(module: str, extra: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise MedzooError(f"--log {extra} needs {what}, which is not installed ({exc.name} is missing); "
                          f"pip install 'medzoo[{extra}]'") from None


def track_paths() -> bool:
    """False when ``MEDZOO_TRACK_PATHS`` is 0/false/no/off: trackers then get no local path (the checkpoint's
    folder) and no error message (which may name files), only the error's type. A tracking URI may be a
    shared server outside the hospital network."""
    return os.environ.get("MEDZOO_TRACK_PATHS", "1").strip().lower() not in ("0", "false", "no", "off")


def _error(outcome: Outcome) -> str:
    if track_paths():
        return outcome.error
    return outcome.error.split(":", 1)[0] + " (message left out: MEDZOO_TRACK_PATHS=0)"


def _chain(lineage: dict[str, Any], stage: StageRun) -> str:
    """The chain as the lineage records it (public names: no local path), ending on this stage's dataset."""
    names = [str((lineage.get("source") or {}).get("name", "?"))]
    names += [str(s.get("dataset", "?")) for s in lineage.get("stages") or []]
    return " > ".join([*names, stage.dataset])


# -- TensorBoard --------------------------------------------------------------------------------------

class TensorBoardLogger:
    """``$MEDZOO_HOME/tensorboard/<experiment>/[<cell>/]<stage>~<key>/``: one event folder per stage, so
    ``tensorboard --logdir $MEDZOO_HOME/tensorboard/<experiment>`` shows a grid's runs side by side. Scalars are
    named as history.csv's columns, with the epoch as step."""

    def __init__(self, info: RunInfo, writer_cls: Any) -> None:
        self.root = info.home / "tensorboard" / slug(info.experiment)
        if info.group:
            self.root = self.root / slug(info.group)
        self.writer_cls = writer_cls
        self.writer: Any = None

    def start(self, stage: StageRun, params: dict[str, str], lineage: dict[str, Any]) -> None:
        # the stage key in the folder: two seeds or recipes of one chain are two runs; a rerun of the same key
        # (resumed, --force) replaces its run, and purge_step hides what a killed attempt logged from epoch 1 on
        run_dir = self.root / f"{slug(stage.name)}~{stage.key[:8]}"
        self.writer = self.writer_cls(str(run_dir), purge_step=1)
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.writer.add_text("recipe", f"| key | value |\n| --- | --- |\n{rows}")
        self.writer.add_text("stage", f"{stage.name} ({stage.arch} on {stage.dataset}, stage {stage.index}, "
                                      f"seed {stage.seed}): {_chain(lineage, stage)}")

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # a live `tensorboard` sees each epoch as it ends

    def end(self, outcome: Outcome) -> None:
        import numpy as np
        from PIL import Image

        w, step = self.writer, outcome.epochs_run
        if outcome.status == "FINISHED":
            where = f"\n\n{outcome.path}" if track_paths() else ""
            w.add_text("checkpoint", f"{outcome.checkpoint}{where}\n\nweights sha256 {outcome.weights_sha256}", step)
            w.add_text("lineage", "```\n" + json.dumps(outcome.lineage, indent=2, default=str) + "\n```", step)
            if outcome.learning_curve is not None:
                with Image.open(outcome.learning_curve) as im:
                    w.add_image("learning_curve", np.asarray(im.convert("RGB")), step, dataformats="HWC")
        else:
            w.add_text("status", f"{outcome.status}: {_error(outcome)}", step)
        w.close()
        self.writer = None


def _tensorboard(info: RunInfo) -> TensorBoardLogger:
    _need("tensorboard", "tensorboard", "the tensorboard package")
    from torch.utils.tensorboard import SummaryWriter

    return TensorBoardLogger(info, SummaryWriter)


# -- MLflow -----------------------------------------------------------------------------------------

class MlflowLogger:
    """One MLflow run per stage in the experiment ``RunInfo.experiment``. Where: ``--tracking-uri``, else
    ``MLFLOW_TRACKING_URI``, else a SQLite store ``$MEDZOO_HOME/mlruns/mlflow.db`` with artifacts beside it
    (MLflow 3 refuses its old file store unless told otherwise)."""

    def __init__(self, info: RunInfo, mlflow: Any) -> None:
        self.info, self.mlflow = info, mlflow
        self.uri = info.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
        self.artifacts: str | None = None
        if not self.uri:
            store = info.home / "mlruns"
            self.uri = f"sqlite:///{store / 'mlflow.db'}"
            self.artifacts = (store / "artifacts").as_uri()
        self.client: Any = None
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        # the store is opened at the first stage, not at creation: a plain `train --log mlflow` with a typo'd
        # server must not wait on retries before the data is even opened
        if self.client is None:
            if self.artifacts:
                (self.info.home / "mlruns").mkdir(parents=True, exist_ok=True)
            self.client = self.mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(self.info.experiment)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(self.info.experiment, artifact_location=self.artifacts)

    def start(self, stage: StageRun, params: dict[str, str], lineage: dict[str, Any]) -> None:
        from mlflow.entities import Param

        tags = {"medzoo.arch": stage.arch, "medzoo.dataset": stage.dataset, "medzoo.stage": str(stage.index),
                "medzoo.stage_key": stage.key, "medzoo.seed": str(stage.seed), "medzoo.chain": _chain(lineage, stage),
                "medzoo.source": str((lineage.get("source") or {}).get("name", "")),
                "medzoo.parent_sha256": (str((lineage.get("source") or {}).get("sha256", ""))
                                         if not lineage.get("stages")
                                         else str(lineage["stages"][-1].get("weights_sha256", "")))}
        if self.info.group:
            tags["medzoo.cell"] = self.info.group
        if stage.resumed_after:
            tags["medzoo.resumed_after_epoch"] = str(stage.resumed_after)
        run = self._create_run(stage, tags)
        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run, params=items[i:i + 100])

    def _create_run(self, stage: StageRun, tags: dict[str, str]) -> str:
        exp = self._experiment_id()
        self.run_id = self.client.create_run(exp, run_name=stage.name, tags=tags).info.run_id
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])

    def end(self, outcome: Outcome) -> None:
        run, c = self.run_id, self.client
        if outcome.status == "FINISHED":
            tags = {"medzoo.checkpoint": outcome.checkpoint, "medzoo.weights_sha256": outcome.weights_sha256,
                    "medzoo.best_epoch": str(outcome.best_epoch)}
            if track_paths():
                tags["medzoo.checkpoint_path"] = str(outcome.path)
            for key, value in tags.items():
                c.set_tag(run, key, value)
            if outcome.best is not None:
                c.log_metric(run, f"best_val_{outcome.metric}", float(outcome.best), step=outcome.best_epoch or 0)
            with tempfile.TemporaryDirectory() as tmp:
                lineage = Path(tmp) / "lineage.json"
                lineage.write_text(json.dumps(outcome.lineage, indent=2, default=str))
                c.log_artifact(run, str(lineage))
            for path in (outcome.learning_curve, outcome.history):
                if path is not None:
                    c.log_artifact(run, str(path))
        else:
            c.set_tag(run, "medzoo.error", _error(outcome)[:5000])
        c.set_terminated(run, status=outcome.status)
        self.run_id = None


def _mlflow(info: RunInfo) -> MlflowLogger:
    mlflow = _need("mlflow", "mlflow", "the mlflow package")
    return MlflowLogger(info, mlflow)


@hookimpl
def register_loggers(register):
    register(LoggerSpec("tensorboard", _tensorboard, extra="tensorboard",
                        description="TensorBoard event files under $MEDZOO_HOME/tensorboard/<experiment>/"))
    register(LoggerSpec("mlflow", _mlflow, extra="mlflow",
                        description="MLflow runs: --tracking-uri / MLFLOW_TRACKING_URI, else SQLite in "
                                    "$MEDZOO_HOME/mlruns/"))
