#!/usr/bin/env bash
# Checks the CubeCL selective-scan kernel against the CPU kernel on random inputs (forward and all
# seven gradients) and times it against the CPU kernel, on an NVIDIA GPU; writes the results to
# benchmarks/results/scan-gpu/ with the machine and the command.
#
#   benchmarks/gpu.sh                        build with --features cuda here (needs cargo; offline
#                                            once the crates are fetched), then run
#   benchmarks/gpu.sh --bin PATH             use a prebuilt `segmenter` (built elsewhere with
#                                            `cargo build --release -p segmenter --features cuda`);
#                                            the GPU machine needs no Rust toolchain and no network
#   benchmarks/gpu.sh --backend wgpu --bin target/release/segmenter
#                                            the same path on any Vulkan device, lavapipe included
#                                            (a binary built with --features wgpu)
#
# Other options: --lengths 1024,4096,16384  --runs 5  --out DIR  --check-only
# Exit status: non-zero when a build fails, a check exceeds its tolerance or the GPU is unusable.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="" backends="cuda-cube cuda" lengths="1024,4096,16384" runs=5 out="benchmarks/results/scan-gpu"
check_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --backend) backends="$2"; shift 2 ;;
    --lengths) lengths="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --check-only) check_only="--check-only"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$bin" ]; then
  if ! command -v cargo >/dev/null; then
    echo "gpu.sh: no cargo here; pass a prebuilt binary with --bin PATH" >&2
    exit 2
  fi
  features="cuda"
  case "$backends" in *wgpu*) features="wgpu" ;; esac
  cargo build --release -p segmenter --features "$features"
  bin="${CARGO_TARGET_DIR:-target}/release/segmenter"
fi
[ -x "$bin" ] || { echo "gpu.sh: '$bin' is not an executable segmenter binary" >&2; exit 2; }

mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
report="$out/$stamp.md"
{
  echo "# Selective scan, CubeCL kernel: check and timing ($stamp)"
  echo
  echo "- command: \`benchmarks/gpu.sh --backend '$backends' --lengths $lengths --runs $runs $check_only\`"
  echo "- binary: \`$bin\` ($("$bin" --version 2>/dev/null || echo unknown version))"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) logical cores"
  if command -v nvidia-smi >/dev/null; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  fi
  echo
} > "$report"

status=0
for backend in $backends; do
  jsonl="$out/$stamp-$backend.jsonl"
  echo "== $backend" | tee -a "$report"
  # Human-readable table on the terminal and in the report; JSON lines next to it.
  if ! "$bin" bench scan-kernel --backend "$backend" --lengths "$lengths" --runs "$runs" \
      $check_only | tee -a "$report"; then
    status=1
  fi
  "$bin" bench scan-kernel --backend "$backend" --lengths "$lengths" --runs "$runs" \
      $check_only --json > "$jsonl" || status=1
done
echo "gpu.sh: wrote $report and its .jsonl files (status $status)"
exit "$status"
