"""One file through the pipeline: decode -> upscale -> encode, in three threads with bounded queues.

* the reader thread demuxes, decodes and converts to RGB (:mod:`vsr.decode`);
* the calling thread batches frames and runs the model (:mod:`vsr.upscaler`);
* the writer thread converts back to YUV, encodes and muxes, copying other streams' packets
  (:mod:`vsr.encode`).

The output is written to a temporary file beside the destination and renamed only when it is
complete; on any error or Ctrl-C the temporary file is removed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vsr.decode import DecodeError, FrameItem, InputError, PacketItem, probe, read
from vsr.encode import EncodeError, EncodeOptions, Writer
from vsr.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from vsr.timing import Timings
from vsr.upscaler import Upscaler


class UpscaleError(Exception):
    """A file could not be upscaled; the message says why (one line, for the user)."""


_END = object()


@dataclass(frozen=True)
class UpscaleOptions:
    batch_size: int = 1
    overwrite: bool = False
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    queue_size: int = 16


@dataclass
class Result:
    input: str
    output: str
    frames: int
    seconds: float
    warnings: list[str]
    stages: Timings  # seconds per stage (decode, to_rgb, to_tensor, model, to_frame, to_yuv, encode)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class Reporter:
    """What the pipeline tells its caller; the CLI subclasses it with rich output."""

    def start(self, name: str, total: int | None) -> None: ...
    def advance(self, frames: int) -> None: ...
    def warn(self, message: str) -> None: ...
    def finish(self) -> None: ...


def temporary_path(dst: Path) -> Path:
    """Beside the destination, hidden, keeping the extension so the container is chosen by it."""
    return dst.with_name(f".{dst.stem}.vsr-partial{dst.suffix}")


def check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not src.exists():
        raise UpscaleError(f"input {os.fspath(src)!r} does not exist")
    ext = dst.suffix.lower().lstrip(".")
    if ext not in VIDEO_EXTENSIONS and ext not in IMAGE_EXTENSIONS:
        raise UpscaleError(
            f"cannot tell the output format from {dst.name!r}: expected a video (.mp4, .mkv, .mov, .webm, ...) "
            f"or image (.png, .jpg, .webp) extension"
        )
    if dst.exists() and src.resolve() == dst.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise UpscaleError(f"output {os.fspath(dst)!r} is the input file; choose another output path")
    if dst.exists() and not overwrite:
        raise UpscaleError(f"output {os.fspath(dst)!r} exists; pass --overwrite to replace it")
    parent = dst.parent
    if not parent.is_dir():
        raise UpscaleError(f"output folder {os.fspath(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UpscaleError(f"output folder {os.fspath(parent)!r} is not writable")


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


class _Stop:
    """This file's stop flag: set by our own threads on failure, or from outside (Ctrl-C, a batch
    being cancelled).  Setting it never touches the outside event."""

    def __init__(self, outside: threading.Event | None) -> None:
        self._own = threading.Event()
        self._outside = outside

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._outside is not None and self._outside.is_set())


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def upscale_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    upscaler: Upscaler,
    options: UpscaleOptions = UpscaleOptions(),
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
    fault: Callable[[int], None] | None = None,
) -> Result:
    """Upscale ``src`` into ``dst``.  ``fault`` (tests) is called with each frame index before the model."""
    src, dst = Path(src), Path(dst)
    reporter = reporter or Reporter()
    stop = _Stop(stop)
    check_paths(src, dst, options.overwrite)
    try:
        info = probe(src)
    except InputError as exc:
        raise UpscaleError(str(exc)) from exc
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        reporter.warn(message)

    tmp = temporary_path(dst)
    image_out = dst.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
    if image_out and not info.is_image:
        raise UpscaleError(f"{src.name} is a video but {dst.name!r} is an image name; use a video extension (.mp4, .mkv, ...)")
    try:
        writer = Writer(tmp, info, options.encode, upscaler.scale, warn=warn, image=image_out)
    except EncodeError as exc:
        _remove(tmp)
        raise UpscaleError(str(exc)) from exc

    stages = Timings()
    upscaler.timings.clear()
    q_in: queue.Queue = queue.Queue(maxsize=options.queue_size)
    q_out: queue.Queue = queue.Queue(maxsize=options.queue_size)
    errors: list[BaseException] = []
    written = [0]

    def reader() -> None:
        try:
            it = read(info, writer.streams_to_copy(), stop, stages)
            while True:
                item = next(it, _END)
                if not _put(q_in, item, stop) or item is _END:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            _put(q_in, _Failure(exc), stop)

    def writer_loop() -> None:
        try:
            while True:
                item = _get(q_out, stop)
                if item is _END:
                    if not stop.is_set():
                        with writer.timings("encode"):
                            writer.close()
                    return
                if isinstance(item, PacketItem):
                    with writer.timings("encode"):
                        writer.copy_packet(item.packet, item.stream_index, item.time_base)
                else:
                    for rgb, pts, tb in item:
                        writer.write_frame(rgb, pts, tb)
                    written[0] += len(item)
                    reporter.advance(len(item))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, name="vsr-decode", daemon=True),
               threading.Thread(target=writer_loop, name="vsr-encode", daemon=True)]
    reporter.start(src.name, info.frames)
    began = time.perf_counter()
    ok = False
    try:
        for t in threads:
            t.start()
        batch: list[FrameItem] = []
        size = (info.height, info.width)

        def flush() -> None:
            if not batch:
                return
            out = upscaler.upscale(np.stack([f.rgb for f in batch])).numpy()
            _put(q_out, [(out[i], f.pts, f.time_base) for i, f in enumerate(batch)], stop)
            batch.clear()

        while not stop.is_set():  # set by the writer on an error: stop feeding the model at once
            item = _get(q_in, stop)
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.exc
            if isinstance(item, PacketItem):
                _put(q_out, item, stop)
                continue
            if item.rgb.shape[:2] != size:
                raise UpscaleError(
                    f"{src.name}: the picture size changes at frame {item.index} "
                    f"({size[1]}x{size[0]} -> {item.rgb.shape[1]}x{item.rgb.shape[0]}); this is not supported"
                )
            if fault is not None:
                fault(item.index)
            batch.append(item)
            if len(batch) >= options.batch_size:
                flush()
        flush()
        if not stop.is_set():
            _put(q_out, _END, stop)
        threads[1].join()
        if errors:
            raise errors[0]
        if stop.is_set():
            raise KeyboardInterrupt
        ok = True
    except (DecodeError, InputError) as exc:
        raise UpscaleError(str(exc)) from exc
    except EncodeError as exc:
        raise UpscaleError(f"{src.name}: {exc}") from exc
    except UpscaleError:
        raise
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # an FFmpeg or torch error mid-file: say where, as one line
        raise UpscaleError(f"{src.name}: failed after {written[0]} frames: {type(exc).__name__}: {exc}") from exc
    finally:
        if not ok:
            stop.set()
            for t in threads:
                t.join(timeout=5)
            writer.abort()
            _remove(tmp)
        reporter.finish()
    seconds = time.perf_counter() - began
    stages.update(upscaler.timings)
    stages.update(writer.timings)
    os.replace(tmp, dst)
    if info.frames_exact and info.frames and written[0] != info.frames:
        warn(f"{src.name}: wrote {written[0]} frames, the input says it has {info.frames}")
    return Result(os.fspath(src), os.fspath(dst), written[0], seconds, warnings, stages)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
