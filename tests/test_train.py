"""The trainer: data, schedule, the step, checkpoints and resume, the CLI, DDP on CPU."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import make_clip, pattern, tiny_generator
from vsr import data as data_mod
from vsr import device as device_mod
from vsr.cli import main
from vsr.finetune import FinetuneError, FinetuneOptions, run_finetune
from vsr.model import GeneratorConfig
from vsr.perceptual import PerceptualError, VGGFeatures, load_perceptual
from vsr.report import TrainReporter
from vsr.train import TrainConfig, Trainer, lr_at
from vsr.weights import load_generator, save_generator, training_info

TINY = GeneratorConfig(scale=4, blocks=1, channels=8, batch_norm=False, global_skip="bicubic")


def textured(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.stack([pattern(seed, w, h)[..., c] for c in range(3)], -1).astype(np.int16)
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def tiny_perceptual() -> VGGFeatures:
    torch.manual_seed(1)
    feats = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    return VGGFeatures(feats, len(feats))


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        av.VideoFrame.from_ndarray(textured(i), format="rgb24").save(str(root / f"img{i}.png"))
    make_clip(root / "sub" / "clip.mp4", frames=12, size=(128, 96))
    return root


def test_lr_schedule_warms_up_decays_and_restarts_per_phase():
    cfg = TrainConfig(steps=1000, pretrain_steps=400, lr=1e-3, gan_lr=1e-4, warmup_steps=20, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 20)
    assert lr_at(19, cfg) == pytest.approx(1e-3)
    assert lr_at(399, cfg) == pytest.approx(1e-4, rel=0.01)  # cosine reaches the floor at the phase's end
    assert lr_at(400, cfg) < lr_at(419, cfg) == pytest.approx(1e-4)  # phase 2 warms up again to its own peak
    assert lr_at(999, cfg) == pytest.approx(1e-5, rel=0.01)
    rates = [lr_at(s, cfg) for s in range(20, 400)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    no_gan = dataclasses.replace(cfg, no_gan=True)
    assert lr_at(999, no_gan) == pytest.approx(1e-4, rel=0.01) and lr_at(500, no_gan) > 1e-4


def test_pixel_steps_learn(folder):
    torch.manual_seed(0)
    hr = torch.from_numpy(textured(5, 32, 32)).permute(2, 0, 1)[None].float().repeat(4, 1, 1, 1) / 255
    lr = data_mod.downscale(hr, 4)
    trainer = Trainer(tiny_generator(batch_norm=False, global_skip="bicubic"), TrainConfig(steps=60, pretrain_steps=60, lr=3e-3, warmup_steps=1))
    first = trainer.train_step(lr, hr)["pixel"]
    for _ in range(58):
        last = trainer.train_step(lr, hr)["pixel"]
    assert last < 0.8 * first


def test_gan_step_updates_both_networks_and_reports_losses():
    cfg = TrainConfig(steps=4, pretrain_steps=1, batch_size=2, patch_size=32, warmup_steps=1)
    trainer = Trainer(tiny_generator(batch_norm=False, global_skip="bicubic"), cfg, perceptual=tiny_perceptual())
    hr = torch.rand(2, 3, 32, 32)
    lr = data_mod.downscale(hr, 4)
    assert set(trainer.train_step(lr, hr)) == {"lr", "pixel", "g_total"}
    d_before = [p.detach().clone() for p in trainer.discriminator.parameters()]
    g_before = [p.detach().clone() for p in trainer.generator.parameters()]
    losses = trainer.train_step(lr, hr)
    assert {"content", "adversarial", "d", "d_real", "d_fake"} <= set(losses)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, trainer.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.generator.parameters()))
    assert all(p.requires_grad for p in trainer.discriminator.parameters())


def test_frames_are_extracted_by_seeking_and_junk_is_skipped(tmp_path):
    clip = tmp_path / "in" / "c.mkv"
    clip.parent.mkdir()
    with av.open(str(clip), "w") as out:
        vs = out.add_stream("libx264", rate=10, options={"crf": "5", "preset": "ultrafast", "g": "5"})
        vs.width, vs.height, vs.pix_fmt = 96, 96, "yuv444p"
        for i in range(40):
            rgb = np.zeros((96, 96, 3), np.uint8) if i < 10 else textured(i // 10, 96, 96)  # black, then 3 scenes
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    sources, skipped = data_mod.extract_frames(tmp_path / "in", tmp_path / "cache", frames_per_video=8)
    assert len(sources) == 1 and skipped == []
    assert 3 <= len(sources[0].frames) <= 6  # black frames and consecutive duplicates dropped
    arrays = [np.load(p) for p in sources[0].frames]
    assert all(a.shape == (96, 96, 3) and a.mean() > 16 for a in arrays)
    # Cached: a second call decodes nothing and returns the same files.
    again, _ = data_mod.extract_frames(tmp_path / "in", tmp_path / "cache", frames_per_video=8)
    assert again[0].frames == sources[0].frames


def test_a_cache_frame_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A frame appears in the cache only complete (another rank or run reading the cache at the same
    time must never map a half-written .npy); a write cut short leaves neither it nor its temporary file."""
    (tmp_path / "in").mkdir()
    av.VideoFrame.from_ndarray(textured(0), format="rgb24").save(str(tmp_path / "in" / "a.png"))
    real_save = np.save

    def cut_short(fh, arr):
        fh.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(data_mod.np, "save", cut_short)
    sources, skipped = data_mod.extract_frames(tmp_path / "in", tmp_path / "cache", min_size=32)
    assert sources == [] and "disk full" in skipped[0]
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    monkeypatch.setattr(data_mod.np, "save", real_save)
    sources, _ = data_mod.extract_frames(tmp_path / "in", tmp_path / "cache", min_size=32)
    assert np.array_equal(np.load(sources[0].frames[0]), textured(0))


NO_PYAV_CHILD = """
import sys
sys.modules["av"] = None  # importing PyAV fails, as on a machine without it
from pathlib import Path
import numpy as np
from vsr import data
from vsr.cli import main
pics, cache = Path(sys.argv[1]), Path(sys.argv[2])
calls = []
def reader(path, kind, count):
    calls.append(path.name)
    yield np.load(path.with_suffix(".npy"))
sources, skipped = data.extract_frames(pics, cache, 32, None, min_size=96, read=reader)
print(len(sources), [reason.split(": ")[1] for reason in skipped])
again, skipped = data.extract_frames(pics, cache, 32, None, min_size=32, read=reader)
print(sorted(calls), [len(s.frames) for s in again], skipped)
sys.argv = ["vsr", "finetune", str(pics), "--from", "scratch", "--blocks", "1", "--channels", "8", "--no-gan",
            "--steps", "2", "--batch-size", "2", "--patch-size", "32", "--val-fraction", "0", "--cache-dir", str(cache),
            "--device", "cpu", "--precision", "fp32", "-q", "-o", str(pics.parent / "out.safetensors")]
main()
"""


def test_training_from_a_filled_cache_needs_no_pyav(tmp_path):
    """A frame reader other than PyAV fills the cache (scripts/packed_frames.py fill does, with Pillow,
    on the GPU machine, which has no PyAV); each file is read once, whatever crop size later runs ask
    for, and `vsr finetune` on the same folder then trains and writes weights in a process that
    cannot import PyAV."""
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(2):
        (pics / f"p{i}.png").write_bytes(b"not decoded: the reader gives the frame")
        np.save(pics / f"p{i}.npy", textured(i, 64, 64))  # .npy is no media kind: not a source
    run = subprocess.run([sys.executable, "-c", NO_PYAV_CHILD, str(pics), str(tmp_path / "cache")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr
    too_small, cached = run.stdout.splitlines()[:2]
    assert too_small == "0 ['frames of 64x64 are smaller than a 96-px crop', 'frames of 64x64 are smaller than a 96-px crop']"
    # read once each; a crop size that fits finds them cached (it is no part of the cache's key)
    assert cached == "['p0.png', 'p1.png'] [1, 1] []"
    assert load_generator(tmp_path / "out.safetensors").config.channels == 8
    assert training_info(tmp_path / "out.safetensors")["steps"] == 2


def test_split_holds_out_whole_files(folder, tmp_path):
    sources, _ = data_mod.extract_frames(folder, tmp_path / "cache")
    train, val = data_mod.split_sources(sources, 0.25)
    assert len(val) == 1 and len(train) == 3
    assert not {s.path for s in train} & {s.path for s in val}


def test_sampler_prefers_texture_and_seeds_differ(tmp_path):
    img = np.full((256, 256, 3), 120, np.uint8)
    img[:, 128:] = textured(3, 256, 128)
    np.save(tmp_path / "half.npy", img)
    sampler = data_mod.PatchSampler([tmp_path / "half.npy"], 32, 4, seed=0)
    lr, hr = sampler.sample(64)
    assert lr.shape == (64, 3, 8, 8) and hr.shape == (64, 3, 32, 32)
    flat = sum(float(data_mod.gradient_energy(h.permute(1, 2, 0).numpy() * 255)) < data_mod.FLAT_GRADIENT for h in hr)
    assert flat <= 16  # random crops would be about half flat
    other = data_mod.PatchSampler([tmp_path / "half.npy"], 32, 4, seed=1000)
    assert not torch.equal(other.sample(4)[1], data_mod.PatchSampler([tmp_path / "half.npy"], 32, 4, seed=0).sample(4)[1])


def test_degrade_keeps_shape_and_range(tmp_path):
    """Each draw damages the picture (blur, noise, JPEG or H.264, at random strengths) and keeps its
    shape and range; with ``degrade`` the sampler's LR patches are damaged, not the clean downscale."""
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(textured(0, 24, 24)).permute(2, 0, 1).float() / 255
    changes = []
    for _ in range(6):
        y = data_mod.degrade(x, g)
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
        changes.append(round(float((y - x).abs().mean()) * 255, 3))
    # each effect is drawn with probability 1/2 (a codec 2/3): a draw with none is rare
    assert sum(c > 2 for c in changes) >= 5 and len(set(changes)) == 6
    np.save(tmp_path / "a.npy", textured(1))
    clean_lr, clean_hr = data_mod.PatchSampler([tmp_path / "a.npy"], 32, 4, seed=0).sample(4)
    lr, hr = data_mod.PatchSampler([tmp_path / "a.npy"], 32, 4, degrade=True, seed=0).sample(4)
    assert torch.equal(hr, clean_hr) and lr.shape == clean_lr.shape
    assert sum(float((a - b).abs().mean()) * 255 > 1 for a, b in zip(lr, clean_lr)) >= 3


def _opts(folder, out, **kw):
    train = TrainConfig(**{"steps": 4, "pretrain_steps": 2, "batch_size": 2, "patch_size": 32, "warmup_steps": 1,
                           "lr": 1e-3, **kw.pop("train", {})})
    return FinetuneOptions(folder=folder, output=out, train=train, start="scratch", scratch_config=TINY,
                           val_every=2, checkpoint_every=2, cache_dir=out.parent / "cache", device="cpu",
                           perceptual=tiny_perceptual(), **kw)


def test_finetune_writes_ema_weights_that_upscale_takes(folder, tmp_path):
    out = tmp_path / "mine.safetensors"
    summary = run_finetune(_opts(folder, out))
    model = load_generator(out)
    assert model.config == TINY
    info = training_info(out)
    assert info["steps"] == 4 and info["data"]["train_frames"] >= 3 and info["data"]["val_images"] >= 1
    assert [s for s, _ in info["validation"]] == [2, 4]
    assert {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"} <= set(info["validation"][0][1])
    assert summary["final_losses"]["adversarial"] > 0
    assert out.with_suffix(".ckpt").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the user's umask, not safetensors' 0600


def test_finetune_trains_the_shuffle_upsampler_from_scratch_and_resumes(folder, tmp_path):
    """The fast tier's network (upsampler="shuffle"): trained from scratch, checkpointed, resumed,
    saved, loaded and run by the upscaler as the paper's is."""
    from vsr.upscaler import Upscaler

    out = tmp_path / "fast.safetensors"
    shuffle = dataclasses.replace(TINY, upsampler="shuffle")
    opts = _opts(folder, out, train={"steps": 2, "pretrain_steps": 4})
    opts.scratch_config = shuffle
    run_finetune(opts)
    log = StepLog()
    run_finetune(_opts(folder, out, train={"steps": 4, "pretrain_steps": 4}, resume=out.with_suffix(".ckpt")), log)
    assert log.started == (2, 4)
    model = load_generator(out)
    assert model.config == shuffle and training_info(out)["started_from"] == "scratch"
    frames = np.random.default_rng(0).integers(0, 256, (1, 12, 16, 3), dtype=np.uint8)
    assert Upscaler(model, "cpu", precision="fp32").upscale(frames).shape == (1, 48, 64, 3)


def test_the_seed_makes_a_run_repeatable(folder, tmp_path):
    """Same seed, same weights, bit for bit, whatever torch's global generator held before (the
    discriminator's initial weights come from it); another seed, other weights."""
    runs = {}
    for name, seed, noise in (("a", 3, 0), ("b", 3, 1000), ("c", 4, 0)):
        out = tmp_path / name / "w.safetensors"
        out.parent.mkdir()
        opts = _opts(folder, out, train={"steps": 3, "pretrain_steps": 1, "seed": seed})
        torch.rand(noise)  # consume some of the global generator, as other code in the process might
        run_finetune(opts)
        runs[name] = load_generator(out).state_dict()
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


class StepLog(TrainReporter):
    """Listens in on a run: the step it starts from, and the steps it takes."""

    def __init__(self) -> None:
        self.started: tuple[int, int] | None = None
        self.steps: list[int] = []

    def start(self, step, total):
        self.started = (step, total)

    def step(self, step, losses):
        self.steps.append(step)


@pytest.mark.parametrize("done", [3, 2])
def test_resume_continues_exactly(folder, tmp_path, done):
    """A run stopped after ``done`` steps (3: in the adversarial phase; 2: the pixel phase, before
    the discriminator has trained) resumed to 4 takes the steps left only and ends with the weights
    of the 4-step run.  The resuming command asks another seed: the checkpoint's settings and random
    state win, so a run that started afresh instead (the same weights only by the same seed), or
    one whose new discriminator took the command's seed, cannot pass."""
    whole = tmp_path / "a" / "w.safetensors"
    whole.parent.mkdir()
    run_finetune(_opts(folder, whole, train={"steps": 4}))
    part = tmp_path / "b" / "w.safetensors"
    part.parent.mkdir()
    run_finetune(_opts(folder, part, train={"steps": done}))
    state = torch.load(part.with_suffix(".ckpt"), weights_only=True)
    assert state["step"] == done
    log = StepLog()
    run_finetune(_opts(folder, part, train={"steps": 4, "seed": 9}, resume=part.with_suffix(".ckpt")), log)
    assert log.started == (done, 4) and log.steps == list(range(done + 1, 5))
    assert training_info(part)["train_config"]["seed"] == 0
    a, b = load_generator(whole).state_dict(), load_generator(part).state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_a_fine_tuned_file_records_its_whole_history(folder, tmp_path):
    """Weights fine-tuned from weights carry the starting file's own record (its data, steps and
    validation), a resumed run too, and the steps in all; `vsr models` shows both counts."""
    from vsr.weights import describe

    first = tmp_path / "first.safetensors"
    run_finetune(_opts(folder, first, train={"steps": 3}))
    second = tmp_path / "second.safetensors"
    run_finetune(dataclasses.replace(_opts(folder, second, train={"steps": 2, "pretrain_steps": 0}), start=str(first)))
    third = tmp_path / "third.safetensors"
    opts = dataclasses.replace(_opts(folder, third, train={"steps": 2, "pretrain_steps": 0, "no_gan": True}), start=str(second))
    run_finetune(dataclasses.replace(opts, train=dataclasses.replace(opts.train, steps=1)))
    log = StepLog()
    run_finetune(dataclasses.replace(opts, resume=third.with_suffix(".ckpt")), log)
    assert log.steps == [2]  # resumed: only the step left
    info = training_info(third)
    assert info["steps"] == 2 and info["total_steps"] == 7
    assert info["earlier_training"] == training_info(second)
    assert info["earlier_training"]["earlier_training"] == training_info(first)
    assert training_info(first)["earlier_training"] == {} and training_info(first)["total_steps"] == 3
    assert describe(third)["trained"] == "2 steps (7 in all)"
    assert describe(first)["trained"] == "3 steps"


TIMING = ("seconds_this_run", "steps_per_second", "data_wait_fraction")  # the only parts of a record that vary run to run


def test_snapshots_are_whole_weights_files_of_their_step_and_leave_the_output_alone(folder, tmp_path):
    """--snapshot-every 2 of a 5-step run: the EMA weights of steps 2 and 4 (not 5: that is the
    output), each a weights file vsr loads, with the run's record as it stood then; they differ from
    each other and from the output, which is the file of the same run without snapshots, bit for bit."""
    from vsr.finetune import snapshot_path
    from vsr.weights import load_model

    plain, snapped = tmp_path / "plain" / "w.safetensors", tmp_path / "snapped" / "w.safetensors"
    for out, every in ((plain, None), (snapped, 2)):
        out.parent.mkdir()
        run_finetune(_opts(folder, out, train={"steps": 5}, snapshot_every=every))
    assert sorted(p.name for p in snapped.parent.glob("*.safetensors")) == ["w.safetensors", "w.step2.safetensors",
                                                                         "w.step4.safetensors"]
    assert snapshot_path(snapped, 4) == snapped.parent / "w.step4.safetensors"
    assert sorted(p.name for p in plain.parent.iterdir() if p.name != "cache") == ["w.ckpt", "w.safetensors"]
    final, without = load_generator(snapped).state_dict(), load_generator(plain).state_dict()
    assert all(torch.equal(final[k], without[k]) for k in final)
    record, record_without = training_info(snapped), training_info(plain)
    assert {k: v for k, v in record.items() if k not in TIMING} == {k: v for k, v in record_without.items() if k not in TIMING}
    assert "snapshot" not in record
    states = []
    for step, validated in ((2, [2]), (4, [2, 4])):
        path = snapshot_path(snapped, step)
        info = training_info(path)
        assert info["snapshot"] is True and info["steps"] == info["total_steps"] == step
        assert info["train_config"] == record["train_config"] and [s for s, _ in info["validation"]] == validated
        assert info["validation"] == record["validation"][: len(validated)]
        assert path.stat().st_mode & 0o777 == snapped.stat().st_mode & 0o777
        model = load_model(path)
        assert model.config == TINY
        states.append(model.state_dict())
    states.append(final)
    for a, b in zip(states, states[1:]):
        assert any(not torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in snapped.parent.iterdir() if "partial" in p.name]


def test_snapshots_of_a_resumed_run_are_those_of_the_whole_run(folder, tmp_path):
    """Snapshots count the run's steps, not the resumed command's: a 4-step run stopped at step 1
    and resumed writes step 2's snapshot as the uninterrupted run does."""
    from vsr.finetune import snapshot_path

    whole, part = tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors"
    whole.parent.mkdir()
    part.parent.mkdir()
    run_finetune(_opts(folder, whole, train={"steps": 4}, snapshot_every=2))
    run_finetune(_opts(folder, part, train={"steps": 1}, snapshot_every=2))
    assert not snapshot_path(part, 2).exists()
    run_finetune(_opts(folder, part, train={"steps": 4}, snapshot_every=2, resume=part.with_suffix(".ckpt")))
    a, b = load_generator(snapshot_path(whole, 2)).state_dict(), load_generator(snapshot_path(part, 2)).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert training_info(snapshot_path(part, 2))["steps"] == 2


@pytest.mark.parametrize("value", [0, -3, 1.5, "2"])
def test_snapshot_every_must_be_a_positive_whole_number(folder, tmp_path, value):
    with pytest.raises(FinetuneError, match=f"expected a positive whole number, got {value!r}"):
        _opts(folder, tmp_path / "w.safetensors", snapshot_every=value)


GPU_TRAIN = Path(__file__).resolve().parent.parent / "scripts" / "gpu_train.sh"


def gpu_train(tmp_path, *args, runs: str = "", **env):
    """scripts/gpu_train.sh as the device tool calls it, $OUT a temporary folder, PACK a tiny pack."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PACK": str(tmp_path / "pack"), **env}
    return subprocess.run(["bash", str(GPU_TRAIN), *map(str, args)], input=runs, capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture
def tiny_pack(tmp_path) -> Path:
    """What scripts/packed_frames.py pack writes: pictures in train/ (JPEG) and val/ (PNG)."""
    from PIL import Image

    for part, count, ext in (("train", 3, "jpg"), ("val", 1, "png")):
        (tmp_path / "pack" / part).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(textured(i + 10 * (part == "val"))).save(tmp_path / "pack" / part / f"p{i}.{ext}")
    return tmp_path / "pack"


def test_gpu_train_runs_several_at_once_and_brings_each_back_as_one_tar(tiny_pack, tmp_path):
    """Two runs of one call at once: the one that trains comes back as ok.tar (its weights, log and
    snapshots, thinned evenly to the bytes a run may bring back, the latest kept); the one that fails
    as bad.tar (its log), and the call's exit status says a run failed."""
    import tarfile

    common = ["--from", "scratch", "--blocks", "1", "--channels", "4", "--no-gan", "--patch-size", "32", "--batch-size", "2",
              "--val-every", "2", "--snapshot-every", "1", "--device", "cpu", "--precision", "fp32"]
    r = gpu_train(tmp_path, "--runs", "-", *common, runs="# name from steps options\nok scratch 4 --seed 1\n\nbad scratch 2 --lr x\n",
                  OUT_TOTAL_BYTES=str(2 * 40 * 1024))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "== ok: finished" in r.stdout and "== bad: FAILED (exit 2)" in r.stdout and "'x' is not a valid float" in r.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bad.tar", "ok.tar"]
    assert "snapshots of steps 3 (1); left out, over 40 KiB: snapshots of steps 1, 2 (2)" in r.stdout
    with tarfile.open(tmp_path / "out" / "ok.tar") as tar:
        assert sorted(tar.getnames()) == ["ok/ok.log", "ok/ok.safetensors", "ok/ok.step3.safetensors"]
        tar.extractall(tmp_path / "back", filter="data")
    assert (tmp_path / "out" / "ok.tar").stat().st_size <= 40 * 1024
    with tarfile.open(tmp_path / "out" / "bad.tar") as tar:
        assert tar.getnames() == ["bad/bad.log"]
    back = tmp_path / "back" / "ok"
    assert training_info(back / "ok.step3.safetensors")["steps"] == 3 and training_info(back / "ok.safetensors")["steps"] == 4
    assert training_info(back / "ok.safetensors")["train_config"]["seed"] == 1
    assert load_generator(back / "ok.step3.safetensors").config.channels == 4
    assert "wrote" in (back / "ok.log").read_text()


@pytest.mark.parametrize(("args", "runs", "says"), [
    (["--runs", "-"], "a scratch 2\na scratch 3\n", "expected each run NAME once, got 'a' twice"),
    (["--runs", "-"], "../a scratch 2\n", "expected a run NAME of letters, digits, '.', '_' and '-'"),
    (["--runs", "-"], "a scratch\n", "expected a run line NAME FROM STEPS [options...], got 'a scratch'"),
    (["--runs", "-"], "# nothing\n", "expected runs in '-', got none"),
    (["--runs", "-"], "".join(f"r{i} scratch 2\n" for i in range(9)), "expected at most 8 runs (one file back each), got 9"),
    (["--runs", "nothere.txt"], "", "expected a runs file, got 'nothere.txt' (no such file)"),
    (["one", "scratch", "1e3"], "", "run one: expected STEPS, a positive whole number, got '1e3'"),
    (["one", "scratch"], "", "usage:"),
])
def test_gpu_train_refuses_what_it_cannot_run_before_starting_any(tmp_path, args, runs, says):
    r = gpu_train(tmp_path, *args, runs=runs)
    assert r.returncode == 2 and says in r.stderr and "torch" not in r.stdout, r.stdout + r.stderr
    assert not list((tmp_path / "out").iterdir())


def test_starting_weights_of_another_scale_are_refused(folder, tmp_path):
    x2 = tmp_path / "x2.safetensors"
    save_generator(x2, tiny_generator(scale=2))
    opts = dataclasses.replace(_opts(folder, tmp_path / "o.safetensors"), start=str(x2), scale=4)
    with pytest.raises(FinetuneError, match="x2 model, but x4 was asked for"):
        run_finetune(opts)


def invoke(*args):
    return CliRunner().invoke(main, ["finetune", *map(str, args)], catch_exceptions=False)


def test_cli_finetune_no_gan_then_upscale(folder, tmp_path):
    out = tmp_path / "cli.safetensors"
    r = invoke(folder, "-o", out, "--from", "scratch", "--blocks", "1", "--channels", "4", "--steps", "3", "--no-gan",
               "--patch-size", "32", "--batch-size", "2", "--val-every", "3", "--cache-dir", tmp_path / "c", "-q")
    assert r.exit_code == 0, r.output
    assert "validation" in r.output and "wrote" in r.output
    clip = make_clip(tmp_path / "v.mp4", frames=2)
    r = CliRunner().invoke(main, ["upscale", str(clip), "--weights", str(out), "-q"])
    assert r.exit_code == 0, r.output


def test_cli_finetune_snapshot_every(folder, tmp_path):
    """--snapshot-every N through the command line: the snapshots beside the output, named by their
    step; a value that is not a positive whole number is a one-line usage error that trains nothing."""
    out = tmp_path / "cli.safetensors"
    common = [folder, "-o", out, "--from", "scratch", "--blocks", "1", "--channels", "4", "--steps", "3", "--no-gan",
              "--patch-size", "32", "--batch-size", "2", "--cache-dir", tmp_path / "c", "-q"]
    for bad, says in (("0", "expected a positive number, got 0"), ("-1", "expected a positive number, got -1"),
                      ("x", "'x' is not a valid integer"), ("1.5", "'1.5' is not a valid integer")):
        r = invoke(*common, "--snapshot-every", bad)
        assert r.exit_code == 2 and "--snapshot-every" in r.output and says in " ".join(r.output.split()), r.output
        assert "Traceback" not in r.output and not out.exists()
    r = invoke(*common, "--snapshot-every", "1")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["cli.safetensors", "cli.step1.safetensors",
                                                                      "cli.step2.safetensors"]
    assert [training_info(tmp_path / f"cli.step{k}.safetensors")["steps"] for k in (1, 2)] == [1, 2]


@pytest.mark.parametrize("case", ["empty", "undecodable", "too_small", "unwritable", "missing_folder", "no_vgg"])
def test_cli_finetune_bad_input(tmp_path, case, monkeypatch):
    folder = tmp_path / "f"
    folder.mkdir()
    out = tmp_path / "o.safetensors"
    extra = ["--no-gan"]
    if case == "undecodable":
        (folder / "broken.mp4").write_bytes(b"\x00\x01junk" * 100)
        expected = "nothing usable"
    elif case == "too_small":
        av.VideoFrame.from_ndarray(textured(0, 40, 40), format="rgb24").save(str(folder / "tiny.png"))
        expected = "smaller than a 96-px crop"
    elif case == "unwritable":  # a folder that exists and refuses new files, root or not (chmod stops no root)
        from conftest import unwritable_folder

        av.VideoFrame.from_ndarray(textured(0, 128, 128), format="rgb24").save(str(folder / "ok.png"))
        out = unwritable_folder() / "o.safetensors"
        expected = f"folder '{out.parent}' is not writable"
    elif case == "missing_folder":
        av.VideoFrame.from_ndarray(textured(0, 128, 128), format="rgb24").save(str(folder / "ok.png"))
        out = tmp_path / "missing_dir" / "o.safetensors"
        expected = "does not exist"
    elif case == "no_vgg":
        import torchvision

        def offline(*a, **k):
            raise urllib.error.URLError("no network")

        monkeypatch.setattr(torchvision.models, "vgg19", offline)
        av.VideoFrame.from_ndarray(textured(0, 128, 128), format="rgb24").save(str(folder / "ok.png"))
        extra = ["--pretrain-steps", "1"]
        expected = "--vgg-weights"
    else:
        expected = "no videos or images"
    r = invoke(folder, "-o", out, "--from", "scratch", "--steps", "2", "--cache-dir", tmp_path / "c", "-q", *extra)
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert expected in text and "Traceback" not in r.output
    assert not out.exists()


def test_cli_finetune_unet_discriminator_options(folder, tmp_path, monkeypatch):
    """--d-arch unet defaults to spectral norm and trains through both phases; asking it for
    BatchNorm is a usage error that writes nothing."""
    import vsr.perceptual

    monkeypatch.setattr(vsr.perceptual, "load_perceptual", lambda *a, **k: tiny_perceptual())
    out = tmp_path / "u.safetensors"
    common = [folder, "--from", "scratch", "--blocks", "1", "--channels", "4", "--steps", "3", "--pretrain-steps", "1",
              "--patch-size", "32", "--batch-size", "2", "--cache-dir", tmp_path / "c", "-q", "--d-arch", "unet"]
    r = invoke(*common, "-o", out, "--d-norm", "batch")
    assert r.exit_code == 2 and "--d-norm" in r.output and "spectral" in r.output, r.output
    assert not out.exists()
    r = invoke(*common, "-o", out)
    assert r.exit_code == 0, r.output
    info = training_info(out)
    assert info["train_config"]["d_arch"] == "unet" and info["train_config"]["d_norm"] == "spectral"


def test_keras_h5_vgg16_backbone_loads(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "vgg16.weights.h5"
    rng = np.random.default_rng(0)
    widths = [(3, 64), (64, 64)]
    with h5py.File(path, "w") as f:
        for block, convs in zip(range(1, 6), (2, 2, 3, 3, 3)):
            for k in range(convs):
                cin, cout = widths[k] if block == 1 else (3, 3)
                g = f.create_group(f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars")
                g["0"] = rng.normal(size=(3, 3, cin, cout)).astype(np.float32)
                g["1"] = rng.normal(size=(cout,)).astype(np.float32)
    net = load_perceptual("vgg16:conv1_1", path)
    x = torch.rand(1, 3, 8, 8)
    # Reference: Caffe input (BGR, 0-255, mean-subtracted) through the Keras kernel (H, W, in, out).
    with h5py.File(path, "r") as f:
        kernel = torch.from_numpy(f["block1/layers/conv2d/vars/0"][()]).permute(3, 2, 0, 1)
        bias = torch.from_numpy(f["block1/layers/conv2d/vars/1"][()])
    caffe = x.flip(1) * 255 - torch.tensor([104.00699, 116.66877, 122.67892]).view(1, 3, 1, 1)
    ref = torch.relu(torch.nn.functional.conv2d(caffe, kernel, bias, padding=1))
    assert torch.allclose(net(x), ref, atol=1e-3)


def test_half_precision_vgg_keeps_its_input_convention_and_features(tmp_path):
    """scripts/half_vgg.py's file (what travels to the GPU machine, which has no h5py): half the bytes,
    the same features to fp16's precision, and the Caffe BGR input of a Keras .h5 kept (in the metadata)."""
    from vsr.perceptual import vgg_features, write_half_precision

    torch.manual_seed(0)
    full = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg_features("vgg16").state_dict().items()}, full)
    half = tmp_path / "vgg16_fp16.safetensors"
    size = write_half_precision(full, half)
    assert size < 0.51 * full.stat().st_size
    x = torch.rand(1, 3, 16, 16)
    a, b = load_perceptual("vgg16:conv2_2", full), load_perceptual("vgg16:conv2_2", half)
    assert not a.caffe_bgr and not b.caffe_bgr
    with torch.no_grad():
        fa, fb = a(x), b(x)
    assert float((fa - fb).norm() / fa.norm()) < 2e-3
    h5py = pytest.importorskip("h5py")
    h5 = tmp_path / "vgg16.weights.h5"
    state = torch.load(full, weights_only=True)
    index = 0
    with h5py.File(h5, "w") as f:
        for block, convs in zip(range(1, 6), (2, 2, 3, 3, 3)):
            for k in range(convs):
                g = f.create_group(f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars")
                g["0"] = state[f"features.{index}.weight"].permute(2, 3, 1, 0).numpy()
                g["1"] = state[f"features.{index}.bias"].numpy()
                index += 2
            index += 1
    write_half_precision(h5, half)
    c, d = load_perceptual("vgg16:conv2_2", h5), load_perceptual("vgg16:conv2_2", half)
    assert c.caffe_bgr and d.caffe_bgr
    with torch.no_grad():
        fc, fd = c(x), d(x)
    assert float((fc - fd).norm() / fc.norm()) < 2e-3
    with pytest.raises(PerceptualError, match="not vgg19 weights"):
        write_half_precision(full, tmp_path / "x.safetensors", arch="vgg19")
    assert not (tmp_path / "x.safetensors").exists()


def torchrun(args: list[str], timeout: int) -> tuple[int | None, str]:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (it picks its own free port on localhost), gloo on
    the loopback interface: (its exit status, or None if it ran past ``timeout``; its stderr). A run past
    the timeout gets SIGTERM, which torchrun passes on to its ranks (each in a session of its own, so
    only torchrun can end them), then SIGKILL: no rank is left behind."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return None, err


def test_torchrun_ddp_on_cpu_with_gloo(folder, tmp_path):
    out = tmp_path / "ddp.safetensors"
    code, err = torchrun(["-m", "vsr", "finetune", str(folder), "-o", str(out), "--from", "scratch", "--blocks", "1",
                          "--channels", "4", "--steps", "2", "--no-gan", "--patch-size", "32", "--batch-size", "2",
                          "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "-q"], timeout=300)
    assert code == 0, err[-3000:]
    assert training_info(out)["world_size"] == 2


def test_torchrun_run_where_one_rank_fails_ends_with_its_error_instead_of_hanging(folder, tmp_path):
    """Rank 1 fails while rank 0 waits in a collective (as in DDP's set-up). The failed rank must not wait
    at the end-of-run barrier: the two would wait for ever (the CI hang of stops 23-24, where one rank
    tripped over the other writing the same frame cache). It exits with its error; torchrun ends the other."""
    script = tmp_path / "one_rank_fails.py"
    script.write_text(
        "import sys\n"
        "import torch\n"
        "import torch.distributed as dist\n"
        "import vsr.finetune\n"
        "from vsr.cli import main\n"
        "def run_finetune(opts, cb):\n"
        "    if dist.get_rank() == 1:\n"
        "        raise vsr.finetune.FinetuneError('rank 1 cannot go on')\n"
        "    dist.all_gather([torch.zeros(1), torch.zeros(1)], torch.zeros(1))  # as DDP's set-up does\n"
        "    raise AssertionError('rank 0 got past a collective rank 1 never joined')\n"
        "vsr.finetune.run_finetune = run_finetune\n"
        "main(['finetune', sys.argv[1], '--device', 'cpu', '-q'])\n")
    code, err = torchrun([str(script), str(folder)], timeout=120)
    assert code is not None, "a torchrun run with one failed rank hung (the failed rank waited at a barrier)"
    assert code != 0
    assert "rank 1 cannot go on" in err


def test_ctrl_c_writes_a_checkpoint_that_resumes(folder, tmp_path):
    from vsr.report import TrainReporter

    out = tmp_path / "w.safetensors"

    class Interrupting(TrainReporter):
        def step(self, step, losses):
            if step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(_opts(folder, out, train={"steps": 6}), Interrupting())
    assert not out.exists()
    state = torch.load(out.with_suffix(".ckpt"), weights_only=True)
    assert state["step"] == 3
    log = StepLog()
    run_finetune(_opts(folder, out, train={"steps": 6}, resume=out.with_suffix(".ckpt")), log)
    assert log.started == (3, 6) and log.steps == [4, 5, 6]  # on from the checkpoint, not from the start
    assert training_info(out)["steps"] == 6


@pytest.mark.parametrize("precision,scaled", [("bf16", False), ("fp16", True)])
def test_mixed_precision_steps_learn_and_checkpoint(precision, scaled):
    """bf16 autocast and fp16 with loss scaling (here on the CPU; the same code on CUDA): both
    phases run, losses stay finite, the pixel loss falls, the scaler's state is checkpointed."""
    torch.manual_seed(0)
    cfg = TrainConfig(steps=12, pretrain_steps=8, batch_size=4, patch_size=32, lr=2e-3, warmup_steps=1)
    trainer = Trainer(tiny_generator(blocks=1, channels=8, batch_norm=False, global_skip="bicubic").train(), cfg,
                      perceptual=tiny_perceptual(), precision=precision)
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert trainer.scaler.is_enabled() is scaled
    hr = torch.from_numpy(np.stack([textured(i, 32, 32) for i in range(4)])).permute(0, 3, 1, 2).float() / 255
    lr = data_mod.downscale(hr, 4)
    pixel = [float(trainer.train_step(lr, hr)["pixel"]) for _ in range(8)]
    assert pixel[-1] < pixel[0]
    gan = trainer.train_step(lr, hr)
    assert all(np.isfinite(float(v)) for v in gan.values()) and {"content", "adversarial", "d"} <= set(gan)
    state = trainer.state_dict()
    assert ("scale" in state["scaler"]) is scaled
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())  # master weights stay fp32


def test_prefetcher_hands_out_the_samplers_sequence_and_its_resume_state(tmp_path):
    np.save(tmp_path / "a.npy", textured(0))
    direct = data_mod.PatchSampler([tmp_path / "a.npy"], 32, 4, seed=3)
    ahead = data_mod.Prefetcher(data_mod.PatchSampler([tmp_path / "a.npy"], 32, 4, seed=3), 2, depth=3)
    try:
        for _ in range(3):
            lr, hr = ahead.next()
            lr2, hr2 = direct.sample(2)
            assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
            # however far ahead it has drawn, the state to resume from is just after this batch
            assert torch.equal(ahead.state(), direct.generator.get_state())
        with pytest.raises(ValueError, match="batches of 2"):
            ahead.next(5)
    finally:
        ahead.close()


def test_summary_reports_speed_precision_and_data_wait(folder, tmp_path):
    summary = run_finetune(_opts(folder, tmp_path / "s.safetensors", train={"steps": 3, "pretrain_steps": 3}))
    assert summary["precision"] == ("bf16" if device_mod.cpu_has_native_bf16() else "fp32")
    assert summary["steps_per_second"] > 0 and 0 <= summary["data_wait_fraction"] < 1


def test_body_only_starts_another_scale_from_trained_features(folder, tmp_path):
    """--body-only: a x2 model from x4 weights keeps head and residual body, and starts as bicubic."""
    x4 = tmp_path / "x4.safetensors"
    source = tiny_generator(scale=4, batch_norm=False, global_skip="bicubic")
    save_generator(x4, source)
    opts = dataclasses.replace(_opts(folder, tmp_path / "x2.safetensors"), start=str(x4), scale=2)
    with pytest.raises(FinetuneError, match="--body-only"):
        run_finetune(opts)
    from vsr.finetune import _starting_generator

    model, started, earlier = _starting_generator(dataclasses.replace(opts, body_only=True))
    assert model.config.scale == 2 and "head and body" in started and earlier == {}  # saved without a record
    for key, value in source.state_dict().items():
        if key.startswith(("head.", "body.", "body_tail.")):
            assert torch.equal(model.state_dict()[key], value), key
    x = torch.rand(1, 3, 12, 10)
    bicubic = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.allclose(model.eval()(x), bicubic, atol=1e-6)


@pytest.mark.parametrize(("d_arch", "gan_lr"), [("vgg", 1e-3), ("unet", 3e-4)])
def test_esrgan_recipe_options_train(d_arch, gan_lr):
    """Relativistic average GAN loss and a spectrally normalised discriminator (the paper's layout, or
    Real-ESRGAN's U-Net that scores every pixel): both steps run and the discriminator learns to
    tell the (untrained) generator's output from HR."""
    torch.manual_seed(0)
    cfg = TrainConfig(steps=30, pretrain_steps=0, batch_size=4, patch_size=32, gan_lr=gan_lr, warmup_steps=1,
                      gan_loss="ragan", d_norm="spectral", d_arch=d_arch)
    trainer = Trainer(tiny_generator(blocks=1, channels=8, batch_norm=False, global_skip="bicubic").train(), cfg,
                      perceptual=tiny_perceptual(), precision="fp32")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trainer.discriminator.modules())
    assert any("parametrizations" in name for name, _ in trainer.discriminator.named_parameters())
    hr = torch.from_numpy(np.stack([textured(i, 32, 32) for i in range(4)])).permute(0, 3, 1, 2).float() / 255
    lr = data_mod.downscale(hr, 4)
    first = trainer.train_step(lr, hr)
    for _ in range(12):
        last = trainer.train_step(lr, hr)
    assert all(np.isfinite(float(v)) for v in last.values())
    assert float(last["d"]) < float(first["d"])  # D separates real from fake better than at the start
    with pytest.raises(ValueError, match="gan loss"):
        TrainConfig(gan_loss="wgan")
    with pytest.raises(ValueError, match="spectral"):
        TrainConfig(d_arch="unet", d_norm="batch")


def test_colour_loss_pins_colour_and_leaves_texture_free():
    """A colour cast hidden under drawn texture: the pixel L1 hardly sees it (its slope for a uniform
    shift is the balance of the residuals' signs), the block-mean loss sees it in full; texture alone
    costs the block-mean loss little.  With the weight set, the generator step reports it."""
    from vsr.train import colour_loss

    torch.manual_seed(0)
    hr = torch.rand(2, 3, 32, 32)
    texture = 0.2 * torch.randn(2, 3, 32, 32)  # large, symmetric residuals, as drawn detail makes
    cast = torch.tensor([0.02, 0.0, -0.02]).view(1, 3, 1, 1)
    l1 = torch.nn.functional.l1_loss
    assert colour_loss(hr + texture, hr) < 0.1 * l1(hr + texture, hr)
    pixel_rise = float(l1(hr + texture + cast, hr) - l1(hr + texture, hr))
    colour_rise = float(colour_loss(hr + texture + cast, hr) - colour_loss(hr + texture, hr))
    assert colour_rise > 0.5 * 0.04 / 3  # half the mean |cast| (block means of the texture hide a little)
    assert pixel_rise < 0.15 * colour_rise
    cfg = TrainConfig(steps=3, pretrain_steps=0, batch_size=2, patch_size=32, warmup_steps=1, gan_colour_weight=1.0)
    trainer = Trainer(tiny_generator(batch_norm=False, global_skip="bicubic"), cfg, perceptual=tiny_perceptual())
    assert "colour" in trainer.train_step(data_mod.downscale(hr, 4), hr)
    with pytest.raises(ValueError, match="multiple of 16"):
        TrainConfig(patch_size=40, gan_colour_weight=1.0)


def test_grid_loss_sees_a_faint_fixed_checker_under_texture_and_spares_texture():
    """A 4-px periodic pattern of 1 level RMS under texture 25x stronger: the grid metric sees it in
    full, the grid loss most of it (the texture's own phase means blur it), the pixel L1 hardly;
    texture alone (no fixed phase) costs the grid loss little.  With the weight set, the generator step reports it."""
    from vsr.metrics import grid_level, periodic_pattern
    from vsr.train import grid_loss

    torch.manual_seed(0)
    hr = torch.rand(2, 3, 96, 96) * 0.6 + 0.2
    texture = 0.1 * torch.randn(2, 3, 96, 96)
    checker = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0]] * 2).view(1, 1, 4, 4) / 255
    grid = checker.repeat(1, 1, 24, 24)
    l1 = torch.nn.functional.l1_loss
    found = periodic_pattern(hr + grid - hr, 4)
    assert torch.allclose(found, checker.expand_as(found), atol=1e-6)  # exactly the pattern, any content
    grid_rise = float(grid_loss(hr + texture + grid, hr, 4) - grid_loss(hr + texture, hr, 4))
    pixel_rise = float(l1(hr + texture + grid, hr) - l1(hr + texture, hr))
    assert grid_rise > 0.3 / 255 and pixel_rise < 0.1 * grid_rise
    assert grid_loss(hr + texture, hr, 4) < 0.05 * l1(hr + texture, hr)
    assert grid_level(hr + grid, hr, 4) == pytest.approx(1.0, abs=0.15)  # levels of Y (rounded to 8 bits)
    assert grid_level(hr, hr, 4) == 0.0
    with pytest.raises(ValueError, match="at least 4x4"):
        periodic_pattern(torch.zeros(1, 1, 2, 2), 4)
    cfg = TrainConfig(steps=3, pretrain_steps=0, batch_size=2, patch_size=32, warmup_steps=1, gan_grid_weight=1.0)
    trainer = Trainer(tiny_generator(batch_norm=False, global_skip="bicubic"), cfg, perceptual=tiny_perceptual())
    small = hr[..., :32, :32]
    assert "grid" in trainer.train_step(data_mod.downscale(small, 4), small)


def test_artifact_loss_is_ldls_map_and_weighs_noise_not_detail_the_ema_shares():
    """LDL's artefact loss: the map equals the reference formulation (unfolded 7x7 variance, crop
    variance to the 1/5, zero where SR beats the EMA output); noise drawn on a flat area weighs far
    more than the same error spread evenly, and nothing counts where the EMA model is no better."""
    import torch.nn.functional as F

    from vsr.train import artifact_loss, artifact_map

    torch.manual_seed(0)
    hr = torch.rand(2, 3, 32, 32) * 0.2 + 0.4
    sr = hr + 0.05 * torch.randn_like(hr)
    ema = hr + 0.02 * torch.randn_like(hr)

    def reference(gt, out, out_ema, k=7):  # LDL's get_refined_artifact_map (csjliang/LDL, basicsr/losses/LDL_loss.py)
        res_ema = (gt - out_ema).abs().sum(1, keepdim=True)
        res = (gt - out).abs().sum(1, keepdim=True)
        patch = res.var(dim=(-1, -2, -3), keepdim=True) ** (1 / 5)
        unfolded = F.pad(res, [k // 2] * 4, mode="reflect").unfold(2, k, 1).unfold(3, k, 1)
        w = patch * unfolded.var(dim=(-1, -2), unbiased=True)
        w[res < res_ema] = 0
        return w

    assert torch.allclose(artifact_map(sr, hr, ema), reference(hr, sr, ema), atol=1e-7, rtol=1e-4)
    assert float(artifact_loss(sr, hr, hr + 2 * (sr - hr))) == 0.0  # the EMA output worse everywhere: nothing counts
    assert float(artifact_loss(sr, hr, hr)) > 0.0
    even = hr + 0.05  # the same size of error everywhere: no local variance, no artefact
    assert float(artifact_loss(even, hr, hr)) < 1e-6 * float(artifact_loss(sr, hr, hr))
    cfg = TrainConfig(steps=2, pretrain_steps=0, batch_size=2, patch_size=32, warmup_steps=1, gan_artifact_weight=1.0)
    trainer = Trainer(tiny_generator(batch_norm=False, global_skip="bicubic"), cfg, perceptual=tiny_perceptual())
    assert "artifact" in trainer.train_step(data_mod.downscale(hr, 4), hr)


def test_features_before_the_activation_end_one_layer_earlier(tmp_path):
    from vsr.perceptual import vgg_features

    torch.manual_seed(0)
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg_features("vgg16").state_dict().items()}, path)
    x = torch.rand(1, 3, 16, 16)
    after = load_perceptual("vgg16:conv1_2", path)
    before = load_perceptual("vgg16:conv1_2", path, before_activation=True)
    assert isinstance(after.features[-1], nn.ReLU) and isinstance(before.features[-1], nn.Conv2d)
    pre = before(x)
    assert pre.min() < 0 and torch.equal(after(x), torch.relu(pre))


def test_empty_folder_is_named_before_the_perceptual_network(tmp_path, monkeypatch):
    """An empty folder is found first: VGG19 (which may need a download) is not even looked for."""
    import vsr.perceptual

    def never(*a, **k):
        raise AssertionError("the perceptual network was loaded before the data was checked")

    monkeypatch.setattr(vsr.perceptual, "load_perceptual", never)
    (tmp_path / "f").mkdir()
    opts = dataclasses.replace(_opts(tmp_path / "f", tmp_path / "o.safetensors"), perceptual=None)
    with pytest.raises(FinetuneError, match="no videos or images"):
        run_finetune(opts)


def test_the_run_says_how_long_it_will_take_and_warns_when_long(folder, tmp_path, monkeypatch):
    import vsr.finetune as finetune_mod

    from vsr.report import TrainReporter

    infos, warnings = [], []

    class Listening(TrainReporter):
        info, warn = staticmethod(infos.append), staticmethod(warnings.append)

    monkeypatch.setattr(finetune_mod, "LONG_RUN_SECONDS", 0.0)
    run_finetune(_opts(folder, tmp_path / "o.safetensors", train={"steps": 12, "pretrain_steps": 10}), Listening())
    (estimate,) = [m for m in infos if m.startswith("about ")]
    assert "to go on cpu" in estimate and "s/step" in estimate
    assert "the adversarial phase is slower" in estimate  # estimated in the pixel phase, with a GAN phase ahead
    assert any("this run will take about" in w and "on the CPU" in w for w in warnings)

    infos.clear()
    run_finetune(_opts(folder, tmp_path / "p.safetensors", train={"steps": 8, "no_gan": True}), Listening())
    (estimate,) = [m for m in infos if m.startswith("about ")]
    assert "to go on cpu" in estimate and "adversarial" not in estimate  # no adversarial phase to warn of


def test_frames_are_cached_in_the_users_cache_and_clear_cache_empties_it(folder, tmp_path, monkeypatch):
    from vsr.finetune import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vsr" / "frames"
    opts = dataclasses.replace(_opts(folder, tmp_path / "o.safetensors"), cache_dir=None)
    run_finetune(opts)
    cached = [p for p in default_cache_dir().iterdir() if p.is_dir()]
    assert cached and all((p / "done").exists() for p in cached)
    (default_cache_dir() / "keep-me.txt").write_text("not vsr's")
    r = CliRunner().invoke(main, ["clear-cache"])
    assert r.exit_code == 0 and f"removed {len(cached)} cached sources" in r.output
    assert [p.name for p in default_cache_dir().iterdir()] == ["keep-me.txt"]


def test_a_checkpoint_is_taken_as_weights(folder, tmp_path):
    out = tmp_path / "w.safetensors"
    run_finetune(_opts(folder, out))
    clip = make_clip(tmp_path / "v.mp4", frames=2)
    via_ckpt, via_weights = tmp_path / "a.mkv", tmp_path / "b.mkv"
    for weights, dst in ((out.with_suffix(".ckpt"), via_ckpt), (out, via_weights)):
        r = CliRunner().invoke(main, ["upscale", str(clip), "-o", str(dst), "--weights", str(weights), "-q",
                                      "--codec", "ffv1"])
        assert r.exit_code == 0, r.output
    with av.open(str(via_ckpt)) as a, av.open(str(via_weights)) as b:
        for fa, fb in zip(a.decode(video=0), b.decode(video=0)):
            assert np.array_equal(fa.to_ndarray(), fb.to_ndarray())  # the checkpoint's EMA = the weights file


def test_training_reads_pictures_as_upscaling_does(tmp_path):
    """One decoder for both: an EXIF-rotated photo is upright for training as it is for upscaling."""
    PIL = pytest.importorskip("PIL.Image")
    from vsr.decode import FrameItem, probe, read, still_to_rgb
    from vsr.timing import Timings

    src = tmp_path / "sideways.jpg"
    exif = PIL.Exif()
    exif[0x0112] = 6
    PIL.fromarray(pattern(0, 40, 24)).save(src, exif=exif.tobytes(), quality=95)
    trained = data_mod.load_image(src)
    info = probe(src)
    (item,) = [i for i in read(info, set()) if isinstance(i, FrameItem)]
    upscaled = still_to_rgb(item, info, Timings()).rgb
    assert trained.shape == (40, 24, 3) and np.array_equal(trained, upscaled)
