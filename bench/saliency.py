"""docs/saliency.md's figures: Grad-CAM time per image against a plain forward pass (resnet18, swin_t at
224 px, batch of 8, random weights, one torch thread), and Score-CAM time for one resnet18 image.
Not part of run_all.sh: Score-CAM alone takes over a minute on CPU.

    .venv/bin/python bench/saliency.py
"""

from __future__ import annotations

import time

import torch

from medzoo import models, saliency
from medzoo.registry import registry


def build(arch: str):
    return models.build(registry().resolve("archs", arch), num_classes=2, in_chans=3, img_size=224).eval()


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224)
    for arch in ("resnet18", "swin_t"):
        model = build(arch)
        saliency.maps(model, x[:1], arch=arch)  # warm-up
        t = time.perf_counter()
        saliency.maps(model, x, arch=arch)
        cam = (time.perf_counter() - t) / len(x)
        with torch.no_grad():
            t = time.perf_counter()
            model(x)
            fwd = (time.perf_counter() - t) / len(x)
        print(f"{arch} 224 px: Grad-CAM {cam:.2f} s/image, plain forward {fwd:.2f} s/image", flush=True)
    t = time.perf_counter()
    saliency.maps(build("resnet18"), x[:1], method="scorecam", arch="resnet18")
    print(f"resnet18 224 px: Score-CAM {time.perf_counter() - t:.0f} s/image", flush=True)


if __name__ == "__main__":
    main()
