#!/usr/bin/env bash
# Run every benchmark (7.5-11 minutes on 2 CPU cores: 446 s quiet, up to 11 minutes busy) and collect their RATIO lines.
# gpu.py runs on a CUDA machine and prints one "skipped" line elsewhere.
# Output: bench/results/latest.txt (full) and the RATIO summary at the end; docs/benchmarks.md quotes a run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$PWD/.venv/bin/python}
[ -x "$PY" ] || { make install; PY=$PWD/.venv/bin/python; }
# the benchmarks' own tools (scikit-image, pylibjpeg + openjpeg): the optional extra 'bench'
"$PY" -c "import skimage, pylibjpeg, openjpeg" 2>/dev/null || "$PY" -m pip install -q -e '.[bench]'
mkdir -p bench/results
out=bench/results/latest.txt
: > "$out"
start=$(date +%s)
for script in train_overhead data_pipeline cache_epochs precision load stage_reuse scale identity overlap gpu; do
    t=$(date +%s)
    (cd bench && "$PY" "$script.py" 2>&1 | grep -v -E '^\[|^$|^stage |^checkpoints in |^phantom|^resnet18\.' ) | tee -a "$out"
    echo "-- $script: $(( $(date +%s) - t )) s" | tee -a "$out"
done
echo "== all benchmarks: $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
grep '^RATIO' "$out"
