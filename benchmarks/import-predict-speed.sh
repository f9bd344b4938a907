#!/usr/bin/env bash
# An imported Swin-UMamba predicts a real CT: `segmenter predict` against nnU-Net v2's own
# predictor running upstream's PyTorch network (mamba-ssm's kernel replaced by the fast blocked CPU
# scan of ../shared/reference/pytorch-scan), same checkpoint, same windows (Gaussian, step 0.5, no
# mirroring), same thread count, one after the other on an idle machine.
#
#   benchmarks/import-predict-speed.sh [UPSTREAM_SwinUMamba.py] > benchmarks/results/import-predict-speed.jsonl
#
# UPSTREAM_SwinUMamba.py: `swin_umamba/nnunetv2/nets/SwinUMamba.py` of JiarunLiu/Swin-UMamba (not
# in this repository; default /tmp/upstream/SwinUMamba.py). PYTHON: a Python with torch, numpy,
# monai, einops, nibabel and nnunetv2 (default /work/venv/bin/python). The network is full size
# (about 60 M parameters, seeded random weights), 14 classes; the case is the TotalSegmentator
# example CT; see benchmarks/import-predict-speed.py for the plan. Our row is the whole
# `segmenter predict` process (reading the model included); nnU-Net's is the predictor call, after
# its model is built (Python's import and build time is not counted). Peak memory is each
# process's maximum resident set.
set -euo pipefail
cd "$(dirname "$0")/.."
upstream=${1:-/tmp/upstream/SwinUMamba.py}
python=${PYTHON:-/work/venv/bin/python}
threads=${THREADS:-2}
bin=${BIN:-target/release/segmenter}
[ -x "$bin" ] || { echo "error: $bin not found; run cargo build --release first" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$python" benchmarks/import-predict-speed.py --stage make --out "$dir" --upstream "$upstream"
"$bin" import swin-umamba --checkpoint "$dir/checkpoint_final.pth" --plans "$dir/nnUNetPlans.json" \
  --dataset-json "$dir/dataset.json" --configuration 2d --out "$dir/run" >&2
RAYON_NUM_THREADS=$threads /usr/bin/time -f '%e %M' -o "$dir/time" \
  "$bin" predict --model "$dir/run" --input "$dir/cases" --output "$dir/ours" >&2
read -r seconds kib < "$dir/time"
echo "{\"suite\":\"ours\",\"predict_s\":$seconds,\"peak_rss_mib\":$((kib / 1024)),\"threads\":$threads,\"version\":\"$("$bin" --version | cut -d' ' -f2)\"}"
# nnU-Net prints its progress on stdout: only the JSON line goes to ours.
"$python" benchmarks/import-predict-speed.py --stage nnunet --out "$dir" --upstream "$upstream" \
  --threads "$threads" | tee /dev/stderr | grep '^{'

"$python" benchmarks/import-predict-speed.py --stage compare --out "$dir"
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores" >&2
