"""Saliency maps: where a classifier looked, through pytorch-grad-cam (the ``saliency`` extra).

``maps(model, batch)`` gives one map per image (N×H×W, 0..1, at the input's size) by Grad-CAM, or by
Score-CAM (gradient-free: it weighs each channel of the layer by the score of the image masked by that
channel, so it needs no backward pass and works on models whose gradients are unreliable). The layer and,
for transformers, the reshape of its tokens to N×C×H×W come from the architecture spec
(``ArchSpec.saliency_target``); a spec without one gets the last stage of timm's ``feature_info``.
``overlay`` draws a map on an image, ``write_maps`` writes ``<stem>_saliency.png`` files.

pytorch-grad-cam is imported only when a map is asked for, so the core install stays lean.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .registry import MedzooError, MedzooWarning, registry

METHODS = ("gradcam", "scorecam")
INSTALL = "pip install 'medzoo[saliency]'"
SCORECAM_BATCH = 64  # masked copies of one image scored per forward pass


def available() -> bool:
    """Whether the ``saliency`` extra (pytorch-grad-cam) is installed."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


def require():
    """pytorch-grad-cam, or one MedzooError naming the install command."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise MedzooError(f"saliency maps need pytorch-grad-cam, which is not installed: {INSTALL}") from None
    return pytorch_grad_cam


def feature_layer(model: Any) -> Any:
    """The module of the last stage in timm's ``feature_info`` that the model still computes (``truncate``
    leaves the dropped stages as empty modules), or None for a model without ``feature_info``."""
    return _feature_stage(model)[0]


def _feature_stage(model: Any) -> tuple[Any, int | None]:
    info = getattr(model, "feature_info", None)
    entries = getattr(info, "info", info) or []  # a list on timm models, a FeatureInfo on feature extractors
    for entry in reversed(list(entries)):
        name = entry.get("module") if isinstance(entry, dict) else None
        if not name:
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if any(True for _ in module.parameters()):
            return module, entry.get("num_chs")
    return None, None


def _what(model: Any) -> str:
    return str(getattr(model, "medzoo_origin", "") or type(model).__name__)


def target(model: Any, arch: str | None = None) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The layer Grad-CAM reads and the reshape of its output to N×C×H×W (None when it already is), from the
    spec of ``arch`` (default: the architecture in the model's medzoo lineage)."""
    lin = getattr(model, "medzoo_lineage", None)
    arch = arch or (lin.arch if lin is not None else None)
    spec = registry().resolve("archs", arch).spec if arch else None
    task = lin.task if lin is not None else getattr(spec, "task", "classification")
    if task == "segmentation":
        raise MedzooError(f"saliency maps are for classifiers; {_what(model)} is a segmentation model, whose "
                          "predicted mask already shows where it found each class")
    if spec is not None and spec.saliency_target is not None:
        layer, reshape = spec.saliency_target(model)
    else:
        layer, chans = _feature_stage(model)
        reshape = _checked_layout(chans, arch or _what(model))
    if layer is None:
        what = f"architecture '{arch}'" if arch else _what(model)
        raise MedzooError(f"{what} has no layer for saliency maps (no timm feature_info and no "
                          "ArchSpec.saliency_target); its plugin should set saliency_target")
    return layer, reshape


def _checked_layout(chans: int | None, what: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Without a spec's reshape, the layer's output must already be N×C×H×W with the channels timm lists: a
    channels-last output (Swin's NHWC) would otherwise give a map of nonsense without an error."""
    def check(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or (chans and x.shape[1] != chans):
            raise MedzooError(f"the saliency layer of {what} gives {tuple(x.shape)}, not N×{chans or 'C'}×H×W; pass "
                              "arch= (the medzoo architecture name) or set its spec's saliency_target reshape")
        return x
    return check


def maps(model: Any, batch: torch.Tensor, *, method: str = "gradcam", targets: Sequence[int] | None = None,
         arch: str | None = None) -> np.ndarray:
    """Saliency of each image of ``batch`` (N×C×H×W, normalised as the model expects) for the class in
    ``targets`` (default: each image's predicted class): float32 N×H×W, each map scaled to 0..1.

    ``method``: "gradcam" (one forward and backward pass per batch) or "scorecam" (gradient-free, one
    forward pass per channel of the layer per image: 512 for resnet18, 768 for swin_t). ``arch`` names the
    medzoo architecture of a model that carries no lineage (built with timm or ``medzoo.models.build``)."""
    require()
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in METHODS:
        raise MedzooError(f"unknown saliency method '{method}'; use one of {', '.join(METHODS)}")
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        raise MedzooError("saliency maps take a batch tensor N×C×H×W (the model's normalised input); "
                          "add the batch dimension with x[None]")
    layer, reshape = target(model, arch)
    if targets is not None:
        targets = [int(t) for t in targets]
        classes = int(getattr(model, "num_classes", 0) or 0)
        if len(targets) != len(batch):
            raise MedzooError(f"{len(targets)} targets for {len(batch)} images; give one class index per image")
        if classes and any(not 0 <= t < classes for t in targets):
            raise MedzooError(f"target class indices must be in 0..{classes - 1}; got {targets}")
    cls = GradCAM if method == "gradcam" else ScoreCAM
    training = model.training
    # the input needs a gradient so the layer's output has one even when every parameter is frozen
    x = batch.detach().to(next(model.parameters()).device).float().requires_grad_(method == "gradcam")
    cam = cls(model=model, target_layers=[layer], reshape_transform=reshape)
    cam.batch_size = SCORECAM_BATCH
    try:
        with torch.enable_grad():
            out = cam(input_tensor=x, targets=None if targets is None else
                      [ClassifierOutputTarget(t) for t in targets])
    except ValueError as exc:
        if "shape" not in str(exc):
            raise
        raise MedzooError(f"the saliency layer of {_what(model)} does not give N×C×H×W maps ({exc}); its "
                          "architecture spec's saliency_target should return a reshape for it") from None
    finally:
        # released by hand: the library's context manager swallows IndexError
        cam.activations_and_grads.release()
        model.train(training)
    return np.nan_to_num(np.asarray(out, dtype=np.float32)).clip(0, 1)


def to_uint8(image: Any) -> np.ndarray:
    """An image as 8-bit H×W×3 RGB: grey repeated, alpha dropped, other dtypes scaled min..max (16-bit DICOM)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise MedzooError(f"overlay takes an H×W or H×W×3 image; got shape {tuple(arr.shape)}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)).round().astype(np.uint8)
    return arr


def overlay(image: Any, saliency: np.ndarray, *, weight: float = 0.5) -> np.ndarray:
    """``image`` (8-bit RGB or grey; see ``to_uint8``) with ``saliency`` (H×W, 0..1, resized to the image)
    drawn over it in the jet colour map at ``weight``: uint8 H×W×3 RGB."""
    require()
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = to_uint8(image)
    m = np.asarray(saliency, dtype=np.float32)
    if m.ndim != 2:
        raise MedzooError(f"overlay takes one H×W map; got shape {tuple(m.shape)}")
    if m.shape != img.shape[:2]:
        m = np.asarray(cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR), dtype=np.float32)
    return show_cam_on_image(img.astype(np.float32) / 255, np.clip(m, 0, 1), use_rgb=True, image_weight=1 - weight)


def saliency_name(path: str | Path) -> str:
    return f"{Path(path).stem}_saliency.png"


def write_maps(model: Any, batch: torch.Tensor, images: Sequence[Any], paths: Sequence[str | Path],
               out_dir: str | Path, method: str = "gradcam", *, targets: Sequence[int] | None = None,
               overwrite: bool = False, arch: str | None = None) -> list[Path]:
    """Write ``out_dir/<stem>_saliency.png`` for each input: the map of ``batch[i]`` over ``images[i]`` (the
    picture to draw on, e.g. the image as read or the de-normalised model input), named after ``paths[i]``.

    Checks every name before writing anything: two inputs with the same stem, or an existing file (unless
    ``overwrite``), are refused. Each file is written atomically. Returns the files written, in order."""
    from . import store

    if not len(batch) == len(images) == len(paths):
        raise MedzooError(f"write_maps got {len(batch)} inputs, {len(images)} images and {len(paths)} paths; "
                          "give one of each per image")
    out = Path(out_dir)
    files = [out / saliency_name(p) for p in paths]
    seen: dict[Path, Any] = {}
    for f, p in zip(files, paths):
        if f in seen:
            raise MedzooError(f"'{seen[f]}' and '{p}' would both write {f.name}; give inputs with distinct "
                              "file names, or write their maps to separate folders")
        seen[f] = p
        if f.exists() and not overwrite:
            raise MedzooError(f"{f} exists; remove it or choose another saliency folder")
    found = maps(model, batch, method=method, targets=targets, arch=arch)
    from PIL import Image

    for f, image, m in zip(files, images, found):
        buf = io.BytesIO()
        Image.fromarray(overlay(image, m)).save(buf, format="PNG")
        store.atomic_write(f, buf.getvalue())
    return files


def missing_warning() -> MedzooWarning:
    return MedzooWarning(f"saliency maps left out: pytorch-grad-cam is not installed ({INSTALL})")
