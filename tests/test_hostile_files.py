"""Hostile files and folders (issue #28, rows 6-9): a temporary file cannot be aimed at a user's file,
folders cannot contain each other, concurrent shards keep every record, a bad record is set aside."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_clip, pattern
from vsr.batch import MANIFEST
from vsr.cli import main

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(main, ["upscale", *map(str, args), "--model", "bicubic", "--preset", "ultrafast"],
                              catch_exceptions=False)


def tree_bytes(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: a file's bytes, a link's target (links are not followed)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def video_shape(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.width, s.height, sum(1 for _ in c.decode(s))


def tiny_png(path: Path, index: int = 0) -> Path:
    av.VideoFrame.from_ndarray(pattern(index, 6, 4), format="rgb24").save(str(path))
    return path


# -- row 6: the temporary file cannot be aimed -----------------------------------------------------
def test_a_link_planted_at_the_old_temporary_name_is_neither_followed_nor_removed(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    victim = tmp_path / "thesis.txt"
    victim.write_bytes(b"four years of work\n" * 100)
    before = victim.read_bytes()
    link = tmp_path / ".x.vsr-partial.mp4"
    link.symlink_to(victim)
    r = invoke(clip, "-o", tmp_path / "x.mp4", "-q")
    assert r.exit_code == 0, r.output
    assert victim.read_bytes() == before  # byte-identical
    assert link.is_symlink() and os.readlink(link) == str(victim)  # someone else's name: left alone
    out = tmp_path / "x.mp4"
    assert not out.is_symlink() and video_shape(out) == (192, 128, 4)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # as any new file, not the temporary's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.vsr-partial.mp4", "clip.mp4", "thesis.txt", "x.mp4"]


def test_an_input_named_like_the_old_temporary_is_read_not_truncated(tmp_path):
    src = make_clip(tmp_path / ".holiday.vsr-partial.mp4", frames=3)
    before = src.read_bytes()
    r = invoke(src, "-o", tmp_path / "holiday.mp4", "-q")
    assert r.exit_code == 0, r.output
    assert src.exists() and src.read_bytes() == before
    assert video_shape(tmp_path / "holiday.mp4") == (192, 128, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".holiday.vsr-partial.mp4", "holiday.mp4"]


def test_a_folder_run_leaves_a_users_file_at_the_old_temporary_name_alone(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "top.mp4", frames=2)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "notes.txt"
    victim.write_bytes(b"mine\n")
    (out / ".top.vsr-partial.mp4").write_bytes(b"a user's own hidden file\n")
    (out / ".top2.vsr-partial.mp4").symlink_to(victim)
    r = invoke(src, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert (out / ".top.vsr-partial.mp4").read_bytes() == b"a user's own hidden file\n"
    assert (out / ".top2.vsr-partial.mp4").is_symlink() and victim.read_bytes() == b"mine\n"
    assert video_shape(out / "top.mp4") == (192, 128, 2)
    # Nothing of vsr's own is left behind but the record of settings.
    assert sorted(p.name for p in out.iterdir()) == [".top.vsr-partial.mp4", ".top2.vsr-partial.mp4", MANIFEST, "top.mp4"]


def test_written_whole_creates_its_temporary_exclusively_and_cleans_up(tmp_path):
    from vsr.files import written_whole

    dst = tmp_path / "model.safetensors"
    seen = []
    with written_whole(dst, mode=0o644) as tmp:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.suffix == ".safetensors" and tmp.name.startswith(".model.")
        assert tmp.exists() and not tmp.is_symlink() and tmp != dst
        tmp.write_bytes(b"weights")
    assert dst.read_bytes() == b"weights" and not seen[0].exists()
    with written_whole(dst) as tmp2:
        assert tmp2 != seen[0]  # a fresh, unpredictable name each time
        tmp2.write_bytes(b"x")
    with pytest.raises(RuntimeError):
        with written_whole(tmp_path / "other.bin") as tmp3:
            tmp3.write_bytes(b"half")
            raise RuntimeError("power cut")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# -- row 7: folders that contain each other --------------------------------------------------------
@pytest.mark.parametrize("case", ["input_inside_output", "output_inside_input", "same", "through_a_link"])
def test_folders_containing_each_other_are_refused_and_nothing_is_written(tmp_path, case):
    o = tmp_path / "o"
    (o / "in").mkdir(parents=True)
    tiny_png(o / "in" / "a.png")
    tiny_png(o / "in" / "b.png", 1)
    src, dst = {
        "input_inside_output": (o / "in", o),
        "output_inside_input": (o / "in", o / "in" / "up"),
        "same": (o / "in", o / "in"),
        "through_a_link": (o / "in", tmp_path / "link"),
    }[case]
    (tmp_path / "link").symlink_to(o)
    before = tree_bytes(tmp_path)
    r = invoke(src, "-o", dst, "-r", "-y")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "Traceback" not in r.output and "error" in text.lower() and "inside" in text
    assert len(r.output.strip().splitlines()) <= 3  # one line (rich may wrap it)
    assert tree_bytes(tmp_path) == before


# -- row 8: concurrent shards keep every record ----------------------------------------------------
def test_two_concurrent_shard_processes_lose_no_record_and_report_no_false_failure(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for k in range(60):
        tiny_png(src / f"p{k:02d}.png", k)
    cmd = [sys.executable, "-m", "vsr", "upscale", str(src), "-o", str(out), "--model", "bicubic", "--json", "-q"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path) for i in (1, 2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr + stdout
        records = json.loads(stdout)
        assert len(records) == 30 and {r["status"] for r in records} == {"done"}, stdout
    entries = json.loads((out / MANIFEST).read_text())
    assert sorted(entries) == [f"p{k:02d}.png" for k in range(60)]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *entries])  # no temporary or lock left


_RECORDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vsr.batch import record_settings
    folder, gate, who = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    (gate / who).touch()
    while len(list(gate.iterdir())) < 2:  # both started: record at the same time
        time.sleep(0.001)
    for k in range(150):
        record_settings(folder / f"{who}{k:03d}.mp4", "vsr 1; settings " + who)
""")


def test_two_processes_recording_at_once_keep_every_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    folder, gate = tmp_path / "out", tmp_path / "gate"
    folder.mkdir()
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _RECORDER, str(folder), str(gate), who], stderr=subprocess.PIPE,
                              text=True, env=env) for who in "ab"]
    for p in procs:
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    entries = json.loads((folder / MANIFEST).read_text())
    assert len(entries) == 300 and entries["a000.mp4"] == "vsr 1; settings a"
    assert [p.name for p in folder.iterdir()] == [MANIFEST]


# -- row 9: a record that is not a record ----------------------------------------------------------
@pytest.mark.parametrize("content", [b"[]", b"{not json", b"\xff\xfe\x00garbage", b'{"a.png": 3}', b"null",
                                     b"[" * 200000, None],
                         ids=["list", "not-json", "binary", "other-values", "null", "deep", "fifo"])
def test_a_malformed_record_is_reported_and_kept_aside_and_outputs_still_count(tmp_path, content):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for k in range(3):
        tiny_png(src / f"p{k}.png", k)
    if content is None:
        os.mkfifo(out / MANIFEST)  # opening it to read would wait for a writer for ever
    else:
        (out / MANIFEST).write_bytes(content)
    class Hung(BaseException):  # (not an OSError: vsr must not take it for an unreadable record)
        pass

    def hung(*_):
        raise Hung("vsr hung on the record")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)  # a hang fails the test
    try:
        r = invoke(src, "-o", out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "3 converted, 0 done earlier, skipped, 0 failed" in text, text
    assert "warning" in text and MANIFEST in text and "Traceback" not in r.output
    aside = [p for p in out.iterdir() if p.name.startswith(MANIFEST + ".bad-")]
    assert len(aside) == 1  # kept, not replaced
    assert stat.S_ISFIFO(aside[0].lstat().st_mode) if content is None else aside[0].read_bytes() == content
    assert sorted(json.loads((out / MANIFEST).read_text())) == ["p0.png", "p1.png", "p2.png"]
    r = invoke(src, "-o", out, "-q")
    assert r.exit_code == 0 and "0 converted, 3 done earlier, skipped, 0 failed" in " ".join(r.output.split())


def test_a_failed_record_does_not_turn_a_written_file_into_a_failure(tmp_path, monkeypatch):
    from vsr import batch
    from vsr.model import Bicubic
    from vsr.pipeline import UpscaleOptions
    from vsr.report import BatchReporter
    from vsr.upscaler import Upscaler

    src = tmp_path / "in"
    src.mkdir()
    tiny_png(src / "a.png")
    warnings = []

    class Listen(BatchReporter):
        def for_job(self, job):
            reporter = super().for_job(job)
            reporter.warn = warnings.append
            return reporter

    def broken(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(batch, "record_settings", broken)
    jobs = batch.plan(src, tmp_path / "out", batch.BatchOptions(settings="s"), 4)
    done = batch.run(jobs, [Upscaler(Bicubic(4))], UpscaleOptions(model_id="m"), Listen())
    assert [j.status for j in done] == ["done"] and (tmp_path / "out" / "a.png").exists()
    assert any("Permission denied" in w for w in warnings), warnings
