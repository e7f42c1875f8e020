"""YUV planes <-> RGB as torch ops, on any device (the GPU path's colour conversion).

On CUDA, decoded frames travel to the GPU as their own planes (a 4:2:0 frame is half the bytes of
its RGB), are converted there with the source's matrix and range, and the model's output is
converted to the encoder's pixel format there too, so only its planes come back.  On the CPU the
same modules run (tests compare them with swscale, :mod:`vsr.colour`, within one level).

Conventions follow swscale as PyAV calls it (:func:`vsr.colour.frame_to_rgb`): the matrix and
range from the frame's tags (:func:`vsr.colour.matrix_for`, :func:`vsr.colour.range_for`), chroma
samples where the decoder says they are (swscale reads the frame's chroma location: H.264, HEVC
and MPEG-2/4 decoders put them on the even luma columns, "left"; others leave them centred,
:func:`vsr.decode.chroma_left`), cubic
interpolation with swscale's default sharpness (B = 0, C = 0.6, i.e. Keys' a = -0.6) for chroma
upsampling, and for 4:2:0/4:2:2 output swscale's chroma reduction (a 2-tap average across, a cubic
filter stretched by 2 down).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vsr.colour import MATRIX_COEFFICIENTS, PLANE_FORMATS, RANGE_FULL, ColourTags, PlaneFormat, matrix_for, range_for

SWS_CUBIC_A = -0.6  # swscale's bicubic: B = 0, C = 0.6


def cubic_weight(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel at distance ``d`` (PyTorch's and OpenCV's bicubic: a = -0.75)."""
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.0


def torch_dtype(fmt: PlaneFormat) -> torch.dtype:
    """The tensor dtype of the format's planes: uint8, or int16 holding 10-bit values."""
    return torch.uint8 if fmt.bits <= 8 else torch.int16


class _Coding:
    """How a format codes Y'PbPr: the code values of black, of the luma span and of the chroma span
    and centre, for its bit depth and range (yuvj* formats are full range whatever the tags say)."""

    def __init__(self, fmt: str, full_range: bool) -> None:
        self.format = PLANE_FORMATS[fmt]
        bits = self.format.bits
        self.full_range = self.format.full_range if self.format.full_range is not None else full_range
        self.top = float((1 << bits) - 1)
        self.chroma_centre = float(1 << (bits - 1))
        if self.full_range:
            self.luma_offset, self.luma_span, self.chroma_span = 0.0, self.top, self.top
        else:
            unit = float(1 << (bits - 8))
            self.luma_offset, self.luma_span, self.chroma_span = 16.0 * unit, 219.0 * unit, 224.0 * unit


def _matrix(kr: float, kb: float) -> torch.Tensor:
    """RGB -> (Y, Pb, Pr) for luma in [0, 1] and chroma in [-0.5, 0.5]."""
    kg = 1 - kr - kb
    return torch.tensor([
        [kr, kg, kb],
        [-0.5 * kr / (1 - kb), -0.5 * kg / (1 - kb), 0.5],
        [0.5, -0.5 * kg / (1 - kr), -0.5 * kb / (1 - kr)],
    ], dtype=torch.float64)


def phase_taps(scale: int, a: float = -0.75, shift: float = 0.0) -> torch.Tensor:
    """Cubic taps, 5 wide (input offsets -2..2), of the ``scale`` output phases of an upsampling with
    centred samples (``align_corners=False``): output ``scale*i + r`` samples input position
    ``i + (r + 0.5) / scale - 0.5 + shift``.  Shape ``(scale, 5)``, float64."""
    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for r in range(scale):
        src = (r + 0.5) / scale - 0.5 + shift
        f = math.floor(src)
        t = src - f
        for d in (-1, 0, 1, 2):
            taps[r, f + d + 2] += cubic_weight(t - d, a)
    return taps


def _down_taps(a: float) -> torch.Tensor:
    """A cubic filter stretched by 2 (8 taps): output ``i`` averages inputs around ``2i + 0.5``."""
    offsets = torch.arange(-3, 5, dtype=torch.float64)  # input 2i-3 .. 2i+4
    w = torch.tensor([cubic_weight((o - 0.5) / 2, a) for o in offsets.tolist()], dtype=torch.float64)
    return w / w.sum()


def _upsample2(x: torch.Tensor, dim: int, taps: torch.Tensor) -> torch.Tensor:
    """Double ``x`` (N, C, H, W) along ``dim`` (2 or 3) with two 5-tap phases, edges replicated."""
    n, c, h, w = x.shape
    if dim == 3:
        padded = F.pad(x, (2, 2, 0, 0), mode="replicate")
        kernel = taps.to(x)[:, None, None, :]  # (2, 1, 1, 5)
    else:
        padded = F.pad(x, (0, 0, 2, 2), mode="replicate")
        kernel = taps.to(x)[:, None, :, None]
    phases = F.conv2d(padded.reshape(n * c, 1, *padded.shape[2:]), kernel)  # (n*c, 2, h, w)
    if dim == 3:
        return phases.permute(0, 2, 3, 1).reshape(n, c, h, 2 * w)
    return phases.permute(0, 2, 1, 3).reshape(n, c, 2 * h, w)


def _downsample2(x: torch.Tensor, dim: int, taps: torch.Tensor) -> torch.Tensor:
    """Halve ``x`` (N, C, H, W) along ``dim`` with an 8-tap filter, edges replicated (odd sizes padded)."""
    n, c, h, w = x.shape
    size = x.shape[dim]
    extra = size % 2
    if dim == 3:
        padded = F.pad(x, (3, 4 + extra, 0, 0), mode="replicate")
        kernel, stride = taps.to(x)[None, None, None, :], (1, 2)
    else:
        padded = F.pad(x, (0, 0, 3, 4 + extra), mode="replicate")
        kernel, stride = taps.to(x)[None, None, :, None], (2, 1)
    out = F.conv2d(padded.reshape(n * c, 1, *padded.shape[2:]), kernel, stride=stride)
    return out.reshape(n, c, *out.shape[2:])


def _average_pairs(x: torch.Tensor) -> torch.Tensor:
    """Halve the width by averaging horizontal pairs (swscale's RGB input for subsampled chroma)."""
    if x.shape[3] % 2:
        x = F.pad(x, (0, 1, 0, 0), mode="replicate")
    return 0.5 * (x[..., 0::2] + x[..., 1::2])


class YuvToRgb(nn.Module):
    """Planes of a :class:`PlaneFormat` batch (integer tensors ``(N, H, W)``, or ``(N, H, W, 2)``
    interleaved) -> float RGB ``(N, 3, H, W)`` in [0, 1], computed in ``dtype`` (float32 default)."""

    def __init__(self, fmt: str, matrix: int, full_range: bool, chroma_left: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.coding = _Coding(fmt, full_range)
        self.format, self.full_range = self.coding.format, self.coding.full_range
        kr, kb = MATRIX_COEFFICIENTS[matrix]
        self.register_buffer("inverse", torch.linalg.inv(_matrix(kr, kb)).to(dtype), persistent=False)
        self.register_buffer("taps", phase_taps(2, SWS_CUBIC_A).to(dtype), persistent=False)
        # chroma co-sited with the even luma columns (H.264, HEVC, MPEG-2/4): a quarter chroma
        # sample to the right of centred siting, in chroma units
        shift = 0.25 if chroma_left else 0.0
        self.register_buffer("taps_x", phase_taps(2, SWS_CUBIC_A, shift).to(dtype), persistent=False)
        self.dtype = dtype

    def forward(self, planes: Sequence[torch.Tensor]) -> torch.Tensor:
        f = self.format
        y = planes[0].to(self.dtype)[:, None]
        if f.semi_planar:
            uv = planes[1].to(self.dtype).permute(0, 3, 1, 2)
        else:
            uv = torch.stack([planes[1], planes[2]], 1).to(self.dtype)
        c = self.coding
        y = (y - c.luma_offset) / c.luma_span
        uv = (uv - c.chroma_centre) / c.chroma_span
        h, w = y.shape[2:]
        if f.sub_y:
            uv = _upsample2(uv, 2, self.taps)[:, :, :h]
        if f.sub_x:
            uv = _upsample2(uv, 3, self.taps_x)[:, :, :, :w]
        ypbpr = torch.cat([y, uv], 1)
        rgb = torch.einsum("ij,njhw->nihw", self.inverse, ypbpr)
        return rgb.clamp_(0, 1)


class RgbToYuv(nn.Module):
    """Float RGB ``(N, 3, H, W)`` in [0, 1] -> the planes of a :class:`PlaneFormat` (integer tensors
    as :class:`YuvToRgb` takes them), rounded and clamped to the format's code values."""

    def __init__(self, fmt: str, matrix: int, full_range: bool) -> None:
        super().__init__()
        self.coding = _Coding(fmt, full_range)
        self.format, self.full_range = self.coding.format, self.coding.full_range
        kr, kb = MATRIX_COEFFICIENTS[matrix]
        self.register_buffer("forward_matrix", _matrix(kr, kb).float(), persistent=False)
        self.register_buffer("taps", _down_taps(SWS_CUBIC_A).float(), persistent=False)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.format
        rgb = rgb.float().clamp(0, 1)
        ypbpr = torch.einsum("ij,njhw->nihw", self.forward_matrix.to(rgb.device), rgb)
        c = self.coding
        y = ypbpr[:, 0] * c.luma_span + c.luma_offset
        uv = ypbpr[:, 1:]
        if f.sub_x:
            uv = _average_pairs(uv)
        if f.sub_y:
            uv = _downsample2(uv, 2, self.taps.to(rgb.device))
        uv = uv * c.chroma_span + c.chroma_centre
        y = y.round_().clamp_(0, c.top).to(torch_dtype(f))
        uv = uv.round_().clamp_(0, c.top).to(torch_dtype(f))
        if f.semi_planar:
            return y, uv.permute(0, 2, 3, 1).contiguous()
        return y, uv[:, 0].contiguous(), uv[:, 1].contiguous()


class PlaneConversion(nn.Module):
    """The colour conversions of one file, run beside the model: the input's planes -> RGB
    (:class:`YuvToRgb`) and RGB -> the output's planes (:class:`RgbToYuv`)."""

    def __init__(self, decode: YuvToRgb, encode: RgbToYuv, in_size: tuple[int, int]) -> None:
        super().__init__()
        self.decode = decode
        self.encode = encode
        self.in_shapes = decode.format.plane_shapes(*in_size)

    def check(self, planes: Sequence[torch.Tensor]) -> None:
        """Raise ValueError unless ``planes`` is a batch of this conversion's input planes."""
        shapes = [tuple(p.shape[1:]) for p in planes]
        dtype = torch_dtype(self.decode.format)
        if shapes != [tuple(s) for s in self.in_shapes] or any(p.dtype != dtype for p in planes):
            raise ValueError(f"expected {self.decode.format.name} planes {self.in_shapes} of {dtype}, "
                             f"got {shapes} of {[p.dtype for p in planes]}")


def plane_conversion(in_fmt: str, in_tags: ColourTags, in_size: tuple[int, int], out_fmt: str, out_tags: ColourTags,
                     out_size: tuple[int, int], chroma_left: bool = False) -> PlaneConversion | None:
    """The device conversions for a file, with the matrix and range :func:`vsr.colour.frame_to_rgb`
    and :func:`vsr.colour.rgb_to_frame` would use (sizes are (height, width)); None when a format
    is not one of :data:`PLANE_FORMATS` (the caller converts on the CPU with swscale instead)."""
    if in_fmt not in PLANE_FORMATS or out_fmt not in PLANE_FORMATS:
        return None
    decode = YuvToRgb(in_fmt, matrix_for(in_tags, in_size[0]), range_for(in_tags, in_fmt) == RANGE_FULL, chroma_left)
    encode = RgbToYuv(out_fmt, matrix_for(out_tags, out_size[0]), range_for(out_tags, out_fmt) == RANGE_FULL)
    return PlaneConversion(decode, encode, in_size)
