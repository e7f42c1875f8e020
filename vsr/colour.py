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
    if tags.colorspace != UNSPECIFIED:
        out.colorspace = tags.colorspace
    out.color_range = rng
    if tags.color_primaries != UNSPECIFIED:
        out.color_primaries = tags.color_primaries
    if tags.color_trc != UNSPECIFIED:
        out.color_trc = tags.color_trc
    return out
