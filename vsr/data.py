"""Training data: frames taken from the user's videos and images, and LR/HR patch pairs.

Frames are extracted once into a cache folder of ``.npy`` files (uint8 HWC RGB) and
read back memory-mapped, so a folder of long videos never sits decoded in RAM.  The cache is
not trusted: each entry's record lists the frames vsr wrote with their SHA-256, and an entry
that does not match it is extracted again (:func:`extract_frames`).
PyAV is imported only where frames are decoded or re-encoded (:func:`read_frames`, the codec
round trips of :func:`degrade`): training from a filled cache, or from frames another reader
gives :func:`extract_frames`, runs where PyAV is not installed.
Patches are sampled with a preference for texture: most random crops of real
footage are near-flat sky, walls or blur and teach the network nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vsr.errors import VsrError
from vsr.files import remove, written_whole
from vsr.media import jpeg_qscale, kind_of


FLAT_GRADIENT = 6.0  # mean |gradient| (0-255 scale) below which a patch counts as flat


class DataError(VsrError):
    """The training data cannot be used; the message says why."""


@dataclass
class FrameSource:
    """One file under the data folder and the cached frames taken from it."""

    path: Path
    kind: str  # "video" or "image"
    frames: list[Path] = field(default_factory=list)


def find_media(folder: Path) -> list[tuple[Path, str]]:
    """Every video and image under ``folder`` (recursive), sorted for determinism."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        kind = kind_of(path)
        if kind is not None:
            found.append((path, kind))
    return found


def gradient_energy(rgb: np.ndarray | torch.Tensor) -> float:
    """Mean absolute gradient of the luma, on a 0-255 scale."""
    t = torch.from_numpy(np.array(rgb, dtype=np.float32))
    y = 0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]
    if y.shape[0] < 2 or y.shape[1] < 2:
        return 0.0
    gx = (y[:, 1:] - y[:, :-1]).abs().mean()
    gy = (y[1:, :] - y[:-1, :]).abs().mean()
    return float((gx + gy) / 2)


def shrink(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb
    factor = max_side / max(h, w)
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)
    return t.round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()


def sample_video_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    """Up to ``count`` RGB frames spread evenly over the clip, found by seeking; opened, decoded
    and converted by :mod:`vsr.decode` as frames that are upscaled are."""
    import av

    from vsr.colour import frame_to_rgb
    from vsr.decode import decode_frames, limit_frame_size, open_input, probe

    info = probe(path)
    with open_input(path) as container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        limit_frame_size(stream, *info.frame_size)  # a stream that grows part-way stops there, as for upscaling
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = stream.duration
            start = stream.start_time or 0
            tb = stream.time_base
        elif container.duration is not None:
            duration = container.duration
            start = container.start_time or 0
            tb = Fraction(1, av.time_base)
        if duration is None or duration <= 0:
            # No duration: decode sequentially, keep every k-th frame.
            for i, frame in enumerate(decode_frames(container, stream)):
                if i % 10 == 0:
                    yield frame_to_rgb(frame)
                    count -= 1
                    if count <= 0:
                        return
            return
        for i in range(count):
            target = start + int(duration * (i + 0.5) / count)
            if tb != stream.time_base:
                container.seek(target)  # container-level time base (AV_TIME_BASE)
                target = int(Fraction(target) * tb / stream.time_base)
            else:
                container.seek(target, stream=stream)
            for frame in decode_frames(container, stream):
                if frame.pts is None or frame.pts >= target:
                    yield frame_to_rgb(frame)
                    break


def load_image(path: Path) -> np.ndarray:
    """A picture as RGB, read as ``vsr upscale`` reads it (:func:`vsr.decode.read_picture`: turned
    upright by its EXIF orientation)."""
    from vsr.decode import read_picture

    return read_picture(path)


# A frame reader: (path, kind "video"|"image", frames wanted of a video) -> RGB uint8 HWC frames.
FrameReader = Callable[[Path, str, int], Iterable[np.ndarray]]


def read_frames(path: Path, kind: str, frames_per_video: int) -> Iterator[np.ndarray]:
    """The frames training takes from one file, decoded by PyAV as ``vsr upscale`` decodes them:
    ``frames_per_video`` spread over a video, or the picture itself."""
    return sample_video_frames(path, frames_per_video) if kind == "video" else iter([load_image(path)])


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a reader raises for a file it cannot read (PyAV's errors only where PyAV is installed)."""
    try:
        import av
    except ImportError:
        return (VsrError, OSError)
    return (av.FFmpegError, VsrError, OSError)


# -- the frame cache: one folder per source file and setting, named by _cache_key; in it the frames
# (00000.npy, ...) and, written last, the record "done" (JSON: each frame's name, shape, size, SHA-256).
CACHE_FORMAT = "vsr-frames-1"
_FRAME_NAME = re.compile(r"[0-9]{5,}\.npy")
_RECORD_LIMIT = 16 << 20  # bytes: a record of 100000 frames


class CacheMismatch(Exception):
    """A cache entry that is not what vsr wrote; the message says how."""


def _cache_key(path: Path, frames_per_video: int, max_side: int | None) -> str:
    """The cache folder of one source file and setting: its path, size and modification time, and
    the SHA-256 of its first and last MiB (a file changed with its time kept is not taken for the
    one cached; 2 MiB read, however long the file)."""
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{frames_per_video}:{max_side}".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _cache_frame(sub: Path, name: str, rgb: np.ndarray) -> dict:
    """Write one frame whole (:func:`vsr.files.written_whole`: a temporary file of this process's
    own, never one planted in its place, renamed over the frame; safe when two runs fill one cache
    at once, the same frame whichever run wins); its record."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"expected uint8 HxWx3 RGB frames from the reader, got {rgb.dtype} {rgb.shape}")
    with written_whole(sub / name, mode=0o644) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, rgb)
        size, digest = tmp.stat().st_size, _sha256(tmp)
    return {"name": name, "shape": list(rgb.shape), "bytes": size, "sha256": digest}


def _write_record(sub: Path, frames: list[dict]) -> None:
    with written_whole(sub / "done", mode=0o644) as tmp:
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "frames": frames}))


def _cached_frames(sub: Path) -> list[Path] | None:
    """The frames of a complete cache entry, each checked against the record (plain file, size,
    SHA-256, then a uint8 HxWx3 array of the recorded shape, read without pickle); None where the
    entry is not complete (no record yet); :class:`CacheMismatch` where it is not what vsr wrote."""
    done = sub / "done"
    if not os.path.lexists(done):
        return None
    try:
        if sub.is_symlink() or done.is_symlink() or not done.is_file():
            raise CacheMismatch("a link or no plain file where vsr writes its own")
        if done.stat().st_size > _RECORD_LIMIT:
            raise CacheMismatch("its record is too large")
        record = json.loads(done.read_bytes())
        if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT or not isinstance(record.get("frames"), list):
            raise CacheMismatch("its record is not vsr's")
        frames = []
        for entry in record["frames"]:
            name, shape, size, digest = entry["name"], entry["shape"], entry["bytes"], entry["sha256"]
            if not (isinstance(name, str) and _FRAME_NAME.fullmatch(name) and isinstance(shape, list) and len(shape) == 3
                    and shape[2] == 3 and all(isinstance(n, int) and n > 0 for n in shape) and isinstance(size, int)):
                raise CacheMismatch("its record is not vsr's")
            path = sub / name
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise CacheMismatch(f"{name} is not a plain file")
            if st.st_size != size:
                raise CacheMismatch(f"{name} has {st.st_size} bytes, vsr wrote {size}")
            if _sha256(path) != digest:
                raise CacheMismatch(f"{name} is not the frame vsr wrote (its SHA-256 differs)")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.dtype != np.uint8 or list(array.shape) != shape:
                raise CacheMismatch(f"{name} holds {array.dtype} {tuple(array.shape)}, not uint8 {tuple(shape)}")
            frames.append(path)
        strays = sorted(set(p.name for p in sub.glob("*.npy")) - {p.name for p in frames})
        if strays:
            raise CacheMismatch(f"{strays[0]} is no frame vsr wrote")
    except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable, not JSON, not a .npy, an object array
        raise CacheMismatch(f"{type(exc).__name__}: {exc}") from exc
    return frames


def _own_folder(sub: Path) -> None:
    """``sub`` as a folder to fill: a link or file in its place is removed, never followed."""
    if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
        sub.unlink()
    sub.mkdir(parents=True, exist_ok=True)


def _discard(sub: Path) -> None:
    """An entry that is not what vsr wrote: its record and frames go (links unfollowed)."""
    _own_folder(sub)
    for p in [sub / "done", *sub.glob("*.npy")]:
        remove(p)


def extract_frames(
    folder: Path,
    cache: Path,
    frames_per_video: int = 32,
    max_side: int | None = None,
    min_size: int = 96,
    read: FrameReader = read_frames,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[FrameSource], list[str]]:
    """Fill ``cache`` with usable frames; returns the sources and what was skipped (and why).

    ``read`` decodes a file not yet in the cache (:func:`read_frames`, PyAV); a file already
    cached, under the same path, size, modification time, first and last MiB and settings, is not
    read again, if every frame is the one vsr wrote (:func:`_cached_frames`); an entry that is not
    is extracted again, and ``warn`` is told."""
    cache.mkdir(parents=True, exist_ok=True)
    sources: list[FrameSource] = []
    skipped: list[str] = []
    for path, kind in find_media(folder):
        source = FrameSource(path, kind)
        mismatch = None
        try:
            sub = cache / _cache_key(path, frames_per_video, max_side)
            cached = _cached_frames(sub)
        except OSError as exc:
            skipped.append(f"{path}: {exc}")
            continue
        except CacheMismatch as exc:
            if warn is not None:
                warn(f"{path}: the cached frames in {sub} are not what vsr wrote ({exc}); extracting them again")
            cached, mismatch = None, exc
        if cached is not None:
            source.frames = cached
        else:
            written: list[dict] = []
            try:
                (_discard if mismatch else _own_folder)(sub)
                frames = read(path, kind, frames_per_video)
                previous: np.ndarray | None = None
                for i, rgb in enumerate(frames):
                    rgb = shrink(rgb, max_side)
                    if rgb.mean() < 16:
                        continue  # near-black
                    if gradient_energy(rgb[::2, ::2]) < 1.0:
                        continue  # near-flat
                    small = rgb[::8, ::8].astype(np.int16)
                    if previous is not None and previous.shape == small.shape and np.abs(small - previous).mean() < 1.5:
                        continue  # duplicate of the previous sample
                    previous = small
                    written.append(_cache_frame(sub, f"{i:05d}.npy", np.ascontiguousarray(rgb)))
                    source.frames.append(sub / written[-1]["name"])
            except _read_errors() as exc:
                skipped.append(f"{path}: {exc}")
                continue
            _write_record(sub, written)
        # Checked on the cached frames, not while caching: the crop size is no part of the cache's key.
        h, w = np.load(source.frames[0], mmap_mode="r", allow_pickle=False).shape[:2] if source.frames else (0, 0)
        if source.frames and min(h, w) < min_size:
            skipped.append(f"{path}: frames of {w}x{h} are smaller than a {min_size}-px crop")
        elif source.frames:
            sources.append(source)
        elif not any(s.startswith(f"{path}:") for s in skipped):
            skipped.append(f"{path}: no usable frames (all black, flat or duplicate)")
    return sources, skipped


def split_sources(sources: Sequence[FrameSource], val_fraction: float, seed: int = 0) -> tuple[list[FrameSource], list[FrameSource]]:
    """Hold out whole clips/images, never frames of a clip used for training."""
    if len(sources) < 2 or val_fraction <= 0:
        return list(sources), []
    order = sorted(range(len(sources)), key=lambda i: hashlib.sha1(f"{seed}:{sources[i].path}".encode()).hexdigest())
    n_val = min(len(sources) - 1, max(1, round(len(sources) * val_fraction)))
    val_idx = set(order[:n_val])
    train = [s for i, s in enumerate(sources) if i not in val_idx]
    val = [s for i, s in enumerate(sources) if i in val_idx]
    return train, val


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscaling of float NCHW images (the LR the model sees)."""
    h, w = hr.shape[-2:]
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


class PatchSampler:
    """Random HR patches (texture-weighted), flips and 90-degree rotations, and their LR."""

    def __init__(
        self,
        frames: Sequence[Path],
        patch_size: int,
        scale: int,
        degrade: bool = False,
        seed: int = 0,
        flat_keep: float = 0.1,
        tries: int = 8,
    ) -> None:
        if patch_size % scale:
            raise DataError(f"patch size {patch_size} is not a multiple of the scale {scale}")
        self.frames = list(frames)
        if not self.frames:
            raise DataError("no training frames")
        self.patch_size = patch_size
        self.scale = scale
        self.degrade = degrade
        self.flat_keep = flat_keep
        self.tries = tries
        self.generator = torch.Generator().manual_seed(seed)
        self._arrays = [np.load(p, mmap_mode="r", allow_pickle=False) for p in self.frames]
        usable = [i for i, a in enumerate(self._arrays) if min(a.shape[:2]) >= patch_size]
        if not usable:
            raise DataError(f"every frame is smaller than a {patch_size}-px crop")
        self._usable = usable
        # Pick frames in proportion to their area, so a 4K photo is not seen as often as a 240p frame.
        areas = torch.tensor([float(self._arrays[i].shape[0] * self._arrays[i].shape[1]) for i in usable])
        self._weights = areas / areas.sum()

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator))

    def _crop(self) -> np.ndarray:
        idx = self._usable[int(torch.multinomial(self._weights, 1, generator=self.generator))]
        array = self._arrays[idx]
        h, w = array.shape[:2]
        p = self.patch_size
        best, best_energy = None, -1.0
        for _ in range(self.tries):
            y, x = self._randint(h - p + 1), self._randint(w - p + 1)
            crop = np.asarray(array[y : y + p, x : x + p])
            energy = gradient_energy(crop)
            if energy >= FLAT_GRADIENT:
                return crop
            if float(torch.rand(1, generator=self.generator)) < self.flat_keep:
                return crop
            if energy > best_energy:
                best, best_energy = crop, energy
        return best

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, hr)`` float NCHW in [0, 1]."""
        patches = []
        for _ in range(batch_size):
            t = torch.from_numpy(np.ascontiguousarray(self._crop())).permute(2, 0, 1)
            if self._randint(2):
                t = t.flip(2)
            if self._randint(2):
                t = t.flip(1)
            t = torch.rot90(t, self._randint(4), dims=(1, 2))
            patches.append(t)
        hr = torch.stack(patches).float().div_(255)
        lr = downscale(hr, self.scale)
        if self.degrade:
            lr = torch.stack([degrade(x, self.generator) for x in lr])
        return lr, hr


class Prefetcher:
    """Draws the next batches of a :class:`PatchSampler` on a background thread, so the device
    never waits for the CPU to crop and downscale (pinned, for an asynchronous copy to a GPU).

    The sequence of batches is the sampler's own (one thread draws them, in order).  ``state()`` is
    the sampler's random state just after the last batch handed out, i.e. where a resumed run must
    continue, however many batches are drawn ahead.  ``wait_seconds`` adds up the time :meth:`next`
    blocked: the time the training loop, and so the device, waited for data.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, depth: int = 4, pin: bool = False) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.pin = pin
        self.wait_seconds = 0.0
        self._state = sampler.generator.get_state()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vsr-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                lr, hr = self.sampler.sample(self.batch_size)
                if self.pin:
                    lr, hr = lr.pin_memory(), hr.pin_memory()
                item = (lr, hr, self.sampler.generator.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._queue.put((exc, None, None))

    def next(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(lr, hr)`` batch (``batch_size``, if given, must be the one drawn)."""
        if batch_size is not None and batch_size != self.batch_size:
            raise ValueError(f"the prefetcher draws batches of {self.batch_size}, asked for {batch_size}")
        began = time.perf_counter()
        lr, hr, state = self._queue.get()
        self.wait_seconds += time.perf_counter() - began
        if isinstance(lr, BaseException):
            raise lr
        self._state = state
        return lr, hr

    def state(self) -> torch.Tensor:
        return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def degrade(lr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What video users' frames really have: blur, noise, JPEG and H.264 artefacts, at random strengths.

    ``lr`` is one CHW float image in [0, 1]; each effect is applied with probability 1/2.
    """
    x = lr
    if float(torch.rand(1, generator=generator)) < 0.5:
        sigma = _uniform(generator, 0.2, 1.5)
        radius = max(1, math.ceil(3 * sigma))
        k = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(k**2) / (2 * sigma**2))
        k = k / k.sum()
        c = x.shape[0]
        x = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)[0]
    if float(torch.rand(1, generator=generator)) < 0.5:
        noise = torch.randn(x.shape, generator=generator) * _uniform(generator, 1, 10) / 255
        x = x + noise
    x = x.clamp(0, 1)
    choice = float(torch.rand(1, generator=generator))
    if choice < 0.33:
        x = jpeg_roundtrip(x, quality=int(_uniform(generator, 30, 95)))
    elif choice < 0.66:
        x = h264_roundtrip(x, crf=int(_uniform(generator, 18, 36)))
    return x


def _codec_roundtrip(x: torch.Tensor, codec: str, pix_fmt: str, options: dict[str, str], even: bool) -> torch.Tensor:
    """Encode one CHW float image with an FFmpeg encoder in memory and decode it back."""
    import av

    rgb = (x * 255).round().byte().permute(1, 2, 0).numpy()
    h, w = rgb.shape[:2]
    if even and (h % 2 or w % 2):
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
    ctx.time_base = Fraction(1, 25)
    ctx.options = options
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
    frame.pts = 0
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    dec = av.CodecContext.create(codec if codec != "libx264" else "h264", "r")
    if ctx.extradata:
        dec.extradata = ctx.extradata
    frames = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    out = frames[0].to_ndarray(format="rgb24")[:h, :w]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float() / 255


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG (4:2:0) at a 1-100 quality, in memory."""
    q = str(jpeg_qscale(quality))
    return _codec_roundtrip(x, "mjpeg", "yuvj420p", {"qmin": q, "qmax": q}, even=True)


def h264_roundtrip(x: torch.Tensor, crf: int) -> torch.Tensor:
    """H.264 (yuv420p) intra coding at a given CRF, in memory."""
    return _codec_roundtrip(x, "libx264", "yuv420p", {"crf": str(crf), "preset": "veryfast"}, even=True)


def validation_images(sources: Sequence[FrameSource], per_source: int = 2, crop: int = 256, scale: int = 4) -> list[torch.Tensor]:
    """Centre crops (HR, CHW float) of a few frames of each held-out source, sized to a multiple of the scale."""
    images = []
    for source in sources:
        frames = source.frames
        picks = [frames[round(i * (len(frames) - 1) / max(1, per_source - 1))] for i in range(min(per_source, len(frames)))]
        for path in dict.fromkeys(picks):
            rgb = np.load(path, mmap_mode="r", allow_pickle=False)
            h, w = rgb.shape[:2]
            ch, cw = min(crop, h) // scale * scale, min(crop, w) // scale * scale
            y, x = (h - ch) // 2, (w - cw) // 2
            images.append(torch.from_numpy(np.array(rgb[y : y + ch, x : x + cw])).permute(2, 0, 1).float() / 255)
    return images
