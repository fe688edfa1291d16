"""Which torch device a run uses: the one asked for (checked), else the best visible one."""

from __future__ import annotations

import os

import torch

from .registry import MedzooError


def pick_device(name: str | None) -> torch.device:
    """``--device NAME`` checked against what is visible; ``None``: cuda (this rank's GPU under torchrun),
    else mps, else cpu."""
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise MedzooError(f"unknown --device '{name}'; use cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise MedzooError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
