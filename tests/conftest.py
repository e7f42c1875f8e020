"""Shared fixtures: tiny models, clips made with PyAV, and the independent ffmpeg binary."""

from __future__ import annotations

import os
import re
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import pytest
import torch

from vsr.model import Generator, GeneratorConfig
from vsr.weights import save_generator

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "bbb_sample.mp4"

@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    """Tests run with torch on 2 intra-op threads (as on CI's 2 cores, also on bigger machines),
    set for the session and given back after it, not at import."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def ffmpeg_exe() -> str:
    """The independent ffmpeg binary (imageio-ffmpeg's); the test is skipped where there is none
    (the GPU machine has no room to carry it)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"needs the ffmpeg binary (imageio-ffmpeg): {exc}")


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return ffmpeg_exe()


def unwritable_folder() -> Path:
    """A folder nobody may create files in, root included, without chmod (which root ignores): a
    process's /proc entry (procfs refuses new names there whatever the caller's capabilities)."""
    folder = Path("/proc/1")
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("no folder here that even this user cannot write (/proc/1 is writable or missing)")
    return folder


def tiny_generator(scale: int = 4, seed: int = 0, **kw) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(scale=scale, blocks=kw.pop("blocks", 1), channels=kw.pop("channels", 8), **kw)
    model = Generator(cfg)
    # Make the untrained network do something visible (the bicubic-skip tail starts at zero).
    with torch.no_grad():
        model.tail.weight.normal_(0, 0.01)
    return model.eval()


@pytest.fixture(scope="session")
def gop_clip(tmp_path_factory, ffmpeg) -> Path:
    """300 frames of moving pictures as a broadcast recording has them: MPEG-2 in MPEG-TS, in open
    groups of 25 (the two B-frames after each keyframe in decode order are shown before it and refer
    to the group before), with audio."""
    path = tmp_path_factory.mktemp("gop") / "gop.ts"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=25:duration=12",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=12", "-c:v", "mpeg2video", "-g", "25",
                    "-bf", "2", "-q:v", "4", "-c:a", "aac", "-shortest", str(path)], check=True)
    with av.open(str(path)) as c:
        packets = [(p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]
    assert any(k and packets[i + 1][0] < pts for i, (pts, k) in enumerate(packets[1:-1], 1))  # open groups
    return path


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    path = tmp_path / "tiny_x4.safetensors"
    save_generator(path, tiny_generator(batch_norm=False, global_skip="bicubic"), training={"steps": 0})
    return path


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """A moving, textured RGB test picture (smooth enough to survive 4:2:0 chroma)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin((x + 3 * index) / 13.0)
    g = 128 + 100 * np.cos((y - 2 * index) / 11.0)
    b = 128 + 90 * np.sin((x + y + index) / 17.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def make_clip(
    path: Path,
    frames: int = 8,
    size: tuple[int, int] = (48, 32),
    rate: Fraction = Fraction(25),
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    audio: int = 0,
    pix_fmt: str = "yuv420p",
    colorspace: str | None = None,
    codec: str = "libx264",
    sar: Fraction | None = None,
    rotation: int | None = None,
    metadata: dict | None = None,
    subtitles: bool = False,
    chapters: bool = False,
) -> Path:
    """Write a short clip with PyAV.  ``pts`` (in ``time_base``) gives a variable frame rate."""
    width, height = size
    tb = time_base or Fraction(1, int(rate) * 512 if rate.denominator == 1 else 90000)
    with av.open(str(path), "w") as out:
        if metadata:
            out.metadata.update(metadata)
        opts = {"crf": "10", "preset": "ultrafast"} if codec == "libx264" else {}
        vs = out.add_stream(codec, rate=rate, options=opts)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        vs.time_base = tb
        vs.codec_context.time_base = tb
        if sar:
            vs.codec_context.sample_aspect_ratio = sar
        tag = {"bt709": 1, "bt601": 6}.get(colorspace or "")
        if tag:
            vs.codec_context.colorspace = tag
            vs.codec_context.color_primaries = tag
            vs.codec_context.color_trc = tag
            vs.codec_context.color_range = 1
        if rotation:
            vs.set_display_rotation(rotation)
        audio_streams = []
        for i in range(audio):
            a = out.add_stream("aac", rate=48000 if i == 0 else 44100)
            a.layout = "stereo" if i == 0 else "mono"
            a.metadata["language"] = ["eng", "fra"][i % 2]
            a.metadata["title"] = f"track {i}"
            audio_streams.append(a)
        if chapters:
            out.set_chapters([
                {"id": 1, "start": 0, "end": 1000, "time_base": Fraction(1, 1000), "metadata": {"title": "one"}},
                {"id": 2, "start": 1000, "end": 2000, "time_base": Fraction(1, 1000), "metadata": {"title": "two"}},
            ])
        stamps = list(pts) if pts is not None else [round(i / rate / tb) for i in range(frames)]
        for i, p in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            if tag:
                frame = frame.reformat(format=pix_fmt, dst_colorspace=1 if tag == 1 else 5, dst_color_range=1)
                frame.colorspace, frame.color_range = tag, 1
            frame.pts, frame.time_base = p, tb
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        duration = float(stamps[-1] * tb) + float(1 / rate)
        for a in audio_streams:
            samples_total = int(duration * a.rate)
            t0 = 0
            while t0 < samples_total:
                n = min(1024, samples_total - t0)
                t = (np.arange(t0, t0 + n) / a.rate).astype(np.float32)
                chans = 2 if a.layout.name == "stereo" else 1
                data = np.stack([np.sin(2 * np.pi * 440 * t * (c + 1)) * 0.3 for c in range(chans)]).astype(np.float32)
                af = av.AudioFrame.from_ndarray(data, format="fltp", layout=a.layout.name)
                af.sample_rate, af.pts, af.time_base = a.rate, t0, Fraction(1, a.rate)
                for packet in a.encode(af):
                    out.mux(packet)
                t0 += n
            for packet in a.encode(None):
                out.mux(packet)
    if subtitles:
        _add_subtitles(path)
    return path


def grey_clip_with_audio(path: Path, codec: str, layout: str, audio: Sequence[av.AudioFrame], rate: int = 48000) -> Path:
    """Five grey 32x32 H.264 frames and one audio stream of ``codec`` made from ``audio`` frames
    (for audio a container refuses or an encoder cannot take)."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        a = out.add_stream(codec, rate=rate)
        a.layout = layout
        pictures = [av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24") for i in range(5)]
        for i, f in enumerate(pictures):
            f.pts = i
        for af in audio:
            af.sample_rate = rate
        for stream, frames in ((vs, pictures), (a, list(audio))):
            for frame in [*frames, None]:  # None: flush
                out.mux(stream.encode(frame))
    return path


def _add_subtitles(path: Path) -> None:
    """Mux a two-cue German subtitle track in with the ffmpeg binary (PyAV cannot encode text subtitles)."""
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:00,100\nHallo\n\n2\n00:00:00,120 --> 00:00:00,200\nWelt\n\n")
    tmp = path.with_name("sub_" + path.name)
    codec = "mov_text" if path.suffix in (".mp4", ".mov") else "subrip"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-i", str(srt), "-map", "0",
                    "-map", "1", "-c", "copy", "-c:s", codec, "-metadata:s:s:0", "language=deu", str(tmp)], check=True)
    tmp.replace(path)
    srt.unlink()


def ffmpeg_packets(ffmpeg: str, path: Path, stream: str) -> list[tuple[str, ...]]:
    """Per-packet (dts, pts, duration, size, checksum) of one stream, read by the ffmpeg binary."""
    res = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-c", "copy", "-f", "framecrc", "-"],
        capture_output=True, text=True, check=True,
    )
    rows = []
    for line in res.stdout.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        rows.append(tuple(parts[1:6]))
    return rows


def ffmpeg_frames(ffmpeg: str, path: Path) -> np.ndarray:
    """All video frames as RGB, decoded by the ffmpeg binary (N, H, W, 3); the matrix and range are
    ffmpeg's own choice from the file's tags, chroma is upsampled at full precision."""
    probe = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", "0:v:0", "-sws_flags",
                            "bicubic+accurate_rnd+full_chroma_int", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                           capture_output=True, check=True)
    info = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    m = re.search(r"Video: .*?, (\d+)x(\d+)", info.stderr)
    w, h = int(m.group(1)), int(m.group(2))
    data = np.frombuffer(probe.stdout, dtype=np.uint8)
    return data.reshape(-1, h, w, 3)


def pyav_video_pts(path: Path) -> tuple[list[int], Fraction]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
        return pts, Fraction(s.time_base)
