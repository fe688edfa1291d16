"""Leak-free chains: before a chain trains, each stage's validation and test images are looked up in every
earlier stage's training images, exactly (a digest of the grey pixels) and as near duplicates (64-bit
perceptual hashes within ``DISTANCE`` bits: resized, re-encoded or slightly brightened copies).

Hashes are computed once per dataset version and stored: a medagg build writes them as it builds
(``hashes.npy``, from the original images), any other dataset gets them on first use under
``$MEDZOO_HOME/cache/hashes/<pixels key>.npz`` (keyed by the record ids and the files' content).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataSource, log
from .naming import public_dataset
from .registry import MedzooError

DISTANCE = 4  # as medagg's de-duplication: a perceptual-hash Hamming distance counted as the same image
HASH_DTYPE = np.uint64


def grey8(img: np.ndarray) -> np.ndarray:
    """The image as one 8-bit grey channel (alpha dropped): what both hashes are computed on."""
    from .resize import to_channels

    grey = to_channels(img, 1)
    if grey.dtype == np.uint8:
        return np.ascontiguousarray(grey)
    if grey.dtype == np.uint16:
        return (grey >> 8).astype(np.uint8)
    return (np.clip(grey, 0, 1) * 255 + 0.5).astype(np.uint8)


def exact_hash(grey: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(grey.tobytes() + str(grey.shape).encode(), digest_size=8).digest(), "big")


def phash(grey: np.ndarray) -> int:
    import imagehash
    from PIL import Image

    return int(str(imagehash.phash(Image.fromarray(grey))), 16)


def image_hashes(img: np.ndarray) -> tuple[int, int]:
    grey = grey8(img)
    return exact_hash(grey), phash(grey)


class HashIndex:
    """Near-duplicate lookup for 64-bit perceptual hashes: with distance d, two hashes within d differ in
    at most d of d+1 disjoint bit bands, so they share one band exactly (pigeonhole) — a dict probe per band
    instead of a scan of every accepted image."""

    def __init__(self, distance: int):
        from collections import defaultdict

        self.distance = distance
        self.bands = max(1, distance + 1)
        self.width = -(-64 // self.bands)
        self.tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(self.bands)]
        self.hashes: list[int] = []

    def _keys(self, h: int):
        mask = (1 << self.width) - 1
        return [(h >> (i * self.width)) & mask for i in range(self.bands)]

    def near(self, h: int) -> int | None:
        for table, key in zip(self.tables, self._keys(h)):
            for j in table.get(key, ()):
                if (self.hashes[j] ^ h).bit_count() <= self.distance:
                    return j
        return None

    def add(self, h: int) -> None:
        for table, key in zip(self.tables, self._keys(h)):
            table[key].append(len(self.hashes))
        self.hashes.append(h)


@dataclass
class Hashes:
    """One dataset's image hashes, row-aligned with ``ids``."""

    ids: list[str]
    exact: np.ndarray  # uint64
    phash: np.ndarray  # uint64

    def take(self, wanted: set[str]) -> Hashes:
        keep = [i for i, rid in enumerate(self.ids) if rid in wanted]
        return Hashes([self.ids[i] for i in keep], self.exact[keep], self.phash[keep])


def _hash_home() -> Path:
    from .store import home

    return home() / "cache" / "hashes"


def dataset_hashes(source: DataSource) -> Hashes:
    """Every record's hashes: from what the source stores (``stored_hashes()``, a medagg build), else from
    the hash cache of this dataset version, else computed from its pixels once and stored."""
    from .cache import CachedSource

    raw = source.source if isinstance(source, CachedSource) else source  # the originals, not the resized
    stored = getattr(raw, "stored_hashes", None)
    if stored is not None:
        found = stored()
        if found is not None:
            return found
    from .identity import pixels_key

    path = _hash_home() / f"{pixels_key(raw)[:32]}.npz"
    try:
        with np.load(path) as z:
            return Hashes(list(z["ids"]), z["exact"], z["phash"])
    except (OSError, ValueError, KeyError):
        pass
    from .cache import parallel_map

    records = sorted(raw.records, key=lambda r: r.id)
    pairs = list(parallel_map(lambda r: _hash_or_none(raw, r), records))
    out = Hashes([r.id for r in records], np.array([e for e, _ in pairs], HASH_DTYPE).reshape(-1),
                 np.array([p for _, p in pairs], HASH_DTYPE).reshape(-1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp, ids=np.array(out.ids, dtype=str), exact=out.exact, phash=out.phash)
    os.replace(tmp, path)
    return out


def _hash_or_none(source: DataSource, record) -> tuple[int, int]:
    """(0, 0) — matching nothing — for an image that cannot be read (left out under --skip-bad)."""
    try:
        return image_hashes(source.read(record))
    except MedzooError:
        return 0, 0


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def _informative(ph: np.ndarray) -> np.ndarray:
    # a flat image hashes to (nearly) all zeros or ones: such hashes match each other, not the same image
    bits = _popcount(ph)
    return (bits > 4) & (bits < 60)


def find_pairs(train: Hashes, held: Hashes, distance: int = DISTANCE) -> list[tuple[str, str, int]]:
    """``(held id, train id, distance)`` for each held-out image found among the training images (distance
    -1: identical pixels; else the perceptual hashes' Hamming distance). Vectorised band matching: two hashes
    within ``distance`` bits agree exactly on one of ``distance + 1`` bands, so only pairs sharing a band are
    compared."""
    pairs: dict[int, tuple[int, int]] = {}
    if len(train.ids) and len(held.ids):
        where = {int(e): i for i, e in enumerate(train.exact) if e}
        for j, e in enumerate(held.exact):
            if e and int(e) in where:
                pairs[j] = (where[int(e)], -1)
    if distance >= 0 and len(train.ids) and len(held.ids):
        ok_t, ok_h = np.flatnonzero(_informative(train.phash)), np.flatnonzero(_informative(held.phash))
        tp, hp = train.phash[ok_t], held.phash[ok_h]
        bands = distance + 1
        width = -(-64 // bands)
        mask = np.uint64((1 << width) - 1)
        for b in range(bands):
            shift = np.uint64(b * width)
            tk, hk = (tp >> shift) & mask, (hp >> shift) & mask
            order = np.argsort(tk, kind="stable")
            sk = tk[order]
            lo, hi = np.searchsorted(sk, hk, "left"), np.searchsorted(sk, hk, "right")
            for q in np.flatnonzero(hi > lo):
                j = int(ok_h[q])
                if j in pairs:
                    continue
                cand = order[lo[q]:hi[q]]
                d = _popcount(tp[cand] ^ hp[q])
                best = int(np.argmin(d))
                if d[best] <= distance:
                    pairs[j] = (int(ok_t[cand[best]]), int(d[best]))
    return sorted((held.ids[j], train.ids[i], d) for j, (i, d) in pairs.items())


def check_chain(stages: list[tuple[str, DataSource]], allow: bool = False) -> dict[int, dict]:
    """Refuse a chain whose stage's val/test images appear in an earlier stage's training images, unless
    ``allow``; then returns ``{stage index: {"allowed": True, "pairs": N, "examples": [...]}}`` for the
    lineage of each stage that has such pairs."""
    found: dict[int, dict] = {}
    if len(stages) < 2:
        return found
    hashes = [dataset_hashes(src) for _, src in stages]
    for t in range(1, len(stages)):
        name, target = stages[t]
        held = hashes[t].take({r.id for r in target.records if r.split in ("val", "test")})
        examples, total = [], 0
        for s in range(t):
            earlier, src = stages[s]
            train = hashes[s].take({r.id for r in src.records if r.split == "train"})
            pairs = find_pairs(train, held)
            total += len(pairs)
            # examples go into the lineage and the card: datasets (and medagg origins) by public name, never a path
            examples += [f"{public_dataset(name)}:{h} ~ {public_dataset(earlier)}:{_describe(src, tr)}"
                         + (" (identical pixels)" if d < 0 else f" (hash distance {d})") for h, tr, d in pairs[:5]]
        if not total:
            continue
        if not allow:
            raise MedzooError(f"stage '{name}': {total} of its val/test images appear in earlier training data "
                              f"({'; '.join(examples[:3])}); remove them from one side (rebuild the "
                              f"pretraining dataset without them) or pass --allow-overlap to train anyway (recorded "
                              f"in the lineage)")
        log.warning("stage '%s': %d val/test image(s) appear in earlier training data (allowed): %s", name, total,
                    "; ".join(examples[:3]))
        found[t] = {"allowed": True, "pairs": total, "examples": examples[:5]}
    return found


def _describe(source: DataSource, record_id: str) -> str:
    from .cache import CachedSource

    raw = source.source if isinstance(source, CachedSource) else source
    rec = next((r for r in raw.records if r.id == record_id), None)
    origin = rec.meta.get("origin") if rec is not None else None
    if not origin:
        return record_id
    where, sep, rid = str(origin).partition("#")  # medagg's origin: "<source dataset>#<record id>"
    return f"{record_id} (from {public_dataset(where)}{sep}{rid})"
