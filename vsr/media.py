"""What kinds of files vsr reads, and how it tells them apart."""

from __future__ import annotations

VIDEO_EXTENSIONS = frozenset(
    "mp4 m4v mkv mov webm avi wmv flv ts m2ts mts mpg mpeg vob ogv 3gp 3g2 mxf y4m gif apng h264 264 h265 265 hevc".split()
)
# Read but not written: the output gets the extension given here (GIF holds 256 colours a frame,
# which would undo the upscaling; an MP4 is what GIF-to-video tools give, and an APNG goes the same
# way.  A raw H.264/HEVC stream has no timestamps or room for audio: Matroska keeps what it has).
OUTPUT_EXTENSION = {"gif": "mp4", "apng": "mp4", "h264": "mkv", "264": "mkv", "h265": "mkv", "265": "mkv", "hevc": "mkv"}
IMAGE_EXTENSIONS = frozenset("png jpg jpeg webp bmp tif tiff".split())
# How each picture extension is written: (FFmpeg encoder, pixel format).
IMAGE_OUTPUTS = {
    "png": ("png", "rgb24"), "jpg": ("mjpeg", "yuvj444p"), "jpeg": ("mjpeg", "yuvj444p"),
    "webp": ("libwebp", "yuv420p"), "bmp": ("bmp", "bgr24"), "tif": ("tiff", "rgb24"), "tiff": ("tiff", "rgb24"),
}
# Picture formats that keep transparency, with the pixel format they are then written in.
ALPHA_OUTPUTS = {"png": "rgba", "webp": "yuva420p", "tif": "rgba", "tiff": "rgba"}
# Picture formats that keep 16 bits per channel, with the pixel format they are then written in.
DEEP_OUTPUTS = {"png": "rgb48be", "tif": "rgb48le", "tiff": "rgb48le"}


def kind_of(path) -> str | None:
    """What an input is, by the file name's extension: ``"video"``, ``"image"`` or ``None`` (the one
    classifier: folders, training data and single files all ask it)."""
    ext = extension(path)
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def output_kind(path) -> str | None:
    """What an output path is written as, by its extension: ``"video"``, ``"image"`` or ``None``
    (an extension vsr does not write, including those it only reads, :data:`OUTPUT_EXTENSION`)."""
    ext = extension(path)
    if ext in OUTPUT_EXTENSION:
        return None
    return "image" if ext in IMAGE_OUTPUTS else "video" if ext in VIDEO_EXTENSIONS else None


def extension(path) -> str:
    """A file name's extension, lower case, without the dot (``""`` if none; a dot in a folder's
    name is not one)."""
    from pathlib import Path

    return Path(path).suffix.lower().lstrip(".")


# An animated picture (APNG, animated WebP) is a video to vsr: by default it is written as a GIF is.
ANIMATED_OUTPUT = OUTPUT_EXTENSION["gif"]


def output_name(path, animated: bool = False):
    """The file name an output of ``path`` gets by default: the same, or with the extension vsr
    writes in place of one it only reads (``anim.gif`` -> ``anim.mp4``).  ``animated``: the input
    is an animated picture (:func:`vsr.stills.is_animated`), a video whose name is a picture's
    (``anim.png`` -> ``anim.mp4``)."""
    from pathlib import Path

    path = Path(path)
    ext = extension(path)
    if animated and ext in IMAGE_EXTENSIONS:
        return path.with_suffix("." + ANIMATED_OUTPUT)
    return path.with_suffix("." + OUTPUT_EXTENSION[ext]) if ext in OUTPUT_EXTENSION else path


def jpeg_qscale(quality: int) -> int:
    """A 1-100 JPEG quality as FFmpeg's mjpeg quantiser scale (2 = best, 31 = worst)."""
    return max(2, min(31, round(31 - 29 * quality / 100)))
