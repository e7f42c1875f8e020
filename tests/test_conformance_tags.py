"""Issue 30 rows 2-5 (every real file, second pass): HDR10 side data with the default encoder, the
limited-range tag, stream titles and container tags, each judged by the ffmpeg binary."""

from __future__ import annotations

import re
import subprocess

import pytest

from vsr.encode import EncodeOptions
from vsr.model import Bicubic
from vsr.pipeline import UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler

MASTER = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"


def run(src, dst, **kw):
    return upscale_file(src, dst, Upscaler(Bicubic(4), "cpu"), UpscaleOptions(**kw))


def ffmpeg_run(ffmpeg, *args):
    subprocess.run([ffmpeg, "-y", "-v", "error", *map(str, args)], check=True)


def has_encoder(ffmpeg, name) -> bool:
    out = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return f" {name} " in out


def dump(ffmpeg, path) -> str:
    return subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                          encoding="utf-8").stderr


def tags(ffmpeg, path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The container's tags and each stream's, as ``ffmpeg -i`` prints them."""
    container: dict[str, str] = {}
    streams: list[dict[str, str]] = []
    target = None
    for line in dump(ffmpeg, path).splitlines():
        if line.startswith("Input #"):
            target = container
        elif re.match(r"\s+Stream #\d+:\d+", line):
            streams.append({})
            target = streams[-1]
        elif re.match(r"\s+(Duration|Chapters?|Program)\b", line):
            target = None
        elif target is not None and ":" in line and not line.strip().startswith("Metadata:"):
            key, _, value = line.strip().partition(":")
            target[key.strip().lower()] = value.strip()
    return container, streams


def video_line(ffmpeg, path) -> str:
    return next(line for line in dump(ffmpeg, path).splitlines() if "Video:" in line)


# -- row 2: HDR10 with the default encoder --------------------------------------------------------
@pytest.fixture
def hdr_mkv(tmp_path, ffmpeg):
    if not has_encoder(ffmpeg, "libx265"):
        pytest.skip("the ffmpeg binary has no libx265")
    src = tmp_path / "hdr.mkv"
    ffmpeg_run(ffmpeg, "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25:duration=0.16", "-pix_fmt", "yuv420p10le",
               "-c:v", "libx265", "-x265-params",
               f"log-level=error:hdr10=1:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:"
               f"master-display={MASTER}:max-cll=1000,400", src)
    return src


def hdr_side_data_per_frame(ffmpeg, path) -> list[set[str]]:
    """For every decoded frame, the kinds of HDR10 side data the ffmpeg binary finds on it."""
    res = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path), "-vf", "showinfo", "-f", "null", "-"],
                         capture_output=True, text=True)
    frames: list[set[str]] = []
    for line in res.stderr.splitlines():
        if "Parsed_showinfo" not in line:
            continue
        if re.search(r"\bn:\s*\d+", line):
            frames.append(set())
        elif frames and "side data - Mastering display" in line:
            frames[-1].add("mastering display")
        elif frames and "side data - Content light level" in line:
            frames[-1].add("content light level")
    return frames


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_hdr10_kept_in_every_frame_with_the_default_encoder(tmp_path, ffmpeg, hdr_mkv, ext):
    assert hdr_side_data_per_frame(ffmpeg, hdr_mkv) == [{"mastering display", "content light level"}] * 4
    dst = tmp_path / f"out.{ext}"
    result = run(hdr_mkv, dst, encode=EncodeOptions(preset="ultrafast", quiet=True))
    assert not [w for w in result.warnings if "HDR10" in w]
    assert hdr_side_data_per_frame(ffmpeg, dst) == [{"mastering display", "content light level"}] * 4
    assert "yuv420p10le(tv, bt2020nc/bt2020/smpte2084" in video_line(ffmpeg, dst)


def test_hdr10_into_a_container_without_an_hdr10_encoder_is_one_warning(tmp_path, ffmpeg, hdr_mkv):
    result = run(hdr_mkv, tmp_path / "out.webm", encode=EncodeOptions(quiet=True))
    lines = [w for w in result.warnings if "HDR10" in w]
    assert len(lines) == 1
    assert "the webm container holds no encoder that is" in lines[0] and "--codec libx265" in lines[0]


# -- row 3: limited range -------------------------------------------------------------------------
@pytest.mark.parametrize("source, ext", [("h264.mkv", "mp4"), ("h264.mkv", "mov"), ("h264.mkv", "avi"),
                                         ("ffv1.mkv", "mp4"), ("mpeg2.ts", "ts"), ("mpeg2.ts", "mkv")])
def test_limited_range_tag_is_kept(tmp_path, ffmpeg, source, ext):
    src = tmp_path / source
    codec = {"h264.mkv": "libx264", "ffv1.mkv": "ffv1", "mpeg2.ts": "mpeg2video"}[source]
    ffmpeg_run(ffmpeg, "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25:duration=0.2", "-c:v", codec,
               "-pix_fmt", "yuv420p", "-color_range", "tv", src)
    assert "yuv420p(tv" in video_line(ffmpeg, src)  # range only: no matrix, primaries or transfer
    dst = tmp_path / f"out.{ext}"
    run(src, dst)
    assert "yuv420p(tv" in video_line(ffmpeg, dst)


# -- rows 4 and 5: stream titles and container tags -----------------------------------------------
@pytest.fixture
def tagged_mkv(tmp_path, ffmpeg):
    src = tmp_path / "tagged.mkv"
    ffmpeg_run(ffmpeg, "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25:duration=0.12",
               "-f", "lavfi", "-i", "sine=duration=0.12", "-f", "lavfi", "-i", "sine=f=880:duration=0.12",
               "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264", "-c:a:0", "aac", "-c:a:1", "libvorbis",
               "-metadata:s:v:0", "title=Main video", "-metadata:s:a:0", "title=Original stereo AAC",
               "-metadata:s:a:1", "title=Narração (Vorbis)", "-metadata", "title=Film title",
               "-metadata", "com.android.version=14", src)
    return src


TITLES = ["Main video", "Original stereo AAC", "Narração (Vorbis)"]


@pytest.mark.parametrize("ext", ["mp4", "mov"])
def test_stream_titles_are_kept_in_mp4(tmp_path, ffmpeg, tagged_mkv, ext):
    dst = tmp_path / f"out.{ext}"
    result = run(tagged_mkv, dst)
    _, streams = tags(ffmpeg, dst)
    # Where ffmpeg writes a title (udta 'name') and in the handler name that players and ffprobe show.
    assert [s.get("name") for s in streams] == TITLES
    assert [s.get("handler_name") for s in streams] == TITLES
    assert not [w for w in result.warnings if "stream title" in w]


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_stream_titles_read_from_mp4_stay_titles(tmp_path, ffmpeg, tagged_mkv, ext):
    mp4 = tmp_path / "first.mp4"
    run(tagged_mkv, mp4)
    dst = tmp_path / f"again.{ext}"
    run(mp4, dst)
    _, streams = tags(ffmpeg, dst)
    assert [s.get("title" if ext == "mkv" else "name") for s in streams] == TITLES


@pytest.mark.parametrize("ext", ["ts", "mpg", "flv"])
def test_stream_titles_a_container_cannot_hold_are_one_warning(tmp_path, ffmpeg, tagged_mkv, ext):
    result = run(tagged_mkv, tmp_path / f"out.{ext}")
    lines = [w for w in result.warnings if "stream title(s) not kept" in w]
    assert len(lines) == 1
    assert all(repr(t) in lines[0] for t in TITLES)


def test_custom_container_tag_into_mp4_is_named(tmp_path, ffmpeg, tagged_mkv):
    dst = tmp_path / "out.mp4"
    result = run(tagged_mkv, dst)
    container, _ = tags(ffmpeg, dst)
    assert container.get("title") == "Film title" and "com.android.version" not in container
    lines = [w for w in result.warnings if "container tag" in w]
    assert len(lines) == 1
    assert "com.android.version" in lines[0].lower() and "use_metadata_tags" in lines[0] and "title" not in lines[0].split(" not kept")[0]


@pytest.mark.parametrize("ext", ["mkv", "ogv"])
def test_custom_container_tag_is_kept_where_the_container_can(tmp_path, ffmpeg, tagged_mkv, ext):
    dst = tmp_path / f"out.{ext}"
    result = run(tagged_mkv, dst)
    container, streams = tags(ffmpeg, dst)
    held = container if ext == "mkv" else streams[0]  # Ogg: in each stream's comments
    assert held.get("com.android.version") == "14"
    assert not [w for w in result.warnings if "container tag" in w or "stream title" in w]
