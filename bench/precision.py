"""Figure 4: training throughput by precision and memory layout on CPU: fp32, channels_last, bf16
autocast, and both, for resnet50 and swin_t (224 px), each step what the trainer runs (AdamW,
cross-entropy, autocast around the forward); and whether medzoo's defaults (``--precision auto``,
channels_last auto) pick the fastest of them. bf16 autocast keeps fp32 master weights and optimizer
state, so all four are numerically safe for training here (fp16, which needs a loss scaler, is not
used on CPU); the table also shows each one's first-step loss against fp32's.
"""

from __future__ import annotations

import argparse
import os

import common
import torch

CONFIGS = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True),
           "channels_last+bf16": (True, True)}


def medzoo_default(arch: str, hw) -> str:
    """What ``--precision auto`` and channels_last auto pick for this arch on this machine (the trainer's rule)."""
    from medzoo import speed
    from medzoo.registry import registry

    precision = speed.precision("auto", hw)
    cl = speed.channels_last(None, hw, precision, not registry().resolve("archs", arch).spec.channels_last)
    return {(False, False): "fp32", (True, False): "channels_last", (False, True): "bf16",
            (True, True): "channels_last+bf16"}[(cl, precision == "bf16")]


def cpu_line(hw) -> str:
    """The CPU facts the defaults are decided from, and any ISA cap set in the environment (an emulated CPU)."""
    caps = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
            if k in os.environ}
    return (f"cpu capability {hw.cpu_capability} ({hw.cpu_arch}), oneDNN bf16 {hw.mkldnn_bf16}, bf16 instructions "
            f"{hw.bf16_instructions}: native bf16 {'yes' if hw.cpu_bf16_native else 'no'}"
            + (f"; ISA capped by {caps}" if caps else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet50,swin_t")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    common.header(f"precision/layout: training images/s, batch {args.batch}, 224 px")
    from medzoo import models
    from medzoo import speed as mzspeed

    hw = mzspeed.detect("cpu")
    print(cpu_line(hw))

    rows, figures = [], []
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        base = models.create_model(arch, num_classes=2)
        state = {k: v.clone() for k, v in base.state_dict().items()}
        x = torch.randn(args.batch, 3, 224, 224)
        y = torch.randint(0, 2, (args.batch,))
        crit = torch.nn.CrossEntropyLoss()
        nets, first_loss = {}, {}
        for name, (cl, bf16) in CONFIGS.items():
            net = models.create_model(arch, num_classes=2)
            net.load_state_dict(state)
            net.train()
            if cl:
                net.to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            xin = x.contiguous(memory_format=torch.channels_last) if cl else x
            nets[name] = (net, opt, xin, bf16)

        def step(name):
            net, opt, xin, bf16 = nets[name]

            def run():
                if name not in first_loss:
                    torch.manual_seed(0)  # the same drop-path draws (swin_t) for the loss comparison
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = crit(net(xin).float(), y)
                loss.backward()
                opt.step()
                first_loss.setdefault(name, loss.item())
            return run

        runs = common.alternate({name: step(name) for name in CONFIGS}, args.repeats)
        fp32 = common.median(runs["fp32"])
        speed = {n: fp32 / common.median(t) for n, t in runs.items()}
        fastest = max(speed, key=speed.get)
        default = medzoo_default(arch, hw)
        for n, t in runs.items():
            rel = abs(first_loss[n] - first_loss["fp32"]) / abs(first_loss["fp32"])
            mark = ("fastest " if n == fastest else "") + ("medzoo default" if n == default else "")
            rows.append([arch, n, f"{args.batch / common.median(t):.1f}", f"{speed[n]:.2f}x", common.spread(t),
                         f"{rel:.1e}", mark.strip()])
        figures.append((arch, speed[default], speed[fastest], default, fastest))
    common.table(rows, ["arch", "config", "img/s", "vs fp32", "spread", "loss vs fp32", ""])
    print(f"load at end: {common.load()}")
    for arch, d, f, default, fastest in figures:
        # the default's throughput as a fraction of the fastest safe configuration's (1.0: it is the fastest)
        print(common.ratio(f"precision_default_{arch}", d / f, ">=0.95", default=default, fastest=fastest,
                           default_vs_fp32=f"{d:.2f}", cpu=hw.cpu_capability,
                           native_bf16="yes" if hw.cpu_bf16_native else "no"))


if __name__ == "__main__":
    main()
