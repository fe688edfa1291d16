"""One training stage: build the model for the dataset, take the parent's weights, apply the freeze policy
each epoch, train, keep the best epoch by the validation metric, save resumable state after every epoch,
and write the checkpoint. The chain around it is ``medzoo.trainer``.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import data as mzdata
from . import licenses, models, optim, speed, store
from ._version import __version__
from .cache import read_settings
from .devices import pick_device
from .lineage import Lineage, StageRecord
from .metrics import (
    DiceCELoss,
    classification_metrics,
    confusion_matrix,
    plot_history,
    plot_segmentation,
    segmentation_metrics,
    write_history,
)
from .registry import MedzooError, registry
from .rng import rng_state, seed_everything, set_rng_state
from .tracking import Loggers


@dataclass
class Runtime:
    """How to run, not what to train: none of this changes a stage's identity."""

    device: str | None = None  # auto: cuda > mps > cpu
    precision: str = "auto"  # auto | bf16 | fp16 | fp32; auto is decided by medzoo.speed from the hardware
    channels_last: bool | None = None  # None: auto (medzoo.speed.channels_last)
    compile: bool = False
    num_workers: int | str | None = None  # None or "auto": medzoo.speed.workers (CUDA: from the cores; CPU: 0)
    data_roots: dict[str, str] = field(default_factory=dict)
    force: bool = False
    skip_bad: bool = False  # leave out unreadable files and rows (counted and listed) instead of failing
    allow_overlap: bool = False  # train although val/test images appear in an earlier stage's training data
    log: str | list[str] | tuple[str, ...] = ()  # --log: experiment trackers (registered loggers), e.g. ("mlflow",)
    tracking_uri: str | None = None  # --tracking-uri: a tracker's server (MLflow); default a local store
    experiment: str | None = None  # groups the runs (an MLflow experiment, a TensorBoard folder); default 'medzoo'
    run_group: str = ""  # the grid cell a chain belongs to (set by `medzoo experiment`)


@dataclass
class StageResult:
    name: str
    path: Path
    dataset: str
    reused: bool
    metric: str
    best: float | None
    epochs_run: int
    seconds: float
    weights_sha256: str


@dataclass
class Parent:
    name: str  # prefix of the next stage's name
    arch: str  # the architecture these weights belong to
    state: dict[str, torch.Tensor] | None
    sha256: str
    label_names: list[str] | None
    lineage: Lineage  # source and stages so far; the next stage appends to them
    origin: str


def log(*args) -> None:
    if _rank() == 0:
        print(*args, flush=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    if _world() > 1:
        dist.barrier()


class BestEpoch:
    """The best epoch so far by the validation metric (lower is better for loss, higher for the rest), and
    early stopping: ``patience`` epochs in a row without improvement (0: never stop)."""

    def __init__(self, metric: str, patience: int, best: dict[str, Any] | None = None, bad: int = 0):
        self.metric, self.patience, self.bad = metric, patience, bad
        self.best: dict[str, Any] = best or {"metric": metric, "value": None, "epoch": None}

    def update(self, epoch: int, val: dict[str, float]) -> bool:
        """Record epoch ``epoch`` (1-based) with validation metrics ``val``; returns whether it is the new best."""
        value, old = val[self.metric], self.best["value"]
        improved = old is None or (value < old if self.metric == "loss" else value > old)
        if improved:
            self.best = {"metric": self.metric, "value": value, "epoch": epoch, "val": val}
            self.bad = 0
        else:
            self.bad += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience


# -- the stage ------------------------------------------------------------------------------------

def _takes(fn: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in params)


class StageTrainer:
    overlap: dict | None = None  # {"allowed", "pairs", "examples"}: set by the chain when --allow-overlap was needed
    loggers: Loggers = Loggers()  # --log trackers and the stage's place in the chain: set by the chain
    stage_index: int = 1

    def __init__(self, arch_ref, parent, dataset, source, recipe, runtime, name, key):
        self.arch_ref, self.parent, self.dataset, self.source = arch_ref, parent, dataset, source
        self.recipe, self.runtime, self.name, self.key = recipe, runtime, name, key
        self.task = source.task
        self._ensure_val_split()  # first: a stage that cannot validate fails before any model is built
        self._metric = self._pick_metric()
        self.n_train = len(source.split("train"))
        self.workdir = store.runs_dir() / key[:16]
        self.device = pick_device(runtime.device)
        self.hw = speed.detect(self.device.type)
        speed.precision(runtime.precision, self.hw), speed.workers(runtime.num_workers, self.hw)  # bad values fail here
        seed_everything(recipe["seed"])
        self.model = models.build(arch_ref, num_classes=len(source.classes), in_chans=recipe["in_chans"],
                                  img_size=recipe["image_size"])
        self.transfer = None
        if parent.state is not None:
            keep_head = parent.label_names is not None and list(parent.label_names) == list(source.classes)
            load = arch_ref.spec.load_parent or models.transfer_weights
            self.transfer = load(self.model, parent.state, keep_head=keep_head, origin=parent.origin)
        self.policy_name = self._resolve_policy()

    def _resolve_policy(self) -> str:
        name = self.recipe["freeze"]
        ref = registry().resolve("policies", name)
        if ref.spec.resolve is not None:
            chosen = ref.spec.resolve(arg=ref.arg, n_train=self.n_train, task=self.task)
            registry().resolve("policies", chosen)
            return chosen
        return name

    def _ensure_val_split(self) -> None:
        if not self.source.split("val"):
            mzdata.carve_val_split(self.source)
        if not self.source.split("val"):  # else every epoch scores NaN and the "best" one is arbitrary
            train = self.source.split("train")
            patients = len({r.patient or r.id for r in train})
            raise MedzooError(f"'{self.dataset}' has no validation images: its {len(train)} training images come "
                              f"from {patients} patient(s), too few to hold some out by patient; add data (or "
                              "give the dataset a val split) before training on it")

    # -- pieces ----------------------------------------------------------------------------------
    def _precision(self) -> tuple[torch.dtype | None, bool]:
        p = speed.precision(self.runtime.precision, self.hw)
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p], p == "fp16"

    def _channels_last(self) -> bool:
        precision = speed.precision(self.runtime.precision, self.hw)
        return speed.channels_last(self.runtime.channels_last, self.hw, precision, not self.arch_ref.spec.channels_last)

    def _transform_cfg(self) -> mzdata.TransformConfig:
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        return mzdata.TransformConfig(image_size=self.recipe["image_size"], augment=self.recipe["augment"],
                                      mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                                      std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                                      in_chans=self.recipe["in_chans"])

    def _loader(self, split: str) -> torch.utils.data.DataLoader:
        """Built once per stage; ``_reseed(epoch)`` makes each epoch's order depend only on (seed, epoch),
        which is what lets a resumed run match an uninterrupted one."""
        train = split == "train"
        ds = mzdata.TorchDataset(self.source, split, mzdata.build_transform(self._transform_cfg(), train),
                                 self.recipe["in_chans"])
        sampler: torch.utils.data.Sampler | None = None
        if train and self.recipe["balanced_sampling"] and self.task == "classification":
            counts = np.bincount([r.label for r in ds.records], minlength=len(self.source.classes))
            weights = [1.0 / counts[r.label] for r in ds.records]
            sampler = torch.utils.data.WeightedRandomSampler(weights, len(weights), generator=self.gen)
        part = None
        if _world() > 1:
            if train:
                sampler = torch.utils.data.distributed.DistributedSampler(ds, seed=self.recipe["seed"], drop_last=True)
            else:  # each rank scores a disjoint slice; results are gathered, so nothing is counted twice
                part = torch.utils.data.Subset(ds, list(range(_rank(), len(ds), _world())))
        w = speed.workers(self.runtime.num_workers, self.hw)
        return torch.utils.data.DataLoader(
            part if part is not None else ds, batch_size=self.recipe["batch_size"], shuffle=train and sampler is None,
            sampler=sampler, generator=self.gen if train else None, num_workers=w,
            pin_memory=self.device.type == "cuda", persistent_workers=w > 0,
            drop_last=train and len(ds) > self.recipe["batch_size"])

    def _reseed(self, loader, epoch: int) -> None:
        self.gen.manual_seed(self.recipe["seed"] * 100_003 + epoch)
        if isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler):
            loader.sampler.set_epoch(epoch)

    def _optimizer(self, lr_scales: dict[str, float]) -> torch.optim.Optimizer:
        return optim.optimizer(self.model, self.recipe, lr_scales)

    def _scheduler(self, opt, steps_per_epoch: int):
        return optim.scheduler(opt, self.recipe, self.metric, steps_per_epoch)

    def _criterion(self):
        r, classes = self.recipe, len(self.source.classes)
        if self.task == "segmentation":
            return DiceCELoss(self.source.ignore_index, background=self.source.classes[0] == "background")
        loss = r["loss"] if r["loss"] != "auto" else ("bce" if self.task == "multilabel" else "ce")
        weight = None
        if r["class_weights"]:
            labels = [r_.label for r_ in self.source.split("train")]
            if self.task == "multilabel":
                pos = np.asarray(labels, dtype=np.float64).sum(0)
                weight = torch.tensor((len(labels) - pos) / np.maximum(pos, 1), dtype=torch.float32)
            else:
                counts = np.bincount(labels, minlength=classes).astype(np.float64)
                weight = torch.tensor(counts.sum() / (classes * np.maximum(counts, 1)), dtype=torch.float32)
        if weight is not None:
            weight = weight.to(self.device)
        if loss == "bce":
            return torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=r["label_smoothing"])

    @property
    def metric(self) -> str:
        return self._metric

    def _pick_metric(self) -> str:
        m = self.recipe["metric"]
        m = ("auc" if self.task in ("classification", "multilabel") else "dice") if m == "auto" else m
        if m == "auc" and self.task == "classification":
            present = {r.label for r in self.source.split("val")}
            if len(present) < 2:  # AUC is undefined (NaN) on one class: a NaN must never crown an epoch
                only = self.source.classes[next(iter(present))] if present else "none"
                log(f"[{self.name}] the validation split has one class ({only}), where AUC is undefined; "
                    "the best epoch is picked by validation loss")
                return "loss"
        return m

    def _apply_policy(self, epoch: int) -> dict[str, float]:
        ref = registry().resolve("policies", self.policy_name)
        ctx = {"arg": ref.arg, "epoch": epoch, "epochs": self.recipe["epochs"], "n_train": self.n_train}
        if _takes(ref.spec.apply, "groups"):  # policies written before groups= existed keep working
            ctx["groups"] = models.block_groups(self.model, self.arch_ref.spec.group_prefixes)
        scales = ref.spec.apply(self.model, **ctx) or {}
        return scales

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> tuple[StageResult, Parent]:
        t0 = time.time()
        state = self._saved_state()
        # the optimizer's groups as they were when its state was saved (lr scales may change per epoch)
        self._setup(self._apply_policy(state["epoch"] if state is not None else 0))
        start = self._resume(state) if state is not None else 0
        del state  # the saved optimizer state is a model's size or twice that: not kept for the whole stage
        if self.transfer is not None and start == 0:
            log(f"[{self.name}] {self.transfer} from {self.parent.origin}; freeze policy {self.policy_name}"
                + (f" (auto, {self.n_train} training images)" if self.recipe["freeze"].startswith("auto") else ""))
        self.loggers.stage_started(self, self.history, self.stage_index)
        self._epoch_loop(start)
        return self._finish(time.time() - t0 + sum(h["seconds"] for h in self.history[:start]))

    def _saved_state(self) -> dict[str, Any] | None:
        """The resumable state a killed run of this same stage (same key) left after its last full epoch."""
        path = self.workdir / "last.safetensors"
        state = store.load_state(path) if path.is_file() else None
        return state if state is not None and state.get("key") == self.key else None

    def _setup(self, lr_scales: dict[str, float]) -> None:
        """Model on its device, optimizer, loaders, schedule, loss and a fresh best-epoch tracker."""
        self.model.to(self.device)
        self.cl = self._channels_last()
        if self.cl:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype, use_scaler = self._precision()
        self.opt = self._optimizer(lr_scales)
        self.gen = torch.Generator()
        self.train_loader, self.val_loader = self._loader("train"), self._loader("val")
        self.sched = self._scheduler(self.opt, math.ceil(len(self.train_loader) / self.recipe["grad_accum"]))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.criterion = self._criterion()
        self.net = torch.compile(self.model) if self.runtime.compile else self.model
        self.history: list[dict[str, Any]] = []
        self.tracker = BestEpoch(self.metric, self.recipe["patience"])
        self.best_state: dict[str, torch.Tensor] | None = None

    def _resume(self, state: dict[str, Any]) -> int:
        """Restore model, optimizer, schedule, scaler, RNG, history and best epoch; returns the next epoch."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.history = state["history"]
        self.tracker = BestEpoch(self.metric, self.recipe["patience"], state["best"], state["bad"])
        self.best_state = models.load_safetensors(self.workdir / "best.safetensors")
        start = state["epoch"] + 1
        log(f"[{self.name}] resuming after epoch {start} of {self.recipe['epochs']}")
        return start

    def _epoch_loop(self, start: int) -> None:
        for epoch in range(start, self.recipe["epochs"]):
            te = time.time()
            optim.rescale(self.opt, self.sched, self.model, self.recipe, self._apply_policy(epoch))
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            train_loss = self._train_epoch(self._parallel(self.net), self.opt, self.sched, self.scaler, self.criterion,
                                           self.amp_dtype, self.cl, epoch)
            if _world() > 1:  # BatchNorm statistics are per rank; keep every rank's model identical
                for b in self.model.buffers():
                    dist.broadcast(b, 0)
            val = self._validate(self.net, self.criterion, self.amp_dtype, self.cl)
            if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.sched.step(val[self.metric])
            row = {"epoch": epoch + 1, "lr": self.opt.param_groups[0]["lr"], "train_loss": train_loss,
                   **{f"val_{k}": v for k, v in val.items()}, "trainable_params": trainable,
                   "seconds": round(time.time() - te, 2)}
            if self._end_epoch(epoch, row, val):
                log(f"[{self.name}] early stop: no improvement in {self.recipe['patience']} epochs")
                break

    def _parallel(self, net: Any) -> Any:
        """``net`` wrapped for DistributedDataParallel under torchrun; as it is on one process."""
        if _world() == 1:
            return net
        return torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _end_epoch(self, epoch: int, row: dict[str, Any], val: dict[str, float]) -> bool:
        """An epoch's metrics are complete (``row``: its history.csv row): record them, keep the best
        weights, save the resumable state. Returns whether to stop early."""
        self.history.append(row)
        self.loggers.epoch(row)
        improved = self.tracker.update(epoch + 1, val)
        if improved:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        log(f"[{self.name}] epoch {epoch + 1}/{self.recipe['epochs']}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {val['loss']:.4f}  val_{self.metric} {val[self.metric]:.4f}{'  *best' if improved else ''}  "
            f"({row['seconds']:.1f}s)")
        if _rank() == 0:
            self._save_state(epoch, improved)
        _barrier()
        return self.tracker.should_stop

    def _save_state(self, epoch: int, improved: bool) -> None:
        """What a killed run resumes from: written after every epoch, each file atomically."""
        if improved and self.best_state is not None:
            store.save_tensors(self.workdir / "best.safetensors", self.best_state)
        store.save_state(self.workdir / "last.safetensors", {
            "key": self.key, "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "history": self.history, "best": self.tracker.best, "bad": self.tracker.bad})

    def _finish(self, seconds: float) -> tuple[StageResult, Parent]:
        """The best epoch's weights written as the stage's checkpoint; its result and the next stage's parent."""
        best, history = self.tracker.best, self.history
        self.model.load_state_dict(self.best_state)
        path, sha = self._write(best, history, seconds)
        self.loggers.stage_ended(path, self.metric, best, len(history))
        result = StageResult(path.name, path, self.dataset, False, self.metric, best["value"], len(history),
                             seconds, sha)
        lineage = self._lineage(best, history, seconds, sha)
        lineage.stages[-1].checkpoint, lineage.stages[-1].weights_sha256 = path.name, sha
        return result, Parent(path.name, self.arch_ref.name, self.best_state, sha, list(self.source.classes),
                              lineage, f"checkpoint '{path.name}'")

    def _train_epoch(self, net, opt, sched, scaler, criterion, amp_dtype, channels_last, epoch) -> float:
        from tqdm.auto import tqdm

        self.model.train()
        models.freeze_frozen_batchnorm(self.model)
        loader = self.train_loader
        self._reseed(loader, epoch)
        accum = self.recipe["grad_accum"]
        # the loss is summed on the device and read once per epoch (and when the bar redraws): loss.item() at
        # every step would wait for the GPU each time. float64 (MPS has none) keeps the sum what Python's was.
        total = torch.zeros((), dtype=torch.float32 if self.device.type == "mps" else torch.float64, device=self.device)
        count, shown = 0, time.monotonic()
        bar = tqdm(loader, desc=f"{self.name} {epoch + 1}/{self.recipe['epochs']}", leave=False,
                   disable=_rank() != 0 or None, dynamic_ncols=True)
        opt.zero_grad(set_to_none=True)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = criterion(net(x).float(), y)
            scaler.scale(loss / accum).backward()
            if (step + 1) % accum == 0 or step + 1 == len(loader):
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                    sched.step()
            total += loss.detach().to(total.dtype) * len(x)
            count += len(x)
            if not bar.disable and time.monotonic() - shown >= 1.0:
                shown = time.monotonic()
                bar.set_postfix(loss=f"{float(total) / count:.4f}")
        stats = torch.stack([total, torch.tensor(float(count), dtype=total.dtype, device=self.device)])
        if _world() > 1:
            dist.all_reduce(stats)
        stats = stats.cpu()
        return float(stats[0] / max(1.0, float(stats[1])))

    @torch.no_grad()
    def _validate(self, net, criterion, amp_dtype, channels_last) -> dict[str, float]:
        self.model.eval()
        if self.task == "segmentation":
            return self._validate_segmentation(net, criterion, amp_dtype, channels_last)
        outs, targets = [], []
        for x, y in self.val_loader:
            x = x.to(self.device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outs.append(net(x).float().cpu())
            targets.append(y)
        logits, target = torch.cat(outs), torch.cat(targets)
        if _world() > 1:
            parts: list = [None] * _world()
            dist.all_gather_object(parts, (logits, target))
            logits, target = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        crit = criterion.cpu() if hasattr(criterion, "cpu") else criterion
        loss = float(crit(logits, target))
        if hasattr(criterion, "to"):
            criterion.to(self.device)
        return {"loss": loss, **classification_metrics(self.task, logits, target, len(self.source.classes))}

    @torch.no_grad()
    def _validate_segmentation(self, net, criterion, amp_dtype, channels_last) -> dict[str, float]:
        # a confusion matrix summed batch by batch: segmentation logits of a whole split would not fit in memory
        n = len(self.source.classes)
        cm = torch.zeros(n, n, dtype=torch.long)
        loss = torch.zeros(2, dtype=torch.float64)
        for x, y in self.val_loader:
            x, y = x.to(self.device), y.to(self.device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(x).float()
            loss += torch.tensor([float(criterion(out, y)) * len(x), len(x)], dtype=torch.float64)
            cm += confusion_matrix(out.cpu(), y.cpu(), n, self.source.ignore_index)
        if _world() > 1:
            dist.all_reduce(cm)
            dist.all_reduce(loss)
        return {"loss": float(loss[0] / max(1.0, float(loss[1]))),
                **segmentation_metrics(cm, self.source.classes, self.source.ignore_index)}

    def _lineage(self, best, history, seconds, sha) -> Lineage:
        import timm

        spec = registry().resolve("datasets", self.dataset).spec
        meta = self.source.meta
        fp = self.source.fingerprint()
        licence = licenses.license_id(meta.get("license") or spec.license)
        # a dataset given by path is recorded by name, size and identity only: no local path in metadata
        public = store.public_dataset(self.dataset)
        stage = StageRecord(
            dataset=public, fingerprint=fp, task=self.task, classes=list(self.source.classes), license=licence,
            license_url=meta.get("license_url") or (spec.license_url if licence == licenses.license_id(spec.license)
                                                    else None) or licenses.url_of(licence),
            data={"name": public.partition(":")[2] or public, "records": len(self.source.records), "fingerprint": fp,
                  **({"given_by_path": True} if public != self.dataset else {})},
            overlap=self.overlap,  # set by the chain leakage check under --allow-overlap
            modality=meta.get("modality") or spec.modality, recipe=self.recipe, freeze=self.policy_name,
            epochs_run=len(history), best={k: v for k, v in best.items() if k != "val"},
            val_metrics=best.get("val", {}), seed=self.recipe["seed"], parent_sha256=self.parent.sha256,
            transfer=str(self.transfer) if self.transfer else "none (random init)", seconds=round(seconds, 1),
            n_train=self.n_train, runtime={"device": str(self.device), "hardware": self.hw.describe(),
                                           "precision": speed.precision(self.runtime.precision, self.hw),
                                           "channels_last": self._channels_last(),
                                           "workers": speed.workers(self.runtime.num_workers, self.hw),
                                           "world_size": _world()},
            versions={"medzoo": __version__, "timm": timm.__version__, "torch": torch.__version__},
            **read_settings(self.source))
        base = self.parent.lineage.prefix()
        return Lineage(arch=self.arch_ref.name, source=base.source, stages=base.stages + [stage], name=None,
                       timm_name=models.stock_timm_name(self.arch_ref), task=self.task,
                       in_chans=self.recipe["in_chans"], image_size=self.recipe["image_size"], key=self.key,
                       weights_sha256=sha, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def _write(self, best, history, seconds) -> tuple[Path, str]:
        """Assemble the checkpoint under a temporary name, then rename it into place (rank 0 only)."""
        root = store.checkpoints_dir()
        final_name = self.name
        existing = store.find_local(self.name)
        if existing is not None and existing.lineage.key != self.key:
            final_name = f"{self.name}~{self.key[:8]}"
            log(f"[{self.name}] a checkpoint of that name with other inputs (recipe, seed, data or parent) "
                f"exists; this one is stored as '{final_name}'")
        final = root / final_name
        sha = ""
        if _rank() == 0:
            tmp = store.new_tmp_dir(root, final_name)
            store.save_tensors(tmp / store.WEIGHTS, self.model.state_dict())
            sha = models.sha256_file(tmp / store.WEIGHTS)
            lineage = self._lineage(best, history, seconds, sha)
            lineage.name = final_name
            lineage.stages[-1].checkpoint, lineage.stages[-1].weights_sha256 = final_name, sha
            config = store.timm_config(self.model, self.arch_ref, self.source.classes, self.recipe,
                                       self._transform_cfg(), final_name, lineage)
            store.write_config(tmp, {k: v for k, v in config.items() if k != "medzoo"}, lineage)
            (tmp / "metrics.json").write_text(json.dumps({"split": "val", "best_epoch": best["epoch"],
                                                          **best.get("val", {})}, indent=2))
            write_history(history, tmp / "history.csv")
            plot_history(history, tmp / "learning_curve.png", self.name, self.metric)
            if self.task == "segmentation":
                self._plot_predictions(tmp / "predictions.png")
            store.swap_dir(tmp, final)  # --force on the same inputs replaces it: never a half state visible
            shutil.rmtree(self.workdir, ignore_errors=True)
        _barrier()
        if not sha:
            sha = models.sha256_file(final / store.WEIGHTS)
        log(f"[{final_name}] saved {final}")
        return final, sha


    @torch.no_grad()
    def _plot_predictions(self, path: Path, n: int = 4) -> None:
        """Truth and prediction over a few validation images, for a look at what the numbers mean."""
        self.model.eval()
        ds = self.val_loader.dataset
        items = [ds[i] for i in range(min(n, len(ds)))]  # type: ignore[arg-type]  # a map-style dataset: sized
        if not items:
            return
        x = torch.stack([i[0] for i in items]).to(self.device)
        pred = self.model(x).argmax(1).cpu()
        plot_segmentation([i[0] for i in items], [i[1] for i in items], list(pred), self.source.classes,
                          self.source.ignore_index, path, self.name)


# -- helpers ------------------------------------------------------------------------------------
