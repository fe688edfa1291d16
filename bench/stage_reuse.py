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

    lesion = [f"phantom_lesion.{o}" for o in COMMON + [f"epochs={args.epochs}"]]
    agg = [f"phantom_agg.{o}" for o in COMMON + ["epochs=1"]]
    first = medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion", overrides=agg + lesion, precision="fp32")
    stored = first[0].name
    t2 = lesion + ["phantom_lesion.seed=1"]
    reused = []

    def chain():
        res = medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion", overrides=agg + t2, precision="fp32")
        assert res[0].reused and not res[1].reused
        reused.append(res[0].reused)
        shutil.rmtree(res[1].path)

    def alone():
        res = medzoo.train("resnet18", f"{stored},phantom_lesion", overrides=t2, precision="fp32")
        assert len(res) == 1 and not res[0].reused
        shutil.rmtree(res[0].path)

    runs = common.alternate({"T2 alone": alone, "chain (reuse + T2)": chain}, args.repeats)
    base = common.median(runs["T2 alone"])
    rows = [[n, f"{common.median(t):.2f} s", f"{common.median(t) / base:.3f}x", common.spread(t), len(t)]
            for n, t in runs.items()]
    common.table(rows, ["run", "median", "vs T2 alone", "spread", "runs"])
    print(f"T2: phantom_lesion, {args.epochs} epoch(s) at 32 px; the chain reused '{stored}' every time")
    print(f"load at end: {common.load()}")
    print(common.ratio("stage_reuse", common.median(runs["chain (reuse + T2)"]) / base, "<=1.1"))


if __name__ == "__main__":
    main()
