"""Figure 5: ``medzoo.load(name)`` (find the checkpoint, read config.json, verify the weights' sha256,
build the architecture, load the weights) vs what a user writes with timm: ``timm.create_model`` +
``safetensors.torch.load_file`` + ``load_state_dict`` of the same weights, and vs the same with
``torch.load(weights_only=True)`` of a .pt copy. Warm process (imports and the plugin registry loaded
once beforehand, as in any session that loads more than one model).
"""

from __future__ import annotations

import argparse
import hashlib

import common
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    common.header("load: medzoo.load vs timm.create_model + safetensors + load_state_dict, vs torch.load")
    common.fresh_home("load")
    import timm
    from safetensors.torch import load_file

    import medzoo
    from medzoo import models, store

    rows, figures = [], []
    for arch in args.archs.split(","):
        # a real checkpoint from the trainer (one tiny epoch: only its files matter here)
        res = medzoo.train(arch, "scratch,phantom_lesion", overrides=["epochs=1", "image_size=32", "batch_size=64"],
                           precision="fp32")
        ckpt = res[-1].path
        name = ckpt.name
        weights = ckpt / store.WEIGHTS
        pt = ckpt.parent.parent / f"{arch}.pt"
        torch.save(load_file(str(weights)), pt)
        timm_name = models.stock_timm_name(medzoo.registry.registry().resolve("archs", arch))

        def with_timm():
            m = timm.create_model(timm_name, num_classes=2)
            m.load_state_dict(load_file(str(weights)))
            return m.eval()

        def with_torch_load():
            m = timm.create_model(timm_name, num_classes=2)
            m.load_state_dict(torch.load(pt, weights_only=True))
            return m.eval()

        def with_medzoo():
            return medzoo.load(name)

        ref = with_timm().state_dict()
        got = with_medzoo().state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref), "medzoo.load gave other weights"
        runs = common.alternate({"timm + safetensors": with_timm, "timm + torch.load": with_torch_load,
                                 "medzoo.load": with_medzoo}, args.repeats)
        sha = common.median([common.timed(lambda: hashlib.sha256(weights.read_bytes()).hexdigest()) for _ in range(3)])
        base = common.median(runs["timm + safetensors"])
        for n, t in runs.items():
            rows.append([arch, n, f"{common.median(t) * 1000:.0f} ms", f"{common.median(t) / base:.2f}x",
                         common.spread(t)])
        print(f"{arch}: weights {weights.stat().st_size / 1e6:.0f} MB, sha256 of the file {sha * 1000:.0f} ms")
        figures.append((arch, common.median(runs["medzoo.load"]) / base,
                        common.median(runs["medzoo.load"]) / common.median(runs["timm + torch.load"])))
    common.table(rows, ["arch", "path", "median", "vs timm", "spread"])
    print(f"load at end: {common.load()}")
    for arch, _, vs_torch in figures:
        print(common.ratio(f"load_{arch}_vs_timm_torch_load", vs_torch, "info"))
    for arch, vs_timm, _ in figures:
        print(common.ratio(f"load_{arch}_vs_timm_safetensors", vs_timm, "<=1.2"))


if __name__ == "__main__":
    main()
