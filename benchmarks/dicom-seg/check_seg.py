"""Reads a DICOM SEG written by segmenter-io the way other tools will (pydicom, then highdicom's
Segmentation parser, which checks the IOD's structure) and compares its masks with the label map
it was made from. Prints a Markdown report; exits non-zero on any disagreement.

    python check_seg.py EXPORT_DIR   # EXPORT_DIR from DICOM_SEG_EXPORT (see dicom-seg-highdicom.sh)
"""
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

export = Path(sys.argv[1])
ds = pydicom.dcmread(export / "seg.dcm")
seg = hd.seg.Segmentation.from_dataset(ds)
rows, cols = map(int, (export / "order.txt").read_text().split("\n")[0].split())
order = (export / "order.txt").read_text().split("\n")[1:]
order = [uid for uid in order if uid]
labels = np.fromfile(export / "labels.u8", dtype=np.uint8).reshape(len(order), rows, cols)
sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in (export / "series").iterdir()}

checks = []
def check(what, ok, detail=""):
    checks.append((what, bool(ok), detail))

check("pydicom reads it; SOP class is Segmentation Storage",
      ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4", str(ds.SOPClassUID))
check("highdicom parses it as a Segmentation", isinstance(seg, hd.seg.Segmentation),
      f"highdicom {hd.__version__}, pydicom {pydicom.__version__}")
check("segmentation type BINARY", seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY)
descriptions = [seg.get_segment_description(n) for n in seg.segment_numbers]
names = [d.segment_label for d in descriptions]
check("segments and labels", names == ["liver", "spleen"], f"{list(seg.segment_numbers)} {names}")
first = next(iter(sources.values()))
check("same Frame of Reference as the source",
      ds.FrameOfReferenceUID == first.FrameOfReferenceUID, ds.FrameOfReferenceUID)
check("same study, patient module copied",
      ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID)
check("fresh series and instance UIDs",
      ds.SeriesInstanceUID != first.SeriesInstanceUID and ds.SOPInstanceUID not in sources)
referenced = seg.get_source_image_uids()
check("references every source instance",
      sorted(uid for _, _, uid in referenced) == sorted(sources), f"{len(referenced)} instances")
pixels = seg.get_pixels_by_source_instance(
    source_sop_instance_uids=order, segment_numbers=[1, 2], assert_missing_frames_are_empty=True)
expected = np.stack([labels == 1, labels == 2], axis=-1)
check("masks by source instance equal the label map", pixels.shape == expected.shape
      and np.array_equal(pixels.astype(bool), expected), f"shape {pixels.shape}")
positions_ok = True
for frame in ds.PerFrameFunctionalGroupsSequence:
    src = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
    positions_ok &= np.allclose(pos, [float(v) for v in sources[src].ImagePositionPatient], atol=1e-4)
check("each frame's position is its source image's", positions_ok,
      f"{len(ds.PerFrameFunctionalGroupsSequence)} frames")

print(f"| check | result | detail |\n|---|---|---|")
for what, ok, detail in checks:
    print(f"| {what} | {'ok' if ok else 'FAILED'} | {detail} |")
sys.exit(0 if all(ok for _, ok, _ in checks) else 1)
