#!/usr/bin/env python3
"""PyTorch side of benchmarks/import-predict-speed.sh: nnU-Net v2's predictor with upstream's
full-size Swin-UMamba on a real CT, to time against `segmenter predict` on the same checkpoint.

--stage make: builds upstream's `SwinUMamba` at full size (59.9 M parameters at 1 input channel;
upstream's file is passed with --upstream and is not in this repository) with mamba-ssm's
`selective_scan_fn` replaced by the fast blocked CPU scan of ../shared/reference/pytorch-scan,
seeded default initialisation, and writes OUT/checkpoint_final.pth (an nnU-Net v2
`nnUNetTrainerSwinUMamba` checkpoint, tests/fixtures/swin-umamba/make_fixtures.py's layout),
OUT/nnUNetPlans.json and OUT/dataset.json: a 2d configuration at 1.5 x 1.5 mm, patch 224 x 256,
CTNormalization, 14 classes (background and 13 organs, as in the AbdomenMRI/AMOS setting of the
paper). The case is the TotalSegmentator example CT (../shared/data/totalseg-example,
122 x 101 x 30 voxels at 3 mm), linked as OUT/cases/ct_0000.nii.gz.

--stage nnunet: `nnUNetPredictor.manual_initialization` with that network and
`predict_from_files_sequential` on OUT/cases into OUT/nnunet (no mirroring, step 0.5, Gaussian,
CPU, --threads threads). Prints one JSON line: the predictor call's seconds and the process's
peak resident memory.

--stage compare: the share of voxels where OUT/ours/ct.nii.gz and OUT/nnunet/ct.nii.gz agree.
"""

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures", "swin-umamba"))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True

CLASSES = 14
PATCH = [224, 256]
SPACING = [1.5, 1.5]
CT = os.path.join(HERE, "..", "..", "shared", "data", "totalseg-example", "example_ct_sm.nii.gz")


def load_upstream(upstream, scan_dir):
    """Upstream's module with the fast PyTorch scan in place of mamba-ssm's kernel."""
    import importlib.util
    import make_fixtures as mf
    # benchmarks/swin-umamba-vs-pytorch.py wraps the reference scan in mamba-ssm's signature.
    spec = importlib.util.spec_from_file_location(
        "swin_umamba_vs_pytorch", os.path.join(HERE, "swin-umamba-vs-pytorch.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    mf.selective_scan = bench.fast_scan_fn(scan_dir)  # install_stubs reads this name
    return mf, mf.load_upstream(upstream)


def make(out, upstream, scan_dir):
    """Writes the checkpoint, plans, dataset.json and the case link."""
    import torch
    mf, up = load_upstream(upstream, scan_dir)
    torch.manual_seed(11)
    model = mf.build_full(up, 1, CLASSES)
    checkpoint = mf.nnunet_checkpoint(model)
    plans = checkpoint["init_args"]["plans"]
    plans["dataset_name"] = "Dataset998_SpeedCT"
    config = plans["configurations"]["2d"]
    config.update({
        "patch_size": PATCH,
        "spacing": SPACING,
        "median_image_size_in_voxels": [202.0, 244.0],
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
    })
    plans["original_median_spacing_after_transp"] = [3.0, 3.0, 3.0]
    plans["original_median_shape_after_transp"] = [30, 101, 122]
    plans["foreground_intensity_properties_per_channel"] = {
        "0": {"max": 1600.0, "mean": 80.0, "median": 90.0, "min": -1000.0,
              "percentile_00_5": -300.0, "percentile_99_5": 500.0, "std": 150.0}}
    dataset_json = {"channel_names": {"0": "CT"},
                    "labels": {"background": 0, **{f"organ{i}": i for i in range(1, CLASSES)}},
                    "numTraining": 1, "file_ending": ".nii.gz", "name": "SpeedCT"}
    checkpoint["init_args"]["dataset_json"] = dataset_json
    os.makedirs(os.path.join(out, "cases"), exist_ok=True)
    torch.save(checkpoint, os.path.join(out, "checkpoint_final.pth"))
    with open(os.path.join(out, "nnUNetPlans.json"), "w") as f:
        json.dump(plans, f, indent=1)
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=1)
    os.symlink(os.path.abspath(CT), os.path.join(out, "cases", "ct_0000.nii.gz"))
    params = sum(p.numel() for p in model.parameters())
    print(f"made: {params:,} parameters, {CLASSES} classes, patch {PATCH}, spacing {SPACING}",
          file=sys.stderr)


def run_nnunet(out, upstream, scan_dir, threads):
    """nnU-Net v2's predictor on the case, timed."""
    import torch
    torch.set_num_threads(threads)
    mf, up = load_upstream(upstream, scan_dir)
    # make_fixtures stubs nnunetv2's plans classes for upstream's import; the predictor needs
    # the real ones.
    for key in [k for k in sys.modules if k.startswith("nnunetv2")]:
        del sys.modules[key]
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    import importlib.metadata

    checkpoint = torch.load(os.path.join(out, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    network = mf.build_full(up, 1, CLASSES)
    network.load_state_dict(checkpoint["network_weights"], strict=True)
    network.deep_supervision = False
    with open(os.path.join(out, "nnUNetPlans.json")) as f:
        plans_manager = PlansManager(json.load(f))
    with open(os.path.join(out, "dataset.json")) as f:
        dataset_json = json.load(f)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("2d"),
                                    [checkpoint["network_weights"]], dataset_json,
                                    checkpoint["trainer_name"], None)
    os.makedirs(os.path.join(out, "nnunet"), exist_ok=True)
    start = time.perf_counter()
    predictor.predict_from_files_sequential(
        [[os.path.join(out, "cases", "ct_0000.nii.gz")]], [os.path.join(out, "nnunet", "ct")],
        save_probabilities=False, overwrite=True)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"suite": "nnunet", "predict_s": round(seconds, 2),
                      "peak_rss_mib": round(peak_mib), "threads": threads,
                      "torch": torch.__version__,
                      "nnunetv2": importlib.metadata.version("nnunetv2")}), flush=True)


def compare(out):
    """Label agreement of the two predictions."""
    import nibabel as nib
    import numpy as np
    ours = np.asarray(nib.load(os.path.join(out, "ours", "ct.nii.gz")).dataobj)
    theirs = np.asarray(nib.load(os.path.join(out, "nnunet", "ct.nii.gz")).dataobj)
    if ours.shape != theirs.shape:
        print(f"shapes differ: ours {ours.shape}, nnU-Net {theirs.shape}")
        return 1
    agree = float((ours == theirs).mean())
    print(json.dumps({"suite": "compare", "voxels": int(ours.size),
                      "labels_agree_percent": round(100 * agree, 3)}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["make", "nnunet", "compare"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--upstream", default="/tmp/upstream/SwinUMamba.py")
    p.add_argument("--scan-dir",
                   default=os.path.join(HERE, "..", "..", "shared", "reference", "pytorch-scan"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.stage == "make":
        make(a.out, a.upstream, a.scan_dir)
    elif a.stage == "nnunet":
        run_nnunet(a.out, a.upstream, a.scan_dir, a.threads)
    else:
        return compare(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
