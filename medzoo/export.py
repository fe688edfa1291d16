"""``medzoo data export``: a dataset split's raw images as PNG files plus a labels.csv, e.g. to try
``medzoo predict`` on images a checkpoint never trained on, or to look at what a reader produces."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np

from . import data as mzdata
from . import store
from .registry import MedzooError


def _png(img: np.ndarray, path: Path) -> None:
    """8-bit images as they are, 16-bit ones at 16 bits, float [0, 1] images as 8-bit (PNG holds no floats)."""
    from PIL import Image

    if img.dtype not in (np.uint8, np.uint16):
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.dtype == np.uint16 and img.ndim == 3:  # PIL writes no 16-bit RGB PNG: keep the depth of grey only
        img = (img >> 8).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(img)).save(path)


def export_split(dataset: str, out: str | os.PathLike, *, split: str = "test", limit: int | None = None,
                 data_root: str | dict | None = None, skip_bad: bool = False) -> tuple[Path, int]:
    """Write the raw images of ``dataset``'s ``split`` (the first ``limit``) as PNG into ``images/`` of the new
    folder ``out``, with ``labels.csv`` (file, id, patient, label; paths relative to ``out``); segmentation masks
    go to ``masks/``. Refuses an existing
    non-empty ``out``; the folder appears complete or not at all. Returns the folder and the image count."""
    if split not in mzdata.SPLITS:
        raise MedzooError(f"unknown split '{split}'; use one of {', '.join(mzdata.SPLITS)}")
    if limit is not None and limit < 1:
        raise MedzooError("--limit must be ≥ 1")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedzooError(f"{out} exists and is not an empty folder; pick a new --out (nothing is overwritten)")
    source = mzdata.open_dataset(dataset, mzdata.root_for(data_root, dataset), skip_bad=skip_bad)
    records = source.split(split)
    if split == "val" and not records:
        mzdata.carve_val_split(source)  # the validation set the trainer carves out of training
        records = source.split(split)
    if not records:
        raise MedzooError(f"dataset '{dataset}' has no '{split}' images; pick another --split")
    records = records[:limit] if limit else records
    seg = source.task == "segmentation"
    tmp = store.new_tmp_dir(out.parent, out.name)
    try:
        (tmp / "images").mkdir()
        if seg:
            (tmp / "masks").mkdir()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "id", "patient", "label", *(["mask"] if seg else [])])
        n = 0
        with mzdata.skipping_bad(skip_bad):
            for i, r in enumerate(records):
                name = f"{i:05d}-{store.slug(Path(r.id).stem)[:80]}.png"
                try:
                    _png(source.read(r), tmp / "images" / name)
                    if seg:
                        _png(np.asarray(source.read_mask(r)).astype(np.uint8), tmp / "masks" / name)
                except MedzooError as exc:
                    mzdata.bad_input(r.id, str(exc))
                    continue
                w.writerow([f"images/{name}", r.id, r.patient or "", _label(r.label, source),
                            *([f"masks/{name}"] if seg else [])])
                n += 1
        (tmp / "labels.csv").write_text(buf.getvalue())
        store.swap_dir(tmp, out)  # replaces only an empty folder, checked above
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, n


def _label(label, source: mzdata.DataSource) -> str:
    if label is None:
        return ""
    if source.task == "multilabel":
        return ";".join(c for c, v in zip(source.classes, label) if v)
    return source.classes[int(label)]
