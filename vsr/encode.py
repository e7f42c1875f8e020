"""Encoding and muxing: upscaled RGB frames and copied packets become the output file.

The video stream keeps the source's time base and every frame's own timestamp, its colour
tags, sample aspect ratio and rotation.  Every other stream is copied packet-for-packet when
the output container accepts its codec; audio it does not accept is re-encoded to AAC, other
streams are dropped; each such change is reported as a warning.  Container metadata, stream
metadata (language, title) and chapters are copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av
import numpy as np

from vsr.colour import planes_to_frame, rgb_to_frame
from vsr.decode import VideoInfo, open_input
from vsr.device import usable_cores
from vsr.media import jpeg_qscale
from vsr.timing import Timings


class EncodeError(Exception):
    """The output cannot be written as asked; the message says why."""


# Metadata the muxer writes itself; copying it would be wrong.
_GENERATED_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder", "creation_time", "duration"}
_STREAM_KEYS_SKIP = {"encoder", "duration", "vendor_id", "handler_name"}

IMAGE_CODECS = {"png": ("png", "rgb24"), "jpg": ("mjpeg", "yuvj444p"), "jpeg": ("mjpeg", "yuvj444p"), "webp": ("libwebp", "yuv420p")}


@dataclass(frozen=True)
class EncodeOptions:
    codec: str | None = None  # None: libx264, or the container's own default where it refuses H.264
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str | None = None  # None: yuv420p, or 10-bit when the source is and the codec can
    quality: int = 95  # images (jpg/webp)


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


class Writer:
    """Owns the output container.  Feed frames through :meth:`prepare_frame` then :meth:`encode_frame`
    (two threads may do the two steps), packets through :meth:`copy_packet`, then :meth:`close`."""

    def __init__(self, path: str | os.PathLike, info: VideoInfo, options: EncodeOptions, size: tuple[int, int],
                 container_format: str | None = None, warn: Callable[[str], None] = lambda m: None,
                 image: bool = False, sample_aspect_ratio: Fraction | None = None) -> None:
        self.path = os.fspath(path)
        self.info = info
        self.size = size  # output (width, height)
        self.sample_aspect_ratio = sample_aspect_ratio
        self.warn = warn
        self.copied: dict[int, av.stream.Stream] = {}  # input stream index -> output stream (packet copy)
        self.transcoded: dict[int, tuple] = {}  # input stream index -> (decoder ctx, output stream, resampler)
        self.frames_written = 0
        self._frames_prepared = 0
        self.timings = Timings()
        self.image = image
        self._last_pts: int | None = None
        try:
            if image:
                self.output = av.open(self.path, "w", format="image2", options={"update": "1"})
            else:
                self.output = av.open(self.path, "w", format=container_format)
        except (av.FFmpegError, ValueError) as exc:
            raise EncodeError(f"cannot create {self.path!r}: {exc}") from exc
        try:
            self._setup(options)
        except BaseException:
            self.output.close()
            raise

    # -- set-up ------------------------------------------------------------------------------
    def _setup(self, options: EncodeOptions) -> None:
        info = self.info
        if self.image:
            ext = self.path.rsplit(".", 1)[-1].lower()
            codec, pix_fmt = IMAGE_CODECS[ext]
            options = EncodeOptions(codec=codec, crf=None, preset=None, pix_fmt=pix_fmt, quality=options.quality)
        supported = self.output.supported_codecs
        codec = options.codec
        if codec is None:
            codec = "libx264" if not supported or "libx264" in supported else self.output.default_video_codec
        enc = check_codec(codec, options.pix_fmt)
        pix_fmt = choose_pix_fmt(enc, info, options.pix_fmt)
        if supported and enc.name not in supported:
            raise EncodeError(f"the {self.output.format.name} container cannot hold {enc.name} video")
        stream_opts: dict[str, str] = {}
        private = {o.name for o in av.CodecContext.create(enc.name, "w").supported_options.private}
        if options.crf is not None and "crf" in private:
            stream_opts["crf"] = str(options.crf)
        if options.preset and "preset" in private:
            stream_opts["preset"] = options.preset
        rate = Fraction(1) if info.is_image else (info.rate or Fraction(25))
        if enc.name == "libwebp":
            stream_opts["quality"] = str(options.quality)
        if enc.name == "mjpeg":
            stream_opts["qmin"] = stream_opts["qmax"] = str(jpeg_qscale(options.quality))
        vs = self.output.add_stream(enc.name, rate=rate, options=stream_opts)
        vs.width, vs.height = self.size
        vs.pix_fmt = pix_fmt
        cc = vs.codec_context
        # Encoder threads from the cores this process may use.  FFmpeg's "auto" (0) counts the
        # affinity mask only; under a cgroup CPU quota that over-subscribes the cores we get.
        cores = usable_cores()
        cc.thread_count = cores if cores < (os.cpu_count() or cores) else 0
        if not info.is_image:
            vs.time_base = info.time_base
            cc.time_base = info.time_base
        if self.sample_aspect_ratio:
            cc.sample_aspect_ratio = self.sample_aspect_ratio
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
        if not info.is_image and not self.image:
            self._copy_other_streams(supported)

    def _copy_other_streams(self, supported: set[str]) -> None:
        info = self.info
        with open_input(info.path) as src:
            self.output.metadata.update({k: v for k, v in src.metadata.items() if k.lower() not in _GENERATED_KEYS})
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
                if name in supported or (stream.type == "attachment" and self.output.format.name == "matroska"):
                    try:
                        out = self.output.add_stream_from_template(stream)
                    except (av.FFmpegError, ValueError) as exc:
                        self.warn(f"{label}: could not be copied ({exc})")
                        continue
                    self._copy_stream_metadata(stream, out)
                    self.copied[stream.index] = out
                elif stream.type == "audio":
                    self._reencode_audio(stream, label, name, supported)
                else:
                    self.warn(f"{label}: the {self.output.format.name} container cannot hold {name}; not copied")
            if chapters:
                try:
                    self.output.set_chapters(chapters)
                except (av.FFmpegError, ValueError, TypeError) as exc:
                    self.warn(f"chapters could not be copied: {exc}")

    def _reencode_audio(self, stream: av.stream.Stream, label: str, name: str, supported: set[str]) -> None:
        """Audio the container refuses: AAC, or the container's own default where AAC is refused too."""
        src_cc = stream.codec_context
        target = "aac" if "aac" in supported else self.output.default_audio_codec
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
        self.warn(f"{label}: the {self.output.format.name} container cannot hold {name}; re-encoded to {encoder.name}")

    @staticmethod
    def _copy_stream_metadata(src: av.stream.Stream, dst: av.stream.Stream) -> None:
        for key, value in src.metadata.items():
            if key.lower() not in _STREAM_KEYS_SKIP:
                dst.metadata[key] = value
        if src.language and "language" not in dst.metadata:
            dst.metadata["language"] = src.language
        try:
            dst.disposition = src.disposition
        except (AttributeError, ValueError):  # pragma: no cover
            pass

    def streams_to_copy(self) -> set[int]:
        return set(self.copied) | set(self.transcoded)

    # -- writing -----------------------------------------------------------------------------
    def prepare_frame(self, rgb: np.ndarray, pts: int | None, time_base: Fraction) -> av.VideoFrame:
        """RGB -> the encoder's pixel format, with its timestamp.  Call in frame order (one thread)."""
        with self.timings("to_yuv"):
            frame = rgb_to_frame(rgb, self.pix_fmt, self.tags)
        return self._stamp(frame, pts, time_base)

    def prepare_planes(self, planes: list[np.ndarray], full_range: bool, pts: int | None,
                       time_base: Fraction) -> av.VideoFrame:
        """Planes already in the encoder's pixel format (converted on the model's device) -> a frame
        with its tags and timestamp.  Call in frame order (one thread)."""
        with self.timings("from_planes"):
            frame = planes_to_frame(planes, self.pix_fmt, (self.size[1], self.size[0]), self.tags, full_range)
        return self._stamp(frame, pts, time_base)

    def _stamp(self, frame: av.VideoFrame, pts: int | None, time_base: Fraction) -> av.VideoFrame:
        if self.info.is_image or self.image:
            frame.pts = self._frames_prepared
        else:
            if pts is None:  # no timestamp: follow the previous one by one frame
                step = int(round(1 / ((self.info.rate or Fraction(25)) * self.info.time_base)))
                pts = (self._last_pts + step) if self._last_pts is not None else 0
            if self._last_pts is not None and pts <= self._last_pts:
                pts = self._last_pts + 1  # encoders need strictly increasing timestamps
            frame.pts = pts
            frame.time_base = time_base
            self._last_pts = pts
        self._frames_prepared += 1
        return frame

    def encode_frame(self, frame: av.VideoFrame) -> None:
        """Encode and mux a frame made by :meth:`prepare_frame` (possibly in another thread)."""
        with self.timings("encode"):
            for packet in self.video.encode(frame):
                self.output.mux(packet)
        self.frames_written += 1

    def copy_packet(self, packet: av.Packet, index: int, time_base: Fraction) -> None:
        """Mux a packet of input stream ``index`` unchanged (or re-encode it, for audio the container refuses)."""
        if index in self.copied:
            packet.stream = self.copied[index]
            packet.time_base = time_base
            self.output.mux(packet)
        elif index in self.transcoded:
            self._transcode(index, packet, time_base)

    def _transcode(self, index: int, packet: av.Packet | None, time_base: Fraction | None = None) -> None:
        decoder, out, resampler = self.transcoded[index]
        if packet is not None:
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

    def abort(self) -> None:
        try:
            self.output.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away
            pass
