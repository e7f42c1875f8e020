"""YUV <-> RGB with the source's own matrix and range (swscale through PyAV).

Decoded frames carry ``colorspace`` (matrix) and ``color_range`` tags.  We convert
with exactly those, and tag and convert the output the same way, so BT.709 HD
material does not come back with BT.601 colours (nunif issue 164).
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation

# AVColorSpace -> swscale's SWS_CS_* (what VideoFrame.reformat takes).
_AVCOL_SPC_TO_SWS = {
    1: 1,  # BT709
    4: 4,  # FCC
    5: 5,  # BT470BG (BT.601 625)
    6: 5,  # SMPTE170M (BT.601 525)
    7: 7,  # SMPTE240M
    9: 9,  # BT2020 NCL
    10: 9,  # BT2020 CL (closest swscale has)
}
# swscale matrix -> (Kr, Kb), the luma weights of red and blue (ITU-R BT.709, BT.601, BT.2020, ...).
MATRIX_COEFFICIENTS = {
    1: (0.2126, 0.0722),  # BT.709
    4: (0.30, 0.11),  # FCC
    5: (0.299, 0.114),  # BT.601
    7: (0.212, 0.087),  # SMPTE 240M
    9: (0.2627, 0.0593),  # BT.2020
}
UNSPECIFIED = 2
RANGE_LIMITED, RANGE_FULL = 1, 2
_INTERP = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


@dataclass(frozen=True)
class ColourTags:
    """What a video stream says about its colours (FFmpeg's integer codes)."""

    colorspace: int = UNSPECIFIED  # matrix
    color_range: int = 0
    color_primaries: int = UNSPECIFIED
    color_trc: int = UNSPECIFIED

    @classmethod
    def of(cls, obj) -> "ColourTags":
        """From a VideoFrame or a VideoCodecContext."""
        return cls(
            int(obj.colorspace or UNSPECIFIED),
            int(obj.color_range or 0),
            int(obj.color_primaries or UNSPECIFIED),
            int(obj.color_trc or UNSPECIFIED),
        )


@dataclass(frozen=True)
class PlaneFormat:
    """A planar or semi-planar YUV pixel format: bit depth, chroma subsampling (log2), layout."""

    name: str
    bits: int
    sub_x: int  # log2 of the horizontal chroma subsampling
    sub_y: int
    semi_planar: bool = False  # NV12: Y plane, then one plane of interleaved U,V
    full_range: bool | None = None  # yuvj*: full range whatever the tags say

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.bits <= 8 else np.dtype("<i2")  # as torch's int16

    def plane_shapes(self, height: int, width: int) -> list[tuple[int, ...]]:
        """Shapes of the planes of one frame (``(H, W)``, or ``(H, W, 2)`` for interleaved chroma)."""
        ch, cw = -(-height // (1 << self.sub_y)), -(-width // (1 << self.sub_x))
        if self.semi_planar:
            return [(height, width), (ch, cw, 2)]
        return [(height, width), (ch, cw), (ch, cw)]


PLANE_FORMATS = {f.name: f for f in [
    PlaneFormat("yuv420p", 8, 1, 1), PlaneFormat("yuv422p", 8, 1, 0), PlaneFormat("yuv444p", 8, 0, 0),
    PlaneFormat("yuvj420p", 8, 1, 1, full_range=True), PlaneFormat("yuvj422p", 8, 1, 0, full_range=True),
    PlaneFormat("yuvj444p", 8, 0, 0, full_range=True),
    PlaneFormat("yuv420p10le", 10, 1, 1), PlaneFormat("yuv422p10le", 10, 1, 0), PlaneFormat("yuv444p10le", 10, 0, 0),
    PlaneFormat("nv12", 8, 1, 1, semi_planar=True),
]}


def is_yuv_format(name: str) -> bool:
    """YUV (needs a matrix and a range); RGB, grey and palette formats do not."""
    fmt = av.VideoFormat(name)
    return not (fmt.is_rgb or fmt.has_palette or len(fmt.components) <= 2)


def matrix_for(tags: ColourTags, height: int) -> int:
    """The swscale matrix to use; untagged sources are guessed by size, as players do."""
    if tags.colorspace in _AVCOL_SPC_TO_SWS:
        return _AVCOL_SPC_TO_SWS[tags.colorspace]
    return 1 if height >= 720 else 5


def range_for(tags: ColourTags, pix_fmt: str) -> int:
    if tags.color_range in (RANGE_LIMITED, RANGE_FULL):
        return tags.color_range
    return RANGE_FULL if pix_fmt.startswith("yuvj") else RANGE_LIMITED


def frame_to_rgb(frame: av.VideoFrame, tags: ColourTags | None = None) -> np.ndarray:
    """A decoded frame as uint8 HxWx3 RGB, converted with its own matrix and range."""
    fmt = frame.format.name
    if fmt == "rgb24":
        return frame.to_ndarray()
    if not is_yuv_format(fmt):
        return frame.reformat(format="rgb24").to_ndarray()
    tags = tags or ColourTags.of(frame)
    rgb = frame.reformat(
        format="rgb24",
        src_colorspace=matrix_for(tags, frame.height),
        src_color_range=ColorRange(range_for(tags, fmt)),
        dst_color_range=ColorRange.JPEG,
        interpolation=_INTERP,
    )
    return rgb.to_ndarray()


def rgb_to_frame(rgb: np.ndarray, pix_fmt: str, tags: ColourTags) -> av.VideoFrame:
    """uint8 HxWx3 RGB to a frame in ``pix_fmt``, converted with and tagged by ``tags``."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    if pix_fmt == "rgb24":
        return frame
    if not is_yuv_format(pix_fmt):
        return frame.reformat(format=pix_fmt)
    rng = range_for(tags, pix_fmt)
    out = frame.reformat(
        format=pix_fmt,
        dst_colorspace=matrix_for(tags, rgb.shape[0]),
        src_color_range=ColorRange.JPEG,
        dst_color_range=ColorRange(rng),
        interpolation=_INTERP,
    )
    return _tag(out, tags, rng)


def rgba_to_frame(rgb: np.ndarray, alpha: np.ndarray, pix_fmt: str, tags: ColourTags) -> av.VideoFrame:
    """:func:`rgb_to_frame` with a transparency plane (``pix_fmt`` rgba, or yuva420p for WebP)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.dstack([rgb, alpha])), format="rgba")
    if pix_fmt == "rgba":
        return frame
    rng = range_for(tags, pix_fmt)
    out = frame.reformat(format=pix_fmt, dst_colorspace=matrix_for(tags, rgb.shape[0]), src_color_range=ColorRange.JPEG,
                         dst_color_range=ColorRange(rng), interpolation=_INTERP)
    return _tag(out, tags, rng)


def resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """A uint8 plane (e.g. alpha) resized with swscale's bicubic filter."""
    if plane.shape[:2] == (height, width):
        return plane
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(plane), format="gray")
    return frame.reformat(width=width, height=height, interpolation=Interpolation.BICUBIC).to_ndarray()


def _tag(frame: av.VideoFrame, tags: ColourTags, rng: int) -> av.VideoFrame:
    if tags.colorspace != UNSPECIFIED:
        frame.colorspace = tags.colorspace
    frame.color_range = rng
    if tags.color_primaries != UNSPECIFIED:
        frame.color_primaries = tags.color_primaries
    if tags.color_trc != UNSPECIFIED:
        frame.color_trc = tags.color_trc
    return frame


def _plane_views(frame: av.VideoFrame, shapes: list[tuple[int, ...]], dtype: np.dtype) -> list[np.ndarray]:
    """Each plane of ``frame`` as an array of ``shapes[i]`` (a view: rows are padded to line_size)."""
    views = []
    for plane, shape in zip(frame.planes, shapes):
        row = int(np.prod(shape[1:])) * dtype.itemsize
        data = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[: shape[0], :row]
        views.append(data.view(dtype).reshape(shape))
    return views


def frame_planes(frame: av.VideoFrame, fmt: PlaneFormat) -> list[np.ndarray]:
    """The planes of a decoded frame as contiguous arrays (copies) in ``fmt`` (a frame in another
    format, e.g. after a mid-stream change, is first converted by swscale)."""
    if frame.format.name != fmt.name:
        frame = frame.reformat(format=fmt.name, interpolation=_INTERP)
    shapes = fmt.plane_shapes(frame.height, frame.width)
    return [np.ascontiguousarray(v) for v in _plane_views(frame, shapes, fmt.numpy_dtype)]


def planes_to_frame(planes: list[np.ndarray], pix_fmt: str, size: tuple[int, int], tags: ColourTags,
                    full_range: bool) -> av.VideoFrame:
    """Planes made on the device (:class:`vsr.yuv.RgbToYuv`) as a ``pix_fmt`` frame of ``size``
    (height, width), tagged as :func:`rgb_to_frame` tags its output."""
    height, width = size
    frame = av.VideoFrame(width, height, pix_fmt)
    for view, plane in zip(_plane_views(frame, [p.shape for p in planes], planes[0].dtype), planes):
        view[...] = plane
    return _tag(frame, tags, RANGE_FULL if full_range else RANGE_LIMITED)
