"""The CUDA path: runs only where a GPU is present, skipped cleanly elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SAMPLE, tiny_generator
from vsr.pipeline import UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def frames(n=5, h=36, w=52, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8))


def test_fp16_cuda_matches_fp32_cpu():
    model = tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic")
    cpu = Upscaler(model, "cpu").upscale(frames())
    gpu = Upscaler(tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic"), "cuda").upscale(frames())
    assert gpu.device.type == "cpu" and gpu.dtype == torch.uint8
    assert (cpu.int() - gpu.int()).abs().max() <= 2


def test_stream_overlaps_and_reuses_pinned_buffers():
    up = Upscaler(tiny_generator(), "cuda")
    batches = [frames(2, seed=k) for k in range(6)]
    outs = list(up.upscale_stream(batches))
    assert [o.shape for o in outs] == [(2, 144, 208, 3)] * 6
    singles = [up.upscale(b) for b in batches]
    assert all(torch.equal(a, b) for a, b in zip(outs, singles))
    pinned_in = up._cuda._in[(0, (2, 36, 52, 3), torch.uint8)]
    assert len(pinned_in) == 2 and all(t.is_pinned() for t in pinned_in)  # two slots, reused


def test_tiles_on_cuda_match_untiled():
    model = tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic")
    x = frames(1, 70, 90)
    whole = Upscaler(model, "cuda").upscale(x).int()
    tiled = Upscaler(tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic"), "cuda", tile=32).upscale(x).int()
    assert (whole - tiled).abs().max() <= 2


def test_pipeline_on_cuda(tmp_path):
    result = upscale_file(SAMPLE, tmp_path / "o.mp4", Upscaler(tiny_generator(), "cuda"), UpscaleOptions(batch_size=4))
    assert result.frames == 25


def test_compiled_with_cuda_graphs_matches_eager():
    model = tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic")
    eager = Upscaler(model, "cuda")
    graphs = Upscaler(tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic"), "cuda", compile=True)
    batches = [frames(2, seed=k) for k in range(4)]
    for a, b in zip(eager.upscale_stream(batches), graphs.upscale_stream(batches)):
        assert (a.int() - b.int()).abs().max() <= 1


def test_colour_on_the_gpu_is_the_default_and_matches_the_cpu_path(tmp_path):
    """On CUDA the planes go to the GPU and come back converted (within a level of swscale's path)."""
    from vsr.encode import EncodeOptions
    from vsr.model import Bicubic

    lossless = EncodeOptions(codec="ffv1", crf=None, preset=None)
    gpu = upscale_file(SAMPLE, tmp_path / "g.mkv", Upscaler(Bicubic(4), "cuda", precision="fp32"),
                       UpscaleOptions(batch_size=4, encode=lossless))
    cpu = upscale_file(SAMPLE, tmp_path / "c.mkv", Upscaler(Bicubic(4), "cpu"), UpscaleOptions(encode=lossless))
    assert "to_planes" in gpu.stages and "to_rgb" not in gpu.stages
    assert gpu.frames == cpu.frames == 25
    import av

    def planes(path):
        with av.open(str(path)) as c:
            return np.array([np.concatenate([np.frombuffer(p, np.uint8) for p in f.planes]) for f in c.decode(video=0)])

    assert np.abs(planes(tmp_path / "g.mkv").astype(int) - planes(tmp_path / "c.mkv").astype(int)).max() <= 2


def test_short_last_batch_replays_the_cuda_graph():
    up = Upscaler(tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic"), "cuda", compile=True)
    eager = Upscaler(tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic"), "cuda")
    batches = [frames(4, seed=0), frames(4, seed=1), frames(3, seed=2)]
    outs = list(up.upscale_stream(batches))
    assert [o.shape[0] for o in outs] == [4, 4, 3]
    for a, b in zip(outs, eager.upscale_stream(batches)):
        assert (a.int() - b.int()).abs().max() <= 1
    assert up.compile_error is None and up.warmup_seconds > 0


def test_auto_tiles_are_sized_for_the_real_model(monkeypatch):
    """An 8 GB card: tiles sized from the 64-channel model the runner wraps (2 frames of
    fp16 at 6144 bytes a pixel: 584 px), not from the wrapper's 3 channels (which gave ~21x the area)."""
    from vsr.model import Generator, GeneratorConfig

    g = Generator(GeneratorConfig(batch_norm=False, global_skip="bicubic"))
    up = Upscaler(g, "cuda")
    assert up.bytes_per_pixel == g.config.peak_bytes_per_pixel(2) == 6144
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 8 << 30))
    list(up.upscale_stream([frames(2, 36, 52)]))
    assert up.tile == 584


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_and_validation_on_cuda(tmp_path, precision):
    """The trainer on the GPU, both phases, mixed precision, then validation (whose SSIM window was
    built on the CPU: the crash this run once ended in)."""
    from vsr.data import downscale
    from vsr.train import TrainConfig, Trainer, evaluate

    from test_train import textured, tiny_perceptual

    cfg = TrainConfig(steps=6, pretrain_steps=3, batch_size=4, patch_size=32, warmup_steps=1)
    trainer = Trainer(tiny_generator(blocks=1, batch_norm=False, global_skip="bicubic").train(), cfg, "cuda",
                      perceptual=tiny_perceptual(), precision=precision)
    hr = torch.from_numpy(np.stack([textured(i, 32, 32) for i in range(4)])).permute(0, 3, 1, 2).float() / 255
    lr = downscale(hr, 4)
    for _ in range(6):
        losses = trainer.train_step(lr.pin_memory(), hr.pin_memory())
    assert all(np.isfinite(float(v)) for v in losses.values())
    scores = evaluate(trainer.ema, [hr[0], hr[1]], 4, "cuda")
    assert np.isfinite(scores["ssim"]) and 0 < scores["ssim"] <= 1
    assert "cuda_rng" in trainer.state_dict() and trainer.state_dict()["cuda_rng"].numel() > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_torchrun_ddp_on_two_gpus_with_nccl(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import make_clip
    from vsr.weights import training_info

    folder = tmp_path / "media"
    folder.mkdir()
    for i in range(3):
        make_clip(folder / f"c{i}.mp4", frames=6, size=(128, 96))
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534", "-m", "vsr",
           "finetune", str(folder), "-o", str(out), "--from", "scratch", "--blocks", "1", "--channels", "4",
           "--steps", "4", "--no-gan", "--patch-size", "32", "--batch-size", "2", "--device", "cuda",
           "--cache-dir", str(tmp_path / "c"), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert training_info(out)["world_size"] == 2


def test_a_community_model_runs_in_fp16_on_cuda(tmp_path):
    from test_thirdparty import compact_state
    from vsr.weights import load_model

    path = tmp_path / "compact.pth"
    torch.save({"params": compact_state()}, path)
    model = load_model(path)
    cpu = Upscaler(model, "cpu").upscale(frames()).int()
    gpu = Upscaler(load_model(path), "cuda")
    assert gpu.dtype == torch.float16
    assert (gpu.upscale(frames()).int() - cpu).abs().max() <= 2
