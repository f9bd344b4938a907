#!/usr/bin/env bash
# Our DICOM series reader against dcm2niix on the same synthetic series (written with dicom-rs by
# io/tests/dicom_fixtures): oblique CT with rescale, sagittal MR whose slices run against the
# normal, axial CT with decreasing positions, enhanced multi-frame CT. Both volumes are brought to
# the closest canonical orientation; voxels must be equal and the affines agree to 1e-3 mm.
#
#   benchmarks/dicom-vs-dcm2niix.sh > benchmarks/results/dicom-vs-dcm2niix.md
#
# Needs: dcm2niix on PATH (`apt-get install dcm2niix`); no Python, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dcm2niix >/dev/null || { echo "error: dcm2niix not found (apt-get install dcm2niix)" >&2; exit 1; }

echo "# DICOM series: segmenter-io against dcm2niix"
echo
echo "Command: \`benchmarks/dicom-vs-dcm2niix.sh\` ($(date -u +%Y-%m-%d), $(uname -m), commit $(git rev-parse --short HEAD))."
echo "Test: \`cargo test -p segmenter-io --test dicom_dcm2niix -- --nocapture\`; voxels compared exactly,"
echo "affines element by element, both in the closest canonical (RAS+) orientation."
echo
cargo test -q -p segmenter-io --test dicom_dcm2niix -- --nocapture 2>/dev/null \
    | grep -E '^(\||dcm2niix:)' | sed 's/^dcm2niix: \(.*\)/dcm2niix: `\1`\n/'
echo
echo "The enhanced fixture carries SliceThickness and SpacingBetweenSlices in its Pixel Measures"
echo "functional group, as scanners write them: without them this dcm2niix gave the slice axis a"
echo "length of 1 mm instead of the 1.25 mm between the frames' positions (0.25 mm off), while our"
echo "reader takes the slice axis from the positions."
