"""Segmentation architectures whose encoders start from the chain's classification stages:
``unet_<arch>`` (segmentation-models-pytorch UNet on timm's universal encoders) and ``swin_unetr``
(MONAI's 2D Swin UNETR, built with Swin-T's widths and depths so timm Swin-T blocks map into it)."""

from __future__ import annotations

import itertools
import re

from medzoo.plugin import ArchSpec, HubLayout, MedzooError, Transfer, hookimpl

from .archs import SHORT_NAMES, TRANSFORMERS, timm_traits

UNET_ENCODERS = ("swin_t", "resnet18", "resnet50", "densenet121", "mobilenetv2", "mobilenetv3", "efficientnet_b0")
SWIN_T = dict(feature_size=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)


def build_unet(timm_name: str, *, num_classes: int, in_chans: int = 3, img_size: int | None = None, **_):
    import segmentation_models_pytorch as smp

    kw = {"img_size": img_size} if img_size and timm_name.startswith("swin") else {}
    return smp.Unet(encoder_name=f"tu-{timm_name}", encoder_weights=None, in_channels=in_chans,
                    classes=num_classes, **kw)


def _swin_unetr_args(*, num_classes: int, in_chans: int) -> dict:
    return dict(in_channels=in_chans, out_channels=num_classes, spatial_dims=2, **SWIN_T)


def build_swin_unetr(*, num_classes: int, in_chans: int = 3, img_size: int | None = None, **_):
    from monai.networks.nets import SwinUNETR

    # patch 2 and four 2× merges need multiples of 32; at 32 the bottleneck is 1×1, which MONAI's
    # instance norm refuses in training
    if img_size and (img_size % 32 or img_size < 64):
        raise MedzooError(f"swin_unetr needs an image size that is a multiple of 32 and at least 64, not "
                          f"{img_size}; set image_size to e.g. {max(64, img_size // 32 * 32)}")
    return SwinUNETR(**_swin_unetr_args(num_classes=num_classes, in_chans=in_chans))


# -- how they are published ------------------------------------------------------------------------

SMP_CITATION = ("Iakubovskii, Segmentation Models Pytorch, https://github.com/qubvel-org/segmentation_models.pytorch, "
                "2019.")
MONAI_CITATION = ("Cardoso et al., MONAI: An open-source framework for deep learning in healthcare, arXiv:2211.02701, "
                  "2022.")

# smp's save_pretrained layout: its config.json (with _model_class) is what smp.from_pretrained reads
SMP_LAYOUT = HubLayout(
    name="smp", library="segmentation_models_pytorch", hf_library="segmentation-models-pytorch",
    write=lambda model, folder: model.save_pretrained(folder),
    load_code=lambda *, repo_id, **_: ("import segmentation_models_pytorch as smp\n"
                                        f'model = smp.from_pretrained("{repo_id}")'),
    recognise=lambda config: "_model_class" in config, citation=SMP_CITATION)


def _monai_code(*, repo_id: str, num_classes: int, in_chans: int, **_) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in _swin_unetr_args(num_classes=num_classes, in_chans=in_chans).items())
    return ("from huggingface_hub import hf_hub_download\nfrom safetensors.torch import load_file\n"
            f"from monai.networks.nets import SwinUNETR\nmodel = SwinUNETR({args})\n"
            f'model.load_state_dict(load_file(hf_hub_download("{repo_id}", "model.safetensors")))')


# MONAI has no Hub format of its own: medzoo's files, and the card shows how to build it in plain MONAI
MONAI_LAYOUT = HubLayout(name="medzoo", library="monai", load_code=_monai_code, citation=MONAI_CITATION)
UNET_CITATION = "Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015."
SWIN_UNETR_CITATION = ("Hatamizadeh et al., Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors "
                       "in MRI Images, BrainLes 2021.")


# -- classification weights into segmentation encoders ----------------------------------------------

def _own_keys(model, state: dict, marker: str) -> bool:
    return any(k.startswith(marker) for k in state)


def _flattened(key: str) -> list[str]:
    """timm names a FeatureListNet key might have come from: its first level joins a module path with '_'
    (swin ``layers_0`` ← ``layers.0``, densenet ``features_denseblock1`` ← ``features.denseblock1``)."""
    head, _, rest = key.partition(".")
    parts = head.split("_")
    out = []
    for dots in itertools.product(("_", "."), repeat=len(parts) - 1):
        name = parts[0] + "".join(d + p for d, p in zip(dots, parts[1:]))
        out.append(f"{name}.{rest}" if rest else name)
    return out


def load_unet_parent(model, state: dict, *, keep_head: bool, origin: str) -> Transfer:
    if _own_keys(model, state, "encoder.model."):  # a segmentation parent of the same kind
        return _same_kind(model, state, keep_head, origin, head=("segmentation_head.",))
    own = model.state_dict()
    enc = {k: v for k, v in own.items() if k.startswith("encoder.model.")}
    mapped, misfits = {}, []
    for key, value in enc.items():
        short = key[len("encoder.model."):]
        src = next((c for c in _flattened(short) if c in state and state[c].shape == value.shape), None)
        if src is None:
            misfits.append(short)
        else:
            mapped[key] = state[src]
    if misfits:
        raise MedzooError(f"weights from {origin} don't fit this UNet's encoder: {len(misfits)} of {len(enc)} "
                          f"encoder tensors have no match by name and shape (e.g. {misfits[0]}); start the chain "
                          "with the encoder's own classification architecture")
    model.load_state_dict(mapped, strict=False)
    return Transfer(matched=len(mapped), total=len(own), head="re-initialised",
                    note=f"matched {len(mapped)}/{len(enc)} encoder tensors; the decoder is new")


# timm Swin-T → MONAI SwinViT: blocks move one stage index up; timm downsamples at the start of a stage,
# MONAI at the end of the previous one; the MLP layers have other names.
_SWIN_RULES = [
    (re.compile(r"^layers\.(\d)\.blocks\.(.*)$"), lambda m: f"swinViT.layers{int(m[1]) + 1}.0.blocks.{m[2]}"),
    (re.compile(r"^layers\.(\d)\.downsample\.(.*)$"), lambda m: f"swinViT.layers{int(m[1])}.0.downsample.{m[2]}"),
]


def timm_swin_to_monai(key: str) -> str | None:
    for pattern, target in _SWIN_RULES:
        m = pattern.match(key)
        if m:
            return target(m).replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
    return None


def load_swin_unetr_parent(model, state: dict, *, keep_head: bool, origin: str) -> Transfer:
    if _own_keys(model, state, "swinViT."):
        return _same_kind(model, state, keep_head, origin, head=("out.",))
    own = model.state_dict()
    vit = [k for k in own if k.startswith("swinViT.")]
    mapped = {}
    for key, value in state.items():
        target = timm_swin_to_monai(key)
        if target is not None and target in own and own[target].shape == value.shape:
            mapped[target] = value
    blocks = [k for k in state if k.startswith("layers.") and ".blocks." in k]
    if not blocks:
        raise MedzooError(f"weights from {origin} are not a Swin-T classifier (no 'layers.N.blocks' tensors); "
                          "swin_unetr's encoder takes timm swin_tiny_patch4_window7_224 weights")
    missing = [k for k in blocks if timm_swin_to_monai(k) not in mapped]
    if missing:
        raise MedzooError(f"weights from {origin} don't fit swin_unetr: {len(missing)} Swin block tensors do not map "
                          f"(e.g. {missing[0]}); use Swin-T (depths 2,2,6,2) weights")
    model.load_state_dict(mapped, strict=False)
    n_vit = sum(own[k].numel() for k in vit)
    share = sum(own[k].numel() for k in mapped) / n_vit
    return Transfer(matched=len(mapped), total=len(own), head="re-initialised",
                    note=f"matched {len(mapped)}/{len(vit)} swinViT tensors ({share:.0%} of its parameters; the "
                         "2×2 patch embedding and the last merge have no Swin-T counterpart)")


def _same_kind(model, state, keep_head, origin, head) -> Transfer:
    own = model.state_dict()
    load = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
            and (keep_head or not k.startswith(head))}
    backbone = [k for k in own if not k.startswith(head)]
    missing = [k for k in backbone if k not in load]
    if missing:
        raise MedzooError(f"weights from {origin} don't fit this model: {len(missing)} of {len(backbone)} tensors "
                          f"missing or shaped differently (e.g. {missing[0]})")
    model.load_state_dict(load, strict=False)
    loaded = all(k in load for k in own if k.startswith(head))
    return Transfer(matched=len(load), total=len(own), head="loaded" if loaded else "re-initialised")


@hookimpl
def register_archs(register):
    for short in UNET_ENCODERS:
        timm_name, family, size = SHORT_NAMES[short]
        register(ArchSpec(
            name=f"unet_{short}",
            build=lambda *, _t=timm_name, **kw: build_unet(_t, **kw),
            task="segmentation", family="unet", input_size=(3, size, size),
            description=f"UNet (segmentation-models-pytorch) on timm's {timm_name} features; the encoder takes "
                        f"{short}'s classification weights",
            classifier=short, load_parent=load_unet_parent,
            fixed_input_size=timm_traits(timm_name)["fixed_input_size"],  # the encoder's
            channels_last=not timm_name.startswith(TRANSFORMERS),
            group_prefixes=(("encoder.",), ("decoder.",), ("segmentation_head.",)),
            hub_layout=SMP_LAYOUT, citation=UNET_CITATION))
    register(ArchSpec(
        name="swin_unetr", build=build_swin_unetr, task="segmentation", family="swin_unetr",
        input_size=(3, 224, 224), classifier="swin_t", load_parent=load_swin_unetr_parent,
        description="MONAI Swin UNETR (2D) with Swin-T widths/depths; timm Swin-T blocks map into its encoder "
                    "(not the 2×2 patch embedding nor the extra last merge)",
        channels_last=False,
        group_prefixes=(("swinViT.",), ("",), ("out.",)),  # encoder, everything else (the decoder), head
        hub_layout=MONAI_LAYOUT, citation=SWIN_UNETR_CITATION))
