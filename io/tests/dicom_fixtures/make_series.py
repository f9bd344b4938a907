#!/usr/bin/env python3
"""Writes the pydicom DICOM fixtures of io/tests/dicom_pydicom.rs from the shared example scans.

Independent of our Rust writer: pydicom writes the files, numpy and nibabel cut the source scans.
Output (deterministic: fixed UIDs, dates and shuffling), under OUT (default: pydicom/ beside this
script):

- export/: a patient folder as a PACS leaves it, every DICOM file under an opaque name without
  extension, in nested folders, written in a shuffled order:
  - series 2, an oblique CT (rotated 20 degrees about z and 10 about x) whose stored values are
    (HU + 1024) * 2, read back through RescaleSlope 0.5 and RescaleIntercept -1024;
  - series 1, a scout (ImageType ORIGINAL\\PRIMARY\\LOCALIZER, one coronal slice);
  - series 5, an MR in LPS orientation (identity ImageOrientationPatient) whose slices are
    written top down: ImagePositionPatient steps against the slice normal, and InstanceNumber
    runs against the position order;
  - INFO, a stray text file.
- ct_oblique.nii.gz, mr_lps.nii.gz: what a reader must make of series 2 and 5, the cropped
  intensities (float32) with the voxel-to-RAS affine the DICOM geometry describes.
- ct_oblique_seg.dcm: a binary DICOM SEG of four organs on the CT (TotalSegmentator's
  example_seg.nii.gz, same crop), and ct_oblique_labels.nii.gz, the label map it stands for under
  the label values of SEG_DATASET_LABELS.

Run: python3 make_series.py [--source DIR] [--out DIR]
(DIR defaults: /work/shared/data/totalseg-example, or $SEGMENTER_SHARED_DATA/totalseg-example.)
"""

import argparse
import hashlib
import os
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

HERE = Path(__file__).resolve().parent
# The crops: x, y, z ranges of each source volume (small, so that the committed files stay small).
CT_CROP = (slice(40, 88), slice(30, 70), slice(8, 20))
MR_CROP = (slice(40, 80), slice(30, 62), slice(5, 15))
# RAS -> LPS: DICOM's patient coordinates negate x and y.
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
STUDY_UID = generate_uid(entropy_srcs=["segmenter pydicom fixture study"])
FRAME_OF_REFERENCE = generate_uid(entropy_srcs=["segmenter pydicom fixture frame of reference"])


def rotation(z_degrees, x_degrees):
    """A 3x3 rotation: about x, then about z."""
    a, b = np.radians(z_degrees), np.radians(x_degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def ds_text(values, digits):
    """Decimal strings (VR DS, at most 16 characters each) rounded to `digits` decimals."""
    out = []
    for v in values:
        s = f"{round(float(v), digits):.{digits}f}".rstrip("0").rstrip(".")
        s = "0" if s in ("-0", "") else s
        assert len(s) <= 16, s
        out.append(s)
    return out


def round_geometry(affine):
    """The voxel -> LPS affine as the DICOM strings will hold it (directions to 10 decimals,
    positions and spacings to 6), so that the reference affine is exactly what the files say."""
    lps = FLIP @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    dirs = lps[:3, :3] / spacing
    spacing = np.array([float(s) for s in ds_text(spacing, 6)])
    dirs = np.array([[float(s) for s in ds_text(col, 10)] for col in dirs.T]).T
    origin = np.array([float(s) for s in ds_text(lps[:3, 3], 6)])
    out = np.eye(4)
    out[:3, :3] = dirs * spacing
    out[:3, 3] = origin
    return out


def opaque_name(uid, k):
    """16 hex digits from the series and slice, no extension, as PACS exports name files."""
    return hashlib.sha1(f"{uid}/{k}".encode()).hexdigest()[:16].upper()


def base(series_uid, sop_class, instance_uid, number, description, modality):
    """Patient, study, series and frame-of-reference attributes shared by every slice."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    ds.PatientName = "Fixture^Pydicom"
    ds.PatientID = "PYDICOM01"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = STUDY_UID
    ds.StudyDate = "20250102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.Modality = modality
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def write_slices(out_dir, series_uid, sop_class, stack, lps, *, number, description, modality,
                 image_type, rescale, instance_numbers, rng):
    """Writes slice k of `stack` (x, y, z: x along a row) at lps @ (0, 0, k, 1), under opaque
    names in nested folders, in a shuffled order. `stack` holds the stored values."""
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    order = list(range(stack.shape[2]))
    rng.shuffle(order)
    for k in order:
        instance_uid = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds = base(series_uid, sop_class, instance_uid, number, description, modality)
        ds.ImageType = image_type
        ds.InstanceNumber = instance_numbers[k]
        ds.ImagePositionPatient = ds_text((lps @ [0, 0, k, 1])[:3], 6)
        ds.ImageOrientationPatient = ds_text(list(row_dir) + list(col_dir), 10)
        # PixelSpacing: between rows (the y step), then between columns (the x step).
        ds.PixelSpacing = ds_text([spacing[1], spacing[0]], 6)
        ds.SliceThickness = ds_text([spacing[2]], 6)[0]
        ds.Rows, ds.Columns = stack.shape[1], stack.shape[0]
        ds.PixelRepresentation = 1
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = (ds_text([v], 6)[0] for v in rescale)
            ds.RescaleType = "HU"
        # Rows run along y, columns along x: the slice transposed, column index fastest.
        ds.PixelData = np.ascontiguousarray(stack[:, :, k].T).astype("<i2").tobytes()
        sub = out_dir / f"DIR{k % 3:03d}" / f"SUB{k % 2:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        ds.save_as(sub / opaque_name(series_uid, k), enforce_file_format=True)


# The SEG's segments in their SegmentNumber order (1, 2, ...), with TotalSegmentator's label
# value for each; the dataset.json of the test numbers them otherwise (SEG_DATASET_LABELS).
SEG_SEGMENTS = [("liver", 5), ("kidney_left", 3), ("kidney_right", 2), ("gallbladder", 4)]
SEG_DATASET_LABELS = [("kidney_right", 2), ("kidney_left", 3), ("gallbladder", 4), ("liver", 5)]


def code_item(value, scheme, meaning):
    """A code sequence item."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_seg(path, series_uid, organs, lps, slices):
    """A binary DICOM SEG of SEG_SEGMENTS on the CT series: one frame per segment and slice that
    holds it, slices in decreasing order, each citing its CT instance and position."""
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    uid = generate_uid(entropy_srcs=["segmenter pydicom fixture SEG"])
    ds = base(generate_uid(entropy_srcs=["segmenter pydicom fixture SEG series"]),
              "1.2.840.10008.5.1.4.1.1.66.4", uid, 300, "TotalSegmentator organs", "SEG")
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.ContentLabel = "ORGANS"
    ds.SegmentationType = "BINARY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.Rows, ds.Columns = organs.shape[1], organs.shape[0]
    ds.LossyImageCompression = "00"
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = ds_text(list(row_dir) + list(col_dir), 10)
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = ds_text([spacing[1], spacing[0]], 6)
    measures.SliceThickness = ds_text([spacing[2]], 6)[0]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    segments, frames, masks = [], [], []
    for number, (name, value) in enumerate(SEG_SEGMENTS, start=1):
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = name
        item.SegmentAlgorithmType = "AUTOMATIC"
        item.SegmentAlgorithmName = "TotalSegmentator"
        item.SegmentedPropertyCategoryCodeSequence = [code_item("91723000", "SCT", "Anatomical Structure")]
        item.SegmentedPropertyTypeCodeSequence = [code_item("91723000", "SCT", "Anatomical Structure")]
        segments.append(item)
        for k in reversed(range(slices)):
            mask = organs[:, :, k] == value
            if not mask.any():
                continue
            source = Dataset()
            source.ReferencedSOPClassUID = CTImageStorage
            source.ReferencedSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
            derivation = Dataset()
            derivation.SourceImageSequence = [source]
            derivation.DerivationCodeSequence = [code_item("113076", "DCM", "Segmentation")]
            position = Dataset()
            position.ImagePositionPatient = ds_text((lps @ [0, 0, k, 1])[:3], 6)
            identification = Dataset()
            identification.ReferencedSegmentNumber = number
            group = Dataset()
            group.DerivationImageSequence = [derivation]
            group.PlanePositionSequence = [position]
            group.SegmentIdentificationSequence = [identification]
            frames.append(group)
            masks.append(mask.T)
    ds.SegmentSequence = segments
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.NumberOfFrames = len(frames)
    referenced = Dataset()
    referenced.SeriesInstanceUID = series_uid
    instances = []
    for k in range(slices):
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        instances.append(item)
    referenced.ReferencedInstanceSequence = instances
    ds.ReferencedSeriesSequence = [referenced]
    # Frames back to back, 8 pixels a byte with the first in the lowest bit, padded to even length.
    bits = np.packbits(np.stack(masks).astype(np.uint8).ravel(), bitorder="little").tobytes()
    ds.PixelData = bits + b"\0" * (len(bits) % 2)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def crop(path, ranges):
    """The cropped integer voxels and the crop's own affine."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    assert np.issubdtype(data.dtype, np.integer), data.dtype
    start = np.array([r.start for r in ranges] + [1.0])
    affine = image.affine.copy()
    affine[:, 3] = image.affine @ start
    return np.ascontiguousarray(data[ranges]).astype(np.int32), affine


def reference(path, data, affine):
    """A float32 NIfTI of what a reader must produce."""
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    nib.save(image, path)


def main():
    shared = Path(os.environ.get("SEGMENTER_SHARED_DATA", "/work/shared/data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=shared / "totalseg-example")
    parser.add_argument("--out", type=Path, default=HERE / "pydicom")
    args = parser.parse_args()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    export = out / "export"
    export.mkdir(parents=True)
    rng = random.Random(19)

    # The oblique CT: the crop's voxels on a grid turned about its centre.
    hu, ct_affine = crop(args.source / "example_ct_sm.nii.gz", CT_CROP)
    turn = np.eye(4)
    turn[:3, :3] = rotation(20, 10)
    centre = ct_affine @ np.append((np.array(hu.shape) - 1) / 2, 1)
    shift = np.eye(4)
    shift[:3, 3] = centre[:3]
    oblique = shift @ turn @ np.linalg.inv(shift) @ ct_affine
    lps = round_geometry(oblique)
    ct_uid = generate_uid(entropy_srcs=["segmenter pydicom fixture CT"])
    stored = (hu + 1024) * 2
    assert stored.min() >= -32768 and stored.max() <= 32767
    n = hu.shape[2]
    write_slices(export / "CT", ct_uid, CTImageStorage, stored, lps, number=2,
                 description="Abdomen oblique", modality="CT",
                 image_type=["ORIGINAL", "PRIMARY", "AXIAL"], rescale=(0.5, -1024),
                 instance_numbers=list(range(1, n + 1)), rng=rng)
    reference(out / "ct_oblique.nii.gz", hu, FLIP @ lps)

    # The scout: one coronal slice of the CT, its own series, among the CT's files.
    scout = np.ascontiguousarray(stored[:, hu.shape[1] // 2, :])[:, :, None]
    scout_lps = lps.copy()
    scout_lps[:3, 1] = lps[:3, 2]
    scout_lps[:3, 2] = lps[:3, 1]
    scout_lps[:, 3] = lps @ np.array([0, hu.shape[1] // 2, 0, 1])
    scout_uid = generate_uid(entropy_srcs=["segmenter pydicom fixture scout"])
    write_slices(export / "CT", scout_uid, CTImageStorage, scout, scout_lps, number=1,
                 description="Topogram", modality="CT",
                 image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"], rescale=(0.5, -1024),
                 instance_numbers=[1], rng=rng)

    # The MR: LPS as the source is; slices written top down (positions step against the normal,
    # the first instance highest), so a reader must reverse them.
    mr, mr_affine = crop(args.source / "example_mr_sm.nii.gz", MR_CROP)
    top_down = mr[:, :, ::-1]
    down = mr_affine.copy()
    down[:, 3] = mr_affine @ np.array([0, 0, mr.shape[2] - 1, 1])
    down[:3, 2] = -mr_affine[:3, 2]
    mr_lps = round_geometry(down)
    mr_uid = generate_uid(entropy_srcs=["segmenter pydicom fixture MR"])
    write_slices(export / "MR", mr_uid, MRImageStorage, top_down, mr_lps, number=5,
                 description="T1 LPS top-down", modality="MR",
                 image_type=["ORIGINAL", "PRIMARY", "M", "ND"], rescale=None,
                 instance_numbers=list(range(1, mr.shape[2] + 1)), rng=rng)
    # What the reader gives: slices in increasing order along the normal (bottom up).
    up = FLIP @ mr_lps
    up[:, 3] = up @ np.array([0, 0, mr.shape[2] - 1, 1])
    up[:3, 2] = -up[:3, 2]
    reference(out / "mr_lps.nii.gz", mr, up)

    # A DICOM SEG of four organs on the CT, from TotalSegmentator's own segmentation of the scan,
    # written by hand with pydicom (not by our writer): a second, independent SEG for the reader.
    organs, _ = crop(args.source / "example_seg.nii.gz", CT_CROP)
    write_seg(out / "ct_oblique_seg.dcm", ct_uid, organs, lps, n)
    dataset_values = np.zeros(256, np.uint8)
    for value, (_, totalseg) in enumerate(SEG_DATASET_LABELS, start=1):
        dataset_values[totalseg] = value
    reference(out / "ct_oblique_labels.nii.gz", dataset_values[organs], FLIP @ lps)

    (export / "INFO").write_text("Exported by a PACS for the segmenter tests. Not DICOM.\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB), pydicom {pydicom.__version__}")


if __name__ == "__main__":
    main()
