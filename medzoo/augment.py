"""Augmentations torchvision's v2 lacks, written as v2 transforms so masks move with images."""

from __future__ import annotations

import random
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class RandomStretch(v2.Transform):
    """Anisotropic scale (stretch one axis, squeeze the other) around the centre, keeping the output size:
    patients and scanners differ in aspect, and a fixed-aspect resize hides that from training."""

    def __init__(self, amount: float, size: list[int]):
        super().__init__()
        self.amount = amount
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        f = 1 + random.uniform(-self.amount, self.amount)
        return {"sy": f, "sx": 1 / f}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, torch.Tensor)):
            return inpt
        h, w = inpt.shape[-2:]
        out = F.resize(inpt, [max(1, round(h * params["sy"])), max(1, round(w * params["sx"]))], antialias=True)
        return F.center_crop(out, [h, w])  # pads where the squeezed axis came out shorter


class RandomGamma(v2.Transform):
    """Intensity jitter by a random gamma in [1-g, 1+g]: exposure and window differences between sites."""

    def __init__(self, amount: float):
        super().__init__()
        self.amount = amount

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": 1 + random.uniform(-self.amount, self.amount)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) or not isinstance(inpt, torch.Tensor):
            return inpt
        return F.adjust_gamma(inpt.clamp(0, 1), params["gamma"])
