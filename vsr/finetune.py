"""``vsr finetune``: from a folder of the user's media to a weights file.

This module connects the edges (folders, cache, checkpoint and weights files) to the
tensor-only core in :mod:`vsr.train`.  Progress is reported through callbacks so the
CLI decides how it looks.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsr import data as data_mod
from vsr import train as train_mod
from vsr.device import DeviceError, precision_name, resolve_device
from vsr.errors import VsrError
from vsr.files import folder_problem, written_whole
from vsr.model import Generator, GeneratorConfig
from vsr.report import TrainReporter
from vsr.weights import WeightsError, default_weights, load_generator, resolve_weights, save_generator, total_steps, training_info


class FinetuneError(VsrError):
    """Something the user must fix; the message says what."""


class FinetuneInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) stopped a run.  ``checkpoint``: the file this run last wrote whole,
    holding step ``step``; None when it wrote none (stopped while reading frames, before the first
    step, or while writing the first checkpoint): a file at that path is then as it was."""

    def __init__(self, checkpoint: Path | None, step: int | None) -> None:
        super().__init__("interrupted")
        self.checkpoint, self.step = checkpoint, step


@dataclass
class FinetuneOptions:
    folder: Path
    output: Path
    train: train_mod.TrainConfig = field(default_factory=train_mod.TrainConfig)
    start: str = "bundled"  # "bundled", "scratch", or a weights path/name
    scratch_config: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(batch_norm=False, global_skip="bicubic"))
    scale: int | None = None  # the scale asked for (None: the starting weights' own)
    body_only: bool = False  # take only head and residual body from ``start``; upsampling starts fresh (as bicubic)
    vgg_weights: Path | None = None
    val_folder: Path | None = None
    val_fraction: float = 0.1
    val_every: int = 200
    checkpoint: Path | None = None
    checkpoint_every: int = 500
    snapshot_every: int | None = None  # also write the EMA weights every this many steps (snapshot_path)
    resume: Path | None = None
    cache_dir: Path | None = None
    frames_per_video: int = 32
    max_side: int | None = None
    device: str = "auto"
    precision: str = "auto"  # auto|fp32|bf16|fp16 (vsr.device.resolve_precision, training=True)
    perceptual: torch.nn.Module | None = None  # a ready feature extractor (tests); else loaded from content_layer

    def __post_init__(self) -> None:
        every = self.snapshot_every
        if every is not None and (type(every) is not int or every < 1):
            raise FinetuneError(f"snapshots are taken every N steps: expected a positive whole number, got {every!r}")


def snapshot_path(output: Path, step: int) -> Path:
    """Where a run writing ``output`` puts its snapshot of step ``step``: ``w.safetensors`` ->
    ``w.step1000.safetensors``, beside it (``--snapshot-every``)."""
    return output.with_name(f"{output.stem}.step{step}{output.suffix}")


def _write_weights(path: Path, model: Generator, record: dict[str, Any]) -> None:
    """A weights file (the output, or a snapshot) written whole; safetensors writes 0600, but a
    weights file is for sharing, like any output: the user's umask."""
    with written_whole(path, mode=0o666) as tmp:
        save_generator(tmp, model, training=record)


def start_distributed(device: str) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1), start the process group: NCCL for GPUs, gloo when the
    run is on the CPU (also on a machine that has a GPU).  Process-wide, so the entry point calls it
    (``vsr finetune`` does), not :func:`run_finetune`; pair it with :func:`stop_distributed`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group(backend="nccl" if gpu else "gloo")


def stop_distributed(ok: bool = True) -> None:
    """End the process group. ``ok``: this rank finished its run, so it waits for the others first.
    A rank that failed must not wait: the others are in some other collective (DDP's set-up, a
    gradient all-reduce) and both would wait for ever; it leaves, exits non-zero, and torchrun ends
    the rest."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _distributed() -> tuple[bool, int, int]:
    """(whether a process group is running, this process's rank, the world size)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _starting_generator(opts: FinetuneOptions) -> tuple[Generator, str, dict[str, Any]]:
    """The generator to train, what it started from, and the starting file's own training record
    (empty from scratch), so that a fine-tuned file records its whole history."""
    if opts.start == "scratch":
        config = opts.scratch_config
        if opts.scale is not None and opts.scale != config.scale:
            config = dataclasses.replace(config, scale=opts.scale)
        return Generator(config), "scratch", {}
    spec = default_weights(opts.scale) if opts.start == "bundled" else opts.start
    try:
        path = resolve_weights(spec)
        model = load_generator(path)
    except WeightsError as exc:
        if opts.start == "bundled":
            raise FinetuneError(f"no bundled weights to start from ({exc}); use --from scratch or --from PATH") from exc
        raise FinetuneError(str(exc)) from exc
    earlier = training_info(path)
    if opts.body_only:
        return _with_fresh_upsampling(model, opts.scale or model.config.scale), f"{os.fspath(path)} (head and body)", earlier
    if opts.scale is not None and model.config.scale != opts.scale:
        raise FinetuneError(f"{os.fspath(path)!r} is a x{model.config.scale} model, but x{opts.scale} was asked for "
                            f"(--body-only starts a model of another scale from its head and residual body)")
    return model.train(), os.fspath(path), earlier


def _with_fresh_upsampling(source: Generator, scale: int) -> Generator:
    """A generator of ``scale`` with ``source``'s head, residual body and body tail (the layers that do
    not depend on the scale) and new upsampling layers: with the bicubic skip it starts as bicubic."""
    config = dataclasses.replace(source.config, scale=scale)
    model = Generator(config)
    shared = {k: v for k, v in source.state_dict().items() if k.startswith(("head.", "body.", "body_tail."))}
    model.load_state_dict(shared, strict=False)
    return model.train()


def default_cache_dir() -> Path:
    """Extracted frames live in the user's cache (``$XDG_CACHE_HOME/vsr/frames``, else
    ``~/.cache/vsr/frames``), one folder per source file and sampling setting; ``vsr clear-cache``
    empties it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vsr" / "frames"


# Frames taken of each held-out video for validation (scripts/packed_frames.py packs as many).
VAL_FRAMES_PER_VIDEO = 4

# A run longer than this on a CPU gets a warning with the estimate (and what a GPU would take).
LONG_RUN_SECONDS = 4 * 3600


def _check_writable(path: Path) -> None:
    problem = folder_problem(path)
    if problem:
        raise FinetuneError(f"cannot write {os.fspath(path)!r}: {problem}")


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(1, minutes)} min"


def run_finetune(opts: FinetuneOptions, cb: TrainReporter | None = None) -> dict[str, Any]:
    """Train and write ``opts.output``; returns the training summary stored in the file.  What
    happens is told to ``cb`` (:class:`vsr.report.TrainReporter`).  Interrupted, it raises
    :class:`FinetuneInterrupted`, which names the checkpoint written, if any."""
    saved: list[tuple[Path, int]] = []  # (checkpoint, step) each time one was written whole
    try:
        return _finetune(opts, cb or TrainReporter(), saved)
    except KeyboardInterrupt as exc:
        raise FinetuneInterrupted(*(saved[-1] if saved else (None, None))) from exc


def _finetune(opts: FinetuneOptions, cb: TrainReporter, saved: list[tuple[Path, int]]) -> dict[str, Any]:
    """The run, as its steps: check, start, perceptual network, data, trainer, train, save."""
    if not opts.folder.is_dir():
        raise FinetuneError(f"expected a folder of videos and images, got {os.fspath(opts.folder)!r}")
    _check_writable(opts.output)
    distributed, rank, world = _distributed()
    device = resolve_device(opts.device, rank=rank if distributed else None)
    # --seed makes a run repeatable: the sampler has its own generator; this seeds the initial weights
    # (a new generator's, the discriminator's, spectral norm's vectors) and whatever else draws from
    # torch's global generator. A resumed run restores that generator's state from the checkpoint.
    torch.manual_seed(opts.train.seed)
    start = _start(opts)
    if not data_mod.find_media(opts.folder):  # before the perceptual network, which may not be here
        raise FinetuneError(f"no videos or images in {os.fspath(opts.folder)!r}")
    perceptual = _perceptual(opts, start.cfg)
    data = _data(opts, start.cfg, start.generator.config.scale, cb, distributed, rank)
    trainer, history = _trainer(opts, start, data.sampler, device, perceptual, distributed)
    if rank == 0:
        cb.info(f"training on {device} in {precision_name(trainer.amp_dtype)}"
                + (" (fp16 with loss scaling)" if trainer.scaler.is_enabled() else ""))
    summary = _train(opts, start, trainer, data, history, cb, saved, device, rank, world)
    if rank == 0:
        _write_weights(opts.output, trainer.ema, summary)
    if distributed:
        _barrier()  # rank 0 has written the weights
    return summary


@dataclass
class _Start:
    """What a run starts from: the generator, the training config (a resumed run's own), where the
    weights came from and their training record, and the checkpoint's state when resuming."""

    generator: Generator
    cfg: train_mod.TrainConfig
    started_from: str
    earlier: dict[str, Any]
    resume_state: dict[str, Any] | None = None


def _start(opts: FinetuneOptions) -> _Start:
    if opts.resume is None:
        generator, started_from, earlier = _starting_generator(opts)
        return _Start(generator, opts.train, started_from, earlier)
    try:
        state = train_mod.load_checkpoint(opts.resume)
    except (ValueError, OSError, RuntimeError) as exc:
        raise FinetuneError(f"cannot resume from {os.fspath(opts.resume)!r}: {exc}") from exc
    saved_cfg = state["train_config"]
    cfg = train_mod.TrainConfig(**{**saved_cfg, "steps": max(opts.train.steps, saved_cfg["steps"])})
    # The run's own seed, not this command's: what the checkpoint does not hold (a discriminator not
    # built yet when it was written in the pixel phase) starts as it did in the uninterrupted run.
    torch.manual_seed(cfg.seed)
    return _Start(train_mod.generator_from_checkpoint(state), cfg, state.get("started_from", "checkpoint"),
                  state.get("earlier_training", {}), state)


def _perceptual(opts: FinetuneOptions, cfg: train_mod.TrainConfig):
    """The perceptual network, needed only for the adversarial phase: loaded before any work, so a
    missing one fails at once."""
    if cfg.gan_steps <= 0 or opts.perceptual is not None:
        return opts.perceptual
    from vsr.perceptual import PerceptualError, load_perceptual

    try:
        return load_perceptual(cfg.content_layer, opts.vgg_weights, cfg.content_before_activation)
    except PerceptualError as exc:
        raise FinetuneError(str(exc)) from exc


@dataclass
class _Data:
    sampler: data_mod.PatchSampler
    val_images: list
    summary: dict[str, Any]  # what the weights file records of the data


def _data(opts: FinetuneOptions, cfg: train_mod.TrainConfig, scale: int, cb: TrainReporter, distributed: bool,
          rank: int) -> _Data:
    """Frames cached on disk (sampled memory-mapped), split into training and validation."""
    if cfg.patch_size % scale or cfg.patch_size % 16:
        raise FinetuneError(f"--patch-size must be a multiple of 16 and of the scale {scale}, got {cfg.patch_size}")
    cache = opts.cache_dir or default_cache_dir()
    if rank == 0:
        cb.info(f"reading frames from {opts.folder} (cache {cache})")
    # Under torchrun the first rank fills the cache, then the others read it (not all of them decoding the
    # same files into the same folder at once).
    if distributed and rank != 0:
        _barrier()
    warn = cb.warn if rank == 0 else None
    sources, skipped = data_mod.extract_frames(opts.folder, cache, opts.frames_per_video, opts.max_side, min_size=cfg.patch_size,
                                               warn=warn)
    for reason in skipped:
        if rank == 0:
            cb.warn(f"skipped {reason}")
    if not sources:
        if not data_mod.find_media(opts.folder):
            raise FinetuneError(f"no videos or images in {os.fspath(opts.folder)!r}")
        raise FinetuneError(f"nothing usable in {os.fspath(opts.folder)!r}: " + "; ".join(skipped[:3]))
    if opts.val_folder is not None:
        val_sources, _ = data_mod.extract_frames(opts.val_folder, cache, VAL_FRAMES_PER_VIDEO, opts.max_side, min_size=cfg.patch_size,
                                                 warn=warn)
        train_sources = sources
    else:
        train_sources, val_sources = data_mod.split_sources(sources, opts.val_fraction, cfg.seed)
    if distributed and rank == 0:
        _barrier()  # the cache is filled: the other ranks go on
    train_frames = [f for s in train_sources for f in s.frames]
    sampler = data_mod.PatchSampler(train_frames, cfg.patch_size, scale, degrade=cfg.degrade, seed=cfg.seed + 1000 * rank)
    val_images = data_mod.validation_images(val_sources, scale=scale)
    if rank == 0:
        cb.info(f"{len(train_frames)} frames from {len(train_sources)} files for training, "
                f"{len(val_images)} crops from {len(val_sources)} held-out files for validation")
    return _Data(sampler, val_images, {
        "train_sources": len(train_sources),
        "train_frames": len(train_frames),
        "val_sources": len(val_sources),
        "val_images": len(val_images),
        "sources": [os.fspath(s.path.relative_to(opts.folder)) for s in train_sources][:200],
    })


def _trainer(opts: FinetuneOptions, start: _Start, sampler: data_mod.PatchSampler, device, perceptual,
             distributed: bool) -> tuple[train_mod.Trainer, list[tuple[int, dict[str, float]]]]:
    """The trainer, with a resumed run's state (optimisers, RNGs, validation history) restored."""
    try:
        trainer = train_mod.Trainer(start.generator, start.cfg, device, perceptual=perceptual, distributed=distributed,
                                    precision=opts.precision)
    except DeviceError as exc:
        raise FinetuneError(str(exc)) from exc
    if start.resume_state is None:
        return trainer, []
    state = start.resume_state
    try:  # the generator and its config were checked on loading; the optimisers' and RNGs' state here
        trainer.load_state_dict(state)
        sampler.generator.set_state(state["sampler_rng"])
        return trainer, [(int(s), dict(v)) for s, v in state.get("history", [])]
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise FinetuneError(f"cannot resume from {os.fspath(opts.resume)!r}: its training state does not fit "
                            f"this run ({type(exc).__name__}: {exc})") from None


class _Watch:
    """What the run tells its reporter as it goes: losses, the time left once a few steps are
    timed (with a warning for a long CPU run), validation scores (with a warning when the
    adversarial phase costs fidelity); it keeps the last losses and the validation history."""

    def __init__(self, cb: TrainReporter, cfg: train_mod.TrainConfig, device, rank: int,
                 history: list[tuple[int, dict[str, float]]]) -> None:
        self.cb, self.cfg, self.device, self.rank, self.history = cb, cfg, device, rank, history
        self.recent: dict[str, Any] = {}
        self._start: float | None = None
        self._step: int | None = None  # None once the estimate is given

    def on_step(self, step: int, losses: dict[str, Any]) -> None:
        self.recent.update(losses)
        self.cb.step(step, losses)
        # After a few steps (the first ones warm up), say how long the whole run will take here.
        now = time.monotonic()
        if self._start is None:
            self._start, self._step = now, step
        elif self._step is not None and (step - self._step >= 5 or now - self._start >= 60):
            per_step = (now - self._start) / max(1, step - self._step)
            self._step = None
            if self.rank == 0:
                self._estimate(step, per_step)

    def _estimate(self, step: int, per_step: float) -> None:
        cfg, left = self.cfg, per_step * (self.cfg.steps - step)
        gan_ahead = cfg.phase(step) == "pixel" and cfg.gan_steps > 0
        self.cb.info(f"about {_duration(left)} to go on {self.device} ({cfg.steps - step} steps at "
                     f"{per_step:.2f} s/step" + ("; the adversarial phase is slower than the pixel one"
                                                 if gan_ahead else "") + ")")
        if self.device.type == "cpu" and left > LONG_RUN_SECONDS:
            self.cb.warn(f"this run will take about {_duration(left)} on the CPU; a GPU does it in "
                         f"minutes (--device cuda), or ask for fewer --steps")

    def on_validate(self, step: int, scores: dict[str, float]) -> None:
        self.history.append((step, scores))
        best = max(s["psnr"] for _, s in self.history)
        if self.cfg.phase(step - 1) == "gan" and scores["psnr"] < best - 1.0:
            self.cb.warn(
                f"validation PSNR-Y fell to {scores['psnr']:.2f} dB at step {step} "
                f"(best {best:.2f} dB): the adversarial phase is trading fidelity for texture; "
                f"consider a lower --adv-weight or fewer steps"
            )
        self.cb.validate(step, scores)


def _train(opts: FinetuneOptions, start: _Start, trainer: train_mod.Trainer, data: _Data,
           history: list[tuple[int, dict[str, float]]], cb: TrainReporter, saved: list[tuple[Path, int]], device,
           rank: int, world: int) -> dict[str, Any]:
    """The training loop with its checkpoints and snapshots; returns the record the weights file keeps."""
    cfg = trainer.cfg
    checkpoint_path = opts.checkpoint or opts.output.with_suffix(".ckpt")
    batches = data_mod.Prefetcher(data.sampler, cfg.batch_size, pin=device.type == "cuda")
    watch = _Watch(cb, cfg, device, rank, history)

    def checkpoint() -> None:
        train_mod.save_checkpoint(
            checkpoint_path,
            trainer,
            {"sampler_rng": batches.state(), "history": [[s, v] for s, v in history], "started_from": start.started_from,
             "earlier_training": start.earlier},
        )
        saved.append((checkpoint_path, trainer.step))

    def record() -> dict[str, Any]:
        """What a weights file written now records of the run (the output's at the end, a snapshot's on the way)."""
        seconds = time.monotonic() - began
        return {
            "steps": trainer.step,
            "started_from": start.started_from,
            # the starting file's own record, so the history travels with the file; steps in all, its too
            "earlier_training": start.earlier,
            "total_steps": trainer.step + total_steps(start.earlier),
            "train_config": dataclasses.asdict(cfg),
            "final_losses": {k: round(float(v), 6) for k, v in watch.recent.items()},
            "data": data.summary,
            "validation": [[s, {k: round(v, 4) for k, v in sc.items()}] for s, sc in history],
            "seconds_this_run": round(seconds, 1),
            "steps_per_second": round((trainer.step - start_step) / seconds, 4) if seconds > 0 else None,
            # the share of the run the loop waited for batches (the device idle for want of data)
            "data_wait_fraction": round(batches.wait_seconds / seconds, 4) if seconds > 0 else None,
            "precision": precision_name(trainer.amp_dtype),
            "world_size": world,
        }

    def snapshot() -> None:
        path = snapshot_path(opts.output, trainer.step)
        _write_weights(path, trainer.ema, {**record(), "snapshot": True})
        cb.info(f"snapshot of step {trainer.step}: {path}")

    cb.start(trainer.step, cfg.steps)
    began = time.monotonic()
    start_step = trainer.step
    try:
        train_mod.run(trainer, batches.next, data.val_images, val_every=opts.val_every, checkpoint=checkpoint,
                      checkpoint_every=opts.checkpoint_every, on_step=watch.on_step, on_validate=watch.on_validate,
                      snapshot=snapshot, snapshot_every=opts.snapshot_every, is_main=rank == 0)
    finally:
        batches.close()
    return record()
