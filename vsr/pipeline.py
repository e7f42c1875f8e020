"""One file through the pipeline: decode -> upscale -> encode, in five threads with bounded queues.

* ``vsr-decode`` demuxes and decodes (:mod:`vsr.decode`);
* ``vsr-to-rgb`` converts decoded frames to RGB with the source's matrix and range;
* the calling thread batches frames and runs the model (:mod:`vsr.upscaler`);
* ``vsr-to-yuv`` converts the results to the encoder's pixel format and stamps them;
* ``vsr-encode`` encodes and muxes, copying other streams' packets (:mod:`vsr.encode`).

Packets of the other streams travel through the same queues, so the output interleaves them as
the input did.  Every queue is bounded: memory does not grow with the length of the file.

The output is written to a temporary file beside the destination and renamed only when it is
complete; on any error or Ctrl-C the temporary file is removed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import numpy as np
import torch

from vsr.chunks import (ChunkError, ChunkRecord, ChunkedEncode, Chunker, Joiner, Mark, WorkFolder, chunk_length,
                        code_identity, file_identity, held_frames, work_folder_of)
from vsr.decode import (DecodeError, DecodeReport, FrameItem, InputError, PacketItem, Skipped, SkipTo, Source, Span,
                        VideoInfo, deep_picture, read, still_to_rgb, to_planes, to_rgb)
from vsr.encode import EncodeError, EncodeOptions, Writer
from vsr import __version__, hwenc
from vsr.errors import VsrError
from vsr.files import PartialFileError, finish, folder_problem, new_partial, remove
from vsr.media import ALPHA_OUTPUTS, DEEP_OUTPUTS, OUTPUT_EXTENSION, extension, output_kind
from vsr.report import Reporter
from vsr.stills import exif_upright, is_animated, too_large_for_ffmpeg, write_metadata
from vsr.system import available_memory, usable_cores
from vsr.timing import GilProbe, Timings
from vsr.upscaler import Upscaler
from vsr.yuv import PlaneConversion, plane_conversion


class UpscaleError(VsrError):
    """A file could not be upscaled; the message says why (one line, for the user)."""


_END = object()


COLOUR_MODES = ("auto", "cpu", "device")


@dataclass(frozen=True)
class OutputSize:
    """The output size asked for, other than the model's own scale: ``outscale`` times the input
    (e.g. 1.5 or 3 with a x4 model), or a ``width`` and/or ``height`` (the other side from the
    picture's aspect ratio).  Sides are rounded to even numbers (4:2:0 needs them); when both sides
    are given and change the shape, the sample aspect ratio changes so that the picture is shown
    with its shape unchanged."""

    outscale: float | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.outscale is not None and (self.width or self.height):
            raise ValueError("give either an output scale or a width/height, not both")
        for name, value in (("outscale", self.outscale), ("width", self.width), ("height", self.height)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def resolve(self, width: int, height: int, sar: Fraction | None) -> tuple[int, int, Fraction | None]:
        """(output width, output height, output sample aspect ratio) for an input picture."""
        even = lambda v: max(2, 2 * int(v / 2 + 0.5))  # noqa: E731 - halves round up
        if self.outscale is not None:
            return even(width * self.outscale), even(height * self.outscale), sar
        if self.width and self.height:
            w, h = even(self.width), even(self.height)
            display = Fraction(width, height) * (sar or 1)  # the shape the picture is shown in
            new = display * h / w
            return w, h, (None if new == 1 else new)
        if self.width:
            w = even(self.width)
            return w, even(w * height / width), sar
        if self.height:
            h = even(self.height)
            return even(h * width / height), h, sar
        return width, height, sar


@dataclass(frozen=True)
class UpscaleOptions:
    batch_size: int = 1
    overwrite: bool = False
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    queue_size: int = 16
    size: OutputSize | None = None  # None: the model's scale
    # Where YUV <-> RGB happens: "cpu" (swscale, in the to-rgb and to-yuv threads), "device" (torch
    # ops beside the model, only planes travel: vsr.yuv), "auto" (the device when it is a GPU).
    # Formats vsr.yuv does not handle are converted on the CPU whatever is asked.
    colour: str = "auto"
    deinterlace: bool = False  # interlaced video through FFmpeg's bwdif first (else a warning, and the tag kept)
    strict: bool = False  # a damaged input (frames missing) fails instead of a warning
    model_id: str | None = None  # what made the output ("vsr_x4_psnr.safetensors sha256:..."), recorded in it
    span: Span | None = None  # a part of the input only (--start/--duration)
    # A video in chunks, each encoded by its own encoder instance, ``encoders`` at once (None: from
    # the device and the cores), kept in a work folder beside the output until it is assembled, so
    # that a run stopped part-way resumes.  ``chunk_seconds``: their length (None: chosen; 0: no
    # chunks, one encoder for the whole video, as before chunks existed).
    encoders: int | None = None
    chunk_seconds: float | None = None
    # torch.compile the model part-way if it is measured to bound the run (CompileWhenBound): what
    # the CLI asks on CUDA where the user did not say --compile/--no-compile.
    compile_if_bound: bool = False
    # Chunks an earlier run of the same job finished are used (the CLI: unless --overwrite); False:
    # thrown away.  (Not ``overwrite``: a folder run replaces outputs it planned to, and still resumes.)
    resume: bool = True

    @property
    def settings(self) -> str | None:
        """What decides an output's pixels, as one line (a folder run records it per output, so a
        re-run tells a finished output from one made another way): the model and its file's hash,
        the size, the encoder settings, deinterlacing."""
        if self.model_id is None:
            return None
        e, size = self.encode, self.size
        shape = "model" if size is None else (f"x{size.outscale:g}" if size.outscale else f"{size.width}x{size.height}")
        extra = ",".join(f"{k}={v}" for k, v in e.extra)
        part = "whole" if self.span is None else f"{self.span.start:g}+{self.span.duration or 'end'}"
        return (f"vsr 1; {self.model_id}; size {shape}; codec {e.codec or 'default'} crf {e.crf} preset {e.preset} "
                f"pix_fmt {e.pix_fmt or 'default'} opts {extra or '-'} tag {e.tag or 'default'}; "
                f"deinterlace {int(self.deinterlace)}; part {part}")

    def __post_init__(self) -> None:
        if self.colour not in COLOUR_MODES:
            raise ValueError(f"colour conversion must be one of {COLOUR_MODES}, got {self.colour!r}")


@dataclass
class Result:
    input: str
    output: str
    frames: int
    seconds: float
    warnings: list[str]
    stages: Timings  # seconds per stage (decode, to_rgb, to_tensor, model, to_frame, to_yuv, encode)
    gil_wait_ms: tuple[float, float] = (0.0, 0.0)  # mean and worst wait of a thread for the GIL (GilProbe)
    gaps: list[tuple[float, float, int]] = field(default_factory=list)  # damaged spans of the input (DecodeReport)
    resumed: int = 0  # frames taken from the chunks of an earlier, unfinished run (not upscaled again)
    encoders: int = 1  # encoder instances at once (chunks)
    codec: str = ""  # the video encoder's name

    @property
    def upscaled(self) -> int:
        """Frames this run upscaled."""
        return self.frames - self.resumed

    @property
    def fps(self) -> float:
        return self.upscaled / self.seconds if self.seconds > 0 else 0.0


def check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not src.exists():
        raise UpscaleError(f"input {os.fspath(src)!r} does not exist")
    ext = extension(dst)
    if ext in OUTPUT_EXTENSION:
        raise UpscaleError(f"vsr reads .{ext} but does not write it; use .{OUTPUT_EXTENSION[ext]} (or another video extension)")
    if output_kind(dst) is None:
        raise UpscaleError(
            f"cannot tell the output format from {dst.name!r}: expected a video (.mp4, .mkv, .mov, .webm, ...) "
            f"or image (.png, .jpg, .webp, .bmp, .tif) extension"
        )
    if dst.exists() and src.resolve() == dst.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise UpscaleError(f"output {os.fspath(dst)!r} is the input file; choose another output path")
    if dst.exists() and not overwrite:
        raise UpscaleError(f"output {os.fspath(dst)!r} exists; pass --overwrite to replace it")
    problem = folder_problem(dst)
    if problem:
        raise UpscaleError(f"output {problem}")


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


class StageThreads:
    """The generic piece: stage functions on named daemon threads.  The first error in any of them
    sets the shared ``stop`` (so every stage winds down) and is raised again by :meth:`check`."""

    def __init__(self, stop: _Stop) -> None:
        self.stop = stop
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, name: str, body: Callable[[], None]) -> None:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                self.errors.append(exc)
                self.stop.set()
        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def wind_down(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


# -- the stages: each a function of its queues -------------------------------------------------
_PASSED = (PacketItem, Mark)  # what the conversion and model stages pass on untouched, in its place


def _decode_stage(items: Iterator, q_out: queue.Queue, stop: _Stop) -> None:
    """vsr-decode: frames and packets from :func:`vsr.decode.read`, in file order."""
    for item in items:
        if not _put(q_out, item, stop):
            return
    _put(q_out, _END, stop)


def _relay_stage(q_in: queue.Queue, q_out: queue.Queue, convert: Callable[[Any], Any], stop: _Stop,
                 passed: Callable[[Any], None] | None = None) -> None:
    """vsr-to-rgb / vsr-to-yuv: frames through ``convert``, packets passed on as they are (shown
    to ``passed`` first)."""
    while True:
        item = _get(q_in, stop)
        if item is not _END and not isinstance(item, _PASSED):
            item = convert(item)
        elif passed is not None and item is not _END:
            passed(item)
        if not _put(q_out, item, stop) or item is _END:
            return


def _encode_stage(q_in: queue.Queue, writer: Writer, reporter: Reporter, stop: _Stop) -> None:
    """vsr-encode: frames encoded and packets copied in order; the file finished at the end."""
    while True:
        item = _get(q_in, stop)
        if item is _END:
            if not stop.is_set():
                with writer.timings("encode"):
                    writer.close()
            return
        if isinstance(item, PacketItem):
            with writer.timings("encode"):
                writer.copy_packet(item.packet, item.stream_index, item.time_base)
        else:
            for frame in item:
                writer.encode_frame(frame)
            reporter.advance(len(item))


def _chunked_encode_stage(q_in: queue.Queue, encode: ChunkedEncode, writer: Writer, reporter: Reporter,
                          stop: _Stop) -> None:
    """vsr-encode for a video in chunks: frames to their chunk's encoder, chunks joined in order,
    packets muxed after the frames before them (:class:`vsr.chunks.ChunkedEncode`); the file
    finished at the end."""
    try:
        while True:
            item = _get(q_in, stop)
            if item is _END:
                if not stop.is_set():
                    encode.close()
                    with writer.timings("encode"):
                        writer.close()
                return
            if isinstance(item, Mark):
                encode.mark(item)
            elif isinstance(item, PacketItem):
                encode.packet(item)
            else:
                for frame in item:
                    encode.frame(frame)
                reporter.advance(len(item))
    except BaseException:
        encode.abort()
        raise


# Measured on an H200 at 480x270 -> 1080p (#29): CUDA graphs run the generator 1.7x faster than eager
# (384 vs 225 fps), and compiling and capturing them took 12.7 s.
COMPILED_SPEEDUP = 1.7
COMPILE_SECONDS = 13.0


def worth_compiling(elapsed: float, waited: float, frames: int, frames_left: int | None) -> bool:
    """Whether compiling the model now pays: it bounded the run so far (the model stage waited on
    its neighbours at most a fifth of the ``elapsed`` seconds), and what is left, at the rate so
    far, takes long enough that running it :data:`COMPILED_SPEEDUP` times faster saves more than
    :data:`COMPILE_SECONDS` (an unknown length counts as long)."""
    if elapsed <= 0 or frames <= 0 or waited > 0.2 * elapsed:
        return False
    if frames_left is None:
        return True
    left = frames_left * elapsed / frames
    return left * (1 - 1 / COMPILED_SPEEDUP) > COMPILE_SECONDS


class CompileWhenBound:
    """Watches the model stage (the seconds it waits for frames or for room downstream) and, once
    :data:`LOOK_SECONDS` have passed, compiles the model if :func:`worth_compiling` says so; it
    decides once.  A run the encoder bounds never pays for compiling."""

    LOOK_SECONDS = 5.0

    def __init__(self, upscaler: Upscaler, total: int | None) -> None:
        self.upscaler, self.total = upscaler, total
        self.began: float | None = None
        self.waited = 0.0
        self.frames = 0
        self.decided: bool | None = None  # None: not yet; then whether it compiled

    def wait(self, seconds: float) -> None:
        if self.began is not None:
            self.waited += seconds

    def skip(self, frames: int) -> None:
        """``frames`` of the video will not come: an earlier run's chunks hold them."""
        if self.total is not None:
            self.total = max(0, self.total - frames)

    def batch(self, frames: int) -> None:
        """``frames`` more were handed to the model."""
        if self.decided is not None:
            return
        if self.began is None:  # from the end of the first batch: the first calls warm up
            self.began = time.perf_counter()
            return
        self.frames += frames
        elapsed = time.perf_counter() - self.began
        if elapsed < self.LOOK_SECONDS:
            return
        left = None if self.total is None else max(0, self.total - self.frames)
        self.decided = worth_compiling(elapsed, self.waited, self.frames, left)
        if self.decided:
            self.upscaler.compile_now()


def _model_stage(q_in: queue.Queue, q_out: queue.Queue, upscaler: Upscaler, colour: PlaneConversion | None,
                 resize: tuple[int, int] | None, shape: tuple[int, int], batch_size: int, name: str, stop: _Stop,
                 fault: Callable[[int], None] | None, watch: CompileWhenBound | None = None) -> None:
    """The calling thread: frames batched through the model, results and packets on in input order.

    Batches handed to the model and packets that arrived behind them wait in ``pending``: on CUDA
    the upscaler keeps one batch in flight while the next is copied in, so results come back one
    batch late, and packets wait for the frames before them.  A chunk's :class:`Mark` that arrives
    while a batch fills goes into the batch, between the frames it separates (a batch is not cut
    short: another batch size would mean another CUDA graph)."""
    pending: deque[list[FrameItem | Mark] | PacketItem | Mark] = deque()

    def stack(batch: list[FrameItem | Mark]):
        frames = [f for f in batch if isinstance(f, FrameItem)]
        if colour is None:
            return np.stack([f.rgb for f in frames])
        return tuple(np.stack([f.planes[k] for f in frames]) for k in range(len(frames[0].planes)))

    def batches() -> Iterator:
        batch: list[FrameItem | Mark] | None = None  # filling; already in ``pending``
        size = 0  # frames in it
        while not stop.is_set():  # set by any thread on an error: stop feeding the model at once
            began = time.perf_counter()
            item = _get(q_in, stop)
            if watch is not None:
                watch.wait(time.perf_counter() - began)
            if item is _END:
                break
            if isinstance(item, Mark) and item.done is not None and watch is not None:
                watch.skip(item.done.frames)
            if isinstance(item, Mark) and batch is not None:
                batch.append(item)
                continue
            if isinstance(item, _PASSED):
                if pending:
                    pending.append(item)
                else:
                    _put(q_out, item, stop)
                continue
            if item.size != shape:
                raise UpscaleError(
                    f"{name}: the picture size changes at frame {item.index} "
                    f"({shape[1]}x{shape[0]} -> {item.size[1]}x{item.size[0]}); this is not supported"
                )
            if fault is not None:
                fault(item.index)
            if batch is None:
                batch, size = [], 0
                pending.append(batch)
            batch.append(item)
            size += 1
            if size >= batch_size:
                if watch is not None:
                    watch.batch(size)
                yield stack(batch)
                batch = None
        if batch and not stop.is_set():
            yield stack(batch)

    results = (upscaler.upscale_stream(batches()) if colour is None and resize is None
               else upscaler.upscale_stream(batches(), colour, size=resize))
    for out in results:
        batch = pending.popleft()
        if colour is None:
            out = out.numpy()
            result = lambda i, f: (out[i], f.pts, f.time_base, f.alpha)  # noqa: E731
        else:
            planes = [p.numpy() for p in out]
            result = lambda i, f: ([p[i] for p in planes], f.pts, f.time_base)  # noqa: E731
        began = time.perf_counter()
        done, i = [], 0
        for element in batch:  # frames, and the marks between them
            if isinstance(element, Mark):
                if done:
                    _put(q_out, done, stop)
                done = []
                _put(q_out, element, stop)
            else:
                done.append(result(i, element))
                i += 1
        if done:
            _put(q_out, done, stop)
        if watch is not None:
            watch.wait(time.perf_counter() - began)
        while pending and isinstance(pending[0], _PASSED):
            _put(q_out, pending.popleft(), stop)
    while pending and not stop.is_set():  # packets after the last frame
        _put(q_out, pending.popleft(), stop)
    if not stop.is_set():
        _put(q_out, _END, stop)


@dataclass
class _Plan:
    """One file, set up: what it is, where it goes, and how (before any frame moves)."""

    info: VideoInfo
    writer: Writer
    tmp: Path
    image_out: bool
    out_size: tuple[int, int]  # (width, height)
    resize: tuple[int, int] | None  # (height, width) after the model, when not its own scale
    colour: PlaneConversion | None
    deinterlace: bool
    deep: bool  # a 16-bit picture carried at 16 bits (decode.deep_picture, media.DEEP_OUTPUTS)
    source: Source  # the input, opened once: described, the writer's templates for the copied streams, then read
    chunks: "_Chunks | None" = None  # the video in chunks (None: one encoder for the whole video)


@dataclass
class _Chunks:
    """How a video is cut and encoded in chunks, and where they are kept."""

    work: WorkFolder
    encoders: int
    threads: int  # each encoder's


def default_encoders(device_type: str, cores: int, codec: str) -> int:
    """Encoder instances at once: one where the model bounds the run (on the CPU the model is far
    slower than x264) or the encoder is a chip's (its sessions are few, and cores do not speed it),
    else as many as fill the cores (:func:`vsr.hwenc.encoders_for`)."""
    if device_type == "cpu" or hwenc.family(codec):
        return 1
    return hwenc.encoders_for(cores)


def _chunk_plan(src: Path, dst: Path, info: VideoInfo, writer: Writer, upscaler: Upscaler, options: UpscaleOptions,
                warn: Callable[[str], None], reporter: Reporter | None = None) -> _Chunks | None:
    """The chunks of this video, or None to encode it whole (a picture, a container or encoder whose
    chunks cannot be joined, ``chunk_seconds`` 0, or a video of one chunk)."""
    asked = options.encoders
    if options.chunk_seconds == 0:
        if asked and asked > 1:
            raise UpscaleError(f"--encoders {asked} needs chunks; --chunk-seconds 0 turns them off")
        return None
    problem = writer.chunk_problem()
    if problem is not None:
        if asked and asked > 1:
            raise UpscaleError(f"--encoders {asked}: {problem} (use --encoders 1)")
        return None
    cores = options.encode.threads or usable_cores()
    encoders = asked or default_encoders(upscaler.device.type, cores, writer.video.codec_context.name)
    frames = info.frames if options.span is None else options.span.frames(info)
    length = chunk_length(frames, float(info.rate or 25), encoders, writer.frame_bytes, available_memory(),
                          options.chunk_seconds)
    if frames is not None and frames <= length and not work_folder_of(dst).exists():
        return None  # one chunk: nothing to share or resume
    # The input, and what decides the chunks' pixels and bits: the settings a folder run records, and
    # also the arithmetic (precision, device, where colours are converted) and the libraries.  (Not the
    # tiles or the batch: vsr sizes them from the memory free, and they change no more than rounding.)
    try:
        job = file_identity(src)
    except OSError as exc:
        raise UpscaleError(f"cannot read {src.name}: {exc.strerror or exc}") from exc
    device = upscaler.device.type
    if device == "cuda":
        device += f" ({torch.cuda.get_device_name(upscaler.device)})"  # another GPU rounds differently
    job.update(output=extension(dst), settings=options.settings,
               arithmetic=f"{upscaler.dtype} on {device}, colour {options.colour}",
               libraries=f"vsr {__version__} ({code_identity()}), torch {torch.__version__}, PyAV {av.__version__}, "
                         f"libavcodec {av.library_versions['libavcodec']}")
    fresh = not options.resume or options.settings is None  # no settings to tie chunks to: never resumed
    try:
        work = WorkFolder.open(dst, job, length, fresh, warn)
    except ChunkError as exc:
        raise UpscaleError(str(exc)) from exc
    except OSError as exc:
        raise UpscaleError(f"cannot make the work folder {work_folder_of(dst).name!r}: {exc.strerror or exc}") from exc
    if work.done and reporter is not None:
        kept = sum(r.frames for r in work.done.values())
        reporter.info(f"resuming {dst.name}: {len(work.done)} chunk(s), {kept} frames, kept from an unfinished run "
                      f"in {work.path.name}")
    return _Chunks(work, encoders, max(1, cores // encoders))


def _plan(src: Path, dst: Path, upscaler: Upscaler, options: UpscaleOptions, warn: Callable[[str], None],
          reporter: Reporter | None = None) -> _Plan:
    check_paths(src, dst, options.overwrite)
    try:
        source = Source.open(src)
    except InputError as exc:
        raise UpscaleError(str(exc)) from exc
    try:
        plan = _plan_source(source, src, dst, upscaler, options, warn)
    except BaseException:
        source.close()
        raise
    try:
        if not plan.image_out and not plan.info.is_image:
            plan.chunks = _chunk_plan(src, dst, plan.info, plan.writer, upscaler, options, warn, reporter)
            if plan.chunks is not None:
                try:
                    plan.chunks.work.own_partial(plan.tmp)
                except OSError as exc:
                    raise UpscaleError(f"cannot write in the work folder {plan.chunks.work.path.name!r}: "
                                       f"{exc.strerror or exc}") from exc
        return plan
    except BaseException:
        if plan.chunks is not None:
            work = plan.chunks.work
            work.discard() if not work.done else work.close()  # a folder made for nothing goes
        plan.writer.abort()
        remove(plan.tmp)
        source.close()
        raise


def _plan_source(source: Source, src: Path, dst: Path, upscaler: Upscaler, options: UpscaleOptions,
                 warn: Callable[[str], None]) -> _Plan:
    """:func:`_plan` for the input, open and described."""
    info = source.info
    image_out = output_kind(dst) == "image"
    if image_out and not info.is_image:
        what = "an animated picture (upscaled as a video)" if is_animated(src) else "a video"
        raise UpscaleError(f"{src.name} is {what} but {dst.name!r} is an image name; "
                           f"use a video extension (.mp4, .mkv, ...)")
    out_w, out_h, out_sar = info.width * upscaler.scale, info.height * upscaler.scale, info.sample_aspect_ratio
    if options.size is not None:
        out_w, out_h, out_sar = options.size.resolve(info.width, info.height, info.sample_aspect_ratio)
    resize = None if (out_w, out_h) == (info.width * upscaler.scale, info.height * upscaler.scale) else (out_h, out_w)
    # On the CPU the model's whole output is in this process's memory before it is resized (tiles
    # are stitched at full scale); on a GPU it is resized there and only the final size comes back.
    model_out = (info.width * upscaler.scale, info.height * upscaler.scale) if resize and upscaler.device.type == "cpu" else None
    _check_output_fits(out_w, out_h, options.batch_size, model_out)
    deep = deep_picture(info) and extension(dst) in DEEP_OUTPUTS
    tmp = None
    try:
        tmp = new_partial(dst)  # vsr's own file, made exclusively: never a planted link, never the input
        writer = Writer(tmp, info, options.encode, (out_w, out_h), warn=warn, image=image_out, sample_aspect_ratio=out_sar,
                        field_order=info.field_order if info.interlaced and not options.deinterlace else 0,
                        span=options.span, source=source.container, deep=deep)
    except (EncodeError, PartialFileError) as exc:
        remove(tmp)
        raise UpscaleError(str(exc)) from exc
    except BaseException:
        remove(tmp)
        raise
    if info.is_image:
        _warn_still_limits(info, dst, deep, warn)
    if not info.is_image and any(c.is_alpha for c in av.VideoFormat(info.pix_fmt).components):
        warn(f"transparency is dropped ({info.pix_fmt}: video is written without an alpha channel)")
    if info.interlaced and not options.deinterlace:
        warn(f"interlaced video ({_FIELD_ORDERS.get(info.field_order, 'field order unknown')}): both "
             f"fields are upscaled as one picture, which blurs motion; --deinterlace converts it to progressive first")
    colour = None if info.is_image else _device_colour(options.colour, source, writer, upscaler, warn)
    return _Plan(info, writer, tmp, image_out, (out_w, out_h), resize, colour, options.deinterlace and info.interlaced,
                 deep, source)


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
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        reporter.warn(message)

    plan = _plan(src, dst, upscaler, options, warn, reporter)
    info, writer, colour = plan.info, plan.writer, plan.colour
    stages = Timings()
    upscaler.timings.clear()
    q_decoded, q_converted, q_upscaled, q_prepared = (queue.Queue(maxsize=options.queue_size) for _ in range(4))
    report = DecodeReport()

    def prepare(results: list) -> list:
        if colour is None:
            return [writer.prepare_frame(rgb, pts, tb, alpha) for rgb, pts, tb, alpha in results]
        return [writer.prepare_planes(planes, colour.encode.full_range, pts, tb) for planes, pts, tb in results]

    def kept_chunk(item) -> None:
        """A chunk a stopped run finished goes by: the frame after it is stamped after its frames."""
        if isinstance(item, Mark) and item.done is not None and item.done.last_pts is not None:
            writer.follow(item.done.last_pts)

    if info.is_image:
        convert_in = lambda item: still_to_rgb(item, info, stages, plan.deep)  # noqa: E731
    elif colour is None:
        convert_in = lambda item: to_rgb(item, stages)  # noqa: E731
    else:
        convert_in = lambda item: to_planes(item, colour.decode.format, stages)  # noqa: E731
    skip, skipped = _skip_to(plan, writer, options, report)
    if plan.chunks is not None:  # recorded with each chunk, for a run that resumes and skips them
        plan.chunks.work.damage_so_far = lambda: [list(span) for span in report.damage]
    items = read(info, writer.streams_to_copy(), stop, stages, deinterlace=plan.deinterlace, report=report,
                 span=options.span, source=plan.source, skip=skip)
    encode = None
    if plan.chunks is not None:
        items, encode = _chunked(items, plan.chunks, writer, reporter, stop, options.queue_size, skipped)
    reporter.start(src.name, info.frames if options.span is None else options.span.frames(info))
    began = time.perf_counter()
    ok = False
    gil = GilProbe().start()
    threads = StageThreads(stop)
    try:
        threads.start("vsr-decode", lambda: _decode_stage(items, q_decoded, stop))
        threads.start("vsr-to-rgb", lambda: _relay_stage(q_decoded, q_converted, convert_in, stop))
        threads.start("vsr-to-yuv", lambda: _relay_stage(q_upscaled, q_prepared, prepare, stop, kept_chunk))
        if encode is None:
            threads.start("vsr-encode", lambda: _encode_stage(q_prepared, writer, reporter, stop))
        else:
            threads.start("vsr-encode", lambda: _chunked_encode_stage(q_prepared, encode, writer, reporter, stop))
        watch = None
        if options.compile_if_bound and not upscaler.compiled and not info.is_image:
            watch = CompileWhenBound(upscaler, info.frames if options.span is None else options.span.frames(info))
        _model_stage(q_converted, q_upscaled, upscaler, colour, plan.resize, (info.height, info.width),
                     options.batch_size, src.name, stop, fault, watch)
        threads.threads[-1].join()
        threads.check()
        if stop.is_set():
            raise KeyboardInterrupt
        _judge_damage(report, options, src.name, warn)
        ok = True
    except (DecodeError, InputError) as exc:
        raise UpscaleError(str(exc)) from exc
    except (EncodeError, ChunkError) as exc:
        raise UpscaleError(f"{src.name}: {exc}") from exc
    except (UpscaleError, KeyboardInterrupt):
        raise
    except Exception as exc:  # an FFmpeg or torch error mid-file: say where, as one line
        raise UpscaleError(f"{src.name}: failed after {writer.frames_written} frames: {type(exc).__name__}: {exc}") from exc
    finally:
        if not ok:
            threads.wind_down()
            if encode is not None:
                encode.abort()
            writer.abort()
            remove(plan.tmp)
            if plan.chunks is not None:
                _keep_work(plan.chunks.work, dst, reporter)
        plan.source.close()
        reporter.finish()
        gil.stop()
    seconds = time.perf_counter() - began
    stages.merge(upscaler.timings)
    stages.merge(writer.timings)
    try:
        if plan.image_out and info.still is not None:
            exif = info.still.exif
            write_metadata(plan.tmp, info.still.icc, exif_upright(exif) if exif else None, plan.out_size)
        finish(plan.tmp, dst)
    except BaseException:
        remove(plan.tmp)
        if plan.chunks is not None:
            plan.chunks.work.close()  # every chunk is kept: the same command assembles the output again
        raise
    if plan.chunks is not None:
        plan.chunks.work.discard()
    if info.frames_exact and info.frames and writer.frames_written != info.frames and not report.spans() and not options.span:
        warn(f"{src.name}: wrote {writer.frames_written} frames, the input says it has {info.frames}")
    return Result(os.fspath(src), os.fspath(dst), writer.frames_written, seconds, warnings, stages,
                  (gil.mean_ms, gil.max_ms), report.spans(), resumed=encode.resumed if encode else 0,
                  encoders=plan.chunks.encoders if plan.chunks else 1, codec=writer.video.codec_context.name)


def _skip_to(plan: _Plan, writer: Writer, options: UpscaleOptions,
             report: DecodeReport) -> tuple[SkipTo | None, list[ChunkRecord]]:
    """What a run that resumes need not decode: the chunks done from the first on, where the input
    shows exactly their frames' times before the next one's (demuxed: vsr.decode.Source.shown_before)
    and nothing else; else nothing is skipped (their frames are decoded and dropped, as the chunks
    done further on are).  Frame times that went backwards, two frames at one time (the encoder
    was given the second a tick later), packets a decoder drops (an MP4 edit list): the frames
    a reader gives from the middle might not be the ones the first run gave from there.  The
    times skipped go into ``report``, so that gaps in them are still found."""
    if plan.chunks is None or plan.deinterlace:
        return None, []
    kept = plan.chunks.work.done_from_start(writer.time_base)
    if kept is None:
        return None, []
    prefix, until, pts = kept
    times = plan.source.shown_before(until, options.span)
    tb = writer.time_base
    if times is None or sorted(round(t / tb) for t in times) != pts:
        return None, []
    report.times.extend(float(t) for t in times)
    for a, b in plan.chunks.work.damage:  # what the decoder met there in the run that made them
        if a < until:
            report.damaged(a, b)
    return SkipTo(len(pts), until), prefix


def _chunked(items: Iterator, chunks: _Chunks, writer: Writer, reporter: Reporter, stop: _Stop,
             queue_size: int, skipped: list[ChunkRecord]) -> tuple[Iterator, ChunkedEncode]:
    """The frame items cut into chunks (those an earlier run finished dropped; ``skipped``: those
    the reader skips, vsr.decode.SkipTo), and the encode stage that takes them."""
    work, tb = chunks.work, writer.time_base

    def pts_of(item: FrameItem) -> int | None:
        return None if item.pts is None else round(item.pts * item.time_base / tb)

    def keyframe(item: FrameItem) -> bool:
        return bool(item.frame is not None and item.frame.key_frame)

    cut = Chunker(work.length, work.done, pts_of, [(r, float(r.first_pts * tb)) for r in skipped]).items(
        items, lambda item: isinstance(item, FrameItem), keyframe,
        lambda item: item.seconds if isinstance(item, Skipped) else None, lambda item: item.index)
    encode = ChunkedEncode(work, chunks.encoders, chunks.threads, writer.chunk_encoder,
                           Joiner(writer.video.codec_context.extradata), tb, writer.mux_video_packet,
                           lambda item: writer.copy_packet(item.packet, item.stream_index, item.time_base),
                           stop, reporter.advance, held_frames(chunks.encoders, work.length, queue_size, writer.frame_bytes,
                                                               available_memory()), writer.timings)
    return cut, encode


def _keep_work(work: WorkFolder, dst: Path, reporter: Reporter) -> None:
    """A run that did not finish: its finished chunks stay for the next one (said), else the work
    folder goes."""
    work.close()
    if not work.done:
        work.discard()
        return
    frames = sum(r.frames for r in work.done.values())
    reporter.info(f"{len(work.done)} finished chunk(s) ({frames} frames) kept in {work.path.name}: "
                  f"the same command resumes {dst.name} from there")


def _judge_damage(report: DecodeReport, options: UpscaleOptions, name: str, warn: Callable[[str], None]) -> None:
    """Frames missing in the input, or damage the demuxer or decoder reported: a warning naming the
    spans, or with ``--strict`` a failure."""
    found = report.spans()
    if not found:
        return
    lost = sum(n for _a, _b, n in found)
    shown = [f"{a:.2f}-{b:.2f} s" if b - a >= 0.005 else f"at {a:.2f} s" for a, b, _n in found[:6]]
    spans = ", ".join(shown) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    message = (f"damaged input: about {lost} frames missing ({spans})" if lost else
               f"damaged input: the demuxer or decoder reported damage ({spans}); frames there may show it")
    if options.strict:
        raise UpscaleError(f"{name}: {message}; not written (--strict)")
    warn(message)


# Memory per output pixel and frame that no tiling removes: the float RGB result, its uint8 copy,
# the encoder's frame.
OUTPUT_BYTES_PER_PIXEL = 3 * 4 + 3 + 3
# ... and per pixel of the model's own output when that is resized afterwards (--outscale, --width,
# --height): the stitched float RGB result and the blending weights of overlapping tiles.
MODEL_OUTPUT_BYTES_PER_PIXEL = 3 * 4 + 4
# The most of that vsr holds for one resize, whatever memory is free: 1080p through a x4 model
# (33 Mpx, 0.5 GiB) fits; a 4K frame through a x4 model, or a huge picture asked to come out small,
# does not (a model of the smaller scale does the same job in a quarter of the memory).
MAX_RESIZED_MODEL_OUTPUT = 2**30


def _check_output_fits(width: int, height: int, batch: int, model_out: tuple[int, int] | None = None) -> None:
    """Refuse, before any work, an output FFmpeg cannot encode or this process cannot hold.
    ``model_out``: (width, height) of the model's output where it is held whole before being
    resized to ``width`` x ``height``."""
    if too_large_for_ffmpeg(width, height):
        raise UpscaleError(f"output size {width}x{height} is larger than FFmpeg's encoders accept "
                           f"((width + 128) x (height + 128) must stay under {2**31 // 8} pixels); "
                           f"make it smaller with --outscale, --width or --height")
    held = MODEL_OUTPUT_BYTES_PER_PIXEL * model_out[0] * model_out[1] if model_out is not None else 0
    if held > MAX_RESIZED_MODEL_OUTPUT:
        raise UpscaleError(f"the model's output is {model_out[0]}x{model_out[1]} before it is resized to {width}x{height}: "
                           f"{held / 2**30:.1f} GiB held whole, more than the {MAX_RESIZED_MODEL_OUTPUT / 2**30:g} GiB vsr "
                           f"holds for a resize; use a model of a smaller scale (--scale 2) or a smaller input")
    free = available_memory()
    need = OUTPUT_BYTES_PER_PIXEL * width * height * max(1, batch)
    need += held * max(1, batch)
    if free is not None and need > free and model_out is not None:
        # Tiles (--tile) do not help: they are stitched into the whole output before it is resized.
        raise UpscaleError(f"the model's output is {model_out[0]}x{model_out[1]} before it is resized to {width}x{height} "
                           f"and needs about {need / 2**30:.1f} GiB of memory, {free / 2**30:.1f} GiB is available "
                           f"(--tile does not lower this); use a model of a smaller scale or a smaller input"
                           + (", or a smaller --batch-size" if batch > 1 else ""))
    if free is not None and need > free:
        raise UpscaleError(f"output size {width}x{height} needs about {need / 2**30:.1f} GiB of memory, "
                           f"{free / 2**30:.1f} GiB is available; make it smaller with --outscale, --width or "
                           f"--height" + (" or a smaller --batch-size" if batch > 1 else ""))


_FIELD_ORDERS = {2: "top field first", 3: "bottom field first", 4: "top field first", 5: "bottom field first"}


def _warn_still_limits(info: VideoInfo, dst: Path, deep: bool, warn: Callable[[str], None]) -> None:
    """What a picture loses on the way, said once."""
    ext = extension(dst)
    for line in info.still.dropped if info.still is not None else ():
        warn(line)
    if info.alpha and ext not in ALPHA_OUTPUTS:
        warn(f"transparency is dropped (.{ext} has no alpha channel; use .png or .webp)")
    if info.bits > 8 and not deep:
        why = (f".{ext} holds 8 bits; .png and .tif keep 16" if ext not in DEEP_OUTPUTS
               else "16 bits are kept for RGB and grey pictures without transparency")
        warn(f"{info.bits}-bit picture is upscaled and written at 8 bits per channel ({why})")


def _device_colour(mode: str, source: Source, writer: Writer, upscaler: Upscaler,
                   warn: Callable[[str], None]) -> PlaneConversion | None:
    """The conversions to run beside the model, or None to convert with swscale on the CPU (the
    chroma siting from the first frame the source decoded)."""
    if mode == "cpu" or (mode == "auto" and upscaler.device.type != "cuda"):
        return None
    info = source.info
    out_size = (writer.video.height, writer.video.width)
    colour = plane_conversion(info.pix_fmt, info.colour, (info.height, info.width), writer.pix_fmt, writer.tags, out_size,
                              source.chroma_left())
    if colour is None and mode == "device":
        warn(f"colour conversion {info.pix_fmt} -> {writer.pix_fmt} is not offered on the device; converting on the CPU")
    return colour
