"""Networks, config and weights files."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import SAMPLE, tiny_generator
from vsr.model import Bicubic, Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, UNetDiscriminator, discriminator
from vsr.model import model_facts
from vsr.upscaler import Upscaler, tile_for_memory
from vsr.weights import WeightsError, load_generator, resolve_weights, save_generator, training_info


@pytest.mark.parametrize("scale", [2, 4])
def test_generator_shapes_and_paper_layout(scale):
    g = Generator(GeneratorConfig(scale=scale, blocks=2, channels=8))
    y = g(torch.rand(2, 3, 11, 13))
    assert y.shape == (2, 3, 11 * scale, 13 * scale)
    assert g.head[0].kernel_size == (9, 9) and g.tail.kernel_size == (9, 9)
    assert sum(isinstance(m, torch.nn.PixelShuffle) for m in g.modules()) == {2: 1, 4: 2}[scale]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules()) == 2 * 2 + 1


def test_paper_defaults():
    cfg = GeneratorConfig()
    assert (cfg.scale, cfg.blocks, cfg.channels, cfg.batch_norm, cfg.global_skip) == (4, 16, 64, True, "none")
    g = Generator(cfg)
    assert sum(p.numel() for p in g.parameters()) == pytest.approx(1.55e6, rel=0.02)  # the paper's SRResNet


@pytest.mark.parametrize("upsampler", ["stages", "shuffle"])
def test_bicubic_skip_starts_as_exact_bicubic(upsampler):
    g = Generator(GeneratorConfig(blocks=1, channels=8, batch_norm=False, global_skip="bicubic", upsampler=upsampler)).eval()
    x = torch.rand(1, 3, 16, 16)
    ref = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(g(x), ref, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_shuffle_upsampler_works_at_the_input_size(scale):
    """upsampler="shuffle": one 3x3 conv to 3 * scale**2 channels and one PixelShuffle(scale), no
    sub-pixel stages; FLOPs, memory and name say so."""
    cfg = GeneratorConfig(scale=scale, blocks=2, channels=8, batch_norm=False, global_skip="bicubic", upsampler="shuffle")
    g = Generator(cfg)
    assert g(torch.rand(2, 3, 11, 13)).shape == (2, 3, 11 * scale, 13 * scale)
    assert g.tail.kernel_size == (3, 3) and g.tail.out_channels == 3 * scale**2 and len(g.upsample) == 0
    assert not any(isinstance(m, torch.nn.PixelShuffle) for m in g.modules())  # forward shuffles the tail's output
    assert cfg.flops_per_pixel() == 2 * (9 * 9 * 3 * 8 + 2 * 2 * 9 * 8 * 8 + 9 * 8 * 8 + 9 * 8 * 3 * scale**2)
    assert cfg.peak_bytes_per_pixel(4) == (3 * 8 + 2 * 3 * scale**2) * 4
    assert cfg.architecture == "SRResNet 2x8 shuffle" == model_facts(g).name
    assert GeneratorConfig(blocks=2, channels=8).architecture == "SRResNet 2x8 BN"
    with pytest.raises(ValueError, match="upsampler"):
        GeneratorConfig(upsampler="deconv")


def test_discriminator_is_the_papers():
    d = Discriminator(DiscriminatorConfig(patch_size=96))
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 7
    assert d(torch.rand(2, 3, 96, 96)).shape == (2,)
    with pytest.raises(ValueError, match="96x96"):
        d(torch.rand(1, 3, 64, 64))


def test_unet_discriminator_is_real_esrgans_and_scores_every_pixel():
    d = discriminator(DiscriminatorConfig(patch_size=96, norm="spectral", arch="unet"))
    assert isinstance(d, UNetDiscriminator)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 256, 128, 64, 64, 64, 1]
    normalised = {name.split(".parametrizations")[0] for name, _ in d.named_parameters() if "parametrizations" in name}
    assert len(normalised) == 8 and not any(n.startswith(("conv0", "head")) for n in normalised)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert d(torch.rand(2, 3, 48, 72)).shape == (2, 48, 72)  # any crop: the score map has the crop's size
    with pytest.raises(ValueError, match="multiples of 8"):
        d(torch.rand(1, 3, 48, 60))
    with pytest.raises(ValueError, match="spectral"):
        DiscriminatorConfig(norm="batch", arch="unet")


def test_config_validation_and_json_roundtrip():
    with pytest.raises(ValueError, match="scale"):
        GeneratorConfig(scale=3)
    cfg = GeneratorConfig(scale=2, blocks=3, channels=16, batch_norm=False, global_skip="bicubic")
    assert GeneratorConfig.from_json(cfg.to_json()) == cfg
    assert "upsampler" not in json.loads(cfg.to_json())  # the paper's: written as before the key existed
    shuffle = GeneratorConfig(scale=4, blocks=3, channels=16, upsampler="shuffle")
    assert json.loads(shuffle.to_json())["upsampler"] == "shuffle"
    assert GeneratorConfig.from_json(shuffle.to_json()) == shuffle
    with pytest.raises(ValueError, match="unknown generator config keys"):
        GeneratorConfig.from_json(json.dumps({"scale": 4, "wings": 2}))


def test_weights_roundtrip_is_exact(tmp_path):
    g = tiny_generator(scale=2, blocks=2, batch_norm=True)
    path = tmp_path / "w.safetensors"
    save_generator(path, g, training={"steps": 7})
    loaded = load_generator(path)
    assert loaded.config == g.config
    for (k, a), (_, b) in zip(g.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert training_info(path) == {"steps": 7}
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(g(x), loaded(x))


def test_bad_weights_files_say_what_is_wrong(tmp_path):
    good = tmp_path / "good.safetensors"
    save_generator(good, tiny_generator())
    with pytest.raises(WeightsError, match="does not exist"):
        load_generator(tmp_path / "missing.safetensors")
    text = tmp_path / "t.safetensors"
    text.write_text("hello")
    with pytest.raises(WeightsError, match="not a safetensors"):
        load_generator(text)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(WeightsError, match="not vsr generator weights"):
        load_generator(foreign)
    state = tiny_generator().state_dict()
    meta = {"vsr.format": "vsr-generator-1", "vsr.config": tiny_generator().config.to_json()}
    missing = tmp_path / "missing_tensors.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("tail")}, str(missing), metadata=meta)
    with pytest.raises(WeightsError, match="missing tensors.*tail"):
        load_generator(missing)
    shapes = tmp_path / "shapes.safetensors"
    bad = dict(state)
    bad["tail.bias"] = torch.zeros(5)
    save_file(bad, str(shapes), metadata=meta)
    with pytest.raises(WeightsError, match=r"tail.bias.*shape \(5,\), expected \(3,\)"):
        load_generator(shapes)
    with pytest.raises(WeightsError, match="x4 model, but x2 was asked for"):
        load_generator(good, scale=2)


def test_resolve_bundled_names(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_WEIGHTS_DIR", str(tmp_path))
    save_generator(tmp_path / "mine.safetensors", tiny_generator())
    assert resolve_weights("mine") == tmp_path / "mine.safetensors"
    assert resolve_weights("mine.safetensors") == tmp_path / "mine.safetensors"
    with pytest.raises(WeightsError, match="bundled: mine.safetensors"):
        resolve_weights("other")


@pytest.mark.parametrize("upsampler, anchor", [("stages", 0), ("shuffle", 0), ("stages", 3), ("shuffle", 3)])
def test_receptive_radius_covers_the_network(upsampler, anchor):
    """Changing an input pixel farther away than the radius leaves an output pixel unchanged."""
    torch.manual_seed(0)
    g = tiny_generator(blocks=2, channels=4, batch_norm=False, global_skip="bicubic", upsampler=upsampler, colour_anchor=anchor)
    r = g.config.receptive_radius()
    assert model_facts(g).radius == r
    x = torch.rand(1, 3, 2 * r + 9, 2 * r + 9)
    y0 = g(x)
    c = r + 4  # the centre input pixel; its output block is at c*4 .. c*4+3
    x2 = x.clone()
    x2[..., :, : c - r - 1] = torch.rand_like(x2[..., :, : c - r - 1])  # everything beyond the radius, left
    y1 = g(x2)
    assert torch.allclose(y0[..., c * 4 : c * 4 + 4, c * 4 : c * 4 + 4], y1[..., c * 4 : c * 4 + 4, c * 4 : c * 4 + 4], atol=1e-6)
    assert model_facts(Bicubic(4)).radius == 2


def test_tiles_sized_from_free_memory():
    g = Generator(GeneratorConfig())
    per_pixel = model_facts(g).bytes_per_pixel(torch.float16)
    # 64 channels x 16 output pixels x 3 maps x 2 bytes = 6144 bytes per input pixel; half of 1 GiB: 295 px.
    assert per_pixel == 6144
    small, big = tile_for_memory(1 << 30, per_pixel), tile_for_memory(16 << 30, per_pixel)
    assert 32 <= small < big <= 4096 and small % 8 == 0
    assert small == 288
    assert tile_for_memory(1 << 30, per_pixel, batch=4) == 144  # four frames at once: half the side
    assert tile_for_memory(1 << 20, per_pixel) == 32


@pytest.mark.parametrize("compile", [False, True])
def test_memory_per_pixel_comes_from_the_model_not_its_wrapper(compile):
    """The upscaler runs a FastGenerator (or a compiled wrapper of one), which has no 64-channel
    config of its own to read: its memory figure is taken from the model it was given."""
    g = Generator(GeneratorConfig(batch_norm=False, global_skip="bicubic"))
    up = Upscaler(g, "cpu", precision="fp32", compile=compile)
    assert not isinstance(up.model, Generator)
    assert up.bytes_per_pixel == g.config.peak_bytes_per_pixel(4) == 3 * 64 * 16 * 4
    assert Upscaler(Bicubic(2), "cpu", precision="fp32").bytes_per_pixel == 3 * (4 + 1) * 4  # output and input, 3 channels


@pytest.mark.parametrize("cfg", [
    GeneratorConfig(scale=4, blocks=2, channels=8),
    GeneratorConfig(scale=2, blocks=1, channels=8, batch_norm=False, global_skip="bicubic"),
    GeneratorConfig(scale=4, blocks=1, channels=16, batch_norm=False, global_skip="bicubic"),
    GeneratorConfig(scale=4, blocks=2, channels=8, upsampler="shuffle"),
    GeneratorConfig(scale=2, blocks=1, channels=8, batch_norm=False, global_skip="bicubic", upsampler="shuffle"),
    GeneratorConfig(scale=4, blocks=1, channels=16, batch_norm=False, global_skip="bicubic", upsampler="shuffle"),
])
def test_fast_generator_is_the_same_function(cfg):
    """The polyphase rewrite of the last stage gives the generator's outputs, borders included."""
    from vsr.fastgen import FastGenerator

    torch.manual_seed(3)
    g = Generator(cfg).eval()
    with torch.no_grad():
        g.tail.weight.normal_(0, 0.05)
        for m in g.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(-0.5, 0.5)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 17, 29)
    fast = FastGenerator(g).eval()
    with torch.inference_mode():
        want = g(x)
        assert torch.allclose(fast(x), want, atol=1e-5)
        # channels_last, as Upscaler runs it on the CPU (fused conv+add when oneDNN offers it)
        fast = fast.to(memory_format=torch.channels_last)
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-5)


# ------------------------------------------------------------------ the colour anchor (GeneratorConfig.colour_anchor)
def _anchored(upsampler="stages", scale=4, anchor=2, seed=3):
    """A tiny bicubic-skip generator with the anchor, its tail random (the untrained tail is zero)."""
    torch.manual_seed(seed)
    g = Generator(GeneratorConfig(scale=scale, blocks=1, channels=8, batch_norm=False, global_skip="bicubic",
                                  upsampler=upsampler, colour_anchor=anchor)).eval()
    with torch.no_grad():
        g.tail.weight.normal_(0, 0.05)
        g.tail.bias.normal_(0, 0.05)
    return g


def test_colour_anchor_is_off_by_default_and_validated():
    """Off unless asked, and then not even written into a file's config (every file made before it
    loads and runs as before); a value out of range, or without the bicubic skip it acts on, is refused."""
    assert GeneratorConfig().colour_anchor == 0
    plain = GeneratorConfig(batch_norm=False, global_skip="bicubic")
    assert "colour_anchor" not in json.loads(plain.to_json())
    assert plain.receptive_radius() == 40 and plain.anchor_radius() == 0 and plain.anchor_flops_per_pixel() == 0
    anchored = GeneratorConfig(batch_norm=False, global_skip="bicubic", colour_anchor=8)
    assert json.loads(anchored.to_json())["colour_anchor"] == 8
    assert GeneratorConfig.from_json(anchored.to_json()) == anchored
    assert anchored.receptive_radius() == 40 + 8 + 1  # the box's 8 and the bilinear upsampling's one block
    assert anchored.architecture == plain.architecture
    with pytest.raises(ValueError, match="needs global_skip='bicubic', got 'none'"):
        GeneratorConfig(colour_anchor=4)
    for bad in (-1, 65, True, 2.0):
        with pytest.raises(ValueError, match="colour_anchor must be an integer from 0"):
            GeneratorConfig(global_skip="bicubic", colour_anchor=bad)


def test_colour_anchor_costs_almost_nothing():
    """The anchor runs on 3 channels: against the 16x64 network it adds well under 0.1 % of the
    operations (measured 1.7e-4 at K = 8)."""
    plain = GeneratorConfig(batch_norm=False, global_skip="bicubic")
    for k in (1, 8, 64):
        anchored = GeneratorConfig(batch_norm=False, global_skip="bicubic", colour_anchor=k)
        extra = anchored.flops_per_pixel() - plain.flops_per_pixel()
        assert extra == anchored.anchor_flops_per_pixel() > 0
        assert extra < 1e-3 * plain.flops_per_pixel()
    fast = GeneratorConfig(blocks=10, channels=32, batch_norm=False, global_skip="bicubic", upsampler="shuffle")
    assert dataclasses.replace(fast, colour_anchor=8).anchor_flops_per_pixel() < 3e-3 * fast.flops_per_pixel()


@pytest.mark.parametrize("upsampler", ["stages", "shuffle"])
def test_colour_anchor_removes_a_constant_colour_offset_of_the_residual(upsampler):
    """A residual that is one colour everywhere (here the tail's bias: a cast of +25, -13, +5 levels) is
    all smooth part: with the anchor the output is exactly bicubic; without it, bicubic plus the cast.
    Detail finer than an input pixel passes untouched: a checker of period 2 output pixels has no
    block mean."""
    from vsr.model import anchor_lowpass

    for anchor in (0, 3):
        torch.manual_seed(0)
        g = Generator(GeneratorConfig(blocks=1, channels=8, batch_norm=False, global_skip="bicubic",
                                      upsampler=upsampler, colour_anchor=anchor)).eval()
        with torch.no_grad():  # the tail's weights stay zero; its bias is the cast
            g.tail.bias.copy_(torch.tensor([0.1, -0.05, 0.02]).repeat_interleave(g.tail.bias.numel() // 3))
        x = torch.rand(1, 3, 20, 24)
        bic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        with torch.inference_mode():
            cast = (g(x) - bic).mean((0, 2, 3))
            fast = model_facts(g).module(x) - bic
        want = torch.zeros(3) if anchor else torch.tensor([0.1, -0.05, 0.02])
        assert torch.allclose(cast, want, atol=1e-6), (anchor, cast)
        assert torch.allclose(fast.mean((0, 2, 3)), want, atol=1e-6) and fast.abs().amax((0, 2, 3)).sub(want.abs()).abs().max() < 1e-5
    yy, xx = torch.meshgrid(torch.arange(80), torch.arange(96), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).float().expand(1, 3, 80, 96)
    assert anchor_lowpass(checker, 4, 3).abs().max() < 1e-6
    ramp = (xx / 95.0).float().expand(1, 3, 80, 96)  # a smooth gradient is smooth part (away from the borders)
    assert torch.allclose(anchor_lowpass(ramp, 4, 3)[..., 16:-16], ramp[..., 16:-16], atol=1e-5)
    with pytest.raises(ValueError, match="4x the input's size"):
        anchor_lowpass(torch.zeros(1, 3, 10, 16), 4, 3)


@pytest.mark.parametrize("upsampler", ["stages", "shuffle"])
@pytest.mark.parametrize("scale", [2, 4])
def test_anchored_fast_rewrite_is_the_same_function(upsampler, scale):
    """What the upscaler runs (the fast rewrite, the anchor taken from the output less the skip's
    block means) gives the generator's outputs, borders included, NCHW and channels_last."""
    g = _anchored(upsampler, scale)
    x = torch.rand(2, 3, 17, 29)
    module = model_facts(g).module.eval()
    plain = Generator(dataclasses.replace(g.config, colour_anchor=0)).eval()
    plain.load_state_dict(g.state_dict())
    with torch.inference_mode():
        want = g(x)
        assert (want - plain(x)).abs().max() > 1e-3  # the anchor does change this network's output
        assert torch.allclose(module(x), want, atol=1e-5)
        module = module.to(memory_format=torch.channels_last)
        assert torch.allclose(module(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-5)


@pytest.mark.parametrize("upsampler", ["stages", "shuffle"])
def test_anchored_tiles_stitch_exactly(upsampler):
    """The anchor widens the receptive field; the tile margin (the config's radius) covers it, so a
    tiled run equals an untiled one. With the margin of the network alone it would not."""
    g = _anchored(upsampler, anchor=4)
    x = torch.rand(1, 3, 52, 70)
    whole = Upscaler(g, "cpu", precision="fp32", workers=1)
    tiled = Upscaler(g, "cpu", tile=16, precision="fp32", workers=1)
    assert tiled.margin == g.config.receptive_radius() == dataclasses.replace(g.config, colour_anchor=0).receptive_radius() + 5
    with torch.inference_mode():
        want = whole.forward(x)
        assert torch.allclose(tiled.forward(x), want, atol=1e-5)
        short = Upscaler(g, "cpu", tile=16, precision="fp32", workers=1)
        short.margin = dataclasses.replace(g.config, colour_anchor=0).receptive_radius()
        assert (short.forward(x) - want).abs().max() > 1e-4


def _conv_add_case():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.rand(2, 16, 9, 13).contiguous(memory_format=torch.channels_last)
    acc = torch.rand(2, 32, 9, 13).contiguous(memory_format=torch.channels_last)
    return conv, x, acc


def test_conv_add_is_an_in_place_residual_add():
    """Whichever path this build takes (oneDNN's fused op or two PyTorch ops): in place, and right."""
    from vsr.fastgen import conv_add_

    conv, x, acc = _conv_add_case()
    with torch.inference_mode():
        want = acc + conv(x)
        out = conv_add_(acc, x, conv)
        assert out.data_ptr() == acc.data_ptr()
        assert torch.allclose(acc, want, atol=1e-5)
        nchw = torch.rand(2, 32, 9, 13)  # not channels_last: always the two-op path
        assert torch.allclose(conv_add_(nchw.clone(), x.contiguous(), conv), nchw + conv(x), atol=1e-5)


def test_conv_add_uses_the_fused_onednn_op_where_the_build_has_it():
    from vsr.fastgen import _fused_conv_add_op, conv_add_

    if not torch.backends.mkldnn.is_available() or _fused_conv_add_op() is None:
        pytest.skip("this PyTorch build has no usable oneDNN conv+add")
    conv, x, acc = _conv_add_case()
    calls = []
    op = _fused_conv_add_op()
    with torch.inference_mode():
        want = acc + conv(x)
        import vsr.fastgen as fastgen

        original = fastgen._fused_conv_add_op
        fastgen._fused_conv_add_op = lambda: (lambda *a: calls.append(1) or op(*a))
        try:
            conv_add_(acc, x, conv)
        finally:
            fastgen._fused_conv_add_op = original
    assert calls == [1] and torch.allclose(acc, want, atol=1e-5)


KEEP_MEMORY_CHILD = """
import resource, sys, torch, torch.nn.functional as F
from vsr.system import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
x, w = torch.rand(1, 4, 512, 512), torch.rand(64, 4, 3, 3)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def faults_of_one_layer():  # 64 MB outputs, above glibc's largest mmap threshold (32 MB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = F.prelu(F.conv2d(x, w, padding=1), torch.tensor([0.1]))
    del y
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(3):
    faults_of_one_layer()
r0 = rss()
print(applied, sum(faults_of_one_layer() for _ in range(8)), rss() - r0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.parametrize("env, keep", [("1", True), ("0", False)])
def test_freed_memory_is_reused_without_page_faults(env, keep):
    """Large tensors freed and allocated again are served from memory already mapped: glibc's default
    faults in 2 x 16384 fresh pages per call (two 64 MB outputs); kept, the heap settles after a few
    calls (measured: a rare call still extends it once) and stays bounded."""
    out = subprocess.run([sys.executable, "-c", KEEP_MEMORY_CHILD], capture_output=True, text=True, check=True,
                         env={**os.environ, "VSR_KEEP_FREED_MEMORY": env}).stdout.split()
    applied, faults, growth = out[0] == "True", int(out[1]), int(out[2])
    assert applied is keep
    if keep:
        assert faults < 3 * 16384 and growth < 3 * 2**26
    else:
        assert faults > 8 * 2 * 16384  # glibc's default: fresh mmaps, every page faulted in again


@pytest.mark.parametrize("name, steps", [("vsr_x4_psnr", 10000), ("vsr_x4_srgan", 740), ("vsr_x2_psnr", 2000),
                                         ("vsr_x4_fast", 30000), ("vsr_x2_fast", 12000)])
def test_bundled_weights_load_and_beat_or_sharpen_bicubic(name, steps):
    """The shipped files load with their config and training record, and do what they are for on a
    natural texture they were not trained on (skimage is not a dependency: a synthetic one)."""
    from vsr.data import downscale
    from vsr.metrics import psnr_y

    g = load_generator(resolve_weights(name))
    info = training_info(resolve_weights(name))
    scale = int(name[5])
    assert g.config.scale == scale and not g.config.batch_norm and g.config.global_skip == "bicubic"
    assert info["steps"] == steps
    if name.endswith("_fast"):  # the fast tier (#31): at most 1/8 of the PSNR model's FLOPs per pixel
        psnr_config = load_generator(resolve_weights(f"vsr_x{scale}_psnr")).config
        assert g.config.upsampler == "shuffle" and g.config.flops_per_pixel() * 8 <= psnr_config.flops_per_pixel()
    # smooth random texture (band-limited noise), 128 px
    rng = torch.Generator().manual_seed(0)
    hr = F.interpolate(torch.rand(1, 3, 32, 32, generator=rng), size=128, mode="bicubic", align_corners=False).clamp(0, 1)
    lr = downscale(hr, scale)  # clamped to [0, 1] by downscale
    with torch.inference_mode():
        sr = g(lr).clamp(0, 1)
        bic = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    if name == "vsr_x4_psnr":
        # The third generation (10000 GPU steps on frames packed at 1024 px) gains only +0.25 dB on this smooth synthetic
        # texture (the second +1.09, the first +2.9) and +0.33 on the octave texture below (second +0.66), while on real
        # pictures it gains more than the second: +0.08 dB more on val, +0.03 on selection, +0.66 against +0.61 dB on the
        # sample clip's first frame. It sharpens more, which band-limited noise punishes. So: a real frame, and a lower bar here.
        assert psnr_y(sr, hr) > psnr_y(bic, hr) + 0.15  # measured +0.25 dB
        with av.open(str(SAMPLE)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        hr = torch.from_numpy(frame[: frame.shape[0] // 4 * 4, : frame.shape[1] // 4 * 4].copy()).permute(2, 0, 1)[None] / 255
        lr = downscale(hr, 4)
        with torch.inference_mode():
            sr = g(lr).clamp(0, 1)
        bic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        assert psnr_y(sr, hr) > psnr_y(bic, hr) + 0.55  # measured +0.66 dB (the second generation +0.61)
    elif name == "vsr_x4_fast":
        assert psnr_y(sr, hr) > psnr_y(bic, hr) + 0.8  # measured +1.24 dB
    elif name in ("vsr_x2_psnr", "vsr_x2_fast"):
        # at x2 the smooth texture above is nearly all in the LR (bicubic recovers it; the model,
        # sharpening, is 1.2 dB below): a texture with detail at every octave, as photos have
        octaves = [(16, 1.0), (32, 0.5), (64, 0.25), (128, 0.12)]
        hr = sum(F.interpolate(torch.rand(1, 3, n, n, generator=rng), size=128, mode="bicubic", align_corners=False) * w
                 for n, w in octaves)
        hr = (hr - hr.min()) / (hr.max() - hr.min())
        lr = downscale(hr, 2)
        with torch.inference_mode():
            sr = g(lr).clamp(0, 1)
        bic = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
        assert psnr_y(sr, hr) > psnr_y(bic, hr) + 0.8  # measured +1.17 dB (vsr_x2_fast +1.17 too)
    else:  # sharper than bicubic and than the PSNR model (more high-frequency energy), without a colour cast,
        # on a real picture: the sample clip's first frame (a film nobody here made; not in the training data).
        # The band-limited noise above says little here: on it the fifth generation scores 1.31x bicubic's
        # detail against the PSNR model's 1.35x, where on the held-out photos it is 1.38-1.70x against 1.17-1.28x.
        def detail(x):
            return (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
        with av.open(str(SAMPLE)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        hr = torch.from_numpy(frame[: frame.shape[0] // 4 * 4, : frame.shape[1] // 4 * 4].copy()).permute(2, 0, 1)[None] / 255
        lr = downscale(hr, 4)
        psnr_model = load_generator(resolve_weights("vsr_x4_psnr"))
        with torch.inference_mode():
            sr, sr_psnr = g(lr).clamp(0, 1), psnr_model(lr).clamp(0, 1)
        bic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        assert detail(sr) > 1.35 * detail(bic)  # measured 1.53x (the fourth generation 1.55x)
        assert detail(sr) > 1.15 * detail(sr_psnr)  # measured 1.24x (vsr_x4_psnr is 1.24x bicubic)
        # and no colour cast (the target: under 1 level per channel): measured 0.16
        assert ((sr - hr).mean((0, 2, 3)) * 255).abs().max() < 1.0


def test_only_the_adversarial_bundled_model_has_the_colour_anchor():
    """vsr_x4_srgan ships with colour_anchor 2 (#31: its colour casts taken out at inference); every other
    bundled file keeps the default, so its config, outputs and margins are as before."""
    from vsr.weights import bundled_weights, read_metadata

    names = bundled_weights()
    assert "vsr_x4_srgan.safetensors" in names and len(names) >= 6
    for name in names:
        config = load_generator(resolve_weights(name)).config
        written = json.loads(read_metadata(resolve_weights(name))["vsr.config"])
        if name == "vsr_x4_srgan.safetensors":
            assert config.colour_anchor == written["colour_anchor"] == 2
            assert config.receptive_radius() == 40 + 3
        else:
            assert config.colour_anchor == 0 and "colour_anchor" not in written, name


def test_stages_run_by_several_workers_count_per_worker():
    from vsr.timing import Timings

    t = Timings({"model": 8.0, "encode": 5.0, "to_tensor": 0.4})
    assert t.bottleneck() == ("model", 8.4)
    t.lanes["model"] = 2  # two frames at once: each worker thread is busy half of the summed time
    assert t.by_thread() == {"model": 4.2, "encode": 5.0}
    assert t.bottleneck() == ("encode", 5.0)


def test_upscaler_workers_are_checked():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Upscaler(Bicubic(4), "cpu", workers=0)
    with pytest.raises(ValueError, match="CPU in eager mode"):
        Upscaler(Bicubic(4), "cpu", workers=2, compile=True)


def test_precision_auto_follows_the_machine_and_bad_names_are_refused():
    from vsr.device import DeviceError, cpu_has_native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_precision("fp32", cpu) == torch.float32 and resolve_precision("fp16", cpu) == torch.float16
    with pytest.raises(DeviceError, match="expected a precision"):
        resolve_precision("fp8", cpu)


def test_bf16_on_the_cpu_stays_within_a_level_or_two_of_fp32():
    """bf16 autocast runs the convolutions in bf16, but the bicubic skip (so the output's base) in
    fp32: the picture stays within a couple of levels of fp32's, mostly exact."""
    g = tiny_generator(blocks=2, channels=8, batch_norm=False, global_skip="bicubic")
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 24, 20, 3), dtype=np.uint8))
    ref = Upscaler(g, "cpu", precision="fp32").upscale(frames).int()
    bf16 = Upscaler(g, "cpu", precision="bf16")
    assert bf16.dtype == torch.bfloat16 and bf16.input_dtype == torch.float32
    out = bf16.upscale(frames).int()
    diff = (out - ref).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.3


def test_blended_tiles_hide_the_seams_of_a_model_wider_than_its_margin():
    """A model whose output depends on an 81-px neighbourhood, wider than the 32-px overlap: tiles
    cannot be exact, but blended across the overlap the result stays within a few levels of the
    untiled one and no seam adds a step of more than a level between neighbouring pixels (stitched
    cores measured 2)."""
    from vsr.upscaler import BLEND_MARGIN

    class Wide(torch.nn.Module):
        scale = 2

        def forward(self, x):
            local = F.avg_pool2d(F.pad(x, (40, 40, 40, 40), mode="replicate"), 81, stride=1)
            return F.interpolate(0.5 * x + local, scale_factor=2, mode="nearest").clamp(0, 1)

    yy, xx = np.mgrid[0:96, 0:128]
    picture = 127 + 120 * np.sin(xx / 9.0) * np.cos(yy / 11.0)
    frames = torch.from_numpy(np.repeat(picture[..., None], 3, -1).astype(np.uint8))[None]
    up = Upscaler(Wide(), "cpu", tile=40, workers=1)
    assert up.radius is None and up.margin == BLEND_MARGIN
    whole = Upscaler(Wide(), "cpu", workers=1).upscale(frames).int()
    tiled = up.upscale(frames).int()
    diff = (whole - tiled).abs()
    assert diff.max() <= 4 and diff.float().mean() < 1
    for dim in (1, 2):  # across columns and rows
        step = tiled.diff(dim=dim).abs() - whole.diff(dim=dim).abs()
        assert step.max() <= 1


def test_bundled_degraded_model_handles_compressed_input_better_than_the_clean_one():
    """vsr_x4_degraded (1000 steps of --degrade from vsr_x4_psnr): on an H.264-compressed LR of a
    texture with detail at every octave it is closer to the HR than the clean model, which sharpens
    the coding artefacts (measured +0.23 dB; held-out real images in weights/README.md)."""
    from vsr.data import downscale, h264_roundtrip
    from vsr.metrics import psnr_y

    info = training_info(resolve_weights("vsr_x4_degraded"))
    assert info["steps"] == 1000 and info["train_config"]["degrade"]
    rng = torch.Generator().manual_seed(0)
    octaves = [(16, 1.0), (32, 0.5), (64, 0.25), (128, 0.12)]
    hr = sum(F.interpolate(torch.rand(1, 3, n, n, generator=rng), size=128, mode="bicubic", align_corners=False) * w
             for n, w in octaves)
    hr = (hr - hr.min()) / (hr.max() - hr.min())
    lr = h264_roundtrip(downscale(hr, 4)[0], crf=30)[None]
    scores = {}
    for name in ("vsr_x4_degraded", "vsr_x4_psnr"):
        with torch.inference_mode():
            scores[name] = psnr_y(load_generator(resolve_weights(name))(lr).clamp(0, 1), hr)
    assert scores["vsr_x4_degraded"] > scores["vsr_x4_psnr"] + 0.1


class _FakeStream:
    def __init__(self, device=None):
        pass

    def wait_event(self, event):
        pass


class _FakeEvent:
    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


@pytest.fixture
def cuda_stand_ins(monkeypatch):
    """CUDA's streams, events, pinning and memory queries stood in for, so the CUDA runner's own
    logic runs on any machine (CUDA itself is tested in test_cuda.py, where a GPU is present)."""
    import contextlib

    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 8 << 30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)


@pytest.mark.parametrize("size, dtype", [(None, torch.uint8), ((100, 140), torch.uint8), (None, torch.uint16)])
def test_cuda_runner_bookkeeping_on_cpu_stand_ins(cuda_stand_ins, size, dtype):
    """The CUDA runner's own logic: two pinned slots, results one batch late, the short last batch
    padded for a CUDA graph, the output size and depth passed down."""
    from vsr.upscaler import CudaRunner

    up = Upscaler(tiny_generator(blocks=1, batch_norm=False, global_skip="bicubic"), "cpu")
    runner = CudaRunner(up)
    up._cudagraphs = True  # as if compiled with CUDA graphs: a short last batch is padded
    top = 65536 if dtype == torch.uint16 else 256
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.integers(0, top, (n, 25, 35, 3)).astype(np.uint16 if dtype == torch.uint16 else np.uint8))
               for n in (2, 2, 2, 1)]
    outs = list(runner.stream(batches, None, size))
    want = [up.upscale(b, None, size) for b in batches]
    assert [o.shape for o in outs] == [w.shape for w in want]
    # (16 bits see float differences between a batch of 1 and the padded batch of 2: a level or two)
    tolerance = 2 if dtype == torch.uint16 else 0
    assert all(o.dtype == dtype and (o.int() - w.int()).abs().max() <= tolerance for o, w in zip(outs, want))
    assert len(runner._in[(0, (2, 25, 35, 3), dtype)]) == 2  # two slots, reused over four batches


def test_cuda_runner_retries_out_of_memory_with_smaller_tiles(cuda_stand_ins, monkeypatch):
    """Out of device memory: the same batch again with tiles half as large, down to 32 px, then the
    error (never a skipped frame)."""
    from vsr.upscaler import CudaRunner

    up = Upscaler(tiny_generator(blocks=1, batch_norm=False, global_skip="bicubic"), "cpu", tile=200)
    runner = CudaRunner(up)
    real_forward, tiles = up.forward, []

    def forward(x):
        tiles.append(up.tile)
        if up.tile > 40:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return real_forward(x)

    monkeypatch.setattr(up, "forward", forward)
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 60, 70, 3), dtype=np.uint8))
    (out,) = list(runner.stream([batch]))
    assert tiles == [200, 100, 50, 32]
    whole = Upscaler(tiny_generator(blocks=1, batch_norm=False, global_skip="bicubic"), "cpu").upscale(batch)
    # tiled as untiled, to the rounding of one level: the convolutions' kernels differ with the input size on some
    # CPUs (an AMX Xeon rounds a few pixels the other way), as test_tiles_match_untiled allows
    assert (out.int() - whole.int()).abs().max() <= 1
    up.tile = 32
    monkeypatch.setattr(up, "forward", lambda x: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("out of memory")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(runner.stream([batch]))
