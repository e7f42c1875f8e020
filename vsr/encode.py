"""Encoding and muxing: upscaled RGB frames and copied packets become the output file.

The video stream keeps the source's time base and every frame's own timestamp, its colour
tags, sample aspect ratio and rotation.  Every other stream is copied packet-for-packet when
the output container accepts its codec; audio it does not accept is re-encoded to AAC, text
subtitles are converted to the text format it holds (mov_text, SubRip, WebVTT), other streams are
dropped; each such change is reported as a warning.  Container metadata, stream
metadata (language, title) and chapters are copied; tags and titles the output's muxer did not
write are named in a warning once the file is read back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av
import numpy as np
from av.subtitles.codeccontext import SubtitleCodecContext

from vsr import hwenc
from vsr.colour import planes_to_frame, resize_plane, rgb_to_frame, rgba_to_frame
from vsr.decode import VideoInfo
from vsr.errors import VsrError
from vsr.media import ALPHA_OUTPUTS, DEEP_OUTPUTS, IMAGE_OUTPUTS, extension, jpeg_qscale
from vsr.system import usable_cores
from vsr.timing import Timings


class EncodeError(VsrError):
    """The output cannot be written as asked; the message says why."""



# Metadata the muxer writes itself; copying it would be wrong.
_GENERATED_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder", "creation_time", "duration"}
_STREAM_KEYS_SKIP = {"encoder", "duration", "vendor_id", "handler_name"}
_MP4_FAMILY = {"mp4", "mov", "ipod", "3gp", "3g2"}  # FFmpeg's mov muxers (and the demuxer's names)

# Containers for which FFmpeg cannot say what they hold (no codec table, no query: it answers for
# its default codecs only), with what their muxers write (FFmpeg's mpegtsenc.c, mpegenc.c, oggenc.c).
_CARRIES = {
    "mpegts": {"mpeg1video", "mpeg2video", "mpeg4", "h264", "hevc", "vvc", "av1", "vc1", "dirac", "cavs",
               "mp2", "mp3", "aac", "ac3", "eac3", "dts", "truehd", "opus", "s302m",
               "dvb_subtitle", "dvb_teletext", "smpte_klv", "timed_id3"},
    # MPEG-PS: H.264 in it is an FFmpeg extension players do not expect, so it is not offered.
    "mpeg": {"mpeg1video", "mpeg2video", "mp1", "mp2", "mp3", "ac3", "dts", "pcm_dvd", "dvd_subtitle"},
    "ogg": {"theora", "vp8", "vorbis", "opus", "flac", "speex", "pcm_s16le"},
}
_CARRIES["ogv"] = _CARRIES["ogg"]
# Containers with no presentation timestamps (the demuxer guesses pts = dts + 1): B-frames would
# come back shown late, so encoders are told not to use them.
_NO_PTS = {"avi"}
# How an encoder's threads share the work: FFmpeg's own default (frames and slices, as the ffmpeg
# command line has it), not PyAV's (slices only).  libx264 takes "slices only" as --sliced-threads:
# each frame cut into a slice per thread, which x264 documents as the slower, low-latency mode
# (measured: 1080p, crf 18 medium, two cores: 42-44 fps with frame threads, 29-36 with slices, and a
# 0.9 % smaller stream).
ENCODER_THREAD_TYPE = "AUTO"
# FFmpeg's MPEG-family encoders: no constant-rate-factor mode (--crf maps to their fixed quantiser,
# qscale 2-31), and only time bases they can write (1/90000 is refused).
_MPEG_FAMILY = {"mpeg1video", "mpeg2video", "mpeg4", "msmpeg4", "msmpeg4v2", "h263p", "flv"}
# Containers whose timestamps count frames: Ogg's granule positions (Theora, VP8), AVI's chunk
# index (a finer time base fills every tick between two frames with an empty "dropped" chunk).
_FRAME_TICKS = {"ogg", "ogv", "avi"}
# Containers with no way to hold a gap between two frames: Ogg's granule position is where a page
# ends, and its demuxer counts one frame per packet back from there, so a frame after a gap is read
# as following the one before.  (Theora marks repeats with empty packets; VP8 cannot.)  The previous
# frame is encoded again at every missing tick, as ffmpeg's constant-rate output does.
_REPEAT_INTO_GAPS = {"ogg", "ogv"}
GAP_SECONDS_FILLED = 60  # the longest gap filled so; a longer one (hours in a tiny file) is refused


_AVFMT_NOTIMESTAMPS, _AVFMT_TS_NONSTRICT = 0x0080, 0x20000  # libavformat/avformat.h


def _rescale(value: int, a: Fraction, b: Fraction) -> int:
    """``value`` from time base ``a`` to ``b``, rounding halves away from zero (av_rescale_q)."""
    x = value * a / b
    return int(x + Fraction(1, 2)) if x >= 0 else -int(-x + Fraction(1, 2))


def container_accepts(output: av.container.OutputContainer, codec: str) -> bool:
    """Whether the output container can hold ``codec`` (an encoder or codec name)."""
    try:
        canonical = av.codec.Codec(codec, "w").canonical_name
    except (av.codec.codec.UnknownCodecError, ValueError):
        try:
            canonical = av.codec.Codec(codec, "r").canonical_name
        except (av.codec.codec.UnknownCodecError, ValueError):
            canonical = codec
    table = _CARRIES.get(output.format.name)
    if table is not None:
        return canonical in table
    supported = output.supported_codecs
    return not supported or codec in supported or canonical in supported




@dataclass(frozen=True)
class EncodeOptions:
    codec: str | None = None  # None: libx264 (libx265 for HDR10), or the container's own default where it refuses H.264
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str | None = None  # None: yuv420p, or 10-bit when the source is and the codec can
    quality: int = 95  # images (jpg/webp)
    extra: tuple[tuple[str, str], ...] = ()  # encoder options (--encoder-opt KEY=VALUE), after vsr's own
    tag: str | None = None  # codec tag (FourCC); None: hvc1 for HEVC in MP4/MOV (what Apple players open)
    quiet: bool = False  # encoders that print to stderr themselves (x265) print errors only
    threads: int | None = None  # the cores this file's encoders share (None: all usable; a folder run with several files in flight gives each its share)


def _params_key(encoder: str) -> str | None:
    return {"libx264": "x264-params", "libx265": "x265-params", "libsvtav1": "svtav1-params"}.get(encoder)


def _merge_params(opts: dict[str, str], key: str, value: str) -> None:
    """Add ``value`` (``a=1:b=2``) to the encoder's ``*-params`` option, keeping what is there."""
    opts[key] = ":".join(p for p in (opts.get(key), value) if p)


def encoder_options(enc: av.codec.Codec, options: EncodeOptions) -> dict[str, str]:
    """The encoder's options from ``options``: --crf and --preset where the encoder has them, then
    --encoder-opt pairs (``x264-params``/``x265-params`` values are appended to vsr's own).  A
    hardware encoder gets its own quality and speed options for them (:mod:`vsr.hwenc`)."""
    private = _private_options(enc)
    opts: dict[str, str] = {}
    if hwenc.family(enc.name):
        opts.update(hwenc.quality_options(enc.name, options.crf, options.preset, private))
    else:
        if options.crf is not None and "crf" in private:
            opts["crf"] = str(options.crf)
        if options.preset and "preset" in private:
            opts["preset"] = options.preset
    if options.quiet and enc.name == "libx265":
        _merge_params(opts, "x265-params", "log-level=error")
    for key, value in options.extra:
        if key == _params_key(enc.name):
            _merge_params(opts, key, value)
        else:
            opts[key] = value
    return opts


def unused_options(enc: av.codec.Codec, options: EncodeOptions, defaults: EncodeOptions) -> list[str]:
    """Options given that this encoder does not have (--preset with VP9/FFV1, --crf with FFV1)."""
    if hwenc.family(enc.name):
        return []  # both become its own options (hwenc.quality_options)
    private = _private_options(enc)
    unused = []
    if options.preset != defaults.preset and "preset" not in private:
        unused.append(f"--preset does nothing with the {enc.name} encoder (it has no presets)")
    if options.crf != defaults.crf and "crf" not in private and enc.name not in _MPEG_FAMILY:
        unused.append(f"--crf does nothing with the {enc.name} encoder (it has no constant rate factor)")
    return unused


def try_open(enc: av.codec.Codec, size: tuple[int, int], pix_fmt: str, time_base: Fraction, rate: Fraction,
             options: dict[str, str], qscale: int | None = None, no_b_frames: bool = False) -> av.FFmpegError | None:
    """Open a throwaway ``enc`` with these settings: None if it takes them, else FFmpeg's error."""
    cc = new_encoder(enc.name, size, pix_fmt, time_base, rate, options, qscale, no_b_frames, threads=1)
    try:
        cc.open()
        return None
    except av.FFmpegError as exc:
        return exc


def new_encoder(name: str, size: tuple[int, int], pix_fmt: str, time_base: Fraction, rate: Fraction,
                options: dict[str, str], qscale: int | None, no_b_frames: bool, threads: int) -> av.CodecContext:
    """An encoder context, not yet open, with the settings every instance of an output's encoder
    shares (the trial open of the up-front check, and each chunk's instance).  x265 is told to
    print errors only: it prints a banner on every open."""
    cc = av.CodecContext.create(name, "w")
    cc.width, cc.height = size
    cc.pix_fmt = pix_fmt
    cc.time_base = time_base
    cc.framerate = rate
    cc.thread_count = threads
    cc.thread_type = ENCODER_THREAD_TYPE
    if qscale is not None:
        cc.qscale = qscale
    if no_b_frames:
        cc.max_b_frames = 0
    opts = dict(options)
    if name == "libx265":
        _merge_params(opts, "x265-params", "log-level=error")
    cc.options = opts
    return cc


def _refused(enc: av.codec.Codec, settings: list[str], error: av.FFmpegError) -> EncodeError:
    return EncodeError(f"the {enc.name} encoder refuses these settings ({', '.join(settings) or 'defaults'}): "
                       f"{getattr(error, 'strerror', None) or error}")


def check_encoder(options: EncodeOptions, size: tuple[int, int] = (64, 64)) -> None:
    """Open the encoder once with every setting (on a small picture), so an unknown codec, preset,
    pixel format or option fails before any work; :class:`EncodeError` says what FFmpeg refused,
    or, for a hardware encoder that cannot open here, what the machine lacks."""
    problem = hwenc.hardware_problem(options.codec) if options.codec else None
    if problem:
        raise EncodeError(problem)
    enc = check_codec(options.codec, options.pix_fmt)
    pix_fmt = options.pix_fmt or next((f.name for f in enc.video_formats or [] if f.name == "yuv420p"),
                                      (enc.video_formats or [av.VideoFormat("yuv420p")])[0].name)
    opts = encoder_options(enc, options)
    error = try_open(enc, size, pix_fmt, Fraction(1, 25), Fraction(25), opts)
    if error is not None:
        raise _refused(enc, [f"{k}={v}" for k, v in opts.items()], error)
    unknown = [k for k in dict(options.extra) if k not in _known_options(enc)]
    if unknown:
        raise EncodeError(f"the {enc.name} encoder has no option {', '.join(map(repr, unknown))}")


def _private_options(enc: av.codec.Codec) -> set[str]:
    """The encoder's own option names (``crf``, ``preset``, ``x264-params``...)."""
    return {o.name for o in av.CodecContext.create(enc.name, "w").supported_options.private}


def _known_options(enc: av.codec.Codec) -> set[str]:
    """Every option name the encoder takes: its own and libavcodec's generic ones (``b``, ``g``,
    ``bf``, ``maxrate``...)."""
    generic = {o.name for o in av.CodecContext.create(enc.name, "w").supported_options.generic}
    return _private_options(enc) | generic


def check_codec(codec: str | None, pix_fmt: str | None) -> av.codec.Codec:
    """The encoder, or :class:`EncodeError` naming what exists."""
    codec = codec or "libx264"
    try:
        enc = av.codec.Codec(codec, "w")
    except (av.codec.codec.UnknownCodecError, ValueError) as exc:
        raise EncodeError(f"unknown video encoder {codec!r} (try libx264, libx265, libvpx-vp9, libsvtav1, ffv1)") from exc
    if enc.type != "video":
        raise EncodeError(f"{codec!r} is a {enc.type} encoder; expected a video encoder")
    if pix_fmt is not None:
        try:
            av.VideoFormat(pix_fmt)
        except (ValueError, av.FFmpegError) as exc:
            raise EncodeError(f"unknown pixel format {pix_fmt!r}") from exc
        supported = [f.name for f in (enc.video_formats or [])]
        if supported and pix_fmt not in supported:
            raise EncodeError(f"encoder {codec!r} does not take pixel format {pix_fmt!r}; it takes {', '.join(supported)}")
    return enc


def choose_pix_fmt(enc: av.codec.Codec, info: VideoInfo, asked: str | None) -> str:
    if asked:
        return asked
    supported = [f.name for f in (enc.video_formats or [])]
    if info.bits > 8:
        for candidate in ("yuv420p10le", "yuv422p10le", "yuv444p10le"):
            if candidate in supported:
                return candidate
    if "yuv420p" in supported or not supported:
        return "yuv420p"
    return supported[0]


def _cut_chapters(chapters: list[dict], start: float, duration: float | None) -> list[dict]:
    """Chapters of the part from ``start`` seconds for ``duration`` seconds, shifted to start at 0;
    those outside it dropped, those across its edges cut."""
    kept = []
    for c in chapters:
        tb = Fraction(c["time_base"])
        offset = round(Fraction(start) / tb)
        begin, end = c["start"] - offset, c["end"] - offset
        limit = None if duration is None else round(Fraction(duration) / tb)
        if end <= 0 or (limit is not None and begin >= limit):
            continue
        kept.append({**c, "start": max(0, begin), "end": end if limit is None else min(end, limit)})
    return kept


# Text subtitle formats, in the order vsr converts to them when a container refuses a text format
# (MP4/MOV: mov_text; Matroska: SubRip, as ffmpeg's -c:s srt; WebM: WebVTT).
_TEXT_SUBTITLE_FORMATS = ("mov_text", "subrip", "webvtt", "ass")
# PyAV encodes subtitles (and gives an encoder its styles) only in recent versions; with an older
# one such streams are left out with a warning, as any stream the container cannot hold.
_ENCODES_SUBTITLES = all(hasattr(SubtitleCodecContext, a) for a in ("encode_subtitle", "subtitle_header"))


def _text_subtitle_target(output: av.container.OutputContainer, codec: str) -> str | None:
    """The text subtitle encoder whose output ``output`` holds, for subtitles in ``codec`` that it
    does not hold; None for bitmap subtitles (DVD, PGS, DVB: pictures, not text) or a container with
    no text format."""
    if not _ENCODES_SUBTITLES:
        return None
    try:
        if not av.codec.Codec(codec, "r").text_sub:
            return None
    except (av.codec.codec.UnknownCodecError, ValueError):
        return None
    return next((t for t in _TEXT_SUBTITLE_FORMATS if container_accepts(output, t)), None)


def _listed(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _hdr10_encoder(output: av.container.OutputContainer) -> str | None:
    """The encoder that keeps HDR10 metadata in ``output`` (x265, else x264), if there is one."""
    return next((e for e in ("libx265", "libx264") if e in av.codecs_available and container_accepts(output, e)), None)


def _audio_encoder_opens(encoder: av.codec.Codec, rate: int, layout: av.AudioLayout) -> bool:
    """Whether ``encoder`` takes this rate and channel layout (PyAV does not list its layouts)."""
    cc = av.CodecContext.create(encoder.name, "w")
    cc.sample_rate, cc.layout, cc.format = rate, layout, encoder.audio_formats[0].name
    cc.time_base = Fraction(1, rate)
    try:
        cc.open()
        return True
    except av.FFmpegError:
        return False


class Writer:
    """Owns the output container.  Feed frames through :meth:`prepare_frame` then :meth:`encode_frame`
    (two threads may do the two steps), packets through :meth:`copy_packet`, then :meth:`close`."""

    def __init__(self, path: str | os.PathLike, info: VideoInfo, options: EncodeOptions, size: tuple[int, int],
                 warn: Callable[[str], None] = lambda m: None,
                 image: bool = False, sample_aspect_ratio: Fraction | None = None, field_order: int = 0,
                 span=None, source: av.container.InputContainer | None = None, deep: bool = False) -> None:
        self.path = os.fspath(path)
        self.info = info
        self.size = size  # output (width, height)
        self.sample_aspect_ratio = sample_aspect_ratio
        self.field_order = field_order  # AVFieldOrder to tag an interlaced output with (0: none)
        self.span = span  # decode.Span: only a part of the input is written (chapters are cut to it)
        # The input, opened once by the caller: its other streams are the templates of the copied
        # ones, and the same container is then demuxed for them (PyAV's remux pattern).
        self.source = source
        self.deep = deep  # a picture written at 16 bits per channel (media.DEEP_OUTPUTS)
        self.warn = warn
        self.copied: dict[int, av.stream.Stream] = {}  # input stream index -> output stream (packet copy)
        self.transcoded: dict[int, tuple] = {}  # input stream index -> (decoder ctx, output stream, resampler)
        self.subtitles: dict[int, tuple] = {}  # input stream index -> (decoder ctx, output stream, cues dropped)
        self.frames_written = 0
        self._frames_prepared = 0
        self.timings = Timings()
        self.image = image
        self._last_pts: int | None = None
        self._last_encoded: av.VideoFrame | None = None  # the frame repeated into a gap (_REPEAT_INTO_GAPS)
        self.repeated = 0  # frames encoded again to fill gaps the container cannot hold
        self.alpha = False  # a picture's transparency is written (media.ALPHA_OUTPUTS)
        self._mux_state: dict[int, list] = {}  # copied input stream -> [last dts, last duration, repairs]
        self._titles: dict[int, tuple[int, str]] = {}  # output stream index -> (input stream index, title)
        self._tags: list[str] = []  # the input's container tags given to the muxer
        try:
            if image:
                self.output = av.open(self.path, "w", format="image2", options={"update": "1"})
            else:
                self.output = av.open(self.path, "w")
        except (av.FFmpegError, ValueError) as exc:
            raise EncodeError(f"cannot create {self.path!r}: {exc}") from exc
        flags = self.output.format.flags
        self._timestamps_matter = not flags & _AVFMT_NOTIMESTAMPS
        self._nonstrict = bool(flags & _AVFMT_TS_NONSTRICT)
        try:
            self._setup(options)
        except BaseException:
            self.output.close()
            raise

    # -- set-up ------------------------------------------------------------------------------
    def _setup(self, options: EncodeOptions) -> None:
        info = self.info
        if self.image:
            ext = extension(self.path)
            codec, pix_fmt = IMAGE_OUTPUTS[ext]
            if info.alpha and ext in ALPHA_OUTPUTS:
                pix_fmt = ALPHA_OUTPUTS[ext]
                self.alpha = True
            elif self.deep:
                pix_fmt = DEEP_OUTPUTS[ext]
            options = EncodeOptions(codec=codec, crf=None, preset=None, pix_fmt=pix_fmt, quality=options.quality,
                                    quiet=options.quiet, threads=options.threads)
        codec = options.codec
        if codec is None and info.hdr is not None and _hdr10_encoder(self.output):
            # HDR10 is kept by x265 in every frame (its SEI travels with the parameter sets); x264
            # writes it only in the keyframes, which FFmpeg's H.264 decoder gives the keyframes alone.
            codec = _hdr10_encoder(self.output)
        if codec is None:
            codec = "libx264" if container_accepts(self.output, "libx264") else self.output.default_video_codec
        enc = check_codec(codec, options.pix_fmt)
        pix_fmt = choose_pix_fmt(enc, info, options.pix_fmt)
        if not container_accepts(self.output, enc.name):
            raise EncodeError(f"the {self.output.format.name} container cannot hold {enc.name} video")
        stream_opts = encoder_options(enc, options)
        rate = Fraction(1) if info.is_image else (info.rate or Fraction(25))
        if enc.name == "libwebp":
            stream_opts["quality"] = str(options.quality)
        self._signal_colour(enc, stream_opts)
        if enc.name == "mjpeg":
            stream_opts["qmin"] = stream_opts["qmax"] = str(jpeg_qscale(options.quality))
        qscale = None
        if enc.name in _MPEG_FAMILY and options.crf is not None:
            qscale = max(2, min(31, round(options.crf / 6)))  # crf 18 -> 3 (FFmpeg's default is 200 kb/s)
        no_b_frames = self.output.format.name in _NO_PTS
        time_base = None if info.is_image else self._encoder_time_base(enc, pix_fmt, stream_opts, rate, qscale, no_b_frames)
        vs = self.output.add_stream(enc.name, rate=rate, options=stream_opts)
        vs.width, vs.height = self.size
        vs.pix_fmt = pix_fmt
        cc = vs.codec_context
        # Encoder threads from the cores this process may use.  FFmpeg's "auto" (0) counts the
        # affinity mask only; under a cgroup CPU quota that over-subscribes the cores we get.
        cores = options.threads or usable_cores()
        cc.thread_count = cores if options.threads or cores < (os.cpu_count() or cores) else 0
        cc.thread_type = ENCODER_THREAD_TYPE
        tag = options.tag or ("hvc1" if enc.canonical_name == "hevc" and self.output.format.name in ("mp4", "mov") else None)
        if tag:
            cc.codec_tag = tag
        if qscale is not None:
            cc.qscale = qscale
        if no_b_frames:
            cc.max_b_frames = 0
        if time_base is not None:
            vs.time_base = time_base
            cc.time_base = time_base
        self.time_base = time_base
        if self.sample_aspect_ratio:
            cc.sample_aspect_ratio = self.sample_aspect_ratio
        if self.field_order:
            cc.field_order = self.field_order
        tags = info.colour
        if tags.colorspace != 2:
            cc.colorspace = tags.colorspace
        if tags.color_primaries != 2:
            cc.color_primaries = tags.color_primaries
        if tags.color_trc != 2:
            cc.color_trc = tags.color_trc
        if tags.color_range:
            cc.color_range = tags.color_range
        if info.rotation:
            try:
                vs.set_display_rotation(info.rotation)
            except (AttributeError, av.FFmpegError, ValueError) as exc:  # pragma: no cover - old PyAV
                self.warn(f"rotation {info.rotation} degrees could not be kept: {exc}")
        self.video = vs
        self.pix_fmt = pix_fmt
        self.tags = tags
        # What an encoder instance of one chunk is made with (chunk_encoder): the same as this one's.
        self._video_setup = (enc.name, stream_opts, rate, qscale, no_b_frames)
        if not info.is_image and not self.image:
            self._copy_other_streams()

    def _signal_colour(self, enc: av.codec.Codec, stream_opts: dict[str, str]) -> None:
        """What the encoder must be told for the source's colour signalling to survive: HDR10
        metadata (x264/x265 parameters, else a warning naming what keeps it), and limited range
        where no other colour tag is set."""
        info = self.info
        if info.hdr is not None:
            params = info.hdr.encoder_params(enc.name) if enc.name in ("libx264", "libx265") else None
            if params:
                _merge_params(stream_opts, f"{enc.name[3:]}-params", params)
            elif _hdr10_encoder(self.output):
                self.warn(f"HDR10 metadata ({info.hdr.describe()}) is not written: the {enc.name} encoder is not "
                          f"given it (use --codec libx265 or libx264)")
            else:
                self.warn(f"HDR10 metadata ({info.hdr.describe()}) is not written: the {enc.name} encoder is not "
                          f"given it, and the {self.output.format.name} container holds no encoder that is "
                          f"(write .mkv or .mp4 with --codec libx265)")
        colour = info.colour
        if (enc.name == "libx264" and colour.color_range == 1 and "videoformat=" not in stream_opts.get("x264-params", "")
                and colour.colorspace == colour.color_primaries == colour.color_trc == 2):
            # x264 writes the range flag only beside another signal-type field: with every colour tag
            # unspecified, limited range would read back as unspecified (in .mp4, .mov, .ts, .avi).
            _merge_params(stream_opts, "x264-params", "videoformat=component")

    def _encoder_time_base(self, enc: av.codec.Codec, pix_fmt: str, options: dict[str, str], rate: Fraction,
                           qscale: int | None, no_b_frames: bool) -> Fraction:
        """The source's time base, which keeps every timestamp exact, where the encoder and the
        container take it; else one tick per frame (1/rate), as the ffmpeg command line uses.  Opens
        the encoder once with every setting, so a wrong preset or option fails here, before any
        work, with FFmpeg's reason."""
        per_frame = Fraction(rate.denominator, rate.numerator)
        if self.output.format.name in _FRAME_TICKS:
            candidates = [per_frame]
        elif enc.name in _MPEG_FAMILY and per_frame != self.info.time_base:
            candidates = [self.info.time_base, per_frame]
        else:
            candidates = [self.info.time_base]
        error = None
        for tb in candidates:
            error = try_open(enc, self.size, pix_fmt, tb, rate, options, qscale, no_b_frames)
            if error is None:
                return tb
        settings = [f"{self.size[0]}x{self.size[1]}", pix_fmt, f"{float(rate):g} fps"] + [f"{k}={v}" for k, v in options.items()]
        raise _refused(enc, settings, error)

    def _copy_other_streams(self) -> None:
        info = self.info
        src = self.source
        if src is None:
            raise ValueError("a video output needs the input container (Writer(source=...)) to copy its other streams")
        self.output.metadata.update({k: v for k, v in src.metadata.items() if k.lower() not in _GENERATED_KEYS})
        self._tags = list(self.output.metadata)
        self._copy_stream_metadata(src.streams[info.stream_index], self.video)
        chapters = src.chapters()
        for stream in src.streams:
            if stream.index == info.stream_index:
                continue
            name = stream.codec_context.name if stream.codec_context else None
            if name is None and stream.type == "data" and chapters:
                continue  # MP4's chapter text track: the muxer writes its own from the chapters below
            name = name or "unknown codec"
            label = f"stream #{stream.index} ({stream.type} {name})"
            if stream.type == "video" and stream.disposition & av.stream.Disposition.attached_pic:
                self.warn(f"{label}: cover art is not copied")
                continue
            if stream.type not in ("audio", "subtitle", "video", "data", "attachment"):
                self.warn(f"{label}: not copied (unsupported stream type)")
                continue
            if stream.type == "video":
                self.warn(f"{label}: only the first video stream is upscaled; this one is not copied")
                continue
            if container_accepts(self.output, name) or (stream.type == "attachment" and self.output.format.name == "matroska"):
                try:
                    out = self.output.add_stream_from_template(stream)
                except (av.FFmpegError, ValueError) as exc:
                    self.warn(f"{label}: could not be copied ({exc})")
                    continue
                self._copy_stream_metadata(stream, out)
                self.copied[stream.index] = out
            elif stream.type == "audio":
                self._reencode_audio(stream, label, name)
            elif stream.type == "subtitle" and _text_subtitle_target(self.output, name):
                self._convert_subtitles(stream, label, name, _text_subtitle_target(self.output, name))
            else:
                self.warn(f"{label}: the {self.output.format.name} container cannot hold {name}; not copied")
        if chapters and self.span is not None:
            chapters = _cut_chapters(chapters, self.span.start + (info.start_time or 0.0), self.span.duration)
        if chapters:
            try:
                self.output.set_chapters(chapters)
            except (av.FFmpegError, ValueError, TypeError) as exc:
                self.warn(f"chapters could not be copied: {exc}")

    def _convert_subtitles(self, stream: av.stream.Stream, label: str, name: str, target: str) -> None:
        """Text subtitles the container refuses, into its own text format (ffmpeg's ``-c:s mov_text``
        / ``-c:s srt``): each cue decoded to FFmpeg's ASS form and encoded again, at its own time."""
        src_cc = stream.codec_context
        decoder = av.CodecContext.create(src_cc.name, "r")
        if src_cc.extradata:
            decoder.extradata = src_cc.extradata  # ASS/SSA: the script header and styles; mov_text: its default style
        try:
            decoder.open()
            out = self.output.add_stream(target)
        except (av.FFmpegError, ValueError) as exc:
            self.warn(f"{label}: the {self.output.format.name} container cannot hold {name}, and it could not be "
                      f"converted to {target} ({exc}); not copied")
            return
        out.codec_context.subtitle_header = decoder.subtitle_header  # the styles the encoder maps the cues' tags with
        out.codec_context.time_base = stream.time_base
        out.time_base = stream.time_base
        self._copy_stream_metadata(stream, out)
        self.subtitles[stream.index] = (decoder, out, [0])
        styled = av.codec.Codec(src_cc.name, "r").canonical_name == "ass"
        self.warn(f"{label}: the {self.output.format.name} container cannot hold {name}; converted to {target}"
                  + (" (the script's styles, positions and effects are dropped; bold, italic and underline are kept)"
                     if styled else ""))

    def _reencode_audio(self, stream: av.stream.Stream, label: str, name: str) -> None:
        """Audio the container refuses: AAC, or the container's own default where AAC is refused too."""
        src_cc = stream.codec_context
        target = "aac" if container_accepts(self.output, "aac") else self.output.default_audio_codec
        target = {"opus": "libopus", "vorbis": "libvorbis"}.get(target, target)
        try:
            encoder = av.codec.Codec(target, "w")
        except av.codec.codec.UnknownCodecError:
            self.warn(f"{label}: the {self.output.format.name} container cannot hold {name}, and no encoder fits; not copied")
            return
        rates = encoder.audio_rates
        rate = src_cc.sample_rate if not rates or src_cc.sample_rate in rates else max(rates)
        channels = len(src_cc.layout.channels)  # a named layout ("1 channels" -> mono)
        layout = av.AudioLayout({1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels, src_cc.layout.name))
        downmix = ""
        if channels > 2 and not _audio_encoder_opens(encoder, rate, layout):  # MP2: at most stereo
            layout, downmix = av.AudioLayout("stereo"), f", downmixed from {src_cc.layout.name} to stereo"
        out = self.output.add_stream(target, rate=rate)
        out.layout = layout
        out.format = encoder.audio_formats[0].name
        self._copy_stream_metadata(stream, out)
        decoder = av.CodecContext.create(src_cc.name, "r")
        if src_cc.extradata:
            decoder.extradata = src_cc.extradata
        decoder.sample_rate, decoder.layout, decoder.format = src_cc.sample_rate, src_cc.layout, src_cc.format
        resampler = av.AudioResampler(format=encoder.audio_formats[0].name, layout=layout, rate=rate)
        self.transcoded[stream.index] = (decoder, out, resampler)
        self.warn(f"{label}: the {self.output.format.name} container cannot hold {name}; re-encoded to {encoder.name}"
                  + downmix)

    def _copy_stream_metadata(self, src: av.stream.Stream, dst: av.stream.Stream) -> None:
        """Language, title and the other tags of a stream.  A title read from MP4/MOV (the track's
        ``name``) is written as a title; into MP4/MOV a title goes where ffmpeg writes it (``udta``
        ``name``) and into the handler name (``hdlr``) that players and ffprobe show."""
        from_mp4 = self.source is not None and not _MP4_FAMILY.isdisjoint(self.source.format.name.split(","))
        meta = {k.lower(): v for k, v in src.metadata.items()}
        title = meta.get("title") or (meta.get("name") if from_mp4 else None)
        for key, value in src.metadata.items():
            if key.lower() not in _STREAM_KEYS_SKIP and not (from_mp4 and key.lower() == "name"):
                dst.metadata[key] = value
        if title:
            dst.metadata["title"] = title
            self._titles[dst.index] = (src.index, title)
        if self.output.format.name in _MP4_FAMILY and (title or (from_mp4 and meta.get("handler_name"))):
            dst.metadata["handler_name"] = title or meta["handler_name"]
        if src.language and "language" not in dst.metadata:
            dst.metadata["language"] = src.language
        try:
            dst.disposition = src.disposition
        except (AttributeError, ValueError):  # pragma: no cover
            pass

    # -- chunks: several encoder instances, one stream --------------------------------------------
    @property
    def frame_bytes(self) -> int:
        """Memory one prepared frame holds (the encoder's pixel format at the output size)."""
        fmt = av.VideoFormat(self.pix_fmt, *self.size)
        return sum(-(-c.bits // 8) * c.width * c.height for c in fmt.components)

    def chunk_problem(self) -> str | None:
        """Why this output's video cannot be joined from chunks encoded separately, or None.  The
        headers of an encoder instance made for a chunk must be the output's own (compared on the
        real size and settings, before any work)."""
        from vsr.chunks import JOINABLE_CONTAINERS

        fmt = self.output.format.name
        if self.image or self.info.is_image:
            return "a picture is one frame"
        if fmt not in JOINABLE_CONTAINERS:
            return f"the {fmt} container's timestamps count frames, so chunks cannot be joined in it"
        self.output.start_encoding()  # opens this stream's encoder: the headers the output carries
        try:
            trial = self.chunk_encoder(1)
        except av.FFmpegError as exc:
            return f"a second {self.video.codec_context.name} encoder could not be opened ({exc})"
        if (trial.extradata or b"") != (self.video.codec_context.extradata or b""):
            return (f"two {self.video.codec_context.name} encoders with the same settings write different codec "
                    f"headers, so their chunks cannot share one stream")
        return None

    def chunk_encoder(self, threads: int) -> av.CodecContext:
        """A new encoder instance, open, with this output's video settings and ``threads`` threads."""
        name, options, rate, qscale, no_b_frames = self._video_setup
        model = self.video.codec_context
        cc = new_encoder(name, (model.width, model.height), model.pix_fmt, self.time_base, rate, options, qscale,
                         no_b_frames, threads)
        cc.flags = model.flags  # global headers where the container wants them
        if self.sample_aspect_ratio:
            cc.sample_aspect_ratio = self.sample_aspect_ratio
        if self.field_order:
            cc.field_order = self.field_order
        for attr in ("colorspace", "color_primaries", "color_trc", "color_range"):
            setattr(cc, attr, getattr(model, attr))
        cc.open()
        return cc

    def mux_video_packet(self, packet, data: bytes, time_base: Fraction) -> None:
        """A packet of a chunk's video (a :class:`vsr.chunks.ChunkPacket` and its bytes) into the output."""
        out_tb = Fraction(self.video.time_base)
        p = av.Packet(data)
        p.stream = self.video
        p.time_base = out_tb
        p.pts = None if packet.pts is None else _rescale(packet.pts, time_base, out_tb)
        p.dts = None if packet.dts is None else _rescale(packet.dts, time_base, out_tb)
        if packet.duration:
            p.duration = _rescale(packet.duration, time_base, out_tb)
        p.is_keyframe = packet.key
        self.output.mux(p)
        self.frames_written += 1

    def streams_to_copy(self) -> set[int]:
        return set(self.copied) | set(self.transcoded) | set(self.subtitles)

    # -- writing -----------------------------------------------------------------------------
    def prepare_frame(self, rgb: np.ndarray, pts: int | None, time_base: Fraction,
                      alpha: np.ndarray | None = None) -> av.VideoFrame:
        """RGB -> the encoder's pixel format, with its timestamp.  Call in frame order (one thread).
        A picture's ``alpha`` (at the input's size) is resized to the output's with bicubic
        interpolation and written where the format keeps it."""
        with self.timings("to_yuv"):
            if alpha is not None and self.alpha:
                frame = rgba_to_frame(rgb, resize_plane(alpha, rgb.shape[1], rgb.shape[0]), self.pix_fmt, self.tags)
            elif rgb.dtype == np.uint16:  # a 16-bit picture
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb48le").reformat(format=self.pix_fmt)
            else:
                frame = rgb_to_frame(rgb, self.pix_fmt, self.tags)
        return self._stamp(frame, pts, time_base)

    def prepare_planes(self, planes: list[np.ndarray], full_range: bool, pts: int | None,
                       time_base: Fraction) -> av.VideoFrame:
        """Planes already in the encoder's pixel format (converted on the model's device) -> a frame
        with its tags and timestamp.  Call in frame order (one thread)."""
        with self.timings("from_planes"):
            frame = planes_to_frame(planes, self.pix_fmt, (self.size[1], self.size[0]), self.tags, full_range)
        return self._stamp(frame, pts, time_base)

    def follow(self, pts: int) -> None:
        """The frames before the next one were encoded elsewhere (a chunk a stopped run finished),
        the last of them stamped ``pts`` (the encoder's time base): the next frame is stamped later."""
        if self._last_pts is None or pts > self._last_pts:
            self._last_pts = pts

    def _stamp(self, frame: av.VideoFrame, pts: int | None, time_base: Fraction) -> av.VideoFrame:
        if self.info.is_image or self.image:
            frame.pts = self._frames_prepared
        else:
            tb = self.time_base  # the encoder's: the source's, or 1/rate where the encoder needs it
            if pts is not None and time_base != tb:
                pts = round(pts * time_base / tb)
            if pts is None:  # no timestamp: follow the previous one by one frame
                step = max(1, int(round(1 / ((self.info.rate or Fraction(25)) * tb))))
                pts = (self._last_pts + step) if self._last_pts is not None else 0
            if self._last_pts is not None and pts <= self._last_pts:
                pts = self._last_pts + 1  # encoders need strictly increasing timestamps
            frame.pts = pts
            frame.time_base = tb
            self._last_pts = pts
        self._frames_prepared += 1
        return frame

    def encode_frame(self, frame: av.VideoFrame) -> None:
        """Encode and mux a frame made by :meth:`prepare_frame` (possibly in another thread)."""
        with self.timings("encode"):
            previous = self._last_encoded
            if previous is not None and frame.pts is not None and previous.pts is not None:
                self._check_gap(previous.pts, frame.pts, Fraction(frame.time_base))
                for tick in range(previous.pts + 1, frame.pts):  # a gap the container cannot hold
                    previous.pts = tick  # the encoder took its own reference: only the copy's time changes
                    for packet in self.video.encode(previous):
                        self.output.mux(packet)
                    self.repeated += 1
            for packet in self.video.encode(frame):
                self.output.mux(packet)
            if self.output.format.name in _REPEAT_INTO_GAPS and not (self.info.is_image or self.image):
                self._last_encoded = frame
        self.frames_written += 1

    def _check_gap(self, before: int, after: int, tb: Fraction) -> None:
        seconds = float((after - before) * tb)
        if seconds > GAP_SECONDS_FILLED:
            raise EncodeError(f"a gap of {seconds:.0f} s between two frames (at {float(before * tb):.2f} s): "
                              f"{self.output.format.name} cannot store a gap, so it would be filled with "
                              f"{after - before - 1} repeated frames; write .mkv or .mp4, which keep it")

    def copy_packet(self, packet: av.Packet, index: int, time_base: Fraction) -> None:
        """Mux a packet of input stream ``index`` unchanged (or re-encode it, for audio the container refuses)."""
        if index in self.copied:
            out = self.copied[index]
            self.output.start_encoding()  # output time bases are final once the header is written
            packet.stream = out
            self._fix_timestamps(packet, index, time_base, Fraction(out.time_base))
            self.output.mux(packet)
        elif index in self.transcoded:
            self._transcode(index, packet, time_base)
        elif index in self.subtitles:
            self._convert_subtitle(index, packet, time_base)

    def _convert_subtitle(self, index: int, packet: av.Packet, time_base: Fraction) -> None:
        """One cue into the output's text format, at the packet's own time and for its duration."""
        decoder, out, dropped = self.subtitles[index]
        if packet.size == 0:
            return
        self.output.start_encoding()  # opens the encoder with the styles given it
        try:
            cue = decoder.decode2(packet)
            if cue is None or not len(cue):  # nothing shown (mov_text's empty samples between cues)
                return
            converted = out.codec_context.encode_subtitle(cue)
        except (av.FFmpegError, ValueError):
            dropped[0] += 1
            return
        if converted.size == 0:
            return
        pts = packet.pts if packet.pts is not None else packet.dts
        duration = packet.duration
        if not duration and cue.end_display_time and cue.end_display_time != 0xFFFFFFFF:  # (ms)
            duration = round(Fraction(cue.end_display_time - cue.start_display_time, 1000) / time_base)
        converted.stream = out
        converted.time_base = time_base
        converted.pts, converted.dts = pts, pts
        converted.duration = duration or 0
        self._fix_timestamps(converted, index, time_base, Fraction(out.time_base))
        self.output.mux(converted)

    def _fix_timestamps(self, packet: av.Packet, index: int, src_tb: Fraction, out_tb: Fraction) -> None:
        """Timestamps the muxer will take, as the ffmpeg command line makes them (``mux_fixup_ts``):
        in the output's time base, a missing dts follows the last packet, a dts after the pts is
        replaced by the median guess, and a dts that does not increase is moved just past the last
        one (equal is enough where the container allows it).  The payload is never touched; each
        repaired stream is reported once when the file is closed."""
        pts, dts, duration = (None if v is None else _rescale(v, src_tb, out_tb)
                              for v in (packet.pts, packet.dts, packet.duration))
        state = self._mux_state.setdefault(index, [None, 0, 0])  # last dts, last duration, repairs
        last, last_duration = state[0], state[1]
        if dts is None and pts is None and last is not None:
            dts = last + max(last_duration, 1)
        if self._timestamps_matter:
            if dts is not None and pts is not None and dts > pts:
                floor = (last + 1) if last is not None else min(pts, dts)
                pts = dts = sorted((pts, dts, floor))[1]
                state[2] += 1
            if dts is not None and last is not None:
                least = last + (0 if self._nonstrict else 1)
                if dts < least:
                    if pts is not None and pts >= dts:
                        pts = max(pts, least)
                    dts = least
                    state[2] += 1
        packet.time_base = out_tb
        packet.pts, packet.dts = pts, dts
        if duration is not None:
            packet.duration = duration
        if dts is not None:
            state[0] = dts
        state[1] = duration or last_duration

    def _transcode(self, index: int, packet: av.Packet | None, time_base: Fraction | None = None) -> None:
        decoder, out, resampler = self.transcoded[index]
        if packet is not None:
            if packet.size == 0:  # would be taken for the end of the stream (see decode.decode_frames)
                return
            packet.time_base = time_base
        for frame in decoder.decode(packet):
            if frame.pts is not None and frame.time_base:  # keep the timing, in samples
                frame.pts = round(frame.pts * frame.time_base * frame.sample_rate)
                frame.time_base = Fraction(1, frame.sample_rate)
            for converted in resampler.resample(frame):
                for encoded in out.encode(converted):
                    self.output.mux(encoded)

    def close(self) -> None:
        """Flush every encoder and finish the file."""
        for index, (_decoder, out, dropped) in sorted(self.subtitles.items()):
            if dropped[0]:
                self.warn(f"stream #{index}: {dropped[0]} subtitle cue(s) could not be converted to "
                          f"{out.codec_context.name}; left out")
        for index, (_last, _duration, repairs) in sorted(self._mux_state.items()):
            if repairs:
                self.warn(f"stream #{index}: {repairs} packet(s) with timestamps out of order were re-stamped "
                          f"as ffmpeg does (contents copied unchanged)")
        for packet in self.video.encode(None):
            self.output.mux(packet)
        for index, (_decoder, out, resampler) in self.transcoded.items():
            self._transcode(index, None)
            for converted in resampler.resample(None):
                for encoded in out.encode(converted):
                    self.output.mux(encoded)
            for encoded in out.encode(None):
                self.output.mux(encoded)
        self.output.close()
        self._report_lost_tags()

    def _report_lost_tags(self) -> None:
        """Container tags and stream titles that the muxer did not write, found by reading the
        finished file back as FFmpeg reads it: one warning each, naming them."""
        if not (self._tags or self._titles):
            return
        try:
            with av.open(self.path, metadata_errors="replace") as written:
                fmt = written.format.name.split(",")[0]
                held = {k.lower() for k in written.metadata}
                if fmt == "ogg":  # Ogg has no file-wide tags: the muxer puts them in each stream's comments
                    held |= {k.lower() for s in written.streams for k in s.metadata}
                if fmt == "mpegts":  # the title is the service name (a program's tag, which PyAV does not read)
                    held.add("title")
                titled = {s.index for s in written.streams
                          if {"title", "name", "handler_name"} & {k.lower() for k in s.metadata}}
        except (av.FFmpegError, OSError, ValueError):  # pragma: no cover - the file was just written
            return
        fmt = self.output.format.name
        lost = [k for k in self._tags if k.lower() not in held]
        if lost:
            why = ("holds only its standard tags (title, artist, comment...); other keys need QuickTime's 'mdta' "
                   "layout (ffmpeg's -movflags use_metadata_tags), which vsr does not write"
                   if fmt in _MP4_FAMILY else "has no place for them")
            self.warn(f"container tag(s) {_listed(lost)} not kept: the {fmt} container {why} (.mkv keeps every tag)")
        untitled = [f"#{index} {title!r}" for out, (index, title) in sorted(self._titles.items()) if out not in titled]
        if untitled:
            self.warn(f"stream title(s) not kept: the {fmt} container has no place for them "
                      f"({_listed(untitled)}; .mkv and .mp4 keep them)")

    def abort(self) -> None:
        try:
            self.output.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away
            pass
