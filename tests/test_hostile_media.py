"""Hostile media (issue #28, rows 2 and 5): metadata that inflates to gigabytes, a model output
far larger than the size asked for, a stream whose frames grow part-way.  Each is refused with one
line, before the memory is taken: the CLI runs in a child whose peak RSS is measured (and whose
address space is capped, so that a regression fails rather than takes the machine)."""

from __future__ import annotations

import io
import os
import re
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import vsr
from conftest import ffmpeg_exe
from vsr.decode import DecodeError, InputError, probe, read, read_picture
from vsr.model import Bicubic
from vsr.pipeline import OutputSize, UpscaleError, UpscaleOptions, upscale_file
from vsr.stills import read_still
from vsr.upscaler import Upscaler

REPO = Path(vsr.__file__).resolve().parent.parent
GiB, MiB = 1 << 30, 1 << 20
PEAK_LIMIT = 2 * GiB  # the bound for each hostile input
JPEG_ICC_MAX = 255 * (0xFFFF - 2 - len(b"ICC_PROFILE\0") - 2)  # 255 APP2 segments: the most a JPEG carries
ADDRESS_SPACE = 8 * GiB  # the child's cap: torch alone maps ~3.5 GB; a regression fails here, not the machine


# -- hostile inputs, built cheaply --------------------------------------------------------------
def zlib_of_zeros(mib: int) -> bytes:
    """A valid zlib stream that inflates to ``mib`` MiB of zeros (~1 KB per MiB): one fully
    flushed 1 MiB block repeated, with the right Adler-32 at the end."""
    c = zlib.compressobj(9)
    block = b"\0" * MiB
    head = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    middle = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush(zlib.Z_FINISH)[:-4]
    adler = (((mib * MiB) % 65521) << 16) | 1
    return head + middle * (mib - 1) + end + struct.pack(">I", adler)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with(path: Path, *chunks: bytes, size=(32, 24)) -> Path:
    """A small grey PNG with ``chunks`` inserted after IHDR."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    ihdr_end = 8 + 12 + 13
    path.write_bytes(data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:])
    return path


def icc_bomb(path: Path, mib: int) -> Path:
    return png_with(path, png_chunk(b"iCCP", b"icc\0\0" + zlib_of_zeros(mib)))


def raw_h264(path: Path, parts: list[tuple[int, int, int]]) -> Path:
    """Raw H.264 streams of (width, height, frames) each, one after the other, bytewise: a stream
    whose picture size changes where one ends."""
    data = b""
    for i, (w, h, n) in enumerate(parts):
        part = path.with_name(f"{path.stem}.{i}.h264")
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=gray:size={w}x{h}:rate=25",
                        "-frames:v", str(n), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                        "-f", "h264", str(part)], check=True)
        data += part.read_bytes()
        part.unlink()
    path.write_bytes(data)
    return path


# -- the CLI in a child, measured ---------------------------------------------------------------
def run_cli(tmp_path: Path, *args: str, prelude: str = "") -> tuple[int, str, int]:
    """``vsr ARGS`` in a child process: (exit code, stderr, peak RSS in bytes, from wait4)."""
    script = tmp_path / "child.py"
    script.write_text("import sys\n" + prelude + "from vsr.cli import main\nmain(sys.argv[1:], prog_name='vsr')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    with open(tmp_path / "child.err", "w+b") as err:
        child = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.DEVNULL, stderr=err,
                                 env=env, preexec_fn=cap)
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return child.returncode, err.read().decode(errors="replace"), usage.ru_maxrss * 1024


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory) -> int:
    """Peak RSS of a plain CLI run of a tiny clip (torch and all): what every run costs."""
    folder = tmp_path_factory.mktemp("baseline")
    clip = raw_h264(folder / "plain.h264", [(64, 48, 3)])
    code, stderr, rss = run_cli(folder, "upscale", "--model", "bicubic", "--device", "cpu", str(clip),
                                "-o", str(folder / "plain.mp4"))
    assert code == 0, stderr
    return rss


def upscale(src: Path, dst: Path, **kw):
    return upscale_file(src, dst, Upscaler(Bicubic(4), "cpu"), UpscaleOptions(**kw))


# -- row 2: an ICC profile (or text) that inflates to gigabytes ----------------------------------
def test_a_png_whose_profile_inflates_to_gigabytes_is_refused_in_bounded_memory(tmp_path):
    src = icc_bomb(tmp_path / "bomb.png", 2048)  # 2 MB on disk, 2 GiB inflated (before: 3.6 GB RSS per GiB)
    code, stderr, rss = run_cli(tmp_path, "upscale", "--model", "bicubic", "--device", "cpu", str(src),
                                "-o", str(tmp_path / "out.jpg"))
    line = one_error_line(stderr)
    assert code == 1
    assert "bomb.png" in line and "ICC colour profile (iCCP chunk) inflates to more than 15.9 MiB" in line
    assert rss < PEAK_LIMIT, f"peak RSS {rss / GiB:.2f} GiB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png", "child.err", "child.py"]  # no partial file


def test_the_profile_bomb_is_refused_where_pictures_are_read_for_training_and_folders(tmp_path):
    src = icc_bomb(tmp_path / "bomb.png", 64)
    with pytest.raises(InputError, match=r"bomb\.png'?: its ICC colour profile .* inflates to more than 15\.9 MiB"):
        probe(src)  # what folders (batch) and the pipeline ask first
    with pytest.raises(InputError, match="inflates to more than"):
        read_picture(src)  # what finetune reads a picture with


def test_a_profile_too_large_for_any_output_is_refused_before_a_partial_file_exists(tmp_path):
    """Before: a 200 MB profile written to .jpg raised ValueError (more than 255 APP2 segments) as a
    traceback and left ``.NAME.vsr-partial.jpg`` behind."""
    src = icc_bomb(tmp_path / "in.png", 20)
    with pytest.raises(UpscaleError, match="inflates to more than 15.9 MiB"):
        upscale(src, tmp_path / "out.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_text_chunks_that_inflate_beyond_the_budget_are_refused_too(tmp_path):
    """FFmpeg inflates zTXt into the frame's metadata, one chunk or many (measured: 512 MiB -> 1 GB RSS)."""
    one = png_with(tmp_path / "one.png", png_chunk(b"zTXt", b"Comment\0\0" + zlib_of_zeros(64)))
    many = png_with(tmp_path / "many.png", *[png_chunk(b"zTXt", b"c\0\0" + zlib_of_zeros(8))] * 6)
    after_damage = png_with(tmp_path / "after.png", png_chunk(b"iCCP", b"x" * 100), png_chunk(b"IHDR", b"short"),
                            png_chunk(b"zTXt", b"Comment\0\0" + zlib_of_zeros(64)))  # damage first, then the bomb
    for src in (one, many, after_damage):
        with pytest.raises(InputError, match=r"compressed metadata inflates to more than 32\.0 MiB in all \(the last: a zTXt"):
            probe(src)


def test_a_large_real_profile_is_still_carried_into_a_jpeg(tmp_path):
    """The cap is what a JPEG can hold (255 segments): a profile that size still round-trips."""
    profile = np.random.default_rng(0).integers(0, 256, JPEG_ICC_MAX, dtype=np.uint8).tobytes()
    src = png_with(tmp_path / "in.png", png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(profile, 1)))
    assert read_still(src).icc == profile
    upscale(src, tmp_path / "out.jpg")
    assert read_still(tmp_path / "out.jpg").icc == profile


def test_a_webp_profile_larger_than_the_cap_is_dropped_with_a_warning(tmp_path):
    """Not compressed, so FFmpeg holds no more than the file's own bytes: the picture is upscaled
    and the profile, too large to carry, is left out and said."""
    src = tmp_path / "in.webp"
    Image.fromarray(np.full((24, 32, 3), 100, np.uint8)).save(src, lossless=True, icc_profile=b"\1" * (JPEG_ICC_MAX + 2))
    result = upscale(src, tmp_path / "out.png")
    assert f"ICC colour profile of {JPEG_ICC_MAX + 2:,} bytes is not copied (vsr takes at most {JPEG_ICC_MAX:,})" in result.warnings
    assert read_still(tmp_path / "out.png").icc is None


# -- row 5: the model's full-scale output, and frames that grow part-way --------------------------
FAKE_CGROUP = """
import vsr.system as system
system.PROC_CGROUP, system.CGROUP_ROOT = {cgroup!r}, {root!r}
"""


def test_a_model_output_far_larger_than_the_size_asked_for_is_refused_in_bounded_memory(tmp_path):
    """The review's 6000x6000 PNG with --width 640 and a x4 model: the model's 24000x24000 float
    output (8.6 GiB) comes before the resize (before: 8.2 GB peak). Refused whatever memory is free."""
    Image.fromarray(np.full((6000, 6000, 3), 90, np.uint8)).save(tmp_path / "big.png")
    code, stderr, rss = run_cli(tmp_path, "upscale", "--model", "bicubic", "--device", "cpu", str(tmp_path / "big.png"),
                                "--width", "640", "-o", str(tmp_path / "out.png"))
    line = one_error_line(stderr)
    assert code == 1
    assert "the model's output is 24000x24000 before it is resized to 640x640: 8.6 GiB held whole" in line, line
    assert "--scale 2" in line
    assert rss < PEAK_LIMIT, f"peak RSS {rss / GiB:.2f} GiB"
    assert not (tmp_path / "out.png").exists() and not any(".vsr-partial" in p.name for p in tmp_path.iterdir())


def test_a_model_output_that_does_not_fit_the_memory_free_is_refused_in_bounded_memory(tmp_path):
    """1600x1200 -> --width 640 with a x4 model: 6400x4800 before the resize (0.5 GiB, under the
    cap); with 256 MiB available it is refused before any work (before: it ran, 4.7 GB RSS for 4000x3000)."""
    Image.fromarray(np.full((1200, 1600, 3), 90, np.uint8)).save(tmp_path / "big.png")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "self").write_text("0::/\n")
    (cgroup / "memory.max").write_text(str(256 * MiB))
    (cgroup / "memory.current").write_text("0")
    (cgroup / "memory.stat").write_text("inactive_file 0\n")
    code, stderr, rss = run_cli(tmp_path, "upscale", "--model", "bicubic", "--device", "cpu", str(tmp_path / "big.png"),
                                "--width", "640", "-o", str(tmp_path / "out.png"),
                                prelude=FAKE_CGROUP.format(cgroup=str(cgroup / "self"), root=str(cgroup)))
    line = one_error_line(stderr)
    assert code == 1
    assert "the model's output is 6400x4800 before it is resized to 640x480" in line and "--tile" in line
    assert re.search(r"needs about 0\.5 GiB of memory, 0\.\d+ GiB is available", line), line
    assert rss < PEAK_LIMIT, f"peak RSS {rss / GiB:.2f} GiB"
    assert not (tmp_path / "out.png").exists() and not any(".vsr-partial" in p.name for p in tmp_path.iterdir())


def test_the_memory_check_counts_the_model_output_not_only_the_final_size(tmp_path, monkeypatch):
    from vsr import pipeline

    src = tmp_path / "in.png"
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(src)
    # The final 64x48 needs 50 KB; the model's 640x480 before it, 4.7 MB more.
    monkeypatch.setattr(pipeline, "available_memory", lambda: 2 * MiB)
    with pytest.raises(UpscaleError, match="the model's output is 640x480 before it is resized to 64x48"):
        upscale(src, tmp_path / "out.png", size=OutputSize(width=64))
    monkeypatch.setattr(pipeline, "available_memory", lambda: 64 * MiB)
    assert upscale(src, tmp_path / "out.png", size=OutputSize(width=64)).frames == 1


@pytest.fixture(scope="module")
def growing_h264(tmp_path_factory) -> Path:
    """64x48 for two frames, then 8192x8192 (100 MB a frame in YUV, 200 MB in RGB)."""
    return raw_h264(tmp_path_factory.mktemp("grow") / "grows.h264", [(64, 48, 2), (8192, 8192, 3)])


def test_a_frame_larger_than_planned_is_refused_where_it_is_decoded(growing_h264):
    info = probe(growing_h264)
    assert (info.width, info.height) == (64, 48)
    items = read(info, set())
    got = [next(items), next(items)]
    assert [(f.frame.width, f.frame.height) for f in got] == [(64, 48)] * 2
    with pytest.raises(DecodeError, match=r"the picture size changes at frame 2 \(64x48 -> 8192x8192\)") as refused:
        next(items)
    # Refused by the decoder itself (FFmpeg's max_pixels), before it allocated a frame: with frame
    # threads it would otherwise make one 100 MB frame per thread (17 on 16 cores) before the first
    # came out to be checked (+180 MB measured with 3 threads).
    assert isinstance(refused.value.__cause__, av.FFmpegError)


def test_a_frame_smaller_than_planned_is_refused_by_name_too(tmp_path):
    src = raw_h264(tmp_path / "shrinks.h264", [(96, 64, 2), (48, 32, 2)])
    items = read(probe(src), set())
    next(items), next(items)
    with pytest.raises(DecodeError, match=r"the picture size changes at frame 2 \(96x64 -> 48x32\)"):
        next(items)


def test_a_stream_that_grows_part_way_is_refused_in_bounded_memory(tmp_path, growing_h264, baseline_rss):
    """Before: the size check ran in the model stage, after the decode threads had read ahead (here
    1.5 GB RSS for three 8192x8192 frames; 7.6 GB in the issue's longer stream)."""
    code, stderr, rss = run_cli(tmp_path, "upscale", "--model", "bicubic", "--device", "cpu", str(growing_h264),
                                "-o", str(tmp_path / "out.mp4"))
    line = one_error_line(stderr)
    assert code == 1 and "the picture size changes at frame 2 (64x48 -> 8192x8192)" in line
    assert rss < PEAK_LIMIT, f"peak RSS {rss / GiB:.2f} GiB"
    # What is left over a plain run is FFmpeg's own look at the stream when it is opened (its
    # stream-info probe decodes a few frames, ~300 MB here), not a frame of vsr's.
    assert rss - baseline_rss < 500 * MiB, f"{(rss - baseline_rss) / MiB:.0f} MiB over a plain run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.err", "child.py"]


def test_frames_for_training_stop_where_a_stream_grows(growing_h264, tmp_path):
    """`vsr finetune` reads frames through the same size limit: the grown frames are never decoded."""
    from vsr import data

    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "grows.h264").write_bytes(growing_h264.read_bytes())
    sources, skipped = data.extract_frames(folder, tmp_path / "cache", 8, None, min_size=32)
    assert not sources and len(skipped) == 1 and "grows.h264" in skipped[0], (sources, skipped)
    # refused by the decoder at the switch (without the limit the grown frames were decoded, then
    # dropped only as flat pictures)
    assert "no usable frames" not in skipped[0], skipped
