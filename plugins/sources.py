"""Weight sources for the first element of ``--stages``: imagenet, imagenet:<tag>, scratch, file:<path>,
hf-hub:<org/repo[@rev]>."""

from __future__ import annotations

from medzoo.plugin import (
    CHECKPOINT_CONFIG,
    CHECKPOINT_WEIGHTS,
    HF_PREFIX,
    MedzooError,
    SourceWeights,
    WeightSourceSpec,
    did_you_mean,
    hookimpl,
    locate,
    read_checkpoint,
    read_located_weights,
    read_weights,
    registry,
    stock_timm_name,
)


def load_imagenet(*, arch, arg=None) -> SourceWeights:
    import timm

    name = stock_timm_name(arch)
    if name is None:
        raise MedzooError(f"'{arch.name}' is not a timm model, so it has no timm ImageNet weights; "
                          "start the chain with 'scratch' or 'file:<path>'")
    tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{name}.*")]
    if not tags:
        raise MedzooError(f"timm has no pretrained weights for '{name}'; start the chain with 'scratch'")
    if arg is not None and arg not in tags:
        raise MedzooError(f"timm has no '{arg}' weights for {name}{did_you_mean(arg, tags)}; "
                          f"available: {', '.join(tags)}")
    full = f"{name}.{arg}" if arg else name
    # Weights already in the Hugging Face cache load from there without asking the Hub: offline, that ask
    # costs a minute of retries. timm still applies its own key filters to the file.
    cached = _cached_file(full)
    overlay = {"pretrained_cfg_overlay": {"file": cached}} if cached else {}
    try:
        model = timm.create_model(full, pretrained=True, **overlay)
    except Exception as exc:  # offline, no cache, hub error: all end the same way for the user
        raise MedzooError(f"could not get the ImageNet weights '{full}' "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); connect to the Hugging Face Hub "
                          "once (they are cached), or start with 'scratch' or 'file:<path>'") from None
    cfg = dict(model.pretrained_cfg)
    return SourceWeights(model.state_dict(), tag=f"imagenet:{cfg.get('tag') or arg or 'default'}", pretrained_cfg=cfg)


def imagenet_base_model(*, arg, tag, timm_name) -> str | None:
    """timm's Hub id of the weights, e.g. ``timm/resnet18.a1_in1k`` (the tag timm recorded, not the one asked)."""
    if not timm_name:
        return None
    upstream = tag.partition(":")[2]
    return f"timm/{timm_name}" + (f".{upstream}" if upstream and upstream != "default" else "")


def _cached_file(full: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(full)
    if cfg is None or not cfg.hf_hub_id:
        return None
    hit = try_to_load_from_cache(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors")
    return hit if isinstance(hit, str) and hit.endswith(".safetensors") else None


def load_scratch(*, arch, arg=None) -> SourceWeights:
    return SourceWeights(None, tag="scratch")


def load_file(*, arch, arg=None) -> SourceWeights:
    from pathlib import Path

    path = Path(arg).expanduser()
    recorded, licence = None, "unknown"  # a bare file says nothing of its terms: publishing asks for --license
    beside = path.parent / CHECKPOINT_CONFIG
    # a medzoo checkpoint's file: its config records hash, licence
    if path.name == CHECKPOINT_WEIGHTS and beside.is_file():
        try:
            lineage = read_checkpoint(path.parent).lineage
            recorded, licence = lineage.weights_sha256, lineage.license()
        except MedzooError:
            recorded = None
    sd, digest = read_weights(path, [recorded], f"'file:{arg}'")
    return SourceWeights(sd, tag=f"file:{digest[:12]}", sha256=digest, license=licence)


def load_hf_hub(*, arch, arg=None) -> SourceWeights:
    """Published medzoo weights (``medzoo publish``), verified against their recorded sha256."""
    found = locate(f"{HF_PREFIX}{arg}")
    theirs, ours = found.config.get("architecture"), stock_timm_name(arch)
    published = registry().entries["archs"].get(found.lineage.arch)
    built_on = published is not None and published.task == "segmentation" and published.classifier == arch.name
    if found.lineage.arch != arch.name and (ours is None or theirs != ours) and not built_on:
        raise MedzooError(f"'hf-hub:{arg}' holds a {found.lineage.arch}, not a {arch.name}; "
                          f"train {found.lineage.arch} from it, or pick a {arch.name} repo")
    state, digest = read_located_weights(found)
    commit = found.origin.rpartition("@")[2]
    return SourceWeights(state, tag=f"hf-hub:{arg.partition('@')[0]}@{commit}", sha256=digest,
                         pretrained_cfg=dict(found.config.get("pretrained_cfg") or {}),
                         arch=published.name if built_on else None)


@hookimpl
def register_weight_sources(register):
    register(WeightSourceSpec(
        "imagenet", load_imagenet,
        "timm's ImageNet-pretrained weights: the default tag, or imagenet:<tag> for another upstream pretraining "
        "(e.g. imagenet:fb_ssl_yfcc100m_ft_in1k for resnet50, imagenet:ms_in22k for swin_t)",
        takes_arg=True, arg_required=False, arg_help="timm tag", default=True, base_model=imagenet_base_model,
        terms_note="The chain started from timm's ImageNet weights; ImageNet's terms of access restrict "
                   "commercial use, so check them before any commercial use of these weights."))
    register(WeightSourceSpec("scratch", load_scratch, "random initialisation (no pretraining)"))
    register(WeightSourceSpec("file", load_file, "a local .safetensors file of weights for the architecture",
                              takes_arg=True, arg_help="path.safetensors", named_by_hash=True))
    register(WeightSourceSpec("hf-hub", load_hf_hub, "medzoo weights published on the Hugging Face Hub "
                              "(`medzoo publish`), pinned to a revision with @<commit>; sha256-verified",
                              takes_arg=True, arg_help="org/repo[@revision]",
                              base_model=lambda *, arg, **_: arg.partition("@")[0] if arg else None,
                              terms_note="The chain started from {name}; its license applies too."))
