"""What kinds of files vsr reads, and how it tells them apart."""

from __future__ import annotations

VIDEO_EXTENSIONS = frozenset(
    "mp4 m4v mkv mov webm avi wmv flv ts m2ts mts mpg mpeg vob ogv 3gp 3g2 mxf y4m gif h264 264 h265 265 hevc".split()
)
# Read but not written: the output gets the extension given here (GIF holds 256 colours a frame,
# which would undo the upscaling; an MP4 is what GIF-to-video tools give.  A raw H.264/HEVC stream
# has no timestamps or room for audio: Matroska keeps what it has).
OUTPUT_EXTENSION = {"gif": "mp4", "h264": "mkv", "264": "mkv", "h265": "mkv", "265": "mkv", "hevc": "mkv"}
IMAGE_EXTENSIONS = frozenset("png jpg jpeg webp bmp tif tiff".split())


def kind_of(path) -> str | None:
    """``"video"``, ``"image"`` or ``None`` by the file name's extension."""
    ext = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else ""
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def output_name(path):
    """The file name an output of ``path`` gets by default: the same, or with the extension vsr
    writes in place of one it only reads (``anim.gif`` -> ``anim.mp4``)."""
    from pathlib import Path

    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    return path.with_suffix("." + OUTPUT_EXTENSION[ext]) if ext in OUTPUT_EXTENSION else path


def jpeg_qscale(quality: int) -> int:
    """A 1-100 JPEG quality as FFmpeg's mjpeg quantiser scale (2 = best, 31 = worst)."""
    return max(2, min(31, round(31 - 29 * quality / 100)))
