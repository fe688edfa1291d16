"""A stage's optimizer, learning-rate schedule and the regrouping of its parameters when a freeze policy
changes the lr scales between epochs (``medzoo.stage`` calls these; the recipe's keys are read here)."""

from __future__ import annotations

import math
from typing import Any

import torch


def param_groups(model: torch.nn.Module, recipe: dict[str, Any], lr_scales: dict[str, float]) -> list[dict[str, Any]]:
    """One group per (lr scale, weight decay): norms, biases and the model's ``no_weight_decay()`` get none."""
    no_decay = set(getattr(model, "no_weight_decay", lambda: set())())
    groups: dict[tuple[float, float], list] = {}
    for n, p in model.named_parameters():
        wd = 0.0 if p.ndim <= 1 or n in no_decay else recipe["weight_decay"]
        groups.setdefault((lr_scales.get(n, 1.0), wd), []).append(p)
    return [{"params": ps, "lr": recipe["lr"] * s, "weight_decay": wd, "lr_scale": s}
            for (s, wd), ps in groups.items()]


def optimizer(model: torch.nn.Module, recipe: dict[str, Any], lr_scales: dict[str, float]) -> torch.optim.Optimizer:
    params = param_groups(model, recipe, lr_scales)
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=recipe["lr"], momentum=recipe["momentum"], nesterov=True)
    cls = torch.optim.AdamW if recipe["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe["lr"])


def scheduler(opt: torch.optim.Optimizer, recipe: dict[str, Any], metric: str, steps_per_epoch: int):
    """``plateau``: halve the lr when the validation metric stalls (stepped once per epoch by the caller);
    otherwise a per-step LambdaLR: linear warmup, then constant or cosine to zero."""
    if recipe["schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min" if metric == "loss" else "max",
                                                          factor=0.5, patience=max(1, recipe["patience"] // 2))
    total = max(1, recipe["epochs"] * steps_per_epoch)
    warm = recipe["warmup_epochs"] * steps_per_epoch
    cosine = recipe["schedule"] == "cosine"

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def rescale(opt: torch.optim.Optimizer, sched, model: torch.nn.Module, recipe: dict[str, Any],
            lr_scales: dict[str, float]) -> None:
    """Regroup the optimizer by this epoch's lr scales when the freeze policy changed them. Per-parameter
    state (Adam moments, momentum) is keyed by the parameter, so it stays; the schedule's current factor
    carries over to the new groups, and the schedule's per-group lists are resized to the new group count
    (ReduceLROnPlateau indexes ``min_lrs`` by group: before torch 2.6 a changed count raised IndexError)."""
    new = param_groups(model, recipe, lr_scales)

    def layout(groups):
        return [(g["lr_scale"], g["weight_decay"], [id(p) for p in g["params"]]) for g in groups]

    if layout(new) == layout(opt.param_groups):
        return
    lambda_lr = isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    if lambda_lr:
        factor = sched.lr_lambdas[0](sched.last_epoch)
    else:  # ReduceLROnPlateau: every group has been cut by the same factor so far
        ref = next((g for g in opt.param_groups if g["lr_scale"]), None)
        factor = ref["lr"] / (recipe["lr"] * ref["lr_scale"]) if ref else 1.0
    hyper = {k: v for k, v in opt.param_groups[0].items()
             if k not in ("params", "lr", "weight_decay", "lr_scale", "initial_lr")}  # betas, eps, momentum…
    for g in new:
        base = g["lr"]
        g.update(hyper, lr=base * factor, **({"initial_lr": base} if lambda_lr else {}))
    opt.param_groups[:] = new
    if lambda_lr:
        sched.base_lrs = [g["initial_lr"] for g in new]
        sched.lr_lambdas = [sched.lr_lambdas[0]] * len(new)
    elif isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        # the one min_lr medzoo constructs it with (0), for every group
        sched.min_lrs = [sched.min_lrs[0]] * len(new)
    if hasattr(sched, "_last_lr"):
        sched._last_lr = [g["lr"] for g in new]
