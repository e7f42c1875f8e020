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
    pinned_in = up._cuda._in[(2, 36, 52, 3)]
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
