"""`vsr upscale` options and outcomes through the command line (issue #33 item 3): each checked by
its effect on the file written, read back by the ffmpeg binary where it can be."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from conftest import ffmpeg_frames, ffmpeg_packets, make_clip
from test_real_files import _damaged_clip, _interlaced_clip  # the same damaged and interlaced clips
from vsr.cli import main


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def stream_line(ffmpeg: str, path) -> str:
    """The ffmpeg binary's description of the first video stream."""
    info = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return next(line for line in info.splitlines() if "Video:" in line)


@pytest.fixture
def clip_4(tmp_path):
    return make_clip(tmp_path / "in.mp4", frames=4)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, ffmpeg):
    return _damaged_clip(ffmpeg, tmp_path_factory.mktemp("damaged") / "broken.mkv")


def test_strict_refuses_a_damaged_input_and_without_it_the_file_is_written(tmp_path, damaged, ffmpeg):
    strict = tmp_path / "strict.mkv"
    r = invoke("upscale", damaged, "-o", strict, "--model", "bicubic", "--preset", "ultrafast", "--strict")
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "damaged input: about" in text and "not written (--strict)" in text, text
    assert not strict.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    loose = tmp_path / "loose.mkv"
    r = invoke("upscale", damaged, "-o", loose, "--model", "bicubic", "--preset", "ultrafast")
    assert r.exit_code == 0, r.output
    lost = int(re.search(r"warning: damaged input: about (\d+) frames missing", " ".join(r.output.split())).group(1))
    written = len(ffmpeg_packets(ffmpeg, loose, "v:0"))
    assert lost > 0 and written + lost in range(39, 44), (written, lost)  # every frame written or counted lost


def test_json_says_damaged_for_a_damaged_input(tmp_path, damaged, ffmpeg):
    out = tmp_path / "o.mkv"
    r = CliRunner().invoke(main, ["upscale", str(damaged), "-o", str(out), "--model", "bicubic", "--preset",
                                  "ultrafast", "--json", "-q"], catch_exceptions=False)
    (record,) = json.loads(r.stdout)
    assert record["status"] == "damaged" and record["error"] is None, record
    assert record["frames"] == len(ffmpeg_packets(ffmpeg, out, "v:0")) < 41  # what was written, counted by ffmpeg
    assert any("damaged input: about" in w for w in record["warnings"]), record
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.mkv").write_bytes(damaged.read_bytes())
    make_clip(folder / "fine.mp4", frames=2)
    r = CliRunner().invoke(main, ["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", "bicubic", "--preset",
                                  "ultrafast", "--json", "-q"], catch_exceptions=False)
    assert r.exit_code == 1  # a folder with a damaged input exits 1, as with the table
    status = {rec["input"].rsplit("/", 1)[-1]: rec["status"] for rec in json.loads(r.stdout)}
    assert status == {"broken.mkv": "damaged", "fine.mp4": "done"}


def test_deinterlace_through_the_cli(tmp_path, ffmpeg):
    src = _interlaced_clip(ffmpeg, tmp_path / "in.ts")
    kept, progressive = tmp_path / "kept.mkv", tmp_path / "progressive.mkv"
    r = invoke("upscale", src, "-o", kept, "--model", "bicubic", "--preset", "ultrafast", "--scale", "2")
    assert r.exit_code == 0 and "interlaced video (top field first)" in " ".join(r.output.split()), r.output
    assert "top first" in stream_line(ffmpeg, kept)
    r = invoke("upscale", src, "-o", progressive, "--model", "bicubic", "--preset", "ultrafast", "--scale", "2",
               "--deinterlace")
    assert r.exit_code == 0 and "interlaced" not in r.output, r.output
    line = stream_line(ffmpeg, progressive)
    assert "top first" not in line and "bottom first" not in line, line

    def comb(path):
        """How much neighbouring source lines (the two fields) disagree, on average (x2: every other line)."""
        return np.abs(np.diff(ffmpeg_frames(ffmpeg, path)[5, ::2].astype(float), axis=0)).mean()

    assert comb(progressive) < comb(kept)  # the fields made one picture (bwdif: deterministic)


def test_tag_sets_the_codec_tag(tmp_path, clip_4, ffmpeg):
    plain, tagged = tmp_path / "plain.mp4", tmp_path / "tagged.mp4"
    for out, extra in ((plain, []), (tagged, ["--tag", "avc3"])):
        r = invoke("upscale", clip_4, "-o", out, "--model", "bicubic", "--preset", "ultrafast", "-q", *extra)
        assert r.exit_code == 0, r.output
    assert "(avc1 /" in stream_line(ffmpeg, plain)
    assert "(avc3 /" in stream_line(ffmpeg, tagged), stream_line(ffmpeg, tagged)


def test_webm_output_defaults_to_vp9(tmp_path, clip_4, ffmpeg):
    out = tmp_path / "o.webm"
    r = invoke("upscale", clip_4, "-o", out, "--model", "bicubic", "-q")
    assert r.exit_code == 0, r.output
    assert "Video: vp9" in stream_line(ffmpeg, out)
    assert len(ffmpeg_packets(ffmpeg, out, "v:0")) == 4


@pytest.mark.parametrize("name", ["x.gif", "x.apng"])
def test_an_output_format_vsr_only_reads_is_refused(tmp_path, clip_4, name):
    r = invoke("upscale", clip_4, "-o", tmp_path / name, "--model", "bicubic")
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output and text.count("error:") == 1, r.output
    assert f"vsr reads .{name[2:]} but does not write it; use .mp4" in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_fewer_frames_than_the_header_says_is_a_warning(tmp_path, ffmpeg):
    """An MP4 cut with `-ss 0.2 -c copy`: the header counts 12 samples, the edit list shows 7 (no
    damage: the frames are hidden by design). The written count is said, and is ffmpeg's count."""
    full = make_clip(tmp_path / "full.mp4", frames=12)
    cut = tmp_path / "cut.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-ss", "0.2", "-i", str(full), "-c", "copy", str(cut)], check=True)
    out = tmp_path / "o.mkv"
    r = invoke("upscale", cut, "-o", out, "--model", "bicubic", "--preset", "ultrafast")
    assert r.exit_code == 0, r.output
    written = len(ffmpeg_packets(ffmpeg, out, "v:0"))
    assert written < 12
    assert f"warning: cut.mp4: wrote {written} frames, the input says it has 12" in " ".join(r.output.split()), r.output
    assert "damaged" not in r.output
    r = invoke("upscale", full, "-o", tmp_path / "full.mkv", "--model", "bicubic", "--preset", "ultrafast")
    assert r.exit_code == 0 and "the input says it has" not in r.output, r.output  # a whole file: no warning


@pytest.mark.parametrize("height, matrix, other", [(720, "bt709", "bt470bg"), (576, "bt470bg", "bt709")])
def test_an_untagged_source_is_read_with_the_matrix_players_guess_by_size(tmp_path, ffmpeg, height, matrix, other):
    """No colour tags: BT.709 from 720 lines up, BT.601 below, as players guess. An RGB output (FFV1
    bgr0) takes no matrix on the way out, so it must be the ffmpeg binary's decode of the source
    with that matrix, resized."""
    src = make_clip(tmp_path / "untagged.mp4", frames=2, size=(32, height))
    assert "bt709" not in stream_line(ffmpeg, src) and "smpte170m" not in stream_line(ffmpeg, src)
    dst = tmp_path / "rgb.mkv"
    r = invoke("upscale", src, "-o", dst, "--model", "bicubic", "--scale", "2", "--codec", "ffv1", "--pix-fmt", "bgr0",
               "-q")
    assert r.exit_code == 0, r.output
    got = torch.from_numpy(ffmpeg_frames(ffmpeg, dst).copy()).permute(0, 3, 1, 2).float() / 255

    def reference(m):
        raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(src), "-vf",
                              f"scale=in_color_matrix={m}:in_range=tv:out_range=pc:flags=bicubic+accurate_rnd+full_chroma_int",
                              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
        lr = torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(-1, height, 32, 3).copy()).permute(0, 3, 1, 2)
        return F.interpolate(lr.float() / 255, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)

    def psnr(a, b):
        return float(10 * torch.log10(1 / F.mse_loss(a, b)))

    right, wrong = psnr(got, reference(matrix)), psnr(got, reference(other))
    assert right >= 40.0 and right > wrong + 5, (right, wrong)


def test_clear_cache_with_no_cache(tmp_path):
    missing = tmp_path / "never-made"
    r = CliRunner().invoke(main, ["clear-cache", "--cache-dir", str(missing)], catch_exceptions=False)
    assert r.exit_code == 0 and f"{missing}: no cache" in " ".join(r.output.split()), r.output
    assert not missing.exists()  # not made in order to be emptied
    r = CliRunner().invoke(main, ["clear-cache"], env={"XDG_CACHE_HOME": str(tmp_path / "xdg")}, catch_exceptions=False)
    assert r.exit_code == 0 and "no cache" in r.output, r.output
    assert list(tmp_path.iterdir()) == []  # neither cache folder made
