"""What a conformance run on real media found (issue: every real file): containers that need other
time bases, zero-size packets, timestamps out of order, AVI's missing presentation times, pictures'
transparency, colour profiles and EXIF orientation, and inputs FFmpeg cannot read."""

from __future__ import annotations

import struct
import subprocess
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import ffmpeg_packets, grey_clip_with_audio, make_clip
from vsr.decode import FrameClock, FrameItem, probe, read
from vsr.encode import EncodeOptions, Writer
from vsr.model import Bicubic
from vsr.pipeline import UpscaleError, UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler


def run(src, dst, **kw):
    return upscale_file(src, dst, Upscaler(Bicubic(4), "cpu"), UpscaleOptions(**kw))


def video_times(path) -> list[float]:
    """Presentation times of the decoded frames, in seconds (as the ffmpeg command line stamps them)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        clock = FrameClock(dts_only=c.format.name == "avi")
        times = []
        for packet in c.demux(s):
            if packet.size == 0 and packet.dts is not None:
                continue
            clock.demuxed(packet)
            for f in packet.decode():
                t = clock.time_of(f)
                times.append(None if t is None else round(float(t * f.time_base), 4))
        return times


# -- containers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ext, codec, video", [("mpg", None, "mpeg1video"), ("ts", None, "h264"),
                                                ("ts", "mpeg2video", "mpeg2video"), ("mkv", "mpeg4", "mpeg4")])
def test_mpeg_containers_and_encoders_that_need_their_own_time_base(tmp_path, ext, codec, video):
    src = make_clip(tmp_path / "in.mp4", frames=10, audio=1, time_base=Fraction(1, 90000))
    dst = tmp_path / f"out.{ext}"
    result = run(src, dst, encode=EncodeOptions(codec=codec))
    assert result.frames == 10
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == video
        times = [float(f.pts * f.time_base) for f in c.decode(v)]
        audio = c.streams.audio[0].codec_context.name
    steps = np.diff(times)
    assert len(times) == 10 and np.allclose(steps, 0.04, atol=1e-3)
    # MPEG-TS carries the AAC as it is; MPEG-PS cannot, so it becomes MP2 with a warning.
    assert audio == ("mp2" if ext == "mpg" else "aac")
    assert any("re-encoded" in w for w in result.warnings) == (ext == "mpg")


def test_surround_audio_into_mpeg_ps_is_downmixed_with_a_warning(tmp_path):
    frames = []
    for k in range(5):
        af = av.AudioFrame.from_ndarray(np.zeros((6, 1024), np.float32), format="fltp", layout="5.1")
        af.pts = 1024 * k
        frames.append(af)
    src = grey_clip_with_audio(tmp_path / "in.mkv", "aac", "5.1", frames)
    dst = tmp_path / "out.mpg"
    result = run(src, dst)
    assert any("re-encoded to mp2, downmixed from 5.1 to stereo" in w for w in result.warnings)
    with av.open(str(dst)) as c:
        assert c.streams.audio[0].codec_context.layout.name == "stereo"


def test_libx264_into_mpeg_ts_is_accepted(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=4)
    result = run(src, tmp_path / "out.ts", encode=EncodeOptions(codec="libx264"))
    assert result.frames == 4


def test_wrong_encoder_settings_fail_before_any_work(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=4)
    dst = tmp_path / "out.mp4"
    with pytest.raises(UpscaleError, match="libx264 encoder refuses these settings .*preset=ultrafastt"):
        run(src, dst, encode=EncodeOptions(preset="ultrafastt"))
    assert list(tmp_path.iterdir()) == [src]


def test_theora_zero_size_packets_are_skipped(tmp_path, ffmpeg):
    """libtheora writes an empty packet for a frame that repeats the last one; sent to the
    decoder, it would end decoding at frame 0."""
    src = tmp_path / "still.ogv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=0.4",
                    "-c:v", "libtheora", "-g", "100", str(src)], check=True)
    with av.open(str(src)) as c:
        packets = [(p.pts, p.size) for p in c.demux(video=0) if p.pts is not None]
    assert any(size == 0 for _, size in packets), "the clip must have repeat packets to test anything"
    shown = [round(pts / 25, 4) for pts, size in packets if size]
    dst = tmp_path / "still.mkv"
    result = run(src, dst)
    assert result.frames == len(shown)
    assert video_times(dst) == shown


def test_avi_with_b_frames_keeps_its_timing(tmp_path, ffmpeg):
    """AVI stores no presentation times: frames are timed by their dts less the decoder's delay,
    so the first lands at 0 and each follows by one frame (as the input is shown)."""
    src = tmp_path / "in.avi"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=25:duration=1",
                    "-f", "lavfi", "-i", "sine=duration=1", "-c:v", "libx264", "-bf", "2", "-c:a", "aac",
                    "-shortest", str(src)], check=True)
    dst = tmp_path / "out.mkv"
    result = run(src, dst)
    assert result.frames == 25
    assert not [w for w in result.warnings if "frames" in w]
    assert video_times(dst) == [round(i * 0.04, 4) for i in range(25)]
    assert ffmpeg_packets(ffmpeg, src, "a:0")[0][3:] == ffmpeg_packets(ffmpeg, dst, "a:0")[0][3:]


def test_raw_h264_without_timestamps_is_timed_by_its_stated_rate(tmp_path, ffmpeg):
    from click.testing import CliRunner

    from vsr.cli import main

    src = tmp_path / "raw.h264"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=30:duration=0.5",
                    "-c:v", "libx264", "-bf", "2", str(src)], check=True)
    res = CliRunner().invoke(main, ["upscale", str(src), "--model", "bicubic", "-q"])
    assert res.exit_code == 0, res.output
    times = video_times(tmp_path / "raw_x4.mkv")
    assert len(times) == 15 and np.allclose(times, [i / 30 for i in range(15)], atol=1e-3)  # Matroska: ms


def test_no_b_frames_into_avi(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=12)
    dst = tmp_path / "out.avi"
    run(src, dst)
    with av.open(str(dst)) as c:
        assert c.streams.video[0].frames == 12  # one chunk a frame: no empty "dropped" chunks between them
        kinds = [int(f.pict_type) for f in c.decode(video=0)]
    assert len(kinds) == 12 and 3 not in kinds  # AV_PICTURE_TYPE_B
    assert video_times(dst) == [round(i * 0.04, 4) for i in range(12)]


def test_copied_packets_with_timestamps_out_of_order_are_restamped(tmp_path, ffmpeg):
    """Packets whose dts go backwards (as in some Ogg and AVI files) are re-stamped as ffmpeg's
    muxer fix-up does; the payload stays byte for byte."""
    src = make_clip(tmp_path / "in.mkv", frames=10, audio=1)
    info = probe(src)
    dst = tmp_path / "out.mkv"
    warnings = []
    with av.open(str(src)) as c:
        writer = Writer(dst, info, EncodeOptions(preset="ultrafast"), (info.width, info.height), warn=warnings.append,
                        source=c)
        audio = c.streams.audio[0]
        index = audio.index
        packets = [(p, Fraction(p.time_base)) for p in c.demux(audio) if p.size]
    packets[3][0].dts = packets[3][0].pts = packets[1][0].dts  # goes back two packets
    for packet, tb in packets:
        writer.copy_packet(packet, index, tb)
    writer.close()
    assert any("1 packet(s) with timestamps out of order" in w for w in warnings)
    out = ffmpeg_packets(ffmpeg, dst, "a:0")
    dts = [int(row[0]) for row in out]
    assert all(b >= a for a, b in zip(dts, dts[1:]))
    assert [row[3:] for row in out] == [row[3:] for row in ffmpeg_packets(ffmpeg, src, "a:0")]


# -- folders ------------------------------------------------------------------------------------
def test_gif_in_a_folder_is_converted_to_mp4(tmp_path, ffmpeg):
    from click.testing import CliRunner

    from vsr.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=10:duration=0.5",
                    str(folder / "anim.gif")], check=True)
    res = CliRunner().invoke(main, ["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", "bicubic", "-q"])
    assert res.exit_code == 0, res.output
    with av.open(str(tmp_path / "out" / "anim.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert len(list(c.decode(video=0))) == 5
    make_clip(folder / "anim.mp4", frames=2)  # would write the same output
    res = CliRunner().invoke(main, ["upscale", str(folder), "-o", str(tmp_path / "out2"), "--model", "bicubic", "-q"])
    assert res.exit_code != 0 and "would both be written to" in res.output


# -- pictures -----------------------------------------------------------------------------------
PIL = pytest.importorskip("PIL")
from PIL import Image, ImageCms, ImageOps  # noqa: E402


def picture(seed: int = 0, size=(20, 12)) -> np.ndarray:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)


@pytest.mark.parametrize("ext", ["png", "webp", "tif"])
def test_transparency_is_kept(tmp_path, ext):
    rgb = picture()
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    src = tmp_path / f"in.{ext}"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src, lossless=True)
    dst = tmp_path / f"out.{ext}"
    result = run(src, dst)
    assert not result.warnings
    out = np.asarray(Image.open(dst).convert("RGBA"))
    assert out.shape == (48, 80, 4)
    # The alpha ramp, resized: each 4x4 block averages to the source value within a few levels.
    blocks = out[..., 3].astype(float).reshape(12, 4, 20, 4).mean(axis=(1, 3))
    assert np.abs(blocks - alpha).max() <= 6
    assert out[:, 0, 3].max() <= 8 and out[:, -1, 3].min() >= 247


def test_every_picture_extension_read_is_also_written(tmp_path):
    """One classifier: what a folder or a single file accepts as a picture can be written too."""
    from vsr.media import IMAGE_EXTENSIONS, output_kind

    src = tmp_path / "in.png"
    Image.fromarray(picture()).save(src)
    for ext in sorted(IMAGE_EXTENSIONS):
        assert output_kind(f"x.{ext}") == "image"
        dst = tmp_path / f"out.{ext}"
        run(src, dst)
        with Image.open(dst) as im:
            assert im.size == (80, 48), ext


def test_transparency_into_jpeg_is_named(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.dstack([picture(), np.full((12, 20), 128, np.uint8)]), "RGBA").save(src)
    result = run(src, tmp_path / "out.jpg")
    assert any("transparency is dropped" in w for w in result.warnings)


def _sixteen_bit_png(path, rgb16: np.ndarray):
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb16), format="rgb48le")
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as out:
        s = out.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = rgb16.shape[1], rgb16.shape[0], "rgb48be"
        for p in s.encode(frame.reformat(format="rgb48be")):
            out.mux(p)
    return path


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_sixteen_bit_picture_stays_sixteen_bit(tmp_path, ext):
    """A smooth 16-bit ramp (steps finer than 8 bits can hold) comes out 16-bit and as fine."""
    y, x = np.mgrid[0:12, 0:20]
    rgb16 = np.stack([x * 3000 + 7, y * 5000 + 11, (x + y) * 1700 + 3], -1).astype(np.uint16)
    src = _sixteen_bit_png(tmp_path / "in.png", rgb16)
    dst = tmp_path / f"out.{ext}"
    result = run(src, dst)
    assert not [w for w in result.warnings if "bit" in w]
    with av.open(str(dst)) as c:
        frame = next(c.decode(video=0))
        assert frame.format.name.startswith("rgb48")
        out = frame.to_ndarray(format="rgb48le").astype(float)
    assert out.shape == (48, 80, 3)
    assert np.mean(out % 257 != 0) > 0.5  # not 8-bit values widened
    # The reference: torch's bicubic of the 16-bit values in float, rounded to 16 bits.
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(rgb16.astype(np.float32) / 65535).permute(2, 0, 1)[None]
    ref = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    ref = (ref[0].permute(1, 2, 0).numpy() * 65535).round()
    assert np.abs(out - ref).max() <= 2  # 2 of 65535; an 8-bit path would be off by up to 128


def test_sixteen_bit_picture_into_an_eight_bit_format_is_named(tmp_path):
    src = _sixteen_bit_png(tmp_path / "in.png", (picture().astype(np.uint16) * 257))
    result = run(src, tmp_path / "out.jpg")
    assert any("16-bit picture is upscaled and written at 8 bits per channel (.jpg holds 8" in w for w in result.warnings)


def _profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not sRGB: it must travel


@pytest.mark.parametrize("src_ext, dst_ext", [("png", "png"), ("jpg", "jpg"), ("jpg", "png"), ("png", "webp")])
def test_icc_profile_is_copied(tmp_path, src_ext, dst_ext):
    icc = _profile()
    src = tmp_path / f"in.{src_ext}"
    Image.fromarray(picture()).save(src, icc_profile=icc, quality=95)
    dst = tmp_path / f"out.{dst_ext}"
    run(src, dst)
    with Image.open(dst) as im:
        assert im.info.get("icc_profile") == icc
        assert im.size == (80, 48)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_exif_kept(tmp_path, orientation):
    src = tmp_path / "in.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"
    Image.fromarray(picture(size=(24, 12))).save(src, exif=exif.tobytes(), quality=100)
    dst = tmp_path / "out.jpg"
    run(src, dst)
    with Image.open(src) as im:
        upright = np.asarray(ImageOps.exif_transpose(im)).astype(float)
    with Image.open(dst) as im:
        out = np.asarray(im).astype(float)
        kept = dict(im.getexif())
    assert out.shape[:2] == (upright.shape[0] * 4, upright.shape[1] * 4)
    small = out.reshape(upright.shape[0], 4, upright.shape[1], 4, 3).mean(axis=(1, 3))
    assert np.abs(small - upright).mean() < 6  # the same picture, the same way up
    assert kept.get(0x0112) == 1 and kept.get(0x010F) == "TestCam"


def test_picture_larger_than_ffmpeg_takes_is_named(tmp_path):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    src = tmp_path / "huge.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16384, 16384, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(UpscaleError, match="picture size 16384x16384 is larger than FFmpeg's decoders accept"):
        run(src, tmp_path / "out.png")


def test_animated_webp_is_named(tmp_path):
    """An animated WebP is a video (read with Pillow: tests/test_conformance_anim_subs.py), not a picture."""
    src = tmp_path / "anim.webp"
    frames = [Image.fromarray(np.full((12, 20, 3), 60 * i, np.uint8)) for i in range(3)]
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(UpscaleError, match="anim.webp is an animated picture .* 'out.png' is an image name"):
        run(src, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_result_and_warning_lines_are_not_wrapped_when_piped(tmp_path):
    """Scripts read the result line whole: rich must not wrap it at 80 columns off a terminal."""
    from click.testing import CliRunner

    from vsr.cli import main

    deep = tmp_path / ("a-long-folder-name-" * 4) / ("and-another-one-" * 3)
    deep.mkdir(parents=True)
    src = make_clip(deep / "clip.mp4", frames=2)
    dst = deep / "clip_upscaled_with_a_long_name.mp4"
    res = CliRunner().invoke(main, ["upscale", str(src), "-o", str(dst), "--model", "bicubic", "-q"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "frames in" in line]
    assert len(lines) == 1 and len(lines[0]) > 120 and lines[0].startswith(str(dst))


# -- interlacing and damage -----------------------------------------------------------------------
def _interlaced_clip(ffmpeg, path):
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=0.4",
                    "-vf", "setfield=tff", "-c:v", "mpeg2video", "-flags", "+ildct+ilme", str(path)], check=True)
    return path


def test_interlaced_video_is_named_and_keeps_its_field_order(tmp_path, ffmpeg):
    src = _interlaced_clip(ffmpeg, tmp_path / "in.ts")
    dst = tmp_path / "out.mkv"
    result = run(src, dst)
    assert any("interlaced video (top field first)" in w and "--deinterlace" in w for w in result.warnings)
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.field_order == 2  # AV_FIELD_TT


def test_deinterlace_gives_progressive_frames_with_the_same_timing(tmp_path, ffmpeg):
    src = _interlaced_clip(ffmpeg, tmp_path / "in.ts")
    woven, progressive = tmp_path / "woven.mkv", tmp_path / "progressive.mkv"
    run(src, woven, encode=EncodeOptions(crf=0, preset="ultrafast"))
    result = run(src, progressive, deinterlace=True, encode=EncodeOptions(crf=0, preset="ultrafast"))
    assert not [w for w in result.warnings if "interlaced" in w]
    assert video_times(progressive) == video_times(woven) and len(video_times(src)) == result.frames == 10

    def comb(path):
        """How much neighbouring lines (the two fields) disagree, on average."""
        with av.open(str(path)) as c:
            f = [fr.to_ndarray(format="gray").astype(float) for fr in c.decode(video=0)][5]
        src_lines = f[::4]  # one output line per input line (x4)
        return np.abs(np.diff(src_lines, axis=0)).mean()

    with av.open(str(progressive)) as c:
        assert c.streams.video[0].codec_context.field_order in (0, 1)
    assert comb(progressive) < comb(woven)


def _moving_interlaced_clip(ffmpeg, path):
    """Real interlaced content: a pattern moving at 50 pictures a second, woven two fields to a frame
    by ffmpeg's interlace filter (the top field from one moment, the bottom from the next), FFV1."""
    moving = ("geq=lum='128+100*sin((X+5*N)/6)*sin((Y+3*N)/5)':cb='128+60*sin((X-Y+4*N)/9)'"
              ":cr='128+60*cos((X+Y-5*N)/11)',interlace=scan=tff")
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "nullsrc=s=64x48:r=50:d=0.4,format=yuv420p",
                    "-vf", moving, "-c:v", "ffv1", str(path)], check=True)
    return path


def test_deinterlacing_of_woven_fields_is_ffmpegs_bwdif(tmp_path, ffmpeg):
    """Fields from different moments, woven: the frames vsr hands on are those of ``ffmpeg -vf bwdif``
    (the binary's own filter, as the option promises), not the woven frames nor a smoothing of them."""
    src = _moving_interlaced_clip(ffmpeg, tmp_path / "in.mkv")
    info = probe(src)
    assert info.interlaced

    def planes(frame):
        return np.concatenate([np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width].ravel()
                               for p in frame.planes]).astype(int)

    ours = np.stack([planes(item.frame) for item in read(info, set(), deinterlace=True) if isinstance(item, FrameItem)])
    with av.open(str(src)) as c:
        woven = np.stack([planes(f) for f in c.decode(video=0)])
    raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(src), "-vf", "bwdif=mode=send_frame:parity=auto:deint=interlaced",
                          "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"], capture_output=True, check=True).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(-1, woven.shape[1]).astype(int)
    assert ours.shape == reference.shape == woven.shape == (10, 64 * 48 * 3 // 2)
    assert np.abs(woven - reference).mean() > 5  # the two fields differ: deinterlacing changes the picture
    assert np.abs(ours[1:] - reference[1:]).max() <= 1
    # the first frame has no earlier one: the binary's newer bwdif starts it a little differently
    assert np.abs(ours[0] - reference[0]).mean() < 2


def _damaged_clip(ffmpeg, path):
    """41 frames in Matroska with 16 KiB of garbage in the middle (the demuxer resyncs past it)."""
    good = path.with_name("good.mkv")
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=1.64",
                    "-c:v", "libx264", "-crf", "5", "-g", "10", str(good)], check=True)
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16384] = np.random.default_rng(0).integers(0, 256, 16384, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    good.unlink()
    return path


def test_damaged_input_is_named_with_its_span_and_strict_fails(tmp_path, ffmpeg):
    src = _damaged_clip(ffmpeg, tmp_path / "broken.mkv")
    result = run(src, tmp_path / "out.mkv")
    (message,) = [w for w in result.warnings if "damaged input" in w]
    lost = sum(n for *_span, n in result.gaps)
    assert result.frames + lost in range(39, 44)  # every frame is either written or counted as lost
    assert f"about {lost} frames missing" in message and " s)" in message
    with pytest.raises(UpscaleError, match="damaged input.*--strict"):
        run(src, tmp_path / "strict.mkv", strict=True)
    assert not (tmp_path / "strict.mkv").exists()


def test_damaged_input_in_a_folder_exits_non_zero(tmp_path, ffmpeg):
    from click.testing import CliRunner

    from vsr.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    _damaged_clip(ffmpeg, folder / "broken.mkv")
    make_clip(folder / "fine.mp4", frames=3)
    res = CliRunner().invoke(main, ["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", "bicubic", "-q"])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "damaged" in text and "2 converted, 0 done earlier, skipped, 0 failed, 1 converted from damaged inputs" in text
    assert (tmp_path / "out" / "broken.mkv").exists()


def test_clean_variable_frame_rate_is_not_called_damaged(tmp_path):
    pts = [0, 512, 1024, 3072, 3584, 6144, 6656, 7168, 9728]  # steps of 1, 4 and 5 frames (1/12800)
    src = make_clip(tmp_path / "vfr.mkv", pts=pts, time_base=Fraction(1, 12800))
    result = run(src, tmp_path / "out.mkv")
    assert not result.gaps and not [w for w in result.warnings if "damaged" in w]


# -- HDR10 ----------------------------------------------------------------------------------------
MASTER = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"


def _side_data_lines(ffmpeg, path) -> list[str]:
    """The first frame's HDR side data as the ffmpeg binary's showinfo prints it."""
    res = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path), "-vf", "showinfo", "-frames:v", "1", "-f", "null", "-"],
                         capture_output=True, text=True)
    return sorted({line.split("side data - ", 1)[1] for line in res.stderr.splitlines()
                   if "Parsed_showinfo" in line and ("Mastering display" in line or "Content light" in line)})


@pytest.mark.parametrize("codec", ["libx265", "libx264"])
def test_hdr10_metadata_is_carried(tmp_path, ffmpeg, codec):
    src = tmp_path / "hdr.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25:duration=0.12",
                    "-pix_fmt", "yuv420p10le", "-c:v", "libx265", "-x265-params",
                    f"log-level=error:hdr10=1:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:"
                    f"master-display={MASTER}:max-cll=1000,400", str(src)], check=True)
    expected = _side_data_lines(ffmpeg, src)
    assert len(expected) == 2 and "MaxCLL=1000, MaxFALL=400" in expected[0]
    dst = tmp_path / "out.mkv"
    result = run(src, dst, encode=EncodeOptions(codec=codec, preset="ultrafast"))
    assert not [w for w in result.warnings if "HDR10" in w]
    assert _side_data_lines(ffmpeg, dst) == expected


def test_hdr10_metadata_an_encoder_cannot_take_is_named(tmp_path, ffmpeg):
    src = tmp_path / "hdr.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25:duration=0.08",
                    "-pix_fmt", "yuv420p10le", "-c:v", "libx265", "-x265-params",
                    f"log-level=error:hdr10=1:master-display={MASTER}:max-cll=1000,400", str(src)], check=True)
    result = run(src, tmp_path / "out.mkv", encode=EncodeOptions(codec="ffv1"))
    assert any("HDR10 metadata (mastering display 1000/0.005 cd/m2, MaxCLL 1000, MaxFALL 400) is not written" in w
               for w in result.warnings)


# -- memory ---------------------------------------------------------------------------------------
def test_available_memory_respects_the_cgroup_limit(tmp_path, monkeypatch):
    from vsr import system

    (tmp_path / "cgroup").write_text("0::/\n")
    root = tmp_path / "fs"
    root.mkdir()
    (root / "memory.max").write_text(str(1 << 30))
    (root / "memory.current").write_text(str(384 << 20))
    (root / "memory.stat").write_text(f"anon 1\ninactive_file {128 << 20}\n")
    monkeypatch.setattr(system, "PROC_CGROUP", str(tmp_path / "cgroup"))
    monkeypatch.setattr(system, "CGROUP_ROOT", str(root))
    assert system.available_memory() == (1 << 30) - (384 << 20) + (128 << 20)


def test_cpu_tiles_by_itself_when_a_frame_would_not_fit(monkeypatch):
    import torch

    from conftest import tiny_generator
    from vsr import upscaler as upscaler_module

    frames = np.random.default_rng(0).integers(0, 256, (1, 64, 80, 3), dtype=np.uint8)
    whole = Upscaler(tiny_generator(), "cpu")
    expected = whole.upscale(frames)
    calls = []
    tight = Upscaler(tiny_generator(), "cpu")
    monkeypatch.setattr(upscaler_module, "available_memory", lambda: tight.bytes_per_pixel * 64 * 80 // 4)
    run_once = tight._run
    monkeypatch.setattr(tight, "_run", lambda x: calls.append(tuple(x.shape)) or run_once(x))
    got = tight.upscale(frames)
    assert len(calls) > 1 and all(h * w < 64 * 80 for *_nc, h, w in calls)
    assert (got.int() - expected.int()).abs().max() <= 1  # tiled as whole, to one level's rounding (test_tiles_match_untiled)


def test_an_output_too_large_is_refused_before_any_work(tmp_path, monkeypatch):
    from vsr import pipeline
    from vsr.pipeline import OutputSize

    src = tmp_path / "in.png"
    Image.fromarray(picture()).save(src)
    with pytest.raises(UpscaleError, match="output size 40000x24000 is larger than FFmpeg's encoders accept"):
        run(src, tmp_path / "out.png", size=OutputSize(width=40000))
    monkeypatch.setattr(pipeline, "available_memory", lambda: 50_000)
    with pytest.raises(UpscaleError, match=r"output size 80x48 needs about 0\.0 GiB of memory, 0\.0 GiB is available"):
        run(src, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
