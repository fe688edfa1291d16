"""Building medagg: several registered datasets aggregated into one classification dataset for stage-2
(medical) pretraining — diverse in modality and body part, balanced by caps and oversampling, filtered for
quality and duplicates, with a manifest and a datasheet. The images are materialised at one size into
``images.npy`` (memory-mapped by the ``medagg`` dataset), so training needs none of the sources' roots.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medzoo.plugin import (
    HASH_DTYPE,
    DataSource,
    HashIndex,
    MedzooError,
    PreprocessConfig,
    Record,
    clean_stale_tmp,
    exact_hash,
    fit_pair,
    grey8,
    license_id,
    most_restrictive,
    open_dataset,
    phash,
    swap_dir,
    tmp_folder,
    to_channels,
    truncate_npy,
)

log = logging.getLogger("medzoo.medagg")

LABELS = ("fine", "modality", "body_part")
MANIFEST_COLUMNS = ("ref", "source", "origin", "modality", "body_part", "label", "patient", "split", "copy")
# `--from medmnist+`: every single-label 2D MedMNIST+ dataset at 224 px (chestmnist is multi-label).
MEDMNIST_PLUS = tuple(f"medmnist:{f}_224" for f in (
    "pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist", "bloodmnist",
    "tissuemnist", "organamnist", "organcmnist", "organsmnist"))
# Test first, then val, then train: a duplicate pair across splits loses its training copy, so held-out
# sets stay intact and training never sees a held-out image.
SPLIT_ORDER = ("test", "val", "train")


@dataclass
class BuildConfig:
    sources: list[tuple[str, str | None]]  # (dataset name, data root or None)
    out: Path
    seed: int = 0
    size: int = 224
    channels: int = 3
    per_class_cap: int | None = None  # training images per (source, class)
    per_source_cap: int | None = None  # training images per source, shared fairly among its classes
    min_per_class: int = 0  # oversample training classes (of the task label) below this, with augmentation
    label: str = "fine"  # fine (namespaced source/class) | modality | body_part
    min_size: int = 24  # shorter side in pixels
    min_std: float = 2.0  # grey-level standard deviation (0..255) below which an image is blank
    hash_distance: int = 4  # perceptual-hash Hamming distance counted as a near duplicate; -1: off
    skip_bad: bool = False


def parse_sources(text: str) -> list[tuple[str, str | None]]:
    """``chest_xray=/data/cxr,medmnist:pathmnist_224,medmnist+`` → [(name, root)]."""
    out: list[tuple[str, str | None]] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, root = item.partition("=")
        if name == "medmnist+":
            out += [(n, root or None) for n in MEDMNIST_PLUS]
        else:
            out.append((name, root or None))
    if not out:
        raise MedzooError("--from names no source; give registered datasets, "
                          "e.g. --from chest_xray,medmnist:pathmnist_224")
    return out


def waterfill(available: dict[str, int], class_cap: int | None, total_cap: int | None) -> dict[str, int]:
    """Per-class quotas: each class at most ``class_cap``, all at most ``total_cap``, shared max-min fairly
    (small classes keep everything, the large ones are cut to a common level)."""
    q = {c: min(n, class_cap) if class_cap else n for c, n in available.items()}
    if not total_cap or sum(q.values()) <= total_cap:
        return q
    out, left = {}, total_cap
    todo = sorted(q, key=lambda c: (q[c], c))
    while todo and q[todo[0]] <= left // len(todo):
        c = todo.pop(0)
        out[c], left = q[c], left - q[c]
    for i, c in enumerate(sorted(todo)):  # the remainder goes to the first classes by name: deterministic
        out[c] = left // len(todo) + (1 if i < left % len(todo) else 0)
    return out


@dataclass
class _Source:
    key: str
    name: str
    data: DataSource
    modality: str
    body_part: str
    license: str
    kept: Counter = field(default_factory=Counter)


def _source_key(name: str, taken: set[str]) -> str:
    base, _, arg = name.partition(":")
    key = (Path(arg).stem if arg.endswith(".csv") else Path(arg.rstrip("/")).name) if arg else base
    key = "".join(c if c.isalnum() or c in "-_." else "_" for c in key) or base
    out, i = key, 2
    while out in taken:
        out, i = f"{key}_{i}", i + 1
    taken.add(out)
    return out


def _open_sources(cfg: BuildConfig) -> list[_Source]:
    from medzoo.plugin import registry

    out, taken = [], set()
    for name, root in cfg.sources:
        spec = registry().resolve("datasets", name).spec
        data = open_dataset(name, root, skip_bad=cfg.skip_bad)
        if data.task != "classification" and cfg.label == "fine":
            raise MedzooError(f"medagg: source '{name}' is a {data.task} dataset: it has no single class per image; "
                              "leave it out or build with --label modality|body_part")
        out.append(_Source(_source_key(name, taken), name, data,
                           data.meta.get("modality") or spec.modality or "unknown",
                           data.meta.get("body_part") or spec.body_part or "unknown",
                           license_id(data.meta.get("license") or spec.license)))
    return out


def _fine(src: _Source, r: Record) -> str:
    return f"{src.key}/{src.data.classes[r.label]}" if src.data.task == "classification" else src.key


def _plan(src: _Source, cfg: BuildConfig) -> list[tuple[str, str, list[Record], int]]:
    """(split, class, shuffled records, quota) groups of one source in processing order."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in src.data.records:
        groups[(r.split, _fine(src, r))].append(r)
    train = {c: len(rs) for (s, c), rs in groups.items() if s == "train"}
    quota = waterfill(train, cfg.per_class_cap, cfg.per_source_cap)
    plan = []
    for split in SPLIT_ORDER:
        for (s, c), rs in sorted(groups.items()):
            if s != split:
                continue
            rs = sorted(rs, key=lambda r: r.id)
            random.Random(f"{cfg.seed}|{src.key}|{s}|{c}").shuffle(rs)
            if split == "train":
                n = quota[c]
            else:  # held-out splits keep the fraction of the class that training keeps
                n = round(len(rs) * quota.get(c, len(rs)) / max(1, train.get(c, len(rs))))
            plan.append((split, c, rs, n))
    return plan


def build_medagg(cfg: BuildConfig) -> dict:
    """Build into a temporary folder beside ``cfg.out`` and rename it into place only when complete:
    a failed build leaves an existing one untouched. Returns the datasheet."""
    from tqdm import tqdm

    if cfg.label not in LABELS:
        raise MedzooError(f"--label must be one of {', '.join(LABELS)}, not '{cfg.label}'")
    out = Path(cfg.out).expanduser()
    if out.exists() and any(out.iterdir()) and not (out / "manifest.csv").is_file():
        raise MedzooError(f"{out} exists and is not a medagg build; choose an empty or new --out folder")
    sources = _open_sources(cfg)
    pcfg = PreprocessConfig(size=cfg.size, channels=cfg.channels, fit="pad")
    plans = [(src, _plan(src, cfg)) for src in sources]
    capacity = sum(n for _, plan in plans for *_, n in plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out.parent, prefix=f".{out.name}.tmp-")  # only this build's own, of dead processes
    tmp = tmp_folder(out)
    tmp.mkdir()
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(max(capacity, 1), cfg.size, cfg.size, cfg.channels))
        rows: list[dict] = []
        dropped: Counter = Counter()
        bad = [f"{src.name}: {p}" for src in sources for p in src.data.meta.get("skipped", [])]
        for src in sources:
            if src.data.meta.get("skipped"):
                dropped[(src.key, "bad row or file")] += len(src.data.meta["skipped"])
        exact: dict[int, int] = {}
        n = 0
        near = HashIndex(cfg.hash_distance) if cfg.hash_distance >= 0 else None
        hashes: list[tuple[int, int]] = []
        # every source's test images first, then val, then train: of a duplicate pair across sources the
        # training copy is the one dropped, whatever the --from order
        groups = [(src, g) for split in SPLIT_ORDER for src, plan in plans for g in plan if g[0] == split]
        for src, (split, cls, records, quota) in tqdm(groups, desc="medagg", unit="group", leave=False,
                                                      disable=None):
            taken = 0
            for r in records:
                if taken >= quota:
                    break
                try:
                    img = src.data.read(r)
                except MedzooError as exc:
                    if not cfg.skip_bad:
                        raise
                    bad.append(f"{src.name}:{r.id}: {exc}")
                    dropped[(src.key, "unreadable")] += 1
                    continue
                reason, digests = _quality(img, cfg, exact, near)
                if reason:
                    dropped[(src.key, reason)] += 1
                    continue
                images[n] = to_channels(fit_pair(img, None, pcfg)[0], cfg.channels).reshape(images.shape[1:])
                rows.append({"ref": f"images.npy#{n}", "source": src.key, "origin": f"{src.name}#{r.id}",
                             "modality": src.modality, "body_part": src.body_part, "label": cls,
                             "patient": f"{src.key}/{r.patient}" if r.patient else "", "split": split,
                             "copy": 0})
                hashes.append(digests)
                n, taken = n + 1, taken + 1
                src.kept[split] += 1
        if not rows:
            raise MedzooError("medagg: no image passed the quality filter; check the sources and the --min-* options")
        rows += _oversample(rows, cfg)
        del images
        if n < max(capacity, 1):
            truncate_npy(tmp / "images.npy", n)
        classes = sorted({x[_column(cfg.label)] for x in rows})
        _write_manifest(tmp, rows)
        # the originals' hashes, row-aligned with images.npy: chains check their held-out images against them
        np.save(tmp / "hashes.npy", np.array(hashes, dtype=HASH_DTYPE).reshape(-1, 2))
        (tmp / "manifest.json").write_text(json.dumps({
            "format": 1, "task_label": _column(cfg.label), "classes": classes, "size": cfg.size,
            "channels": cfg.channels, "config": _config_dict(cfg),
            # the build inherits the most restrictive of its sources' licences (medzoo.licenses)
            "licenses": {src.key: src.license for src in sources},
            "license": most_restrictive([src.license for src in sources])}, indent=2) + "\n")
        from .medagg_sheet import write_datasheet

        sheet = write_datasheet(tmp, rows, sources, dropped, bad, cfg)
        swap_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sheet


def _quality(img: np.ndarray, cfg: BuildConfig, exact: dict[int, int],
             near: HashIndex | None) -> tuple[str | None, tuple[int, int]]:
    """Why the image is dropped (or None), and its (exact, perceptual) hashes."""
    if min(img.shape[:2]) < cfg.min_size:
        return "too small", (0, 0)
    grey = grey8(img)
    if float(grey.std()) < cfg.min_std:
        return "blank", (0, 0)
    digest = exact_hash(grey)
    if digest in exact:
        return "exact duplicate", (0, 0)
    h = phash(grey)
    if near is not None:
        if near.near(h) is not None:
            return "near duplicate", (0, 0)
        near.add(h)
    exact[digest] = 1
    return None, (digest, h)


def _column(label: str) -> str:
    return "label" if label == "fine" else label


def _oversample(rows: list[dict], cfg: BuildConfig) -> list[dict]:
    """Copies of training images of classes below ``min_per_class``; copy k>0 is read with a
    deterministic augmentation (see medagg.augment_copy), so the copies are not identical."""
    if not cfg.min_per_class:
        return []
    col = _column(cfg.label)
    by_class: dict[str, list[dict]] = defaultdict(list)
    for x in rows:
        if x["split"] == "train":
            by_class[x[col]].append(x)
    extra = []
    for cls in sorted(by_class):
        have = by_class[cls]
        for i in range(max(0, cfg.min_per_class - len(have))):
            extra.append({**have[i % len(have)], "copy": 1 + i // len(have)})
    return extra


def _write_manifest(folder: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    (folder / "manifest.csv").write_text(buf.getvalue())


def _config_dict(cfg: BuildConfig) -> dict:
    d = asdict(cfg)
    del d["out"]  # where it was written is not part of what was built (two builds compare equal)
    d["sources"] = [name for name, _ in cfg.sources]  # roots are machine-specific: not part of the build's identity
    return d
