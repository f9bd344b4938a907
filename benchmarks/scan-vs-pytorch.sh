#!/usr/bin/env bash
# Side by side on one machine: our fused scan (`segmenter bench scan`, with its plain reference)
# and the PyTorch CPU scan in ../shared/reference/pytorch-scan, at 1 and 2 threads, same shape
# (B=2, K=4, E=192, N=16). Run it on an idle machine; it prints JSON lines and a ratio table.
#
#   PYTHON=/path/to/venv/bin/python benchmarks/scan-vs-pytorch.sh > benchmarks/results/scan-vs-pytorch.jsonl
#
# Needs: a release build (`cargo build --release`) and a Python with torch and numpy
# (`python3 -m venv .venv && .venv/bin/pip install torch numpy`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
REF=${REF:-../shared/reference/pytorch-scan}
BIN=${BIN:-target/release/segmenter}
LENGTHS=${LENGTHS:-1024 4096 16384}
RUNS=${RUNS:-5}
THREADS=${THREADS:-1 2}

"$PY" -c 'import torch, numpy' 2>/dev/null || {
    echo "error: $PY lacks torch or numpy; set PYTHON to a Python that has them" >&2
    exit 1
}
[ -x "$BIN" ] || { echo "error: $BIN not found; run cargo build --release first" >&2; exit 1; }

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for t in $THREADS; do
    # Alternate the two, so a drift in machine load shows up in both.
    "$BIN" bench scan --lengths "${LENGTHS// /,}" --runs "$RUNS" --threads "$t" --json \
        | sed "s/^{/{\"suite\":\"rust\",/" | tee -a "$tmp"
    # shellcheck disable=SC2086
    "$PY" "$REF/bench.py" --threads "$t" --runs "$RUNS" --lengths $LENGTHS --skip-net \
        | grep '^{' | sed "s/^{/{\"suite\":\"pytorch\",/" | tee -a "$tmp"
done

"$PY" - "$tmp" >&2 <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def ms(suite, impl, L, pas, t):
    for r in rows:
        if r.get("suite") != suite or r.get("threads") != t:
            continue
        if suite == "rust" and r.get("impl") == impl and r.get("L") == L and r.get("pass") == pas:
            return r["ms_median"]
        if suite == "pytorch" and r.get("L") == L and r.get("case") == {"fwd": "scan_fwd", "fwd_bwd": "scan_fwd_bwd"}[pas]:
            return r.get("median_ms")
    return None
# Which CPU and which kernel path the figures are for: the ratios depend on both.
for r in rows:
    if r.get("suite") == "rust" and r.get("impl") == "fused":
        print(f"cpu: {r.get('cpu', '?')}; fused kernel: {r.get('kernel_isa', '?')}")
        break
print(f"{'threads':>7} {'L':>6} {'pass':>8} {'fused ms':>9} {'pytorch ms':>10} {'ratio':>6} {'ref ms':>9} {'ratio':>6}")
for t in sorted({r["threads"] for r in rows if "threads" in r}):
    for L in sorted({r["L"] for r in rows if "L" in r}):
        for pas in ("fwd", "fwd_bwd"):
            f, p, n = ms("rust", "fused", L, pas, t), ms("pytorch", None, L, pas, t), ms("rust", "naive-f32-loop", L, pas, t)
            if f is None:
                continue
            # pytorch's "threads" is what it set; rows without one (its env line) never match.
            ratio = lambda x: f"{x / f:6.2f}" if x else "     -"
            print(f"{t:>7} {L:>6} {pas:>8} {f:9.1f} {p or float('nan'):10.1f} {ratio(p)} {n or float('nan'):9.1f} {ratio(n)}")
PYEOF
