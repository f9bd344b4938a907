#!/usr/bin/env bash
# nnU-Net v2's own predictor against `segmenter predict` on the same Swin-UMamba checkpoint:
# `segmenter import swin-umamba` of the fixture checkpoint, then both predict synthetic
# 2-channel cases (one at the plan's spacing, one that nnU-Net resamples) with probabilities
# saved, no mirroring, step 0.5; prints the largest probability difference per case.
#
#   benchmarks/import-vs-nnunet.sh [UPSTREAM_SwinUMamba.py] [PYTHON]
#
# UPSTREAM_SwinUMamba.py: `swin_umamba/nnunetv2/nets/SwinUMamba.py` of JiarunLiu/Swin-UMamba
# (not in this repository; default /tmp/upstream/SwinUMamba.py). PYTHON: a Python with torch,
# numpy, safetensors, monai, einops, nibabel and nnunetv2 (default /work/venv/bin/python).
# Results: benchmarks/results/import-vs-nnunet.md. Exits 1 if the case at the plan's spacing
# differs by more than 1e-3.
set -euo pipefail
cd "$(dirname "$0")/.."
upstream=${1:-/tmp/upstream/SwinUMamba.py}
python=${2:-/work/venv/bin/python}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fixtures=tests/fixtures/swin-umamba
cargo build --release -p segmenter --quiet
segmenter=${CARGO_TARGET_DIR:-target}/release/segmenter
"$python" benchmarks/import-vs-nnunet.py --stage nnunet --out "$dir" --upstream "$upstream"
"$segmenter" import swin-umamba --checkpoint $fixtures/checkpoint_final.pth \
  --plans $fixtures/nnUNetPlans.json --dataset-json $fixtures/dataset.json \
  --configuration 2d --out "$dir/run"
"$segmenter" predict --model "$dir/run" --input "$dir/cases" --output "$dir/ours" --save-probabilities
"$python" benchmarks/import-vs-nnunet.py --stage compare --out "$dir"
