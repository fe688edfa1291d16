"""Figure 9: the chain leakage check. A medagg-like build of N training images (default 100,000; its
``hashes.npy`` written as a build writes it) is checked against a 1,000-image target (800 train, 100 val,
100 test) with 10 planted near duplicates (2 bits from a target test image's perceptual hash), as
``medzoo train`` does before a chain trains: ``medzoo.overlap.check_chain``.

Timed per run (hashes stored: the build's, and the target's from its first use) against opening and
fingerprinting the two datasets, which every chain does anyway; the target's one-off hashing is reported
on its own.
"""

from __future__ import annotations

import argparse
import csv
import json

import common
import numpy as np


def write_build(folder, n: int, planted: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "images.npy", rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8))
    hashes = rng.integers(0, 2**63, (n, 2), dtype=np.int64).astype(np.uint64)
    flip = np.uint64(0b101)  # 2 bits apart: a near duplicate
    hashes[: len(planted), 1] = planted ^ flip
    np.save(folder / "hashes.npy", hashes)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ref", "source", "origin", "modality", "body_part", "label", "patient", "split", "copy"])
        for i in range(n):
            split = "train" if i < n - n // 10 else "val"
            w.writerow([f"images.npy#{i}", "src", f"src#{i}", "CT", "chest", f"src/c{i % 5}", f"src/p{i}", split, 0])
    (folder / "manifest.json").write_text(json.dumps({
        "format": 1, "task_label": "label", "classes": [f"src/c{i}" for i in range(5)], "size": 8, "channels": 1}))


def target_source():
    from medzoo.data import ArraySource, Record

    rng = np.random.default_rng(1)
    small = rng.random((1000, 6, 6)).astype(np.float32)
    import cv2

    images = np.stack([(cv2.resize(s, (32, 32), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)
                       for s in small])
    records = [Record(f"t{i}", i % 2, "train" if i < 800 else "val" if i < 900 else "test", meta={"index": i})
               for i in range(1000)]
    return ArraySource("target", "classification", ["a", "b"], records, images)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    common.header(f"chain leakage check: {args.train:,} medagg training images vs a 1,000-image target")
    common.fresh_home("overlap")
    from medzoo.data import open_dataset
    from medzoo.overlap import check_chain, dataset_hashes

    target = target_source()
    first_hash = common.timed(lambda: dataset_hashes(target))
    test_ids = {r.id for r in target.records if r.split == "test"}
    planted = dataset_hashes(target).take(test_ids).phash[:10]
    folder = common.DATA / f"overlap_medagg_{args.train}"
    write_build(folder, args.train, planted)

    def opened():
        agg = open_dataset("medagg", folder)
        agg.fingerprint()
        target.fingerprint()
        return agg

    agg = opened()
    found = check_chain([("medagg", agg), ("target", target)], allow=True)
    assert found[1]["pairs"] == 10, found
    times = common.alternate({"open + fingerprint": opened,
                              "check": lambda: check_chain([("medagg", agg), ("target", target)], allow=True)},
                             args.repeats)
    base = common.median(times["open + fingerprint"])
    common.table([[k, f"{common.median(v) * 1000:.0f} ms", f"{common.median(v) / base:.3f}x", common.spread(v),
                   len(v)] for k, v in times.items()], ["run", "median", "vs open", "spread", "runs"])
    print(f"pairs found: {found[1]['pairs']} of 10 planted; the target's hashes computed once: "
          f"{first_hash * 1000:.0f} ms for 1,000 images (stored, not recomputed)")
    print(f"load at end: {common.load()}")
    print(common.ratio("overlap_check_vs_open", common.median(times["check"]) / base, "<=0.5", train=args.train))


if __name__ == "__main__":
    main()
