"""Synthetic datasets, deterministic from a seed, so medzoo runs offline, in tests and in the demo.

This is not medical data: the images are drawn shapes and noise that only imitate the look of a few
modalities, small enough (64×64) that a resnet18 chain trains in about a minute on two CPU cores.
"""

from __future__ import annotations

import numpy as np

from medzoo.plugin import ArraySource, DatasetSpec, Record, assign_splits, hookimpl

SIZE = 64
AGG_CLASSES = ("xr_chest", "ct_head", "mg_breast", "histo_nuclei", "us_fan", "mr_knee")
AGG_PER_CLASS = 80
LESION_PATIENTS = 160  # two views each
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
GENERATOR_VERSION = 1  # the data's identity: bump when a drawing function changes what it draws


def _grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    return yy, xx


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture: coarse noise upsampled bilinearly."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(pos.astype(int), cells - 1)
    f = pos - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)


def draw_agg(cls: str, rng, size: int = SIZE) -> np.ndarray:
    yy, xx = _grid(size)
    j = lambda s=0.05: rng.normal(0, s)  # noqa: E731 — positional jitter
    img = np.zeros((size, size), np.float32)
    if cls == "xr_chest":
        img = 0.7 * _ellipse(yy, xx, 0.5 + j(), 0.5, 0.45, 0.42)
        for side in (0.3, 0.7):
            img -= 0.45 * _ellipse(yy, xx, 0.48 + j(), side + j(0.03), 0.3, 0.14)
    elif cls == "ct_head":
        r = 0.38 + j(0.03)
        outer, inner = _ellipse(yy, xx, 0.5, 0.5, r + 0.06, r * 0.85 + 0.06), _ellipse(yy, xx, 0.5, 0.5, r, r * 0.85)
        img = 0.95 * (outer - inner) + 0.4 * inner
    elif cls == "mg_breast":
        side = rng.integers(2)
        cx = 0.0 if side == 0 else 1.0
        img = 0.5 * _ellipse(yy, xx, 0.5 + j(), cx, 0.45, 0.55 + j()) * (0.6 + 0.6 * _smooth_noise(rng, size, 6))
    elif cls == "histo_nuclei":
        img = 0.75 + 0.1 * _smooth_noise(rng, size, 4)
        for _ in range(rng.integers(12, 20)):
            img -= 0.45 * _ellipse(yy, xx, rng.random(), rng.random(), 0.04, 0.05)
    elif cls == "us_fan":
        ang = np.arctan2(xx - 0.5, yy + 0.1)
        rad = np.hypot(xx - 0.5, yy + 0.1)
        fan = ((np.abs(ang) < 0.6 + j(0.05)) & (rad < 1.0)).astype(np.float32)
        img = fan * (0.3 + 0.4 * rng.random((size, size)).astype(np.float32))
    elif cls == "mr_knee":
        img = 0.2 + 0.1 * _smooth_noise(rng, size, 3)
        img += 0.6 * _ellipse(yy, xx, 0.25 + j(), 0.5, 0.2, 0.22) + 0.6 * _ellipse(yy, xx, 0.75 + j(), 0.5, 0.2, 0.18)
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def draw_lesion(rng, present: bool, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Breast-like texture, and when ``present`` a soft bright blob; the mask marks the blob."""
    yy, xx = _grid(size)
    tissue = 0.25 + 0.35 * _smooth_noise(rng, size, 8) + 0.1 * _smooth_noise(rng, size, 16)
    mask = np.zeros((size, size), np.uint8)
    if present:
        cy, cx = rng.uniform(0.25, 0.75, 2)
        r = rng.uniform(0.06, 0.13)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        tissue += rng.uniform(0.25, 0.4) * np.exp(-d2 * 1.5)
        mask = (d2 <= 1).astype(np.uint8)
    tissue += rng.normal(0, 0.04, tissue.shape)
    return (np.clip(tissue, 0, 1) * 255).astype(np.uint8), mask


def _agg_pixels() -> tuple[np.ndarray, None]:
    rng = np.random.default_rng(1234)
    return np.stack([draw_agg(cls, rng) for cls in AGG_CLASSES for _ in range(AGG_PER_CLASS)]), None


def open_agg(root=None, arg=None) -> ArraySource:
    records = [Record(id=f"{cls}/{i:03d}", label=c, split="train", patient=f"{cls}-p{i // 2:03d}",
                      meta={"index": c * AGG_PER_CLASS + i, "modality": cls.split("_")[0]})
               for c, cls in enumerate(AGG_CLASSES) for i in range(AGG_PER_CLASS)]
    assign_splits(records, SPLIT_FRACTIONS, seed=0)
    # drawn on the first read: a chain that reuses its stored stage never draws them
    return ArraySource("phantom_agg", "classification", AGG_CLASSES, records, _agg_pixels,
                       generated=f"phantom_agg v{GENERATOR_VERSION} seed 1234")


def open_lesion(root=None, arg=None, *, task: str = "classification", name: str = "phantom_lesion") -> ArraySource:
    rng = np.random.default_rng(5678)
    images, masks, records = [], [], []
    for p in range(LESION_PATIENTS):
        for view in ("CC", "MLO"):
            present = bool(rng.random() < 0.5)
            img, mask = draw_lesion(rng, present)
            records.append(Record(id=f"p{p:03d}_{view}", label=None if task == "segmentation" else int(present),
                                  split="train", patient=f"p{p:03d}", mask=len(images),
                                  meta={"index": len(images), "view": view}))
            images.append(img)
            masks.append(mask)
    assign_splits(records, SPLIT_FRACTIONS, seed=0)
    classes = ("background", "lesion") if task == "segmentation" else ("absent", "present")
    return ArraySource(name, task, classes, records, np.stack(images), np.stack(masks),
                       generated=f"phantom_lesion v{GENERATOR_VERSION} seed 5678")


PHANTOM_RECIPE = {"epochs": 3, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01,
                  "schedule": "cosine", "warmup_epochs": 0, "image_size": SIZE, "augment": "light", "freeze": "full"}


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="phantom_agg", open=open_agg, task="classification", classes=AGG_CLASSES, modality="synthetic",
        body_part="various", recipe=PHANTOM_RECIPE, license="cc0-1.0",
        description=f"SYNTHETIC stand-in for an aggregated medical dataset: {len(AGG_CLASSES)} drawn 'modalities', "
                    f"{len(AGG_CLASSES) * AGG_PER_CLASS} images of {SIZE}px, 2 per patient; runs offline"))
    register(DatasetSpec(
        name="phantom_lesion", open=open_lesion, task="classification", classes=("absent", "present"),
        modality="synthetic", body_part="breast", recipe=PHANTOM_RECIPE, license="cc0-1.0",
        description=f"SYNTHETIC lesion present/absent on breast-like texture, {2 * LESION_PATIENTS} images of "
                    f"{SIZE}px, 2 views per patient; runs offline"))
    register(DatasetSpec(
        name="phantom_lesion_seg", open=lambda root=None, arg=None: open_lesion(task="segmentation",
                                                                               name="phantom_lesion_seg"),
        task="segmentation", classes=("background", "lesion"), modality="synthetic", body_part="breast",
        recipe={**PHANTOM_RECIPE, "lr": 1e-3}, license="cc0-1.0",
        description="SYNTHETIC lesion masks: the phantom_lesion images with a mask of each blob, for segmentation"))
