"""The contract between dataset plugins and the trainer, plus what every dataset needs:
where its files are, patient-level splits with a leakage check, a fingerprint, and tensors.

A dataset plugin's ``open(root=, arg=)`` returns a :class:`DataSource`: a list of :class:`Record`
rows (one per image) and a ``read`` that turns a row into pixels. Everything after that —
channel adaptation, resizing, augmentation, normalisation — is the same for every dataset and lives here.
"""

from __future__ import annotations

import logging
import numbers
import os
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import identity
from .registry import FIRST_PARTY, MedzooError, registry
from .resize import FitConfig, apply_steps, fit_pair

log = logging.getLogger("medzoo.data")

SPLITS = ("train", "val", "test")
REPO_URL = "https://github.com/medzoo/medzoo/blob/main/"
DOCS_URL = REPO_URL + "docs/datasets/{name}.md"


@dataclass
class Record:
    """One image of a dataset."""

    id: str  # stable and unique within the source (usually the path relative to the root)
    label: Any  # class index; a multi-hot list for multilabel; None for segmentation
    split: str  # train | val | test
    patient: str | None = None  # patient / slide id: splits never share one
    mask: Any = None  # segmentation: what ``DataSource.read_mask`` needs
    meta: dict[str, Any] = field(default_factory=dict)
    files: Sequence[str | Path] = ()  # the files its pixels (and mask) are read from: the core hashes them


class DataSource:
    """What a dataset plugin hands the trainer. Subclass and implement ``read`` (and ``read_mask``).

    Identity: declare where the pixels come from — ``Record.files`` per image and/or ``source_files``
    (files every record is read from: an npz, an image store and its manifest) — or, for pixels drawn by
    code, ``generated`` (the generator, its version and seed). The core hashes what is declared
    (``medzoo.identity``); a source that declares nothing is identified by reading all its pixels.
    """

    def __init__(self, name: str, task: str, classes: Sequence[str], records: list[Record], *,
                 ignore_index: int | None = None, meta: dict[str, Any] | None = None,
                 source_files: Sequence[str | Path] = (), generated: str | None = None):
        self.name = name
        self.task = task
        self.classes = list(classes)
        self.records = records
        self.ignore_index = ignore_index  # segmentation: mask value that is not a class (loss and metrics skip it)
        self.meta = meta or {}
        self.source_files = list(source_files)
        self.generated = generated
        self._content: dict | None = None

    def read(self, record: Record) -> np.ndarray:
        """Pixels as H×W (grey) or H×W×3 (RGB): uint8, uint16 or float32 in [0, 1]."""
        raise NotImplementedError

    def read_mask(self, record: Record) -> np.ndarray:
        """Segmentation: H×W integer class codes aligned with ``read(record)``."""
        raise NotImplementedError(f"dataset '{self.name}' has no masks")

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    def prepare(self, record: Record, cfg: FitConfig) -> tuple[np.ndarray, np.ndarray | None]:
        """The deterministic preprocessing of one record for the cache (``medzoo.cache.PreprocessConfig``):
        its named steps and CLAHE (``domain_steps``), then image (and mask) fitted to ``cfg.size``.
        ``medzoo predict`` runs new files through this same method."""
        mask = self.read_mask(record) if self.task == "segmentation" else None
        img, mask = self.domain_steps(self.read(record), mask, cfg)
        return fit_pair(img, mask, cfg, channels=self.meta.get("channels"), pad_mask=self.ignore_index or 0)

    def domain_steps(self, img: np.ndarray, mask: np.ndarray | None, cfg) -> tuple[np.ndarray, np.ndarray | None]:
        """The config's named steps (registered by plugins: breast masking, canonical side, CLAHE) in order."""
        return apply_steps(img, mask, cfg)

    def in_memory(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """``(images, masks)`` when the pixels are arrays already in memory (hashed whole for the identity,
        instead of read image by image); None otherwise."""
        return None

    def files(self, record: Record) -> Sequence[str | Path]:
        """The files ``record``'s pixels (and mask) are read from; by default ``record.files``."""
        return record.files

    def fingerprint(self) -> str:
        """sha256 of what the data *is*: records (ids, labels, splits, patients), classes, rows left out by
        --skip-bad and the content of every declared file — not where it lives. Files are hashed once per
        source (and, across runs, only when their size, mtime or inode changed)."""
        return identity.fingerprint(self, self.content())

    def content(self) -> dict:
        """The digests of every declared file (what ``fingerprint`` and the pixel identity are computed
        from), hashed on first use and kept for this source's life; ``verify`` refreshes them."""
        if self._content is None:
            self._content = identity.content(self)
        return self._content

    def verify(self) -> list[str]:
        """Re-hash every declared file whatever its cached stat says; returns the files whose bytes
        changed under an unchanged size and mtime (the next fingerprint, here and in later runs, uses the
        new digests)."""
        changed: list[str] = []
        self._content = identity.content(self, verify=True, changed=changed)
        return changed


class ArraySource(DataSource):
    """A data source whose pixels are in memory (synthetic data, MedMNIST npz), indexable by
    ``Record.meta['index']``.

    ``images`` may instead be a picklable function returning ``(images, masks)``, called on the first read:
    opening the source then draws nothing, and its records and fingerprint are all that deciding to reuse
    a stored stage needs.
    """

    def __init__(self, name, task, classes, records, images, masks=None, **kw):
        super().__init__(name, task, classes, records, **kw)
        self._draw = images if callable(images) else None
        self._images, self._masks = (None, None) if self._draw else (images, masks)

    def _pixels(self):
        if self._draw is not None:  # two threads may both draw: deterministic, so the result is the same
            self._images, self._masks = self._draw()
            self._draw = None
        return self._images, self._masks

    def in_memory(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        # a source drawn on first read is identified by what it declares (``generated``), not drawn for it
        if self._draw is not None or not isinstance(self._images, np.ndarray):
            return None
        return self._images, self._masks if isinstance(self._masks, np.ndarray) else None

    @property
    def images(self):
        return self._pixels()[0]

    @property
    def masks(self):
        return self._pixels()[1]

    def read(self, record):
        return self.images[record.meta["index"]]

    def read_mask(self, record):
        if self.masks is None:
            return super().read_mask(record)
        return self.masks[record.meta["index"]]


# -- bad input ----------------------------------------------------------------------------------

_SKIPPED: ContextVar[list[str] | None] = ContextVar("medzoo_skipped", default=None)


@contextmanager
def skipping_bad(enabled: bool = True):
    """Inside, :func:`bad_input` records the problem and returns instead of raising (``--skip-bad``).
    Yields the list of skipped problems."""
    token = _SKIPPED.set([] if enabled else None)
    try:
        yield _SKIPPED.get()
    finally:
        _SKIPPED.reset(token)


def skipping() -> bool:
    """Whether bad input is being left out (inside ``skipping_bad(True)``)."""
    return _SKIPPED.get() is not None


def bad_input(where: str | Path, problem: str, fix: str = "fix or remove it, or pass --skip-bad") -> None:
    """A bad file or row: a one-line error naming it and the problem, or, under ``skipping_bad``, a
    warning and a note in the skipped list (the caller then leaves the row out)."""
    skipped = _SKIPPED.get()
    head, sep, tail = problem.rpartition("; ")
    if sep and "--skip-bad" in tail:  # a reader's error that names the file and its fix already
        if skipped is None:
            raise MedzooError(problem)
        where, problem = "", head
    if skipped is None:
        raise MedzooError(f"{where}: {problem}; {fix}")
    skipped.append(f"{where}: {problem}" if where else problem)
    log.warning("skipped %s", skipped[-1])


# -- where the files are ------------------------------------------------------------------------

PARENT_ROOT = ""  # the key of a bare ``--data-root PATH`` (a folder holding one folder per dataset)


def root_for(roots: Mapping[str, str] | str | Path | None, name: str) -> str | None:
    """The folder of dataset ``name`` (``medmnist:pneumoniamnist``) from ``--data-root`` values, which mean
    the same in every command: ``NAME=PATH`` is that dataset's folder (matched on the full name, then on
    the base name before ':'), a bare ``PATH`` holds one folder per dataset. A plain path (Python API) is
    the dataset's folder."""
    if roots is None or isinstance(roots, (str, Path)):
        return None if roots is None else str(roots)
    base = name.partition(":")[0]
    for key in (name, base):
        if roots.get(key):
            return roots[key]
    if roots.get(PARENT_ROOT):
        return str(Path(roots[PARENT_ROOT]) / base)
    return None


DATA_ROOT_HELP = ("DATASET=PATH: that dataset's folder; a bare PATH: a folder holding one folder per dataset "
                  "(like MEDZOO_DATA). Repeatable.")


def parse_data_roots(items: Sequence[str]) -> dict[str, str]:
    """The CLI's ``--data-root [DATASET=]PATH`` values, for :func:`root_for`."""
    roots = {}
    for item in items:
        name, eq, path = item.partition("=")
        if eq and (not name.strip() or not path.strip()):
            raise MedzooError(f"bad --data-root '{item}': write DATASET=PATH or a bare PATH")
        roots[name.strip() if eq else PARENT_ROOT] = path if eq else item
    return roots


def data_root(name: str, root: str | Path | None = None, *, must_exist: bool = True) -> Path:
    """``root`` if given, else ``$MEDZOO_DATA_<NAME>``, else ``$MEDZOO_DATA/<name>``."""
    env_name = "MEDZOO_DATA_" + "".join(c if c.isalnum() else "_" for c in name).upper()
    tried = []
    for candidate, how in ((root, "--data-root"), (os.environ.get(env_name), env_name),
                           (Path(os.environ["MEDZOO_DATA"]) / name if os.environ.get("MEDZOO_DATA") else None,
                            "MEDZOO_DATA")):
        if candidate is None:
            continue
        path = Path(candidate).expanduser()
        if path.exists() or not must_exist:
            return path
        tried.append(f"{path} ({how})")
    where = ", ".join(tried) if tried else f"nowhere: pass --data-root or set {env_name} or MEDZOO_DATA"
    raise MedzooError(f"no data for '{name}': looked in {where}; how to get it: {docs_link(name)}")


def docs_link(name: str) -> str:
    """Where the user reads how to get dataset ``name``: its ``DatasetSpec.docs`` (a URL as is; a path of a
    first-party plugin on medzoo's GitHub), or the plugin that registered it — never medzoo's pages for a
    dataset medzoo does not document."""
    reg = registry()
    spec = reg.entries["datasets"].get(name.partition(":")[0])
    if spec is None:
        return DOCS_URL.format(name=name.partition(":")[0])
    info = reg.plugins.get(spec.plugin)
    package = info.package if info else "?"
    if "://" in spec.docs:
        return spec.docs
    if package == FIRST_PARTY:
        return REPO_URL + spec.docs if spec.docs else DOCS_URL.format(name=spec.name)
    if spec.docs:
        return f"{spec.docs} (plugin '{spec.plugin}', package {package})"
    return f"the documentation of plugin '{spec.plugin}' (package {package}), which gives no DatasetSpec.docs"


# -- splits -------------------------------------------------------------------------------------

def assign_splits(records: list[Record], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0, only: Sequence[str] | None = None) -> None:
    """Give each record a split by its patient (records without a patient id count as their own patient).

    ``only`` restricts which records are (re)assigned, e.g. just the official training set into train/val.
    """
    pool = [r for r in records if only is None or r.split in only]
    patients = sorted({r.patient or f"image:{r.id}" for r in pool})
    random.Random(seed).shuffle(patients)
    names = [s for s, f in zip(SPLITS, fractions) if f > 0]
    weights = [f for f in fractions if f > 0]
    cut, acc, bounds = len(patients), 0.0, []
    for w in weights[:-1]:
        acc += w / sum(weights)
        bounds.append(round(acc * cut))
    which = {}
    for i, p in enumerate(patients):
        which[p] = names[sum(i >= b for b in bounds)]
    for r in pool:
        r.split = which[r.patient or f"image:{r.id}"]


def carve_val_split(source: DataSource) -> None:
    """A validation set for a dataset that has none: 15% of training, by patient, the same for every seed
    (the trainer picks best epochs on it; evaluation of --split val scores the same images)."""
    assign_splits(source.records, (0.85, 0.15, 0.0), seed=0, only=["train"])


def split_official(records: list[Record], val_fraction: float = 0.1, seed: int = 0) -> int:
    """Keep a dataset's official test set, and make it leak-free: a patient with any image in the official
    test set has all their images there (official splits of e.g. CBIS-DDSM share patients). The rest is
    split into train/val by patient. Returns how many images moved to test."""
    test_patients = {r.patient for r in records if r.split == "test" and r.patient}
    moved = 0
    for r in records:
        if r.split != "test" and r.patient in test_patients:
            r.split, moved = "test", moved + 1
        elif r.split != "test":
            r.split = "train"
    if val_fraction > 0:
        assign_splits(records, (1 - val_fraction, val_fraction, 0.0), seed=seed, only=("train",))
    return moved


def check_leakage(records: list[Record], name: str = "dataset") -> None:
    """Fail loudly if one patient has images in two splits."""
    seen: dict[str, set[str]] = {}
    for r in records:
        if r.patient:
            seen.setdefault(r.patient, set()).add(r.split)
    leaks = sorted(p for p, s in seen.items() if len(s) > 1)
    if leaks:
        raise MedzooError(f"{name}: patient-level leakage: {len(leaks)} patient(s) appear in more than one split "
                          f"(e.g. {leaks[0]} in {sorted(seen[leaks[0]])}); split by patient, not by image")


def check_labels(source: DataSource, name: str) -> None:
    """``Record.label`` is a class index (classification) or one 0/1 per class (multilabel): a plugin handing
    over the class name instead fails here, naming the record, not deep in training with a TypeError."""
    n = len(source.classes)
    fix = (f"a dataset plugin gives Record(label=classes.index(name)), classes being "
           f"{', '.join(map(repr, source.classes[:5]))}{', …' if n > 5 else ''}")
    for r in source.records:
        if source.task == "classification":
            if not isinstance(r.label, numbers.Integral) or isinstance(r.label, bool):
                raise MedzooError(f"dataset '{name}': record '{r.id}' has label {r.label!r}, not a class index; {fix}")
            if not 0 <= int(r.label) < n:
                raise MedzooError(f"dataset '{name}': record '{r.id}' has label {r.label}, outside 0..{n - 1} "
                                  f"for its {n} classes; {fix}")
        elif source.task == "multilabel":
            try:
                ok = len(r.label) == n and all(v in (0, 1) for v in r.label)
            except TypeError:
                ok = False
            if not ok:
                raise MedzooError(f"dataset '{name}': record '{r.id}' has label {r.label!r}; a multilabel record's "
                                  f"label is one 0/1 per class ({n}: {', '.join(source.classes[:5])}"
                                  f"{', …' if n > 5 else ''})")


def check_trainable(source: DataSource, name: str) -> None:
    """A classifier needs two classes among its training images: a one-class dataset would train a whole
    epoch and then fail in validation (an aggregated set like medagg may still take it as a source)."""
    if source.task != "classification":
        return
    present = sorted({r.label for r in source.split("train")})
    if len(present) < 2:
        only = f"only '{source.classes[present[0]]}'" if present else "none"
        raise MedzooError(f"dataset '{name}' has one class in its training images ({only} of "
                          f"{', '.join(source.classes) or 'no classes'}); a classifier needs at least two: add "
                          "images of another class, or check the labels")


def open_dataset(name: str, root: str | Path | None = None, *, skip_bad: bool = False,
                 trainable: bool = False) -> DataSource:
    """Open a registered dataset by name (``chest_xray``, ``imagefolder:/data/x``) and validate it; its raw
    images (``medzoo.cache.open_dataset`` takes ``preprocess=`` too and returns a cached source).

    ``skip_bad``: leave out bad rows and files instead of failing (listed in ``source.meta['skipped']``).
    ``trainable``: also refuse a classification dataset with one class (:func:`check_trainable`), before caching.
    """
    ref = registry().resolve("datasets", name)
    with skipping_bad(skip_bad) as skipped:
        source = ref.spec.open(root=root, arg=ref.arg)
    if skipped:
        source.meta["skipped"] = source.meta.get("skipped", []) + skipped
    source.meta.setdefault("modality", ref.spec.modality)
    source.meta.setdefault("body_part", ref.spec.body_part)
    source.meta.setdefault("license", ref.spec.license)
    if not source.classes and source.task != "segmentation":
        raise MedzooError(f"dataset '{name}' has no classes; check its labels")
    check_labels(source, name)
    counts = Counter(r.split for r in source.records)
    if not counts.get("train"):
        raise MedzooError(f"dataset '{name}' has no training images ({dict(counts) or 'no images at all'}); "
                          "check the data root and its layout")
    check_leakage(source.records, name)
    if trainable:
        check_trainable(source, name)
    return source


# -- tensors ------------------------------------------------------------------------------------

def to_tensor(img: np.ndarray, in_chans: int) -> torch.Tensor:
    """H×W or H×W×C pixels → C×H×W float32 in [0, 1] with ``in_chans`` channels."""
    if not img.flags.writeable:  # a row of a memory-mapped cache: torch refuses to wrap read-only memory
        img = np.array(img)
    if img.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255)
    elif img.dtype == np.uint16:
        x = torch.from_numpy(img.astype(np.float32)).div_(65535)
    else:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] == 4:  # RGBA: alpha carries no anatomy
        x = x[:3]
    if x.shape[0] != in_chans:
        x = x.mean(0, keepdim=True) if in_chans == 1 else x[:1].expand(in_chans, -1, -1)
    return x.contiguous()


@dataclass(frozen=True)
class TransformConfig:
    image_size: int = 224
    augment: str = "light"  # a preset (none | light | medium | strong), optionally with overrides: "strong,flip=0"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    in_chans: int = 3


# What each augmentation preset does. degrees: rotation; translate: fraction of the side; scale: isotropic
# zoom; stretch: anisotropic scale (one axis by 1±s, the other by its inverse); blur/sharpen: probability;
# brightness/contrast/gamma: intensity jitter amplitude.
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": dict(flip=1, degrees=7, translate=0.03, scale=0.05),
    "medium": dict(flip=1, degrees=10, translate=0.05, scale=0.1, stretch=0.08, brightness=0.1, contrast=0.1),
    "strong": dict(flip=1, degrees=15, translate=0.08, scale=0.15, stretch=0.15, blur=0.3, sharpen=0.3,
                   brightness=0.2, contrast=0.2, gamma=0.2),
}
AUGMENT_KEYS = ("flip", "vflip", "degrees", "translate", "scale", "stretch", "blur", "sharpen",
                "brightness", "contrast", "gamma")


def augment_params(augment: str) -> dict[str, float]:
    """``"strong,flip=0,stretch=0.3"`` → the preset's parameters with the overrides applied."""
    from .registry import did_you_mean

    preset, *overrides = [p.strip() for p in (augment or "none").split(",")]
    if preset not in AUGMENT_PRESETS:
        raise MedzooError(f"unknown augmentation preset '{preset}'{did_you_mean(preset, list(AUGMENT_PRESETS))}; "
                          f"use one of {', '.join(AUGMENT_PRESETS)}")
    params = dict(AUGMENT_PRESETS[preset])
    for item in filter(None, overrides):
        key, eq, value = item.partition("=")
        if key not in AUGMENT_KEYS or not eq:
            raise MedzooError(f"bad augmentation option '{item}'{did_you_mean(key, list(AUGMENT_KEYS))}; "
                              f"write PRESET,key=value with keys {', '.join(AUGMENT_KEYS)}")
        try:
            params[key] = float(value)
        except ValueError:
            raise MedzooError(f"augmentation option '{item}' needs a number") from None
    return params


def _augment_steps(a: dict[str, float], size: list[int]) -> list:
    from torchvision.transforms import v2

    from .augment import RandomGamma, RandomStretch

    steps: list = []
    if a.get("flip"):
        steps.append(v2.RandomHorizontalFlip())
    if a.get("vflip"):
        steps.append(v2.RandomVerticalFlip())
    if a.get("stretch"):
        steps.append(RandomStretch(a["stretch"], size))
    if a.get("degrees") or a.get("translate") or a.get("scale"):
        t, z = a.get("translate", 0.0), a.get("scale", 0.0)
        steps.append(v2.RandomAffine(degrees=a.get("degrees", 0.0), translate=(t, t) if t else None,
                                     scale=(1 - z, 1 + z) if z else None))
    if a.get("blur"):
        steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=a["blur"]))
    if a.get("sharpen"):
        steps.append(v2.RandomAdjustSharpness(2.0, p=a["sharpen"]))
    if a.get("brightness") or a.get("contrast"):
        steps.append(v2.ColorJitter(brightness=a.get("brightness", 0.0), contrast=a.get("contrast", 0.0)))
    if a.get("gamma"):
        steps.append(RandomGamma(a["gamma"]))
    return steps


def build_transform(cfg: TransformConfig, train: bool) -> Callable:
    """A joint image(+mask) transform: resize, augmentation for training, normalisation.

    torchvision's v2 transforms move masks with the image (nearest-neighbour for the mask); intensity
    steps leave masks alone.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    size = [cfg.image_size, cfg.image_size]
    params = augment_params(cfg.augment)  # validated even for eval so a typo fails before training
    steps: list = [v2.Resize(size, antialias=True)]
    if train:
        steps += _augment_steps(params, size)
    mean = list(cfg.mean)[: cfg.in_chans] if cfg.in_chans <= len(cfg.mean) else [cfg.mean[0]] * cfg.in_chans
    std = list(cfg.std)[: cfg.in_chans] if cfg.in_chans <= len(cfg.std) else [cfg.std[0]] * cfg.in_chans
    if cfg.in_chans == 1:  # a grey image adapted from RGB weights: use the mean statistics
        mean, std = [float(np.mean(cfg.mean))], [float(np.mean(cfg.std))]
    pipeline = v2.Compose(steps)
    normalize = v2.Normalize(mean, std)

    def apply(image: torch.Tensor, mask: torch.Tensor | None = None):
        if mask is None:
            return normalize(pipeline(tv_tensors.Image(image))).as_subclass(torch.Tensor)
        img, msk = pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return normalize(img).as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)

    return apply


class TorchDataset(torch.utils.data.Dataset):
    """One split of a DataSource as ``(image, target)`` pairs for a DataLoader."""

    def __init__(self, source: DataSource, split: str, transform: Callable, in_chans: int):
        self.source = source
        self.records = source.split(split)
        self.transform = transform
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        image = to_tensor(self.source.read(r), self.in_chans)
        if self.source.task == "segmentation":
            mask = torch.from_numpy(np.asarray(self.source.read_mask(r), dtype=np.int64))[None]
            image, mask = self.transform(image, mask)
            return image, mask[0]
        target = torch.tensor(r.label, dtype=torch.float32) if self.source.task == "multilabel" else int(r.label)
        return self.transform(image), target
