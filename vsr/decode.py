"""Decoding: a media file becomes a description (:class:`VideoInfo`) and a stream of items.

Items are :class:`FrameItem` (uint8 RGB, converted with the source's matrix and range,
with the frame's own timestamp; or still the decoded frame, for a later :func:`to_rgb` in
another thread) and :class:`PacketItem` (packets of every other stream, untouched, to be
copied into the output).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator

import av
import numpy as np

from vsr.colour import PLANE_FORMATS, ColourTags, PlaneFormat, frame_planes, frame_to_rgb, planes_to_frame
from vsr.errors import VsrError
from vsr.stills import MetadataTooLarge, StillInfo, orient, read_still, too_large_for_ffmpeg, upright_size
from vsr.timing import Timings


class InputError(VsrError):
    """The input cannot be used; the message says why."""


class DecodeError(InputError):
    """Decoding failed part-way (truncated or corrupt file)."""


@dataclass(frozen=True)
class HdrMetadata:
    """HDR10 static metadata of a stream: the mastering display (SMPTE ST 2086) and the content
    light levels, as FFmpeg's decoders export them (AVMasteringDisplayMetadata, AVContentLightMetadata)."""

    primaries: tuple[tuple[float, float], ...] | None = None  # (x, y) of red, green, blue
    white_point: tuple[float, float] | None = None
    luminance: tuple[float, float] | None = None  # (min, max) cd/m2
    max_cll: int | None = None
    max_fall: int | None = None

    @classmethod
    def of(cls, frame: av.VideoFrame) -> "HdrMetadata | None":
        found: dict = {}
        try:
            for data in frame.side_data:
                kind = getattr(data.type, "name", str(data.type))
                raw = bytes(data)
                if kind == "MASTERING_DISPLAY_METADATA" and len(raw) >= 88:
                    v = struct.unpack("<22i", raw[:88])
                    q = lambda i: v[i] / v[i + 1] if v[i + 1] else 0.0  # noqa: E731 - an AVRational
                    if v[20]:
                        found["primaries"] = tuple((q(4 * c), q(4 * c + 2)) for c in range(3))
                        found["white_point"] = (q(12), q(14))
                    if v[21]:
                        found["luminance"] = (q(16), q(18))
                elif kind == "CONTENT_LIGHT_LEVEL" and len(raw) >= 8:
                    found["max_cll"], found["max_fall"] = struct.unpack("<II", raw[:8])
        except (ValueError, TypeError):  # a side data type this PyAV does not know
            return None
        return cls(**found) if found else None

    def encoder_params(self, encoder: str) -> str | None:
        """The x265-params / x264-params that write this metadata into the bitstream's SEI."""
        parts = []
        if self.primaries and self.white_point and self.luminance:
            (rx, ry), (gx, gy), (bx, by) = self.primaries
            c = lambda v: round(v * 50000)  # noqa: E731 - units of 0.00002
            wx, wy = self.white_point
            lo, hi = self.luminance
            parts.append(("master-display" if encoder == "libx265" else "mastering-display") + "="
                         f"G({c(gx)},{c(gy)})B({c(bx)},{c(by)})R({c(rx)},{c(ry)})WP({c(wx)},{c(wy)})"
                         f"L({round(hi * 10000)},{round(lo * 10000)})")
        if self.max_cll is not None:
            parts.append(("max-cll" if encoder == "libx265" else "cll") + f"={self.max_cll},{self.max_fall}")
        if encoder == "libx265" and parts:
            parts.insert(0, "hdr10=1")
        return ":".join(parts) or None

    def describe(self) -> str:
        bits = []
        if self.luminance:
            bits.append(f"mastering display {self.luminance[1]:g}/{self.luminance[0]:g} cd/m2")
        if self.max_cll is not None:
            bits.append(f"MaxCLL {self.max_cll}, MaxFALL {self.max_fall}")
        return ", ".join(bits)


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
    hdr: HdrMetadata | None = None  # HDR10 mastering display / light levels of the first frame
    interlaced: bool = False  # the first frame is marked interlaced
    field_order: int = 0  # AVFieldOrder of the stream (0 unknown, 1 progressive, 2 top first, 3 bottom first...)
    still: StillInfo | None = None  # a picture's ICC profile, EXIF and orientation (PNG, JPEG, WebP)
    alpha: bool = False  # a picture with transparency (kept: see vsr.stills and Writer)
    frame_size: tuple[int, int] | None = None  # (width, height) of the first frame as decoded (a picture: before EXIF orientation)
    video_duration: bool = True  # ``duration`` is the video stream's own (else the container's: its longest stream's)


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


def decode_frames(container: av.container.InputContainer, stream: av.stream.Stream) -> Iterator[av.VideoFrame]:
    """The frames of one stream, as ``container.decode(stream)`` but treating packets as the ffmpeg
    command line does: zero-size packets that carry a timestamp ("repeat the previous frame", in
    Theora and AVI) are skipped rather than sent, where the decoder would take them for the end."""
    for packet in container.demux(stream):
        if packet.size == 0 and (packet.pts is not None or packet.dts is not None):
            continue
        yield from packet.decode()


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe the first video stream; decodes the first frame for its colour tags and rotation
    (one frame in flight).  To read the file as well, open a :class:`Source`: it describes the
    file and reads it with one open."""
    with Source.open(path, reading=False) as source:
        return source.info


def _check_still(name: str) -> StillInfo:
    """A picture's header facts (:func:`vsr.stills.read_still`), refused before FFmpeg sees them
    where FFmpeg could not hold the picture or would inflate a bomb."""
    try:
        still = read_still(name) if os.path.isfile(name) else StillInfo()
    except MetadataTooLarge as exc:
        raise InputError(f"{name!r}: {exc}") from exc
    if still.size and too_large_for_ffmpeg(*still.size):
        w, h = still.size
        raise InputError(f"{name!r}: picture size {w}x{h} is larger than FFmpeg's decoders accept "
                         f"((width + 128) x (height + 128) must stay under {2**31 // 8} pixels)")
    return still


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    """The first video stream that is not a cover picture."""
    videos = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not videos:
        kinds = ", ".join(s.type for s in container.streams) or "no streams"
        raise InputError(f"expected a file with a video stream, got {name!r} ({kinds})")
    return videos[0]


def _stream_timing(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   first: av.VideoFrame) -> tuple[Fraction, Fraction | None, float | None, int | None]:
    """(time base, frame rate, duration in seconds, frame count) of the video stream."""
    tb = Fraction(stream.time_base) if stream.time_base else Fraction(1, 25)
    rate = Fraction(stream.average_rate) if stream.average_rate else (Fraction(stream.guessed_rate) if stream.guessed_rate else None)
    if first.pts is None and first.dts is None and stream.guessed_rate:
        # No timestamps (a raw H.264/HEVC stream): the average rate is the demuxer's default of
        # 25; the rate the bitstream states (FFmpeg's r_frame_rate) is what ffmpeg times it by.
        rate = Fraction(stream.guessed_rate)
    duration = None
    if stream.duration is not None:
        duration = float(stream.duration * tb)
    elif _duration_tag(stream.metadata) is not None:  # Matroska's per-track DURATION tag (ffmpeg, mkvmerge)
        duration = _duration_tag(stream.metadata)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    frames = stream.frames or None
    if frames is None and duration and rate:
        frames = max(1, round(duration * rate))
    return tb, rate, duration, frames


def _duration_tag(metadata: dict) -> float | None:
    """Seconds in a ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``), or None."""
    text = next((v for k, v in metadata.items() if k.upper() == "DURATION"), None)
    try:
        h, m, sec = str(text).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (ValueError, AttributeError):
        return None


def _video_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """The duration found is the video stream's own, not only the container's (which is its longest
    stream's: audio or subtitles that go on after the picture are no missing frames)."""
    return stream.duration is not None or _duration_tag(stream.metadata) is not None or len(container.streams) == 1


def _info_of(name: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
              first: av.VideoFrame, still: StillInfo) -> VideoInfo:
    """The :class:`VideoInfo` of ``stream``, whose first decoded frame is ``first``."""
    fmt = container.format.name
    is_image = fmt in ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe") or fmt.endswith("_pipe")
    tb, rate, duration, frames = _stream_timing(container, stream, first)
    others = tuple(
        f"{s.type} {s.codec_context.name if s.codec_context else '?'}" + (f" ({s.language})" if s.language else "")
        for s in container.streams
        if s.index != stream.index
    )
    bits = max((c.bits for c in first.format.components), default=8)
    width, height, rotation = first.width, first.height, int(round(first.rotation or 0))
    if is_image:  # EXIF orientation is applied to the pixels (FFmpeg's display matrix from it is not)
        still = still if still.kind else None
        width, height = upright_size(width, height, still.orientation if still else 1)
        rotation = 0
    return VideoInfo(
        path=name,
        format_name=fmt,
        width=width,
        height=height,
        pix_fmt=first.format.name,
        bits=bits,
        time_base=tb,
        rate=rate,
        frames=1 if is_image else frames,
        frames_exact=bool(stream.frames) and not is_image,
        duration=duration,
        start_time=float(stream.start_time * tb) if stream.start_time is not None else None,
        sample_aspect_ratio=_sar(stream),
        rotation=rotation,
        colour=ColourTags.of(first),
        is_image=is_image,
        stream_index=stream.index,
        other_streams=others,
        hdr=None if is_image else HdrMetadata.of(first),
        interlaced=bool(first.interlaced_frame),
        field_order=int(stream.codec_context.field_order or 0),
        still=still if is_image else None,
        alpha=is_image and alpha_of(first) is not None,
        frame_size=(first.width, first.height),
        video_duration=_video_duration(container, stream),
    )


def alpha_of(frame: av.VideoFrame) -> np.ndarray | None:
    """The alpha plane of a picture (uint8 HxW), or None when it has none or is fully opaque."""
    fmt = frame.format
    if not (any(c.is_alpha for c in fmt.components) or fmt.name == "pal8"):
        return None
    alpha = frame.to_ndarray(format="rgba")[..., 3]
    return alpha if (alpha < 255).any() else None


def read_picture(path: str | os.PathLike) -> np.ndarray:
    """A picture file's RGB (uint8 HxWx3) as the pipeline converts it: its own matrix and range,
    turned upright by its EXIF orientation (for training data, which must match what is upscaled)."""
    with Source.open(path, reading=False) as source:
        info, frame = source.info, source.first
    if frame is None:
        raise DecodeError(f"{os.fspath(path)!r}: no picture could be decoded")
    return still_to_rgb(FrameItem(0, None, None, info.time_base, frame), info, Timings()).rgb


def still_to_rgb(item: "FrameItem", info: VideoInfo, timings: Timings, deep: bool = False) -> "FrameItem":
    """:func:`to_rgb` for a picture: its alpha kept aside (``item.alpha``) and both turned upright
    by the EXIF orientation.  ``deep``: 16 bits per channel (uint16 RGB) for a 16-bit picture that
    is written 16-bit (:func:`deep_picture`)."""
    frame = item.frame
    alpha = alpha_of(frame) if info.alpha and frame is not None else None
    if deep and frame is not None:
        with timings("to_rgb"):
            item.rgb = frame.reformat(format="rgb48le").to_ndarray()
        item.frame = None
    else:
        to_rgb(item, timings)
    orientation = info.still.orientation if info.still else 1
    item.rgb = orient(item.rgb, orientation)
    item.alpha = None if alpha is None else orient(alpha, orientation)
    return item


def deep_picture(info: VideoInfo) -> bool:
    """A picture whose 16 bits per channel vsr can carry through: RGB or grey (not YUV, which
    swscale would convert at 8 bits here), without transparency."""
    if not info.is_image or info.bits <= 8 or info.alpha:
        return False
    fmt = av.VideoFormat(info.pix_fmt)
    return fmt.is_rgb or len(fmt.components) <= 2


def chroma_left(info: VideoInfo) -> bool:
    """Whether the decoder marks the video's chroma as co-sited left (:meth:`Source.chroma_left`),
    for a file not open: it is opened and its first frame decoded again."""
    fmt = PLANE_FORMATS.get(info.pix_fmt)
    if fmt is None or not fmt.sub_x:
        return False
    try:
        with Source.open(info.path, reading=False) as source:
            return source.chroma_left()
    except DecodeError:
        return False  # the pipeline will report the file


def _frame_chroma_left(frame: av.VideoFrame | None, pix_fmt: str) -> bool:
    """Whether swscale converts ``frame`` with its chroma co-sited left.

    PyAV does not expose a frame's chroma location, but swscale honours it: the frame converts
    differently from a copy of its planes in a new frame (which has none, i.e. centred chroma)."""
    fmt = PLANE_FORMATS.get(pix_fmt)
    if fmt is None or not fmt.sub_x or frame is None or frame.format.name != fmt.name:
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
    frame: av.VideoFrame | None = None  # the decoded frame, until to_rgb/to_planes converts it
    planes: list[np.ndarray] | None = None  # its YUV planes, for colour conversion on the model's device
    alpha: np.ndarray | None = None  # a picture's transparency (uint8 HxW), upscaled beside the model

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the picture."""
        return self.rgb.shape[:2] if self.rgb is not None else self.planes[0].shape[:2]


def to_rgb(item: FrameItem, timings: Timings) -> FrameItem:
    """Convert a :class:`FrameItem` from :func:`read` to RGB (in place; returns it)."""
    if item.rgb is None:
        with timings("to_rgb"):
            item.rgb = frame_to_rgb(item.frame)
        item.frame = None
    return item


def to_planes(item: FrameItem, layout: PlaneFormat, timings: Timings) -> FrameItem:
    """Take the YUV planes of a :class:`FrameItem` from :func:`read` (in place; returns it)."""
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


# Containers that store decode timestamps only: FFmpeg's demuxer makes presentation timestamps up
# (AVI: dts + 1), which are wrong for every reordered (B-)frame.
DTS_ONLY_FORMATS = frozenset({"avi"})


class FrameClock:
    """Each decoded frame's presentation timestamp, chosen as FFmpeg's best-effort timestamp is
    (``guess_correct_pts`` in libavcodec, what the ffmpeg command line stamps frames with): the
    frame's reordered pts, unless pts have gone backwards more often than dts have, then its dts.

    Where the container has no presentation timestamps (``dts_only``), a frame's time is its packet
    dts less the decoder's delay (the dts of the first frame out minus that of the first packet in),
    so the first frame lands where the stream starts, as it was meant to be shown.
    """

    def __init__(self, dts_only: bool = False) -> None:
        self.dts_only = dts_only
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = None
        self.first_packet_dts: int | None = None
        self.delay: int | None = None

    def demuxed(self, packet: av.Packet) -> None:
        if self.first_packet_dts is None and packet.dts is not None:
            self.first_packet_dts = packet.dts

    def time_of(self, frame: av.VideoFrame) -> int | None:
        pts, dts = frame.pts, frame.dts
        if self.dts_only:
            if dts is None:
                return None  # drained at the end: the writer follows the previous frame
            if self.delay is None:
                self.delay = dts - (self.first_packet_dts if self.first_packet_dts is not None else dts)
            return dts - self.delay
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts


class Deinterlacer:
    """FFmpeg's bwdif filter (motion adaptive, as ``ffmpeg -vf bwdif``): one progressive frame per
    frame in, with its timestamp; frames not marked interlaced pass through untouched."""

    def __init__(self, stream: av.video.stream.VideoStream, width: int | None = None, height: int | None = None,
                 format=None) -> None:
        """``width``, ``height``, ``format``: the stream's as stated before any frame was decoded
        (taken from ``stream`` where not given)."""
        self.graph = av.filter.Graph()
        source = self.graph.add_buffer(template=stream, width=width, height=height, format=format)
        bwdif = self.graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
        sink = self.graph.add("buffersink")
        source.link_to(bwdif)
        bwdif.link_to(sink)
        self.graph.configure()

    def __call__(self, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
        """Frames out for ``frame`` in (``None`` at the end flushes the last)."""
        self.graph.push(frame)
        out = []
        while True:
            try:
                out.append(self.graph.pull())
            except (av.error.BlockingIOError, av.error.EOFError):
                return out


@dataclass
class DecodeReport:
    """What :func:`read` found on the way that is not a failure: spans where frames are missing
    (a damaged file the demuxer resynchronised past), as (from seconds, to seconds, frames lost)."""

    times: list[float] = field(default_factory=list)
    gaps: list[tuple[float, float, int]] = field(default_factory=list)
    # Spans (from, to seconds) where the demuxer or the decoder reported damage: a packet marked
    # corrupt (MPEG-TS continuity errors), bytes Matroska's demuxer skipped to resynchronise, a
    # packet the decoder refused, a frame it concealed errors in (FFmpeg's decode_error_flags).
    damage: list[list[float]] = field(default_factory=list)
    sequential: bool = False  # packets lie one after another in the file (Matroska): skipped bytes are damage
    _end: int | None = field(default=None, repr=False)  # where the last packet's data ends in the file
    _pos: int | None = field(default=None, repr=False)  # where it starts (laced packets share a block)
    _last: float | None = field(default=None, repr=False)  # the time of the last packet, seconds

    def demuxed(self, packet: av.Packet, seconds: float | None, watched: bool = True) -> None:
        """Look at a packet as it comes out of the demuxer (``watched``: of a stream that is used)."""
        pos = packet.pos if packet.pos is not None and packet.pos >= 0 else None
        if self.sequential and pos is not None and packet.size:
            if pos == self._pos:  # one more frame of a laced block
                self._end += packet.size
            else:
                extra = sum(d.data_size for d in packet.iter_sidedata()) if hasattr(packet, "iter_sidedata") else 0
                if self._end is not None and pos - self._end > _RESYNC_BYTES + extra:
                    self.damaged(self._last, seconds)
                self._pos, self._end = pos, pos + packet.size + extra
        if watched and packet.is_corrupt:
            self.damaged(seconds)
        if seconds is not None:
            self._last = seconds

    def damaged(self, start: float | None, end: float | None = None) -> None:
        """Damage reported between ``start`` and ``end`` seconds (either unknown: the other, or
        where reading last was); spans less than a second apart are joined."""
        a = start if start is not None else (end if end is not None else (self._last or 0.0))
        b = max(a, end if end is not None else a)
        if self.damage and a <= self.damage[-1][1] + 1.0:
            self.damage[-1][1] = max(self.damage[-1][1], b)
        else:
            self.damage.append([a, b])

    def spans(self) -> list[tuple[float, float, int]]:
        """Every damaged span, in order: the gaps (with the frames lost in them) and the spans where
        damage was reported (with 0 when no frame was lost there)."""
        found = list(self.gaps)
        for a, b in self.damage:
            if not any(ga - 0.5 <= a and b <= gb + 0.5 for ga, gb, _n in self.gaps):
                found.append((a, b, 0))
        return sorted(found)

    def find_gaps(self, info: VideoInfo) -> None:
        """Gaps in a constant-rate stream: steps of 3.5+ frames where nine steps in ten are one frame
        (variable-rate video, whose steps differ anyway, is not judged), and a stream that stops
        3.5+ frames before the end its container states."""
        times = sorted(self.times)
        steps = np.diff(times)
        if len(steps) < 4:
            return
        step = float(np.median(steps))
        if step <= 0 or np.mean(np.abs(steps - step) <= 0.1 * step) < 0.9:
            return
        for a, b, d in zip(times, times[1:], steps):
            if d >= 3.5 * step:
                self.gaps.append((a, b, round(d / step) - 1))
        end = ((info.start_time or 0.0) + info.duration if info.duration and info.format_name in _STATED_DURATION
               and info.video_duration else None)
        if end is not None and end - times[-1] >= 4.5 * step:
            self.gaps.append((times[-1], end, round((end - times[-1]) / step) - 1))


# Bytes between two packets in Matroska (past the first's data and side data) that are more than
# element headers: the demuxer skipped what it could not parse (EBML element headers, cluster and
# block headers, CRC-32 and cue points take at most a few hundred).
_RESYNC_BYTES = 4096
_SEQUENTIAL_FORMATS = frozenset({"matroska,webm"})

# Containers whose stated duration is measured, not estimated from the bit rate.
_STATED_DURATION = {"matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2", "avi"}


@dataclass(frozen=True)
class Span:
    """A part of the input (``--start``/``--duration``, ffmpeg's ``-ss``/``-t`` before ``-i``): from
    ``start`` seconds for ``duration`` seconds (None: to the end).  Timestamps of what is kept are
    shifted so that ``start`` becomes 0, as ffmpeg does."""

    start: float = 0.0
    duration: float | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or (self.duration is not None and self.duration <= 0):
            raise ValueError(f"expected a start >= 0 and a positive duration, got {self.start} and {self.duration}")

    @property
    def end(self) -> float | None:
        return None if self.duration is None else self.start + self.duration

    def frames(self, info: "VideoInfo") -> int | None:
        """About how many frames of ``info`` fall inside (for progress)."""
        if info.rate is None or info.duration is None:
            return None if self.duration is None or info.rate is None else max(1, round(self.duration * info.rate))
        left = max(0.0, (info.start_time or 0.0) + info.duration - self.start)
        return max(1, round(min(left, self.duration if self.duration is not None else left) * info.rate))


# Packet bytes kept from the look at the first frame, to be read again from memory.  A file whose
# first frame lies deeper (rare) is opened a second time to be read.
_PEEK_BYTES = 64 << 20


class Source:
    """One input file, opened once: it describes the file (:attr:`info`, from the first frame it
    decodes), gives its frames and packets (:meth:`read`: those the description took, from memory,
    then the rest of the file) and says how its chroma is sited (:meth:`chroma_left`, from that same
    first frame).  Made by :meth:`open` (or :meth:`to_read`); closed by :meth:`close` or ``with``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.info: VideoInfo | None = None
        self.container: av.container.InputContainer | None = None  # also the writer's template for copied streams
        self.stream: av.video.stream.VideoStream | None = None
        self.image = None  # an animated WebP, as Pillow reads it
        self.first: av.VideoFrame | None = None  # the first decoded frame
        self._template: tuple | None = None  # the stream's size and format as stated, for the Deinterlacer
        self._packets: Iterator[av.Packet] = iter(())  # the demuxer, where the description left it
        self._peeked: list[tuple[av.Packet, list[av.VideoFrame] | None]] | None = None  # None: not kept
        self._reading = False

    @classmethod
    def open(cls, path: str | os.PathLike, reading: bool = True) -> "Source":
        """Open and describe ``path``.  ``reading``: the decoder is set up as :meth:`read` needs it
        (frame threads, refusing frames much larger than the stream's stated size) before the first
        frame, and what the description demuxed is kept; else one frame is in flight (a description only)."""
        source = cls(path)
        try:
            still = _check_still(source.path)
            if still.animated and still.kind == "webp":
                source.image = _open_animated_webp(source.path)
                source.info = _describe_animated_webp(source.path, source.image)
                if reading:
                    source.container = open_input(source.path)  # the writer's template
            else:
                source.container = open_input(source.path)
                source._describe(still, reading)
        except BaseException:
            source.close()
            raise
        return source

    @classmethod
    def to_read(cls, info: VideoInfo) -> "Source":
        """The file ``info`` describes, opened to be read (not described again)."""
        source = cls(info.path)
        source.info = info
        try:
            if info.format_name == ANIMATED_WEBP:
                source.image = _open_animated_webp(info.path)
            else:
                source._open_to_read()
        except BaseException:
            source.close()
            raise
        return source

    def _describe(self, still: StillInfo, reading: bool) -> None:
        stream = self.stream = _video_stream(self.container, self.path)
        ctx = stream.codec_context
        stated = (ctx.width, ctx.height)
        if reading:
            stream.thread_type = "AUTO"
            if all(stated):
                limit_frame_size(stream, *stated)
            self._peeked = []
        else:
            # One frame in flight: frame threads would decode a frame per thread ahead of the first,
            # of sizes nothing has checked yet.
            stream.thread_type = "SLICE"
        self._template = (stream.width, stream.height, stream.format)
        self._packets = self.container.demux()  # every stream's: what is read later is kept on the way
        self.first = self._peek(stream)
        self.info = _info_of(self.path, self.container, stream, self.first, still)
        if stated != self.info.frame_size:  # the decoder's limit is not the one read sets: read afresh
            self._peeked = None

    def _peek(self, stream: av.video.stream.VideoStream) -> av.VideoFrame:
        """Demux up to the first frame of ``stream``, keeping each packet (and what each video packet
        decoded to) for :meth:`read` while they fit in :data:`_PEEK_BYTES`."""
        kept = 0
        try:
            for packet in self._packets:
                frames = None
                if packet.stream.index == stream.index and not (packet.size == 0 and (packet.pts is not None or packet.dts is not None)):
                    frames = packet.decode()  # (a zero-size packet with a timestamp: see decode_frames)
                if self._peeked is not None:
                    kept += packet.size
                    if kept <= _PEEK_BYTES:
                        self._peeked.append((packet, frames))
                    else:
                        self._peeked = None  # read opens the file again
                if frames:
                    return frames[0]
        except av.FFmpegError as exc:
            raise DecodeError(f"{self.path!r}: decoding failed at frame 0: {exc}") from exc
        raise DecodeError(f"{self.path!r}: the video stream has no decodable frame")

    def _open_to_read(self) -> None:
        """Open the file afresh for :meth:`read`: frame threads, frames much larger than the first refused."""
        if self.container is not None:
            self.container.close()
        self.container = open_input(self.path)
        stream = self.stream = self.container.streams[self.info.stream_index]
        stream.thread_type = "AUTO"
        if self.info.frame_size is not None:
            limit_frame_size(stream, *self.info.frame_size)
        self._template = (stream.width, stream.height, stream.format)
        self._packets = self.container.demux()
        self._peeked = []

    def chroma_left(self) -> bool:
        """Whether the decoder marks the video's chroma as co-sited left (H.264, HEVC, MPEG-2/4 do):
        the siting swscale converts its frames with, which the device conversion must follow.  Found
        on the first frame, the one the description decoded."""
        return _frame_chroma_left(self.first, self.info.pix_fmt)

    def read(self, copy_streams: set[int], stop=None, timings: Timings | None = None, deinterlace: bool = False,
             report: "DecodeReport | None" = None, span: "Span | None" = None,
             skip: "SkipTo | None" = None) -> Iterator["FrameItem | PacketItem | Skipped"]:
        """:func:`read` from this source: once, from the start of the file (or of ``span``)."""
        if self._reading:
            raise RuntimeError(f"{self.path!r} is read once per Source")
        self._reading = True
        info = self.info
        timings = timings if timings is not None else Timings()
        report = report if report is not None else DecodeReport()
        if self.image is not None:  # not FFmpeg's to decode: the same items, from Pillow
            yield from _read_animated_webp(info, self.image, stop, timings, report, span)
            return
        if self._peeked is None:
            self._open_to_read()
        stream = self.stream
        if span is not None and span.start > 0:
            self._seek_to_keyframe(int(span.start / stream.time_base) + (stream.start_time or 0))
        dts_only = self.container.format.name in DTS_ONLY_FORMATS
        reader = _Reader(info, stream, {stream.index} | {s.index for s in self.container.streams if s.index in copy_streams},
                         _Window.of(span, stream), FrameClock(dts_only=dts_only),
                         Deinterlacer(stream, *self._template) if deinterlace else None, report, timings, stop)
        if skip is not None:
            if deinterlace or dts_only:  # (the frames' times are not the packets' there: see shown_before)
                raise ValueError("frames are skipped only where the packets say when they are shown")
            reader.skip_to(skip)
        report.sequential = self.container.format.name in _SEQUENTIAL_FORMATS
        try:
            yield from reader.items(self._replay())
        except av.FFmpegError as exc:
            raise reader.failure(exc) from exc
        if not reader.stopped:
            _judge_the_end(info, span, report, reader.index, reader.last_time)

    def shown_before(self, until: Fraction, span: Span | None = None) -> list[Fraction] | None:
        """For a run that resumes (:class:`SkipTo`): when each video packet shown before ``until``
        is shown (seconds, in the timeline of the frames :meth:`read` gives, ``span`` applied),
        demuxed from the file's start and not decoded, by a second opening of the file (this one's
        demuxer is where reading starts).  None where frames cannot be skipped: an animated
        picture, a container that does not say when its packets are shown (AVI), a packet that
        does not say."""
        if self.image is not None or self.container.format.name in DTS_ONLY_FORMATS:
            return None
        with open_input(self.path) as container:
            stream = container.streams[self.info.stream_index]
            window, tb = _Window.of(span, stream), Fraction(stream.time_base)
            times = []
            for packet in container.demux(stream):
                if not packet.size:
                    continue  # the end, or "repeat the last frame" (no frame of its own)
                if packet.pts is None:
                    return None
                if window.where(packet.pts, tb) == 0:
                    shown = (window.shifted(packet.pts, tb) if span is not None else packet.pts) * tb
                    if shown < until:
                        times.append(shown)
            return times

    def _seek_to_keyframe(self, target: int) -> None:
        """Demux from a keyframe of the video shown at ``target`` (its time base) or before.  A
        demuxer without an index (MPEG-TS) lands on whatever packet lies near the time, often
        between keyframes: the frames up to the next keyframe would not decode, and were lost (a
        second of a broadcast recording).  So the first video packet is looked at, and the seek
        goes further back (1, 2, 4... s) until it is such a keyframe, or to the stream's start."""
        stream = self.stream
        second = round(1 / stream.time_base)
        start = stream.start_time or 0
        back = 0
        while True:
            at = target - back
            # (a time before the stream's start: the demuxer goes to the file's start; seeking to
            # the start itself, MPEG-TS's search lands past the first keyframe)
            self.container.seek(at, stream=stream, backward=True)
            packets, seen = self.container.demux(), []
            for packet in packets:
                seen.append(packet)
                if packet.stream.index == stream.index and packet.size:
                    shown = packet.pts if packet.pts is not None else packet.dts
                    if not (packet.is_keyframe and shown is not None and shown <= target) and at > start - second:
                        seen = None
                    break
            if seen is not None:
                self._peeked, self._packets = [(p, None) for p in seen], packets
                return
            back = max(2 * back, second)

    def _replay(self) -> Iterator[tuple[av.Packet, list[av.VideoFrame] | None]]:
        """Every packet from the start: those the description demuxed (with the frames they decoded
        to), then the rest of the file's (None: not decoded yet)."""
        peeked, self._peeked = self._peeked, []
        yield from peeked
        for packet in self._packets:
            yield packet, None

    def close(self) -> None:
        self._peeked = None
        if self.container is not None:
            self.container.close()
        if self.image is not None:
            self.image.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(info: VideoInfo, copy_streams: set[int], stop=None, timings: Timings | None = None,
         deinterlace: bool = False, report: DecodeReport | None = None,
         span: Span | None = None, source: Source | None = None,
         skip: SkipTo | None = None) -> Iterator[FrameItem | PacketItem | Skipped]:
    """Demux once: decode the video stream, pass packets of ``copy_streams`` through untouched.

    Frames are yielded as decoded (``FrameItem.frame``), for :func:`to_rgb` or :func:`to_planes`
    in another thread.
    With ``deinterlace``, interlaced frames go through :class:`Deinterlacer` first.  ``report``
    collects the frame times and, at the end, the gaps in them.  With ``span``, reading starts at
    the keyframe before its start, frames and packets outside it are dropped (other streams at
    packet boundaries) and timestamps are shifted to start at 0.  ``source``: the input already
    open (:meth:`Source.open` described it as ``info``; the writer copies streams from its
    container; the caller closes it), else the file is opened here.  With ``skip`` (a resumed
    run), the frames before its time are neither given nor, where the packets tell, decoded: see
    :class:`SkipTo`.

    Raises :class:`DecodeError` naming the frame at which decoding failed.
    """
    if source is not None:
        yield from source.read(copy_streams, stop, timings, deinterlace, report, span, skip)
        return
    with Source.to_read(info) as own:
        yield from own.read(copy_streams, stop, timings, deinterlace, report, span, skip)


@dataclass(frozen=True)
class SkipTo:
    """The frames a resumed run already has: the first ``frames`` frames, every one shown before
    ``until`` (seconds, in the timeline of the frames :func:`read` gives).  They are dropped, and
    their packets are not decoded: the video's packets are demuxed (the other streams' pass as
    always), the last two keyframes' groups of them held, and decoding starts at the older of the
    two once a packet is shown at ``until`` or later (a picture there may refer to the group
    before its own: open GOPs, B-frames).  Whatever picture that decodes before ``until`` is dropped
    too; the first one given is frame ``frames``.  A Skipped item stands for each packet held."""

    frames: int
    until: Fraction


@dataclass(frozen=True)
class Skipped:
    """A video packet :func:`read` did not decode yet (:class:`SkipTo`): where it is shown,
    seconds (for placing the skipped frames among the other streams' packets)."""

    seconds: float


# What read holds of the video's packets while it skips (SkipTo): past it, decoding starts at the
# older of the keyframes held (a stream with keyframes far apart costs decoding, never memory).
_SKIP_HELD_BYTES = 64 << 20
# Decoding starts this early (seconds before ``until``): a frame's time is its packet's pts, or its
# dts where pts go backwards (FrameClock), and rounding to the output's time base moves it a little.
_SKIP_EARLY = Fraction(1, 2)


@dataclass(frozen=True)
class _Window:
    """A :class:`Span` in the video stream's own time, seconds (``--start`` counts from the stream's
    start): what falls outside is dropped, what is kept is shifted to start at 0.  Without a span:
    everything, unshifted."""

    span: Span | None
    begin: float = 0.0
    end: float | None = None

    @classmethod
    def of(cls, span: Span | None, stream: av.video.stream.VideoStream) -> "_Window":
        if span is None:
            return cls(None)
        offset = float((stream.start_time or 0) * stream.time_base)
        return cls(span, span.start + offset, None if span.end is None else span.end + offset)

    def where(self, pts: int | None, tb: Fraction) -> int:
        """-1 before the span, 0 inside, 1 after it."""
        if self.span is None or pts is None:
            return 0
        t = float(pts * tb)
        return -1 if t < self.begin - 1e-6 else (1 if self.end is not None and t >= self.end - 1e-6 else 0)

    def shifted(self, value: int | None, tb: Fraction) -> int | None:
        return None if value is None or self.span is None else value - round(Fraction(self.begin) / tb)

    def seconds_of(self, packet: av.Packet) -> float | None:
        value = packet.pts if packet.pts is not None else packet.dts
        if value is None:
            return None
        value = self.shifted(value, Fraction(packet.time_base)) if self.span is not None else value
        return float(value * packet.time_base)


@dataclass
class _Reader:
    """One pass of :meth:`Source.read`: packets in, items out, and what it met on the way."""

    info: VideoInfo
    stream: av.video.stream.VideoStream
    watched: set[int]  # the video stream and the streams copied
    window: _Window
    clock: FrameClock
    filtered: Deinterlacer | None
    report: DecodeReport
    timings: Timings
    stop: Any = None
    index: int = 0  # frames given so far
    last_time: float | None = None  # seconds, of the last frame given
    stopped: bool = False  # ``stop`` was set: the end is not judged
    ended: bool = False  # past the span's end
    until: Fraction | None = None  # frames shown before this (seconds) are dropped (SkipTo)
    held: list[list[tuple[av.Packet, list[av.VideoFrame] | None]]] | None = None  # while skipping: the groups held
    held_bytes: int = 0
    dropped: bool = False  # packets were skipped unread: the decoder starts afresh

    def skip_to(self, skip: SkipTo) -> None:
        """Begin with ``skip``'s frames dropped (:class:`SkipTo`)."""
        self.index, self.until, self.held = skip.frames, skip.until, []

    def items(self, packets: Iterator[tuple[av.Packet, list[av.VideoFrame] | None]]) -> Iterator[FrameItem | PacketItem]:
        """Items from ``packets`` (each with its frames where already decoded), to the span's end."""
        for packet, decoded in packets:
            if self.stop is not None and self.stop.is_set():
                self.stopped = True
                return
            if packet.size or packet.pts is not None or packet.dts is not None:  # (every stream's, for the byte positions)
                self.report.demuxed(packet, self.window.seconds_of(packet), packet.stream.index in self.watched)
            if packet.stream.index not in self.watched:
                continue
            if packet.stream.index != self.info.stream_index:
                item = self._packet_item(packet)
                if item is not None:
                    yield item
                continue
            if packet.size == 0 and (packet.pts is not None or packet.dts is not None):
                continue  # "repeat the last frame" (Theora, AVI): sending it would end the decoder
            if self.held is not None:
                yield from self._skip(packet, decoded)
            else:
                yield from self._video(packet, decoded)
            if self.ended:
                return

    def _video(self, packet: av.Packet, decoded: list[av.VideoFrame] | None) -> Iterator[FrameItem]:
        """The frames of a video packet, in the span (``ended`` past it), from ``until`` on."""
        self.clock.demuxed(packet)
        for frame in self._frames_of(packet, decoded):
            tb = Fraction(frame.time_base or self.info.time_base)
            pts = frame.pts if self.filtered is not None else self.clock.time_of(frame)
            where = self.window.where(pts, tb)
            if where > 0:
                self.ended = True
                return
            if where < 0:
                continue
            if self.until is not None:
                shifted = self.window.shifted(pts, tb) if self.window.span is not None else pts
                if shifted is None:
                    raise DecodeError(f"{self.info.path!r}: frame {self.index} has no timestamp; a run that resumes "
                                      f"needs one to know which frames it has (--overwrite starts over)")
                if shifted * tb < self.until:
                    continue  # the resumed run has it
                self.until = None  # the first frame it has not: decoded frames are in order from here
            yield self._frame_item(frame, pts, tb)

    def _skip(self, packet: av.Packet, decoded: list[av.VideoFrame] | None) -> Iterator[FrameItem | Skipped]:
        """While skipping (:class:`SkipTo`): hold the packet with its group, dropping the group
        before the last two unread; decode what is held once the packet is shown at ``until``
        (or has no time, or too much is held, or the stream ends)."""
        if packet.is_keyframe or not self.held:
            self.held.append([])
            if len(self.held) > 2:
                for old, _frames in self.held.pop(0):
                    self.held_bytes -= old.size
                self.dropped = True
        self.held[-1].append((packet, decoded))
        self.held_bytes += packet.size
        seconds = self.window.seconds_of(packet)
        if seconds is not None and packet.size and seconds < self.until - _SKIP_EARLY and self.held_bytes <= _SKIP_HELD_BYTES:
            yield Skipped(seconds)
            return
        held, self.held = [pair for group in self.held for pair in group], None
        if self.dropped:  # what the decoder holds (the description's frames) is from before the groups held
            self.stream.codec_context.flush_buffers()
            held = [(p, None) for p, _frames in held]
        for p, frames in held:
            yield from self._video(p, frames)
            if self.ended:
                return

    def _packet_item(self, packet: av.Packet) -> PacketItem | None:
        """A copied stream's packet, cut to the span and shifted; None for the end-of-stream flush."""
        if not (packet.size or packet.dts is not None or packet.pts is not None):
            return None
        ptb = Fraction(packet.time_base)
        if self.window.span is not None:
            if self.window.where(packet.pts if packet.pts is not None else packet.dts, ptb):
                return None
            packet.pts, packet.dts = self.window.shifted(packet.pts, ptb), self.window.shifted(packet.dts, ptb)
        return PacketItem(packet, packet.stream.index, ptb)

    def _frames_of(self, packet: av.Packet, decoded: list[av.VideoFrame] | None) -> Iterator[av.VideoFrame]:
        """The frames of a video packet (``decoded``: already), through the deinterlacer if asked."""
        with self.timings("decode"):
            frames = decoded if decoded is not None else self._decode(packet)
        if self.filtered is None:
            yield from frames
            return
        for frame in frames:
            frame.pts = self.clock.time_of(frame)
            with self.timings("deinterlace"):
                yield from self.filtered(frame)
        if packet.size == 0:  # the end-of-stream flush: the filter's last frame too
            with self.timings("deinterlace"):
                yield from self.filtered(None)

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            return packet.decode()
        except av.error.InvalidDataError:
            ctx, planned = self.stream.codec_context, self.info.frame_size
            if not packet.size or (planned is not None and ctx.width * ctx.height > _frame_limit(*planned)):
                raise
            seconds = self.window.seconds_of(packet)
            if self.until is not None and seconds is not None and seconds < self.until:
                return []  # before a resumed run's first frame: dropped (the run that made them recorded its damage)
            self.report.damaged(seconds)
            return []  # a packet the decoder refuses: damage, and decoding goes on as ffmpeg's does

    def _frame_item(self, frame: av.VideoFrame, pts: int | None, tb: Fraction) -> FrameItem:
        planned = self.info.frame_size
        if planned is not None and (frame.width, frame.height) != planned:
            raise DecodeError(_size_change(self.info, self.index, (frame.width, frame.height)))
        if self.window.span is not None:
            pts = self.window.shifted(pts, tb)
        if pts is not None:
            self.last_time = float(pts * tb)
            self.report.times.append(self.last_time)
        if frame.is_corrupt:  # the decoder concealed errors in it
            self.report.damaged(self.last_time)
        item = FrameItem(self.index, None, pts, tb, frame)
        self.index += 1
        return item

    def failure(self, exc: av.FFmpegError) -> DecodeError:
        """What an FFmpeg error while reading means: a frame larger than planned (refused by the
        decoder's limit), or decoding failed at the current frame."""
        ctx, planned = self.stream.codec_context, self.info.frame_size
        if planned is not None and ctx.width * ctx.height > _frame_limit(*planned):
            return DecodeError(_size_change(self.info, self.index, (ctx.width, ctx.height)))
        return DecodeError(f"{self.info.path!r}: decoding failed at frame {self.index}: {exc}")


def _judge_the_end(info: VideoInfo, span: Span | None, report: DecodeReport, frames: int, last_time: float | None) -> None:
    """After the last frame: nothing read, or fewer frames than the file says and an early end, fail;
    gaps in the frame times are found (a part is not judged against the whole file's length)."""
    if span is not None:
        if frames == 0:
            raise DecodeError(_nothing_in(info, span))
        return
    if frames == 0 and report.damage:
        raise DecodeError(f"{info.path!r}: decoding failed at frame 0: the decoder refused every packet")
    report.find_gaps(info)
    if info.frames_exact and info.frames and frames < info.frames and _ends_early(info, last_time):
        raise DecodeError(
            f"{info.path!r}: decoding failed at frame {frames}: the file says it has {info.frames} frames "
            f"(truncated or corrupt file?)"
        )


def _nothing_in(info: VideoInfo, span: Span) -> str:
    return (f"{info.path!r}: no frames between {span.start:g} s and "
            f"{'the end' if span.end is None else f'{span.end:g} s'}")


def _frame_limit(width: int, height: int) -> int:
    """Pixels the decoder may allocate for a frame of ``width`` x ``height``: its own alignment
    (strides, coded sizes in whole macroblocks) included."""
    return (width + 128) * (height + 128)


def limit_frame_size(stream: av.video.stream.VideoStream, width: int, height: int) -> None:
    """Make the decoder of ``stream`` (not yet opened) refuse, before allocating it, a frame much
    larger than ``width`` x ``height`` (FFmpeg's ``max_pixels``): a stream that switches from
    320x240 to 8192x8192 part-way stops at the switch, where its frames would otherwise be decoded
    and queued at 100 MB each.  Frames a little larger or smaller pass; :func:`read` names them."""
    limit = _frame_limit(width, height)
    ctx = stream.codec_context
    if ctx.width * ctx.height > limit:  # the demuxer saw a later, larger frame: open as the first one is
        ctx.width, ctx.height = width, height
    ctx.options = {**(ctx.options or {}), "max_pixels": str(limit)}


def _size_change(info: VideoInfo, index: int, size: tuple[int, int]) -> str:
    (w, h), (new_w, new_h) = info.frame_size, size
    return (f"{info.path!r}: the picture size changes at frame {index} ({w}x{h} -> {new_w}x{new_h}); "
            f"a video must keep the size of its first frame")


def _ends_early(info: VideoInfo, last_time: float | None) -> bool:
    """Fewer frames than the header says *and* the last one well before the stream's end: truncation.

    (An edit list can legitimately hide a few frames at either end; those files still end on time.)
    """
    if info.duration is None or last_time is None:
        return True
    frame = float(1 / info.rate) if info.rate else 0.04
    return last_time < (info.start_time or 0.0) + info.duration - max(3 * frame, 0.1)


# -- animated WebP ------------------------------------------------------------------------------
# FFmpeg's WebP decoder reads still pictures only.  Pillow reads an animation through libwebp's
# demuxer, each frame composited onto the canvas as players show it, with its own display time (in
# milliseconds: WebP's unit): the frames become the same items as a decoded video's, timed as
# they were (a variable rate stays variable).
ANIMATED_WEBP = "webp (animated; read with Pillow)"


# Pillow composites every frame of an animated WebP onto a canvas of its own (RGBA), several at
# once: 4096x4096 costs about 300 MB, while a 192-byte file can claim 12000x12000 (2.7 GB).
MAX_ANIMATION_PIXELS = 4096 * 4096


def _open_animated_webp(name: str):
    """Pillow's reader of an animated WebP, its canvas size checked (from the header) first."""
    size = read_still(name).size
    if size is not None and size[0] * size[1] > MAX_ANIMATION_PIXELS:
        raise InputError(f"{name!r}: an animated WebP of {size[0]}x{size[1]}; vsr reads animations of up to "
                         f"4096x4096 pixels a frame")
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with torchvision
        raise InputError(f"{name!r}: an animated WebP is read with Pillow, which is not installed "
                         f"(pip install pillow)") from exc
    try:
        image = Image.open(name)
        image.seek(0)
        image.load()
    except (OSError, EOFError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{name!r}: the animated WebP cannot be read: {exc}") from exc
    return image




def _describe_animated_webp(name: str, image) -> VideoInfo:
    """Describe an animated WebP (``image``, open) as a variable-rate video in milliseconds (a pass
    over its frames' display times; libwebp decodes each frame on the way)."""
    frames, mode = image.n_frames, image.mode
    try:
        image.seek(frames - 1)
        image.load()  # the last frame's start and duration: the animation's length
    except (OSError, EOFError, ValueError) as exc:
        raise DecodeError(f"{name!r}: decoding failed at frame {frames - 1}: {exc}") from exc
    total = int(image.info.get("timestamp", 0)) + int(image.info.get("duration", 0))
    width, height = image.size
    pix_fmt = "rgba" if mode == "RGBA" else "rgb24"
    return VideoInfo(
        path=name, format_name=ANIMATED_WEBP, width=width, height=height, pix_fmt=pix_fmt, bits=8,
        time_base=Fraction(1, 1000), rate=Fraction(frames * 1000, total) if total > 0 else None, frames=frames,
        frames_exact=True, duration=total / 1000 if total > 0 else None, start_time=0.0, sample_aspect_ratio=None,
        rotation=0, colour=ColourTags(color_range=2),  # RGB: full range, as FFmpeg's decoders tag it
        is_image=False, stream_index=0,
        frame_size=(width, height),
    )


def _read_animated_webp(info: VideoInfo, image, stop, timings: Timings, report: "DecodeReport",
                        span: "Span | None") -> Iterator[FrameItem]:
    """:meth:`Source.read` for an animated WebP (``image``, open): each frame as Pillow composites
    it, at its own time (``span`` cut and shifted as for any video)."""
    begin, end = (span.start, span.end) if span is not None else (0.0, None)
    index = 0
    for n in range(image.n_frames):
        if stop is not None and stop.is_set():
            return
        try:
            with timings("decode"):
                image.seek(n)
                image.load()
                pixels = np.asarray(image.convert("RGBA" if info.pix_fmt == "rgba" else "RGB"))
        except (OSError, EOFError, ValueError) as exc:
            raise DecodeError(f"{info.path!r}: decoding failed at frame {n}: {exc}") from exc
        if image.size != info.frame_size:
            raise DecodeError(_size_change(info, index, image.size))
        pts = int(image.info.get("timestamp", 0))
        if pts < round(begin * 1000):
            continue
        if end is not None and pts >= round(end * 1000):
            break
        pts -= round(begin * 1000)
        report.times.append(pts / 1000)
        yield FrameItem(index, None, pts, info.time_base, av.VideoFrame.from_ndarray(pixels, format=info.pix_fmt))
        index += 1
    if span is not None and index == 0:
        raise DecodeError(_nothing_in(info, span))
    if span is None:
        report.find_gaps(info)
