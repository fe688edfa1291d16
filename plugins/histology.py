"""Histology: BCSS (Breast Cancer Semantic Segmentation, TCGA whole-slide regions) as tiled segmentation."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from medzoo.plugin import (
    DatasetSpec,
    MedzooError,
    Record,
    assign_splits,
    bad_input,
    data_root,
    hookimpl,
)

from . import portals
from .imaging import FileSource, find_dir, list_images, read_image, recipe

DEFAULT_PATCH = 512
MIN_LABELLED = 0.05  # tiles with less of their area inside the annotated ROI teach nothing


def read_codes(path: Path) -> list[str]:
    """``gtruth_codes.tsv`` (label<TAB>GT_code, CRLF) → class names indexed by code."""
    names: dict[int, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 2 or not parts[1].isdigit():
            if i == 1:
                continue  # the header
            raise MedzooError(f"{path}:{i}: expected 'label<TAB>code', got {line!r}; check the file")
        names[int(parts[1])] = parts[0]
    if not names:
        raise MedzooError(f"{path}: no class codes; check the file")
    return [names.get(c, f"code_{c}") for c in range(max(names) + 1)]


@lru_cache(maxsize=2)
def _load(path: str, mask: bool) -> np.ndarray:
    # Tiles of one region are read one after another: keep the decoded region instead of decoding it per tile.
    if not mask:
        return read_image(path)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise MedzooError(f"{path}: mask is {im.mode}, expected 8-bit class codes; use the released masks/")
        return np.asarray(im)  # a palette image's indices are the codes


class TileSource(FileSource):
    def read(self, record: Record) -> np.ndarray:
        return self._tile(_load(str(self.root / record.meta["path"]), False), record)

    def read_mask(self, record: Record) -> np.ndarray:
        return self._tile(_load(str(self.root / record.mask), True), record)

    def files(self, record: Record):
        return [self.root / record.meta["path"], self.root / record.mask]

    @staticmethod
    def _tile(arr: np.ndarray, record: Record) -> np.ndarray:
        x, y, p = record.meta["x"], record.meta["y"], record.meta["patch"]
        tile = arr[y:y + p, x:x + p]
        if tile.shape[:2] != (p, p):  # a region smaller than the patch: pad with 'outside ROI' (code 0)
            pad = [(0, p - tile.shape[0]), (0, p - tile.shape[1])] + [(0, 0)] * (tile.ndim - 2)
            tile = np.pad(tile, pad)
        return tile


def _starts(length: int, patch: int) -> list[int]:
    """Non-overlapping tile origins; the last one is pulled back so the region's edge is covered too."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, patch))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def open_bcss(*, root=None, arg=None) -> TileSource:
    try:
        patch = int(arg) if arg else DEFAULT_PATCH
    except ValueError:
        raise MedzooError(f"bcss takes a tile size in pixels (bcss:512), not ':{arg}'") from None
    if not 32 <= patch <= 8192:
        raise MedzooError(f"bcss tile size {patch} is out of range (32..8192)")
    top = data_root("bcss", root)
    base = find_dir(top, "0_Public-data-Amgad2019_0.25MPP")  # the Google-Drive copy's folder
    images = find_dir(base, "images", "rgbs_colorNormalized")
    if images == base or not (base / "masks").is_dir():
        raise MedzooError(f"bcss: expected images/ (or rgbs_colorNormalized/) and masks/ in {base}; "
                          "see docs/datasets/bcss.md")
    codes_file = base / "meta" / "gtruth_codes.tsv"
    if not codes_file.is_file():
        raise MedzooError(f"bcss: no {codes_file}; it ships in the release's meta/ folder (docs/datasets/bcss.md)")
    classes = read_codes(codes_file)
    records = []
    for img in list_images(images):
        mask_path = base / "masks" / img.name
        if not mask_path.is_file():
            bad_input(img, f"has no mask {mask_path}")
            continue
        mask = _load(str(mask_path), True)
        if mask.max(initial=0) >= len(classes):
            bad_input(mask_path, f"holds code {int(mask.max())}, not in {codes_file.name} (0..{len(classes) - 1})")
            continue
        patient = img.name[:12]  # TCGA-XX-YYYY
        h, w = mask.shape
        for y in _starts(h, patch):
            for x in _starts(w, patch):
                if (mask[y:y + patch, x:x + patch] > 0).mean() < MIN_LABELLED:
                    continue
                rid = f"{img.stem}@{x},{y}"
                records.append(Record(rid, None, "train", patient, mask=mask_path.relative_to(base).as_posix(),
                                      meta={"path": img.relative_to(base).as_posix(), "x": x, "y": y, "patch": patch}))
    _load.cache_clear()
    assign_splits(records, (0.7, 0.15, 0.15), seed=0)
    return TileSource("bcss", "segmentation", classes, records, root=base, ignore_index=0, meta={"channels": 3})


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="bcss", open=open_bcss, task="segmentation", modality="histology", body_part="breast",
        license="cc0-1.0", license_url="https://bcsegmentation.grand-challenge.org/", docs="docs/datasets/bcss.md",
        citation="Amgad et al., Structured crowdsourcing enables convolutional segmentation of histology images, "
                 "Bioinformatics 2019.",
        description="BCSS breast cancer semantic segmentation (TCGA, 0.25 MPP), tiled; code 0 (outside ROI) ignored",
        takes_arg=True, arg_required=False, arg_help="tile px",
        manual_steps=portals.BCSS, missing=portals.missing_bcss,
        recipe=recipe(epochs=40, batch_size=8, lr=2e-4, image_size=512, augment="medium", patience=10,
                      preprocess={"size": 512, "channels": 3, "fit": "stretch"})))
