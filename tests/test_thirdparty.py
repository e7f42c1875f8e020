"""Community weights through spandrel: official key layouts, a real clip, refusals in one line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import ffmpeg_packets, make_clip, pyav_video_pts
from vsr.cli import main
from vsr.pipeline import UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler
from vsr.weights import WeightsError, load_model


def rrdbnet_state(nf: int = 16, blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's RRDBNet (BasicSR) x4 in its official key layout (growth 32), random weights."""
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, cin, cout):
        state[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.03
        state[f"{name}.bias"] = torch.zeros(cout)

    conv("conv_first", 3, nf)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{c}", nf + (c - 1) * 32, 32 if c < 5 else nf)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", nf, 3)
    return state


def compact_state(nf: int = 8, convs: int = 2, scale: int = 4, channels: int = 3) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's SRVGGNetCompact (realesr-animevideov3's architecture), official layout."""
    gen = torch.Generator().manual_seed(1)
    state = {"body.0.weight": torch.randn(nf, channels, 3, 3, generator=gen) * 0.1, "body.0.bias": torch.zeros(nf),
             "body.1.weight": torch.full((nf,), 0.25)}
    i = 2
    for _ in range(convs):
        state[f"body.{i}.weight"] = torch.randn(nf, nf, 3, 3, generator=gen) * 0.1
        state[f"body.{i}.bias"] = torch.zeros(nf)
        state[f"body.{i + 1}.weight"] = torch.full((nf,), 0.25)
        i += 2
    state[f"body.{i}.weight"] = torch.randn(channels * scale * scale, nf, 3, 3, generator=gen) * 0.1
    state[f"body.{i}.bias"] = torch.zeros(channels * scale * scale)
    return state


@pytest.fixture
def rrdb_pth(tmp_path):
    path = tmp_path / "RealESRGAN_x4plus_tiny.pth"
    torch.save({"params_ema": rrdbnet_state()}, path)  # as Real-ESRGAN's releases wrap it
    return path


@pytest.fixture
def compact_pth(tmp_path):
    path = tmp_path / "realesr-animevideov3_tiny.pth"
    torch.save({"params": compact_state()}, path)
    return path


def test_official_files_load_as_users_download_them(rrdb_pth, compact_pth, tmp_path):
    rrdb, compact = load_model(rrdb_pth), load_model(compact_pth)
    assert (rrdb.architecture, rrdb.scale) == ("ESRGAN", 4)
    assert (compact.architecture, compact.scale) == ("RealESRGAN Compact", 4)
    flat = tmp_path / "rrdb.safetensors"  # the same tensors as a plain safetensors file
    save_file(rrdbnet_state(), str(flat))
    x = torch.rand(1, 3, 10, 14)
    with torch.inference_mode():
        assert torch.equal(load_model(flat)(x), rrdb(x))
        assert rrdb(x).shape == (1, 3, 40, 56)
    with pytest.raises(WeightsError, match="x4 model .*x2 was asked for"):
        load_model(compact_pth, scale=2)


def test_a_community_model_gets_every_stream_and_timestamp_kept(compact_pth, tmp_path, ffmpeg):
    src = make_clip(tmp_path / "in.mp4", frames=6, size=(48, 32), audio=1)
    dst = tmp_path / "out.mp4"
    result = upscale_file(src, dst, Upscaler(load_model(compact_pth), "cpu"), UpscaleOptions())
    assert result.frames == 6
    assert pyav_video_pts(dst) == pyav_video_pts(src)
    assert ffmpeg_packets(ffmpeg, src, "a:0") == ffmpeg_packets(ffmpeg, dst, "a:0")
    import av

    with av.open(str(dst)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (192, 128)


def test_tiles_on_community_models(rrdb_pth, compact_pth):
    """Tiles of models vsr knows nothing about overlap by 32 input pixels and are blended across
    the overlap: tiled output within a level of untiled for a compact and an RRDB net."""
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 70, 90, 3), dtype=np.uint8))
    for path, worst in ((compact_pth, 1), (rrdb_pth, 1)):
        model = load_model(path)
        whole = Upscaler(model, "cpu", workers=1).upscale(frames).int()
        tiled = Upscaler(model, "cpu", tile=32, workers=1).upscale(frames).int()
        assert (whole - tiled).abs().max() <= worst, path.name


def test_cli_takes_a_pth(rrdb_pth, tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=3, size=(32, 24))
    r = CliRunner().invoke(main, ["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--weights", str(rrdb_pth), "-q"])
    assert r.exit_code == 0, r.output
    assert "3 frames" in r.output


def refused(path, tmp_path, *fragments):
    src = make_clip(tmp_path / "in.mp4", frames=2, size=(32, 24))
    r = CliRunner().invoke(main, ["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--weights", str(path)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output and text.count("error:") == 1, r.output
    for fragment in fragments:
        assert fragment in text, text
    assert not (tmp_path / "o.mp4").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_a_malicious_pickle_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"params": _Evil()}, path)
    refused(path, tmp_path, "evil.pth': refused to unpickle it: it holds posix.system")
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_unknown_architecture_and_grayscale_models_are_named(tmp_path):
    unknown = tmp_path / "mystery.pth"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, unknown)
    refused(unknown, tmp_path, "mystery.pth: not an architecture spandrel knows")
    gray = tmp_path / "gray.pth"
    torch.save({"params": compact_state(channels=1)}, gray)
    refused(gray, tmp_path, "gray.pth: a grayscale model", "vsr upscales RGB")
    rgba = tmp_path / "rgba.pth"  # an alpha-channel model: 4 channels in and out
    torch.save({"params": compact_state(channels=4)}, rgba)
    refused(rgba, tmp_path, "rgba.pth: a RGBA model (4 channels in, 4 out)", "vsr upscales RGB")


def test_models_lists_bundled_and_given_files(compact_pth, tmp_path):
    from vsr.weights import bundled_weights

    r = CliRunner().invoke(main, ["models", str(compact_pth)])
    assert r.exit_code == 0, r.output
    assert "realesr-animevideov3_tiny.pth" in r.output and "RealESRGAN Compact" in r.output
    for name in bundled_weights():
        assert name in r.output
    if bundled_weights():
        assert "SRResNet 16x64" in r.output and "steps" in r.output
    r = CliRunner().invoke(main, ["models", str(tmp_path / "nothere.pth")])
    assert r.exit_code == 1 and "does not exist" in r.output


@pytest.fixture
def swinir_pth(tmp_path):
    """A tiny SwinIR (a transformer: windowed attention) in its official key layout."""
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    net = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2, upscale=4,
                 upsampler="pixelshuffledirect", resi_connection="1conv", in_chans=3)
    path = tmp_path / "001_classicalSR_tiny_x4.pth"
    torch.save({"params": net.state_dict()}, path)
    return path


def test_a_transformer_model_runs_through_a_clip_and_tiles(swinir_pth, tmp_path):
    model = load_model(swinir_pth)
    assert (model.architecture, model.scale, model.minimum) == ("SwinIR", 4, 16)
    up = Upscaler(model, "cpu")
    from vsr.device import cpu_has_native_bf16

    assert up.radius is None and up.dtype == (torch.bfloat16 if cpu_has_native_bf16() and model.supports_bfloat16 else torch.float32)  # attention: no known receptive field; bf16 where the CPU has it
    src = make_clip(tmp_path / "in.mp4", frames=3, size=(40, 24))  # smaller than nothing, but not a multiple
    result = upscale_file(src, tmp_path / "o.mp4", up, UpscaleOptions())
    assert result.frames == 3 and pyav_video_pts(tmp_path / "o.mp4") == pyav_video_pts(src)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 50, 70, 3), dtype=np.uint8))
    whole = Upscaler(model, "cpu", workers=1).upscale(frames).int()
    tiled = Upscaler(model, "cpu", tile=24, workers=1).upscale(frames).int()
    diff = (whole - tiled).abs()
    # windows are anchored at a tile's corner: tiles start on a 16-px grid so they group the same
    # pixels (unaligned: max 121 levels); what remains comes from the tiles' padded far edges,
    # down-weighted by the blend (measured max 8, mean 0.08 level)
    assert diff.max() <= 10 and diff.float().mean() < 0.15


def test_models_for_other_purposes_are_named(compact_pth, monkeypatch):
    """What spandrel describes as face restoration or inpainting is refused by name (those models are
    large; their descriptors are stood in for here)."""
    import spandrel

    from vsr.thirdparty import ThirdPartyError, load_spandrel

    state = torch.load(compact_pth, weights_only=True)
    real = spandrel.ModelLoader().load_from_state_dict(state)

    face = spandrel.ImageModelDescriptor(real.model, real.model.state_dict(), architecture=real.architecture,
                                         purpose="FaceSR", tags=[], supports_half=True, supports_bfloat16=True,
                                         scale=4, input_channels=3, output_channels=3)
    monkeypatch.setattr(spandrel.ModelLoader, "load_from_state_dict", lambda self, state: face)
    with pytest.raises(ThirdPartyError, match="a RealESRGAN Compact model for FaceSR, not super-resolution"):
        load_spandrel(state, compact_pth.name)
