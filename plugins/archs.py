"""Classification architectures backed by timm: short names for stock timm models and ``timm:<name>``."""

from __future__ import annotations

import functools
from typing import Any

from medzoo.plugin import ArchSpec, HubLayout, MedzooError, did_you_mean, feature_layer, hookimpl

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

# papers by a substring of the timm name (the first match is cited)
CITATIONS = {
    "resnet": "He et al., Deep Residual Learning for Image Recognition, CVPR 2016.",
    "swin": "Liu et al., Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, ICCV 2021.",
    "densenet": "Huang et al., Densely Connected Convolutional Networks, CVPR 2017.",
    "efficientnet": "Tan and Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019.",
    "mobilenetv3": "Howard et al., Searching for MobileNetV3, ICCV 2019.",
    "mobilenetv2": "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018.",
    "inception": "Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016.",
    "convnext": "Liu et al., A ConvNet for the 2020s, CVPR 2022.",
    "deit": "Touvron et al., Training data-efficient image transformers & distillation through attention, ICML 2021.",
    "beit": "Bao et al., BEiT: BERT Pre-Training of Image Transformers, ICLR 2022.",
    "vit_": "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale, "
            "ICLR 2021.",
}
# transformers: their only convolution is the patch embedding, so channels_last barely reaches them, and
# the ones timm's pretrained_cfg does not mark still take their image size at build time
TRANSFORMERS = ("swin", "vit", "deit", "beit", "test_vit")

# timm's own Hub layout: config.json in timm's format, so plain timm.create_model("hf-hub:...") loads it
TIMM_LAYOUT = HubLayout(
    name="timm", library="timm", hf_library="timm", recognise=lambda config: "architecture" in config,
    load_code=lambda *, repo_id, **_: f'import timm\nmodel = timm.create_model("hf-hub:{repo_id}", pretrained=True)',
    citation="Wightman, PyTorch Image Models (timm), https://github.com/huggingface/pytorch-image-models, 2019.")

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
    return bool(cfg and cfg.fixed_input_size) or timm_name.startswith(TRANSFORMERS)


@functools.cache
def timm_traits(timm_name: str) -> dict[str, Any]:
    """The ArchSpec traits of a stock timm model, from its name and timm's pretrained_cfg."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    size = {"input_size": tuple(cfg.input_size)} if cfg and cfg.input_size else {}
    return {"timm_name": timm_name, "fixed_input_size": _fixed_size(timm_name), **size,
            "channels_last": not timm_name.startswith(TRANSFORMERS),
            "citation": next((c for key, c in CITATIONS.items() if key in timm_name), "")}


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
        hub_layout=TIMM_LAYOUT,
        **{k: v for k, v in timm_traits(timm_name).items() if k not in ("timm_name", "input_size")},
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
        hub_layout=TIMM_LAYOUT,
        for_arg=timm_traits,
    ))
