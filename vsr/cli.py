"""The ``vsr`` command: parse options, call the library, report.  Nothing else lives here.

Exit codes (one place): 0 success, 1 failure (bad input, some files failed),
2 usage error, 130 interrupted (Ctrl-C), 128 + N stopped by signal N (143 SIGTERM, 129 SIGHUP:
:func:`interrupted`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # interrupted: 128 + the signal (130 for Ctrl-C), see interrupted()
PRECISION_CHOICES = ["auto", "fp32", "bf16", "fp16"]  # vsr.device.PRECISIONS (kept here: no torch import to parse)
COLOUR_CHOICES = ["auto", "cpu", "device"]  # vsr.pipeline.COLOUR_MODES

# Lines are never wrapped by rich (a terminal wraps them itself; a script reads whole lines).
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def print_table(table: Table) -> None:
    """Not to a terminal: no wrapping or cutting at 80 columns, so scripts read whole cells."""
    (out if out.is_terminal else Console(width=200, highlight=False)).print(table)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"expected a positive number, got {value}")
    return value


def _not_negative(ctx, param, value):
    if value is not None and not 0 <= value <= 3600:  # (NaN fails too)
        raise click.BadParameter(f"expected a number of seconds from 0 to 3600, got {value}")
    return value


def _key_values(ctx, param, values):
    pairs = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        pairs.append((key.removesuffix(":v"), value))
    return tuple(pairs)


def _multiple_of_16(ctx, param, value):
    if value is not None and (value <= 0 or value % 16):
        raise click.BadParameter(f"expected a positive multiple of 16, got {value}")
    return value


def _time(ctx, param, value):
    """Seconds from ``12.5``, ``1:30`` or ``01:02:03.5`` (ffmpeg's time syntax)."""
    if value is None:
        return None
    try:
        parts = [float(p) for p in value.split(":")]
        if len(parts) > 3 or any(p < 0 for p in parts):
            raise ValueError
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + p
    except ValueError:
        raise click.BadParameter(f"expected seconds or [HH:]MM:SS[.ms], got {value!r}") from None
    if param.name == "duration" and seconds <= 0:
        raise click.BadParameter(f"expected a positive duration, got {value!r}")
    return seconds


def _device(ctx, param, value):
    from vsr.system import DEVICE_SPEC

    if value is not None and not DEVICE_SPEC.match(value):
        raise click.BadParameter(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


# ---------------------------------------------------------------------------- signals
class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C raises KeyboardInterrupt: every stage
    winds down and removes its temporary files the one way it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stopped_by: list[int] = []  # the signals received by this command (the library may re-raise a plain KeyboardInterrupt)


def _raise_stopped(signum, frame) -> NoReturn:
    _stopped_by.append(signum)
    raise Stopped(signum)


def stop_on_signals(ctx: click.Context) -> None:
    """SIGTERM (``kill``, systemd, schedulers) and SIGHUP (the terminal closed) end a command as Ctrl-C
    does, for as long as it runs (the caller's handlers come back when it ends).  A signal the caller
    ignores (``nohup``) stays ignored; under torchrun SIGTERM stays torchrun's way of ending a rank at
    once (a rank waiting in a collective would not see Python's handler)."""
    _stopped_by.clear()
    if threading.current_thread() is not threading.main_thread():
        return
    wanted = [signal.SIGHUP] if int(os.environ.get("WORLD_SIZE", "1")) > 1 else [signal.SIGTERM, signal.SIGHUP]
    for sig in wanted:
        previous = signal.getsignal(sig)
        if previous is signal.SIG_IGN or previous is None:  # ignored, or a handler set outside Python: theirs
            continue
        signal.signal(sig, _raise_stopped)
        ctx.call_on_close(lambda sig=sig, previous=previous: signal.signal(sig, previous))


def interrupted(exc: KeyboardInterrupt, what: str) -> NoReturn:
    """A run stopped by Ctrl-C (exit 130) or by a signal (128 + its number): one line naming it and
    saying ``what`` became of the work."""
    signum = getattr(exc, "signum", None) or (_stopped_by[0] if _stopped_by else signal.SIGINT)
    by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    err.print(f"interrupted{by}; {what}", soft_wrap=True)
    sys.exit(128 + signum)


class _Commands(click.Group):
    """Every command's errors end here: a :class:`vsr.errors.VsrError` becomes one line on stderr
    and its ``exit_code`` (1, or 2 for a :class:`vsr.errors.UsageError`); a Ctrl-C or signal that
    the command did not report itself, its exit code; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        from vsr.errors import VsrError

        try:
            return super().invoke(ctx)
        except VsrError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:
            interrupted(exc, "stopped before it finished")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vsr")
def main() -> None:
    """vsr: video super-resolution with SRGAN."""
    # The process-wide settings, made here and nowhere else: glibc keeps freed memory for reuse
    # (vsr.system.keep_freed_memory; VSR_KEEP_FREED_MEMORY=0 turns it off); SIGTERM and SIGHUP end
    # a command as Ctrl-C does (stop_on_signals).  Under torchrun, `vsr finetune` also starts the
    # process group (vsr.finetune.start_distributed).
    from vsr.system import keep_freed_memory

    keep_freed_memory()  # before any thread starts: large CPU tensors reuse the heap
    stop_on_signals(click.get_current_context())


# ---------------------------------------------------------------------------- upscale
def _tile(ctx, param, value):
    if value is not None and value < 16:
        raise click.BadParameter(f"expected a tile size of at least 16 pixels, got {value}")
    return value


def load_model(model: str, weights: str | None, scale: int | None):
    """The network for ``--model``/``--weights``/``--scale``; raises WeightsError with a clear message."""
    from vsr.model import Bicubic
    from vsr.weights import WeightsError, default_weights, load_model as load_weights, resolve_weights

    if model == "bicubic":
        if weights:
            raise WeightsError("--weights does not apply to --model bicubic")
        return Bicubic(scale or 4), f"bicubic x{scale or 4}"
    spec = weights or default_weights(scale)
    try:
        path = resolve_weights(spec)
    except WeightsError:
        if weights is None:
            raise WeightsError(
                f"no bundled weights ({spec}) in this installation; "
                f"pass --weights PATH (e.g. from `vsr finetune`) or use --model bicubic"
            ) from None
        raise
    return load_weights(path, scale=scale), f"{path.name} sha256:{file_digest(path)}"


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256 (what identifies the weights an output was made with)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def default_output(src: Path, scale: int, size=None) -> Path:
    """``NAME_x4.EXT``; ``NAME_x1.5.EXT`` for --outscale 1.5, ``NAME_720p.EXT`` for --height 720,
    ``NAME_1280w.EXT`` for --width 1280."""
    tag = f"x{scale}"
    if size is not None:
        tag = f"x{size.outscale:g}" if size.outscale else f"{size.height}p" if size.height else f"{size.width}w"
    from vsr.media import output_name
    from vsr.stills import is_animated

    return output_name(src.with_name(f"{src.stem}_{tag}{src.suffix}"), animated=is_animated(src))


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output file, or folder (an existing one, or a path ending in /: DIR/INPUT_x4.EXT); "
                   "default: INPUT_x4.EXT beside the input.")
@click.option("--model", type=click.Choice(["srgan", "bicubic"]), default="srgan", show_default=True,
              help="The SRGAN generator, or plain bicubic interpolation (the baseline).")
@click.option("--weights", default=None,
              help="Weights: a bundled name, vsr's .safetensors, or a community model spandrel recognises "
                   "(.pth/.pt/.safetensors: Real-ESRGAN, SwinIR, SPAN, HAT, ...). Default: the bundled x4 PSNR model.")
@click.option("--scale", type=click.Choice(["2", "4"]), default=None, help="Scale (bicubic: default 4; srgan: checked against the weights).")
@click.option("--outscale", type=float, default=None, callback=_positive,
              help="Output size as a multiple of the input (e.g. 1.5, 3 with a x4 model: the model, then an antialiased resize).")
@click.option("--width", "out_width", type=int, default=None, callback=_positive,
              help="Output width (the height follows the aspect ratio unless --height is given).")
@click.option("--height", "out_height", type=int, default=None, callback=_positive,
              help="Output height (the width follows the aspect ratio unless --width is given).")
@click.option("--batch-size", type=int, default=None, callback=_positive,
              help="Frames per model call (default: 1 on the CPU, 8 on CUDA).")
@click.option("--device", default="auto", show_default=True, callback=_device, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
              help="Compute precision (auto: fp16 on CUDA; on the CPU bf16 where it has native bf16, else fp32).")
@click.option("--colour", "colour", type=click.Choice(COLOUR_CHOICES), default="auto", show_default=True,
              help="Where YUV<->RGB conversion runs (auto: beside the model on CUDA, swscale on the CPU).")
@click.option("--tile", type=int, default=None, callback=_tile, help="Split frames into tiles of this many input pixels.")
@click.option("--cpu-workers", type=int, default=None, callback=_positive,
              help="CPU: frames upscaled at once, each on its share of the threads (default: 2 if there are 2+ threads and memory allows).")
@click.option("--codec", default=None, help="Video encoder (default libx264, or the container's own where it refuses H.264, e.g. VP9 for .webm; libx265 for an HDR10 source).")
@click.option("--crf", type=click.IntRange(0, 63), default=18, show_default=True, help="Constant rate factor (x264/x265/vp9/av1).")
@click.option("--preset", default="medium", show_default=True, help="Encoder preset (x264/x265).")
@click.option("--pix-fmt", default=None, help="Output pixel format (default: yuv420p, 10-bit for 10-bit sources).")
@click.option("-ss", "--start", "start", default=None, callback=_time, metavar="TIME",
              help="Start this far into the input (seconds or [HH:]MM:SS[.ms], as ffmpeg's -ss); timestamps start at 0.")
@click.option("-t", "--duration", "duration", default=None, callback=_time, metavar="TIME",
              help="Upscale this much of the input (as ffmpeg's -t); other streams are cut at packet boundaries.")
@click.option("--deinterlace", is_flag=True,
              help="Interlaced video: FFmpeg's bwdif deinterlacer first, one progressive frame per frame "
                   "(without it: a warning, and the field order is kept).")
@click.option("--strict", is_flag=True,
              help="Fail on a damaged input (frames missing, or damage the demuxer or decoder reported) instead of a warning.")
@click.option("--encoder-opt", "encoder_opts", multiple=True, metavar="KEY=VALUE", callback=_key_values,
              help="An encoder option (repeatable), as ffmpeg's: tune=film, b=8M, x264-params=keyint=60, ...")
@click.option("--tag", default=None, help="Codec tag of the video stream (default: hvc1 for HEVC in MP4/MOV).")
@click.option("--encoders", type=int, default=None, callback=_positive,
              help="Video encoders at once, each on a chunk of the video and its share of the cores (default: 1 on "
                   "the CPU, where the model bounds the run; one per 4 cores with a GPU, at most 8).")
@click.option("--chunk-seconds", type=float, default=None, callback=_not_negative, metavar="SECONDS",
              help="Length of the chunks a video is encoded in (default: up to 10 s, chosen). Finished chunks are kept "
                   "beside the output (.NAME.vsr-work), so a stopped run resumes where it was; 0: no chunks, one "
                   "encoder for the whole video, nothing to resume.")
@click.option("-y", "--overwrite", is_flag=True, help="Replace an existing output (and start over, not resume).")
@click.option("--compile/--no-compile", "use_compile", default=None,
              help="torch.compile the model (on CUDA with CUDA graphs; default: on CUDA for a video, once the model is "
                   "measured to bound the run and what is left is long enough to pay for compiling).")
@click.option("--profile", is_flag=True, help="Print the time spent in each stage and which one bounds throughput.")
@click.option("-r", "--recursive", is_flag=True, help="Folders: include subfolders.")
@click.option("--include", multiple=True, help="Folders: only files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Folders: skip files matching this glob (repeatable).")
@click.option("--ext", default=None, help="Folders: container extension for video outputs (e.g. mkv).")
@click.option("--dry-run", is_flag=True, help="Folders: show what would be converted or skipped, and why.")
@click.option("--redo-changed", is_flag=True,
              help="Folders: redo outputs that exist but were made with other settings (model, scale, encoder).")
@click.option("--devices", default=None, help="Folders: the devices to use, e.g. cuda:0,cuda:1 (--jobs files in flight on each).")
@click.option("--shard", default=None, help="Folders: process the I-th of N slices of the file list (I/N).")
@click.option("--jobs", type=int, default=None, callback=_positive,
              help="Folders: files in flight per device, sharing the cores (default: 1 on the CPU, where the model "
                   "bounds the run; one per 4 cores on a GPU, where the encoders do).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON result per file (input, output, frames, seconds, fps, warnings, status) on stdout "
                   "instead of the result line or summary table.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only: no progress, no warnings, no encoder log lines.")
def upscale(input, **kw):
    """Upscale a video or image INPUT into OUTPUT, keeping every other stream.

    INPUT may be a folder: every video and image in it is converted into the folder OUTPUT,
    mirroring the tree; outputs that exist are skipped (finished earlier), bad files are reported
    and the rest go on (exit code 1 if any failed)."""
    from types import SimpleNamespace

    a = SimpleNamespace(**kw)
    # Usage and inputs first, before torch is imported (seconds) or a model is loaded.
    if a.model == "bicubic" and a.weights:
        fail("--weights does not apply to --model bicubic", EXIT_USAGE)
    if a.outscale and (a.out_width or a.out_height):
        fail("--outscale/--width/--height: give either an output scale or a width/height, not both", EXIT_USAGE)
    check_input(input)
    if input.is_file():
        for flag, given in (("--recursive", a.recursive), ("--include", a.include), ("--exclude", a.exclude),
                            ("--ext", a.ext), ("--dry-run", a.dry_run), ("--devices", a.devices), ("--shard", a.shard),
                            ("--jobs", a.jobs)):
            if given:
                warn(f"{flag} applies to folder inputs; it does nothing for a single file", a.quiet)
    encode = encode_options(a)

    from vsr.decode import Span
    from vsr.device import resolve_device
    from vsr.pipeline import OutputSize, UpscaleError, UpscaleOptions, upscale_file
    from vsr.progress import FileProgress
    from vsr.system import usable_cores
    from vsr.upscaler import Upscaler, check_workers

    size = OutputSize(a.outscale, a.out_width, a.out_height) if (a.outscale or a.out_width or a.out_height) else None
    net, model_id = load_model(a.model, a.weights, int(a.scale) if a.scale else None)
    dev = resolve_device(a.device)
    batch_size, use_compile, compile_if_bound = cuda_defaults(dev, input, a.batch_size, a.use_compile)
    check_workers(a.cpu_workers, dev, use_compile)
    if a.cpu_workers and dev.type == "cpu" and a.cpu_workers > usable_cores():
        warn(f"--cpu-workers {a.cpu_workers} on {usable_cores()} usable cores: the extra workers only share them",
             a.quiet)
    span = Span(a.start or 0.0, a.duration) if (a.start or a.duration) else None
    options = UpscaleOptions(batch_size=batch_size, overwrite=a.overwrite, colour=a.colour, size=size,
                             deinterlace=a.deinterlace, strict=a.strict, encode=encode, model_id=model_id, span=span,
                             encoders=a.encoders, chunk_seconds=a.chunk_seconds, compile_if_bound=compile_if_bound,
                             resume=not a.overwrite)
    if input.is_dir():
        output = Path(a.output) if a.output else input.resolve().with_name(f"{input.resolve().name}_x{int(net.scale)}")
        _upscale_folder(input, output, net, options, a, use_compile)
        return
    output = None if a.output is None else Path(a.output)
    if output is None or output.is_dir() or a.output.endswith(("/", os.sep)):  # (Path drops the trailing /)
        name = default_output(input, int(net.scale), size).name
        output = (output / name) if output is not None else input.with_name(name)
    upscaler = Upscaler(net, dev, tile=a.tile, precision=a.precision, compile=use_compile, workers=a.cpu_workers)
    progress = FileProgress(err, quiet=a.quiet)
    try:
        result = upscale_file(input, output, upscaler, options, progress)
    except UpscaleError as exc:
        if a.as_json:
            print_json([file_record(input, output, None, "failed", str(exc))])
        raise
    except KeyboardInterrupt as exc:
        interrupted(exc, "no output written")
    if a.as_json:
        print_json([file_record(input, output, result, "damaged" if result.gaps else "done")])
    else:
        line = f"{result.output}: {result.frames} frames in {result.seconds:.1f} s ({result.fps:.2f} fps)"
        if result.resumed:
            line = (f"{result.output}: {result.frames} frames ({result.resumed} kept from an unfinished run; "
                    f"{result.upscaled} upscaled in {result.seconds:.1f} s, {result.fps:.2f} fps)")
        out.print(line)
    report_warmup(upscaler, a.quiet)
    report_pace(result, dev, a.quiet)
    if a.profile:
        print_profile(result)


def warn(message: str, quiet: bool = False) -> None:
    if not quiet:
        err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def check_input(path: Path) -> None:
    """The input exists and is a folder or a file FFmpeg reads (not, say, a text file): said at
    once, before the model loads."""
    from vsr.decode import InputError, open_input

    if not path.exists():
        fail(f"input {os.fspath(path)!r} does not exist")
    if path.is_dir():
        return
    try:
        open_input(path).close()
    except InputError as exc:
        fail(str(exc))


def encode_options(a):
    """The encoder settings asked for, tried once on a small picture (exit 2 if FFmpeg refuses
    them), with a warning for each one the encoder does not have."""
    from vsr.encode import EncodeError, EncodeOptions, check_encoder, check_codec, unused_options

    options = EncodeOptions(codec=a.codec, crf=a.crf, preset=a.preset, pix_fmt=a.pix_fmt, extra=a.encoder_opts,
                            tag=a.tag, quiet=a.quiet)
    try:
        check_encoder(options)
        for message in unused_options(check_codec(a.codec, a.pix_fmt), options, EncodeOptions()):
            warn(message, a.quiet)
    except EncodeError as exc:
        fail(str(exc), EXIT_USAGE)
    return options


def file_record(src, dst, result, status: str, error: str | None = None) -> dict:
    """One file's outcome, for --json (``fps``: of the frames this run upscaled)."""
    return {"input": os.fspath(src), "output": os.fspath(dst) if dst else None,
            "frames": result.frames if result else None,
            "seconds": round(result.seconds, 3) if result else None,
            "fps": round(result.fps, 3) if result else None,
            "resumed": result.resumed if result else None,  # frames kept from an unfinished run, not upscaled again
            "warnings": list(result.warnings) if result else [],
            "status": status, "error": error or None}


def print_json(records: list[dict]) -> None:
    import json

    sys.stdout.write(json.dumps(records, indent=1) + "\n")
    sys.stdout.flush()


def cuda_defaults(dev, input: Path, batch_size: int | None, use_compile: bool | None) -> tuple[int, bool, bool]:
    """Batch size and compilation where the user left them: (batch size, compile from the start,
    compile part-way if the model is measured to bound the run).  On CUDA 8 frames a call (measured
    1.4x over 1) and, for a video file (one frame size), torch.compile with CUDA graphs once the
    model is seen to bound the run (:class:`vsr.pipeline.CompileWhenBound`: graphs run it 1.7x
    faster but cost ~13 s to capture, which a run the encoder bounds never earns back); on the CPU
    1 frame and eager (the measured CPU optimum; compiling gained nothing there)."""
    from vsr.media import kind_of

    cuda = dev.type == "cuda"
    if batch_size is None:
        batch_size = 8 if cuda else 1
    if use_compile is not None:
        return batch_size, use_compile, False
    return batch_size, False, cuda and input.is_file() and kind_of(input) == "video"


def report_pace(result, dev, quiet: bool) -> None:
    """After a run the encoder held back while the model idled: what would go faster here."""
    from vsr import hwenc
    from vsr.system import usable_cores

    if quiet or result.seconds <= 0 or not result.codec:
        return
    busy = result.stages.by_thread()
    hint = hwenc.speed_hint(busy.get("encode", 0.0) / result.seconds, busy.get("model", 0.0) / result.seconds,
                            result.encoders, usable_cores(), dev.type, result.codec,
                            lambda name: hwenc.hardware_problem(name) is None)
    if hint:
        err.print(f"note: {hint}", soft_wrap=True)


def report_warmup(upscaler, quiet: bool) -> None:
    """Say what compiling cost, or why the model ran uncompiled after all."""
    if upscaler.compile_error:
        err.print(f"[yellow]warning:[/] torch.compile failed, the model ran uncompiled: {upscaler.compile_error}",
                  soft_wrap=True)
    elif upscaler.warmup_seconds and not quiet:
        graphs = " and CUDA graph capture" if upscaler.device.type == "cuda" else ""
        err.print(f"warm-up (torch.compile{graphs}): {upscaler.warmup_seconds:.1f} s, included above")


def print_profile(result) -> None:
    """Per-stage seconds and ms/frame, grouped by pipeline thread, and the bounding thread."""
    from vsr.timing import STAGES

    table = Table(title="where the time goes")
    for col, justify in (("stage", "left"), ("thread", "left"), ("seconds", "right"), ("ms/frame", "right"),
                         ("% of wall", "right")):
        table.add_column(col, justify=justify)
    n = max(1, result.frames)
    for stage, thread in STAGES.items():
        if stage not in result.stages:  # the other colour path's stages (to_rgb/to_yuv or to_planes/from_planes)
            continue
        secs, lanes = result.stages.get(stage, 0.0), result.stages.lanes.get(thread, 1)
        label = f"{thread} x{lanes}" if lanes > 1 else thread
        # per lane: what share of the wall clock this stage keeps each of its threads busy
        table.add_row(stage, label, f"{secs:.2f}", f"{1000 * secs / n:.1f}", f"{100 * secs / lanes / result.seconds:.0f}%")
    print_table(table)
    for thread, lanes in result.stages.lanes.items():
        if lanes > 1:
            unit = "chunk" if thread == "encode" else "frame"
            out.print(f"{thread} x{lanes}: {lanes} worker threads, each on its own {unit}; seconds are summed over "
                      f"them, % of wall is per worker")
    name, busy = result.stages.bottleneck()
    out.print(f"bounded by the {name} thread: busy {busy:.1f} s of {result.seconds:.1f} s wall "
              f"({100 * busy / result.seconds:.0f}%); the other threads overlap with it")
    mean_ms, max_ms = result.gil_wait_ms
    out.print(f"GIL: a waking thread waited {mean_ms:.2f} ms on average for it (worst {max_ms:.1f} ms)"
              + ("; that is time every stage thread loses after each call" if mean_ms >= 1 else ""))


def _upscale_folder(src: Path, dst: Path, net, options, a, use_compile: bool) -> None:
    """A folder: the plan (what to convert, skip or keep), upscalers on each device (--jobs files in
    flight on each), the summary.  ``a``: the command's arguments (folder options, tiles, devices,
    --json, -q)."""
    import copy
    import dataclasses

    from vsr import batch
    from vsr.device import resolve_device
    from vsr.progress import BatchProgress
    from vsr.upscaler import Upscaler

    opts = batch.BatchOptions(recursive=a.recursive, include=tuple(a.include), exclude=tuple(a.exclude), ext=a.ext,
                              overwrite=options.overwrite, settings=options.settings, redo_changed=a.redo_changed,
                              shard=batch.parse_shard(a.shard) if a.shard else (1, 1))
    jobs = batch.plan(src, dst, opts, int(net.scale))
    device_list = [resolve_device(d.strip()) for d in (a.devices or a.device).split(",") if d.strip()]
    todo = [j for j in jobs if j.action == "convert"]
    skipped = [j for j in jobs if j.action == "skip"]
    changed = [j for j in jobs if j.action == "changed"]
    if changed and not a.dry_run:
        warn(f"{len(changed)} output(s) exist but were made with other settings (model, scale or encoder); they are "
             f"kept as they are (--redo-changed redoes them): " + ", ".join(j.rel for j in changed[:5])
             + (", ..." if len(changed) > 5 else ""), a.quiet)
    if a.dry_run:
        table = Table(title=f"plan: {len(todo)} to convert, {len(skipped)} done earlier")
        for col in ("file", "action", "why", "output"):
            table.add_column(col)
        for j in jobs:
            table.add_row(j.rel, j.action, j.reason, "" if j.action == "ignore" else str(j.dst))
        print_table(table)
        return
    batch.count_frames(todo)
    frames = [j.frames for j in todo]
    total = sum(f for f in frames if f) if all(frames) else None
    if skipped and not a.quiet:
        err.print(f"{len(skipped)} done earlier, skipped")
    from vsr import hwenc
    from vsr.system import usable_cores

    per_device = [a.jobs or (1 if d.type == "cpu" else hwenc.encoders_for(usable_cores())) for d in device_list]
    if sum(per_device) > 1:  # files in flight share the cores: each encoder its part
        options = dataclasses.replace(options, encode=dataclasses.replace(
            options.encode, threads=max(1, usable_cores() // sum(per_device))))
    upscalers = []
    for k, (d, n) in enumerate(zip(device_list, per_device)):
        model = net if k == 0 else copy.deepcopy(net)  # one copy of the weights per device, shared by its files
        upscalers += [Upscaler(model, d, tile=a.tile, precision=a.precision, compile=use_compile,
                               workers=a.cpu_workers if d.type == "cpu" else None) for _ in range(n)]
    progress = BatchProgress(err, total_files=len(todo), total_frames=total, quiet=a.quiet)
    try:
        batch.run(jobs, upscalers, options, progress)
    except KeyboardInterrupt as exc:
        progress.finish()
        interrupted(exc, "finished files are kept, the current one was not written (re-run to resume)")
    progress.finish()
    failed = [j for j in jobs if j.status == "failed"]
    damaged = [j for j in jobs if j.status == "damaged"]
    if a.as_json:
        print_json([file_record(j.src, j.dst if j.action != "ignore" else None, j.result, j.status, j.error) for j in jobs])
        sys.exit(EXIT_FAILED if failed or damaged else EXIT_OK)
    table = Table(title="summary")
    for col, justify in (("file", "left"), ("frames", "right"), ("seconds", "right"), ("fps", "right"), ("status", "left")):
        table.add_column(col, justify=justify)
    for j in jobs:
        r = j.result
        status = {"done": "[green]done[/]", "skipped": "skipped (done earlier)", "ignored": "ignored (not media)",
                  "changed": "[yellow]kept[/]: made with other settings (--redo-changed redoes it)",
                  "damaged": "[yellow]damaged[/]: written; " + (f"about {sum(n for *_s, n in r.gaps)} frames missing in the input"
                                                                 if r and sum(n for *_s, n in r.gaps) else
                                                                 "the input is damaged")}.get(j.status, f"[red]{j.status}[/]: {j.error}")
        table.add_row(j.rel, str(r.frames) if r else "", f"{r.seconds:.1f}" if r else "", f"{r.fps:.2f}" if r else "", status)
    print_table(table)
    done = [j for j in jobs if j.status in ("done", "damaged")]
    out.print(f"{len(done)} converted, {len(skipped)} done earlier, skipped, {len(failed)} failed"
              + (f", {len(damaged)} converted from damaged inputs" if damaged else "")
              + (f", {len(changed)} kept though made with other settings" if changed else ""))
    if failed or damaged:
        sys.exit(EXIT_FAILED)


# ---------------------------------------------------------------------------- models
@main.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def models(files):
    """List the bundled models, and any model FILES given: architecture, scale, parameters, the
    work of one frame (GFLOP to make a 1920x1080 output frame, whatever the scale: the cost to compare,
    speed aside), fp16 support, and for vsr's own files their training steps and held-out gain over
    bicubic: PSNR-Y (and NIQE) on whole held-out images where ``scripts/evaluate.py --record`` stored
    them, else the trainer's last validation on held-out crops (weights/README.md has the full tables)."""
    from vsr.flops import reference_frame_flops
    from vsr.weights import WeightsError, bundled_weights, describe, load_model, weights_dir

    table = Table(title="models", show_lines=False)
    for col in ("name", "architecture", "scale", "params", "GFLOP/1080p frame", "fp16", "trained", "held-out PSNR-Y gain"):
        table.add_column(col)
    failed = []
    paths = [weights_dir() / n for n in bundled_weights()] + list(files)
    for path in paths:
        try:
            d = describe(path)
            gflop = reference_frame_flops(load_model(path), d["scale"]) / 1e9
        except WeightsError as exc:
            failed.append(str(exc))
            continue
        table.add_row(d["name"], d["architecture"], f"x{d['scale']}", f"{d['parameters'] / 1e6:.2f} M",
                      f"{gflop:.0f}" if gflop >= 100 else f"{gflop:.3g}", "yes" if d["fp16"] else "no", d["trained"],
                      d["validation"])
    print_table(table)
    for message in failed:
        err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    if failed:
        sys.exit(EXIT_FAILED)


# ---------------------------------------------------------------------------- finetune
@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("finetuned.safetensors"), show_default=True,
              help="Weights file to write (the EMA generator).")
@click.option("--from", "start", default="bundled", show_default=True,
              help="Starting weights: 'bundled' (the default x4 model), 'scratch', or a weights path/name.")
@click.option("--scale", type=click.Choice(["2", "4"]), default=None, help="Scale (checked against --from weights).")
@click.option("--body-only", is_flag=True,
              help="Take only the head and residual body from --from weights; the upsampling layers start "
                   "fresh (as bicubic). Starts a model of another --scale from trained features.")
@click.option("--blocks", type=int, default=16, show_default=True, callback=_positive, help="Residual blocks (--from scratch).")
@click.option("--channels", type=int, default=64, show_default=True, callback=_positive, help="Channels (--from scratch).")
@click.option("--batch-norm/--no-batch-norm", default=False, show_default=True, help="BN in the generator (--from scratch; the paper has it).")
@click.option("--global-skip", type=click.Choice(["bicubic", "none"]), default="bicubic", show_default=True,
              help="Add bicubic upsampling of the input to the output (--from scratch).")
@click.option("--upsampler", type=click.Choice(["stages", "shuffle"]), default="stages", show_default=True,
              help="Upsampling (--from scratch): the paper's sub-pixel stages and 9x9 conv at the output size, or one "
                   "3x3 conv and PixelShuffle(scale), all at the input size (ESPCN; the fast tier, vsr_x4_fast).")
@click.option("--steps", type=int, default=2000, show_default=True, callback=_positive, help="Total steps, both phases.")
@click.option("--pretrain-steps", type=int, default=500, show_default=True, help="Pixel-loss warm-up steps (phase 1).")
@click.option("--batch-size", type=int, default=16, show_default=True, callback=_positive)
@click.option("--patch-size", type=int, default=96, show_default=True, callback=_multiple_of_16,
              help="HR crop size (multiple of 16).")
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Peak learning rate of phase 1.")
@click.option("--gan-lr", type=float, default=1e-4, show_default=True, help="Peak learning rate of phase 2.")
@click.option("--pixel-loss", type=click.Choice(["l1", "mse"]), default="l1", show_default=True)
@click.option("--no-gan", is_flag=True, help="Pixel loss only (no VGG, no discriminator).")
@click.option("--content-layer", default="vgg19:conv5_4", show_default=True, help="VGG feature map for the content loss.")
@click.option("--vgg-weights", type=click.Path(path_type=Path), default=None,
              help="Local VGG weights (.pth/.safetensors state dict, or a Keras .h5 VGG16 backbone).")
@click.option("--adv-weight", type=float, default=1e-3, show_default=True, help="Weight of the adversarial loss.")
@click.option("--gan-pixel-weight", type=float, default=0.0, show_default=True, help="Pixel loss weight in phase 2 (0 = paper).")
@click.option("--gan-colour-weight", type=float, default=0.0, show_default=True,
              help="Phase 2: weight of an L1 loss on 16x16-pixel block means, which holds colours and brightness "
                   "(no colour casts) and leaves texture free (0 = paper).")
@click.option("--gan-grid-weight", type=float, default=0.0, show_default=True,
              help="Phase 2: weight of an L1 loss on the part of the error that repeats every SCALE pixels, "
                   "against the upsampler's checker/hatch pattern (0 = paper).")
@click.option("--gan-artifact-weight", type=float, default=0.0, show_default=True,
              help="Phase 2: weight of LDL's artefact loss (Liang et al. 2022: an L1 weighted where the error is "
                   "locally uneven and the EMA generator does better), against noise-like GAN texture (0 = paper; LDL uses 1).")
@click.option("--gan-loss", type=click.Choice(["vanilla", "ragan"]), default="vanilla", show_default=True,
              help="Adversarial loss: the paper's, or relativistic average (ESRGAN).")
@click.option("--content-before-activation", is_flag=True,
              help="VGG features before the ReLU (ESRGAN) instead of after it (the paper).")
@click.option("--d-norm", type=click.Choice(["batch", "spectral"]), default=None,
              help="Discriminator normalisation: BatchNorm (the paper; the default with --d-arch vgg) or spectral "
                   "normalisation (the only one, and the default, with --d-arch unet).")
@click.option("--d-arch", type=click.Choice(["vgg", "unet"]), default="vgg", show_default=True,
              help="Discriminator: the paper's (one score per crop) or Real-ESRGAN's U-Net (a score per pixel).")
@click.option("--ema-decay", type=float, default=0.999, show_default=True)
@click.option("--degrade", is_flag=True, help="Add blur, noise, JPEG and H.264 artefacts to the LR inputs.")
@click.option("--val", "val_folder", type=click.Path(path_type=Path), default=None, help="Folder of held-out media for validation.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Files held out for validation (without --val).")
@click.option("--val-every", type=int, default=200, show_default=True, callback=_positive)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Checkpoint file (default: OUTPUT with .ckpt).")
@click.option("--checkpoint-every", type=int, default=500, show_default=True, callback=_positive)
@click.option("--snapshot-every", type=int, default=None, callback=_positive, metavar="N",
              help="Also write the EMA weights every N steps, as OUTPUT with .stepK before its suffix "
                   "(finetuned.step1000.safetensors): weights like the output's, for a curve of one run.")
@click.option("--resume", type=click.Path(path_type=Path), default=None, help="Continue from a checkpoint.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where extracted frames are cached (default: ~/.cache/vsr/frames; `vsr clear-cache` empties it).")
@click.option("--frames-per-video", type=int, default=32, show_default=True, callback=_positive)
@click.option("--max-side", type=int, default=None, callback=_positive, help="Downscale larger frames to this longest side first.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, callback=_device)
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
              help="Mixed precision (auto: bf16 on GPUs and CPUs that have it, else fp32 on the CPU; fp16 with loss scaling).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
def finetune(folder, output, start, scale, body_only, blocks, channels, batch_norm, global_skip, upsampler, steps, pretrain_steps, batch_size,
             patch_size, lr, gan_lr, pixel_loss, no_gan, content_layer, vgg_weights, adv_weight, gan_pixel_weight,
             gan_colour_weight, gan_grid_weight, gan_artifact_weight, gan_loss, content_before_activation, d_norm, d_arch,
             ema_decay, degrade, val_folder, val_fraction, val_every, checkpoint, checkpoint_every, snapshot_every, resume,
             cache_dir, frames_per_video, max_side, seed, device, precision, quiet):
    """Train the generator on FOLDER's videos and images; write weights for `vsr upscale --weights`."""
    from vsr.errors import VsrError
    from vsr.finetune import FinetuneOptions, run_finetune, start_distributed, stop_distributed
    from vsr.model import GeneratorConfig
    from vsr.progress import TrainProgress
    from vsr.train import TrainConfig

    try:
        cfg = TrainConfig(
            steps=steps, pretrain_steps=min(pretrain_steps, steps), batch_size=batch_size, patch_size=patch_size, lr=lr,
            gan_lr=gan_lr, pixel_loss=pixel_loss, no_gan=no_gan, content_layer=content_layer, adv_weight=adv_weight,
            gan_pixel_weight=gan_pixel_weight, gan_colour_weight=gan_colour_weight, gan_grid_weight=gan_grid_weight,
            gan_artifact_weight=gan_artifact_weight, gan_loss=gan_loss, content_before_activation=content_before_activation,
            d_norm=d_norm or ("spectral" if d_arch == "unet" else "batch"), d_arch=d_arch, ema_decay=ema_decay, degrade=degrade, seed=seed,
        )
        scratch = GeneratorConfig(scale=int(scale or 4), blocks=blocks, channels=channels, batch_norm=batch_norm, global_skip=global_skip,
                                  upsampler=upsampler)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    opts = FinetuneOptions(
        folder=folder, output=output, train=cfg, start=start, scratch_config=scratch, scale=int(scale) if scale else None,
        body_only=body_only,
        vgg_weights=vgg_weights, val_folder=val_folder, val_fraction=val_fraction, val_every=val_every,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, snapshot_every=snapshot_every, resume=resume,
        cache_dir=cache_dir,
        frames_per_video=frames_per_video, max_side=max_side, device=device, precision=precision,
    )
    progress = TrainProgress(err, quiet=quiet)
    start_distributed(device)
    finished = False
    try:
        summary = run_finetune(opts, progress)
        finished = True
    except VsrError:
        progress.finish()
        raise
    except KeyboardInterrupt as exc:
        progress.finish()
        interrupted(exc, _checkpoint_left(exc, checkpoint or output.with_suffix(".ckpt")))
    finally:
        stop_distributed(ok=finished)
    progress.finish()
    if summary["validation"]:
        table = Table(title="validation (held-out, PSNR-Y dB / SSIM-Y)")
        for col in ("step", "model PSNR", "bicubic PSNR", "gain", "model SSIM", "bicubic SSIM"):
            table.add_column(col, justify="right")
        for step, s in summary["validation"]:
            table.add_row(str(step), f"{s['psnr']:.2f}", f"{s['bicubic_psnr']:.2f}", f"{s['psnr'] - s['bicubic_psnr']:+.2f}",
                          f"{s['ssim']:.4f}", f"{s['bicubic_ssim']:.4f}")
        print_table(table)
    out.print(f"wrote {output} ({summary['steps']} steps; {summary['steps_per_second']} steps/s in "
              f"{summary['precision']}, {100 * (summary['data_wait_fraction'] or 0):.1f}% of the time waiting for data)")



def _checkpoint_left(exc: KeyboardInterrupt, path: Path) -> str:
    """What an interrupted finetune left: the checkpoint it wrote whole (``exc`` is a
    :class:`vsr.finetune.FinetuneInterrupted`), or none, and then the file at ``path`` is untouched."""
    if getattr(exc, "checkpoint", None):
        return f"checkpoint of step {exc.step} saved to {exc.checkpoint} (continue with --resume)"
    return "no checkpoint written" + (f"; {path} is as it was" if path.exists() else "")


@main.command("clear-cache")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="The cache to empty (default: the one `vsr finetune` uses, ~/.cache/vsr/frames).")
def clear_cache(cache_dir):
    """Delete the frames `vsr finetune` extracted and cached (they are made again when needed)."""
    import shutil

    from vsr.finetune import default_cache_dir

    folder = cache_dir or default_cache_dir()
    if not folder.is_dir():
        out.print(f"{folder}: no cache")
        return
    import re

    # Only what vsr writes there: one folder per source file and setting, named by 16 hex digits.
    ours = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name)]
    size = sum(f.stat().st_size for p in ours for f in p.rglob("*") if f.is_file())
    for p in ours:
        shutil.rmtree(p)
    out.print(f"{folder}: removed {len(ours)} cached sources, {size / 2**20:.1f} MiB")


if __name__ == "__main__":  # pragma: no cover
    main()
