#!/usr/bin/env python
"""Throughput benchmark for `vsr upscale` (prints numbers; not a test).

Measures, on the machine it runs on:
  1. model efficiency: the generator's achieved FLOP rate (the frames as the pipeline feeds them,
     CPU workers included) vs the fp32 GEMM rate, the two measured alternately in the same run;
  2. pipeline efficiency: end-to-end `upscale_file` fps vs model-only fps on the same frames;
  3. the naive baseline (decode -> model -> encode, one frame at a time, one thread) and our speed-up;
  4. flat memory: peak RSS of the pipeline on a clip and on one 10x longer (separate processes; both in
     1-s chunks, --memory-chunk-seconds);
  5. optionally (--sweep) CPU workers and batch sizes, and (--compile) torch.compile.

Usage: python scripts/benchmark.py [--weights NAME|PATH|COMMUNITY.pth] [--frames 12] [--sweep] [--compile] [--memory-model bicubic]
(the memory test with the generator takes 550 frames: ~11 min on 2 cores; bicubic is fast)

On a GPU (``--device cuda``; ``--suite gpu`` runs the same suite on any device, small, to check it):
for 480x270 -> 1920x1080 and 960x540 -> 3840x2160 (``--sizes``), the generator alone (input resident
on the GPU; eager and CUDA graphs; fps and TFLOPS), the upscaler's stream (host frames in and out:
RGB, and YUV planes converted on the GPU), libx264 alone on the same output frames and settings,
`vsr upscale`'s defaults end to end, the naive loop, and the targets' ratios; then training
(``--train-seconds``): steps/s of both phases at batch 16 of 96-px crops, the GPU's busy share (kernel
time over wall time, torch.profiler) and the time the loop waited for batches.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vsr.system import keep_freed_memory  # noqa: E402
from vsr.model import Bicubic, Generator, GeneratorConfig  # noqa: E402
from vsr.flops import frame_flops  # noqa: E402
from vsr.pipeline import UpscaleOptions, upscale_file  # noqa: E402
from vsr.upscaler import Upscaler  # noqa: E402
from vsr.weights import WeightsError, load_model as load_weights, resolve_weights  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "bbb_sample.mp4"


def gemm_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return times


def model_vs_gemm(up: Upscaler, frames: list[np.ndarray], batch: int, group: int, n: int = 2048,
                  gemm_repeats: int = 3) -> tuple[list[float], list[float]]:
    """Seconds per frame of the upscaler and seconds per fp32 n^3 GEMM, measured alternately (a few
    GEMMs before each group of frames) so that both see the same machine: on a shared VM the speed
    of both drifts by 10-30 % within minutes, which a GEMM measured once at the start does not follow.
    ``group``: the frames the upscaler runs at once (batch x its CPU workers)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    stream_seconds(up, frames[:group], batch)  # warm-up
    frame_times: list[float] = []
    gemm_times: list[float] = []
    for i in range(0, len(frames), group):
        gemm_times += gemm_seconds(a, b, gemm_repeats)
        chunk = frames[i : i + group]
        frame_times += [stream_seconds(up, chunk, batch) / len(chunk)] * len(chunk)
    gemm_times += gemm_seconds(a, b, gemm_repeats)
    return frame_times, gemm_times


def stream_seconds(up: Upscaler, frames: list[np.ndarray], batch: int) -> float:
    """Wall seconds to upscale ``frames`` (uint8 in, uint8 out) as the pipeline feeds the model."""
    batches = [np.stack(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    t0 = time.perf_counter()
    for _ in up.upscale_stream(batches):
        pass
    return time.perf_counter() - t0


def describe(model) -> str:
    return str(model.config) if isinstance(model, Generator) else f"{model.architecture} x{model.scale} (spandrel)"


def load_model(spec: str | None) -> torch.nn.Module:
    try:
        return load_weights(resolve_weights(spec or "vsr_x4_psnr"))
    except WeightsError:
        print("(no bundled weights: timing an untrained generator of the bundled configuration)")
        return Generator(GeneratorConfig(batch_norm=False, global_skip="bicubic")).eval()


def decoded_frames(path: Path, count: int) -> list[np.ndarray]:
    from vsr.colour import frame_to_rgb

    with av.open(str(path)) as c:
        frames = [frame_to_rgb(f) for f in c.decode(video=0)]
    while len(frames) < count:
        frames += frames
    return frames[:count]


def model_only(up: Upscaler, frames: list[np.ndarray], batch: int) -> float:
    """Frames per second of the upscaler alone (uint8 in, uint8 out), after a warm-up."""
    stream_seconds(up, frames[: 2 * batch], batch)
    return len(frames) / stream_seconds(up, frames, batch)


def naive_child(weights: str | None, src: str, dst: str, limit: int) -> None:
    """The naive loop on the CPU, in a process of its own (glibc's default allocator)."""
    print(json.dumps({"fps": naive_loop(load_model(weights), torch.device("cpu"), Path(src), Path(dst), limit)}))


def in_subprocess(function: str, *args, env: dict[str, str] | None = None) -> dict:
    """Call ``function(*args)`` of this script in a fresh Python; it prints one JSON line, returned here."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from scripts.benchmark import {function}; "
            f"{function}(*{tuple(str(a) if isinstance(a, Path) else a for a in args)!r})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(res.stdout.strip().splitlines()[-1])


def naive_fps(weights: str | None, src: Path, dst: Path, limit: int) -> float:
    return in_subprocess("naive_child", weights, src, dst, limit, env={"VSR_KEEP_FREED_MEMORY": "0"})["fps"]


def trimmed_clip(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``src`` (video re-encoded losslessly-ish, audio copied)."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src),
                    "-frames:v", str(frames), "-c:v", "libx264", "-crf", "12", "-preset", "fast", "-c:a", "aac",
                    "-shortest", str(dst)], check=True)
    return dst


def rss_child(path: str, out: str, weights: str | None, chunk_seconds: float) -> None:
    """Run in a subprocess, as the CLI does: upscale and report peak RSS (kB)."""
    keep_freed_memory()
    model = Bicubic(4) if weights == "bicubic" else load_model(weights)
    upscale_file(path, out, Upscaler(model), UpscaleOptions(overwrite=True, chunk_seconds=chunk_seconds))
    print(json.dumps({"peak_rss_kb": peak_rss_self_kb()}))


def peak_rss_self_kb() -> int:
    """This process's peak RSS.  Linux's ``ru_maxrss`` survives exec and so can report the parent's
    size at fork time (a benchmark holding a model); ``VmHWM`` belongs to this image only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss(path: Path, out: Path, weights: str | None, chunk_seconds: float) -> int:
    return in_subprocess("rss_child", path, out, weights, chunk_seconds)["peak_rss_kb"]


# ------------------------------------------------------------------------------------------ GPU suite
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_source(path: Path, width: int, height: int, frames: int) -> Path:
    """The shipped clip's frames, looped and resized (swscale) to width x height, as H.264 at crf 12
    (PyAV only: the GPU machine has no ffmpeg binary)."""
    with av.open(str(SAMPLE)) as c:
        pictures = [f.reformat(width=width, height=height, format="yuv420p") for f in c.decode(video=0)]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25, options={"crf": "12", "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = pictures[i % len(pictures)]
            frame.pts = i
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    return path


def rgb_frames(path: Path) -> list[np.ndarray]:
    from vsr.colour import frame_to_rgb

    with av.open(str(path)) as c:
        return [frame_to_rgb(f) for f in c.decode(video=0)]


def generator_alone(model, device: torch.device, frames: list[np.ndarray], batch: int, compile: bool,
                    precision: str) -> float:
    """Frames/s of the upscaler's network on a batch already on the device (no copies, no conversion)."""
    up = Upscaler(model, device, precision=precision, compile=compile)
    x = torch.from_numpy(np.stack(frames[:batch])).to(device).permute(0, 3, 1, 2).to(up.input_dtype).div_(255)
    with torch.inference_mode():
        for _ in range(3):  # warm-up (and compile / capture)
            up.forward(x)
        sync(device)
        calls = max(3, 64 // batch)
        t0 = time.perf_counter()
        for _ in range(calls):
            up.forward(x)
        sync(device)
    return calls * batch / (time.perf_counter() - t0)


class CpuBusy:
    """This process's CPU time over the wall time of a block, as a share of the usable cores:
    ``with CpuBusy() as busy: ...`` then ``busy.share``."""

    def __enter__(self) -> "CpuBusy":
        import resource

        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import resource

        from vsr.system import usable_cores

        now = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (now.ru_utime - self._usage.ru_utime) + (now.ru_stime - self._usage.ru_stime)
        self.seconds = time.perf_counter() - self._t0
        self.share = cpu / (self.seconds * usable_cores())


def encoder_alone(frames: list[av.VideoFrame], dst: Path, instances: int = 1) -> tuple[float, float]:
    """libx264 with vsr's default settings (crf 18, medium) on frames already in its pixel format,
    ``instances`` encoders at once on the same frames, each on its share of the cores (as vsr's
    chunks are): (frames per second, all instances together; the CPU's busy share)."""
    import threading

    from vsr.encode import ENCODER_THREAD_TYPE
    from vsr.system import usable_cores

    cores = usable_cores()

    def encode(k: int) -> None:
        with av.open(str(dst.with_name(f"{dst.stem}_{k}{dst.suffix}")), "w") as out:
            vs = out.add_stream("libx264", rate=25, options={"crf": "18", "preset": "medium"})
            vs.width, vs.height, vs.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
            share = max(1, cores // instances)
            vs.codec_context.thread_count = share if instances > 1 or cores < (os.cpu_count() or cores) else 0
            vs.codec_context.thread_type = ENCODER_THREAD_TYPE  # as vsr's encoders run
            for i, f in enumerate(frames):
                f.pts = i  # (every instance gives frame i pts i; the encoder keeps its own copy of the frame)
                for p in vs.encode(f):
                    out.mux(p)
            for p in vs.encode(None):
                out.mux(p)

    with CpuBusy() as busy:
        threads = [threading.Thread(target=encode, args=(k,)) for k in range(instances)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return instances * len(frames) / busy.seconds, busy.share


def naive_loop(model, device: torch.device, src: Path, dst: Path, limit: int) -> float:
    """Real-ESRGAN's script's way: one thread, one frame at a time, NCHW (fp32 on the CPU, fp16 on
    CUDA), default (BT.601) RGB conversion on the CPU; on the CPU run it in a process without
    keep_freed_memory (glibc's default allocator)."""
    model = copy.deepcopy(model).eval().to(device)
    half = device.type == "cuda"
    if half:
        model = model.half()
    t0 = time.perf_counter()
    n = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vs = out.add_stream("libx264", rate=vin.average_rate, options={"crf": "18", "preset": "medium"})
        vs.width, vs.height, vs.pix_fmt = vin.width * model.scale, vin.height * model.scale, "yuv420p"
        for frame in inp.decode(vin):
            x = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].to(device)
            x = x.half() / 255 if half else x.float() / 255
            with torch.inference_mode():
                y = model(x).clamp(0, 1)
            rgb = (y[0] * 255).round().byte().permute(1, 2, 0).contiguous().cpu().numpy()
            for p in vs.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
            n += 1
            if n >= limit:
                break
        for p in vs.encode(None):
            out.mux(p)
    return n / (time.perf_counter() - t0)


def gpu_suite(args) -> None:
    from vsr.cli import cuda_defaults
    from vsr.device import resolve_precision

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="vsr-gpu-bench-"))
    model = load_model(args.weights)
    scale = model.scale
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"[gpu] {name}; torch {torch.__version__}, PyAV {av.__version__}; model {describe(model)}; "
          f"precision {args.precision} = {resolve_precision(args.precision, device)}")
    if args.e2e_frames:
        end_to_end_only(args, model, device, tmp)
        return
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        frames_n = args.frames  # (several encoders need several chunks: as many frames at every size)
        src = make_source(tmp / f"src_{w}x{h}.mp4", w, h, frames_n)
        frames = rgb_frames(src)
        flops = frame_flops(model, w, h)
        batch = cuda_defaults(device, src, None, None)[0]
        label = f"{w}x{h} -> {w * scale}x{h * scale}, {frames_n} frames"
        eager = generator_alone(model, device, frames, batch, False, args.precision)
        graphs = generator_alone(model, device, frames, batch, True, args.precision)
        print(f"[{label}] generator alone, batch {batch}: eager {eager:.1f} fps ({eager * flops / 1e12:.1f} TFLOPS), "
              f"CUDA graphs {graphs:.1f} fps ({graphs * flops / 1e12:.1f} TFLOPS)")
        up = Upscaler(model, device, precision=args.precision, compile=True)
        batches = [np.stack(frames[i : i + batch]) for i in range(0, len(frames), batch)]
        for _ in up.upscale_stream(batches[:2]):
            pass
        t0 = time.perf_counter()
        outs = [o for o in up.upscale_stream(batches)]
        stream_rgb = len(frames) / (time.perf_counter() - t0)
        from vsr.colour import PLANE_FORMATS, ColourTags, planes_to_frame
        from vsr.decode import chroma_left, probe
        from vsr.yuv import plane_conversion

        info = probe(src)
        colour = plane_conversion("yuv420p", info.colour, (h, w), "yuv420p", info.colour, (h * scale, w * scale),
                                  chroma_left(info))
        layout = PLANE_FORMATS["yuv420p"]
        with av.open(str(src)) as c:
            from vsr.colour import frame_planes

            planes = [frame_planes(f, layout) for f in c.decode(video=0)]
        plane_batches = [tuple(np.stack([p[k] for p in planes[i : i + batch]]) for k in range(3))
                         for i in range(0, len(planes), batch)]
        for _ in up.upscale_stream(plane_batches[:2], colour):
            pass
        t0 = time.perf_counter()
        out_planes = [o for o in up.upscale_stream(plane_batches, colour)]
        stream_yuv = len(frames) / (time.perf_counter() - t0)
        print(f"[{label}] upscaler stream (host frames in and out): RGB {stream_rgb:.1f} fps, "
              f"YUV planes converted on the device {stream_yuv:.1f} fps")
        out_frames = [planes_to_frame([p[i].numpy() for p in o], "yuv420p", (h * scale, w * scale), ColourTags(), False)
                      for o in out_planes for i in range(o[0].shape[0])]
        del outs, out_planes
        alone = {}
        for n in (1, 2, 4):
            alone[n], cpu = encoder_alone(out_frames, tmp / "enc.mp4", n)
            print(f"[{label}] libx264 alone (crf 18, medium) on the upscaled frames, {n} instance(s) at once: "
                  f"{alone[n]:.1f} fps in all; CPU busy {100 * cpu:.0f}%")
        enc = max(alone.values())
        del out_frames
        # vsr's defaults for a video: eager, compiled part-way if the model is measured to bound the run
        e2e_batch, e2e_compile, e2e_if_bound = cuda_defaults(device, src, None, None)
        results = {}
        for encoders in (1, None):  # one encoder (as before chunks), then vsr's default for this machine
            options = UpscaleOptions(batch_size=e2e_batch, overwrite=True, encoders=encoders,
                                     chunk_seconds=0 if encoders == 1 else None, compile_if_bound=e2e_if_bound)
            e2e_up = Upscaler(model, device, precision=args.precision, compile=e2e_compile)
            with CpuBusy() as busy:
                result = upscale_file(src, tmp / "e2e.mp4", e2e_up, options)
            results[encoders] = result
            stages = ", ".join(f"{k} {1000 * v / result.frames:.1f} ms" for k, v in result.stages.items())
            print(f"[{label}] end to end, {result.encoders} encoder(s){' (no chunks)' if encoders == 1 else ' (chunks: the default)'} "
                  f"(batch {e2e_batch}, compiled part-way: {e2e_up.compiled}"
                  f"{f' (warm-up {e2e_up.warmup_seconds:.1f} s)' if e2e_up.compiled else ''}, colour {'on the device' if device.type == 'cuda' else 'by swscale'}): "
                  f"{result.fps:.1f} fps; CPU busy {100 * busy.share:.0f}%; per frame {stages}; bounded by the "
                  f"{result.stages.bottleneck()[0]} thread; GIL wait {result.gil_wait_ms[0]:.2f} ms mean")
        result = results[None]
        naive = naive_loop(model, device, src, tmp / "naive.mp4", min(frames_n, 120))
        bound = min(stream_yuv, enc)
        print(f"[{label}] naive loop {naive:.1f} fps; end-to-end (chunks) / min(stream, best libx264 alone) = "
              f"{result.fps / bound:.2f} (target >= 0.90); chunks / one encoder = {result.fps / results[1].fps:.2f}; "
              f"end-to-end / naive = {result.fps / naive:.2f} (target >= 3)")
    if args.train_seconds > 0:
        train_speed(device, args.train_seconds, args.precision, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def end_to_end_only(args, model, device: torch.device, tmp: Path) -> None:
    """``--e2e-frames N``: only `vsr upscale`'s pipeline on an N-frame clip of each size, with one
    encoder (no chunks), vsr's default and 8 encoders: long enough for chunks of full length."""
    from vsr.cli import cuda_defaults
    from vsr.system import usable_cores

    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        src = make_source(tmp / f"long_{w}x{h}.mp4", w, h, args.e2e_frames)
        batch, compile, if_bound = cuda_defaults(device, src, None, None)
        for encoders in (1, None, 8):
            up = Upscaler(model, device, precision=args.precision, compile=compile)
            options = UpscaleOptions(batch_size=batch, overwrite=True, encoders=encoders,
                                     chunk_seconds=0 if encoders == 1 else None, compile_if_bound=if_bound)
            with CpuBusy() as busy:
                result = upscale_file(src, tmp / "e2e.mp4", up, options)
            threads = result.stages.by_thread()
            print(f"[{w}x{h} -> {w * model.scale}x{h * model.scale}, {args.e2e_frames} frames] end to end, "
                  f"{result.encoders} encoder(s){' (no chunks)' if encoders == 1 else ''} on {usable_cores()} cores: "
                  f"{result.fps:.1f} fps; CPU busy {100 * busy.share:.0f}%; encoders busy "
                  f"{100 * threads.get('encode', 0) / result.seconds:.0f}%, model {100 * threads.get('model', 0) / result.seconds:.0f}%; "
                  f"compiled part-way: {up.compiled}")


def train_speed(device: torch.device, seconds: float, precision: str, tmp: Path) -> None:
    """Steps/s of both phases at batch 16 of 96-px crops (frames of the shipped clip; VGG19 conv5_4
    with random weights: the same cost as ImageNet's), the GPU's busy share and the data wait."""
    from vsr import data as data_mod
    from vsr.perceptual import VGGFeatures, layer_end, vgg_features
    from vsr.train import TrainConfig, Trainer

    for i, rgb in enumerate(rgb_frames(SAMPLE)):
        np.save(tmp / f"f{i}.npy", rgb)
    sampler = data_mod.PatchSampler(sorted(tmp.glob("f*.npy")), 96, 4, seed=0)
    perceptual = VGGFeatures(vgg_features("vgg19"), layer_end("vgg19", "conv5_4"))
    model = Generator(GeneratorConfig(batch_norm=False, global_skip="bicubic"))
    for phase, pretrain in (("pixel", 10**9), ("gan", 0)):
        cfg = TrainConfig(steps=10**9, pretrain_steps=pretrain, batch_size=16, patch_size=96)
        trainer = Trainer(copy.deepcopy(model).train(), cfg, device, perceptual=perceptual, precision=precision)
        batches = data_mod.Prefetcher(sampler, 16, pin=device.type == "cuda")
        try:
            for _ in range(5):
                trainer.train_step(*batches.next())
            sync(device)
            batches.wait_seconds = 0.0
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 2:
                losses = trainer.train_step(*batches.next())
                steps += 1
            float(losses["g_total"])
            sync(device)
            wall = time.perf_counter() - t0
            busy = gpu_busy(trainer, batches, device)
        finally:
            batches.close()
        print(f"[train] {phase} phase: {steps / wall:.1f} steps/s (batch 16, 96-px crops, {precision} = "
              f"{trainer.amp_dtype}); waited for batches {100 * batches.wait_seconds / wall:.1f}% of the time; "
              f"GPU busy {busy}")


def gpu_busy(trainer, batches, device: torch.device, steps: int = 20) -> str:
    """Kernel time over wall time for a few steps (torch.profiler), or why it was not measured."""
    if device.type != "cuda":
        return "n/a (not a GPU)"
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(*batches.next())
            sync(device)
            wall = time.perf_counter() - t0
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    except Exception as exc:  # noqa: BLE001 - a profiler that cannot start is reported, not fatal
        return f"not measured ({type(exc).__name__}: {exc})"
    return f"{100 * kernel_us / 1e6 / wall:.0f}% (kernel time over wall time, {steps} steps)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--frames", type=int, default=12, help="frames for the timed runs (320x180 -> 1280x720)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--sweep", action="store_true", help="also try thread counts and batch sizes")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile")
    ap.add_argument("--memory-frames", type=int, default=50,
                    help="short clip length for the RSS test (long = 10x; x264 needs ~50 frames to fill its lookahead)")
    ap.add_argument("--memory-model", default=None, help="model for the RSS test (default: as --weights; 'bicubic' is fast)")
    ap.add_argument("--memory-chunk-seconds", type=float, default=1.0,
                    help="chunk length of both RSS runs (0: not chunked). Default 1 s, so that the short clip is "
                         "chunked too and the two runs compare the same pipeline (by default a clip under 120 "
                         "frames is encoded whole)")
    ap.add_argument("--device", default="cpu", help="cpu (the CPU suite) or cuda[:N] (the GPU suite)")
    ap.add_argument("--suite", choices=["auto", "cpu", "gpu"], default="auto", help="auto: gpu on CUDA, else cpu")
    ap.add_argument("--sizes", default="480x270,960x540", help="GPU suite: input sizes")
    ap.add_argument("--e2e-frames", type=int, default=0,
                    help="GPU suite: only end to end (one encoder, the default, 8 encoders) on a clip of this many frames")
    ap.add_argument("--precision", default="auto", help="GPU suite: auto|fp32|bf16|fp16")
    ap.add_argument("--train-seconds", type=float, default=60, help="GPU suite: seconds of training to time (0: none)")
    ap.add_argument("--bf16", action="store_true", help="CPU suite: time bf16 even where the CPU has no native bf16")
    args = ap.parse_args()
    kept = keep_freed_memory()
    if args.suite == "gpu" or (args.suite == "auto" and args.device.startswith("cuda")):
        gpu_suite(args)
        return  # as the CLI does; VSR_KEEP_FREED_MEMORY=0 measures glibc's default instead

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, PyAV {av.__version__}; "
          f"freed memory kept for reuse (glibc): {'yes' if kept else 'no'}")
    tmp = Path(tempfile.mkdtemp(prefix="vsr-bench-"))
    model = load_model(args.weights)
    scale = model.scale
    frames = decoded_frames(SAMPLE, args.frames)
    h, w = frames[0].shape[:2]
    flops = frame_flops(model, w, h)
    counted = ("the paper's layers; the exact polyphase tail executes ~7 GFLOP more, zeros included"
               if isinstance(model, Generator) else "counted by torch's FlopCounterMode")
    print(f"model {describe(model)}; input {w}x{h} -> {w * scale}x{h * scale}; {flops / 1e9:.1f} GFLOP per frame ({counted})")

    # 1. model efficiency
    up = Upscaler(model, "cpu")
    workers = up.cpu_workers(torch.from_numpy(np.stack(frames[: args.batch_size])))
    times, gemm_times = model_vs_gemm(up, frames, args.batch_size, group=workers * args.batch_size)
    gemm_flops = 2 * 2048**3
    gemm_med, gemm_best = gemm_flops / statistics.median(gemm_times) / 1e9, gemm_flops / min(gemm_times) / 1e9
    fps_model = len(times) / sum(times)
    med, best = flops / statistics.median(times) / 1e9, flops / min(times) / 1e9
    print(f"[model] {workers} worker(s) x batch {args.batch_size}; fp32 GEMM (2048^3, {len(gemm_times)} runs "
          f"between the frames) {gemm_med:.1f} GFLOPS median, {gemm_best:.1f} best; generator {med:.1f} GFLOPS median ({statistics.median(times):.2f} s/frame), "
          f"{best:.1f} best; ratio {med / gemm_med:.2f} median/median, {best / gemm_best:.2f} best/best (target >= 0.80)")
    # bf16: what --precision auto chooses on this CPU, and both rates where bf16 is native
    from vsr.device import cpu_has_native_bf16

    if cpu_has_native_bf16() or args.bf16:
        n16 = frames[: max(2, min(len(frames), 4 * workers))]
        up32, up16 = Upscaler(model, "cpu", precision="fp32"), Upscaler(model, "cpu", precision="bf16")
        fps32, fps16 = model_only(up32, n16, args.batch_size), model_only(up16, n16, args.batch_size)
        ref, low = up32.upscale(n16[0][None]).int(), up16.upscale(n16[0][None]).int()
        diff = (ref - low).abs()
        print(f"[bf16] native bf16: {'yes' if cpu_has_native_bf16() else 'no (emulated)'}; fp32 {fps32 * flops / 1e9:.1f} GFLOPS, "
              f"bf16 autocast {fps16 * flops / 1e9:.1f} GFLOPS: {fps16 / fps32:.2f}x (target >= 1.8 where native); "
              f"output vs fp32: max {int(diff.max())} level(s), {100 * float((diff > 0).float().mean()):.2f}% of values differ")
    else:
        print("[bf16] this CPU has no native bf16 (AVX512_BF16 / AMX-BF16): --precision auto runs fp32 here "
              "(emulated bf16 measured 15x slower); --bf16 times it anyway")
    if args.sweep:
        for workers in (1, 2):
            for batch in (1, 2):
                fps = model_only(Upscaler(model, "cpu", workers=workers), frames[: 4 * batch], batch)
                print(f"  sweep: workers={workers} (x{torch.get_num_threads() // workers} threads) batch={batch}: "
                      f"{fps * flops / 1e9:.1f} GFLOPS")
        nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # `up` shares model's layers
        x = torch.rand(1, 3, h, w)
        with torch.inference_mode():
            nchw(x)
            t0 = time.perf_counter()
            nchw(x)
        print(f"  sweep: NCHW (no channels_last): {flops / (time.perf_counter() - t0) / 1e9:.1f} GFLOPS")
    if args.compile:
        upc = Upscaler(load_model(args.weights), "cpu", compile=True)
        t0 = time.perf_counter()
        upc.upscale(frames[0][None])
        print(f"  compile: first call (compiling) {time.perf_counter() - t0:.1f} s")
        fps = model_only(upc, frames, args.batch_size)
        print(f"  compile: {fps * flops / 1e9:.1f} GFLOPS")

    # 2. pipeline efficiency, same frames: one encoder for the whole clip, and in chunks (a third of it each)
    from vsr.decode import probe

    clip = trimmed_clip(SAMPLE, tmp / "clip.mp4", args.frames)
    rate = float(probe(clip).rate or 25)
    runs: dict[str, list] = {}
    for _round in range(2):  # alternately, so a drift of the machine's speed touches both alike
        for label, seconds in (("one encoder, no chunks", 0), ("in 3 chunks", args.frames / 3 / rate)):
            runs.setdefault(label, []).append(upscale_file(clip, tmp / "out.mp4", up, UpscaleOptions(
                batch_size=args.batch_size, overwrite=True, chunk_seconds=seconds)))
    fps_after = model_only(up, frames, args.batch_size)  # again, so slow drift of the machine cancels out
    fps_ref = (fps_model + fps_after) / 2
    for label, results in runs.items():
        fps = statistics.mean(r.fps for r in results)
        print(f"[pipeline] {label}: end-to-end {fps:.3f} fps ({', '.join(f'{r.fps:.3f}' for r in results)}) vs model-only "
              f"{fps_ref:.3f} fps (mean of {fps_model:.3f} before and {fps_after:.3f} after): ratio {fps / fps_ref:.3f} "
              f"(target >= 0.95)")
        result = results[-1]
        stages = ", ".join(f"{k} {1000 * v / result.frames:.0f} ms" for k, v in result.stages.items())
        print(f"  per frame: {stages}; bounded by the {result.stages.bottleneck()[0]} thread")
    fps_pipe = statistics.mean(r.fps for r in runs["in 3 chunks"])

    # 3. naive baseline
    naive_frames = min(args.frames, 8)
    fps_naive = naive_fps(args.weights, clip, tmp / "naive.mp4", naive_frames)
    print(f"[baseline] naive one-thread loop (NCHW, glibc default allocator; {naive_frames} frames) "
          f"{fps_naive:.3f} fps; vsr speed-up {fps_pipe / fps_naive:.2f}x")

    # 4. flat memory
    short = trimmed_clip(SAMPLE, tmp / "short.mp4", args.memory_frames)
    long = trimmed_clip(SAMPLE, tmp / "long.mp4", args.memory_frames * 10)
    memory_model = args.memory_model or args.weights
    chunk_seconds = args.memory_chunk_seconds
    rss_short = peak_rss(short, tmp / "short_x4.mp4", memory_model, chunk_seconds)
    rss_long = peak_rss(long, tmp / "long_x4.mp4", memory_model, chunk_seconds)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[memory] peak RSS {args.memory_frames} frames {rss_short / 1024:.0f} MiB, {args.memory_frames * 10} frames "
          f"{rss_long / 1024:.0f} MiB: ratio {rss_long / rss_short:.3f} (target <= 1.10; model "
          f"{memory_model or 'bundled'}, same pipeline as the CLI, "
          f"{f'in {chunk_seconds:g}-s chunks' if chunk_seconds else 'not chunked'})")


if __name__ == "__main__":
    main()
