#!/usr/bin/env python
"""Training frames packed small enough to travel to a machine without PyAV (the lent GPU machine
takes 64 MiB with the checkout), and unpacked there into the trainer's frame cache.

  pack SRC DEST   (here, with PyAV) the frames `vsr finetune SRC` would train on, chosen by the
                  trainer's own code (vsr.data.extract_frames: frames spread over each video, black,
                  flat and duplicate frames left out, shrunk to --max-side), written as pictures:
                  DEST/train/ from SRC/train (JPEG, --quality, 4:4:4) and DEST/val/ from SRC/val
                  (lossless PNG; 4 frames a video, as the trainer validates), one file a frame.
  fill DEST CACHE (there, with Pillow) reads those pictures into CACHE as vsr.data.extract_frames
                  caches frames, so that `vsr finetune DEST/train --val DEST/val --cache-dir CACHE`
                  with the same --frames-per-video and --max-side decodes nothing: the trainer then
                  runs without PyAV (it imports PyAV only to decode).

Usage: python scripts/packed_frames.py pack SRC DEST [--max-side 2048] [--frames-per-video 32] [--quality 90] [--cache DIR]
       python scripts/packed_frames.py fill DEST CACHE [--max-side 2048] [--frames-per-video 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vsr import data  # noqa: E402
from vsr.finetune import VAL_FRAMES_PER_VIDEO  # noqa: E402  (the count keys the cache: the trainer's own)


def pack(src: Path, dest: Path, max_side: int | None, frames_per_video: int, quality: int, cache: Path | None) -> None:
    total = 0
    with tempfile.TemporaryDirectory() as scratch:
        cache = cache or Path(scratch)
        for part, per_video in (("train", frames_per_video), ("val", VAL_FRAMES_PER_VIDEO)):
            if not (src / part).is_dir():
                raise SystemExit(f"expected a folder {src / part}, as scripts/prepare_data.sh makes")
            out = dest / part
            out.mkdir(parents=True, exist_ok=True)
            sources, skipped = data.extract_frames(src / part, cache, per_video, max_side)
            for reason in skipped:
                print(f"skipped {reason}")
            for source in sources:
                stem = "_".join(source.path.relative_to(src / part).with_suffix("").parts)
                for i, frame in enumerate(source.frames):
                    name = f"{stem}_{i:03d}" if source.kind == "video" else stem
                    image = Image.fromarray(np.load(frame))
                    if part == "train":
                        path = out / f"{name}.jpg"
                        image.save(path, quality=quality, subsampling=0)
                    else:
                        path = out / f"{name}.png"
                        image.save(path)
                    total += path.stat().st_size
            print(f"{part}: {sum(len(s.frames) for s in sources)} frames from {len(sources)} files")
    print(f"packed into {dest}: {total / 2**20:.1f} MiB")


def pillow_frames(path: Path, kind: str, frames_per_video: int):
    if kind != "image":
        raise OSError("a packed folder holds pictures only")
    with Image.open(path) as image:
        yield np.asarray(image.convert("RGB"))


def fill(dest: Path, cache: Path, max_side: int | None, frames_per_video: int) -> None:
    for part, per_video in (("train", frames_per_video), ("val", VAL_FRAMES_PER_VIDEO)):
        sources, skipped = data.extract_frames(dest / part, cache, per_video, max_side, read=pillow_frames)
        for reason in skipped:
            print(f"skipped {reason}")
        print(f"{part}: {sum(len(s.frames) for s in sources)} frames cached in {cache}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, first, second in (("pack", "src", "dest"), ("fill", "dest", "cache")):
        p = sub.add_parser(name)
        p.add_argument(first, type=Path)
        p.add_argument(second, type=Path)
        p.add_argument("--max-side", type=int, default=2048)
        p.add_argument("--frames-per-video", type=int, default=32)
        if name == "pack":
            p.add_argument("--quality", type=int, default=90)
            p.add_argument("--cache", type=Path, help="a frame cache to reuse (a finetune run's --cache-dir)")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.src, args.dest, args.max_side, args.frames_per_video, args.quality, args.cache)
    else:
        fill(args.dest, args.cache, args.max_side, args.frames_per_video)


if __name__ == "__main__":
    main()
