"""The preprocessed cache: the deterministic part of preprocessing (decode, window, mask, CLAHE, resize)
runs once per dataset and configuration into memory-mapped ``.npy`` files under ``$MEDZOO_HOME/cache``,
so later epochs and later stages pay only for augmentation.

A cache is keyed by the configuration, the dataset's fingerprint (its records and the content of their files,
``medzoo.identity``), whether bad files may be left out (--skip-bad) and the preprocessing code's version:
any change gives a new key, so a stale cache is never read. It is written into a temporary folder
``.<name>.tmp-<pid>-<random>`` and renamed into place when complete; the temporary folder of a build whose
process died (kill -9, power loss) is removed by the next build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import DataSource, Record, bad_input, log, skipping, skipping_bad
from .data import open_dataset as open_raw
from .registry import MedzooError, did_you_mean, registry
from .resize import FitConfig, step_refs
from .store import home as store_home
from .store import swap_dir as store_swap_dir

# Bump when any preprocessing step changes what it writes: old caches then miss instead of being reused.
CACHE_VERSION = 1
FITS = ("pad", "crop", "stretch")


@dataclass(frozen=True)
class PreprocessConfig:
    """The deterministic preprocessing stored in the cache: the named ``steps`` (registered by plugins,
    ``medzoo list steps``) in order, then CLAHE, then the fit to ``size``, channels and dtype."""

    size: int = 256  # side of the square cached image; train at a smaller image_size to leave room for crops
    fit: str = "pad"  # pad: keep the aspect and pad; crop: keep the aspect and centre-crop; stretch: ignore it
    channels: int | None = None  # 1 or 3; None: the dataset's own (grey datasets 1, RGB ones 3)
    dtype: str = "uint8"  # uint8 | uint16 (keeps 16-bit mammograms' depth)
    clahe: float = 0.0  # CLAHE clip limit (OpenCV), 0 = off; runs as the registered step 'clahe' after ``steps``
    steps: tuple[str, ...] = ()  # named steps, e.g. ("breast_mask", "flip_to:left"), run on the raw pixels

    def __post_init__(self):
        if self.fit not in FITS:
            raise MedzooError(f"preprocess fit '{self.fit}' is not one of {', '.join(FITS)}")
        if self.channels not in (None, 1, 3):
            raise MedzooError(f"preprocess channels must be 1 or 3, not {self.channels}")
        if self.dtype not in ("uint8", "uint16"):
            raise MedzooError(f"preprocess dtype must be uint8 or uint16, not {self.dtype}")
        if not 8 <= int(self.size) <= 8192:
            raise MedzooError(f"preprocess size {self.size} is out of range (8..8192)")
        if isinstance(self.steps, str) or not all(isinstance(s, str) for s in self.steps):
            raise MedzooError(f"preprocess steps must be a list of step names, not {self.steps!r}; "
                              "write a list of names (`medzoo list steps` shows them)")
        object.__setattr__(self, "steps", tuple(self.steps))
        step_refs(self)  # unknown names and bad arguments fail when the config is read, not mid-build

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PreprocessConfig:
        d = _legacy_steps(dict(d or {}))
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                raise MedzooError(f"unknown preprocess option '{key}'{did_you_mean(key, names)}; "
                                  f"options: {', '.join(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "steps": list(self.steps)}


def _legacy_steps(d: dict[str, Any]) -> dict[str, Any]:
    """Old lineages and recipes recorded some steps as config fields (``breast_mask: true``, ``flip_to: left``,
    named by the step's ``legacy_field``): the one place they become steps, in the order they always ran."""
    from .registry import registry

    legacy = []
    for spec in registry().entries["steps"].values():  # registration order: the order the fields' code ran in
        if spec.legacy_field and spec.legacy_field in d:
            value = d.pop(spec.legacy_field)
            if value is True:
                legacy.append(spec.name)
            elif isinstance(value, str) and value:
                legacy.append(f"{spec.name}:{value}")
            elif value not in (False, None, ""):
                raise MedzooError(f"preprocess option '{spec.legacy_field}' is {value!r}; write the step "
                                  f"'{spec.name}' in steps instead")
    if legacy:
        d["steps"] = [*legacy, *d.get("steps", ())]
    return d


def step_versions(cfg: PreprocessConfig) -> dict[str, int]:
    """Each step's code version, part of the cache key: a plugin that changes a step's output bumps it."""
    return {ref.spec.name: ref.spec.version for ref in step_refs(cfg)}


def cache_home() -> Path:
    return store_home() / "cache"


# -- the cache -----------------------------------------------------------------------------------

def open_dataset(name: str, root: str | Path | None = None, *, preprocess: Any = None,
                 skip_bad: bool = False, trainable: bool = False) -> DataSource:
    """``medzoo.data.open_dataset`` (open a registered dataset by name and validate it), then, when asked,
    preprocessed into the cache.

    ``preprocess``: None (or False) reads the raw images; a :class:`PreprocessConfig` (or a dict of its
    fields, or True for the dataset's recipe ``preprocess``) returns a :class:`CachedSource` whose images were
    preprocessed once into a memory-mapped cache under ``$MEDZOO_HOME/cache``.
    ``skip_bad``: leave out bad rows and files instead of failing (listed in ``source.meta['skipped']``).
    ``trainable``: also refuse a classification dataset with one class, before caching.
    """
    source = open_raw(name, root, skip_bad=skip_bad, trainable=trainable)
    if preprocess is None or preprocess is False:
        return source
    if preprocess is True:
        preprocess = registry().resolve("datasets", name).spec.recipe.get("preprocess", {})
    cfg = preprocess if isinstance(preprocess, PreprocessConfig) else PreprocessConfig.from_dict(preprocess)
    with skipping_bad(skip_bad):
        return CachedSource(source, cfg)


def cache_key(source: DataSource, cfg: PreprocessConfig, skip_bad: bool = False) -> str:
    # skip_bad is part of the key: a cache that left out unreadable files must never serve a run that
    # would have refused them, nor the reverse
    blob = json.dumps({"version": CACHE_VERSION, "config": cfg.to_dict(), "steps": step_versions(cfg),
                       "fingerprint": source.fingerprint(),
                       "skip_bad": bool(skip_bad), "reader": type(source).__qualname__,
                       "reader_version": getattr(source, "preprocess_version", 0)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# `.<name>.tmp-<pid>-<8 hex>`: the temporary folders medzoo's builds write (cache, medmnist unpack, medagg)
TMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


def tmp_folder(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_tmp(folder: Path, prefix: str = ".") -> list[Path]:
    """Remove the temporary build folders in ``folder`` (named by ``tmp_folder``, starting with ``prefix``)
    whose process is dead: what a killed build left. A live build's folder, and anything medzoo did not
    name, are left alone. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = TMP_PATTERN.match(entry.name)
        if not m or not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        log.info("removed %s, left by a build (pid %d) that did not finish", entry.path, pid)
        removed.append(Path(entry.path))
    return removed


def read_settings(source: DataSource) -> dict[str, Any]:
    """How ``source`` reads its files, as ``StageRecord`` records it for ``medzoo predict``: the reader's grey
    flag (None when the source has none: in-memory arrays), its ``meta['channels']`` and its ``ignore_index``."""
    raw = source.source if isinstance(source, CachedSource) else source  # what read the files, not the cache
    grey = getattr(raw, "grey", None)
    return {"read_grey": grey if isinstance(grey, bool) else None,
            "read_channels": raw.meta.get("channels") if isinstance(grey, bool) else None,
            "ignore_index": source.ignore_index}


class CachedSource(DataSource):
    """``source`` with every image preprocessed by ``source.prepare(record, cfg)`` once, then read from a
    memory-mapped array. Records the build could not read under ``--skip-bad`` are left out."""

    def __init__(self, source: DataSource, cfg: PreprocessConfig, *, home: Path | None = None):
        self.source, self.cfg = source, cfg
        self.skip_bad = skipping()
        self.key = cache_key(source, cfg, self.skip_bad)
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name)[:60]
        self.path = (home or cache_home()) / f"{slug}-{self.key[:24]}"
        if not self._valid():
            self._build()
        index = json.loads((self.path / "index.json").read_text())
        rows = index["rows"]
        records = [r for r in source.records if r.id in rows]
        super().__init__(source.name, source.task, source.classes, records, ignore_index=source.ignore_index,
                         meta={**source.meta, "preprocess": cfg.to_dict(), "cache": str(self.path),
                               "channels": cfg.channels or index["channels"]})
        if index["skipped"]:
            self.meta["skipped"] = self.meta.get("skipped", []) + index["skipped"]
        self._rows = rows
        self.images = np.load(self.path / "images.npy", mmap_mode="r")
        self.masks = np.load(self.path / "masks.npy", mmap_mode="r") if (self.path / "masks.npy").exists() else None

    def _valid(self) -> bool:
        try:
            index = json.loads((self.path / "index.json").read_text())
        except (OSError, ValueError):
            return False
        return index.get("key") == self.key

    def read(self, record: Record) -> np.ndarray:
        return self.images[self._rows[record.id]]

    def read_mask(self, record: Record) -> np.ndarray:
        if self.masks is None:
            return super().read_mask(record)
        return self.masks[self._rows[record.id]]

    def fingerprint(self) -> str:
        """What training reads: the raw data's identity, the preprocessing, and the images the build left
        out under --skip-bad."""
        blob = json.dumps({"data": self.source.fingerprint(), "preprocess": self.cfg.to_dict(),
                           "steps": step_versions(self.cfg),
                           "reader_version": getattr(self.source, "preprocess_version", 0),
                           "skipped": sorted(self.meta.get("skipped", []))},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def verify(self) -> list[str]:
        return self.source.verify()

    def prepare(self, record: Record, cfg: FitConfig) -> tuple[np.ndarray, np.ndarray | None]:
        raise MedzooError("a cached dataset is already preprocessed; open the dataset without preprocess=")

    def _build(self) -> None:
        from tqdm import tqdm

        records = self.source.records
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(self.path.parent)
        tmp = tmp_folder(self.path)
        tmp.mkdir()
        # preprocessed in parallel, written in order: the cache is the same as a sequential build's
        prepared = parallel_map(lambda r: _try(self.source.prepare, r, self.cfg), records)
        try:
            images = masks = None
            rows: dict[str, int] = {}
            skipped: list[str] = []
            n = 0
            for r, (out, exc) in tqdm(zip(records, prepared), total=len(records),
                                      desc=f"caching {self.source.name}", unit="img", leave=False, disable=None):
                if exc is None:
                    img, mask = out
                else:
                    bad_input(r.id, str(exc), "fix the file, or pass --skip-bad to leave it out")
                    skipped.append(f"{r.id}: {exc}")
                    continue
                if images is None:
                    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=img.dtype,
                                                       shape=(len(records), *img.shape))
                    if mask is not None:
                        mask_dtype = np.uint8 if len(self.source.classes) < 256 else np.int32
                        masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=mask_dtype,
                                                          shape=(len(records), *mask.shape))
                images[n] = img
                if masks is not None:
                    masks[n] = mask
                rows[r.id] = n
                n += 1
            if images is None:
                raise MedzooError(f"dataset '{self.source.name}': no image could be preprocessed; check its files")
            channels = 1 if images.ndim == 3 else images.shape[3]
            del images, masks  # flush the memmaps before the rename
            if n < len(records):  # the skipped rows left unused space at the end: trim it
                truncate_npy(tmp / "images.npy", n)
                if (tmp / "masks.npy").exists():
                    truncate_npy(tmp / "masks.npy", n)
            (tmp / "index.json").write_text(json.dumps({"key": self.key, "name": self.source.name,
                                                        "config": self.cfg.to_dict(), "channels": channels,
                                                        "rows": rows, "skipped": skipped}))
            try:  # an invalid (stale-keyed or partial) folder with our name is replaced
                store_swap_dir(tmp, self.path)
            except MedzooError:  # another process finished the same cache first: use theirs
                if not self._valid():
                    raise
        finally:
            prepared.close()
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached %s: %d images in %s", self.source.name, n, self.path)


def _try(fn, *args):
    """``(fn(*args), None)``, or ``(None, error)`` for a MedzooError (a bad file), to re-raise in order."""
    try:
        return fn(*args), None
    except MedzooError as exc:
        return None, exc


def build_threads() -> int:
    """Threads for preprocessing images in parallel: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def parallel_map(fn, items, threads: int | None = None):
    """``map(fn, items)`` in order, on a pool of threads, one image per thread with torch's intra-op
    parallelism off while it runs: decoding (OpenCV, pydicom's numpy), CLAHE and the resize release the GIL,
    and one image per core beats torch splitting each small resize over threads (5x slower on a busy 2-core
    machine, see docs/benchmarks.md). At most 2 items per thread are in flight, so memory stays bounded."""
    import contextvars
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or build_threads()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="medzoo-prep") if threads > 1 else None
    try:
        if pool is None:
            yield from map(fn, items)
            return
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(contextvars.copy_context().run, fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(torch_threads)


def truncate_npy(path: Path, n: int) -> None:
    full = np.load(path, mmap_mode="r")
    part = path.with_suffix(".part.npy")
    out = np.lib.format.open_memmap(part, mode="w+", dtype=full.dtype, shape=(n, *full.shape[1:]))
    out[:] = full[:n]
    del out, full
    os.replace(part, path)
