"""SRGAN training: one readable step, a pure learning-rate schedule, checkpoints.

Phase 1 (``step < pretrain_steps``, or all steps with ``no_gan``): pixel loss (L1 or MSE).
Phase 2: content loss on VGG feature maps (rescaled by 1/12.75, as in the paper) plus
``adv_weight`` x adversarial loss, alternating a generator step and a discriminator
step on detached fakes.  An EMA copy of the generator is what gets saved.

No file I/O happens here except :func:`save_checkpoint` / :func:`load_checkpoint`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vsr.device import resolve_precision
from vsr.errors import UsageError, VsrError
from vsr.files import written_whole
from vsr.metrics import periodic_pattern, psnr_y, ssim_y
from vsr.model import DiscriminatorConfig, Generator, GeneratorConfig, discriminator


class CheckpointError(VsrError, ValueError):
    """A file that is not a vsr training checkpoint."""


class TrainConfigError(UsageError, ValueError):
    """Training settings that do not fit together."""


CHECKPOINT_FORMAT = "vsr-checkpoint-1"
GAN_LOSSES = ("vanilla", "ragan")
# The colour loss compares means of blocks this many HR pixels wide: wide enough that drawn texture
# averages out (it is left free), narrow enough that colour and brightness are pinned locally.
COLOUR_BLOCK = 16


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    pretrain_steps: int = 500
    batch_size: int = 16
    patch_size: int = 96
    lr: float = 2e-4  # pixel phase peak learning rate
    gan_lr: float = 1e-4  # adversarial phase peak learning rate (G and D)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02  # cosine decay floor, as a fraction of the peak
    pixel_loss: str = "l1"
    no_gan: bool = False
    content_layer: str = "vgg19:conv5_4"
    content_scale: float = 1 / 12.75
    adv_weight: float = 1e-3
    gan_pixel_weight: float = 0.0  # optional pixel term in phase 2 (0 = the paper)
    gan_colour_weight: float = 0.0  # optional L1 of COLOUR_BLOCK-px block means in phase 2 (0 = the paper)
    gan_grid_weight: float = 0.0  # optional L1 of the scale-periodic part of SR - HR in phase 2 (0 = the paper)
    gan_artifact_weight: float = 0.0  # optional LDL artefact loss in phase 2 (Liang et al. 2022; 0 = the paper)
    gan_loss: str = "vanilla"  # "vanilla" (the paper: real/fake BCE) or "ragan" (relativistic average, ESRGAN)
    content_before_activation: bool = False  # VGG features before the ReLU (ESRGAN) instead of after (the paper)
    d_norm: str = "batch"  # the discriminator's normalisation: "batch" (the paper) or "spectral"
    d_arch: str = "vgg"  # the paper's discriminator, or "unet" (Real-ESRGAN's, a logit per pixel; spectral only)
    ema_decay: float = 0.999
    degrade: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pixel_loss not in ("l1", "mse"):
            raise TrainConfigError(f"pixel loss must be 'l1' or 'mse', got {self.pixel_loss!r}")
        if self.gan_colour_weight and self.patch_size % COLOUR_BLOCK:
            raise TrainConfigError(f"the colour loss needs crops a multiple of {COLOUR_BLOCK} px, got {self.patch_size}")
        if self.steps < 1 or self.pretrain_steps < 0 or self.batch_size < 1:
            raise TrainConfigError("steps and batch size must be positive, pretrain steps non-negative")
        if self.gan_loss not in GAN_LOSSES:
            raise TrainConfigError(f"gan loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        try:  # the discriminator's own checks (its norm and architecture), in one place
            DiscriminatorConfig(norm=self.d_norm, arch=self.d_arch)
        except ValueError as exc:
            raise TrainConfigError(str(exc)) from exc

    @property
    def gan_steps(self) -> int:
        return 0 if self.no_gan else max(0, self.steps - self.pretrain_steps)

    def phase(self, step: int) -> str:
        return "pixel" if self.no_gan or step < self.pretrain_steps else "gan"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up then cosine decay, restarted for each phase."""
    if cfg.phase(step) == "pixel":
        start, length, peak = 0, cfg.steps if cfg.no_gan else min(cfg.steps, cfg.pretrain_steps), cfg.lr
    else:
        start, length, peak = cfg.pretrain_steps, cfg.steps - cfg.pretrain_steps, cfg.gan_lr
    t = step - start
    warmup = min(cfg.warmup_steps, max(1, length // 10))
    if t < warmup:
        return peak * (t + 1) / warmup
    progress = (t - warmup) / max(1, length - warmup)
    floor = peak * cfg.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Trainer:
    """Holds the networks and optimizers; :meth:`train_step` is one iteration.

    ``precision`` (``auto|fp32|bf16|fp16``, :func:`vsr.device.resolve_precision` with
    ``training=True``): bf16/fp16 run the forward passes and losses under autocast (weights and
    optimizer state stay fp32); fp16 scales the losses with a grad scaler.  ``auto`` is bf16 on
    GPUs that have it and on CPUs with native bf16, else fp32 on the CPU.
    """

    def __init__(
        self,
        generator: Generator,
        cfg: TrainConfig,
        device: torch.device | str = "cpu",
        perceptual: nn.Module | None = None,
        distributed: bool = False,
        precision: str = "auto",
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp_dtype = resolve_precision(precision, self.device, training=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # channels_last: oneDNN's fast layout on the CPU, and the tensor cores' on CUDA under autocast
        self.memory_format = torch.channels_last
        self.generator = generator.to(self.device, memory_format=self.memory_format).train()
        self.ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self.perceptual = perceptual.to(self.device) if perceptual is not None else None
        self.discriminator: nn.Module | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        if cfg.gan_steps > 0:
            if perceptual is None:
                raise TrainConfigError("the adversarial phase needs a perceptual network (or no_gan=True)")
            self.discriminator = discriminator(DiscriminatorConfig(cfg.patch_size, norm=cfg.d_norm, arch=cfg.d_arch)).to(
                self.device, memory_format=self.memory_format).train()
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.gan_lr, betas=(0.9, 0.999))
        if distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.generator = DDP(self.generator)
            if self.discriminator is not None:
                self.discriminator = DDP(self.discriminator)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
        self.step = 0

    # ------------------------------------------------------------------ the step
    def _pixel(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(sr, hr) if self.cfg.pixel_loss == "l1" else F.mse_loss(sr, hr)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    def _backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)

    def train_step(self, lr_img: torch.Tensor, hr_img: torch.Tensor) -> dict[str, float | torch.Tensor]:
        """One iteration on a batch; returns the losses (0-dim tensors, detached: reading one with
        ``float()`` waits for the device, so callers read them only when they show them) and the
        learning rate."""
        cfg = self.cfg
        rate = lr_at(self.step, cfg)
        for opt in (self.opt_g, self.opt_d):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = rate
        lr_img = lr_img.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        hr_img = hr_img.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        losses: dict[str, float | torch.Tensor] = {"lr": rate}

        with self._autocast():
            sr = self.generator(lr_img)
            if cfg.phase(self.step) == "pixel":
                loss_g = self._pixel(sr.float(), hr_img)
                losses["pixel"] = loss_g.detach()
            else:
                assert self.discriminator is not None and self.opt_d is not None and self.perceptual is not None
                # Generator step: content + adversarial (D frozen).
                self.discriminator.requires_grad_(False)
                content = F.mse_loss(self.perceptual(sr).float() * cfg.content_scale,
                                     self.perceptual(hr_img).detach().float() * cfg.content_scale)
                fake_logit = self.discriminator(sr).float()
                if cfg.gan_loss == "ragan":  # is the fake more real than the average real, and vice versa
                    real_logit = self.discriminator(hr_img).float().detach()
                    adversarial = _ragan(real_logit, fake_logit, real_is_real=False)
                else:
                    adversarial = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
                loss_g = content + cfg.adv_weight * adversarial
                if cfg.gan_pixel_weight:
                    pixel = self._pixel(sr.float(), hr_img)
                    loss_g = loss_g + cfg.gan_pixel_weight * pixel
                    losses["pixel"] = pixel.detach()
                if cfg.gan_colour_weight:
                    colour = colour_loss(sr.float(), hr_img)
                    loss_g = loss_g + cfg.gan_colour_weight * colour
                    losses["colour"] = colour.detach()
                if cfg.gan_grid_weight:
                    grid = grid_loss(sr.float(), hr_img, hr_img.shape[-1] // lr_img.shape[-1])
                    loss_g = loss_g + cfg.gan_grid_weight * grid
                    losses["grid"] = grid.detach()
                if cfg.gan_artifact_weight:
                    with torch.no_grad():
                        sr_ema = self.ema(lr_img).float()
                    artifact = artifact_loss(sr.float(), hr_img, sr_ema)
                    loss_g = loss_g + cfg.gan_artifact_weight * artifact
                    losses["artifact"] = artifact.detach()
                losses.update(content=content.detach(), adversarial=adversarial.detach())
        self._backward_step(loss_g, self.opt_g)
        losses["g_total"] = loss_g.detach()

        if cfg.phase(self.step) == "gan":
            # Discriminator step on detached fakes.
            self.discriminator.requires_grad_(True)
            with self._autocast():
                real_logit = self.discriminator(hr_img).float()
                fake_logit = self.discriminator(sr.detach()).float()
                if cfg.gan_loss == "ragan":
                    loss_d = _ragan(real_logit, fake_logit, real_is_real=True)
                else:
                    loss_d = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                              + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
            self._backward_step(loss_d, self.opt_d)
            losses.update(d=loss_d.detach(), d_real=torch.sigmoid(real_logit.detach()).mean(),
                          d_fake=torch.sigmoid(fake_logit.detach()).mean())
        self.scaler.update()

        self._update_ema()
        self.step += 1
        return losses

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Ramp the decay up so early averages are not dominated by the initial weights.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        source = _unwrap(self.generator).state_dict()
        floats, others = [], []
        for key, value in self.ema.state_dict().items():
            (floats if value.dtype.is_floating_point else others).append((value, source[key].detach()))
        if floats:  # ema += (1 - decay) * (src - ema), all tensors in a few fused kernels
            torch._foreach_lerp_([v for v, _ in floats], [s.to(v.device) for v, s in floats], 1 - decay)
        for value, src in others:
            value.copy_(src)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "generator_config": dataclasses.asdict(_unwrap(self.generator).config),
            "train_config": dataclasses.asdict(self.cfg),
            "generator": _unwrap(self.generator).state_dict(),
            "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "discriminator": _unwrap(self.discriminator).state_dict() if self.discriminator is not None else {},
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else {},
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.empty(0, dtype=torch.uint8),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _unwrap(self.generator).load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.discriminator is not None and state["discriminator"]:
            _unwrap(self.discriminator).load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        cuda_rng = state.get("cuda_rng")
        if self.device.type == "cuda" and cuda_rng is not None and cuda_rng.numel():
            torch.cuda.set_rng_state(cuda_rng, self.device)
        self.step = int(state["step"])


def colour_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 between the means of COLOUR_BLOCK x COLOUR_BLOCK blocks of output and target.

    A pixel L1 barely holds colours during the adversarial phase: its gradient for a uniform shift
    is the balance of the residuals' signs, near zero while drawn texture makes the residuals large
    and symmetric, so colour casts drift in unopposed.  Block means average the texture out, so
    this term pins colour and brightness while leaving the texture to the content and adversarial
    losses."""
    return F.l1_loss(F.avg_pool2d(sr, COLOUR_BLOCK), F.avg_pool2d(hr, COLOUR_BLOCK))


def grid_loss(sr: torch.Tensor, hr: torch.Tensor, period: int) -> torch.Tensor:
    """L1 of the part of SR - HR that repeats every ``period`` (the scale) pixels: its mean at each
    sub-pixel phase of the crop, less their mean (:func:`vsr.metrics.periodic_pattern`).

    In the adversarial phase the generator's sub-pixel upsampler drifts into a fixed checker/hatch
    (measured here: 0.6-0.8 levels RMS with the VGG content loss, against under 0.1 for the PSNR
    model and bicubic); a pixel loss hardly sees so faint a pattern under the drawn texture, while a
    phase mean over the whole crop averages the texture out and leaves the grid."""
    return periodic_pattern(sr - hr, period).abs().mean()


ARTIFACT_WINDOW = 7  # LDL's local window, in HR pixels


def artifact_map(sr: torch.Tensor, hr: torch.Tensor, sr_ema: torch.Tensor) -> torch.Tensor:
    """LDL's refined artefact map (Liang et al., CVPR 2022, "Details or Artifacts"), N1HW: where SR's error
    is locally uneven (the variance of |SR - HR| over a 7x7 window, times the crop's variance of it to
    the 1/5) it is more likely a GAN artefact than detail, and only where the EMA generator, steadier,
    does better (its error there is smaller) is it counted.  Detached: a weight, not a path for gradients."""
    with torch.no_grad():
        residual = (hr - sr).abs().sum(1, keepdim=True)
        residual_ema = (hr - sr_ema).abs().sum(1, keepdim=True)
        patch = residual.var(dim=(1, 2, 3), unbiased=True, keepdim=True) ** 0.2
        pad, n = ARTIFACT_WINDOW // 2, ARTIFACT_WINDOW**2
        padded = F.pad(residual, (pad, pad, pad, pad), mode="reflect")
        mean = F.avg_pool2d(padded, ARTIFACT_WINDOW, stride=1)
        local = (F.avg_pool2d(padded * padded, ARTIFACT_WINDOW, stride=1) - mean * mean).clamp_min(0) * n / (n - 1)
        return torch.where(residual < residual_ema, torch.zeros_like(local), patch * local)


def artifact_loss(sr: torch.Tensor, hr: torch.Tensor, sr_ema: torch.Tensor) -> torch.Tensor:
    """L1 of the error weighted by :func:`artifact_map` (LDL's loss, weight 1 in its recipe): pushes the
    generator back toward HR where it draws noise-like texture the EMA model does not, and leaves the
    detail both draw alone."""
    weight = artifact_map(sr, hr, sr_ema)
    return F.l1_loss(weight * sr, weight * hr)


def _ragan(real: torch.Tensor, fake: torch.Tensor, real_is_real: bool) -> torch.Tensor:
    """Relativistic average GAN loss (Jolicoeur-Martineau 2018, ESRGAN's): the discriminator judges
    whether a real image is more realistic than the average fake (and a fake less so than the
    average real); for the generator the targets swap.  Mean of the two BCE terms."""
    rel_real, rel_fake = real - fake.mean(), fake - real.mean()
    one, zero = torch.ones_like(real), torch.zeros_like(fake)
    if real_is_real:
        return (F.binary_cross_entropy_with_logits(rel_real, one) + F.binary_cross_entropy_with_logits(rel_fake, zero)) / 2
    return (F.binary_cross_entropy_with_logits(rel_real, zero) + F.binary_cross_entropy_with_logits(rel_fake, one)) / 2


def save_checkpoint(path: str | os.PathLike, trainer: Trainer, extra: dict[str, Any]) -> None:
    """Everything needed to resume exactly; written whole (:func:`vsr.files.written_whole`)."""
    state = trainer.state_dict()
    state.update(extra)
    with written_whole(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A ``vsr finetune`` checkpoint, read as data (:func:`vsr.weights.read_torch_file`) and checked
    whole (:func:`check_checkpoint`) before anything is built from it."""
    from vsr.weights import WeightsError, read_torch_file

    name = os.fspath(path)
    try:
        state = read_torch_file(name)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    check_checkpoint(state, name)
    return state


def check_checkpoint(state: Any, name: str) -> GeneratorConfig:
    """The generator config of a checkpoint whose every part vsr reads is there and fits:
    :class:`CheckpointError` with one line otherwise.  The tensors' shapes are checked against the
    config before any module is built, so a crafted config costs no memory."""
    from vsr.weights import WeightsError, check_values, config_mismatch

    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name!r} is not a vsr training checkpoint")
    try:
        config = GeneratorConfig(**state["generator_config"])
        TrainConfig(**state["train_config"])
        step = state["step"]
    except KeyError as exc:
        raise CheckpointError(f"{name!r} is a damaged vsr checkpoint: it has no {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name!r} is a damaged vsr checkpoint: {exc}") from None
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{name!r} is a damaged vsr checkpoint: step {step!r} is not a count")
    for key in ("generator", "ema"):
        tensors = state.get(key)
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise CheckpointError(f"{name!r} is a damaged vsr checkpoint: no {key!r} tensors")
        problem = config_mismatch(config, {k: tuple(v.shape) for k, v in tensors.items()})
        if problem:
            raise CheckpointError(f"{name!r} is a damaged vsr checkpoint: its {key!r} does not match {config}: {problem}")
        try:
            check_values(name, tensors, floats_only=True)
        except WeightsError as exc:
            raise CheckpointError(f"{exc} (its {key!r})") from None
    return config


def generator_from_checkpoint(state: dict[str, Any]) -> Generator:
    """The generator (untrained) a checked checkpoint describes."""
    return Generator(GeneratorConfig(**state["generator_config"]))


@torch.no_grad()
def evaluate(model: nn.Module, images: Sequence[torch.Tensor], scale: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """PSNR-Y / SSIM-Y of ``model`` and of bicubic on HR images (CHW, [0,1]), LR made by downscaling."""
    from vsr.data import downscale

    if not images:
        return {}
    was_training = model.training
    model.eval()
    scores = {"psnr": 0.0, "ssim": 0.0, "bicubic_psnr": 0.0, "bicubic_ssim": 0.0}
    for hr in images:
        hr = hr[None].to(device)
        lr = downscale(hr, scale)
        sr = model(lr).clamp(0, 1)
        bic = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
        scores["psnr"] += psnr_y(sr, hr, border=scale)
        scores["ssim"] += ssim_y(sr, hr, border=scale)
        scores["bicubic_psnr"] += psnr_y(bic, hr, border=scale)
        scores["bicubic_ssim"] += ssim_y(bic, hr, border=scale)
    model.train(was_training)
    return {k: v / len(images) for k, v in scores.items()}


def run(
    trainer: Trainer,
    sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    val_images: Sequence[torch.Tensor],
    *,
    val_every: int = 200,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 500,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_validate: Callable[[int, dict[str, float]], None] | None = None,
    snapshot: Callable[[], None] | None = None,
    snapshot_every: int | None = None,
    is_main: bool = True,
) -> None:
    """The loop: steps until ``cfg.steps``, validating (scores go to ``on_validate``) and
    checkpointing along the way, and calling ``snapshot`` after every ``snapshot_every``-th step
    before the last (whose weights are the run's output).

    On KeyboardInterrupt a checkpoint is written before the exception goes on, if a step was taken
    since the last one (stopped before the first step, nothing is written: a file at that path from
    an earlier run is not replaced by an untrained state).
    """
    cfg = trainer.cfg
    scale = trainer.ema.config.scale
    saved_step = trainer.step
    try:
        while trainer.step < cfg.steps:
            lr_img, hr_img = sample(cfg.batch_size)
            losses = trainer.train_step(lr_img, hr_img)
            if on_step is not None:
                on_step(trainer.step, losses)
            done = trainer.step
            if is_main and val_images and (done % val_every == 0 or done == cfg.steps):
                scores = evaluate(trainer.ema, val_images, scale, trainer.device)
                if on_validate is not None:
                    on_validate(done, scores)
            if is_main and checkpoint is not None and (done % checkpoint_every == 0 or done == cfg.steps):
                checkpoint()
                saved_step = done
            if is_main and snapshot is not None and snapshot_every and done % snapshot_every == 0 and done < cfg.steps:
                snapshot()
    except KeyboardInterrupt:
        if is_main and checkpoint is not None and trainer.step > saved_step:
            checkpoint()
        raise
