"""Building models from registry names and loading a chain's first weights."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import MedzooError, Ref, registry


@dataclass
class SourceWeights:
    """What a weight source hands the first training stage."""

    state_dict: dict[str, Any] | None  # None: train from scratch
    tag: str  # recorded in the lineage, e.g. 'imagenet:a1_in1k', 'scratch', 'file:<sha256[:12]>'
    sha256: str | None = None
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)


def stock_timm_name(ref: Ref) -> str | None:
    """The stock timm architecture behind an arch name (``None`` for non-timm models)."""
    if ref.spec.timm_name:
        return ref.spec.timm_name
    return ref.arg if ref.spec.family == "timm" else None


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, img_size: int | None = None):
    """A freshly initialised model for a registered architecture name (no weights loaded)."""
    ref = registry().resolve("archs", name)
    return build(ref, num_classes=num_classes, in_chans=in_chans, img_size=img_size)


def build(ref: Ref, *, num_classes: int, in_chans: int = 3, img_size: int | None = None):
    return ref.spec.build(num_classes=num_classes, in_chans=in_chans, img_size=img_size, arg=ref.arg, **ref.options)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """Load a weights file, refusing anything that is not safetensors (pickles can run code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MedzooError(f"weights file '{path}' does not exist; check the path")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix in {".pt", ".pth", ".bin", ".pkl", ".ckpt"} or head[:2] == b"PK" or head[:1] == b"\x80":
        raise MedzooError(f"'{path}' is a pickle checkpoint, which medzoo never loads (unpickling can run code); "
                          "convert it once in a trusted session with safetensors.torch.save_file(torch.load(...), 'x.safetensors')")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedzooError(f"'{path}' is not a readable safetensors file ({exc}); re-export it") from None
