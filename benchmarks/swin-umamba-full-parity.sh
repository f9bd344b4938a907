#!/usr/bin/env bash
# Full-size parity of our `swin-umamba` network with upstream Swin-UMamba's own PyTorch network
# (about 60 M parameters): random weights made by upstream's code load into ours (from .pth and
# .safetensors), give the same four deep-supervision logits, and export back unchanged.
#
#   benchmarks/swin-umamba-full-parity.sh UPSTREAM_SwinUMamba.py [PYTHON]
#
# UPSTREAM_SwinUMamba.py: `swin_umamba/nnunetv2/nets/SwinUMamba.py` of JiarunLiu/Swin-UMamba
# (not in this repository). PYTHON: a Python with torch, numpy, safetensors, monai and einops
# (default /work/venv/bin/python). Results: benchmarks/results/swin-umamba-full-parity.md.
set -euo pipefail
cd "$(dirname "$0")/.."
upstream=${1:?usage: $0 UPSTREAM_SwinUMamba.py [PYTHON]}
python=${2:-/work/venv/bin/python}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$python" benchmarks/swin-umamba-full-parity.py --upstream "$upstream" --out "$dir"
SEGMENTER_PARITY_DIR="$dir" cargo test --release -p segmenter --test swin_umamba_weights \
  -- --ignored --nocapture full_size 2>&1 | grep -E "max|parameters|test result|panicked"
