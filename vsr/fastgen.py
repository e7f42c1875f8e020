"""vsr's generator rewritten for inference: the same function (tested to 1e-5), faster.

:class:`FastGenerator` is what the upscaler runs for a :class:`vsr.model.Generator`
(:meth:`vsr.model.Generator.facts`); ``tests/test_model.py`` ties the two by an equivalence test
over configs with and without BN, at x2 and x4, NCHW and channels_last.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vsr.model import Generator
from vsr.yuv import phase_taps


class FastGenerator(nn.Module):
    """An exact inference-time rewrite of a :class:`Generator` (same outputs up to float rounding).

    * The last stage.  The paper's network ends with PixelShuffle(2) -> PReLU(c) -> conv 9x9
      (c -> 3) at the full output size, where a 3-channel 9x9 conv is memory-bound (measured ~35
      GFLOPS vs ~140 for the body).  By polyphase decomposition the same computation is: PReLU(4c)
      (weights repeated) at half size -> conv 5x5 (4c -> 12, the four sub-pixel phases of each
      output channel) -> PixelShuffle(2).  Zero padding of 4 at full size is zero padding of 2 at
      half size, so borders match exactly.
    * The bicubic skip is computed in that same 12-channel half-size layout, by a 5x5 depthwise
      conv of the (edge-replicated) input: bicubic interpolation at a fixed scale is a fixed
      filter per output phase.  The tail conv then adds onto it and one PixelShuffle ends the
      network (F.interpolate on 3-channel channels_last frames cost ~20 ms a frame, this ~3).
    * Eval-mode BatchNorm is folded into the conv before it.
    * Residual additions are done in place, ``acc += conv(x)``: on the CPU as one oneDNN call (a
      convolution with a fused add) when PyTorch offers it (:func:`conv_add_`).
    * With the shuffle upsampler (``upsampler="shuffle"``) there is no last stage to rewrite: the
      tail adds onto the bicubic skip in PixelShuffle(scale)'s layout at the input size.
    """

    def __init__(self, g: Generator) -> None:
        super().__init__()
        cfg = g.config
        self.config = cfg
        self.scale = cfg.scale
        self.head = g.head
        self.blocks = nn.ModuleList(
            nn.Sequential(_fold_bn(b.conv1, b.bn1), b.act, _fold_bn(b.conv2, b.bn2)) for b in g.body
        )
        self.body_tail = _fold_bn(*g.body_tail)
        if cfg.upsampler == "shuffle":
            self.early = self.last_conv = self.prelu = nn.Identity()
            self.tail = g.tail
            self.shuffle = nn.PixelShuffle(cfg.scale)
            self.skip = BicubicPhases(cfg.scale, phases=cfg.scale) if cfg.global_skip == "bicubic" else None
            return
        *early, last_conv, _shuffle, last_prelu = list(g.upsample)
        self.early = nn.Sequential(*early)
        self.last_conv = last_conv
        c = cfg.channels
        self.prelu = nn.PReLU(4 * c)
        with torch.no_grad():
            self.prelu.weight.copy_(last_prelu.weight.detach().repeat_interleave(4))
            w = g.tail.weight.detach()  # (3, c, 9, 9)
            w2 = torch.zeros(12, 4 * c, 5, 5, dtype=w.dtype)
            for a in (0, 1):
                for b in (0, 1):
                    for p in (0, 1):
                        for q in (0, 1):
                            for k in range(-2, 3):
                                for m in range(-2, 3):
                                    dy, dx = 2 * k + p - a, 2 * m + q - b
                                    if -4 <= dy <= 4 and -4 <= dx <= 4:
                                        # output channel o*4+a*2+b, input channel ch*4+p*2+q
                                        w2[a * 2 + b :: 4, p * 2 + q :: 4, k + 2, m + 2] = w[:, :, dy + 4, dx + 4]
            self.tail = nn.Conv2d(4 * c, 12, 5, padding=2)
            self.tail.weight.copy_(w2)
            self.tail.bias.copy_(g.tail.bias.detach().repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)
        self.skip: nn.Module | None = BicubicPhases(cfg.scale) if cfg.global_skip == "bicubic" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        h = feat.clone()
        for conv1, act, conv2 in self.blocks:
            conv_add_(h, act(conv1(h)), conv2)
        conv_add_(feat, h, self.body_tail)
        y = self.prelu(self.last_conv(self.early(feat)))
        if self.skip is None:
            return self.shuffle(self.tail(y))
        return self.shuffle(conv_add_(self.skip(x), y, self.tail))


class BicubicPhases(nn.Module):
    """Bicubic upsampling by ``scale`` (exactly ``F.interpolate(mode="bicubic", align_corners=False)``)
    in the layout of :class:`FastGenerator`'s tail: 12 channels at ``scale // 2`` times the input
    size, channel ``c*4 + a*2 + b`` holding output pixels ``(2Y + a, 2X + b)`` of colour ``c``; with
    ``phases=p``, ``3*p*p`` channels at ``scale // p`` times the input size (``phases=scale``: the
    input size, PixelShuffle(scale)'s layout, for the shuffle upsampler).

    Output pixel ``o = scale*i + r`` samples source position ``i + (r + 0.5)/scale - 0.5``, whose four
    cubic taps (A = -0.75) lie within input pixels ``i-2 .. i+2``; edges are replicated, as
    F.interpolate clamps its taps.  So it is one depthwise 5x5 conv and a PixelShuffle(scale // phases).
    """

    def __init__(self, scale: int, phases: int = 2) -> None:
        super().__init__()
        p = phases
        g = scale // p  # the tail's grid, in input pixels
        taps = phase_taps(scale)
        kernel = torch.zeros(3, p, p, g, g, 5, 5, dtype=torch.float64)  # colour, a, b, s, t
        for a in range(p):
            for b in range(p):
                for s in range(g):
                    for t in range(g):
                        kernel[:, a, b, s, t] = torch.outer(taps[p * s + a], taps[p * t + b])
        self.register_buffer("kernel", kernel.reshape(3 * p * p * g * g, 1, 5, 5).float(), persistent=False)
        self.shuffle = nn.PixelShuffle(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the input's own dtype even under autocast: under CPU bf16 autocast the skip (and so the
        # output, which the tail adds onto it) stays fp32; only the convolutions of the body are bf16.
        with torch.autocast(x.device.type, enabled=False):
            phases = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self.kernel.to(x.dtype), groups=3)
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return self.shuffle(phases).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _fold_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """``conv`` followed by eval-mode ``bn`` as one conv (a copy); ``conv`` itself if ``bn`` is Identity."""
    if isinstance(bn, nn.Identity):
        return conv
    return fuse_conv_bn_eval(conv.eval(), bn.eval())


@functools.cache
def _fused_conv_add_op():
    """oneDNN's convolution with an in-place add post-op, as PyTorch's inductor uses it; None if this
    build lacks it or gets it wrong (checked once, on a tiny input)."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise_.binary
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(1, 8, 6, 5, generator=gen).contiguous(memory_format=torch.channels_last)
            w = torch.rand(16, 8, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
            b = torch.rand(16, generator=gen)
            acc = torch.rand(1, 16, 6, 5, generator=gen).contiguous(memory_format=torch.channels_last)
            want = acc + F.conv2d(x, w, b, padding=1)
            op(acc, x, w, b, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, None, [], None)
        return op if torch.allclose(acc, want, atol=1e-5) else None
    except (AttributeError, RuntimeError):
        return None


def conv_add_(acc: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``acc += conv(x)`` in place; returns ``acc``.

    On the CPU, for fp32 channels_last inference, this is one oneDNN call (the add is a post-op of
    the convolution, so the result is not written and read back); otherwise two PyTorch ops.
    """
    if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and all(t.is_contiguous(memory_format=torch.channels_last) for t in (acc, x, conv.weight))
            and _fused_conv_add_op() is not None):
        _fused_conv_add_op()(acc, x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
               conv.groups, "add", 1.0, None, [], None)
        return acc
    return acc.add_(conv(x))
