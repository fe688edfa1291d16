"""Figure 8: the cost of data identity. An imagefolder of N small PNGs (default 10,000, 2 classes) is opened
and fingerprinted as a stage does before deciding to reuse it:

- ``before``: main's ``open_dataset`` + ``fingerprint()`` before content identity: imagefolder's open and
  the fingerprint (sha256 of ids, labels, splits and patients only) as they were on main (commit 698215d),
  reproduced here line for line and registered as ``imagefolder_main``, so both run in one process;
- ``open only``: this branch's ``open_dataset`` + main's fingerprint (what the content identity adds is
  ``rerun`` minus this);
- ``rerun``: ``open_dataset`` + ``fingerprint()`` with the file-hash cache warm (an unchanged dataset:
  one stat per file, no file read);
- ``first``: the same with the file-hash cache emptied first (every file read and hashed; the OS page
  cache is warm, so this is hashing, not disk).

``before`` and ``rerun`` alternate; ``first`` runs in the same rounds. Then ``data check --verify``'s
re-hash of everything is timed once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil

import common


def write_folder(root, n: int) -> None:
    import cv2
    import numpy as np

    marker = root / f".complete-{n}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:06d}.png"), rng.integers(0, 255, (32, 32), dtype=np.uint8))
    marker.touch()


def main_open_imagefolder(*, root=None, arg=None):
    """``imagefolder``'s open as it was on main before this change (commit 698215d), so that "before" is
    main's open_dataset: pathlib listing, one stat per file, Path sorting and relative_to."""
    from pathlib import Path

    from medzoo.data import SPLITS, Record, assign_splits
    from medzoo_plugins.imaging import IMAGE_SUFFIXES, FileSource, is_dicom

    def list_images(folder):
        return sorted(p for p in folder.iterdir()
                      if p.is_file() and not p.name.startswith(".") and
                      (p.suffix.lower() in IMAGE_SUFFIXES or (not p.suffix and is_dicom(p))))

    top = Path(arg)
    split_dirs = [s for s in SPLITS if (top / s).is_dir()]
    layout = [(s, top / s) for s in split_dirs] if split_dirs else [(None, top)]
    classes = sorted({d.name for _, base in layout for d in base.iterdir()
                      if d.is_dir() and not d.name.startswith(".")})
    records = []
    for split, base in layout:
        for c in classes:
            folder = base / c
            for p in list_images(folder) if folder.is_dir() else []:
                rel = p.relative_to(top).as_posix()
                records.append(Record(rel, classes.index(c), split or "train", None, meta={"path": rel}))
    if not split_dirs:
        assign_splits(records, seed=0)
    return FileSource(f"imagefolder:{top}", "classification", classes, records, root=top)


def fingerprint_before(source) -> str:
    """main's DataSource.fingerprint() before content identity (ids, labels, splits, patients)."""
    rows = [[r.id, r.label, r.split, r.patient] for r in sorted(source.records, key=lambda r: r.id)]
    blob = json.dumps({"name": source.name, "task": source.task, "classes": source.classes, "rows": rows},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    common.header(f"data identity: open + fingerprint of an imagefolder of {args.files:,} PNGs")
    home = common.fresh_home("identity")
    root = common.DATA / f"identity_{args.files}"
    write_folder(root, args.files)
    from medzoo.data import open_dataset
    from medzoo.registry import DatasetSpec, registry

    registry().add("datasets", DatasetSpec(name="imagefolder_main", open=main_open_imagefolder, takes_arg=True),
                   plugin="bench")
    name = f"imagefolder:{root}"
    files_cache = home / "cache" / "files"
    open_dataset(name).fingerprint()  # warm the imports and the stat cache

    def first():
        shutil.rmtree(files_cache, ignore_errors=True)
        open_dataset(name).fingerprint()

    times = common.alternate({"before": lambda: fingerprint_before(open_dataset(f"imagefolder_main:{root}")),
                              "open only": lambda: fingerprint_before(open_dataset(name)),
                              "rerun": lambda: open_dataset(name).fingerprint(),
                              "first": first}, args.repeats)
    open_dataset(name).fingerprint()  # leave the cache warm
    verify = common.timed(lambda: open_dataset(name).verify())
    base = common.median(times["before"])
    rows = [[k, f"{common.median(v) * 1000:.0f} ms", f"{common.median(v) / base:.3f}x", common.spread(v), len(v)]
            for k, v in times.items()]
    common.table(rows, ["run", "median", "vs before", "spread", "runs"])
    # paired: each round's rerun over the same round's before
    paired = common.median([r / b for r, b in zip(times["rerun"], times["before"])])
    print(f"data check --verify (re-hash all {args.files:,} files): {verify * 1000:.0f} ms; "
          f"file-hash cache {sum(p.stat().st_size for p in files_cache.iterdir()) / 1e6:.2f} MB")
    print(f"load at end: {common.load()}")
    print(common.ratio("identity_rerun_vs_before", paired, "<=1.10", files=args.files))
    print(common.ratio("identity_first_vs_before", common.median(times["first"]) / base, "-", files=args.files))


if __name__ == "__main__":
    main()
