"""medagg: the aggregated medical pretraining dataset. ``medzoo data build medagg`` builds it
(medagg_build.py); the ``medagg`` dataset reads a build (MEDZOO_DATA_MEDAGG or --data-root)."""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import click
import numpy as np

from medzoo.plugin import (
    ArraySource,
    DatasetSpec,
    MedzooError,
    Record,
    data_root,
    hookimpl,
)

from .generic import data_group
from .imaging import recipe

TASK_LABELS = {"label": "label", "fine": "label", "modality": "modality", "body_part": "body_part"}


def augment_copy(img: np.ndarray, key: str, copy: int) -> np.ndarray:
    """A deterministic flip and small rotation for oversampled copy ``copy`` (>0) of an image, so the
    copies that balance rare classes are not pixel-identical even without training augmentation."""
    import cv2

    rng = np.random.default_rng(zlib.crc32(f"{key}#{copy}".encode()))
    out = img[:, ::-1] if copy % 2 else img
    h, w = out.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-10, 10)), float(rng.uniform(0.95, 1.05)))
    return cv2.warpAffine(np.ascontiguousarray(out), m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


class MedaggSource(ArraySource):
    def read(self, record: Record) -> np.ndarray:
        img = self.images[record.meta["index"]]
        return augment_copy(np.asarray(img), record.meta["ref"], record.meta["copy"]) if record.meta["copy"] else img

    def stored_hashes(self):
        """The hashes of the original images, written by the build (None for a build older than them)."""
        from medzoo.plugin import Hashes

        path = Path(self.meta["build"]) / "hashes.npy"
        if not path.is_file():
            return None
        table = np.load(path)
        rows = np.array([r.meta["index"] for r in self.records], dtype=np.int64)
        if len(table) != len(self.images) or (len(rows) and rows.max() >= len(table)):
            return None
        return Hashes([r.id for r in self.records], table[rows, 0], table[rows, 1])


def open_medagg(*, root=None, arg=None) -> MedaggSource:
    folder = data_root("medagg", root)
    manifest, info_file = folder / "manifest.csv", folder / "manifest.json"
    if not manifest.is_file() or not info_file.is_file():
        raise MedzooError(f"medagg: {folder} is not a medagg build (no manifest.csv/manifest.json); "
                          "build one with `medzoo data build medagg --from ... --out DIR`")
    info = json.loads(info_file.read_text())
    if arg is not None and arg not in TASK_LABELS:
        raise MedzooError(f"medagg label '{arg}' is unknown; use medagg (as built), medagg:fine, medagg:modality "
                          "or medagg:body_part")
    column = TASK_LABELS[arg] if arg else info["task_label"]
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = info["classes"] if column == info["task_label"] else sorted({r[column] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    images = np.load(folder / "images.npy", mmap_mode="r")
    records = []
    for line, r in enumerate(rows, start=2):
        name, _, row = r["ref"].partition("#")
        if name != "images.npy" or not row.isdigit() or int(row) >= len(images):
            raise MedzooError(f"{manifest}:{line}: bad image reference {r['ref']!r}; rebuild medagg")
        if r[column] not in index:
            raise MedzooError(f"{manifest}:{line}: label {r[column]!r} is not in manifest.json's classes; "
                              "rebuild medagg")
        records.append(Record(f"{r['ref']}~{r['copy']}", index[r[column]], r["split"], r["patient"] or None,
                              meta={"index": int(row), "ref": r["ref"], "copy": int(r["copy"]),
                                    "source": r["source"], "origin": r["origin"]}))
    # a rebuild into the same folder changes the manifest and the image store: a new identity
    return MedaggSource("medagg", "classification", classes, records, images,
                        source_files=[manifest, info_file, folder / "images.npy"],
                        meta={"channels": info["channels"], "modality": "various", "body_part": "various",
                              "build": str(folder),
                              # builds before licences were recorded: unknown, so publish asks for --license
                              "license": info.get("license") or "unknown"})


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="medagg", open=open_medagg, modality="various", body_part="various",
        license="unknown",  # a build records the most restrictive of its sources' licences (manifest.json)
        docs="docs/datasets/medagg.md",
        description="the aggregated medical pretraining dataset built by `medzoo data build medagg`; "
                    "medagg:modality or medagg:body_part for coarse labels",
        takes_arg=True, arg_required=False, arg_help="fine|modality|body_part",
        recipe=recipe(epochs=15, batch_size=64, lr=5e-4, weight_decay=0.05, warmup_epochs=1, augment="strong",
                      balanced_sampling=True, patience=4, freeze="full",
                      preprocess={"size": 224, "fit": "stretch"})))


@hookimpl
def register_commands(cli):
    group = data_group(cli)
    if "build" not in group.commands:
        @group.group("build")
        def build():
            """Build an aggregated dataset from registered ones."""
    build_group = group.commands["build"]

    @build_group.command("medagg")
    @click.option("--from", "sources", required=True,
                  help="Datasets to aggregate, comma-separated, each NAME or NAME=DATA_ROOT; "
                       "'medmnist+' = every single-label MedMNIST+ 224 dataset.")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the build to.")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--size", default=224, show_default=True, help="Side of the stored square images.")
    @click.option("--channels", default=3, type=click.Choice(["1", "3"]), show_default=True)
    @click.option("--per-class-cap", type=int, help="Most training images per source class.")
    @click.option("--per-source-cap", type=int, help="Most training images per source, shared fairly by its classes.")
    @click.option("--min-per-class", default=0, show_default=True,
                  help="Oversample (with augmentation) training classes that have fewer images.")
    @click.option("--label", default="fine", type=click.Choice(["fine", "modality", "body_part"]), show_default=True,
                  help="Task label: namespaced source/class, or coarse modality or body part.")
    @click.option("--min-size", default=24, show_default=True, help="Drop images whose shorter side is smaller.")
    @click.option("--min-std", default=2.0, show_default=True, help="Drop near-constant images (grey std, 0-255).")
    @click.option("--hash-distance", default=4, show_default=True,
                  help="Perceptual-hash distance counted as a near duplicate (-1: only exact duplicates).")
    @click.option("--skip-bad", is_flag=True,
                  help="Skip unreadable images and bad rows, listing them in the datasheet.")
    def medagg(sources, out, seed, size, channels, per_class_cap, per_source_cap, min_per_class, label, min_size,
               min_std, hash_distance, skip_bad):
        """Aggregate datasets into medagg: manifest.csv, images.npy, datasheet.md/.json/.png in OUT."""
        from .medagg_build import BuildConfig, build_medagg, parse_sources

        cfg = BuildConfig(parse_sources(sources), Path(out), seed=seed, size=size, channels=int(channels),
                          per_class_cap=per_class_cap, per_source_cap=per_source_cap, min_per_class=min_per_class,
                          label=label, min_size=min_size, min_std=min_std, hash_distance=hash_distance,
                          skip_bad=skip_bad)
        sheet = build_medagg(cfg)
        click.echo(f"medagg: {sheet['images']} images ({sheet['oversampled_copies']} oversampled copies) from "
                   f"{len(sheet['by_source'])} sources, {len(sheet['by_class'])} classes -> {out}")
        for why, n in sheet["dropped_by_reason"].items():
            click.echo(f"  dropped {n} {why}")
        for problem in sheet["skipped_bad_files"]:
            click.echo(f"  skipped {problem}")
        click.echo(f"  datasheet: {Path(out) / 'datasheet.md'}")
