"""Colour conversion as torch ops (the GPU path's), checked on the CPU against swscale."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from conftest import SAMPLE, ffmpeg_frames, ffmpeg_packets, make_clip, pattern, pyav_video_pts
from vsr.colour import PLANE_FORMATS, ColourTags, frame_planes, frame_to_rgb, matrix_for, planes_to_frame, range_for, rgb_to_frame
from vsr.decode import chroma_left, probe
from vsr.encode import EncodeOptions
from vsr.model import Bicubic
from vsr.pipeline import UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler
from vsr.yuv import RgbToYuv, YuvToRgb, plane_conversion


def real_frames(step: int = 8) -> np.ndarray:
    """Frames of the shipped Big Buck Bunny clip (real picture content), RGB."""
    with av.open(str(SAMPLE)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i % step == 0])


def planes_of(frame: av.VideoFrame, fmt: str) -> list[torch.Tensor]:
    layout = PLANE_FORMATS[fmt]
    arrays = frame_planes(frame, layout)
    return [torch.from_numpy(a)[None] for a in arrays]


CASES = [(fmt, cs, rng) for fmt in ("yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv444p10le", "nv12")
         for cs, rng in ((1, 1), (5, 1), (9, 1), (1, 2), (5, 2))] + [("yuvj420p", 1, 2)]


@pytest.mark.parametrize("fmt,colorspace,color_range", CASES)
def test_planes_to_rgb_and_back_match_swscale(fmt, colorspace, color_range):
    """bt709/bt601/bt2020, limited/full, 8/10-bit, 4:2:0/4:2:2/4:4:4/NV12: our torch conversion
    agrees with swscale (the CPU path) within one level, both ways, on real pictures."""
    tags = ColourTags(colorspace=colorspace, color_range=color_range)
    worst_in, worst_out, over_one, total = 0, 0, 0, 0
    for rgb in real_frames():
        frame = rgb_to_frame(rgb, fmt, tags)  # swscale RGB -> YUV
        reference = frame_to_rgb(frame, tags).astype(int)  # swscale YUV -> RGB
        planes = planes_of(frame, fmt)
        full = range_for(tags, fmt) == 2
        decode = YuvToRgb(fmt, matrix_for(tags, frame.height), full)
        ours = (decode(planes) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy().astype(int)
        diff = np.abs(ours - reference)
        worst_in = max(worst_in, diff.max())
        over_one += (diff > 1).sum()
        total += diff.size
        encode = RgbToYuv(fmt, matrix_for(tags, frame.height), full)
        for a, b in zip(encode(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255), planes):
            assert a.dtype == b.dtype and a.shape == b.shape
            worst_out = max(worst_out, (a.int() - b.int()).abs().max().item())
    assert worst_out <= 1
    # swscale's 15-bit fixed point lands one saturated pixel in ~700,000 two levels off (measured);
    # everything else is within one level
    assert worst_in <= 2 and over_one / total < 1e-5


@pytest.mark.parametrize("codec,left", [("libx264", True), ("libvpx-vp9", False)])
def test_chroma_siting_follows_the_decoder(tmp_path, codec, left):
    """H.264 decoders mark chroma as co-sited left, VP9's as centred; swscale honours that, so must we."""
    src = make_clip(tmp_path / f"c.{'mp4' if left else 'webm'}", frames=2, size=(64, 48), codec=codec)
    info = probe(src)
    assert chroma_left(info) is left
    with av.open(str(src)) as c:
        frame = next(c.decode(video=0))
    tags = ColourTags.of(frame)
    decode = YuvToRgb("yuv420p", matrix_for(tags, 48), range_for(tags, "yuv420p") == 2, chroma_left=left)
    ours = (decode(planes_of(frame, "yuv420p")) * 255).round()[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - frame_to_rgb(frame).astype(int)).max() <= 1


def studio_to_rgb(y, u, v, kr: float, kb: float) -> np.ndarray:
    """RGB (0-255, float) of 8-bit limited-range Y'CbCr planes by the standard's equations (Kr, Kb:
    BT.709 0.2126, 0.0722; BT.601 0.299, 0.114), written out here, not taken from vsr or swscale."""
    luma, cb, cr = (y - 16) / 219, (u - 128) / 224, (v - 128) / 224
    r, b = luma + 2 * (1 - kr) * cr, luma + 2 * (1 - kb) * cb
    return np.clip(np.stack([r, (luma - kr * r - kb * b) / (1 - kr - kb), b], -1) * 255, 0, 255)


def rgb_to_studio(rgb, kr: float, kb: float) -> list[np.ndarray]:
    """8-bit limited-range Y', Cb, Cr (float) of RGB by the standard's equations."""
    r, g, b = (rgb[..., i] / 255 for i in range(3))
    luma = kr * r + (1 - kr - kb) * g + kb * b
    return [16 + 219 * luma, 128 + 224 * (b - luma) / (2 * (1 - kb)), 128 + 224 * (r - luma) / (2 * (1 - kr))]


def test_bt709_video_is_converted_with_the_bt709_equations_both_ways(tmp_path, ffmpeg):
    """A small BT.709-tagged clip (HD material cut down: its size alone would say BT.601) is decoded
    to the RGB of BT.709's equations, by the CPU path and by the device path, as the ffmpeg binary
    decodes it; RGB is encoded back by the same equations.  (A wrong matrix used both ways cancels
    in a whole upscale, so each direction is checked on its own.)"""
    src = make_clip(tmp_path / "hd.mp4", frames=1, size=(64, 48), pix_fmt="yuv444p", colorspace="bt709")
    with av.open(str(src)) as c:
        frame = next(c.decode(video=0))
    tags = ColourTags.of(frame)
    assert (tags.colorspace, tags.color_range) == (1, 1)
    planes = frame_planes(frame, PLANE_FORMATS["yuv444p"])
    expected = studio_to_rgb(*(p.astype(float) for p in planes), 0.2126, 0.0722)
    # the picture is colourful enough that BT.601 would be far off; the independent decoder agrees
    assert np.abs(studio_to_rgb(*(p.astype(float) for p in planes), 0.299, 0.114) - expected).max() > 20
    assert np.abs(ffmpeg_frames(ffmpeg, src)[0] - expected).max() <= 1
    assert np.abs(frame_to_rgb(frame) - expected).max() <= 1
    conv = plane_conversion("yuv444p", tags, (48, 64), "yuv444p", tags, (192, 256))
    device = conv.decode([torch.from_numpy(p)[None] for p in planes])[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(device - expected).max() <= 1

    rgb = pattern(5, 64, 48)
    want = rgb_to_studio(rgb.astype(float), 0.2126, 0.0722)
    cpu_planes = frame_planes(rgb_to_frame(rgb, "yuv444p", tags), PLANE_FORMATS["yuv444p"])
    device_planes = conv.encode(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    for w, a, b in zip(want, cpu_planes, device_planes):
        assert np.abs(a - w).max() <= 1 and np.abs(b[0].numpy() - w).max() <= 1


def test_planes_to_frame_round_trip():
    rng = np.random.default_rng(0)
    layout = PLANE_FORMATS["yuv420p10le"]
    planes = [rng.integers(0, 1024, s).astype(layout.numpy_dtype) for s in layout.plane_shapes(35, 50)]
    frame = planes_to_frame(planes, "yuv420p10le", (35, 50), ColourTags(colorspace=9, color_range=1), False)
    assert (frame.width, frame.height, frame.format.name, frame.colorspace, frame.color_range) == (50, 35, "yuv420p10le", 9, 1)
    back = frame_planes(frame, layout)
    assert all(np.array_equal(a, b) for a, b in zip(planes, back))


def test_unsupported_formats_have_no_device_conversion():
    tags = ColourTags()
    assert plane_conversion("rgb24", tags, (32, 32), "yuv420p", tags, (128, 128)) is None
    assert plane_conversion("yuv420p", tags, (32, 32), "rgb24", tags, (128, 128)) is None
    assert plane_conversion("yuv420p", tags, (32, 32), "yuv420p", tags, (128, 128)) is not None


def yuv_planes(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [np.concatenate([np.frombuffer(p, np.uint8) for p in f.planes]) for f in c.decode(video=0)]


def test_pipeline_with_colour_on_the_device_matches_the_cpu_path(tmp_path, ffmpeg):
    """The GPU path's conversion, run on the CPU: the same frames within one level of every plane
    (lossless FFV1, so encoding adds nothing), the same timestamps, the audio bit-exact."""
    lossless = EncodeOptions(codec="ffv1", crf=None, preset=None)
    outs = {}
    for mode in ("cpu", "device"):
        outs[mode] = tmp_path / f"{mode}.mkv"
        result = upscale_file(SAMPLE, outs[mode], Upscaler(Bicubic(4)), UpscaleOptions(colour=mode, encode=lossless))
        assert result.frames == 25 and not result.warnings
        assert ("to_planes" in result.stages) is (mode == "device")
    a, b = (np.array(yuv_planes(outs[m])).astype(int) for m in ("cpu", "device"))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    assert pyav_video_pts(outs["cpu"]) == pyav_video_pts(outs["device"])
    payload = [p[3:] for p in ffmpeg_packets(ffmpeg, SAMPLE, "a:0")]  # size, checksum (MKV has its own time base)
    assert [p[3:] for p in ffmpeg_packets(ffmpeg, outs["device"], "a:0")] == payload and len(payload) == 47


def test_device_colour_falls_back_for_formats_it_does_not_handle(tmp_path):
    src = make_clip(tmp_path / "rgb.mkv", frames=3, size=(32, 24), codec="ffv1", pix_fmt="bgr0")
    result = upscale_file(src, tmp_path / "o.mkv", Upscaler(Bicubic(2)),
                          UpscaleOptions(colour="device"))
    assert result.frames == 3
    assert any("not offered on the device" in w for w in result.warnings)
