#!/usr/bin/env python
"""A visual comparison sheet: HR | bicubic | each model, on crops of held-out images.

LR inputs are made as the trainer and scripts/evaluate.py make them (antialiased bicubic
downscaling).  Usage:
  python scripts/compare_sheet.py VAL -o sheet.jpg --weights vsr_x4_psnr --weights vsr_x4_srgan \
      --crop chelsea.png:100,150 --crop motorcycle_left.png:200,300
(--crop NAME:Y,X picks the top-left corner of a --size crop in HR pixels.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.evaluate import hr_and_lr  # noqa: E402
from vsr.data import load_image  # noqa: E402
from vsr.model import Bicubic  # noqa: E402
from vsr.upscaler import Upscaler  # noqa: E402
from vsr.weights import load_generator, resolve_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--weights", action="append", required=True)
    ap.add_argument("--crop", action="append", required=True, help="NAME:Y,X")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--zoom", type=float, default=1.5)
    args = ap.parse_args()

    ups = [Upscaler(Bicubic(4))] + [Upscaler(load_generator(resolve_weights(w))) for w in args.weights]
    rows = []
    for spec in args.crop:
        name, _, corner = spec.partition(":")
        y, x = (int(v) for v in corner.split(","))
        hr, lr = hr_and_lr([load_image(args.folder / name)], ups[0].scale, crf=None)
        outs = [hr[0]] + [u.upscale(lr[0][None])[0].numpy() for u in ups]
        rows.append(np.concatenate([o[y : y + args.size, x : x + args.size] for o in outs], 1))
    sheet = Image.fromarray(np.concatenate(rows, 0))
    sheet = sheet.resize((round(sheet.width * args.zoom), round(sheet.height * args.zoom)), Image.NEAREST)
    sheet.save(args.output, quality=90)
    print(f"wrote {args.output}: columns HR, bicubic, {', '.join(args.weights)}")


if __name__ == "__main__":
    main()
