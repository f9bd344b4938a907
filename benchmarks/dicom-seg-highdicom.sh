#!/usr/bin/env bash
# A DICOM SEG written by segmenter-io, read by pydicom and highdicom as other tools will: the
# io test `a_dicom_seg_reads_back_with_its_segments_references_and_frames` writes a synthetic
# oblique CT series and a SEG of a two-label map; check_seg.py parses the SEG with highdicom and
# compares its masks, references and positions with the label map and the source files.
#
#   benchmarks/dicom-seg-highdicom.sh > benchmarks/results/dicom-seg-highdicom.md
#
# Needs: a Python with highdicom (`python3 -m venv /work/venv-dicom &&
# /work/venv-dicom/bin/pip install highdicom`), set as PYTHON. CI runs only the Rust round trip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/work/venv-dicom/bin/python}
"$PY" -c 'import highdicom' 2>/dev/null || { echo "error: $PY lacks highdicom" >&2; exit 1; }
export_dir=$(mktemp -d)
trap 'rm -rf "$export_dir"' EXIT
DICOM_SEG_EXPORT="$export_dir" cargo test -q -p segmenter-io --test dicom a_dicom_seg_reads_back >/dev/null 2>&1
echo "# DICOM SEG: segmenter-io's output read by highdicom"
echo
echo "Command: \`benchmarks/dicom-seg-highdicom.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD));"
echo "checker: [\`benchmarks/dicom-seg/check_seg.py\`](../dicom-seg/check_seg.py). Series: 6-slice oblique CT"
echo "(5 x 4 pixels); label map: liver on slices 1-2, spleen on slices 2 and 4 (4 frames)."
echo
"$PY" benchmarks/dicom-seg/check_seg.py "$export_dir"
