"""Issue 30, rows 7-9: animated pictures (APNG, animated WebP) are videos with a video's default
output, and text subtitles a container cannot hold are converted to the text format it holds (as
ffmpeg's ``-c:s mov_text`` / ``-c:s srt`` do), with the ffmpeg binary as the judge."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vsr.cli import main
from vsr.decode import Span
from vsr.encode import EncodeOptions
from vsr.model import Bicubic
from vsr.pipeline import UpscaleError, UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler

Image = pytest.importorskip("PIL.Image")


def run(src, dst, **kw):
    return upscale_file(src, dst, Upscaler(Bicubic(4), "cpu"), UpscaleOptions(**kw))


def cli(*args: str):
    return CliRunner().invoke(main, ["upscale", *args, "--model", "bicubic", "--quiet"], catch_exceptions=False)


def ffmpeg_times(ffmpeg: str, path: Path) -> list[float]:
    """Each video frame's presentation time, as the ffmpeg binary decodes and stamps it."""
    res = subprocess.run([ffmpeg, "-hide_banner", "-nostats", "-i", str(path), "-map", "0:v:0", "-vf", "showinfo",
                          "-f", "null", "-"], capture_output=True, text=True, check=True)
    return [round(float(t), 4) for t in re.findall(r"pts_time:(-?[0-9.]+)", res.stderr)]


def ffmpeg_duration(ffmpeg: str, path: Path) -> float:
    res = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    h, m, s = re.search(r"Duration: (\d+):(\d+):([0-9.]+)", res.stderr).groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def ffmpeg_streams(ffmpeg: str, path: Path) -> list[str]:
    res = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return re.findall(r"Stream #0:\d+.*?: (\w+: \w+)", res.stderr)


def ffmpeg_rgb(ffmpeg: str, path: Path, size: tuple[int, int]) -> np.ndarray:
    """Every frame, decoded by the ffmpeg binary and scaled to ``size`` (w, h), as RGB."""
    res = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", "0:v:0", "-vf", f"scale={size[0]}:{size[1]}",
                          "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, size[1], size[0], 3)


# -- row 7: APNG ------------------------------------------------------------------------------
def make_apng(ffmpeg: str, path: Path, alpha: bool = False) -> Path:
    """Six 48x32 frames at variable times (0, 0.1, 0.2, 0.8, 0.9, 1.0 s), looping, as ffmpeg writes APNG."""
    chain = "testsrc=size=48x32:rate=10,setpts='PTS+if(gte(N,3),5,0)'"
    if alpha:
        chain += ",format=rgba,colorchannelmixer=aa=0.5"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", chain, "-frames:v", "6", "-plays", "0", "-f", "apng",
                    str(path)], check=True)
    return path


def test_apng_without_output_gets_a_video_name_and_keeps_every_frame_time(tmp_path, ffmpeg):
    src = make_apng(ffmpeg, tmp_path / "anim.png")
    result = cli(str(src))
    assert result.exit_code == 0, result.output
    dst = tmp_path / "anim_x4.mp4"
    assert dst.exists() and not (tmp_path / "anim_x4.png").exists()
    assert ffmpeg_times(ffmpeg, dst) == ffmpeg_times(ffmpeg, src) == [0.0, 0.1, 0.2, 0.8, 0.9, 1.0]
    assert ffmpeg_rgb(ffmpeg, dst, (48, 32)).shape[0] == 6


def test_apng_named_apng_is_read_as_gif_is(tmp_path, ffmpeg):
    src = make_apng(ffmpeg, tmp_path / "anim.apng")
    result = cli(str(src))
    assert result.exit_code == 0, result.output
    assert ffmpeg_times(ffmpeg, tmp_path / "anim_x4.mp4") == [0.0, 0.1, 0.2, 0.8, 0.9, 1.0]
    with pytest.raises(UpscaleError, match=r"vsr reads .apng but does not write it; use .mp4"):
        run(src, tmp_path / "out.apng")


def test_apng_in_a_folder_is_written_as_a_video(tmp_path, ffmpeg):
    folder = tmp_path / "in"
    folder.mkdir()
    make_apng(ffmpeg, folder / "anim.png")
    Image.new("RGB", (16, 12), (200, 30, 30)).save(folder / "still.png")
    out = tmp_path / "out"
    result = cli(str(folder), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["anim.mp4", "still.png"]
    assert len(ffmpeg_times(ffmpeg, out / "anim.mp4")) == 6
    result = cli(str(folder), "-o", str(tmp_path / "out2"), "--ext", "mkv")  # --ext is for videos: the APNG is one
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out2").iterdir() if not p.name.startswith(".")) == ["anim.mkv", "still.png"]


def test_apng_to_a_picture_name_is_refused_as_an_animation(tmp_path, ffmpeg):
    src = make_apng(ffmpeg, tmp_path / "anim.png")
    with pytest.raises(UpscaleError, match=r"anim.png is an animated picture .* 'out.png' is an image name; use a video"):
        run(src, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_transparent_apng_says_its_transparency_is_dropped(tmp_path, ffmpeg):
    src = make_apng(ffmpeg, tmp_path / "alpha.png", alpha=True)
    result = run(src, tmp_path / "out.mp4")
    assert result.frames == 6
    assert any("transparency is dropped" in w for w in result.warnings), result.warnings


# -- row 9: animated WebP -----------------------------------------------------------------------
COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20), (20, 250, 250)]
DURATIONS = [100, 200, 50, 300, 100]  # ms


def make_webp(path: Path, mode: str = "RGB") -> Path:
    frames = [Image.new(mode, (48, 32), c if mode == "RGB" else (*c, 255)) for c in COLOURS]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=DURATIONS, loop=0, lossless=True)
    return path


def test_animated_webp_is_upscaled_as_a_video_with_each_frame_at_its_own_time(tmp_path, ffmpeg):
    src = make_webp(tmp_path / "anim.webp")
    result = cli(str(src))
    assert result.exit_code == 0, result.output
    dst = tmp_path / "anim_x4.mp4"
    assert dst.exists()
    assert ffmpeg_times(ffmpeg, dst) == [0.0, 0.1, 0.3, 0.35, 0.65]  # variable rate: each frame's own duration
    assert ffmpeg_duration(ffmpeg, dst) == pytest.approx(0.75, abs=0.011)  # the last one's included
    frames = ffmpeg_rgb(ffmpeg, dst, (48, 32)).astype(int)
    assert frames.shape == (5, 32, 48, 3)
    for frame, colour in zip(frames, COLOURS):
        assert np.abs(frame[8:-8, 8:-8] - colour).max() <= 12  # each frame is its own picture, in order


def test_animated_webp_into_matroska_and_a_part(tmp_path, ffmpeg):
    src = make_webp(tmp_path / "anim.webp", mode="RGBA")
    result = run(src, tmp_path / "out.mkv", span=Span(0.3))
    assert ffmpeg_times(ffmpeg, tmp_path / "out.mkv") == [0.0, 0.05, 0.35]  # from 0.3 s, shifted to 0 as ffmpeg -ss
    assert result.frames == 3
    assert not any("transparency" in w for w in result.warnings)  # opaque: nothing is lost


def test_animated_webp_in_a_folder_and_to_a_picture_name(tmp_path, ffmpeg):
    folder = tmp_path / "in"
    folder.mkdir()
    make_webp(folder / "anim.webp")
    out = tmp_path / "out"
    result = cli(str(folder), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert len(ffmpeg_times(ffmpeg, out / "anim.mp4")) == 5
    with pytest.raises(UpscaleError, match=r"anim.webp is an animated picture .* 'x.webp' is an image name"):
        run(folder / "anim.webp", tmp_path / "x.webp")


# -- row 8: text subtitles into containers that hold another text format -----------------------
ASS = r"""[Script Info]
ScriptType: v4.00+
PlayResX: 384
PlayResY: 288

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, Bold, Italic, Alignment, MarginL, MarginR, MarginV
Style: Default,Arial,16,&Hffffff,0,0,2,10,10,10

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:00.00,0:00:00.20,Default,,0,0,0,,{\i1}Hallo{\i0} Welt
Dialogue: 0,0:00:00.30,0:00:00.50,Default,,0,0,0,,{\pos(10,10)}Zweite\NZeile
"""
SRT = "1\n00:00:00,000 --> 00:00:00,200\n<i>Hello</i> world\n\n2\n00:00:00,300 --> 00:00:00,550\nSecond & line\nmore\n\n"


@pytest.fixture
def subtitled(tmp_path, ffmpeg):
    """An MKV with an ASS and an SRT track, and an MP4 with a mov_text track (0.8 s of H.264)."""
    (tmp_path / "s.ass").write_text(ASS)
    (tmp_path / "s.srt").write_text(SRT)
    video = ["-f", "lavfi", "-i", "testsrc=size=48x32:rate=25:duration=0.8"]
    mkv, mp4 = tmp_path / "subs.mkv", tmp_path / "subs.mp4"
    subprocess.run([ffmpeg, "-v", "error", *video, "-i", str(tmp_path / "s.ass"), "-i", str(tmp_path / "s.srt"),
                    "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264", "-c:s:0", "ass", "-c:s:1", "srt",
                    "-metadata:s:s:0", "language=deu", "-metadata:s:s:1", "language=eng", str(mkv)], check=True)
    subprocess.run([ffmpeg, "-v", "error", *video, "-i", str(tmp_path / "s.srt"), "-map", "0", "-map", "1",
                    "-c:v", "libx264", "-c:s", "mov_text", "-metadata:s:s:0", "language=eng", str(mp4)], check=True)
    return mkv, mp4


def subtitle_packets(ffmpeg: str, path: Path, index: int) -> list[tuple[float, float, str, str]]:
    """(time s, duration s, size, checksum) of each packet of subtitle track ``index``, read by the ffmpeg binary."""
    res = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", f"0:s:{index}", "-c", "copy",
                          "-f", "framecrc", "-"], capture_output=True, text=True, check=True)
    tb = re.search(r"#tb 0: (\d+)/(\d+)", res.stdout)
    scale = int(tb.group(1)) / int(tb.group(2))
    rows = [[p.strip() for p in line.split(",")] for line in res.stdout.splitlines() if line and not line.startswith("#")]
    return [(round(int(r[2]) * scale, 4), round(int(r[3]) * scale, 4), r[4], r[5]) for r in rows]


def as_srt(ffmpeg: str, path: Path, index: int) -> str:
    return subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", f"0:s:{index}", "-f", "srt", "-"],
                          capture_output=True, text=True, check=True).stdout


def converted_with_reference(ffmpeg: str, src: Path, dst: Path, reference: Path, codec: str):
    """vsr's output of ``src`` at ``dst``, and ffmpeg's own subtitle conversion (``-c:s codec``,
    the video copied) at ``reference`` to compare it with."""
    result = run(src, dst)
    subprocess.run([ffmpeg, "-v", "error", "-i", str(src), "-map", "0", "-c:v", "copy", "-c:s", codec,
                    str(reference)], check=True)
    return result


def test_ass_and_srt_in_mkv_become_mov_text_in_mp4_as_ffmpeg_converts_them(tmp_path, ffmpeg, subtitled):
    mkv, _ = subtitled
    dst, reference = tmp_path / "out.mp4", tmp_path / "ffmpeg.mp4"
    result = converted_with_reference(ffmpeg, mkv, dst, reference, "mov_text")
    assert ffmpeg_streams(ffmpeg, dst) == ["Video: h264", "Subtitle: mov_text", "Subtitle: mov_text"]
    for k in (0, 1):  # every cue, at its time, for its duration, byte for byte what ffmpeg -c:s mov_text writes
        assert subtitle_packets(ffmpeg, dst, k) == subtitle_packets(ffmpeg, reference, k)
    assert as_srt(ffmpeg, dst, 0) == ("1\n00:00:00,000 --> 00:00:00,200\n<i>Hallo</i> Welt\n\n"
                                      "2\n00:00:00,300 --> 00:00:00,500\nZweite\nZeile\n\n")
    assert as_srt(ffmpeg, dst, 1) == SRT
    styled = [w for w in result.warnings if "stream #1" in w]
    assert len(styled) == 1 and "converted to mov_text" in styled[0] and "positions" in styled[0]
    assert any("stream #2" in w and "converted to mov_text" in w for w in result.warnings)
    assert not any("not copied" in w for w in result.warnings)
    langs = subprocess.run([ffmpeg, "-hide_banner", "-i", str(dst)], capture_output=True, text=True).stderr
    assert "(deu): Subtitle" in langs and "(eng): Subtitle" in langs


def test_mov_text_in_mp4_becomes_srt_in_mkv_and_webvtt_in_webm(tmp_path, ffmpeg, subtitled):
    _, mp4 = subtitled
    dst, reference = tmp_path / "out.mkv", tmp_path / "ffmpeg.mkv"
    result = converted_with_reference(ffmpeg, mp4, dst, reference, "srt")
    assert ffmpeg_streams(ffmpeg, dst) == ["Video: h264", "Subtitle: subrip"]
    assert subtitle_packets(ffmpeg, dst, 0) == subtitle_packets(ffmpeg, reference, 0)
    assert as_srt(ffmpeg, dst, 0) == SRT
    assert [w for w in result.warnings if "subtitle" in w] == [
        "stream #1 (subtitle mov_text): the matroska container cannot hold mov_text; converted to subrip"]
    webm = tmp_path / "out.webm"
    run(mp4, webm, encode=EncodeOptions(codec="libvpx-vp9", crf=40, preset=None))
    assert ffmpeg_streams(ffmpeg, webm) == ["Video: vp9", "Subtitle: webvtt"]
    assert as_srt(ffmpeg, webm, 0) == SRT


def test_converted_subtitles_follow_a_part(tmp_path, ffmpeg, subtitled):
    mkv, _ = subtitled
    dst = tmp_path / "part.mp4"
    run(mkv, dst, span=Span(0.25))
    assert as_srt(ffmpeg, dst, 1) == "1\n00:00:00,050 --> 00:00:00,300\nSecond & line\nmore\n\n"


def test_bitmap_subtitles_are_not_converted():
    """A DVD/PGS/DVB track is pictures: no text format takes it, and the warning stays as it was."""
    import av

    from vsr.encode import _text_subtitle_target

    with av.open("/dev/null", "w", format="mp4") as out:
        assert _text_subtitle_target(out, "dvd_subtitle") is None
        assert _text_subtitle_target(out, "hdmv_pgs_subtitle") is None
        assert _text_subtitle_target(out, "subrip") == "mov_text"
    with av.open("/dev/null", "w", format="mpegts") as out:  # MPEG-TS holds no text format
        assert _text_subtitle_target(out, "subrip") is None


def test_an_animated_webp_claiming_a_huge_canvas_is_refused_before_pillow_opens_it(tmp_path, monkeypatch):
    """A 192-byte animated WebP whose header claims 12000x12000 took 2.7 GB in Pillow before the
    output-size check refused it; the canvas is checked from the header first."""
    from PIL import Image as PILImage

    from vsr.decode import InputError, probe

    frames = [PILImage.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)) for i in range(3)]
    src = tmp_path / "huge.webp"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    data = bytearray(src.read_bytes())
    at = data.find(b"VP8X") + 8  # flags (4 bytes), then canvas width - 1 and height - 1 (3 bytes each)
    data[at + 4:at + 7] = (11999).to_bytes(3, "little")
    data[at + 7:at + 10] = (11999).to_bytes(3, "little")
    src.write_bytes(bytes(data))
    monkeypatch.setattr(PILImage, "open", lambda *a, **k: pytest.fail("Pillow opened the file"))
    with pytest.raises(InputError, match="an animated WebP of 12000x12000; vsr reads animations of up to 4096x4096"):
        probe(src)
