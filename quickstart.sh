#!/usr/bin/env bash
# Quickstart: build, train the `tiny` preset briefly on the sample hippocampus MRI (CPU), predict the
# four held-out cases and print their Dice report. Outputs go to a new folder under runs/.
set -euo pipefail
cd "$(dirname "$0")"

minutes="${QUICKSTART_MINUTES:-3}"
cargo build --release --bin segmenter
bin=target/release/segmenter
run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"

# No other flags: train's defaults are the recipe measured best on a CPU (2.5D input, and two
# data-parallel replicas on two or more cores).
"$bin" train --data sample-data/hippocampus --out "$run/model" --time-budget-min "$minutes"
"$bin" predict --model "$run/model" --input sample-data/hippocampus/imagesTs --output "$run/predictions"
"$bin" evaluate --pred "$run/predictions" --ref sample-data/hippocampus/labelsTs \
  --dataset-json sample-data/hippocampus/dataset.json --out "$run/report"
echo "Everything is in $run (model/, predictions/, report/report.html with summary.json)."
