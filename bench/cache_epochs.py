"""Figure 3: the preprocessed cache. Epoch 1 (decode + window + breast mask + CLAHE + resize, written to
the memory-mapped cache, then augment and batch) vs later epochs (read the cache, augment, batch), on
mammogram-sized DICOMs (3328×2560, 16-bit), uncompressed and JPEG 2000 lossless, through the ``dicom:``
dataset exactly as ``medzoo train`` opens it (``open_dataset(..., preprocess=...)`` + ``TorchDataset`` +
the training transform + a DataLoader). An epoch here is the data side only: the model's cost is the same
in every epoch and is left out.
"""

from __future__ import annotations

import argparse

import common
import gen

SHAPE = (3328, 2560)
PREPROCESS = {"size": 512, "channels": 1, "dtype": "uint16", "clahe": 1.5, "steps": ["breast_mask", "flip_to:left"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--cold", type=int, default=2, help="epoch-1 repeats (each on a fresh cache)")
    ap.add_argument("--warm", type=int, default=3, help="later epochs per cold run")
    args = ap.parse_args()
    common.header(f"preprocessed cache: epoch 1 vs later epochs, {args.images} DICOMs {SHAPE[0]}x{SHAPE[1]} 16-bit")
    import torch

    from medzoo import cache as mzcache
    from medzoo import data as mzdata

    torch.set_num_threads(1)  # DataLoader workers (the trainer's default is 0) are single-threaded too
    folders = {"uncompressed": gen.dicom_folder(f"mg_raw_{args.images}", args.images, SHAPE),
               "JPEG 2000 lossless": gen.dicom_folder(f"mg_j2k_{args.images}", args.images, SHAPE, j2k=True)}
    tf = mzdata.build_transform(mzdata.TransformConfig(image_size=448, augment="medium", in_chans=1), True)

    def epoch(source) -> None:
        ds = mzdata.TorchDataset(source, "train", tf, 1)
        for _ in torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True, num_workers=0):
            pass

    times: dict[str, dict[str, list[float]]] = {k: {"epoch 1": [], "later": []} for k in folders}
    for rep in range(args.cold):
        for kind, folder in (list(folders.items()) if rep % 2 == 0 else list(folders.items())[::-1]):
            common.fresh_home("cache")
            opened = {}

            def first():
                opened["src"] = mzcache.open_dataset(f"dicom:{folder}", preprocess=PREPROCESS)
                epoch(opened["src"])

            times[kind]["epoch 1"].append(common.timed(first))
            for _ in range(args.warm):
                times[kind]["later"].append(common.timed(lambda: epoch(opened["src"])))
    n_train = len(mzdata.open_dataset(f"dicom:{folders['uncompressed']}").split("train"))
    rows, ratios = [], {}
    for kind in folders:
        e1, later = common.median(times[kind]["epoch 1"]), common.median(times[kind]["later"])
        ratios[kind] = e1 / later
        size = sum(f.stat().st_size for f in folders[kind].glob("*.dcm")) / args.images / 1e6
        rows.append([kind, f"{size:.1f} MB", f"{e1:.2f} s", f"{later * 1000:.0f} ms", f"{ratios[kind]:.0f}x",
                     f"{len(times[kind]['epoch 1'])}+{len(times[kind]['later'])}"])
    common.table(rows, ["DICOM", "file", "epoch 1", "later epoch", "speed-up", "runs"])
    print(f"{n_train} training images per epoch of the {args.images} (the dicom: dataset holds out a val/test "
          f"split); cache {PREPROCESS}; transform 448 px 'medium' augmentation")
    print(f"load at end: {common.load()}")
    print(common.ratio("cache_later_vs_first_uncompressed", ratios["uncompressed"], "info"))
    print(common.ratio("cache_later_vs_first_j2k", ratios["JPEG 2000 lossless"], ">=20"))


if __name__ == "__main__":
    main()
