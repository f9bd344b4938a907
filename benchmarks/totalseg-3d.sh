#!/usr/bin/env bash
# The TotalSegmentator example CT (118 classes) trained and predicted in 3D and in 2D, each for
# the same short time budget: peak memory (resident set, GNU time) of training and prediction,
# and seconds per training step from the run's log.
#   benchmarks/totalseg-3d.sh [BINARY] [MINUTES]     (default target/release/segmenter, 5)
# The CT is one subject and its labels are TotalSegmentator's own outputs, so this shows that the
# 3D path runs at this class count and what it costs, not accuracy. Training needs two cases, so
# the dataset is the same scan twice (ct_001 trains, its copy ct_002 validates). Prints one line per configuration; the run folders stay in $WORK
# (default a fresh temporary folder) for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/segmenter}")
minutes=${2:-5}
src=../shared/data/totalseg-example
[ -f "$src/example_ct_sm.nii.gz" ] || { echo "$src/example_ct_sm.nii.gz is not here" >&2; exit 2; }
work=${WORK:-$(mktemp -d)}
data=$work/totalseg-ct
mkdir -p "$data/imagesTr" "$data/labelsTr"
cp "$src/example_ct_sm.nii.gz" "$data/imagesTr/ct_001.nii.gz"
cp "$src/example_seg.nii.gz" "$data/labelsTr/ct_001.nii.gz"
cp "$src/example_ct_sm.nii.gz" "$data/imagesTr/ct_002.nii.gz"
cp "$src/example_seg.nii.gz" "$data/labelsTr/ct_002.nii.gz"
python3 - "$src/labels.json" "$data/dataset.json" <<'EOF'
import json, sys
names = json.load(open(sys.argv[1]))["ct_labels"]
labels = {"0": "background", **{k: v for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}}
json.dump({
    "name": "TotalSegmentator example CT",
    "modality": {"0": "CT"},
    "labels": labels,
    "numTraining": 2,
    "training": [{"image": f"./imagesTr/ct_00{i}.nii.gz", "label": f"./labelsTr/ct_00{i}.nii.gz"}
                 for i in (1, 2)],
}, open(sys.argv[2], "w"), indent=1)
EOF

peak_mib() { awk '/Maximum resident set size/ {printf "%.0f", $NF / 1024}' "$1"; }

echo "binary $bin, budget $minutes min per configuration, $(nproc) cores, work folder $work"
for conf in 2d 3d; do
  run=$work/run-$conf
  rm -rf "$run" "$work/pred-$conf"
  /usr/bin/time -v "$bin" train --data "$data" --out "$run" --configuration "$conf" \
    --time-budget-min "$minutes" >"$work/train-$conf.log" 2>"$work/train-$conf.time" \
    || { tail -20 "$work/train-$conf.time" >&2; exit 1; }
  /usr/bin/time -v "$bin" predict --model "$run" --input "$data/imagesTr" \
    --output "$work/pred-$conf" >"$work/predict-$conf.log" 2>"$work/predict-$conf.time" \
    || { tail -20 "$work/predict-$conf.time" >&2; exit 1; }
  python3 - "$run" "$conf" "$(peak_mib "$work/train-$conf.time")" \
    "$(peak_mib "$work/predict-$conf.time")" <<'EOF'
import json, re, sys
run, conf, train_mib, predict_mib = sys.argv[1:]
log = [json.loads(l) for l in open(f"{run}/log.jsonl")]
plan = json.load(open(f"{run}/plan.json"))
steps, seconds = log[-1]["step"], log[-1]["elapsed_s"]
# Seconds per step from the end of the first logged epoch to the end (start-up left out), or
# over the whole run when it ended inside its first epoch.
first = log[0]
if len(log) > 1:
    per_step = (seconds - first["elapsed_s"]) / max(1, steps - first["step"])
else:
    per_step = seconds / max(1, steps)
patch = plan["volumetric"]["patch_size"] if conf == "3d" else plan["patch_size"]
batch = int(re.search(r"^batch_size = (\d+)", open(f"{run}/config.toml").read(), re.M)[1])
voxels = batch
for side in patch:
    voxels *= side
print(json.dumps({
    "configuration": conf, "patch": patch, "batch": batch, "voxels_per_step": voxels, "steps": steps, "train_s": round(seconds, 1),
    "s_per_step": round(per_step, 3), "train_peak_mib": int(train_mib),
    "predict_peak_mib": int(predict_mib)
}))
EOF
done
