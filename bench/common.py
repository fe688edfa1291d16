"""Shared helpers for the benchmark scripts: machine facts, alternated timing, tables, RATIO lines.

The machine is shared and noisy, so no figure here is an absolute time: each is a ratio of two things
measured in the same run, alternated (A, B, A, B, ...) with repeats, and summarised by medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MEDZOO_BENCH_DATA", BENCH / ".data"))  # generated inputs, reused between runs
RESULTS = BENCH / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict:
    import numpy
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "torch_threads": torch.get_num_threads()}
    for mod in ("timm", "monai", "cv2", "pydicom", "safetensors", "skimage"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    return info


def header(title: str) -> None:
    print(f"== {title}")
    m = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    print(f"load (1/5/15 min) at start: {load()}")
    sys.stdout.flush()


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each case once per round, rounds rotated (A,B,C / B,C,A / ...) so drift in the machine's load
    hits every case alike; returns seconds per case per round (warm-up rounds dropped)."""
    names = list(cases)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            dt = timed(cases[n])
            if r >= warmup:
                out[n].append(dt)
    return out


def median(xs) -> float:
    return statistics.median(xs)


def spread(xs) -> str:
    """min..max relative to the median, for the table."""
    m = median(xs)
    return f"{min(xs) / m:.2f}..{max(xs) / m:.2f}" if m else "-"


def table(rows: list[list[object]], head: list[str]) -> None:
    cells = [[str(c) for c in head]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def ratio(name: str, value: float, target: str, **extra) -> str:
    """The last line(s) of a script, one per figure; also appended to results/<script>.json."""
    line = f"RATIO {name}={value:.3f} target={target}"
    ok = _meets(value, target)
    line += f" met={'yes' if ok else 'no'} load={load()}"
    for k, v in extra.items():
        line += f" {k}={v}"
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "ratios.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "value": round(value, 4), "target": target, "met": ok, "load": load(),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}) + "\n")
    return line


def _meets(value: float, target: str) -> bool:
    if target.startswith("<="):
        return value <= float(target[2:])
    if target.startswith(">="):
        return value >= float(target[2:])
    return True


def fresh_home(prefix: str) -> Path:
    """A throw-away MEDZOO_HOME (store and caches) for this process."""
    import atexit
    import shutil

    home = Path(tempfile.mkdtemp(prefix=f"medzoo-bench-{prefix}-"))
    os.environ["MEDZOO_HOME"] = str(home)
    atexit.register(shutil.rmtree, home, True)  # checkpoints and caches: removed when the script ends
    return home
