"""GPU figures, for the first CUDA machine: (1) the demo chain (`make demo`: both chains and their
evaluations) end to end with medzoo's defaults; (2) training images/s of swin_t and resnet50 at 224 px in
fp32, channels_last, bf16 autocast, both, and medzoo's default under torch.compile, and whether the default
(``--precision auto``, channels_last auto) is the fastest uncompiled one; (3) the data pipeline's images/s
from the preprocessed cache (``--workers auto`` and 0) against the model's, i.e. whether the loader keeps the
GPU fed. Ends with ``RATIO`` lines like the other scripts. About 3-4 minutes on one GPU.

Without CUDA it prints one line and exits 0. ``--device cpu --quick`` runs every path except the CUDA calls
on the CPU at toy sizes, to check the script itself (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import sys
import time

import common
import torch

CONFIGS = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True),
           "channels_last+bf16": (True, True)}


def rate(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def demo_chain(device: torch.device, quick: bool) -> list[list[object]]:
    """`make demo`'s two chains and evaluations, with medzoo's runtime defaults on this device."""
    import medzoo
    from medzoo import store

    common.fresh_home("gpu")
    over = ["epochs=1", "image_size=32"] if quick else []
    rows = []
    for stages in ("scratch,phantom_agg,phantom_lesion", "scratch,phantom_lesion"):
        t = time.perf_counter()
        results = medzoo.train("resnet18", stages, overrides=over, device=str(device))
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        ev = medzoo.evaluate(results[-1].name, device=str(device))
        eval_s = time.perf_counter() - t
        run = store.read_checkpoint(results[-1].path).lineage.stages[-1].runtime
        rows.append([stages, f"{train_s:.1f} s", f"{eval_s:.1f} s", run["precision"],
                     "yes" if run["channels_last"] else "no", run["workers"],
                     f"auc {ev.metrics.get('auc', float('nan')):.3f}"])
    return rows


def throughput(arch: str, device: torch.device, hw, batch: int, size: int, steps: int, repeats: int):
    """Training images/s per configuration (AdamW, CE, autocast around the forward, as the trainer)."""
    from medzoo import models, speed
    from medzoo.registry import registry

    torch.manual_seed(0)
    kw = {"img_size": size} if registry().resolve("archs", arch).spec.fixed_input_size else {}
    state = models.create_model(arch, num_classes=2, **kw).state_dict()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    crit = torch.nn.CrossEntropyLoss()
    precision = speed.precision("auto", hw)
    default_cl = speed.channels_last(None, hw, precision, not registry().resolve("archs", arch).spec.channels_last)
    default = {(False, False): "fp32", (True, False): "channels_last", (False, True): "bf16",
               (True, True): "channels_last+bf16"}[(default_cl, precision == "bf16")]
    configs = {**CONFIGS, f"{default}+compile": (*CONFIGS[default], True)}
    out = {}
    for name, (cl, bf16, *compiled) in configs.items():
        net = models.create_model(arch, num_classes=2, **kw)
        net.load_state_dict(state)
        net.to(device).train()
        if cl:
            net.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        run = torch.compile(net) if compiled else net
        xin = x.contiguous(memory_format=torch.channels_last) if cl else x

        def step(opt=opt, run=run, xin=xin, bf16=bf16):  # bound now: the loop deletes them after timing
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = crit(run(xin).float(), y)
            loss.backward()
            opt.step()

        t = time.perf_counter()
        for _ in range(2):  # warm-up: cuDNN autotuning, and the compile itself
            step()
        sync(device)
        warm = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            times.append((time.perf_counter() - t) / steps)
        out[name] = (times, warm)
        del net, opt, run, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out, default


def pipeline(device: torch.device, hw, n: int, size: int, batch: int, seconds: float) -> dict[str, tuple[int, float]]:
    """images/s of what the trainer's DataLoader yields from the preprocessed cache ('light' augmentation,
    resize to ``size``, normalise), pinned on CUDA, for ``--workers auto`` and 0; the first epoch (worker
    start-up) is left out."""
    import gen

    from medzoo import cache as mzcache
    from medzoo import data as mzdata
    from medzoo import speed

    folder = gen.png_folder(f"png512_{n}", n, 512)
    src = mzcache.open_dataset(f"imagefolder:{folder}", preprocess={"size": 256, "channels": 1})
    tf = mzdata.build_transform(mzdata.TransformConfig(image_size=size, augment="light", in_chans=3), True)
    ds = mzdata.TorchDataset(src, "train", tf, 3)
    out = {}
    for label, w in (("auto", speed.workers("auto", hw)), ("0", 0)):
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=w,
                                             pin_memory=device.type == "cuda", persistent_workers=w > 0,
                                             drop_last=True)
        for _ in loader:  # epoch 1: worker start-up
            pass
        images, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds or images == 0:
            for xb, _ in loader:
                xb.to(device, non_blocking=True)
                images += len(xb)
        sync(device)
        out[label] = (w, images / (time.perf_counter() - t))
        del loader
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="toy sizes, to check the script (not a measurement)")
    ap.add_argument("--archs", default="swin_t,resnet50")
    ap.add_argument("--batch", type=int, default=None, help="default 64 (quick: 2)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: skipped, no CUDA device visible (for a check of the script on CPU: --device cpu --quick)")
        return
    quick = args.quick
    batch = args.batch or (2 if quick else 64)
    size = 64 if quick else 224
    steps, repeats = (1, 1) if quick else (10, 3)
    from medzoo import speed

    hw = speed.detect(device.type)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else common.cpu_model()
    common.header(f"GPU: demo chain, training throughput at {size} px batch {batch}, data pipeline ({name})"
                  + (" [--quick: toy sizes, figures meaningless]" if quick else ""))
    print(f"hardware: {hw.describe()}; --workers auto = {speed.workers('auto', hw)}; "
          f"--precision auto = {speed.precision('auto', hw)}")
    sys.stdout.flush()

    t0 = time.perf_counter()
    demo = demo_chain(device, quick)
    print(f"\n-- demo chain (`make demo`), {time.perf_counter() - t0:.0f} s")
    common.table(demo, ["chain", "train", "evaluate", "precision", "channels_last", "workers", "test"])

    rows, figures, model_ips = [], [], {}
    for arch in args.archs.split(","):
        res, default = throughput(arch, device, hw, batch, size, steps, repeats)
        fp32 = common.median(res["fp32"][0])
        ips = {n: batch / common.median(t) for n, (t, _) in res.items()}
        plain = {n: v for n, v in ips.items() if n in CONFIGS}
        fastest = max(plain, key=plain.get)
        for n, (t, warm) in res.items():
            mark = ("fastest " if n == fastest else "") + ("medzoo default" if n == default else "")
            rows.append([arch, n, rate(ips[n]), f"{fp32 / common.median(t):.2f}x", common.spread(t),
                         f"{warm:.1f} s", mark.strip()])
        model_ips[arch] = ips[default]
        figures.append((f"gpu_precision_default_{arch}", ips[default] / ips[fastest], ">=0.95",
                        {"default": default, "fastest": fastest}))
        figures.append((f"gpu_compile_{arch}", ips[f"{default}+compile"] / ips[default], "-", {"default": default}))
    print(f"\n-- training throughput, {size} px, batch {batch}")
    common.table(rows, ["arch", "config", "img/s", "vs fp32", "spread", "warm-up", ""])

    n_img = 32 if quick else 512
    pipe = pipeline(device, hw, n_img, size, batch, 1.0 if quick else 8.0)
    print(f"\n-- data pipeline from the cache ({n_img} PNG 512x512 cached at 256 px, "
          f"'light' augmentation to {size} px)")
    common.table([[f"--workers {k}", w, rate(v)] for k, (w, v) in pipe.items()],
                  ["loader", "workers", "img/s"])
    for arch, v in model_ips.items():
        figures.append((f"gpu_data_vs_model_{arch}", pipe["auto"][1] / v, ">=1",
                        {"loader_img_s": rate(pipe["auto"][1]), "model_img_s": rate(v)}))
    print(f"load at end: {common.load()}; {time.perf_counter() - t0:.0f} s in all")
    for fig, value, target, extra in figures:
        print(common.ratio(fig, value, target, device=device.type, quick=quick, **extra))


if __name__ == "__main__":
    main()
