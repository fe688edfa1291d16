"""Freeze policies: which parameters train in a stage, and at what learning-rate scale."""

from __future__ import annotations

from medzoo.plugin import FreezePolicySpec, MedzooError, block_groups, hookimpl

# Below SMALL training images only the head trains, below LARGE the top block groups, else everything:
# small medical sets overfit a fully unfrozen backbone (CheXtransfer; the systematic TL benchmark).
AUTO_SMALL, AUTO_LARGE, AUTO_TOP = 1000, 10000, 2


def _train_only(model, names: set[str]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def _groups(model, ctx) -> list[list[str]]:
    # the stage passes the architecture's groups (ArchSpec.group_prefixes); a direct call groups by timm's matcher
    return ctx.get("groups") or block_groups(model)


def _top(model, k: int, policy: str, groups: list[list[str]]) -> None:
    if k < 0 or k > len(groups) - 1:
        raise MedzooError(f"freeze policy '{policy}': this model has {len(groups) - 1} block groups below its head, "
                          f"so K must be 0..{len(groups) - 1}")
    _train_only(model, {n for g in groups[len(groups) - 1 - k:] for n in g})


def _int(arg, policy: str, default: int | None = None) -> int:
    if arg is None and default is not None:
        return default
    try:
        value = int(arg)
    except (TypeError, ValueError):
        raise MedzooError(f"freeze policy '{policy}' needs a whole number, as in '{policy}:2' (got '{arg}')") from None
    if value < 0:
        raise MedzooError(f"freeze policy '{policy}': the number must be ≥ 0 (got {value})")
    return value


def apply_full(model, arg=None, **ctx):
    _train_only(model, {n for n, _ in model.named_parameters()})


def apply_head(model, arg=None, **ctx):
    _top(model, 0, "head", _groups(model, ctx))


def apply_top(model, arg=None, **ctx):
    _top(model, _int(arg, "top"), f"top:{arg}", _groups(model, ctx))


def apply_gradual(model, arg=None, epoch=0, **ctx):
    every = max(1, _int(arg, "gradual", default=1))
    groups = _groups(model, ctx)
    _top(model, min(len(groups) - 1, epoch // every), "gradual", groups)


def _decay(arg) -> float:
    try:
        decay = float(arg)
    except (TypeError, ValueError):
        decay = -1.0
    if not 0 < decay <= 1:
        raise MedzooError(f"freeze policy 'lld' needs a decay in (0, 1], as in 'lld:0.75' (got '{arg}')")
    return decay


def apply_lld(model, arg=None, **ctx):
    from timm.optim import param_groups_layer_decay

    decay = _decay(arg)
    apply_full(model)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=decay)
            for p in g["params"]}


def _thresholds(arg) -> tuple[int, int]:
    if not arg:
        return AUTO_SMALL, AUTO_LARGE
    try:
        small, large = (int(x) for x in arg.split(","))
    except ValueError:
        small = large = -1
    if not 0 <= small <= large:
        raise MedzooError(f"freeze policy 'auto' takes two thresholds 0 ≤ SMALL ≤ LARGE, as in 'auto:1000,10000' "
                          f"(got '{arg}')")
    return small, large


def resolve_auto(arg=None, n_train=0, task="classification", **ctx) -> str:
    small, large = _thresholds(arg)
    # segmentation groups are encoder · decoder · head: a small set trains the decoder on a frozen encoder
    if task == "segmentation":
        return "top:1" if n_train < large else "full"
    if n_train < small:
        return "head"
    return f"top:{AUTO_TOP}" if n_train < large else "full"


@hookimpl
def register_freeze_policies(register):
    register(FreezePolicySpec("full", apply_full, "train every parameter"))
    register(FreezePolicySpec("head", apply_head, "linear probe: train only the head (classifier and the final "
                                                  "norm/conv that timm groups with it); frozen BatchNorm stays in "
                                                  "eval mode"))
    register(FreezePolicySpec("top", apply_top, "train the last K block groups (timm's coarse group matcher: stem, "
                                                "stages, head) plus the head", takes_arg=True, arg_help="K",
                              check=lambda arg: _int(arg, "top"),
                              params={"K": "number of block groups below the head that train"}))
    register(FreezePolicySpec("gradual", apply_gradual, "start with the head; unfreeze one more block group from the "
                                                        "top every N epochs", takes_arg=True, arg_required=False,
                              check=lambda arg: _int(arg, "gradual", default=1),
                              arg_help="N", params={"N": "epochs between unfreezing steps (default 1)"}))
    register(FreezePolicySpec("lld", apply_lld, "train everything with layer-wise learning-rate decay: the lr of "
                                                "a layer d groups below the head is scaled by DECAY**d (timm's "
                                                "param_groups_layer_decay)", takes_arg=True, arg_help="DECAY",
                              check=_decay,
                              params={"DECAY": "per-layer lr factor in (0, 1], e.g. 0.75"}))
    register(FreezePolicySpec(
        "auto", None, f"by training-set size: head below {AUTO_SMALL} images, top:{AUTO_TOP} below {AUTO_LARGE}, "
                      f"full above; segmentation models (encoder · decoder · head) train top:1 — the decoder and "
                      f"head on a frozen encoder — below {AUTO_LARGE}, full above",
        resolve=resolve_auto, check=_thresholds, takes_arg=True, arg_required=False, arg_help="SMALL,LARGE",
        params={"SMALL": f"head-only below this many training images (default {AUTO_SMALL})",
                "LARGE": f"top:{AUTO_TOP} below this many, full above (default {AUTO_LARGE})"}))
