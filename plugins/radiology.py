"""Radiology datasets: Kermany's pediatric chest X-rays (pneumonia) and the Kaggle head CT hemorrhage set."""

from __future__ import annotations

import re

from medzoo.plugin import (
    DatasetSpec,
    MedzooError,
    Record,
    assign_splits,
    bad_input,
    data_root,
    hookimpl,
    split_official,
)

from . import portals
from .imaging import FileSource, list_images, read_csv_rows, recipe

CHEST_CLASSES = ("NORMAL", "PNEUMONIA")
CHEST_3CLASSES = ("NORMAL", "BACTERIA", "VIRUS")
# person1000_bacteria_2931.jpeg -> person1000; IM-0115-0001.jpeg -> IM-0115;
# NORMAL2-IM-1427-0001.jpeg -> NORMAL2-IM-1427
_PATIENT = re.compile(r"^(person\d+)_|^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


def chest_patient(name: str) -> str | None:
    m = _PATIENT.match(name)
    return (m.group(1) or m.group(2)) if m else None


def open_chest_xray(*, root=None, arg=None) -> FileSource:
    if arg not in (None, "3class"):
        raise MedzooError(f"chest_xray takes no argument or ':3class' (normal/bacteria/virus), not ':{arg}'")
    top = data_root("chest_xray", root)
    # The Kaggle zip also holds chest_xray/chest_xray/ (a duplicate) and __MACOSX/ (AppleDouble junk):
    # take the first folder that has the split folders and never glob recursively from the top.
    base = next((d for d in (top, top / "chest_xray") if (d / "train").is_dir()), None)
    if base is None:
        raise MedzooError(f"chest_xray: no train/ folder in {top} or {top / 'chest_xray'}; point --data-root at the "
                          "unzipped Kaggle folder (see docs/datasets/chest_xray.md)")
    classes = CHEST_3CLASSES if arg == "3class" else CHEST_CLASSES
    records = []
    for split in ("train", "val", "test"):
        for folder in CHEST_CLASSES:
            d = base / split / folder
            if not d.is_dir():
                continue
            for p in list_images(d):
                if arg == "3class" and folder == "PNEUMONIA":
                    lower = p.name.lower()
                    kind = "BACTERIA" if "bacteria" in lower else "VIRUS" if "virus" in lower else None
                    if kind is None:
                        bad_input(p, "pneumonia image whose name says neither bacteria nor virus")
                        continue
                    label = classes.index(kind)
                else:
                    label = classes.index(folder)
                rel = p.relative_to(base).as_posix()
                records.append(Record(rel, label, split, chest_patient(p.name), meta={"path": rel}))
    # The official val split is 16 images: fold it into train and re-split by patient, keeping test.
    for r in records:
        if r.split == "val":
            r.split = "train"
    moved = split_official(records, val_fraction=0.1, seed=0)
    return FileSource("chest_xray", "classification", classes, records, root=base, grey=True,
                      meta={"moved_to_test": moved})


HEAD_CT_CLASSES = ("normal", "hemorrhage")


def open_head_ct(*, root=None, arg=None) -> FileSource:
    top = data_root("head_ct", root)
    labels = next((p for p in (top / "labels.csv", top / "head_ct" / "labels.csv") if p.is_file()), None)
    if labels is None:
        raise MedzooError(f"head_ct: no labels.csv in {top}; point --data-root at the unzipped Kaggle folder "
                          "(see docs/datasets/head_ct.md)")
    images = next((d for d in (labels.parent / "head_ct" / "head_ct", labels.parent / "head_ct", labels.parent)
                   if d.is_dir() and any(d.glob("*.png"))), None)
    if images is None:
        raise MedzooError(f"head_ct: no PNG images under {labels.parent}/head_ct; see docs/datasets/head_ct.md")
    records = []
    for i, row in enumerate(read_csv_rows(labels), start=2):
        sid, value = row.get("id", ""), row.get("hemorrhage", "")  # the real header is 'id, hemorrhage'
        if not sid.isdigit() or value not in ("0", "1"):
            bad_input(f"{labels}:{i}", f"bad row id={sid!r} hemorrhage={value!r} (expected an integer id and 0 or 1)")
            continue
        name = f"{int(sid):03d}.png"  # ids are unpadded in the CSV, files are %03d
        if not (images / name).is_file():
            bad_input(f"{labels}:{i}", f"references {images / name}, which does not exist")
            continue
        rel = (images / name).relative_to(top).as_posix()
        records.append(Record(rel, int(value), "train", None, meta={"path": rel}))
    assign_splits(records, (0.7, 0.15, 0.15), seed=0)  # no patient ids: each scan is its own patient
    return FileSource("head_ct", "classification", HEAD_CT_CLASSES, records, root=top, grey=True)


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="chest_xray", open=open_chest_xray, classes=CHEST_CLASSES, modality="X-ray", body_part="chest",
        license="cc-by-4.0", license_url="https://data.mendeley.com/datasets/rscbjbr9sj/2",
        docs="docs/datasets/chest_xray.md",
        citation="Kermany et al., Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning, "
                 "Cell 2018.",
        description="Kermany pediatric chest X-rays, normal vs pneumonia (5,856 images); ':3class' splits "
                    "pneumonia into bacterial and viral",
        takes_arg=True, arg_required=False, arg_help="3class",
        manual_steps=portals.CHEST_XRAY, missing=portals.missing_chest_xray,
        recipe=recipe(epochs=20, lr=1e-4, class_weights=True, augment="medium",
                      preprocess={"size": 256, "channels": 1, "clahe": 2.0})))
    register(DatasetSpec(
        name="head_ct", open=open_head_ct, classes=HEAD_CT_CLASSES, modality="CT", body_part="head",
        license="unknown",  # the Kaggle upload names no licence: check before redistributing
        license_url="https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
        docs="docs/datasets/head_ct.md",
        description="Kaggle head CT hemorrhage: 200 axial slices, normal vs hemorrhage",
        manual_steps=portals.HEAD_CT, missing=portals.missing_head_ct,
        recipe=recipe(epochs=40, batch_size=16, lr=1e-4, augment="strong", patience=12, freeze="top:2",
                      preprocess={"size": 256, "channels": 1})))
