#!/usr/bin/env bash
# Same seed, same data, two builds: are training and the predictions byte-identical?
# Used to show that a refactoring changed no behaviour:
#   git worktree add /tmp/before OLD_COMMIT && (cd /tmp/before && cargo build --release --bin segmenter)
#   cargo build --release --bin segmenter
#   benchmarks/identical-predictions.sh /tmp/before/target/release/segmenter target/release/segmenter
# Each binary trains the `tiny` preset for 2 epochs of 4 steps on sample-data/hippocampus (seed 7),
# once plain and once 2.5D, then predicts the held-out scans with and without --tta and with
# --save-probabilities, and compares every label map and probability map, the run's plan, split
# and config, and its log without the wall-clock column (losses and validation Dice to the last
# digit). model.mpk itself is not compared: burn gives every parameter a random id, stored with
# the weights, so two runs of the same binary differ there; the float32 probabilities of the
# trained network stand for its weights. The new binary also predicts with the old binary's run
# folders, which must give the old label maps. Exits non-zero when anything differs.
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
  mkdir -p "$out"
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

# The run folders stay readable: the new binary predicts with the old binary's runs and must
# write the old binary's label maps.
for variant in plain context; do
  "$after" predict --model "$work/before/$variant/run" --input "$data/imagesTs" \
    --output "$work/old-run-$variant" >/dev/null 2>&1
  for f in "$work/before/$variant/pred/"*.nii.gz; do
    cmp -s "$f" "$work/old-run-$variant/$(basename "$f")" \
      || { echo "differs: $variant/pred/$(basename "$f") from the old run folder"; exit 1; }
  done
done
echo "old run folders: the new binary predicts the same label maps from them"

# The log without its wall-clock column.
for side in before after; do
  find "$work/$side" -name log.jsonl | while read -r log; do
    sed -E 's/"elapsed_s":[^,]*,//' "$log" >"${log%.jsonl}.steps.jsonl"
  done
done
list() {
  (cd "$1" && find . -type f \( -name '*.nii.gz' -o -name plan.json -o -name splits.json \
    -o -name config.toml -o -name log.steps.jsonl \) | sort)
}
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
