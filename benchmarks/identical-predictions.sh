#!/usr/bin/env bash
# Same seed, same data, two builds: are the trained weights and the predictions byte-identical?
# Used to show that a refactoring changed no behaviour:
#   git worktree add /tmp/before OLD_COMMIT && (cd /tmp/before && cargo build --release --bin segmenter)
#   cargo build --release --bin segmenter
#   benchmarks/identical-predictions.sh /tmp/before/target/release/segmenter target/release/segmenter
# Each binary trains the `tiny` preset for 2 epochs of 4 steps on sample-data/hippocampus (seed 7),
# once plain and once 2.5D, then predicts the held-out scans with and without --tta and with
# --save-probabilities. Exits non-zero when any file differs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
before=$(realpath "$1")
after=$(realpath "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=sample-data/hippocampus

run_one() { # binary, folder
  local bin=$1 out=$2
  for variant in plain context; do
    local extra=()
    [ "$variant" = context ] && extra=(--context-slices 1)
    "$bin" train --data "$data" --out "$out/$variant/run" --preset tiny --seed 7 \
      --epochs 2 --steps-per-epoch 4 "${extra[@]}" >"$out/$variant.train.log" 2>&1
    "$bin" predict --model "$out/$variant/run" --input "$data/imagesTs" \
      --output "$out/$variant/pred" >/dev/null 2>&1
    "$bin" predict --model "$out/$variant/run" --input "$data/imagesTs" \
      --output "$out/$variant/pred-tta" --tta --save-probabilities >/dev/null 2>&1
  done
}

run_one "$before" "$work/before"
run_one "$after" "$work/after"

# Weights and every prediction file; prediction.json names the model folder, so it is left out.
list() { (cd "$1" && find . -type f \( -name 'model.mpk' -o -name '*.nii.gz' \) | sort); }
diff <(list "$work/before") <(list "$work/after") >/dev/null || { echo "different file lists"; exit 1; }
same=0 differ=0
while read -r f; do
  if cmp -s "$work/before/$f" "$work/after/$f"; then
    same=$((same + 1))
  else
    differ=$((differ + 1)); echo "differs: $f"
  fi
done < <(list "$work/before")
echo "$same identical, $differ different"
[ "$differ" -eq 0 ]
