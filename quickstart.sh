#!/usr/bin/env bash
# Quickstart: build, train the `tiny` preset briefly on the sample hippocampus MRI (CPU), predict the
# four held-out cases and print their Dice report. Outputs go to a new folder under runs/.
set -euo pipefail
cd "$(dirname "$0")"

minutes="${QUICKSTART_MINUTES:-3}"
cargo build --release --bin segmenter
bin=target/release/segmenter
run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"

# Two data-parallel replicas use two or more cores better than one model on all of them.
replicas=1
[ "$(nproc 2>/dev/null || echo 1)" -ge 2 ] && replicas=2

"$bin" train --data sample-data/hippocampus --out "$run/model" --preset tiny --time-budget-min "$minutes" \
  --replicas "$replicas"
"$bin" predict --model "$run/model" --input sample-data/hippocampus/imagesTs --output "$run/predictions"
"$bin" evaluate --pred "$run/predictions" --ref sample-data/hippocampus/labelsTs \
  --dataset-json sample-data/hippocampus/dataset.json --out "$run/report"
echo "Everything is in $run (model/, predictions/, report/report.html with summary.json)."
