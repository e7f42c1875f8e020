"""The command line behaves as ffmpeg and Real-ESRGAN users expect: exit codes, early checks,
-y, -o DIR/, --json, --encoder-opt, --tag, -q, plain progress lines in logs, no-op options named."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import av
import pytest
from click.testing import CliRunner

from conftest import make_clip
from vsr.cli import main
from vsr.progress import eta_text


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "in.mp4", frames=4)


@pytest.mark.parametrize("args, message", [
    (["--model", "bicubic", "--weights", "x.safetensors"], "--weights does not apply to --model bicubic"),
    (["--scale", "2", "--weights", "vsr_x4_psnr"], "is a x4 model, but x2 was asked for"),
    (["--preset", "ultrafastt", "--model", "bicubic"], "the libx264 encoder refuses these settings"),
    (["--encoder-opt", "nosuchoption=1", "--model", "bicubic"], "the libx264 encoder has no option 'nosuchoption'"),
    (["--encoder-opt", "novalue", "--model", "bicubic"], "expected KEY=VALUE"),
    (["--outscale", "2", "--width", "100", "--model", "bicubic"], "not both"),
])
def test_usage_mistakes_exit_2_and_write_nothing(tmp_path, clip, args, message):
    res = invoke("upscale", clip, "-o", tmp_path / "out.mp4", *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not (tmp_path / "out.mp4").exists()


def test_patch_size_not_a_multiple_of_16_is_a_usage_error(tmp_path):
    res = invoke("finetune", tmp_path, "-o", tmp_path / "w.safetensors", "--patch-size", "30")
    assert res.exit_code == 2 and "multiple of 16" in res.output


def test_missing_and_text_inputs_fail_at_once_without_torch(tmp_path):
    """In a fresh interpreter: the error comes before torch is imported (seconds saved)."""
    (tmp_path / "readme.txt").write_text("hello\n")
    code = ("import sys; from vsr.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', e.code)\n")
    for name, expected in (("nothere.mp4", "does not exist"), ("readme.txt", "expected a video or image file, got")):
        res = subprocess.run([sys.executable, "-c", code, "upscale", name], capture_output=True, text=True, cwd=tmp_path)
        assert res.stdout.split() == ["NO-TORCH", "1"], res.stdout + res.stderr
        assert expected in res.stderr and "readme_x4" not in res.stderr


def test_y_replaces_and_o_dir_takes_the_default_name(tmp_path, clip):
    folder = tmp_path / "out"
    folder.mkdir()
    assert invoke("upscale", clip, "-o", f"{folder}/", "--model", "bicubic", "-q").exit_code == 0
    assert (folder / "in_x4.mp4").exists()
    res = invoke("upscale", clip, "-o", folder, "--model", "bicubic", "-q")
    assert res.exit_code == 1 and "exists" in res.output
    assert invoke("upscale", clip, "-o", folder, "--model", "bicubic", "-q", "-y").exit_code == 0
    res = invoke("upscale", clip, "-o", f"{tmp_path}/missing/", "--model", "bicubic", "-q")  # a folder, by its /
    assert res.exit_code == 1 and "missing' does not exist" in " ".join(res.output.split())


def test_folder_without_output_writes_beside_it(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=2)
    res = invoke("upscale", folder, "--model", "bicubic", "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "clips_x4" / "a.mp4").exists()


def test_json_result_per_file(tmp_path, clip):
    res = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--model", "bicubic", "--json", "-q")
    (record,) = json.loads(res.stdout)
    assert record["status"] == "done" and record["frames"] == 4 and record["output"].endswith("o.mp4")
    assert set(record) == {"input", "output", "frames", "seconds", "fps", "resumed", "warnings", "status", "error"}
    assert record["resumed"] == 0
    folder = tmp_path / "f"
    folder.mkdir()
    make_clip(folder / "good.mp4", frames=2)
    (folder / "bad.mp4").write_bytes(b"\0" * 100)
    res = invoke("upscale", folder, "-o", tmp_path / "fo", "--model", "bicubic", "--json", "-q")
    records = {r["input"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)}
    assert res.exit_code == 1
    assert records["good.mp4"]["status"] == "done" and records["bad.mp4"]["status"] == "failed"
    assert records["bad.mp4"]["error"]


def test_encoder_options_reach_the_encoder_and_hevc_gets_hvc1(tmp_path, clip):
    out = tmp_path / "o.mp4"
    res = invoke("upscale", clip, "-o", out, "--model", "bicubic", "--encoder-opt", "g=2", "--encoder-opt",
                 "x264-params=bframes=0", "-q")
    assert res.exit_code == 0, res.output
    with av.open(str(out)) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert keys == [True, False, True, False]  # a keyframe every 2 frames: g=2 was applied
    hevc = tmp_path / "h.mp4"
    assert invoke("upscale", clip, "-o", hevc, "--model", "bicubic", "--codec", "libx265", "-q").exit_code == 0
    with av.open(str(hevc)) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"


def test_quiet_silences_x265_and_warnings_but_not_errors(tmp_path, clip):
    res = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(clip), "-o", str(tmp_path / "h.mkv"), "--model",
                          "bicubic", "--codec", "libx265", "--preset", "ultrafast", "--recursive", "-q"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(clip), "-o", str(tmp_path / "h.mkv"), "--model",
                          "bicubic", "-q"], capture_output=True, text=True)
    assert res.returncode == 1 and "exists" in res.stderr


def test_options_that_do_nothing_are_named(tmp_path, clip):
    res = invoke("upscale", clip, "-o", tmp_path / "o.mkv", "--model", "bicubic", "--codec", "ffv1",
                 "--preset", "slow", "--crf", "10", "--shard", "1/2")
    text = " ".join(res.output.split())
    assert res.exit_code == 0
    assert "--preset does nothing with the ffv1 encoder" in text
    assert "--crf does nothing with the ffv1 encoder" in text
    assert "--shard applies to folder inputs" in text


def test_progress_off_a_terminal_is_a_plain_line_at_an_interval(tmp_path, clip, monkeypatch):
    from vsr.progress import FileProgress

    monkeypatch.setattr(FileProgress, "LOG_INTERVAL", 0.0)
    res = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--model", "bicubic")
    lines = [line for line in res.output.splitlines() if line.startswith("in.mp4: ")]
    assert lines and lines[-1].startswith("in.mp4: 4/4 frames (100.0 %)") and "fps, ETA 0:00:00" in lines[-1]


def test_eta_is_the_running_average():
    """Two frames of 25 in 8 s: 92 s left (a short window's spike would say seconds)."""
    assert eta_text(2, 25, 8.0) == "0:01:32"
    assert eta_text(0, 25, 8.0) == "-:--:--" and eta_text(5, None, 1.0) == "-:--:--"
    assert eta_text(1, 3601, 1.0) == "1:00:00"


def test_errors_are_quick(tmp_path):
    began = time.perf_counter()
    res = invoke("upscale", tmp_path / "nothere.mp4")
    assert res.exit_code == 1 and time.perf_counter() - began < 30  # the real check is the no-torch test above


def test_rerun_with_other_settings_keeps_and_reports_them_then_redoes_on_request(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=2)
    out = tmp_path / "out"
    base = ["upscale", folder, "-o", out, "--model", "bicubic", "--preset", "ultrafast"]
    assert invoke(*base, "-q").exit_code == 0
    made = (out / "a.mp4").stat().st_mtime_ns
    res = invoke(*base, "-q")  # the same settings: done earlier
    assert "0 converted, 1 done earlier, skipped, 0 failed" in " ".join(res.output.split())
    res = invoke(*base, "--crf", "30")  # another encoder setting: kept, and said so
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "made with other settings" in text and "1 kept though made with other settings" in text
    assert (out / "a.mp4").stat().st_mtime_ns == made
    res = invoke(*base, "--crf", "30", "--redo-changed", "-q")
    assert "1 converted" in " ".join(res.output.split()) and (out / "a.mp4").stat().st_mtime_ns != made
    res = invoke(*base, "--crf", "30", "-q")  # now recorded with crf 30
    assert "1 done earlier" in " ".join(res.output.split())
    # Outputs with nothing recorded (an older vsr) count as done, as before.
    (out / ".vsr-settings.json").unlink()
    assert "1 done earlier" in " ".join(invoke(*base, "--crf", "5", "-q").output.split())


def test_start_and_duration_cut_every_stream_and_start_at_zero(tmp_path):
    src = make_clip(tmp_path / "in.mkv", frames=50, audio=1, chapters=True)
    dst = tmp_path / "part.mkv"
    res = invoke("upscale", src, "-o", dst, "--model", "bicubic", "-ss", "0.4", "-t", "00:00.8", "-q")
    assert res.exit_code == 0, res.output
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        times = [round(float(f.pts * f.time_base), 3) for f in c.decode(v)]
        c.seek(0)
        audio = [float(p.pts * p.time_base) for p in c.demux(c.streams.audio[0]) if p.pts is not None]
        chapters = [(float(ch["start"] * ch["time_base"]), float(ch["end"] * ch["time_base"])) for ch in c.chapters()]
    assert times == [round(i * 0.04, 3) for i in range(20)]
    assert audio and min(audio) >= 0 and max(audio) < 0.8
    assert chapters == [(0.0, 0.6), (0.6, 0.8)]
    res = invoke("upscale", src, "-o", tmp_path / "none.mkv", "--model", "bicubic", "-ss", "10", "-q")
    assert res.exit_code == 1 and "no frames between 10 s and the end" in res.output
    assert invoke("upscale", src, "-o", tmp_path / "x.mkv", "-t", "1:xx").exit_code == 2
