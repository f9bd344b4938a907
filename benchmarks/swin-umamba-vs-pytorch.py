#!/usr/bin/env python3
"""PyTorch side of benchmarks/swin-umamba-vs-pytorch.sh: upstream Swin-UMamba's own network on the CPU.

Upstream's `SwinUMamba` (its file is passed with --upstream; not in this repository), with
mamba-ssm's `selective_scan_fn` replaced by the fast blocked CPU scan of
../shared/reference/pytorch-scan (same signature), MONAI's UNETR blocks, timm and nnunetv2
stubbed as in tests/fixtures/swin-umamba/make_fixtures.py. Times, as `segmenter bench step
--forward` does on our side: forward + backward of Dice + CE on the full-resolution logits
(a training step without the optimiser update), and the no-grad forward. One JSON line per row.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures", "swin-umamba"))
import make_fixtures as mf  # noqa: E402


def fast_scan_fn(scan_dir):
    """mamba-ssm's selective_scan_fn signature over the reference's fast blocked scan."""
    sys.path.insert(0, scan_dir)
    from selective_scan import selective_scan

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
        assert z is None and not return_last_state, "upstream's SS2D passes neither"
        return selective_scan(u, delta, A, B, C, D=D, delta_bias=delta_bias,
                              delta_softplus=delta_softplus)
    return selective_scan_fn


def build(up, preset, classes):
    """Upstream's network at the widths of our preset `preset`, without deep supervision."""
    if preset == "swin-umamba":
        model = up.SwinUMamba(in_chans=1, out_chans=classes, feat_size=[48, 96, 192, 384, 768],
                              hidden_size=768, deep_supervision=False)
    else:  # tiny: stem 16, dims 32..256, depths 1/1/2/1, d_state 8
        model = up.SwinUMamba(in_chans=1, out_chans=classes, feat_size=[16, 32, 64, 128, 256],
                              hidden_size=256, deep_supervision=False)
        model.vssm_encoder = up.VSSMEncoder(patch_size=2, in_chans=16, dims=[32, 64, 128, 256],
                                            depths=[1, 1, 2, 1], d_state=8, drop_path_rate=0)
    return model


def dice_ce(logits, target, eps=1e-5):
    """Cross-entropy + 1 - mean soft Dice over classes (Dice pooled over the batch)."""
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + eps) / (probs.sum(dims) + onehot.sum(dims) + eps)
    return torch.nn.functional.cross_entropy(logits, target) + 1 - dice.mean()


def median_ms(fn, runs):
    """Median wall time of `runs` calls after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    """Prints the step and forward rows for each preset and patch size."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True)
    p.add_argument("--scan-dir", default=os.path.join(HERE, "..", "..", "shared", "reference", "pytorch-scan"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    mf.selective_scan = fast_scan_fn(a.scan_dir)  # install_stubs reads this name
    up = mf.load_upstream(a.upstream)
    torch.manual_seed(7)
    classes = 3
    model = build(up, a.preset, classes).train()
    x = torch.rand(a.batch, 1, a.patch, a.patch) * 4 - 2
    y = torch.randint(0, classes, (a.batch, a.patch, a.patch))

    def step():
        model.zero_grad(set_to_none=True)
        dice_ce(model(x), y).backward()

    def forward():
        with torch.no_grad():
            model(x)

    params = sum(q.numel() for q in model.parameters())
    step_ms = median_ms(step, a.runs)
    model.eval()
    fwd_ms = median_ms(forward, a.runs)
    for bench, ms in (("step", step_ms), ("forward", fwd_ms)):
        print(json.dumps({"suite": "pytorch", "bench": bench, "preset": a.preset, "batch": a.batch,
                          "patch": a.patch, "ms_median": ms, "runs": a.runs,
                          "threads": torch.get_num_threads(), "parameters": params,
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
