"""Decoding: a media file becomes a description (:class:`VideoInfo`) and a stream of items.

Items are :class:`FrameItem` (uint8 RGB, converted with the source's matrix and range,
with the frame's own timestamp; or still the decoded frame, for a later :func:`to_rgb` in
another thread) and :class:`PacketItem` (packets of every other stream, untouched, to be
copied into the output).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from vsr.colour import PLANE_FORMATS, ColourTags, PlaneFormat, frame_planes, frame_to_rgb, planes_to_frame
from vsr.timing import Timings


class InputError(Exception):
    """The input cannot be used; the message says why."""


class DecodeError(InputError):
    """Decoding failed part-way (truncated or corrupt file)."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    format_name: str
    width: int
    height: int
    pix_fmt: str
    bits: int
    time_base: Fraction
    rate: Fraction | None  # average frame rate, when known
    frames: int | None  # frame count, exact when the container says, else estimated
    frames_exact: bool  # the container gave the count (mp4, mov): fewer decoded frames means truncation
    duration: float | None  # seconds
    start_time: float | None  # seconds, of the video stream
    sample_aspect_ratio: Fraction | None
    rotation: int  # degrees, counter-clockwise, from the display matrix
    colour: ColourTags
    is_image: bool
    stream_index: int
    other_streams: tuple[str, ...] = field(default=())  # "audio aac (eng)", ...


def _sar(stream) -> Fraction | None:
    for candidate in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if candidate and candidate.numerator and Fraction(candidate) != 1:
            return Fraction(candidate)
    return None


def open_input(path: str | os.PathLike) -> av.container.InputContainer:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise InputError(f"input {name!r} does not exist")
    if os.path.isdir(name):
        raise InputError(f"input {name!r} is a folder; expected a video or image file")
    try:
        container = av.open(name, metadata_errors="replace")
    except av.error.InvalidDataError as exc:
        raise InputError(f"expected a video or image file, got {name!r} ({_describe(name)}; ffmpeg: {exc.strerror})") from exc
    except av.FFmpegError as exc:
        raise InputError(f"cannot open {name!r}: {exc}") from exc
    if container.format.name in _NOT_MEDIA:  # FFmpeg renders any text file as "ANSI art" video
        container.close()
        raise InputError(f"expected a video or image file, got {name!r} ({_describe(name)})")
    return container


_NOT_MEDIA = {"tty"}


def _describe(name: str) -> str:
    """A word on what a non-media file looks like, for error messages."""
    try:
        with open(name, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "unreadable"
    if not head:
        return "empty file"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "not a media format FFmpeg knows"


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe the first video stream; decodes the first frame for its colour tags and rotation."""
    name = os.fspath(path)
    with open_input(name) as container:
        videos = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        if not videos:
            kinds = ", ".join(s.type for s in container.streams) or "no streams"
            raise InputError(f"expected a file with a video stream, got {name!r} ({kinds})")
        stream = videos[0]
        stream.thread_type = "AUTO"
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.FFmpegError as exc:
            raise DecodeError(f"{name!r}: decoding failed at frame 0: {exc}") from exc
        if first is None:
            raise DecodeError(f"{name!r}: the video stream has no decodable frame")
        fmt = container.format.name
        is_image = fmt in ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe") or fmt.endswith("_pipe")
        tb = Fraction(stream.time_base) if stream.time_base else Fraction(1, 25)
        rate = Fraction(stream.average_rate) if stream.average_rate else (Fraction(stream.guessed_rate) if stream.guessed_rate else None)
        duration = None
        if stream.duration is not None:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        frames = stream.frames or None
        if frames is None and duration and rate:
            frames = max(1, round(duration * rate))
        others = tuple(
            f"{s.type} {s.codec_context.name if s.codec_context else '?'}" + (f" ({s.language})" if s.language else "")
            for s in container.streams
            if s.index != stream.index
        )
        bits = max((c.bits for c in first.format.components), default=8)
        return VideoInfo(
            path=name,
            format_name=fmt,
            width=first.width,
            height=first.height,
            pix_fmt=first.format.name,
            bits=bits,
            time_base=tb,
            rate=rate,
            frames=1 if is_image else frames,
            frames_exact=bool(stream.frames) and not is_image,
            duration=duration,
            start_time=float(stream.start_time * tb) if stream.start_time is not None else None,
            sample_aspect_ratio=_sar(stream),
            rotation=int(round(first.rotation or 0)),
            colour=ColourTags.of(first),
            is_image=is_image,
            stream_index=stream.index,
            other_streams=others,
        )


def chroma_left(info: VideoInfo) -> bool:
    """Whether the decoder marks the video's chroma as co-sited left (H.264, HEVC, MPEG-2/4 do):
    the siting swscale converts its frames with, which the device conversion must follow.

    PyAV does not expose a frame's chroma location, but swscale honours it: the first frame converts
    differently from a copy of its planes in a new frame (which has none, i.e. centred chroma).
    Decodes the first frame again; asked only where the device conversion is used.
    """
    fmt = PLANE_FORMATS.get(info.pix_fmt)
    if fmt is None or not fmt.sub_x:
        return False
    with open_input(info.path) as container:
        stream = container.streams[info.stream_index]
        try:
            frame = next(container.decode(stream), None)
        except av.FFmpegError:
            return False  # the pipeline will report the file
    if frame is None or frame.format.name != fmt.name:
        return False
    copy = planes_to_frame(frame_planes(frame, fmt), fmt.name, (frame.height, frame.width), ColourTags(), False)
    tags = ColourTags.of(frame)
    return not np.array_equal(frame_to_rgb(frame, tags), frame_to_rgb(copy, tags))


@dataclass
class FrameItem:
    index: int
    rgb: np.ndarray | None  # uint8 HxWx3; None until converted (see ``frame``)
    pts: int | None
    time_base: Fraction
    frame: av.VideoFrame | None = None  # the decoded frame, when read(..., convert=False)
    planes: list[np.ndarray] | None = None  # its YUV planes, for colour conversion on the model's device

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the picture."""
        return self.rgb.shape[:2] if self.rgb is not None else self.planes[0].shape[:2]


def to_rgb(item: FrameItem, timings: Timings) -> FrameItem:
    """Convert a :class:`FrameItem` read with ``convert=False`` to RGB (in place; returns it)."""
    if item.rgb is None:
        with timings("to_rgb"):
            item.rgb = frame_to_rgb(item.frame)
        item.frame = None
    return item


def to_planes(item: FrameItem, layout: PlaneFormat, timings: Timings) -> FrameItem:
    """Take the YUV planes of a :class:`FrameItem` read with ``convert=False`` (in place; returns it)."""
    if item.planes is None:
        with timings("to_planes"):
            frame = item.frame
            item.planes = frame_planes(frame, layout)
        item.frame = None
    return item


@dataclass
class PacketItem:
    """A packet to copy.  The stream index and time base are captured at demux time: the
    packet may outlive its input container (which closes when reading ends)."""

    packet: av.Packet
    stream_index: int
    time_base: Fraction


def read(info: VideoInfo, copy_streams: set[int], stop=None, timings: Timings | None = None,
         convert: bool = True) -> Iterator[FrameItem | PacketItem]:
    """Demux once: decode the video stream, pass packets of ``copy_streams`` through untouched.

    With ``convert=False`` frames are yielded as decoded (``FrameItem.frame``), for :func:`to_rgb`.

    Raises :class:`DecodeError` naming the frame at which decoding failed.
    """
    index = 0
    last_time = None
    timings = timings if timings is not None else Timings()
    with open_input(info.path) as container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        wanted = [stream] + [s for s in container.streams if s.index in copy_streams]
        try:
            for packet in container.demux(wanted):
                if stop is not None and stop.is_set():
                    return
                if packet.stream.index != info.stream_index:
                    if packet.dts is not None or packet.pts is not None:
                        yield PacketItem(packet, packet.stream.index, Fraction(packet.time_base))
                    continue
                with timings("decode"):
                    frames = packet.decode()
                for frame in frames:
                    tb = Fraction(frame.time_base or info.time_base)
                    if frame.pts is not None:
                        last_time = float(frame.pts * tb)
                    item = FrameItem(index, None, frame.pts, tb, frame)
                    yield to_rgb(item, timings) if convert else item
                    index += 1
        except av.FFmpegError as exc:
            raise DecodeError(f"{info.path!r}: decoding failed at frame {index}: {exc}") from exc
    if info.frames_exact and info.frames and index < info.frames and _ends_early(info, last_time):
        raise DecodeError(
            f"{info.path!r}: decoding failed at frame {index}: the file says it has {info.frames} frames "
            f"(truncated or corrupt file?)"
        )


def _ends_early(info: VideoInfo, last_time: float | None) -> bool:
    """Fewer frames than the header says *and* the last one well before the stream's end: truncation.

    (An edit list can legitimately hide a few frames at either end; those files still end on time.)
    """
    if info.duration is None or last_time is None:
        return True
    frame = float(1 / info.rate) if info.rate else 0.04
    return last_time < (info.start_time or 0.0) + info.duration - max(3 * frame, 0.1)
