"""Issue 30, rows 1 and 6: Ogg output keeps every frame at its own time and copied audio that plays;
--strict fails on any damage the demuxer or decoder reported, whatever the container.

Files are built with the ffmpeg binary and judged with it (``ffmpeg -f framemd5`` for frame times,
``ffmpeg -v error ... -f null -`` for decoding)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from vsr.model import Bicubic
from vsr.pipeline import UpscaleError, UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler


def run(src, dst, **kw):
    return upscale_file(src, dst, Upscaler(Bicubic(4), "cpu"), UpscaleOptions(**kw))


def has_encoders(ffmpeg: str, *names: str) -> None:
    listed = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    missing = [n for n in names if f" {n} " not in listed]
    if missing:
        pytest.skip(f"this ffmpeg binary has no {', '.join(missing)} encoder")


def frame_times(ffmpeg: str, path: Path) -> list[float]:
    """Presentation times (s) of the decoded video frames, as the ffmpeg binary reads them (no frame
    added or dropped: passthrough)."""
    res = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-f", "framemd5", "-"], capture_output=True, text=True, check=True)
    tb = next(line for line in res.stdout.splitlines() if line.startswith("#tb 0:")).split(":")[1].strip()
    num, den = map(int, tb.split("/"))
    return [round(int(line.split(",")[2]) * num / den, 4) for line in res.stdout.splitlines()
            if line.strip() and not line.startswith("#")]


def rgb_frames(ffmpeg: str, path: Path, width: int, height: int) -> np.ndarray:
    """The decoded video frames as RGB, one per frame the file holds (passthrough), by the ffmpeg binary."""
    res = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, height, width, 3).astype(float)


def decode_errors(ffmpeg: str, path: Path) -> str:
    res = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True)
    return res.stderr.strip()


def audio_samples(ffmpeg: str, path: Path) -> int:
    res = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "s16le", "-ac", "1", "-"],
                         capture_output=True, check=True)
    return len(res.stdout) // 2


# -- row 1: Ogg ---------------------------------------------------------------------------------
@pytest.fixture
def theora_with_gaps(tmp_path, ffmpeg) -> Path:
    """Theora + Vorbis, 30000/1001 fps, whose first picture stays for 10 ticks: libtheora writes the
    repeats as empty packets, so frame 1 is at 0.3003 s (as in the issue)."""
    has_encoders(ffmpeg, "libtheora", "libvorbis")
    src = tmp_path / "in.ogv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30000/1001",
                    "-f", "lavfi", "-i", "sine=sample_rate=44100", "-t", "1",
                    "-vf", "select='not(between(n,1,9))'", "-c:v", "libtheora", "-q:v", "5",
                    "-c:a", "libvorbis", str(src)], check=True)
    return src


def test_ogv_to_ogv_keeps_every_frame_at_its_time_and_the_vorbis_plays(tmp_path, ffmpeg, theora_with_gaps):
    src, dst = theora_with_gaps, tmp_path / "out.ogv"
    before = frame_times(ffmpeg, src)
    assert before[:2] == [0.0, 0.3003]  # the input is what the issue describes
    result = run(src, dst)
    assert result.frames == len(before)
    after = frame_times(ffmpeg, dst)
    assert set(before) <= set(after), f"frames moved: {sorted(set(before) - set(after))}"
    # Ogg cannot hold a gap: the picture before it fills it, one frame per tick, as ffmpeg's does.
    assert after == sorted(after) and np.allclose(np.diff(after), 1001 / 30000, atol=2e-4)
    assert decode_errors(ffmpeg, dst) == ""
    assert abs(audio_samples(ffmpeg, dst) - audio_samples(ffmpeg, src)) <= 1024


def test_ogv_picture_after_a_gap_is_the_right_one(tmp_path, ffmpeg, theora_with_gaps):
    dst = tmp_path / "out.ogv"
    run(theora_with_gaps, dst)
    src_frames = rgb_frames(ffmpeg, theora_with_gaps, 64, 48)  # one per decoded frame
    out = rgb_frames(ffmpeg, dst, 256, 192)
    times = frame_times(ffmpeg, dst)
    at_1 = out[times.index(0.3003)].reshape(48, 4, 64, 4, 3).mean(axis=(1, 3))  # back to the input's size
    assert np.abs(at_1 - src_frames[1]).mean() < np.abs(at_1 - src_frames[0]).mean()


@pytest.mark.parametrize("ext, vcodec, acodec", [("mkv", "libx264", "libvorbis"), ("webm", "libvpx", "libopus"),
                                                 ("mkv", "libx264", "flac")])
def test_xiph_audio_from_matroska_into_ogv_plays_and_frames_keep_their_times(tmp_path, ffmpeg, ext, vcodec, acodec):
    has_encoders(ffmpeg, vcodec, acodec)
    src = tmp_path / f"in.{ext}"
    # Variable rate: frames 2-5 dropped, so the output must fill the gap in Ogg.
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-f", "lavfi",
                    "-i", "sine=sample_rate=48000", "-t", "0.8", "-vf", "select='not(between(n,2,5))'",
                    "-fps_mode", "passthrough", "-c:v", vcodec, "-c:a", acodec, str(src)], check=True)
    dst = tmp_path / "out.ogv"
    result = run(src, dst)
    assert not [w for w in result.warnings if "re-encoded" in w]  # copied: Ogg holds it
    before, after = frame_times(ffmpeg, src), frame_times(ffmpeg, dst)
    assert set(before) <= set(after)
    assert decode_errors(ffmpeg, dst) == ""
    assert abs(audio_samples(ffmpeg, dst) - audio_samples(ffmpeg, src)) <= 1024


def test_theora_gaps_stay_gaps_in_matroska(tmp_path, ffmpeg, theora_with_gaps):
    """Containers with timestamps keep the input's variable rate: no repeated frames."""
    dst = tmp_path / "out.mkv"
    run(theora_with_gaps, dst)
    assert frame_times(ffmpeg, dst) == frame_times(ffmpeg, theora_with_gaps)
    assert decode_errors(ffmpeg, dst) == ""


# -- row 6: damage ------------------------------------------------------------------------------
def _noisy(ffmpeg: str, path: Path) -> Path:
    """2 s of 160x120 noise at 25 fps, lossless H.264 (frames of about 30 KB) + AAC."""
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi",
                    "-i", "sine", "-t", "2", "-vf", "noise=alls=60:allf=t", "-c:v", "libx264", "-crf", "0",
                    "-g", "25", "-c:a", "aac", str(path)], check=True)
    return path


def _garbage(path: Path, at: int, size: int = 16384) -> Path:
    data = bytearray(path.read_bytes())
    data[at:at + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    bad = path.with_name("bad" + path.suffix)
    bad.write_bytes(bytes(data))
    return bad


def _video_packets(path: Path) -> list[tuple[int, int, float]]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(p.pos, p.size, float(p.pts * p.time_base)) for p in c.demux(s) if p.size]


@pytest.mark.parametrize("where", ["inside a frame", "across a block"])
def test_mkv_with_16_kib_of_garbage_fails_under_strict_and_warns_with_the_span(tmp_path, ffmpeg, where):
    good = _noisy(ffmpeg, tmp_path / "good.mkv")
    packets = _video_packets(good)
    pos, size, t = packets[20]  # 0.80 s
    # Inside: the block's header and structure stay, the decoder conceals its errors.  Across:
    # the block's header is hit, the demuxer skips to the next one (one frame lost, no long gap).
    bad = _garbage(good, pos + 4000 if where == "inside a frame" else pos - 200)
    with pytest.raises(UpscaleError, match=r"damaged input.*not written \(--strict\)"):
        run(bad, tmp_path / "strict.mp4", strict=True)
    assert not (tmp_path / "strict.mp4").exists()
    result = run(bad, tmp_path / "out.mp4")
    (message,) = [w for w in result.warnings if "damaged input" in w]
    assert result.gaps and all(a - 0.1 <= t <= b + 0.1 for a, b, _n in result.gaps), (message, t)
    assert f"{result.gaps[0][0]:.2f}" in message
    assert (tmp_path / "out.mp4").exists()
    assert frame_times(ffmpeg, good)  # the clean file reads, and is not called damaged:
    clean = run(good, tmp_path / "clean.mp4", strict=True)
    assert not clean.gaps and not [w for w in clean.warnings if "damaged" in w]


@pytest.mark.parametrize("ext", ["mp4", "ts"])
def test_same_damage_in_mp4_and_ts_is_refused_under_strict_and_written_without(tmp_path, ffmpeg, ext):
    good = _noisy(ffmpeg, tmp_path / f"good.{ext}")
    bad = _garbage(good, good.stat().st_size // 2)
    with pytest.raises(UpscaleError, match=r"damaged input.*--strict"):
        run(bad, tmp_path / "strict.mkv", strict=True)
    result = run(bad, tmp_path / "out.mkv")  # ffmpeg decodes past it: so does vsr, with a warning
    (message,) = [w for w in result.warnings if "damaged input" in w]
    assert " s" in message and result.gaps
    assert decode_errors(ffmpeg, tmp_path / "out.mkv") == ""
    clean = run(good, tmp_path / "clean.mkv", strict=True)
    assert not clean.gaps


def test_clean_files_of_every_kind_are_not_called_damaged(tmp_path, ffmpeg):
    """No false alarm: Matroska with several streams and side data (VP9 with alpha carries it in
    BlockAdditional, beside the block), WebM with Opus, MPEG-TS."""
    has_encoders(ffmpeg, "libvpx-vp9", "libopus")
    builds = {
        "alpha.webm": ["-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25,format=yuva420p", "-f", "lavfi", "-i", "sine",
                       "-t", "1.2", "-c:v", "libvpx-vp9", "-c:a", "libopus"],
        "two.mkv": ["-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-f", "lavfi", "-i", "sine", "-f", "lavfi",
                    "-i", "sine=frequency=880", "-map", "0", "-map", "1", "-map", "2", "-t", "1.2",
                    "-c:v", "libx264", "-c:a", "aac"],
        "clip.ts": ["-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-f", "lavfi", "-i", "sine", "-t", "1.2",
                    "-c:v", "libx264", "-c:a", "aac"],
    }
    for name, args in builds.items():
        src = tmp_path / name
        subprocess.run([ffmpeg, "-v", "error", *args, str(src)], check=True)
        result = run(src, tmp_path / f"out-{name}.mkv", strict=True)
        assert not result.gaps and not [w for w in result.warnings if "damaged" in w], name


@pytest.mark.parametrize("other", ["audio", "subtitle"])
def test_a_clean_mkv_whose_other_streams_outlast_the_picture_is_not_damaged(ffmpeg, tmp_path, other):
    """Matroska's duration is its longest stream's: audio (or a subtitle cue) going on after the
    last picture is no missing frames, and --strict must not refuse it (it did: 'about 101 frames
    missing (1.96-6.02 s)'); the video's own DURATION tag is what the picture is judged against."""
    src = tmp_path / "long_other.mkv"
    extra = (["-f", "lavfi", "-i", "sine=d=6", "-c:a", "aac"] if other == "audio" else
             ["-i", str(_srt(tmp_path)), "-c:s", "srt"])
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=2", *extra,
                    "-c:v", "libx264", str(src)], check=True)
    result = run(src, tmp_path / "out.mkv", strict=True)
    assert result.frames == 50 and not result.gaps and not result.warnings, result.warnings


def _srt(tmp_path: Path) -> Path:
    path = tmp_path / "late.srt"
    path.write_text("1\n00:00:00,500 --> 00:00:01,000\nearly\n\n2\n00:00:20,000 --> 00:00:21,000\nlate\n\n")
    return path


def test_a_gap_of_an_hour_into_ogg_is_refused_not_filled(ffmpeg, tmp_path):
    """Ogg cannot store a gap, so frames are repeated into it; an hour's gap in a 10-frame file
    would be 90,000 frames (it ran past 5 minutes): refused in one line, nothing left behind."""
    has_encoders(ffmpeg, "libtheora")
    src = tmp_path / "gap.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.4", "-vf",
                    "setpts='PTS+if(gte(N,5),3600/TB,0)'", "-fps_mode", "passthrough", "-c:v", "libx264",
                    str(src)], check=True)
    with pytest.raises(UpscaleError, match=r"a gap of 3600 s between two frames .* write \.mkv or \.mp4"):
        run(src, tmp_path / "out.ogv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gap.mkv"]
