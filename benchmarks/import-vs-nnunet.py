#!/usr/bin/env python3
"""nnU-Net v2's own predictor against `segmenter predict` on an imported Swin-UMamba run.

Part 1 (nnU-Net, this script with --stage nnunet): builds upstream's SwinUMamba at the fixture
widths (tests/fixtures/swin-umamba/make_fixtures.py: `load_upstream`, `build_small`), loads the
fixture checkpoint's weights, hands it to `nnUNetPredictor.manual_initialization` with the
fixture plans and dataset.json, and predicts synthetic 2-channel cases with
`predict_from_files_sequential(..., save_probabilities=True)`, no mirroring, step 0.5, on the
CPU. The cases are written here (SimpleITK) into OUT/cases:

- `same_XXXX`: 84 x 76 x 3 voxels at 1 x 1 x 2.5 mm, the plan's in-plane spacing, so nnU-Net
  resamples nothing; zero border (it crops), two windows along each in-plane axis;
- `resampled_XXXX`: 70 x 64 x 2 voxels at 0.8 x 0.9 x 2.5 mm: nnU-Net resamples each slice to
  1 x 1 mm (56 x 58, smaller than the 64 x 64 patch, so it also pads) and the logits back.

nnU-Net's probabilities go to OUT/nnunet/*.npz; they are also written as
OUT/nnunet/CASE.safetensors (`probabilities`, float32 [classes, z, y, x]).

Part 2 (--stage compare): reads our `segmenter predict --save-probabilities` output
(OUT/ours/probabilities/CASE.nii.gz, [x, y, z, class]) and prints, per case, the largest
absolute difference of the probabilities and the share of voxels whose labels agree.

benchmarks/import-vs-nnunet.sh runs both parts around our import and predict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "swin-umamba")
sys.path.insert(0, FIXTURES)

CASES = {
    # name: (shape x, y, z; spacing x, y, z; zero border in x, y)
    "same": ((84, 76, 3), (1.0, 1.0, 2.5), (3, 2)),
    "resampled": ((70, 64, 2), (0.8, 0.9, 2.5), (0, 0)),
}


def write_cases(folder: str) -> None:
    """Writes the synthetic cases (two channels each) as NIfTI files with SimpleITK."""
    import SimpleITK as sitk

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(17)
    for name, ((nx, ny, nz), spacing, (bx, by)) in CASES.items():
        z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
        blob = np.exp(-((x - 0.6 * nx) ** 2 + (y - 0.4 * ny) ** 2) / (0.05 * nx * ny))
        ring = np.cos(0.3 * x + 0.2 * y + z)
        for ch in range(2):
            arr = (100 + 40 * ch) * blob + (10 + 5 * ch) * ring
            arr += rng.normal(0, 3, arr.shape) + 20 * ch
            arr = arr.astype(np.float32)
            if bx or by:
                arr[:, :by, :] = 0
                arr[:, ny - by:, :] = 0
                arr[:, :, :bx] = 0
                arr[:, :, nx - bx:] = 0
            image = sitk.GetImageFromArray(arr)
            image.SetSpacing(spacing)
            sitk.WriteImage(image, os.path.join(folder, f"{name}_{ch:04d}.nii.gz"))


def run_nnunet(out: str, upstream: str, mirroring: bool = False) -> None:
    """nnU-Net v2's predictor on the cases, probabilities saved; with `mirroring`, its test-time
    mirroring over the checkpoint's allowed axes (0, 1), into OUT/nnunet-mirrored."""
    import torch
    from safetensors.torch import save_file
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    import make_fixtures as mf

    torch.set_num_threads(2)
    up = mf.load_upstream(upstream)
    # make_fixtures stubs nnunetv2's plans classes for upstream's import; the predictor needs the
    # real ones, so drop the stubs now that upstream is imported.
    for key in [k for k in sys.modules if k.startswith("nnunetv2")]:
        del sys.modules[key]
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    checkpoint = torch.load(os.path.join(FIXTURES, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    network = mf.build_small(up)
    network.load_state_dict(checkpoint["network_weights"], strict=True)
    network.deep_supervision = False  # as nnU-Net's trainer does before predicting
    with open(os.path.join(FIXTURES, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(FIXTURES, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("2d")
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration,
                                    [checkpoint["network_weights"]], dataset_json,
                                    checkpoint["trainer_name"],
                                    checkpoint["inference_allowed_mirroring_axes"])
    cases = os.path.join(out, "cases")
    results = os.path.join(out, "nnunet-mirrored" if mirroring else "nnunet")
    os.makedirs(results, exist_ok=True)
    names = sorted(CASES)
    inputs = [[os.path.join(cases, f"{n}_{ch:04d}.nii.gz") for ch in range(2)] for n in names]
    predictor.predict_from_files_sequential(inputs, [os.path.join(results, n) for n in names],
                                            save_probabilities=True, overwrite=True)
    for n in names:
        probs = np.load(os.path.join(results, f"{n}.npz"))["probabilities"].astype(np.float32)
        save_file({"probabilities": torch.from_numpy(np.ascontiguousarray(probs))},
                  os.path.join(results, f"{n}.safetensors"))
        print(f"nnU-Net: {n}: probabilities {list(probs.shape)} (classes, z, y, x)")


def compare(out: str) -> int:
    """Our probabilities against nnU-Net's, per case."""
    import nibabel as nib

    worst = 0.0
    for n in sorted(CASES):
        theirs = np.load(os.path.join(out, "nnunet", f"{n}.npz"))["probabilities"]
        ours = np.asarray(nib.load(os.path.join(out, "ours", "probabilities", f"{n}.nii.gz")).dataobj)
        ours = ours.transpose(3, 2, 1, 0)  # [x, y, z, class] -> [class, z, y, x]
        if ours.shape != theirs.shape:
            print(f"{n}: shapes differ: ours {ours.shape}, nnU-Net {theirs.shape}")
            return 2
        diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        agree = (ours.argmax(0) == theirs.argmax(0)).mean()
        print(f"{n}: {theirs.shape[1:]} voxels (z, y, x): max |ours - nnU-Net| = {diff.max():.2e}, "
              f"mean {diff.mean():.2e}, 99.9th percentile {np.quantile(diff, 0.999):.2e}; "
              f"labels agree on {100 * agree:.3f}% of voxels")
        if n == "same":
            worst = max(worst, float(diff.max()))
    return 0 if worst <= 1e-3 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["nnunet", "compare"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--upstream", default="/tmp/upstream/SwinUMamba.py")
    parser.add_argument("--mirroring", action="store_true",
                        help="also run nnU-Net's test-time mirroring (OUT/nnunet-mirrored)")
    args = parser.parse_args()
    if args.stage == "nnunet":
        write_cases(os.path.join(args.out, "cases"))
        run_nnunet(args.out, args.upstream)
        if args.mirroring:
            run_nnunet(args.out, args.upstream, mirroring=True)
        return 0
    return compare(args.out)


if __name__ == "__main__":
    sys.exit(main())
