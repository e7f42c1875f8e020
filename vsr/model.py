"""The SRGAN networks (Ledig et al. 2017) and their hyper-parameters.

Everything here is tensor-in/tensor-out: images are float NCHW in [0, 1].

The generator follows the paper (9x9 conv + PReLU, B residual blocks of
conv-BN-PReLU-conv-BN, conv-BN plus the long skip, log2(scale) sub-pixel stages,
9x9 conv to RGB).  Two documented deviations can be switched on in the config:

* ``batch_norm=False`` drops every BN layer (as EDSR/ESRGAN/BasicSR's MSRResNet
  do): faster, no train/eval mismatch, and it trains far better from scratch.
* ``global_skip="bicubic"`` adds a bicubic upsampling of the input to the
  output, and the last conv is zero-initialised, so an untrained network is
  exactly bicubic and training only has to learn the residual detail.
* ``upsampler="shuffle"`` replaces the sub-pixel stages and the 9x9 conv at the output size by one
  3x3 conv from the body to ``3 * scale**2`` channels and one PixelShuffle(scale) (ESPCN, Shi et
  al. 2016): all the work at the input size, for the fast tier (``vsr_x4_fast``).
* ``colour_anchor=K`` (with the bicubic skip) removes the smooth part of the network's residual over
  the skip before adding it (:func:`anchor_lowpass`): the residual's mean over each input pixel's
  ``scale x scale`` output block, box-blurred over ``2K + 1`` input pixels and bilinearly upsampled.
  The antialiased downscaling that makes the LR keeps local means, so bicubic already has the
  right local colour and brightness; an adversarial model's drawn texture may shift them, and this
  takes that shift back out (issue #31: colour casts), for about 1.5e-4 of a 16x64 network's operations.

The bundled weights use the first two, the fast tier the shuffle upsampler too, and ``vsr_x4_srgan``
the colour anchor (see ``weights/README.md``); ``GeneratorConfig()``
with no arguments is the paper's network.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SCALES = (2, 4)
GLOBAL_SKIPS = ("none", "bicubic")
UPSAMPLERS = ("stages", "shuffle")  # the paper's sub-pixel stages and 9x9 tail, or one 3x3 conv and PixelShuffle(scale)
MAX_COLOUR_ANCHOR = 64  # input pixels of the anchor's box radius a file may ask (it widens every tile's margin)
MAX_BLOCKS, MAX_CHANNELS = 256, 1024  # far past any SRResNet trained (the paper's: 16 x 64); a file asking more is refused


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of the generator; stored inside every weights file."""

    scale: int = 4
    blocks: int = 16
    channels: int = 64
    batch_norm: bool = True
    global_skip: str = "none"
    upsampler: str = "stages"
    colour_anchor: int = 0  # 0: off; K: the residual's smooth part (box radius K input pixels) is removed

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if not (type(self.blocks) is int and 1 <= self.blocks <= MAX_BLOCKS):
            raise ValueError(f"blocks must be an integer from 1 to {MAX_BLOCKS}, got {self.blocks!r}")
        if not (type(self.channels) is int and 1 <= self.channels <= MAX_CHANNELS):
            raise ValueError(f"channels must be an integer from 1 to {MAX_CHANNELS}, got {self.channels!r}")
        if type(self.batch_norm) is not bool:
            raise ValueError(f"batch_norm must be true or false, got {self.batch_norm!r}")
        if self.global_skip not in GLOBAL_SKIPS:
            raise ValueError(f"global_skip must be one of {GLOBAL_SKIPS}, got {self.global_skip!r}")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if not (type(self.colour_anchor) is int and 0 <= self.colour_anchor <= MAX_COLOUR_ANCHOR):
            raise ValueError(f"colour_anchor must be an integer from 0 (off) to {MAX_COLOUR_ANCHOR} input pixels, "
                             f"got {self.colour_anchor!r}")
        if self.colour_anchor and self.global_skip != "bicubic":
            raise ValueError(f"colour_anchor acts on the residual over the bicubic skip: it needs global_skip='bicubic', "
                             f"got {self.global_skip!r}")

    @property
    def architecture(self) -> str:
        """The network's name, as ``vsr models`` and the upscaler show it: "SRResNet 16x64" (+ " BN", " shuffle")."""
        return (f"SRResNet {self.blocks}x{self.channels}" + (" BN" if self.batch_norm else "")
                + (" shuffle" if self.upsampler == "shuffle" else ""))

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if self.upsampler == "stages":
            del data["upsampler"]  # written as before the key existed, so a vsr without it reads the file
        if not self.colour_anchor:
            del data["colour_anchor"]  # likewise: only a file that uses it needs a vsr that knows it
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GeneratorConfig":
        data: dict[str, Any] = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generator config keys {unknown}; this vsr knows {sorted(known)}")
        return cls(**data)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor a generator of this config holds, worked out without
        allocating any (the module is built on the meta device): what a weights file's tensors are
        checked against before a real module is built."""
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in Generator(self).state_dict().items()}

    def flops_per_pixel(self) -> float:
        """Multiply-adds x2 per *input* pixel (convolutions, and the colour anchor when on)."""
        c, s = self.channels, self.scale
        macs = 9 * 9 * 3 * c  # head
        macs += self.blocks * 2 * 9 * c * c  # residual blocks
        macs += 9 * c * c  # conv after the blocks
        if self.upsampler == "shuffle":
            return 2.0 * (macs + 9 * c * 3 * s * s) + self.anchor_flops_per_pixel()  # one 3x3 conv; PixelShuffle is free
        area = 1
        for _ in range(int(math.log2(s))):
            macs += area * 9 * c * 4 * c  # conv before PixelShuffle(2), at the current size
            area *= 4
        macs += area * 9 * 9 * c * 3  # tail at the output size
        return 2.0 * macs + self.anchor_flops_per_pixel()

    def anchor_flops_per_pixel(self) -> float:
        """The colour anchor's operations per *input* pixel, as the upscaler runs it (0 when off): per
        colour, the block mean of the output (``scale**2`` adds) less the same of the skip (a 5x5
        depthwise conv: 25 multiply-adds), the two box-blur passes (``2K + 1`` adds each), the
        bilinear upsampling (4 multiply-adds per output pixel) and the subtraction (1 per output pixel)."""
        if not self.colour_anchor:
            return 0.0
        s, k = self.scale, self.colour_anchor
        return 3.0 * (s * s + 2 * 25 + 2 * (2 * k + 1) + s * s * (2 * 4 + 1))

    def peak_bytes_per_pixel(self, dtype_bytes: int = 4) -> int:
        """Activation bytes per *input* pixel at the network's peak: about three live feature maps
        of ``channels`` at the output size (``scale**2`` pixels per input pixel) in the last stage.
        The one formula tile sizes (CUDA) and CPU worker counts are derived from.  With the
        shuffle upsampler the feature maps stay at the input size: three of them, the output and
        its bicubic skip."""
        if self.upsampler == "shuffle":
            return (3 * self.channels + 2 * 3 * self.scale**2) * dtype_bytes
        return 3 * self.channels * self.scale**2 * dtype_bytes

    def receptive_radius(self) -> int:
        """How many input pixels on each side influence one output pixel (rounded up)."""
        radius = 4 + 2 * self.blocks + 1  # head 9x9, residual convs, body tail
        if self.upsampler == "shuffle":
            return max(radius + 1, 2) + self.anchor_radius()  # the 3x3 conv at the input size
        size = 1.0
        for _ in range(int(math.log2(self.scale))):
            radius += 1 / size  # conv before each PixelShuffle, at the current size
            size *= 2
        radius += 4 / size  # 9x9 tail at the output size
        return int(math.ceil(max(radius, 2))) + self.anchor_radius()  # the bicubic skip needs 2

    def anchor_radius(self) -> int:
        """Input pixels the colour anchor adds to the receptive radius: its box blur's ``K`` and the
        one block on each side its bilinear upsampling reads (0 when off)."""
        return self.colour_anchor + 1 if self.colour_anchor else 0


FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16})


@dataclass(frozen=True)
class ModelFacts:
    """What the upscaler needs to know about a model, whatever its source (vsr's generator,
    bicubic, a community model through spandrel), computed once, by the model's own code.

    ``module`` is what runs (float NCHW RGB in [0, 1] -> ``scale`` times larger; for vsr's
    generator its exact fast rewrite); ``radius`` the receptive radius in input pixels, None when
    unknown (tiles are then blended over an overlap); ``bytes_per_pixel_fp32`` the activation
    memory per input pixel at fp32, the figure tiles and CPU workers are sized from.
    """

    module: nn.Module
    name: str
    scale: int
    radius: int | None
    bytes_per_pixel_fp32: int
    dtypes: frozenset = FLOATS  # the float types it runs in
    multiple_of: int = 1  # input sides it needs (it pads itself; for information)
    minimum: int = 0

    def bytes_per_pixel(self, dtype: torch.dtype) -> int:
        return self.bytes_per_pixel_fp32 * dtype.itemsize // 4


def model_facts(model: nn.Module) -> ModelFacts:
    """``model.facts()``, or for any other module a cautious description (no known receptive field,
    a 64-channel network's memory)."""
    if hasattr(model, "facts"):
        return model.facts()
    scale = int(model.scale)
    return ModelFacts(model, type(model).__name__, scale, None, 3 * 64 * scale**2 * 4)


def _norm(channels: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn1 = _norm(channels, batch_norm)
        self.act = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn2 = _norm(channels, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class Generator(nn.Module):
    """SRGAN generator (SRResNet).  Input and output are RGB in [0, 1]."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.config = config
        c, bn = config.channels, config.batch_norm
        self.head = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU(c))
        self.body = nn.Sequential(*[ResidualBlock(c, bn) for _ in range(config.blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=not bn), _norm(c, bn))
        stages: list[nn.Module] = []
        if config.upsampler == "shuffle":  # the tail makes every output pixel; forward shuffles them into place
            self.tail = nn.Conv2d(c, 3 * config.scale**2, 3, padding=1)
        else:
            for _ in range(int(math.log2(config.scale))):
                stages += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(c)]
            self.tail = nn.Conv2d(c, 3, 9, padding=4)
        self.upsample = nn.Sequential(*stages)
        if config.global_skip == "bicubic":
            # Start as exact bicubic: the network learns only the residual.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    @property
    def scale(self) -> int:
        return self.config.scale

    def facts(self) -> ModelFacts:
        """For the upscaler: the exact inference rewrite (:class:`vsr.fastgen.FastGenerator`) and
        the config's receptive radius and memory."""
        from vsr.fastgen import FastGenerator

        cfg = self.config
        module: nn.Module = FastGenerator(self.eval())
        if cfg.colour_anchor:
            module = AnchoredOutput(module, cfg.scale, cfg.colour_anchor)
        return ModelFacts(module, cfg.architecture, cfg.scale, cfg.receptive_radius(), cfg.peak_bytes_per_pixel(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        feat = feat + self.body_tail(self.body(feat))
        out = self.tail(self.upsample(feat))
        if self.config.upsampler == "shuffle":
            out = F.pixel_shuffle(out, self.config.scale)
        if self.config.colour_anchor:  # the residual, less its smooth part
            out = out - anchor_lowpass(out, self.config.scale, self.config.colour_anchor)
        if self.config.global_skip == "bicubic":
            out = out + F.interpolate(x, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return out


def anchor_lowpass(residual: torch.Tensor, scale: int, radius: int) -> torch.Tensor:
    """The smooth part of an output-size ``residual`` (N, C, scale*H, scale*W) that the colour anchor
    removes: its mean over each ``scale x scale`` block (one value per input pixel), a box blur of
    ``2 * radius + 1`` of those (means of what lies inside the picture at its borders), and a
    bilinear upsampling back to the output size (smooth: no block edges, so no ``scale``-periodic
    grid).  Linear and shift-equivariant for shifts by whole input pixels, so tiles stitch exactly
    when their margin covers :meth:`GeneratorConfig.anchor_radius` more."""
    if residual.shape[-2] % scale or residual.shape[-1] % scale:
        raise ValueError(f"expected an output of {scale}x the input's size, got sides {tuple(residual.shape[-2:])}")
    with torch.autocast(residual.device.type, enabled=False):
        m = F.avg_pool2d(residual, scale)
        m = F.avg_pool2d(m, (2 * radius + 1, 1), stride=1, padding=(radius, 0), count_include_pad=False)
        m = F.avg_pool2d(m, (1, 2 * radius + 1), stride=1, padding=(0, radius), count_include_pad=False)
        return F.interpolate(m, scale_factor=scale, mode="bilinear", align_corners=False)


class AnchoredOutput(nn.Module):
    """The colour anchor around :class:`vsr.fastgen.FastGenerator`, which adds the bicubic skip inside
    its tail: the residual's block means are the output's block means less the skip's, and the
    skip's block mean is a fixed 5x5 filter of the input (the mean of bicubic's ``scale**2`` phase
    filters), so the residual itself is never formed.  The same function as
    :class:`Generator` with ``colour_anchor`` (tested)."""

    def __init__(self, fast: nn.Module, scale: int, radius: int) -> None:
        super().__init__()
        from vsr.yuv import phase_taps

        self.fast, self.scale, self.radius = fast, scale, radius
        taps = phase_taps(scale).mean(0)  # (5,): bicubic's taps averaged over the output phases
        self.register_buffer("block_mean", torch.outer(taps, taps).float().expand(3, 1, 5, 5).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fast(x)
        s, k = self.scale, self.radius
        with torch.autocast(x.device.type, enabled=False):
            skip_mean = F.conv2d(F.pad(x.to(y.dtype), (2, 2, 2, 2), mode="replicate"), self.block_mean.to(y.dtype), groups=3)
            m = F.avg_pool2d(y, s) - skip_mean
            m = F.avg_pool2d(m, (2 * k + 1, 1), stride=1, padding=(k, 0), count_include_pad=False)
            m = F.avg_pool2d(m, (1, 2 * k + 1), stride=1, padding=(0, k), count_include_pad=False)
            return y - F.interpolate(m, scale_factor=s, mode="bilinear", align_corners=False)


class Bicubic(nn.Module):
    """``--model bicubic``: the same pipeline with bicubic interpolation."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def facts(self) -> ModelFacts:
        # bicubic's 4 taps reach 2 input pixels; memory: the output and its input, per input pixel
        return ModelFacts(self, f"bicubic x{self.scale}", self.scale, 2, 3 * (self.scale**2 + 1) * 4)


DISCRIMINATOR_NORMS = ("batch", "spectral")
DISCRIMINATOR_ARCHS = ("vgg", "unet")


@dataclass(frozen=True)
class DiscriminatorConfig:
    patch_size: int = 96
    channels: int = 64
    norm: str = "batch"  # the paper's BatchNorm, or spectral normalisation of every layer (no BN)
    arch: str = "vgg"  # the paper's (one logit per crop) or "unet" (Real-ESRGAN's: one logit per pixel)

    def __post_init__(self) -> None:
        if self.patch_size % 16:
            raise ValueError(f"discriminator patch_size must be a multiple of 16, got {self.patch_size}")
        if self.norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"discriminator norm must be one of {DISCRIMINATOR_NORMS}, got {self.norm!r}")
        if self.arch not in DISCRIMINATOR_ARCHS:
            raise ValueError(f"discriminator architecture must be one of {DISCRIMINATOR_ARCHS}, got {self.arch!r}")
        if self.arch == "unet" and self.norm != "spectral":
            raise ValueError("the U-Net discriminator is spectrally normalised only (Real-ESRGAN's): "
                             f"its norm (vsr finetune's --d-norm) must be 'spectral', got {self.norm!r}")


def discriminator(config: DiscriminatorConfig) -> nn.Module:
    """The discriminator ``config`` describes: :class:`Discriminator` or :class:`UNetDiscriminator`."""
    return UNetDiscriminator(config) if config.arch == "unet" else Discriminator(config)


class Discriminator(nn.Module):
    """The paper's discriminator: 8 conv3x3 (64->512, stride 2 when the width stays),
    BN after all but the first, LeakyReLU 0.2, dense 1024, LeakyReLU, dense 1 (a logit).
    ``norm="spectral"``: no BN, every layer spectrally normalised (Miyato et al. 2018; as
    Real-ESRGAN's discriminator), which keeps D's gradients tame on small batches."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        spectral = config.norm == "spectral"
        wrap = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        widths = [c, c, 2 * c, 2 * c, 4 * c, 4 * c, 8 * c, 8 * c]
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(widths):
            stride = 2 if i % 2 == 1 else 1
            layers.append(wrap(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=i == 0 or spectral)))
            if i > 0 and not spectral:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = config.patch_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(),
            wrap(nn.Linear(8 * c * side * side, 1024)),
            nn.LeakyReLU(0.2, inplace=True),
            wrap(nn.Linear(1024, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.config.patch_size, self.config.patch_size):
            raise ValueError(
                f"discriminator expects {self.config.patch_size}x{self.config.patch_size} patches, "
                f"got {tuple(x.shape[-2:])}"
            )
        return self.classifier(self.features(x)).squeeze(1)


class UNetDiscriminator(nn.Module):
    """Real-ESRGAN's U-Net discriminator (Wang et al. 2021, after Schonfeld et al. 2020): three
    stride-2 4x4 convs down (64->128->256->512), three bilinear x2 + conv3x3 up with skip sums,
    two more conv3x3 and a conv3x3 to one channel; LeakyReLU 0.2; every conv but the first and
    the last spectrally normalised.  It returns a logit per pixel (N, H, W): where a crop looks
    fake, not only whether, so the generator's adversarial gradient is local.  Any crop whose
    sides are multiples of 8 works."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig(norm="spectral", arch="unet")) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        sn = nn.utils.parametrizations.spectral_norm
        self.conv0 = nn.Conv2d(3, c, 3, padding=1)
        self.down = nn.ModuleList(sn(nn.Conv2d(c * 2**i, c * 2 ** (i + 1), 4, stride=2, padding=1, bias=False))
                                  for i in range(3))
        self.up = nn.ModuleList(sn(nn.Conv2d(c * 2 ** (3 - i), c * 2 ** (2 - i), 3, padding=1, bias=False))
                                for i in range(3))
        self.extra = nn.ModuleList(sn(nn.Conv2d(c, c, 3, padding=1, bias=False)) for _ in range(2))
        self.head = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"the U-Net discriminator expects sides that are multiples of 8, got {tuple(x.shape[-2:])}")
        act = functools.partial(F.leaky_relu, negative_slope=0.2)
        skips = [act(self.conv0(x))]
        for conv in self.down:
            skips.append(act(conv(skips[-1])))
        y = skips.pop()
        for conv in self.up:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = act(conv(y)) + skips.pop()
        for conv in self.extra:
            y = act(conv(y))
        return self.head(y).squeeze(1)
