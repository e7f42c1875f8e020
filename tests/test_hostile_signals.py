"""Issue #28 rows 10-12: SIGTERM and SIGHUP end a run as Ctrl-C does (exit 128 + the signal, no
temporary file left, one line naming the signal); `vsr finetune` says a checkpoint was saved only
when it wrote one; a frame-cache entry that is not what vsr wrote is extracted again, never trained on."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_clip, pattern
from vsr import data as data_mod
from vsr.cli import main

ROOT = Path(__file__).resolve().parent.parent
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _default_signals() -> None:
    # A test run started in the background (`cmd &`) or under nohup hands its children SIGINT/SIGHUP
    # ignored; the child should see them as a terminal or `kill` gives them.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """Long enough (400 frames, x264 veryslow) to be still running a second after it starts."""
    return make_clip(tmp_path_factory.mktemp("clip") / "long.mp4", frames=400, size=(160, 96))


def _stop_while_writing(args: list[str], watch: Path, sig: int) -> tuple[int, str]:
    """Start `vsr ARGS`, wait until a .vsr-partial file appears under WATCH, send SIG half a second
    later; returns the exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "vsr", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, preexec_fn=_default_signals)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not any(".vsr-partial" in p.name for p in watch.rglob("*")):
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the signal: {proc.stderr.read()}"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


@pytest.mark.parametrize("sig,code,extra", [(signal.SIGTERM, 143, []), (signal.SIGHUP, 129, []),
                                            (signal.SIGTERM, 143, ["--device", "cpu", "--cpu-workers", "2"])],
                         ids=["sigterm", "sighup", "sigterm-cpu-workers"])
def test_a_signal_ends_a_file_run_as_ctrl_c_does(tmp_path, long_clip, sig, code, extra):
    out = tmp_path / "a.mp4"
    returncode, stderr = _stop_while_writing(["upscale", str(long_clip), "-o", str(out), "--model", "bicubic",
                                              "--preset", "veryslow", "--chunk-seconds", "0", *extra], tmp_path, sig)
    assert returncode == code, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no .a.vsr-partial.mp4
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert signal.Signals(sig).name in lines[-1] and "no output written" in lines[-1], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_sigterm_ends_a_two_worker_folder_run_and_leaves_no_partial_file(tmp_path, long_clip, sig, code):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(long_clip, src / name)
    dst = tmp_path / "out"
    returncode, stderr = _stop_while_writing(["upscale", str(src), "-o", str(dst), "--model", "bicubic", "--preset",
                                              "veryslow", "--devices", "cpu,cpu"], tmp_path, sig)
    assert returncode == code, stderr
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["in/a.mp4", "in/b.mp4"], left  # neither output half-written nor left as a partial file
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted" + ("" if sig == signal.SIGINT else " by SIGTERM")), stderr
    assert "the current one was not written" in last and "Traceback" not in stderr


def test_a_folder_run_stopped_while_waiting_for_its_workers_waits_for_their_clean_up(tmp_path, monkeypatch):
    """The signal reaches the main thread while it waits for a worker that is still running: the batch
    ends only after that worker has cleaned up (a Thread.join interrupted by a signal marks the thread
    ended, CPython 3.11 and earlier: the process exited under the worker, its partial file left)."""
    import threading

    from vsr import batch
    from vsr.cli import _raise_stopped
    from vsr.pipeline import UpscaleError, UpscaleOptions

    cleaned = []

    def fake_upscale_file(src, dst, upscaler, options, reporter, stop, fault):
        if src.name == "quick.mp4":
            raise UpscaleError("quick.mp4: done with at once")
        while not stop.is_set():
            time.sleep(0.01)
        time.sleep(1.0)  # winding down: threads joined, the partial file removed
        cleaned.append(src.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "upscale_file", fake_upscale_file)
    jobs = [batch.Job(tmp_path / name, tmp_path / "out" / name, name, "convert") for name in ("slow.mp4", "quick.mp4")]
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM))  # the quick worker has ended by then
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            batch.run(jobs, [object(), object()], UpscaleOptions())
        assert cleaned == ["slow.mp4"]
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_ignored_by_nohup_stays_ignored_and_handlers_are_restored(tmp_path, monkeypatch):
    """`nohup vsr ...` must go on when the terminal closes: a signal the caller ignores is left ignored;
    and a caller in the same process (CliRunner here) gets its own handlers back."""
    import vsr.pipeline

    seen = {}

    def fake_upscale_file(*args, **kw):
        seen.update({sig: signal.getsignal(sig) for sig in SIGNALS})
        raise KeyboardInterrupt

    monkeypatch.setattr(vsr.pipeline, "upscale_file", fake_upscale_file)
    clip = make_clip(tmp_path / "c.mp4", frames=2)
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        r = CliRunner().invoke(main, ["upscale", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic"])
        assert r.exit_code == 130, r.output  # Ctrl-C, as before
        assert seen[signal.SIGHUP] is signal.SIG_IGN
        assert seen[signal.SIGTERM] not in (signal.SIG_DFL, signal.SIG_IGN)  # vsr's own while the command runs
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- finetune
def _picture_folder(root: Path, count: int = 2) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        rgb = np.clip(pattern(i, 64, 64).astype(np.int16) + rng.integers(-40, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
        av.VideoFrame.from_ndarray(rgb, format="rgb24").save(str(root / f"p{i}.png"))
    return root


def _finetune_args(folder: Path, tmp_path: Path, steps: int = 4) -> list[str]:
    return ["finetune", str(folder), "-o", str(tmp_path / "ft.safetensors"), "--checkpoint", str(tmp_path / "ft.ckpt"),
            "--from", "scratch", "--blocks", "1", "--channels", "4", "--no-gan", "--steps", str(steps),
            "--batch-size", "2", "--patch-size", "32", "--val-fraction", "0", "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--precision", "fp32", "-q"]


# The child sends itself the signal at a chosen point (no timing), with the signals at their defaults.
SELF_SIGNAL_CHILD = """
import os, signal, sys
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_DFL)
from vsr import data, train
from vsr.cli import main
where, sig = sys.argv[1], getattr(signal, sys.argv[2])
if where == "extract":
    real_extract = data.extract_frames
    def extract_frames(*args, **kw):
        os.kill(os.getpid(), sig)
        return real_extract(*args, **kw)
    data.extract_frames = extract_frames
else:
    real_step = train.Trainer.train_step
    def train_step(self, *args):
        losses = real_step(self, *args)
        if self.step == int(where):
            os.kill(os.getpid(), sig)
        return losses
    train.Trainer.train_step = train_step
sys.argv = ["vsr", *sys.argv[3:]]
main()
"""


def _run_signalled(where: str, sig: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SELF_SIGNAL_CHILD, where, sig, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_sigterm_during_frame_extraction_claims_no_checkpoint_and_leaves_the_old_one(tmp_path):
    folder = _picture_folder(tmp_path / "media")
    old = tmp_path / "ft.ckpt"
    old.write_bytes(b"an earlier run's checkpoint")
    run = _run_signalled("extract", "SIGTERM", _finetune_args(folder, tmp_path))
    assert run.returncode == 143, run.stderr
    assert "SIGTERM" in run.stderr and "no checkpoint" in run.stderr and "checkpoint saved" not in run.stderr, run.stderr
    assert old.read_bytes() == b"an earlier run's checkpoint"
    assert not (tmp_path / "ft.safetensors").exists() and "Traceback" not in run.stderr


def test_sighup_after_two_steps_saves_the_checkpoint_it_names(tmp_path):
    folder = _picture_folder(tmp_path / "media")
    run = _run_signalled("2", "SIGHUP", _finetune_args(folder, tmp_path, steps=6))
    assert run.returncode == 129, run.stderr
    assert "SIGHUP" in run.stderr and f"checkpoint of step 2 saved to {tmp_path / 'ft.ckpt'}" in run.stderr, run.stderr
    assert torch.load(tmp_path / "ft.ckpt", weights_only=True)["step"] == 2
    assert not (tmp_path / "ft.safetensors").exists()


def test_ctrl_c_before_the_first_step_leaves_the_old_checkpoint_and_says_so(tmp_path, monkeypatch):
    """Stopped when the loop had taken no step: an earlier checkpoint at that path is not replaced by
    an untrained one, and the message says nothing was saved."""
    folder = _picture_folder(tmp_path / "media")
    old = tmp_path / "ft.ckpt"
    old.write_bytes(b"an earlier run's checkpoint")

    def interrupted(self, batch_size=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_mod.Prefetcher, "next", interrupted)
    r = CliRunner().invoke(main, _finetune_args(folder, tmp_path))
    assert r.exit_code == 130, r.output
    assert "no checkpoint" in r.output and "checkpoint saved" not in r.output, r.output
    assert old.read_bytes() == b"an earlier run's checkpoint"


def test_ctrl_c_during_extraction_does_not_claim_a_checkpoint(tmp_path, monkeypatch):
    folder = _picture_folder(tmp_path / "media")

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_mod, "extract_frames", interrupted)
    r = CliRunner().invoke(main, _finetune_args(folder, tmp_path))
    assert r.exit_code == 130, r.output
    assert "checkpoint saved" not in r.output and "no checkpoint" in r.output, r.output
    assert not (tmp_path / "ft.ckpt").exists()


# ---------------------------------------------------------------------------- the frame cache
def _cached(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A folder with one picture, its frame extracted into a cache: (folder, cache, the true frame)."""
    folder = _picture_folder(tmp_path / "media", count=1)
    cache = tmp_path / "cache"
    sources, skipped = data_mod.extract_frames(folder, cache, min_size=32)
    assert skipped == [] and len(sources[0].frames) == 1
    return folder, cache, np.load(sources[0].frames[0])


def _other_pixels(truth: np.ndarray) -> np.ndarray:
    return (255 - truth).astype(np.uint8)  # same shape and dtype, other content


def _plant(entry: Path, frame: Path, truth: np.ndarray, how: str) -> None:
    if how == "other pixels":
        np.save(frame, _other_pixels(truth))
    elif how == "object array":
        np.save(frame, np.array([{"pixels": "not an array"}], dtype=object), allow_pickle=True)
    elif how == "extra frame":
        np.save(entry / "99999.npy", _other_pixels(truth))
    else:  # cut short
        frame.write_bytes(frame.read_bytes()[:200])


@pytest.mark.parametrize("how", ["other pixels", "object array", "extra frame", "cut short"])
def test_a_planted_cache_entry_is_extracted_again_not_trained_on(tmp_path, how):
    folder, cache, truth = _cached(tmp_path)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    (frame,) = entry.glob("*.npy")
    _plant(entry, frame, truth, how)
    sources, skipped = data_mod.extract_frames(folder, cache, min_size=32)
    assert skipped == []
    trained_on = [np.load(p, allow_pickle=False) for s in sources for p in s.frames]
    assert len(trained_on) == 1 and np.array_equal(trained_on[0], truth)
    # The same again, told: a warning names the source and says the frames are extracted again.
    _plant(entry, frame, truth, how)
    warnings: list[str] = []
    sources, _ = data_mod.extract_frames(folder, cache, min_size=32, warn=warnings.append)
    assert len(warnings) == 1 and "p0.png" in warnings[0] and "extracting them again" in warnings[0], warnings
    assert np.array_equal(np.load(sources[0].frames[0], allow_pickle=False), truth)
    assert [p.name for p in entry.glob("*.npy")] == [frame.name]  # the planted files are gone
    warnings.clear()
    data_mod.extract_frames(folder, cache, min_size=32, warn=warnings.append)
    assert warnings == []  # a good entry is taken as it is


def test_a_link_planted_as_a_cache_entry_is_not_written_through(tmp_path):
    """Someone who can write the cache folder links an entry to one of the user's folders: vsr must not
    write its frames and record there."""
    folder, cache, truth = _cached(tmp_path)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    shutil.rmtree(entry)
    victim = tmp_path / "victim"
    victim.mkdir()
    entry.symlink_to(victim, target_is_directory=True)
    sources, _ = data_mod.extract_frames(folder, cache, min_size=32)
    assert list(victim.iterdir()) == []
    assert not entry.is_symlink() and np.array_equal(np.load(sources[0].frames[0]), truth)


def test_finetune_warns_about_a_planted_frame_and_trains(tmp_path):
    folder, cache, truth = _cached(tmp_path)
    (frame,) = cache.rglob("*.npy")
    np.save(frame, _other_pixels(truth))
    args = _finetune_args(folder, tmp_path, steps=1)
    args.remove("-q")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "warning" in text and "extracting them again" in text, text
    assert np.array_equal(np.load(frame, allow_pickle=False), truth)
