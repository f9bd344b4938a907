#!/usr/bin/env bash
# Side by side on one machine: our network (`segmenter bench step --forward`) against upstream
# Swin-UMamba's own PyTorch network with the fast CPU scan of ../shared/reference/pytorch-scan
# (benchmarks/swin-umamba-vs-pytorch.py), same presets' widths, same batch and patch, same thread
# count: a training step without the optimiser (forward + backward of Dice + CE on the logits)
# and the no-grad forward. Run it on an idle machine; it prints JSON lines, then a ratio table.
#
#   benchmarks/swin-umamba-vs-pytorch.sh UPSTREAM_SwinUMamba.py > benchmarks/results/swin-umamba-vs-pytorch.jsonl
#
# UPSTREAM_SwinUMamba.py is `swin_umamba/nnunetv2/nets/SwinUMamba.py` of JiarunLiu/Swin-UMamba.
# Needs a release build and a Python with torch, numpy, monai and einops (PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM=${1:?usage: $0 UPSTREAM_SwinUMamba.py}
PY=${PYTHON:-/work/venv/bin/python}
BIN=${BIN:-target/release/segmenter}
PRESETS=${PRESETS:-tiny swin-umamba}
PATCHES=${PATCHES:-64 128}
BATCH=${BATCH:-2}
RUNS=${RUNS:-3}
THREADS=${THREADS:-2}
[ -x "$BIN" ] || { echo "error: $BIN not found; run cargo build --release first" >&2; exit 1; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for preset in $PRESETS; do
  for patch in $PATCHES; do
    RAYON_NUM_THREADS=$THREADS "$BIN" bench step --preset "$preset" --batch "$BATCH" \
        --patch "$patch" --runs "$RUNS" --forward --json \
      | grep -E '"bench":"(step|forward)"' | sed 's/^{/{"suite":"ours",/' | tee -a "$tmp"
    "$PY" benchmarks/swin-umamba-vs-pytorch.py --upstream "$UPSTREAM" --preset "$preset" \
        --batch "$BATCH" --patch "$patch" --runs "$RUNS" --threads "$THREADS" | tee -a "$tmp"
  done
done
"$PY" - "$tmp" "$("$BIN" bench step --help >/dev/null; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" >&2 <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n{sys.argv[2].strip()}; ratios are PyTorch time / our time (above 1: we are faster)")
print(f"{'preset':<12} {'batch x patch':<14} {'what':<8} {'ours ms':>9} {'PyTorch ms':>11} {'speed':>7}")
for r in rows:
    if r["suite"] != "ours":
        continue
    bench = "step" if r["bench"] == "step" else "forward"
    for q in rows:
        if q["suite"] == "pytorch" and q["bench"] == bench and q["preset"] == r["preset"] \
                and q["batch"] == r["batch"] and q["patch"] == r["patch"]:
            print(f"{r['preset']:<12} {str(r['batch'])+' x '+str(r['patch'])+'²':<14} {bench:<8} "
                  f"{r['ms_median']:>9.1f} {q['ms_median']:>11.1f} {q['ms_median']/r['ms_median']:>6.2f}x")
PYEOF
