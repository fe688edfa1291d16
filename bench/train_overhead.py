"""Figure 1: medzoo's stage trainer vs a bare PyTorch loop: same timm resnet18 at 128 px, batch 32, the
same in-memory batches, the same optimizer (AdamW), fp32, NCHW.

medzoo's side is ``StageTrainer._train_epoch``, the loop ``medzoo train`` runs (progress bar, autocast
context, grad scaler, scheduler step, loss bookkeeping, frozen-BatchNorm handling), fed from a list of
batches instead of its DataLoader so only the loop is compared. Its per-epoch bookkeeping (the resumable
state written after every epoch) is timed separately and reported in absolute terms.
"""

from __future__ import annotations

import argparse
import time

import common
import torch

STEPS = 2


class Batches:
    """An in-memory 'loader' with what the trainer asks of one."""

    sampler = None

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--steps", type=int, default=STEPS)
    args = ap.parse_args()
    common.header("trainer overhead: medzoo StageTrainer._train_epoch vs a bare loop (resnet18, 128 px, batch 32)")
    common.fresh_home("overhead")
    import timm

    from medzoo import data as mzdata
    from medzoo import recipe as mzrecipe
    from medzoo import store
    from medzoo.lineage import Lineage, SourceRecord
    from medzoo.registry import registry
    from medzoo.stage import Parent, Runtime, StageTrainer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 3, 128, 128, generator=g), torch.randint(0, 2, (32,), generator=g))
               for _ in range(args.steps)]

    source = mzdata.open_dataset("phantom_lesion")  # only gives the trainer its classes; never read here
    recipe = mzrecipe.resolve("phantom_lesion", {}, {}, {"phantom_lesion": {"image_size": 128, "batch_size": 32,
                                                                            "freeze": "full", "augment": "none"}},
                              ["phantom_lesion"])
    arch = registry().resolve("archs", "resnet18")
    parent = Parent("resnet18", "resnet18", None, "scratch", None,
                    Lineage(arch="resnet18", source=SourceRecord(name="scratch")), "scratch")
    trainer = StageTrainer(arch, parent, "phantom_lesion", source, recipe,
                           Runtime(precision="fp32", channels_last=False), "bench", "0" * 64)
    trainer.gen = torch.Generator()
    trainer.train_loader = Batches(batches)
    opt_m = trainer._optimizer(trainer._apply_policy(0))
    sched = trainer._scheduler(opt_m, len(batches))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    crit_m = trainer._criterion()
    amp, _ = trainer._precision()
    assert amp is None and not trainer._channels_last()

    # the bare loop a user would write: same architecture (timm), same optimizer and loss
    bare = timm.create_model("resnet18", num_classes=2)
    bare.load_state_dict(trainer.model.state_dict())
    opt_b = torch.optim.AdamW(bare.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    crit_b = torch.nn.CrossEntropyLoss()

    def bare_epoch():
        bare.train()
        for x, y in batches:
            opt_b.zero_grad(set_to_none=True)
            loss = crit_b(bare(x), y)
            loss.backward()
            opt_b.step()

    epoch = [0]

    def medzoo_epoch():
        trainer._train_epoch(trainer.model, opt_m, sched, scaler, crit_m, amp, False, epoch[0] % recipe["epochs"])
        epoch[0] += 1

    runs = common.alternate({"bare loop": bare_epoch, "medzoo": medzoo_epoch}, args.repeats)
    # per-epoch bookkeeping: what run() writes after each epoch so a killed stage resumes
    state_file = store.runs_dir() / "bench" / "last.safetensors"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    store.save_state(state_file, {"key": "x", "epoch": 0, "model": trainer.model.state_dict(),
                                  "optimizer": opt_m.state_dict(), "scheduler": sched.state_dict(),
                                  "scaler": scaler.state_dict(), "rng": {}, "history": [], "best": {}, "bad": 0})
    save_s = time.perf_counter() - t
    rows = []
    for name, xs in runs.items():
        step = common.median(xs) / args.steps
        rows.append([name, f"{step * 1000:.0f} ms", f"{32 / step:.1f}", common.spread(xs), len(xs)])
    common.table(rows, ["loop", "per step", "img/s", "spread", "runs"])
    r = common.median(runs["medzoo"]) / common.median(runs["bare loop"])
    paired = common.median([m / b for m, b in zip(runs["medzoo"], runs["bare loop"])])
    step_s = common.median(runs["bare loop"]) / args.steps
    print(f"paired ratio (median of per-round ratios): {paired:.3f}")
    print(f"per-epoch resumable-state save (model+AdamW state, {state_file.stat().st_size / 1e6:.0f} MB): "
          f"{save_s:.2f} s = {save_s / step_s:.1f} training steps; for a 300-step epoch "
          f"{100 * save_s / (300 * step_s):.1f}% of the epoch")
    print(f"load at end: {common.load()}")
    print(common.ratio("trainer_overhead", r, "<=1.05"))


if __name__ == "__main__":
    main()
