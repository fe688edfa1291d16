"""Classification architectures backed by timm: short names for stock timm models and ``timm:<name>``."""

from __future__ import annotations

from medzoo.plugin import ArchSpec, MedzooError, did_you_mean, feature_layer, hookimpl

# short name -> (stock timm name, family, default input size)
SHORT_NAMES = {
    "swin_t": ("swin_tiny_patch4_window7_224", "swin", 224),
    "resnet18": ("resnet18", "resnet", 224),
    "resnet50": ("resnet50", "resnet", 224),
    "densenet121": ("densenet121", "densenet", 224),
    "mobilenetv2": ("mobilenetv2_100", "mobilenet", 224),
    "mobilenetv3": ("mobilenetv3_large_100", "mobilenet", 224),
    "efficientnet_b0": ("efficientnet_b0", "efficientnet", 224),
    "inception_v3": ("inception_v3", "inception", 299),
}

TRUNCATE_HELP = ("drop the last N block groups (feature stages) and put the head on what is left: "
                 "much smaller, often as accurate on small medical tasks")


def create_timm(timm_name: str, *, num_classes: int, in_chans: int = 3, img_size: int | None = None,
                truncate: str | int = 0, **kwargs):
    """A stock timm model without weights (weights come from the chain's weight source)."""
    import timm

    if timm_name not in timm.list_models():
        raise MedzooError(f"timm has no model '{timm_name}'{did_you_mean(timm_name, timm.list_models())}; "
                          "`python -c 'import timm; print(timm.list_models())'` lists them")
    if img_size is not None and _fixed_size(timm_name):
        kwargs["img_size"] = img_size
    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return truncate_model(model, int(truncate), num_classes) if int(truncate) else model


def _fixed_size(timm_name: str) -> bool:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    return bool(cfg and cfg.fixed_input_size) or timm_name.startswith(("swin", "vit", "deit", "beit", "test_vit"))


def truncate_model(model, k: int, num_classes: int):
    """Remove the last ``k`` feature stages of a timm model and re-attach a pooled linear head.

    Kept modules keep their timm parameter names, so weights of the full model still load by name.
    """
    stages = len(model.feature_info)
    if not 0 < k < stages:
        raise MedzooError(f"truncate={k} is out of range for {model.default_cfg.get('architecture')}: "
                          f"it has {stages} feature stages, so use 1..{stages - 1}")
    keep = stages - 1 - k
    model.prune_intermediate_layers([keep], prune_norm=True, prune_head=False)
    model.num_features = model.head_hidden_size = model.feature_info[keep]["num_chs"]
    model.reset_classifier(num_classes, "avg")
    return model


def saliency_target(model):
    """Grad-CAM's layer: the last feature stage timm lists (that ``truncate`` kept), with its output made
    N×C×H×W. timm declares Swin's NHWC stage outputs in ``model.output_fmt``; ViT-style token sequences
    (prefix tokens, then the patch grid) are cut to the grid timm's ``patch_embed`` reports, at the last block's
    first norm: a class-token head gives the last block's patch tokens no gradient (pytorch-grad-cam's ViT advice)."""
    layer = feature_layer(model)
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return layer, _nhwc_to_nchw
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if grid is not None and prefix is not None:
        gh, gw = grid
        blocks = getattr(model, "blocks", None)
        if blocks is not None and len(blocks) and hasattr(blocks[-1], "norm1"):
            layer = blocks[-1].norm1

        def tokens_to_nchw(x):
            return x[:, prefix:].reshape(x.shape[0], gh, gw, x.shape[-1]).permute(0, 3, 1, 2)
        return layer, tokens_to_nchw
    return layer, None


def _nhwc_to_nchw(x):
    return x.permute(0, 3, 1, 2)


def _spec(name: str, timm_name: str, family: str, size: int) -> ArchSpec:
    return ArchSpec(
        name=name,
        build=lambda *, num_classes, in_chans=3, img_size=None, arg=None, **options: create_timm(
            timm_name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **options),
        family=family,
        input_size=(3, size, size),
        timm_name=timm_name,
        description=f"timm {timm_name}",
        options={"truncate": TRUNCATE_HELP},
        saliency_target=saliency_target,
    )


@hookimpl
def register_archs(register):
    for name, (timm_name, family, size) in SHORT_NAMES.items():
        register(_spec(name, timm_name, family, size))
    register(ArchSpec(
        name="timm",
        build=lambda *, num_classes, in_chans=3, img_size=None, arg=None, **options: create_timm(
            arg, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **options),
        family="timm",
        description="any timm architecture by its timm name, e.g. timm:convnext_tiny",
        takes_arg=True,
        arg_help="timm name",
        options={"truncate": TRUNCATE_HELP},
        saliency_target=saliency_target,
    ))
