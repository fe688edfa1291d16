"""Training recipes: defaults < dataset plugin < ``--recipe FILE.yaml`` < ``--set STAGE.KEY=VALUE``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .registry import MedzooError, did_you_mean, display_name

# What a stage trains with. Every key here is part of the stage's identity (reuse, names, lineage).
DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "optimizer": "adamw",  # adamw | adam | sgd
    "lr": 1e-3,
    "weight_decay": 0.05,
    "momentum": 0.9,  # sgd only
    "schedule": "cosine",  # cosine (with warmup) | plateau | constant
    "warmup_epochs": 1,
    "image_size": 224,
    "in_chans": 3,  # 1 adapts the first conv to grey input (timm's adapt_input_conv)
    "augment": "light",  # none | light | medium | strong, with overrides: "strong,flip=0,stretch=0.3"
    "loss": "auto",  # auto | ce | bce (auto: bce for multilabel, else ce)
    "label_smoothing": 0.0,
    "class_weights": False,  # weight the loss by inverse class frequency
    "balanced_sampling": False,  # sample classes equally instead
    "patience": 0,  # early stopping after this many epochs without improvement (0: off)
    "freeze": "auto",  # a freeze policy name: full | head | top:K | gradual[:N] | lld:DECAY | auto
    "metric": "auto",  # validation metric that picks the best epoch: auto | auc | accuracy | loss
    "grad_accum": 1,
    "seed": 0,
    # the deterministic preprocessing cached once per dataset (medzoo.cache.PreprocessConfig fields,
    # e.g. {size: 256, channels: 1, clahe: 2.0}); null reads the raw images every epoch
    "preprocess": None,
}
CHOICES = {
    "optimizer": ("adamw", "adam", "sgd"),
    "schedule": ("cosine", "plateau", "constant"),
    "loss": ("auto", "ce", "bce", "dice_ce"),
    "metric": ("auto", "auc", "accuracy", "loss", "dice"),
}
# Numeric keys with the range a stage can train with: (low, high, whether low itself is allowed).
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "epochs": (1, 100_000, True),
    "batch_size": (1, 1 << 16, True),
    "lr": (0, 10, False),
    "weight_decay": (0, 10, True),
    "momentum": (0, 1, True),
    "warmup_epochs": (0, 100_000, True),
    "image_size": (16, 8192, True),  # below 16 px the convnets' strides leave nothing to pool
    "label_smoothing": (0, 0.99, True),
    "patience": (0, 100_000, True),
    "grad_accum": (1, 1024, True),
    "seed": (0, 2**32 - 1, True),
}
IN_CHANS = (1, 3)  # grey (first conv adapted by timm) or RGB; other counts have no pretrained first conv
# Validation metrics a task's stage reports (the best epoch is picked by one of them).
TASK_METRICS = {"classification": ("auc", "accuracy", "loss"), "multilabel": ("auc", "accuracy", "loss"),
                "segmentation": ("dice", "loss")}
TASK_LOSSES = {"classification": ("ce",), "multilabel": ("bce",), "segmentation": ("dice_ce",)}
FILE_DEFAULTS_SECTION = "defaults"  # a recipe file's section applied to every stage


def _coerce(key: str, value: Any, where: str) -> Any:
    if key not in DEFAULTS:
        raise MedzooError(f"unknown recipe key '{key}' in {where}{did_you_mean(key, list(DEFAULTS))} "
                          f"(keys: {', '.join(DEFAULTS)})")
    default = DEFAULTS[key]
    if isinstance(value, str) and not isinstance(default, str):
        value = yaml.safe_load(value)
    try:
        if default is None:  # a mapping (preprocess)
            if value is not None and not isinstance(value, dict):
                raise ValueError
            return dict(value) if value else None
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError
        elif isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        kind = "mapping" if default is None else type(default).__name__
        raise MedzooError(f"recipe key '{key}' in {where} must be a {kind}, got {value!r}") from None
    if key == "augment":
        from .data import augment_params

        augment_params(value)  # raises with the presets and their keys
    if key in CHOICES and value not in CHOICES[key]:
        raise MedzooError(f"recipe key '{key}' in {where} must be one of {', '.join(CHOICES[key])}, got '{value}'")
    if key in RANGES:
        low, high, inclusive = RANGES[key]
        if not (value >= low if inclusive else value > low) or (high is not None and value > high):
            bound = f"≥ {low}" if inclusive else f"> {low}"
            raise MedzooError(f"recipe key '{key}' in {where} must be {bound} and ≤ {high}, got {value}")
    if key == "in_chans" and value not in IN_CHANS:
        raise MedzooError(f"recipe key 'in_chans' in {where} must be 1 (grey) or 3 (RGB), got {value}")
    if key == "freeze":
        _check_policy(value, where)
    if key == "preprocess" and value:
        from .cache import PreprocessConfig

        PreprocessConfig.from_dict(value)  # a misspelt step fails when the recipe is read, before any stage trains
    return value


def _check_policy(name: str, where: str) -> None:
    from .registry import registry

    try:
        ref = registry().resolve("policies", name)
        if ref.spec.check is not None:
            ref.spec.check(ref.arg)
    except MedzooError as exc:
        names = ", ".join(display_name(s) for s in registry().list("policies"))
        raise MedzooError(f"recipe key 'freeze' in {where}: {exc} (policies: {names})") from None


def check_task(recipe: Mapping[str, Any], task: str, where: str) -> None:
    """The keys whose valid values depend on the dataset's task: refused before anything trains (a
    classification stage asked for 'dice' would otherwise fail after its first epoch)."""
    metrics = TASK_METRICS.get(task)
    if metrics and recipe["metric"] not in ("auto", *metrics):
        raise MedzooError(f"recipe key 'metric' for {where} is '{recipe['metric']}', which a {task} stage does not "
                          f"report; use one of auto, {', '.join(metrics)}")
    losses = TASK_LOSSES.get(task)
    if losses and recipe["loss"] not in ("auto", *losses):
        raise MedzooError(f"recipe key 'loss' for {where} is '{recipe['loss']}', which does not fit a {task} "
                          f"stage; use one of auto, {', '.join(losses)}")


def _merge(base: dict[str, Any], layer: Mapping[str, Any] | None, where: str) -> None:
    for key, value in (layer or {}).items():
        base[key] = _coerce(key, value, where)


def read_recipe_file(path: str | Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise MedzooError(f"cannot read recipe file '{path}': {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MedzooError(f"recipe file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise MedzooError(f"recipe file '{path}' must map stage names (or '{FILE_DEFAULTS_SECTION}') to "
                          "sections of key: value")
    return data


def parse_sets(sets: list[str] | None, stages: list[str]) -> dict[str, dict[str, Any]]:
    """``["inbreast.epochs=20", "all.seed=1"]`` → ``{"inbreast": {"epochs": "20"}, "defaults": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in sets or []:
        target, eq, value = item.partition("=")
        stage, dot, key = target.rpartition(".")
        if not eq or not key:
            raise MedzooError(f"bad --set '{item}': write it as STAGE.KEY=VALUE (or KEY=VALUE for every stage)")
        if stage and stage not in stages and stage != "all":
            raise MedzooError(f"--set '{item}' names stage '{stage}', which is not in --stages "
                              f"({', '.join(stages)}){did_you_mean(stage, stages)}")
        section = FILE_DEFAULTS_SECTION if not stage or stage == "all" else stage
        out.setdefault(section, {})[key] = value
    return out


def resolve(stage: str, dataset_recipe: Mapping[str, Any], file: Mapping[str, Mapping[str, Any]],
            sets: Mapping[str, Mapping[str, Any]], stages: list[str], task: str | None = None) -> dict[str, Any]:
    """The stage's recipe, every layer checked as it is applied (each error names its layer), and the
    task-dependent keys checked against ``task`` when it is known."""
    unknown = [s for s in file if s != FILE_DEFAULTS_SECTION and s not in stages]
    if unknown:
        raise MedzooError(f"recipe file has a section '{unknown[0]}' that is not a stage of this chain "
                          f"({', '.join(stages)}){did_you_mean(unknown[0], stages)}")
    recipe = dict(DEFAULTS)
    _merge(recipe, dataset_recipe, f"the '{stage}' dataset's default recipe")
    _merge(recipe, file.get(FILE_DEFAULTS_SECTION), "the recipe file's defaults")
    _merge(recipe, file.get(stage), f"the recipe file's '{stage}' section")
    _merge(recipe, sets.get(FILE_DEFAULTS_SECTION), "--set")
    _merge(recipe, sets.get(stage), "--set")
    if recipe["class_weights"] and recipe["balanced_sampling"]:
        raise MedzooError(f"the '{stage}' stage's recipe turns on both class_weights and balanced_sampling, which "
                          "correct the class imbalance twice; set one of them to false")
    if task is not None:
        check_task(recipe, task, f"the '{stage}' stage")
    return recipe
