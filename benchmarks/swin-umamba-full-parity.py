#!/usr/bin/env python3
"""Full-size parity inputs: upstream's own SwinUMamba (about 60 M parameters) with random weights.

Builds upstream's network as nnU-Net builds it (feat_size 48..768, VMamba-T encoder: dims
96..768, depths 2/2/9/2, d_state 16), with mamba-ssm's kernel replaced by the plain PyTorch
scan of tests/fixtures/swin-umamba/make_fixtures.py, overwrites every parameter with seeded
random values, and writes into OUT:
  full.safetensors  the state_dict (upstream's key names)
  full.pth          the same as an nnU-Net v2 checkpoint ({'network_weights': ...})
  expected.safetensors  `input` [1, IN, 128, 128] and upstream's four deep-supervision logits
                        `out0..out3`, computed in float64.
benchmarks/swin-umamba-full-parity.sh runs it and then our side. Nothing is downloaded.

    /work/venv/bin/python benchmarks/swin-umamba-full-parity.py --upstream SwinUMamba.py --out DIR
"""

import argparse
import os
import sys

import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures", "swin-umamba"))
import make_fixtures as mf  # noqa: E402


def main() -> None:
    """Writes the full-size weights, an input and upstream's logits for it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="path of upstream's SwinUMamba.py")
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="input side (divisible by 32)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    mf.make_deterministic()
    up = mf.load_upstream(args.upstream)
    with torch.no_grad():
        model = mf.randomize_(mf.build_full(up, args.in_chans, args.classes), seed=1234)
    params = sum(p.numel() for p in model.parameters())
    state = mf.plain_state_dict(model)
    mf.save_safetensors(state, os.path.join(args.out, "full.safetensors"))
    torch.save({"network_weights": state, "trainer_name": "nnUNetTrainerSwinUMamba"},
               os.path.join(args.out, "full.pth"))
    gen = torch.Generator().manual_seed(99)
    x = torch.randn((1, args.in_chans, args.size, args.size), generator=gen)
    outs = mf.run_float64(up, model, x)
    tensors = {"input": x.float()}
    tensors.update({f"out{i}": o.float() for i, o in enumerate(outs)})
    mf.save_safetensors(tensors, os.path.join(args.out, "expected.safetensors"))
    print(f"upstream SwinUMamba: {params} parameters; input {tuple(x.shape)}; "
          f"logits {[tuple(o.shape) for o in outs]}, max |logit| {outs[0].abs().max().item():.4g}")


if __name__ == "__main__":
    main()
