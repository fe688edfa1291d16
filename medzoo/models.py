"""Building models from registry names and loading a chain's first weights."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .registry import MedzooError, Ref, registry


@dataclass
class SourceWeights:
    """What a weight source hands the first training stage."""

    state_dict: dict[str, Any] | None  # None: train from scratch
    tag: str  # recorded in the lineage, e.g. 'imagenet:a1_in1k', 'scratch', 'file:<sha256[:12]>'
    sha256: str | None = None
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    # the arch the weights belong to, when not the classifier asked for (published segmentation weights)
    arch: str | None = None
    # provenance of upstream weights, recorded in the lineage's source and shown on model cards
    url: str | None = None  # where the file was downloaded from
    license: str | None = None  # SPDX / Hugging Face licence id of the weights ('unknown' if not known)
    license_url: str | None = None
    citation: str | None = None  # BibTeX or a one-line reference of the upstream method
    method: str | None = None  # upstream pretraining method, e.g. 'MoCo v2', 'iNat2021 supervised'
    redistributable: bool = True  # False: the weights' terms forbid redistributing derived models


def stock_timm_name(ref: Ref) -> str | None:
    """The stock timm architecture behind an arch name (``None`` for non-timm models)."""
    return ref.spec.timm_name  # a ``name:<arg>`` architecture sets it for its argument (``ArchSpec.for_arg``)


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, img_size: int | None = None):
    """A freshly initialised model for a registered architecture name (no weights loaded)."""
    ref = registry().resolve("archs", name)
    return build(ref, num_classes=num_classes, in_chans=in_chans, img_size=img_size)


def build(ref: Ref, *, num_classes: int, in_chans: int = 3, img_size: int | None = None):
    return ref.spec.build(num_classes=num_classes, in_chans=in_chans, img_size=img_size, arg=ref.arg, **ref.options)


def sha256_file(path: str | Path) -> str:
    from .weights import sha256_file as _sha

    return _sha(path)


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """Load a weights file, refusing anything that is not safetensors (see ``medzoo.weights``)."""
    from .weights import load_file

    return load_file(path)


# -- parameter groups (freeze policies use these) ------------------------------------------------

def block_groups(model, prefixes: Sequence[Sequence[str]] = ()) -> list[list[str]]:
    """Parameter names in block groups from input to output; the last group is the head.

    ``prefixes`` (the architecture's ``ArchSpec.group_prefixes``) name the groups: a parameter joins the group
    of its longest matching prefix. Without them timm models group by their own coarse matcher (stem, stage
    1…N, head with its final norm), so ``top:2`` means the same thing for a ResNet and a Swin; other models
    group by top-level child.
    """
    names = [n for n, _ in model.named_parameters()]
    if prefixes:
        grouped: list[list[str]] = [[] for _ in prefixes]
        for n in names:
            best = max(((len(p), i) for i, group in enumerate(prefixes) for p in group if n.startswith(p)),
                       default=None)
            if best is not None:
                grouped[best[1]].append(n)
        return [g for g in grouped if g]
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=True))
        ordered = [list(groups[k]) for k in sorted(groups)]
    else:
        ordered, index = [], {}
        for n in names:
            top = n.split(".")[0]
            if top not in index:
                index[top] = len(ordered)
                ordered.append([])
            ordered[index[top]].append(n)
    return [g for g in ordered if g]


def classifier_names(model) -> set[str]:
    """Names of the classifier's parameters (what a new task replaces)."""
    prefix = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not prefix:
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        prefix = linears[-1] if linears else None
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix or [])
    return {n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in prefixes)}


@dataclass
class Transfer:
    matched: int
    total: int
    head: str  # 'loaded' | 're-initialised'
    adapted: list[str] = field(default_factory=list)
    note: str = ""

    def __str__(self) -> str:
        extra = f"; input conv adapted ({', '.join(self.adapted)})" if self.adapted else ""
        note = f"; {self.note}" if self.note else ""
        return f"loaded {self.matched}/{self.total} tensors (head {self.head}{extra}{note})"


def transfer_weights(model, parent: dict[str, Any], *, keep_head: bool, origin: str) -> Transfer:
    """Load a parent's weights into ``model``: every non-head tensor must fit; the head only if ``keep_head``.

    A first conv trained on 3 channels is adapted to 1 (or back) like timm's ``adapt_input_conv``.
    """
    from timm.models import adapt_input_conv

    own = model.state_dict()
    head = classifier_names(model)
    head_buffers = {k for k in own if any(k.startswith(h.rsplit(".", 1)[0] + ".") for h in head)}
    load, adapted, misfits = {}, [], []
    for key, value in own.items():
        if key in head or key in head_buffers:
            if keep_head and key in parent and parent[key].shape == value.shape:
                load[key] = parent[key]
            continue
        src = parent.get(key)
        if src is None:
            misfits.append(f"{key} missing")
        elif src.shape == value.shape:
            load[key] = src
        elif src.ndim == 4 and src.shape[0] == value.shape[0] and src.shape[2:] == value.shape[2:]:
            load[key] = adapt_input_conv(value.shape[1], src.float()).to(src.dtype)
            adapted.append(f"{key} {src.shape[1]}→{value.shape[1]} channels")
        else:
            misfits.append(f"{key} {tuple(src.shape)} vs {tuple(value.shape)}")
    if misfits:
        raise MedzooError(f"weights from {origin} don't fit this model: {len(misfits)} of "
                          f"{len(own) - len(head)} backbone tensors missing or shaped differently "
                          f"(e.g. {misfits[0]}); use weights trained for the same architecture")
    model.load_state_dict(load, strict=False)
    head_loaded = keep_head and all(k in load for k in head)
    return Transfer(matched=len(load), total=len(own), head="loaded" if head_loaded else "re-initialised",
                    adapted=adapted)


def state_sha256(state: dict[str, Any]) -> str:
    """Content hash of a state dict (names, dtypes, shapes, values) — what the lineage records."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def freeze_frozen_batchnorm(model) -> None:
    """Run BatchNorm layers whose parameters are all frozen in eval mode, so their statistics stay put."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
