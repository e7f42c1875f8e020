"""The upscaling core: runs a model over uint8 frames (RGB, or YUV planes converted beside the
model), batching, tiling, CPU workers, CUDA streams.  No files, no containers.  What it needs to
know about a model comes from one description, :class:`vsr.model.ModelFacts`.

CPU: channels_last fp32 under ``torch.inference_mode`` (about 2x faster than NCHW for this
network on the CPUs measured).  CUDA: fp16, channels_last, reused pinned host buffers, and the
host->device copy, the compute and the device->host copy of consecutive batches overlapped with a
side stream and events (:class:`CudaRunner`, the only CUDA-specific code).

Tiling (``tile``) splits a frame into tiles whose margins cover the network's whole receptive
field, so the stitched result equals the untiled one up to float rounding: no seams.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsr.device import resolve_precision
from vsr.errors import UsageError
from vsr.model import ModelFacts, model_facts
from vsr.system import available_memory
from vsr.timing import Timings
from vsr.yuv import PlaneConversion


BLEND_MARGIN = 32  # input pixels of overlap, blended, around tiles of models with no known receptive field
BLEND_ALIGN = 16  # where such tiles start: on a 16-px grid, so window attention (windows of 4, 8 or 16
# pixels, anchored at the input's corner) groups the same pixels as in the whole frame


def tile_for_memory(free_bytes: int, bytes_per_pixel: int, batch: int = 1, fraction: float = 0.5) -> int:
    """The largest tile (input pixels per side) whose activations (``bytes_per_pixel`` per input
    pixel and frame, :meth:`vsr.model.ModelFacts.bytes_per_pixel`) fit in ``fraction`` of ``free_bytes``."""
    side = int(math.sqrt(max(1, free_bytes * fraction) / (bytes_per_pixel * batch)))
    return max(32, min(4096, side // 8 * 8))


def _ramp(before: int, core: int, after: int, device) -> torch.Tensor:
    """Blending weights along one side of a tile: rising across the ``before`` overlap, 1 over the
    ``core``, falling across the ``after`` overlap (never 0, so every pixel has some weight)."""
    up = torch.arange(1, before + 1, dtype=torch.float32, device=device) / (before + 1)
    down = torch.arange(after, 0, -1, dtype=torch.float32, device=device) / (after + 1)
    return torch.cat([up, torch.ones(core, device=device), down])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [0, 1] -> uint8 NHWC (rounded, clamped; computed in fp32, since bf16 cannot
    hold 0..255 in steps of one)."""
    return x.float().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def to_uint16(x: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [0, 1] -> uint16 NHWC, for 16-bit pictures (as :func:`to_uint8`)."""
    return x.float().mul(65535).round_().clamp_(0, 65535).to(torch.uint16).permute(0, 2, 3, 1)


# What a picture's channel values run to, by the dtype frames travel in (8-bit, or 16-bit pictures).
FULL_SCALE = {torch.uint8: 255, torch.uint16: 65535}


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int  # the region this tile is responsible for (input pixels)


def plan_tiles(height: int, width: int, tile: int) -> list[Tile]:
    """Non-overlapping cores of size <= ``tile`` covering the frame, as even as possible."""
    ny, nx = max(1, math.ceil(height / tile)), max(1, math.ceil(width / tile))
    ys = [round(i * height / ny) for i in range(ny + 1)]
    xs = [round(i * width / nx) for i in range(nx + 1)]
    return [Tile(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(ny) for j in range(nx)]


class WorkersError(UsageError, ValueError):
    """CPU workers asked for where they cannot be used."""


def check_workers(workers: int | None, device: torch.device, compile: bool) -> None:
    """Raise :class:`WorkersError` unless ``workers`` (CPU frames at once; None = choose) suits the device and mode."""
    if workers is not None and workers < 1:
        raise WorkersError(f"--cpu-workers must be >= 1, got {workers}")
    if workers not in (None, 1) and (device.type != "cpu" or compile):
        raise WorkersError(f"--cpu-workers: several CPU workers are for the CPU in eager mode, not for device {device.type}"
                         f"{' with compile' if compile else ''} (CUDA overlaps batches on its own)")


class Upscaler:
    """Runs a model (a :class:`Generator` or :class:`Bicubic`) over batches of frames.

    ``upscale(frames)`` takes uint8 NHWC RGB (tensor or array) and returns uint8 NHWC on the CPU.
    With a ``colour`` conversion (:class:`vsr.yuv.PlaneConversion`) batches are tuples of YUV
    planes instead, converted to RGB on the model's device and back to the output's planes there.

    ``precision`` (``auto|fp32|bf16|fp16``, :func:`vsr.device.resolve_precision`): on CUDA the
    model's weights are cast to it; on the CPU the weights stay fp32 and bf16/fp16 run under
    autocast (the convolutions in bf16, the bicubic skip and so the output in fp32; measured
    1.97x over fp32 on a CPU with AVX512_BF16, output 55 dB from fp32's).
    """

    def __init__(self, model: nn.Module | ModelFacts, device: torch.device | str = "cpu", tile: int | None = None,
                 precision: str = "auto", compile: bool = False, workers: int | None = None) -> None:
        self.device = torch.device(device)
        check_workers(workers, self.device, compile)
        # CPU: batches upscale_stream runs at once; None: choose (cpu_workers).  A compiled model runs
        # in one thread (compiling from several threads at once is not something to rely on).
        self.workers = 1 if workers is None and compile else workers
        # torch's intra-op threads as the caller has them (OMP_NUM_THREADS, set_num_threads, or the
        # cores): what CPU workers share out, and what is restored after them.
        self.threads = torch.get_num_threads()
        self.facts = facts = model if isinstance(model, ModelFacts) else model_facts(model)
        self.scale = facts.scale
        self.tile = tile
        self.radius = facts.radius
        self.margin = self.radius if self.radius is not None else BLEND_MARGIN  # tile overlap, input pixels
        self.dtype = resolve_precision(precision, self.device)  # what the convolutions compute in
        if self.dtype not in facts.dtypes:  # a community model may not run in fp16/bf16
            self.dtype = torch.float32
        self._autocast = self.dtype if self.device.type == "cpu" and self.dtype != torch.float32 else None
        self.input_dtype = torch.float32 if self._autocast else self.dtype  # what the model is fed
        self.bytes_per_pixel = facts.bytes_per_pixel(self.dtype)
        self.memory_format = torch.channels_last
        model = facts.module.eval().requires_grad_(False).to(self.device, memory_format=self.memory_format)
        if self.device.type == "cuda":
            model = model.to(self.dtype)
        # On CUDA, compiling also captures CUDA graphs (mode "reduce-overhead"): for fixed frame and
        # tile sizes the whole network replays as one launch.  On the CPU: inductor's default mode.
        self._cudagraphs = compile and self.device.type == "cuda"
        self._eager = model
        self.model = torch.compile(model, mode="reduce-overhead" if self._cudagraphs else None) if compile else model
        # A compiled model's first calls compile (and, with CUDA graphs, warm up and record): their
        # seconds are the warm-up cost; if compiling fails (no compiler, an unsupported op) the
        # eager model takes over and ``compile_error`` says why.
        self._warmup_calls = 3 if compile else 0
        self.warmup_seconds = 0.0
        self.compile_error: str | None = None
        self.timings = Timings()  # to_tensor / model / to_frame seconds (CPU path; CUDA work overlaps)
        self._cuda = CudaRunner(self) if self.device.type == "cuda" else None
        self._memory_tiles: dict[tuple[int, int, int], int | None] = {}  # frame shape -> tile (CPU, no --tile)

    # -- the model on one device-resident float batch --------------------------------------
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        if self._warmup_calls <= 0:
            return self._call(x)
        self._warmup_calls -= 1
        began = time.perf_counter()
        try:
            return self._call(x)
        except (torch.cuda.OutOfMemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - compiling failed: run eagerly (the same function)
            if self.model is self._eager:
                raise
            self.compile_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            self.model, self._cudagraphs, self._warmup_calls = self._eager, False, 0
            return self._call(x)
        finally:
            self.warmup_seconds += time.perf_counter() - began

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self._cudagraphs:  # each call is a new step: earlier outputs are consumed before it
            torch.compiler.cudagraph_mark_step_begin()
        if self._autocast is None:
            return self.model(x)
        with torch.autocast(self.device.type, dtype=self._autocast):
            return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float NCHW [0,1] on the device -> float NCHW [0,1] on the device, tiled if asked.

        Each tile is run with a margin around it.  Where the receptive field is known the margin
        covers it and the tile's core is exact: cores are stitched.  Otherwise (community models)
        tiles overlap by at least :data:`BLEND_MARGIN`, start on a :data:`BLEND_ALIGN` grid, and are
        blended with linear ramps across the overlap, so no seam shows where a tile's edge effects
        would be."""
        n, _, h, w = x.shape
        tile = self.tile or self._memory_tile(n, h, w)
        if not tile or (h <= tile and w <= tile):
            return self._run(x)
        s, r = self.scale, self.margin
        out = weight = None
        align = 1 if self.radius is not None else BLEND_ALIGN
        for t in plan_tiles(h, w, tile):
            y0, y1 = max(0, (t.y0 - r) // align * align), min(h, t.y1 + r)
            x0, x1 = max(0, (t.x0 - r) // align * align), min(w, t.x1 + r)
            patch = self._run(x[:, :, y0:y1, x0:x1])
            if out is None:
                out = torch.zeros((n, 3, h * s, w * s), dtype=patch.dtype if self.radius is not None else torch.float32,
                                  device=x.device)
                if self.radius is None:
                    weight = torch.zeros((1, 1, h * s, w * s), dtype=torch.float32, device=x.device)
            if self.radius is not None:  # exact cores, stitched
                oy, ox = (t.y0 - y0) * s, (t.x0 - x0) * s
                out[:, :, t.y0 * s : t.y1 * s, t.x0 * s : t.x1 * s] = patch[:, :, oy : oy + (t.y1 - t.y0) * s, ox : ox + (t.x1 - t.x0) * s]
                continue
            ramp = (_ramp((t.y0 - y0) * s, (t.y1 - t.y0) * s, (y1 - t.y1) * s, x.device)[:, None]
                    * _ramp((t.x0 - x0) * s, (t.x1 - t.x0) * s, (x1 - t.x1) * s, x.device)[None, :])
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += patch.float() * ramp
            weight[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += ramp
        return out if weight is None else out.div_(weight)

    def compile_now(self) -> None:
        """Compile the model from the next call on (CUDA: with CUDA graphs), as ``compile=True``
        would have from the start; for a run measured to be bound by the model part-way
        (:class:`vsr.pipeline.CompileWhenBound`)."""
        if self.model is not self._eager or self.compile_error:
            return
        self._cudagraphs = self.device.type == "cuda"
        self.model = torch.compile(self._eager, mode="reduce-overhead" if self._cudagraphs else None)
        self._warmup_calls = 3

    @property
    def compiled(self) -> bool:
        """Whether the model runs compiled (asked at the start or by :meth:`compile_now`)."""
        return self.model is not self._eager

    @property
    def cuda_graphs(self) -> bool:
        """Whether the model runs as captured CUDA graphs (compiled on CUDA, and compiling worked)."""
        return self._cudagraphs

    def tile_for_memory(self, free_bytes: int, batch: int) -> None:
        """Tiles that fit half of ``free_bytes`` of device memory for batches of ``batch`` frames."""
        self.tile = tile_for_memory(free_bytes, self.bytes_per_pixel, batch=batch)

    def smaller_tiles(self, height: int, width: int) -> bool:
        """Halve the tile for frames of this size (after running out of device memory); False when
        tiles are already at their smallest, 32 pixels."""
        current = self.tile or max(height, width)
        if current <= 32:
            return False
        self.tile = max(32, current // 2)
        return True

    def _memory_tile(self, n: int, h: int, w: int) -> int | None:
        """On the CPU with no --tile: tiles when a whole frame's feature maps would not fit in half
        the memory this process can still take (cgroup limits included), rather than being
        killed.  Decided once per frame shape."""
        if self.device.type != "cpu":
            return None
        key = (n, h, w)
        if key not in self._memory_tiles:
            free = available_memory()
            need = self.bytes_per_pixel * n * h * w
            self._memory_tiles[key] = (tile_for_memory(free, self.bytes_per_pixel, n)
                                       if free is not None and need > free // 2 else None)
        return self._memory_tiles[key]

    # -- host tensors <-> the model's float RGB ---------------------------------------------
    def to_model(self, tensors: Sequence[torch.Tensor], colour: PlaneConversion | None) -> torch.Tensor:
        """Device-resident uint8 (or 16-bit) RGB NHWC, or ``colour``'s planes -> the model's float NCHW input."""
        if colour is None:
            return tensors[0].permute(0, 3, 1, 2).to(self.input_dtype).div_(FULL_SCALE[tensors[0].dtype])
        return colour.decode(tensors).to(self.input_dtype)

    def from_model(self, y: torch.Tensor, colour: PlaneConversion | None,
                   size: tuple[int, int] | None = None, dtype: torch.dtype = torch.uint8) -> tuple[torch.Tensor, ...]:
        """The model's float output -> RGB NHWC of ``dtype`` (uint8, or uint16 for 16-bit pictures)
        or ``colour``'s output planes, on the device; resized first to ``size`` (height, width)
        when given (antialiased bicubic: ``--outscale``)."""
        if size is not None and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bicubic", align_corners=False, antialias=True)
        if colour is not None:
            return colour.encode(y)
        return (to_uint16(y) if dtype == torch.uint16 else to_uint8(y),)

    @torch.inference_mode()
    def upscale(self, frames, colour: PlaneConversion | None = None, size: tuple[int, int] | None = None):
        """uint8 NHWC RGB -> uint8 NHWC RGB (``scale`` times larger, or ``size``), on the CPU.  With
        ``colour``: a tuple of input planes -> a tuple of output planes."""
        tensors = _host_tensors(frames, colour)
        if self._cuda is not None:
            with self.timings("model"):
                return self._cuda.run([tensors], colour, size)[0]
        with self.timings("to_tensor"):
            x = self.to_model([t.to(self.device) for t in tensors], colour)
        with self.timings("model"):
            y = self.forward(x)
        with self.timings("to_frame"):
            out = tuple(t.cpu() for t in self.from_model(y, colour, size, tensors[0].dtype))
        return out[0] if colour is None else out

    def upscale_stream(self, batches: Iterable, colour: PlaneConversion | None = None,
                       size: tuple[int, int] | None = None) -> Iterator:
        """Like :meth:`upscale` over many batches, results in order.  On CUDA, copies and compute
        overlap; on the CPU, several batches run at once on worker threads (:meth:`cpu_workers`)."""
        if colour is not None:
            colour = colour.to(self.device)
        if self._cuda is not None:
            yield from self._cuda.stream(batches, colour, size)
            return
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return
        first = _host_tensors(first, colour)
        workers = self.cpu_workers(first[0])
        self.timings.lanes["model"] = workers
        first = first if colour is not None else first[0]
        if workers == 1:
            for batch in itertools.chain([first], batches):
                yield self.upscale(batch, colour, size)
            return
        yield from self._parallel_stream(itertools.chain([first], batches), workers, colour, size)

    def cpu_workers(self, batch: torch.Tensor) -> int:
        """How many batches like ``batch`` (its first tensor: N, H, W, ...) the CPU upscales at once,
        splitting the intra-op threads.

        Each layer of a network split over threads ends in a barrier, so any time another thread
        (the encoder, the colour conversion, another process) takes from one of the cores stalls
        all of them.  Frames on separate single-threaded workers do not wait for each other:
        measured on 2 cores (320x180 -> 1280x720), two workers of one thread matched one worker of
        two threads for the model alone on a quiet machine (up to 9 % more on a busy one) and gave
        10-14 % more frames per second in the whole pipeline, where the encoder shares the cores.
        Default: 2 workers when there are at least 2 threads (more cores: unmeasured), fewer if
        their feature maps would not fit in half the available memory.
        """
        threads = self.threads
        workers = self.workers or (2 if threads >= 2 else 1)
        if self.workers is None:
            n, h, w = batch.shape[:3]
            if self.tile:
                h, w = min(h, self.tile + 2 * self.margin), min(w, self.tile + 2 * self.margin)
            need = self.bytes_per_pixel * n * h * w
            free = available_memory()
            if free is not None:
                workers = max(1, min(workers, free // 2 // max(1, need)))
        return max(1, min(workers, threads))

    def _parallel_stream(self, batches: Iterator, workers: int, colour: PlaneConversion | None,
                         size: tuple[int, int] | None) -> Iterator:
        """Each worker thread sets its own intra-op thread count (its share of the process's).
        ``torch.set_num_threads`` also changes the count new threads start with; that is put back
        to the count this upscaler was made with (``self.threads``), not to whatever another stream
        had set, so two folder workers on the CPU cannot leave each other's share behind."""
        threads = self.threads
        shares = iter([threads // workers + (i < threads % workers) for i in range(workers)])
        share_lock = threading.Lock()

        def init() -> None:  # intra-op threads of this worker (an OpenMP per-thread setting)
            with share_lock:
                torch.set_num_threads(next(shares))

        pool = ThreadPoolExecutor(workers, thread_name_prefix="vsr-model", initializer=init)
        inflight: deque = deque()
        try:
            for batch in batches:
                inflight.append(pool.submit(self.upscale, batch, colour, size))
                if len(inflight) >= workers:
                    yield inflight.popleft().result()
            while inflight:
                yield inflight.popleft().result()
        finally:
            for future in inflight:
                future.cancel()
            pool.shutdown(wait=True)
            torch.set_num_threads(threads)


def _as_uint8_nhwc(frames) -> torch.Tensor:
    if isinstance(frames, torch.Tensor):
        batch = frames
    elif isinstance(frames, np.ndarray):
        batch = torch.from_numpy(frames)
    else:
        batch = torch.from_numpy(np.stack(list(frames)))
    if batch.dim() == 3:
        batch = batch[None]
    if batch.dtype not in FULL_SCALE or batch.dim() != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 (or 16-bit) frames shaped (N, H, W, 3), got {batch.dtype} {tuple(batch.shape)}")
    return batch


def _host_tensors(frames, colour: PlaneConversion | None) -> tuple[torch.Tensor, ...]:
    """A batch as the tuple of CPU tensors it travels as: (RGB,) or the planes ``colour`` takes."""
    if colour is None:
        return (frames[0],) if isinstance(frames, tuple) else (_as_uint8_nhwc(frames),)
    planes = tuple(torch.as_tensor(p) for p in frames)
    colour.check(planes)
    return planes


class CudaRunner:
    """CUDA only: pinned, reused host buffers; H2D copy, compute, D2H copy on overlapping streams.

    Batch k+1 is copied in on the copy stream while batch k computes on the compute stream, and
    batch k's result is copied out (into its own pinned buffers) while batch k+1 computes.  Events
    order the streams; the host waits only for the result it hands back.  A batch is a tuple of
    tensors: RGB, or the YUV planes of a :class:`PlaneConversion` (converted on the GPU, so only
    planes cross the bus).  With CUDA graphs a short last batch is padded to the size of the first,
    so the captured graph is replayed instead of a new one captured.  Out-of-memory is retried with
    smaller tiles, so no frame is ever skipped.
    """

    def __init__(self, upscaler: Upscaler) -> None:
        self.up = upscaler
        self.copy_stream = torch.cuda.Stream(device=upscaler.device)
        self.compute_stream = torch.cuda.Stream(device=upscaler.device)
        self._in: dict[tuple, list[torch.Tensor]] = {}
        self._out: dict[tuple, list[torch.Tensor]] = {}
        self._auto_tile = upscaler.tile is None  # size tiles from the memory free when the first batch comes

    def _pinned(self, pool: dict, like: torch.Tensor, index: int, slot: int) -> torch.Tensor:
        buffers = pool.setdefault((index, tuple(like.shape), like.dtype), [])
        while len(buffers) <= slot:
            buffers.append(torch.empty(like.shape, dtype=like.dtype).pin_memory())
        return buffers[slot]

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                return self.up.forward(x)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if not self.up.smaller_tiles(*x.shape[-2:]):
                    raise  # retried with smaller tiles down to 32 px: it does not fit

    @torch.inference_mode()
    def stream(self, batches: Iterable, colour: PlaneConversion | None = None,
               size: tuple[int, int] | None = None) -> Iterator:
        up, dev = self.up, self.up.device
        pending: list[tuple[torch.cuda.Event, list[torch.Tensor], int]] = []
        first_n = None  # frames in the first batch (``size`` is the output picture's size)
        for k, batch in enumerate(batches):
            tensors = _host_tensors(batch, colour)
            n = tensors[0].shape[0]
            if first_n is None:
                first_n = n
                if self._auto_tile:
                    free, _ = torch.cuda.mem_get_info(dev)
                    up.tile_for_memory(free, n)
            if up.cuda_graphs and n < first_n:  # replay the captured graph: pad with the last frame
                tensors = tuple(torch.cat([t, t[-1:].expand(first_n - n, *t.shape[1:])]) for t in tensors)
            slot = k % 2
            host_in = [self._pinned(self._in, t, i, slot).copy_(t) for i, t in enumerate(tensors)]
            with torch.cuda.stream(self.copy_stream):
                dev_in = [h.to(dev, non_blocking=True) for h in host_in]
                copied = torch.cuda.Event()
                copied.record(self.copy_stream)
            with torch.cuda.stream(self.compute_stream):
                self.compute_stream.wait_event(copied)
                y = up.from_model(self._compute(up.to_model(dev_in, colour)), colour, size, tensors[0].dtype)
                computed = torch.cuda.Event()
                computed.record(self.compute_stream)
            host_out = [self._pinned(self._out, t, i, slot) for i, t in enumerate(y)]
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(computed)
                for h, t in zip(host_out, y):
                    h.copy_(t, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.copy_stream)
            for t in (*dev_in, *y):
                t.record_stream(self.copy_stream)
            pending.append((done, host_out, n))
            if len(pending) == 2:  # hand back the previous batch while this one runs
                yield self._result(*pending.pop(0), colour)
        for item in pending:
            yield self._result(*item, colour)

    @staticmethod
    def _result(event: torch.cuda.Event, host_out: list[torch.Tensor], n: int, colour) -> torch.Tensor | tuple:
        event.synchronize()
        out = tuple(t[:n].clone() for t in host_out)
        return out[0] if colour is None else out

    def run(self, batches: list, colour: PlaneConversion | None = None, size: tuple[int, int] | None = None) -> list:
        return list(self.stream(batches, colour, size))
