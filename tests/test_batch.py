"""Folders: the right files converted, skipped and reported; resume; shards; bad files."""

from __future__ import annotations

import os
from pathlib import Path

import av
import pytest
from click.testing import CliRunner

from conftest import make_clip
from vsr import batch
from vsr.batch import MANIFEST
from vsr.cli import main
from vsr.model import Bicubic
from vsr.pipeline import UpscaleOptions
from vsr.upscaler import Upscaler


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "in"
    (root / "season1").mkdir(parents=True)
    (root / "season2" / "extras").mkdir(parents=True)
    make_clip(root / "season1" / "e1.mp4", frames=3)
    make_clip(root / "season1" / "e2.mkv", frames=4)
    make_clip(root / "season2" / "e3.mp4", frames=5)
    make_clip(root / "season2" / "extras" / "x.mov", frames=2)
    make_clip(root / "top.mp4", frames=2)
    (root / "season2" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    (root / "season1" / "notes.txt").write_text("episode list\n")
    return root


def files(folder: Path) -> list[str]:
    """The media files in ``folder`` (not vsr's record of the settings each was made with)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def invoke(*args):
    return CliRunner().invoke(main, ["upscale", *map(str, args), "--model", "bicubic", "--preset", "ultrafast", "-q"],
                              catch_exceptions=False)


def test_recursive_batch_mirrors_tree_and_reports_bad_file(tree, tmp_path):
    out = tmp_path / "out"
    r = invoke(tree, "-o", out, "--recursive")
    assert r.exit_code == 1, r.output  # one file failed
    assert files(out) == ["season1/e1.mp4", "season1/e2.mkv", "season2/e3.mp4", "season2/extras/x.mov", "top.mp4"]
    text = " ".join(r.output.split())
    assert "5 converted, 0 done earlier, skipped, 1 failed" in text
    assert "broken.mp4" in text and "failed" in text
    with av.open(str(out / "season2" / "e3.mp4")) as c:
        assert c.streams.video[0].width == 48 * 4 and len(list(c.decode(video=0))) == 5
    # A second run converts nothing and says what it skipped.
    r = invoke(tree, "-o", out, "--recursive")
    assert "0 converted, 5 done earlier, skipped, 1 failed" in " ".join(r.output.split())


def test_non_recursive_include_exclude_and_ext(tree, tmp_path):
    out = tmp_path / "out"
    r = invoke(tree, "-o", out)
    assert r.exit_code == 0 and files(out) == ["top.mp4"]
    out2 = tmp_path / "out2"
    r = invoke(tree, "-o", out2, "-r", "--include", "season*/*", "--exclude", "broken*", "--exclude", "*.mov", "--ext", "mkv")
    assert r.exit_code == 0, r.output
    assert files(out2) == ["season1/e1.mkv", "season1/e2.mkv", "season2/e3.mkv"]


def test_interrupted_batch_resumes_without_partial_files(tree, tmp_path):
    out = tmp_path / "out"
    opts = batch.BatchOptions(recursive=True, exclude=("broken*",))
    jobs = batch.plan(tree, out, opts, 4)

    def fault(job, index):
        if job.rel == "season2/e3.mp4" and index == 2:
            raise KeyboardInterrupt  # Ctrl-C or a power cut mid-file

    with pytest.raises(KeyboardInterrupt):
        batch.run(jobs, [Upscaler(Bicubic(4))], UpscaleOptions(), fault=fault)
    assert files(out) == ["season1/e1.mp4", "season1/e2.mkv"]  # finished ones only, nothing partial
    r = invoke(tree, "-o", out, "-r", "--exclude", "broken*", "--dry-run")
    text = " ".join(r.output.split())
    assert "plan: 3 to convert, 2 done earlier" in text
    r = invoke(tree, "-o", out, "-r", "--exclude", "broken*")
    assert r.exit_code == 0
    assert "3 converted, 2 done earlier, skipped, 0 failed" in " ".join(r.output.split())
    assert files(out) == ["season1/e1.mp4", "season1/e2.mkv", "season2/e3.mp4", "season2/extras/x.mov", "top.mp4"]


def test_failure_mid_file_does_not_stop_the_batch(tree, tmp_path):
    out = tmp_path / "out"
    jobs = batch.plan(tree, out, batch.BatchOptions(recursive=True), 4)

    def fault(job, index):
        if job.rel == "season1/e2.mkv" and index == 1:
            raise RuntimeError("disk hiccup")

    done = batch.run(jobs, [Upscaler(Bicubic(4))], UpscaleOptions(), fault=fault)
    status = {j.rel: j.status for j in done}
    assert status == {"season1/e1.mp4": "done", "season1/e2.mkv": "failed", "season1/notes.txt": "ignored",
                      "season2/broken.mp4": "failed", "season2/e3.mp4": "done", "season2/extras/x.mov": "done",
                      "top.mp4": "done"}
    assert "disk hiccup" in next(j.error for j in done if j.rel == "season1/e2.mkv")
    assert "season1/e2.mkv" not in files(out)


def test_shards_cover_the_list_exactly_once(tree, tmp_path):
    seen = []
    for i in (1, 2):
        jobs = batch.plan(tree, tmp_path / "out", batch.BatchOptions(recursive=True, shard=(i, 2)), 4)
        seen += [j.rel for j in jobs]
    assert sorted(seen) == batch.list_files(tree, batch.BatchOptions(recursive=True))
    assert len(seen) == len(set(seen)) == 7
    out = tmp_path / "sharded"
    for i in (1, 2):
        invoke(tree, "-o", out, "-r", "--shard", f"{i}/2")
    assert files(out) == ["season1/e1.mp4", "season1/e2.mkv", "season2/e3.mp4", "season2/extras/x.mov", "top.mp4"]


def test_two_workers_share_the_files(tree, tmp_path, monkeypatch):
    """--devices cpu,cpu: two upscalers (one per worker thread) each convert files, every file once.
    Each worker's first file waits at a barrier for the other's, so one worker doing all the files
    (or the workers taking turns) cannot pass: the barrier breaks and that file fails."""
    import threading

    real = batch.upscale_file
    calls: list[tuple[str, int, str]] = []  # (file, upscaler, thread)
    first = threading.Barrier(2, timeout=10)
    seen_threads: set[str] = set()
    lock = threading.Lock()

    def recording(src, dst, upscaler, *args, **kw):
        me = threading.current_thread().name
        with lock:
            new = me not in seen_threads
            seen_threads.add(me)
            calls.append((src.name, id(upscaler), me))
        if new:
            first.wait()  # both workers hold a file at once
        return real(src, dst, upscaler, *args, **kw)

    monkeypatch.setattr(batch, "upscale_file", recording)
    out = tmp_path / "out"
    r = invoke(tree, "-o", out, "-r", "--devices", "cpu,cpu", "--exclude", "broken*")
    assert r.exit_code == 0, r.output
    assert files(out) == ["season1/e1.mp4", "season1/e2.mkv", "season2/e3.mp4", "season2/extras/x.mov", "top.mp4"]
    assert sorted(name for name, _u, _t in calls) == ["e1.mp4", "e2.mkv", "e3.mp4", "top.mp4", "x.mov"]  # each once
    assert len({u for _n, u, _t in calls}) == 2 and len({t for _n, _u, t in calls}) == 2


@pytest.mark.parametrize("case, code", [("inside", 2), ("empty", 1), ("unwritable", 1), ("under_a_file", 1),
                                        ("bad_shard", 2)])
def test_folder_usage_errors(tree, tmp_path, case, code):
    """Refused before anything is written: options that do not fit together exit 2 (as click's own
    usage errors), a folder that cannot be used exits 1; one line, saying why, and no output made."""
    from conftest import unwritable_folder

    if case == "inside":
        dst = tree / "upscaled"
        args, fragment = [tree, "-o", dst], "inside the input folder"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        dst = tmp_path / "o"
        args, fragment = [tmp_path / "empty", "-o", dst], "no videos or images"
    elif case == "unwritable":
        folder = unwritable_folder()  # (chmod would not stop root)
        dst = folder / "vsr-test-o"
        args, fragment = [tree, "-o", dst], f"folder '{folder}' is not writable"
    elif case == "under_a_file":
        (tmp_path / "afile").write_text("x")
        dst = tmp_path / "afile" / "o"
        args, fragment = [tree, "-o", dst], "is a file"
    else:
        dst = tmp_path / "o"
        args, fragment = [tree, "-o", dst, "--shard", "3/2"], "1 <= I <= N"
    before = sorted(p for p in tmp_path.rglob("*"))
    r = invoke(*args)
    text = " ".join(r.output.split())
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and text.count("error:") == 1
    assert fragment in text, text
    assert not dst.exists()
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing made anywhere
