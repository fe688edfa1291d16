"""Experiment tracking: the loggers that ``medzoo train --log NAME[,NAME…]`` sends each trained stage to.

Trackers come from plugins (hook ``register_loggers``, spec ``LoggerSpec``); TensorBoard and MLflow are
first-party (``medzoo_plugins.tracking``). A logger is created once per chain, before anything trains, and
sees one run per trained stage: ``start`` (the stage, its recipe as flat params, the lineage it starts from),
``log_epoch`` after every epoch (the row history.csv gets), ``end`` once (the written checkpoint, or the
failure). A reused stage trains nothing and logs nothing. Only rank 0 logs.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist

from .registry import MedzooError, MedzooWarning, registry


@dataclass(frozen=True)
class RunInfo:
    """What a logger knows when it is created: the chain, and how its runs are grouped."""

    arch: str
    home: Path  # $MEDZOO_HOME: local stores (mlruns/, tensorboard/) go under it by default
    experiment: str = "medzoo"  # an MLflow experiment / a TensorBoard folder; a grid's name under `medzoo experiment`
    group: str = ""  # the grid cell (target.arch.chain.seed); '' for a plain `medzoo train`
    tracking_uri: str | None = None  # --tracking-uri: a tracking server (loggers that have one)


@dataclass(frozen=True)
class StageRun:
    """The run a logger opens: one trained stage."""

    name: str  # the checkpoint name it will be stored under (a '~<key>' variant may be added when written)
    arch: str
    dataset: str  # public name: a path-given dataset is named by its folder, never its path
    index: int  # 1 for the chain's first training stage
    key: str  # the stage's identity (arch, parent weights, data, recipe): a rerun of the same key is the same run
    seed: int
    epochs: int
    resumed_after: int = 0  # epochs already done by a killed run (their rows are logged again first)


@dataclass(frozen=True)
class Outcome:
    """How a run ended. On success, where the checkpoint is and its full lineage (as written to config.json)."""

    status: str  # FINISHED | FAILED | KILLED
    checkpoint: str = ""
    path: Path | None = None
    weights_sha256: str = ""
    metric: str = ""
    best: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    lineage: dict[str, Any] = field(default_factory=dict)
    learning_curve: Path | None = None
    history: Path | None = None
    error: str = ""


class Logger(Protocol):
    def start(self, stage: StageRun, params: dict[str, str], lineage: dict[str, Any]) -> None: ...

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def end(self, outcome: Outcome) -> None: ...


def parse_names(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"tensorboard,mlflow"`` or a list → distinct names in order."""
    if not names:
        return []
    items = names.split(",") if isinstance(names, str) else [p for n in names for p in str(n).split(",")]
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            raise MedzooError(f"--log {names!r} has an empty name; write e.g. --log tensorboard,mlflow")
        if item not in out:
            out.append(item)
    return out


def check_names(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Resolve every logger name (did-you-mean on a typo) without creating anything."""
    out = parse_names(names)
    for name in out:
        registry().resolve("loggers", name)
    return out


def open_loggers(names: str | list[str] | tuple[str, ...] | None, info: RunInfo) -> Loggers:
    """Create the named loggers: a typo or a missing extra fails here, before anything trains."""
    return Loggers([(n, registry().resolve("loggers", n).spec.create(info)) for n in check_names(names)])


def flat_params(recipe: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The recipe as tracker params: nested keys dotted (``preprocess.clahe``), values as JSON text."""
    out: dict[str, str] = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class Loggers:
    """The chain's loggers, called as one. A logger that raises is warned about once and dropped: a tracker is
    a view of the training, not its record (the checkpoint, history.csv and the lineage are), so a tracking
    server going down or a full disk under tensorboard/ must not cost the epochs already trained."""

    def __init__(self, loggers: list[tuple[str, Logger]] | None = None) -> None:
        self._live = dict(loggers or [])
        self._open = False

    def __bool__(self) -> bool:
        return bool(self._live)

    def _active(self) -> bool:
        # only rank 0 reads the written checkpoint back and logs: other ranks may not share its file system
        return bool(self._live) and _rank() == 0

    def _call(self, method: str, *args: Any) -> None:
        for name, logger in list(self._live.items()):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:
                del self._live[name]
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                warnings.warn(f"logger '{name}' failed in {method} ({type(exc).__name__}: {text}) and is off for "
                              "the rest of this run; training goes on (history.csv and the checkpoint keep every "
                              "epoch)", MedzooWarning, stacklevel=2)

    # -- called by the stage trainer ------------------------------------------------------------
    def stage_started(self, trainer: Any, history: list[dict[str, Any]], index: int) -> None:
        """A stage starts (or resumes after ``len(history)`` epochs, whose rows are logged again so the new run
        has the whole curve)."""
        from .store import public_dataset

        if not self._active():
            return
        r = trainer.recipe
        stage = StageRun(name=trainer.name, arch=trainer.arch_ref.name, dataset=public_dataset(trainer.dataset),
                      index=index, key=trainer.key, seed=int(r["seed"]), epochs=int(r["epochs"]),
                      resumed_after=len(history))
        self._call("start", stage, flat_params(r), trainer.parent.lineage.to_dict())
        self._open = True
        for row in history:
            self.epoch(row)

    def epoch(self, row: dict[str, Any]) -> None:
        if self._active():
            self._call("log_epoch", int(row["epoch"]), {k: float(v) for k, v in row.items()
                                                        if k != "epoch" and isinstance(v, (int, float))})

    def stage_ended(self, path: Path, metric: str, best: dict[str, Any], epochs_run: int) -> None:
        """The checkpoint is written: its lineage is read back from it, so trackers get what was stored."""
        from .store import read_checkpoint

        if not self._active():
            return
        ckpt = read_checkpoint(path)
        curve = path / "learning_curve.png"
        self._call("end", Outcome(status="FINISHED", checkpoint=ckpt.name, path=path,
                                  weights_sha256=ckpt.lineage.weights_sha256 or "", metric=metric,
                                  best=best.get("value"), best_epoch=best.get("epoch"), epochs_run=epochs_run,
                                  lineage=ckpt.lineage.to_dict(), learning_curve=curve if curve.is_file() else None,
                                  history=path / "history.csv" if (path / "history.csv").is_file() else None))
        self._open = False

    def stage_failed(self, exc: BaseException) -> None:
        """The stage raised (or was interrupted) after its run was opened: close the run as failed/killed."""
        if not self._active() or not self._open:
            return
        self._open = False
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        self._call("end", Outcome(status=status, error=f"{type(exc).__name__}: {exc}"[:500]))
