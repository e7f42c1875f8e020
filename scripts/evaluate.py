#!/usr/bin/env python
"""PSNR-Y / SSIM-Y of weights against bicubic on whole held-out images (prints a table).

LR inputs are made the way the trainer makes them (antialiased bicubic downscaling of the
HR image, cropped to a multiple of the scale); metrics are on the Y channel with a border of
`scale` pixels removed, as SR papers report them. Videos contribute `--frames-per-video` frames.

Usage: python scripts/evaluate.py FOLDER --weights NAME|PATH [--weights ...] [--max-side 720]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vsr.data import _shrink, downscale, find_media, load_image, sample_video_frames  # noqa: E402
from vsr.metrics import psnr_y, ssim_y  # noqa: E402
from vsr.upscaler import Upscaler  # noqa: E402
from vsr.weights import load_generator, resolve_weights  # noqa: E402


def images(folder: Path, frames_per_video: int, max_side: int | None):
    for path, kind in find_media(folder):
        if kind == "image":
            yield path.name, _shrink(load_image(path), max_side)
        else:
            for i, rgb in enumerate(sample_video_frames(path, frames_per_video)):
                yield f"{path.name}#{i}", _shrink(rgb, max_side)


def hr_and_lr(rgb: np.ndarray, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HR as float NCHW in [0, 1], cropped to a multiple of ``scale``, and its LR as a file would
    hold it (uint8 NCHW), made as the trainer makes it."""
    h, w = (rgb.shape[0] // scale) * scale, (rgb.shape[1] // scale) * scale
    hr = torch.from_numpy(np.array(rgb[:h, :w])).permute(2, 0, 1)[None].float() / 255
    return hr, (downscale(hr, scale) * 255).round().byte()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--weights", action="append", required=True)
    ap.add_argument("--frames-per-video", type=int, default=3)
    ap.add_argument("--max-side", type=int, default=None, help="downscale larger images first (antialiased)")
    ap.add_argument("--tile", type=int, default=None)
    args = ap.parse_args()
    models = {w: load_generator(resolve_weights(w)) for w in args.weights}
    scale = next(iter(models.values())).config.scale
    ups = {w: Upscaler(m, "cpu", tile=args.tile) for w, m in models.items()}
    rows = []
    for name, rgb in images(args.folder, args.frames_per_video, args.max_side):
        hr, lr8 = hr_and_lr(rgb, scale)
        h, w = hr.shape[-2:]
        lr_f = lr8.float() / 255
        bic = F.interpolate(lr_f, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
        row = {"image": f"{name} ({w}x{h})", "bicubic": (psnr_y(bic, hr, scale), ssim_y(bic, hr, scale))}
        for wname, up in ups.items():
            sr = up.upscale(lr8.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).float() / 255
            row[wname] = (psnr_y(sr, hr, scale), ssim_y(sr, hr, scale))
        rows.append(row)
        print(" | ".join([row["image"]] + [f"{k}: {v[0]:.2f} dB / {v[1]:.4f}" for k, v in row.items() if k != "image"]), flush=True)
    print()
    print(f"mean over {len(rows)} images (PSNR-Y dB / SSIM-Y):")
    base = np.mean([r["bicubic"][0] for r in rows])
    for key in ["bicubic", *ups]:
        p = np.mean([r[key][0] for r in rows])
        s = np.mean([r[key][1] for r in rows])
        print(f"  {key}: {p:.2f} / {s:.4f}  ({p - base:+.2f} dB vs bicubic)")


if __name__ == "__main__":
    main()
