"""Figure 2: medzoo's data pipeline vs the equivalent MONAI chain, images/s, on one core and with workers,
for PNG and DICOM inputs.

medzoo: ``open_dataset(name, preprocess={clahe, size, channels})`` (decode with OpenCV/pydicom, CLAHE with
OpenCV, antialiased resize into the memory-mapped cache) + ``TorchDataset`` with the training transform
(resize to 224, 'light' augmentation: flip, rotation, translation, scale; normalise) + a DataLoader. The
timed epoch is the *first* one, so it includes building the cache; later epochs are reported too.

MONAI: ``LoadImage, EnsureChannelFirst, ScaleIntensity, CLAHE (scikit-image's equalize_adapthist: MONAI
has none), Resize(224), RandFlip, RandRotate`` in a ``monai.data.Dataset`` + DataLoader, every epoch.

Both iterate the same training files in batches of 32. One core: the measuring process is pinned to CPU 0
(``taskset``), one torch thread, no workers. Workers: both cores, ``num_workers=2``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import common
import gen

PREPROCESS = {"size": 256, "channels": 1, "clahe": 2.0}
SIZE = 224


def medzoo_epochs(name: str, workers: int, later: bool) -> tuple[float, float, int]:
    import torch

    from medzoo import cache as mzcache
    from medzoo import data as mzdata

    common.fresh_home("pipeline")
    tf = mzdata.build_transform(mzdata.TransformConfig(image_size=SIZE, augment="light", in_chans=1), True)
    out = {}

    def loader(src):
        ds = mzdata.TorchDataset(src, "train", tf, 1)
        return torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers)

    def first():
        out["src"] = mzcache.open_dataset(name, preprocess=PREPROCESS)
        for _ in loader(out["src"]):
            pass

    t1 = common.timed(first)
    t2 = common.timed(lambda: [None for _ in loader(out["src"])]) if later else float("nan")
    return t1, t2, len(out["src"].split("train"))


def monai_epoch(files: list[str], dicom: bool, workers: int) -> float:
    import numpy as np
    import torch
    from monai import transforms as T
    from monai.data import DataLoader, Dataset
    from skimage.exposure import equalize_adapthist

    def clahe(img):  # on the channel-first [0, 1] image
        return torch.as_tensor(np.stack([equalize_adapthist(np.asarray(c), clip_limit=0.01) for c in img]),
                               dtype=torch.float32)

    chain = T.Compose([
        T.LoadImage(image_only=True, reader="PydicomReader" if dicom else None),
        T.EnsureChannelFirst(),
        T.ScaleIntensity(),
        T.Lambda(clahe),
        T.Resize((SIZE, SIZE)),
        T.RandFlip(prob=0.5, spatial_axis=1),
        T.RandRotate(range_x=0.12, prob=1.0, keep_size=True),
    ])
    loader = DataLoader(Dataset(files, chain), batch_size=32, shuffle=True, num_workers=workers)
    return common.timed(lambda: [None for _ in loader])


def train_files(name: str) -> list[str]:
    from medzoo import data as mzdata

    src = mzdata.open_dataset(name)
    return [str(src.path(r)) for r in src.split("train")]


def child(args) -> None:
    """One measuring process: alternate medzoo and MONAI on PNG and DICOM, print JSON."""
    import torch

    if args.workers == 0:
        torch.set_num_threads(1)
    inputs = {"PNG": (f"imagefolder:{gen.png_folder(f'png512_{args.png}', args.png, 512)}", False),
              "DICOM": (f"dicom:{gen.dicom_folder(f'dcm1024_{args.dicom}', args.dicom, (1024, 832))}", True)}
    files = {k: train_files(name) for k, (name, _) in inputs.items()}
    res = {k: {"medzoo": [], "medzoo later": [], "monai": []} for k in inputs}
    for rep in range(args.repeats + 1):  # round 0 warms up imports and file caches
        for k, (name, dicom) in inputs.items():
            pair = [("medzoo", lambda: medzoo_epochs(name, args.workers, rep > 0)),
                    ("monai", lambda: monai_epoch(files[k], dicom, args.workers))]
            for who, fn in (pair if rep % 2 else pair[::-1]):
                t = fn()
                if rep == 0:
                    continue
                if who == "medzoo":
                    res[k]["medzoo"].append(t[0])
                    res[k]["medzoo later"].append(t[1])
                else:
                    res[k]["monai"].append(t)
    print("JSON " + json.dumps({"res": res, "n": {k: len(v) for k, v in files.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--png", type=int, default=160)
    ap.add_argument("--dicom", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    if args.workers is not None:
        return child(args)
    common.header(f"data pipeline: medzoo vs MONAI chain (+ scikit-image CLAHE), {args.png} PNG 512x512 8-bit, "
                  f"{args.dicom} DICOM 1024x832 16-bit")
    gen.png_folder(f"png512_{args.png}", args.png, 512)
    gen.dicom_folder(f"dcm1024_{args.dicom}", args.dicom, (1024, 832))
    rows, figures = [], []
    for mode, workers, pin in (("one core", 0, ["taskset", "-c", "0"]), ("2 workers", 2, [])):
        cmd = pin + [sys.executable, __file__, "--workers", str(workers), "--png", str(args.png),
                     "--dicom", str(args.dicom), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(__file__))
        line = [x for x in proc.stdout.splitlines() if x.startswith("JSON ")]
        if proc.returncode or not line:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        out = json.loads(line[-1][5:])
        for k, r in out["res"].items():
            n = out["n"][k]
            mz, mzl, mo = (common.median(r[x]) for x in ("medzoo", "medzoo later", "monai"))
            rows.append([mode, k, f"{n / mo:.0f}", f"{n / mz:.0f}", f"{mo / mz:.2f}x", f"{n / mzl:.0f}",
                         f"{mo / mzl:.1f}x", len(r["monai"])])
            figures.append((f"pipeline_{k.lower()}_{mode.replace(' ', '')}", mo / mz))
    common.table(rows, ["mode", "input", "MONAI img/s", "medzoo epoch 1", "ratio", "medzoo later", "ratio",
                        "runs"])
    print(f"(img/s over the training split; medzoo's epoch 1 includes preprocessing every split into the cache; "
          f"cache {PREPROCESS})")
    print(f"load at end: {common.load()}")
    for name, value in figures:
        print(common.ratio(name, value, ">=3"))


if __name__ == "__main__":
    main()
