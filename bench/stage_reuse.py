"""Figure 6: stage reuse. After ``train resnet18 --stages scratch,phantom_agg,T1``, the chain
``--stages scratch,phantom_agg,T2`` reuses the stored phantom_agg stage and trains only T2; it is timed
against training T2 alone from that stored checkpoint (``--stages <phantom_agg checkpoint>,T2``), what a
user would otherwise run. T1 and T2 are the phantom_lesion task with different seeds (two stages with
different identities). Both in one warm process through ``medzoo.train``; T2's checkpoint is deleted
after each run so every run trains it.
"""

from __future__ import annotations

import argparse
import shutil
import time

import common

COMMON = ["image_size=32", "batch_size=32"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    common.header("stage reuse: chain with a stored middle stage vs training the last stage alone (resnet18)")
    common.fresh_home("reuse")
    import medzoo
    import medzoo.stage

    # the setup before T2 trains (planning, opening datasets, the reuse check, loading weights) is what reuse
    # can cost; T2's own training is the same work in both paths, and on 2 shared cores its noise dominates
    setup, started = {}, []
    train_stage = medzoo.stage.StageTrainer.run

    def timed_run(self):
        started.append(time.perf_counter())
        return train_stage(self)

    medzoo.stage.StageTrainer.run = timed_run

    lesion = [f"phantom_lesion.{o}" for o in COMMON + [f"epochs={args.epochs}"]]
    agg = [f"phantom_agg.{o}" for o in COMMON + ["epochs=1"]]
    first = medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion", overrides=agg + lesion, precision="fp32")
    stored = first[0].name
    t2 = lesion + ["phantom_lesion.seed=1"]
    reused = []

    def chain():
        t0 = time.perf_counter()
        res = medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion", overrides=agg + t2, precision="fp32")
        assert res[0].reused and not res[1].reused
        reused.append(res[0].reused)
        setup.setdefault("chain", []).append(started[-1] - t0)
        shutil.rmtree(res[1].path)

    def alone():
        t0 = time.perf_counter()
        res = medzoo.train("resnet18", f"{stored},phantom_lesion", overrides=t2, precision="fp32")
        assert len(res) == 1 and not res[0].reused
        setup.setdefault("alone", []).append(started[-1] - t0)
        shutil.rmtree(res[0].path)

    runs = common.alternate({"T2 alone": alone, "chain (reuse + T2)": chain}, args.repeats)
    base = common.median(runs["T2 alone"])
    rows = [[n, f"{common.median(t):.2f} s", f"{common.median(t) / base:.3f}x", common.spread(t), len(t)]
            for n, t in runs.items()]
    common.table(rows, ["run", "median", "vs T2 alone", "spread", "runs"])
    print(f"T2: phantom_lesion, {args.epochs} epoch(s) at 32 px; the chain reused '{stored}' every time")
    chain_setup, alone_setup = common.median(setup["chain"]), common.median(setup["alone"])
    print(f"setup before T2 trains (median): chain {chain_setup:.3f} s, T2 alone {alone_setup:.3f} s, "
          f"difference {chain_setup - alone_setup:+.3f} s")
    print(f"load at end: {common.load()}")
    print(common.ratio("stage_reuse", common.median(runs["chain (reuse + T2)"]) / base, "<=1.1"))
    print(common.ratio("stage_reuse_setup_seconds", chain_setup - alone_setup, "info"))


if __name__ == "__main__":
    main()
