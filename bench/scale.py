"""Figure 7: building a medagg manifest at scale: ``build_medagg`` (what ``medzoo data build medagg`` runs)
from one MedMNIST-format source of N small grey images (28×28, stored at 32 px, 1 channel), for N = 10k,
30k and 100k: wall time and peak resident memory of the building process, and how both grow. Each build
runs in a fresh process (so its peak memory is its own); opening the npz (unpacking it to memory-mapped
.npy) is part of the build, as it is the first time a user builds. Generating the npz is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import common
import gen


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: since exec; getrusage's maxrss carries the parent's)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def child(n: int, out: str) -> None:
    common.fresh_home("scale")
    root = common.DATA / f"medmnist_{n}"
    if n:
        gen.medmnist_npz(root, n)
    import medzoo  # noqa: F401  (imports are outside the timed part, as they are in the baseline process)
    from medzoo_plugins.medagg_build import BuildConfig, build_medagg

    if n == 0:
        print("JSON " + json.dumps({"seconds": 0.0, "rss_mb": peak_rss_mb()}))
        return
    t = time.perf_counter()
    sheet = build_medagg(BuildConfig([("medmnist:pneumoniamnist", str(root))], __import__("pathlib").Path(out),
                                     size=32, channels=1))
    dt = time.perf_counter() - t
    print("JSON " + json.dumps({"seconds": dt, "images": sheet["images"],
                                "rss_mb": peak_rss_mb()}))


def run(n: int) -> dict:
    import shutil
    import tempfile

    out = tempfile.mkdtemp(prefix="medzoo-bench-medagg-")
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n), out], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("JSON ")]
    if proc.returncode or not line:
        sys.exit(f"medagg build of {n} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][5:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return child(int(args.child[0]), args.child[1])
    sizes = [int(x) for x in args.sizes.split(",")]
    common.header(f"scale: medagg build from {', '.join(f'{n:,}' for n in sizes)} small images")
    t = time.perf_counter()
    for n in sizes:
        gen.medmnist_npz(common.DATA / f"medmnist_{n}", n)
    print(f"(inputs generated in {time.perf_counter() - t:.1f} s, not timed below)")
    base = run(0)
    res = {n: run(n) for n in sizes}
    rows, prev = [], None
    for n, r in res.items():
        marginal = "-" if prev is None else f"{1024 * (r['rss_mb'] - res[prev]['rss_mb']) / (n - prev):.2f} KB"
        rows.append([f"{n:,}", r["images"], f"{r['seconds']:.1f} s", f"{1e3 * r['seconds'] / n:.3f} ms",
                     f"{r['rss_mb']:.0f} MB", marginal])
        prev = n
    common.table(rows, ["source images", "kept", "build", "per image", "peak RSS", "RSS per added image"])
    print(f"baseline process (imports only): {base['rss_mb']:.0f} MB peak RSS; images stored at 32x32x1 = 1 KB each "
          "in the memory-mapped images.npy, whose written pages count in RSS")
    lo, hi = sizes[0], sizes[-1]
    time_growth = (res[hi]["seconds"] / hi) / (res[lo]["seconds"] / lo)
    # memory above the imports per source image, at the largest size vs the smallest: <= 1 means it does not
    # grow per image (fixed costs, e.g. the datasheet's figure, weigh more at the small end)
    per = {n: (r["rss_mb"] - base["rss_mb"]) * 1024 / n for n, r in res.items()}
    mem_growth = per[hi] / per[lo]
    print("memory above imports per image: " + ", ".join(f"{n:,}: {v:.2f} KB" for n, v in per.items()))
    print(f"time per image at {hi:,} vs {lo:,}: {time_growth:.2f}x (1.0 = linear); memory per image: "
          f"{mem_growth:.2f}x (<= 1.0: flat per image, fixed costs amortised)")
    print(f"load at end: {common.load()}")
    print(common.ratio(f"scale_time_per_image_{hi // 1000}k_vs_{lo // 1000}k", time_growth, "<=1.2"))
    print(common.ratio(f"scale_memory_per_image_{hi // 1000}k_vs_{lo // 1000}k", mem_growth, "<=1.2"))


if __name__ == "__main__":
    main()
