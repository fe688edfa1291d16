"""The generic part of preprocessing, the same for every dataset: an image (and its mask) fitted to a square
of ``cfg.size`` pixels, in ``cfg.channels`` and ``cfg.dtype``. ``DataSource.prepare`` ends with it; the cache
(``medzoo.cache``) stores what it returns. Before the fit, the named steps a config lists (registered by
plugins: breast masking, canonical side, CLAHE) run on the raw pixels.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from .registry import MedzooError, registry


class FitConfig(Protocol):
    """The fields of ``medzoo.cache.PreprocessConfig`` that fitting reads."""

    # read-only properties: a frozen dataclass (PreprocessConfig) satisfies them
    @property
    def size(self) -> int: ...
    @property
    def fit(self) -> str: ...  # pad | crop | stretch
    @property
    def channels(self) -> int | None: ...
    @property
    def dtype(self) -> str: ...  # uint8 | uint16


def _as_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535
    return np.clip(img.astype(np.float32, copy=False), 0, 1)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """H×W or H×W×C → H×W (channels=1) or H×W×3, alpha dropped."""
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if channels == 1:
        return img if img.ndim == 2 else img.astype(np.float32).mean(2).astype(img.dtype)
    return img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)


def _geometry(h: int, w: int, size: int, fit: str) -> tuple[int, int]:
    if fit == "stretch":
        return size, size
    scale = size / (max(h, w) if fit == "pad" else min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _place(x: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Centre-pad or centre-crop the last two dims of ``x`` to size×size."""
    h, w = x.shape[-2:]
    out = torch.full((*x.shape[:-2], size, size), fill, dtype=x.dtype)
    top, left = (size - h) // 2, (size - w) // 2
    sy, sx = max(0, -top), max(0, -left)
    ty, tx = max(0, top), max(0, left)
    hh, ww = min(h - sy, size - ty), min(w - sx, size - tx)
    out[..., ty:ty + hh, tx:tx + ww] = x[..., sy:sy + hh, sx:sx + ww]
    return out


def fit_pair(img: np.ndarray, mask: np.ndarray | None, cfg: FitConfig, *, channels: int | None = None,
             pad_mask: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image (antialiased) and its mask (nearest) to ``cfg.size`` as ``cfg.fit`` says, convert the
    image to ``cfg.channels`` (else ``channels``, else 3) and ``cfg.dtype``."""
    img = to_channels(img, cfg.channels or channels or (1 if img.ndim == 2 else 3))
    h, w = img.shape[:2]
    nh, nw = _geometry(h, w, cfg.size, cfg.fit)
    x = torch.from_numpy(_as_float(img))
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True,
                                        align_corners=False)[0].clamp_(0, 1)
    x = _place(x, cfg.size, 0.0)
    top = 65535 if cfg.dtype == "uint16" else 255
    out = (x * top).round_().numpy().astype(cfg.dtype)
    out = out[0] if out.shape[0] == 1 else out.transpose(1, 2, 0)
    if mask is None:
        return np.ascontiguousarray(out), None
    if mask.shape[:2] != (h, w):
        raise MedzooError(f"mask of size {mask.shape[:2]} does not match its image {(h, w)}; check the mask files")
    m = torch.from_numpy(np.asarray(mask, dtype=np.int64))[None, None].float()
    m = torch.nn.functional.interpolate(m, size=(nh, nw), mode="nearest-exact")[0, 0]
    placed = _place(m, cfg.size, float(pad_mask)).numpy()
    return np.ascontiguousarray(out), placed.astype(np.uint8 if placed.max(initial=0) < 256 else np.int32)


def unfit(mask: np.ndarray, shape: tuple[int, int], size: int, fit: str, fill: int) -> np.ndarray:
    """A size×size class-code mask (the model's input, fitted by :func:`fit_pair`) back on the h×w grid of the
    image it was fitted from (nearest neighbour): the pad cut away; under ``crop``, the margins the model never
    saw filled with ``fill``. ``mask`` may be at the model's image size rather than ``size`` (the evaluation
    transform resized the fitted square): it is first scaled back to size×size."""
    h, w = shape
    nh, nw = _geometry(h, w, size, fit)
    m = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
    if tuple(m.shape) != (size, size):
        m = torch.nn.functional.interpolate(m[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0]
        m = m.round().to(torch.int64)
    region = torch.full((nh, nw), fill, dtype=torch.int64)
    top, left = (size - nh) // 2, (size - nw) // 2  # as _place put it
    sy, sx, ty, tx = max(0, top), max(0, left), max(0, -top), max(0, -left)
    hh, ww = min(nh - ty, size - sy), min(nw - tx, size - sx)
    region[ty:ty + hh, tx:tx + ww] = m[sy:sy + hh, sx:sx + ww]
    back = torch.nn.functional.interpolate(region[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0]
    return back.round().to(torch.int64).numpy()


# -- the named steps before the fit (plugins register them: breast masking, canonical side, CLAHE) ----------

def step_refs(cfg: Any) -> list:
    """The registry entries of ``cfg``'s steps in the order they run: ``cfg.steps``, then CLAHE."""
    names = [*cfg.steps, *([f"clahe:{cfg.clahe:g}"] if cfg.clahe else [])]
    refs = [registry().resolve("steps", n) for n in names]
    for ref in refs:
        if ref.spec.check is not None:
            ref.spec.check(ref.arg)
    return refs


def apply_steps(img: np.ndarray, mask: np.ndarray | None, cfg: Any):
    """Run ``cfg``'s named steps (and CLAHE) on raw pixels and their mask: the domain part of ``prepare``."""
    for ref in step_refs(cfg):
        img, mask = ref.spec.apply(img, mask, ref.arg)
    return img, mask
