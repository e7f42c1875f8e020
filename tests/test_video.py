"""The upscale pipeline on real containers: frames, timestamps, colours and every other stream."""

from __future__ import annotations

import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SAMPLE, ffmpeg_frames, ffmpeg_packets, grey_clip_with_audio, make_clip, pyav_video_pts, tiny_generator
from vsr.encode import EncodeOptions
from vsr.metrics import psnr
from vsr.model import Bicubic
from vsr.pipeline import UpscaleError, UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler

LOSSLESS = EncodeOptions(codec="libx264", crf=0, preset="ultrafast")


def run(src, dst, model=None, **kw):
    up = Upscaler(model or Bicubic(4), "cpu", tile=kw.pop("tile", None))
    return upscale_file(src, dst, up, UpscaleOptions(**kw))


def test_real_clip_keeps_frames_timestamps_and_audio_bit_exact(tmp_path, ffmpeg):
    dst = tmp_path / "bbb_x4.mp4"
    result = run(SAMPLE, dst, tiny_generator(), batch_size=4)
    assert result.frames == 25
    src_pts, src_tb = pyav_video_pts(SAMPLE)
    out_pts, out_tb = pyav_video_pts(dst)
    assert [p * src_tb for p in src_pts] == [p * out_tb for p in out_pts]
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        assert (v.width, v.height) == (1280, 720)
    # Audio: the same packets, byte for byte, read by an independent demuxer.
    assert ffmpeg_packets(ffmpeg, SAMPLE, "a:0") == ffmpeg_packets(ffmpeg, dst, "a:0")
    assert len(ffmpeg_packets(ffmpeg, dst, "a:0")) == 47
    assert ffmpeg_frames(ffmpeg, dst).shape == (25, 720, 1280, 3)


class LateUpscaler(Upscaler):
    """Hands results back one batch late, as the CUDA runner does (batch k+1 is copied in before
    batch k's result is returned): the pipeline must keep frames and packets in order anyway."""

    def upscale_stream(self, batches):
        previous = None
        for batch in batches:
            current = self.upscale(batch)
            if previous is not None:
                yield previous
            previous = current
        if previous is not None:
            yield previous


@pytest.mark.parametrize("batch_size", [1, 3])
def test_results_one_batch_late_keep_frames_and_audio_in_order(tmp_path, ffmpeg, batch_size):
    dst = tmp_path / "late.mp4"
    result = upscale_file(SAMPLE, dst, LateUpscaler(Bicubic(4)), UpscaleOptions(batch_size=batch_size))
    ref = tmp_path / "ref.mp4"
    run(SAMPLE, ref, batch_size=batch_size)
    assert result.frames == 25
    assert pyav_video_pts(dst) == pyav_video_pts(ref)
    assert ffmpeg_packets(ffmpeg, SAMPLE, "a:0") == ffmpeg_packets(ffmpeg, dst, "a:0")
    assert np.array_equal(ffmpeg_frames(ffmpeg, dst), ffmpeg_frames(ffmpeg, ref))


def test_cpu_workers_give_the_same_file_as_one_worker(tmp_path, ffmpeg):
    """Frames upscaled two at a time on worker threads come back in order, bit for bit."""
    model = tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic")
    threads = torch.get_num_threads()
    outs = {}
    for workers in (1, 2):
        up = Upscaler(model, "cpu", workers=workers)
        outs[workers] = tmp_path / f"w{workers}.mp4"
        result = upscale_file(SAMPLE, outs[workers], up, UpscaleOptions(batch_size=2, encode=LOSSLESS))
        assert result.frames == 25
        assert result.stages.lanes["model"] == min(workers, threads)
        assert torch.get_num_threads() == threads  # the workers' thread split is not left behind
    assert pyav_video_pts(outs[1]) == pyav_video_pts(outs[2])
    assert ffmpeg_packets(ffmpeg, SAMPLE, "a:0") == ffmpeg_packets(ffmpeg, outs[2], "a:0")
    assert np.array_equal(ffmpeg_frames(ffmpeg, outs[1]), ffmpeg_frames(ffmpeg, outs[2]))


class FailingBicubic(Bicubic):
    def __init__(self, fail_at: int) -> None:
        super().__init__(4)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("worker fault")
        return super().forward(x)


def test_error_in_a_cpu_worker_fails_the_file_cleanly(tmp_path):
    dst = tmp_path / "out.mp4"
    threads = torch.get_num_threads()
    with pytest.raises(UpscaleError, match="worker fault"):
        upscale_file(SAMPLE, dst, Upscaler(FailingBicubic(6), "cpu", workers=2), UpscaleOptions())
    assert not dst.exists() and list(tmp_path.iterdir()) == []
    assert torch.get_num_threads() == threads  # the workers' thread split is undone on failure too


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_variable_frame_rate_survives(tmp_path, container):
    tb = Fraction(1, 1000)
    stamps = [0, 40, 80, 200, 233, 400, 410, 600]  # irregular gaps, as phones record
    src = make_clip(tmp_path / f"vfr.{container}", pts=stamps, time_base=tb, rate=Fraction(25))
    dst = tmp_path / f"vfr_x4.{container}"
    run(src, dst)
    src_pts, src_tb = pyav_video_pts(src)
    out_pts, out_tb = pyav_video_pts(dst)
    assert len(out_pts) == len(stamps)
    assert [float(p * out_tb) for p in out_pts] == pytest.approx([float(p * src_tb) for p in src_pts], abs=1e-3)
    assert [float(p * src_tb) for p in src_pts] == pytest.approx([s / 1000 for s in stamps])


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_two_audio_streams_copied_with_languages(tmp_path, ffmpeg, container):
    src = make_clip(tmp_path / f"two.{container}", frames=10, audio=2)
    dst = tmp_path / f"two_x4.{container}"
    result = run(src, dst)
    assert result.frames == 10
    for a in ("a:0", "a:1"):
        assert ffmpeg_packets(ffmpeg, src, a) == ffmpeg_packets(ffmpeg, dst, a)
    with av.open(str(dst)) as c:
        assert [s.language for s in c.streams.audio] == ["eng", "fra"]
        assert [s.codec_context.sample_rate for s in c.streams.audio] == [48000, 44100]


def test_subtitles_metadata_chapters_sar_rotation_kept(tmp_path, ffmpeg):
    src = make_clip(tmp_path / "rich.mp4", frames=6, audio=1, subtitles=True, chapters=True,
                    metadata={"title": "A film", "comment": "kept"}, sar=Fraction(4, 3), rotation=90)
    dst = tmp_path / "rich_x4.mp4"
    run(src, dst)
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        assert b.metadata["title"] == "A film" and b.metadata["comment"] == "kept"
        def seconds(chapters):
            return [(c["start"] * c["time_base"], c["end"] * c["time_base"], c["metadata"]) for c in chapters]

        assert len(a.chapters()) == 2
        assert seconds(b.chapters()) == seconds(a.chapters())
        assert len(b.streams.subtitles) == 1 and b.streams.subtitles[0].language == "deu"
        v = b.streams.video[0]
        assert Fraction(v.sample_aspect_ratio) == Fraction(4, 3)
        assert next(b.decode(video=0)).rotation == 90
    assert ffmpeg_packets(ffmpeg, src, "s:0") == ffmpeg_packets(ffmpeg, dst, "s:0")


def test_audio_the_container_refuses_is_reencoded_with_a_warning(tmp_path):
    """pcm_u8 fits in Matroska but not in MP4: it becomes AAC, with a warning, and lasts as long."""
    af = av.AudioFrame.from_ndarray((128 + 60 * np.sin(np.arange(9600) / 10)).astype(np.uint8)[None], format="u8",
                                    layout="mono")
    af.pts = 0
    src = grey_clip_with_audio(tmp_path / "pcm.mkv", "pcm_u8", "mono", [af])
    dst = tmp_path / "pcm_x4.mp4"
    result = upscale_file(src, dst, Upscaler(Bicubic(4)), UpscaleOptions())
    assert any("cannot hold pcm_u8; re-encoded to aac" in w for w in result.warnings)
    with av.open(str(dst)) as c:
        (a,) = c.streams.audio
        assert a.codec_context.name == "aac"
        samples = sum(f.samples for f in c.decode(a))
    assert abs(samples - 9600) <= 1024


@pytest.mark.parametrize("size", [(33, 17), (47, 29)])
def test_odd_sizes(tmp_path, size):
    src = make_clip(tmp_path / "odd.mkv", frames=3, size=size, pix_fmt="yuv444p")
    dst = tmp_path / "odd_x4.mkv"
    run(src, dst)
    with av.open(str(dst)) as c:  # (Matroska stores no frame count: the frames are counted)
        assert (c.streams.video[0].width, c.streams.video[0].height) == (size[0] * 4, size[1] * 4)
        assert len(list(c.decode(video=0))) == 3


@pytest.mark.parametrize("colorspace, matrix", [("bt709", 1), ("bt601", 6)])
def test_bicubic_matches_reference_resize_and_keeps_colour_tags(tmp_path, ffmpeg, colorspace, matrix):
    """--model bicubic against an independent reference: ffmpeg's RGB of the source, resized by torch."""
    src = make_clip(tmp_path / f"{colorspace}.mp4", frames=4, size=(64, 48), colorspace=colorspace)
    dst = tmp_path / f"{colorspace}_x4.mp4"
    upscale_file(src, dst, Upscaler(Bicubic(4)), UpscaleOptions(encode=LOSSLESS))
    ref_lr = torch.from_numpy(ffmpeg_frames(ffmpeg, src).copy()).permute(0, 3, 1, 2).float() / 255
    ref = F.interpolate(ref_lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    got = torch.from_numpy(ffmpeg_frames(ffmpeg, dst).copy()).permute(0, 3, 1, 2).float() / 255
    assert got.shape == ref.shape
    assert psnr(got, ref) >= 40.0
    with av.open(str(dst)) as c:
        cc = c.streams.video[0].codec_context
        assert (int(cc.colorspace), int(cc.color_primaries), int(cc.color_trc), int(cc.color_range)) == (matrix, matrix, matrix, 1)
    # The wrong matrix would be visible: decoding the output as the other standard costs PSNR.
    info = subprocess.run([ffmpeg, "-hide_banner", "-i", str(dst)], capture_output=True, text=True).stderr
    assert {"bt709": "bt709", "bt601": "smpte170m"}[colorspace] in info


@pytest.mark.parametrize("colorspace", ["bt709", "bt601"])
def test_rgb_output_is_the_source_decoded_with_its_own_matrix(tmp_path, ffmpeg, colorspace):
    """An RGB output (FFV1 bgr0) takes no matrix on the way out, so a wrong one on the way in cannot
    cancel: the picture is the ffmpeg binary's RGB of the source (BT.709 by its tag, small as it is),
    resized."""
    src = make_clip(tmp_path / f"{colorspace}.mp4", frames=2, size=(64, 48), colorspace=colorspace)
    dst = tmp_path / f"{colorspace}_x2.mkv"
    upscale_file(src, dst, Upscaler(Bicubic(2)), UpscaleOptions(encode=EncodeOptions(codec="ffv1", pix_fmt="bgr0", crf=None,
                                                                                     preset=None)))
    ref_lr = torch.from_numpy(ffmpeg_frames(ffmpeg, src).copy()).permute(0, 3, 1, 2).float() / 255
    ref = F.interpolate(ref_lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    got = torch.from_numpy(ffmpeg_frames(ffmpeg, dst).copy()).permute(0, 3, 1, 2).float() / 255
    assert got.shape == ref.shape == (2, 3, 96, 128)
    assert psnr(got, ref) >= 40.0  # the other standard's matrix: about 28 dB


def test_ten_bit_source_gives_ten_bit_output(tmp_path):
    src = make_clip(tmp_path / "hdr.mkv", frames=3, size=(40, 24), pix_fmt="yuv420p10le")
    dst = tmp_path / "hdr_x4.mkv"
    run(src, dst)
    with av.open(str(dst)) as c:
        frames = list(c.decode(video=0))
        assert len(frames) == 3 and frames[0].format.name == "yuv420p10le"
        assert (frames[0].width, frames[0].height) == (160, 96)


def test_tiles_match_untiled(tmp_path):
    frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 45, 70, 3), dtype=np.uint8))
    model = tiny_generator(blocks=2, batch_norm=False, global_skip="bicubic")
    whole = Upscaler(model).upscale(frame).int()
    tiled = Upscaler(model, tile=16).upscale(frame).int()
    assert whole.shape == (1, 180, 280, 3)
    assert (whole - tiled).abs().max() <= 1


def far_reaching_generator(scale: int) -> torch.nn.Module:
    """A generator whose every convolution takes only its farthest tap (up and to the left), equal
    over the input channels, and whose PReLUs pass everything: among its paths, one shifts the
    picture by the whole receptive radius, so a tile margin a pixel short of it shows as a seam."""
    model = tiny_generator(scale=scale, blocks=1, channels=4, batch_norm=False, global_skip="none")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
                m.weight[:, :, 0, 0] = (0.25 if m is model.tail else 1.0) / m.in_channels
            elif isinstance(m, torch.nn.PReLU):
                m.weight.fill_(1.0)
    return model


@pytest.mark.parametrize("scale", [2, 4])
def test_tiles_cover_the_receptive_field_to_its_edge(scale):
    """Tiling a generator that uses its receptive field to the edge (the x4 one reaches 9.5 input
    pixels, so its margin is 10) gives the untiled frame: no tile's core sees its zero padding."""
    frame = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (1, 40, 56, 3), dtype=np.uint8))
    model = far_reaching_generator(scale)
    whole = Upscaler(model, precision="fp32").upscale(frame).int()
    assert 40 < float(whole.float().mean()) < 215  # not clipped flat
    tiled = Upscaler(model, tile=16, precision="fp32").upscale(frame).int()
    assert (whole - tiled).abs().max() <= 1


def test_batches_match_single_frames(tmp_path):
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8))
    up = Upscaler(tiny_generator())
    batched = up.upscale(frames)
    single = torch.cat([up.upscale(frames[i : i + 1]) for i in range(3)])
    assert (batched.int() - single.int()).abs().max() <= 1


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_images(tmp_path, ext):
    from conftest import pattern

    src = tmp_path / f"in.{ext}"
    seed = tmp_path / "seed.png"
    av.VideoFrame.from_ndarray(pattern(0, 25, 20), format="rgb24").save(str(seed))
    if ext == "png":
        src = seed
    else:  # a real jpg/webp input, written by vsr's own encoder path
        upscale_file(seed, src, Upscaler(Bicubic(2)), UpscaleOptions())
    dst = tmp_path / f"out.{ext}"
    upscale_file(src, dst, Upscaler(Bicubic(4)), UpscaleOptions())
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        fa, fb = next(a.decode(video=0)), next(b.decode(video=0))
        assert (fb.width, fb.height) == (fa.width * 4, fa.height * 4)


def test_png_bicubic_is_exact(tmp_path):
    from conftest import pattern

    rgb = pattern(3, 30, 22)
    src, dst = tmp_path / "p.png", tmp_path / "p_x4.png"
    av.VideoFrame.from_ndarray(rgb, format="rgb24").save(str(src))
    upscale_file(src, dst, Upscaler(Bicubic(4)), UpscaleOptions())
    with av.open(str(dst)) as c:
        got = next(c.decode(video=0)).to_ndarray(format="rgb24")
    ref = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, scale_factor=4, mode="bicubic",
                        align_corners=False).clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, ref)


def test_failure_mid_file_leaves_no_output(tmp_path):
    src = make_clip(tmp_path / "c.mp4", frames=8)
    dst = tmp_path / "c_x4.mp4"

    def fault(index):
        if index == 5:
            raise RuntimeError("injected")

    with pytest.raises(UpscaleError, match="injected"):
        upscale_file(src, dst, Upscaler(Bicubic(4)), UpscaleOptions(), fault=fault)
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.mp4"]


def test_interrupt_removes_partial_file(tmp_path):
    src = make_clip(tmp_path / "c.mp4", frames=8)
    dst = tmp_path / "c_x4.mp4"

    def fault(index):
        if index == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_file(src, dst, Upscaler(Bicubic(4)), UpscaleOptions(), fault=fault)
    assert [p.name for p in tmp_path.iterdir()] == ["c.mp4"]


def _video_size_sar(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        sar = s.sample_aspect_ratio or s.codec_context.sample_aspect_ratio
        return s.width, s.height, (Fraction(sar) if sar and sar.numerator else None)


@pytest.mark.parametrize("colour", ["cpu", "device"])
def test_outscale_resizes_after_the_model_and_keeps_every_frame(tmp_path, ffmpeg, colour):
    from vsr.pipeline import OutputSize

    src = make_clip(tmp_path / "in.mp4", frames=5, size=(50, 30), audio=1)
    dst = tmp_path / "o.mp4"
    result = upscale_file(src, dst, Upscaler(Bicubic(4)), UpscaleOptions(size=OutputSize(outscale=1.5), colour=colour))
    assert result.frames == 5
    assert _video_size_sar(dst)[:2] == (76, 46)  # 75 x 45, rounded to even sides for 4:2:0
    assert pyav_video_pts(dst) == pyav_video_pts(src)
    assert ffmpeg_packets(ffmpeg, src, "a:0") == ffmpeg_packets(ffmpeg, dst, "a:0")
    # the picture is the model's output resized: close to a direct bicubic resize of the input
    frames = ffmpeg_frames(ffmpeg, dst).astype(int)
    with av.open(str(src)) as c:
        first = next(c.decode(video=0)).reformat(width=76, height=46, format="rgb24").to_ndarray().astype(int)
    assert np.abs(frames[0] - first).mean() < 6


def test_height_or_width_keep_the_shape_and_both_keep_it_through_the_aspect_ratio():
    from vsr.pipeline import OutputSize

    assert OutputSize(height=720).resolve(320, 180, None) == (1280, 720, None)
    assert OutputSize(width=1000).resolve(320, 180, Fraction(4, 3)) == (1000, 562, Fraction(4, 3))
    # a square output of a 16:9 picture: pixels become 16:9 wide so it is still shown 16:9
    assert OutputSize(width=400, height=400).resolve(320, 180, None) == (400, 400, Fraction(16, 9))
    with pytest.raises(ValueError, match="not both"):
        OutputSize(outscale=2, height=100)


def test_cli_outscale_and_height(tmp_path):
    from click.testing import CliRunner

    from vsr.cli import main

    src = make_clip(tmp_path / "in.mp4", frames=2, size=(48, 32))
    r = CliRunner().invoke(main, ["upscale", str(src), "--model", "bicubic", "--height", "100", "-q"])
    assert r.exit_code == 0, r.output
    assert _video_size_sar(tmp_path / "in_100p.mp4")[:2] == (150, 100)
    r = CliRunner().invoke(main, ["upscale", str(src), "--model", "bicubic", "--outscale", "2", "--width", "90"])
    assert r.exit_code == 2 and "not both" in r.output


def test_the_input_is_demuxed_once_for_frames_and_copied_streams(tmp_path, monkeypatch):
    """One container feeds the decoder and the copied streams (PyAV's remux pattern): the file is
    opened once in all, to describe it and to read it (decode.Source)."""
    import vsr.decode

    src = make_clip(tmp_path / "in.mkv", frames=4, audio=1, subtitles=False)
    opened = []
    real_open = vsr.decode.av.open

    def counting_open(name, *a, **k):
        opened.append(name)
        return real_open(name, *a, **k)

    monkeypatch.setattr(vsr.decode.av, "open", counting_open)
    result = run(src, tmp_path / "out.mkv")
    assert result.frames == 4 and [name for name in opened if name == str(src)] == [str(src)]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert len(c.streams.audio) == 1


@pytest.mark.parametrize("start, duration, first, frames", [(2.0, 8.0, 50, 200), (0.3, 1.0, 8, 25), (0.04, 1.0, 1, 25)])
def test_a_part_of_a_broadcast_recording_starts_at_its_time_not_at_the_next_keyframe(tmp_path, gop_clip, ffmpeg, start,
                                                                                      duration, first, frames):
    """MPEG-TS has no index: a seek lands between keyframes, and the frames up to the next one were
    lost (175 of the 200 frames from 2 s); near the start, seeking to the stream's start lands past
    its first keyframe (6 of 25 frames from 0.3 s, none from 0.04 s)."""
    from vsr.decode import Span
    dst = tmp_path / "part.mkv"
    result = upscale_file(gop_clip, dst, Upscaler(Bicubic(2)), UpscaleOptions(span=Span(start, duration),
                                                                             encode=EncodeOptions(codec="ffv1")))
    assert result.frames == frames
    pts, tb = pyav_video_pts(dst)
    assert abs(pts[0] * tb - (Fraction(first, 25) - Fraction(start).limit_denominator(100))) <= tb  # as ffmpeg -ss
    assert np.allclose(np.diff(np.array(pts) * float(tb)), 0.04, atol=0.002)
    whole = tmp_path / "whole.mkv"
    upscale_file(gop_clip, whole, Upscaler(Bicubic(2)), UpscaleOptions(encode=EncodeOptions(codec="ffv1")))
    with av.open(str(dst)) as a, av.open(str(whole)) as b:
        part, every = [f.to_ndarray() for f in a.decode(video=0)], [f.to_ndarray() for f in b.decode(video=0)]
    assert len(every) == 300 and all(np.array_equal(x, y) for x, y in zip(part, every[first:first + frames]))


@pytest.mark.parametrize("chunks", [0, 0.5])
def test_x264_runs_frame_threads_as_the_ffmpeg_command_does(tmp_path, chunks):
    """PyAV's default (slices only) makes libx264 cut each frame into a slice per thread: slower,
    and a bigger stream; each instance vsr opens, whole or a chunk's, threads over frames."""
    src = make_clip(tmp_path / "in.mp4", frames=40, size=(320, 240))  # (x264 gives a small picture one thread)
    dst = tmp_path / "out.mp4"
    upscale_file(src, dst, Upscaler(Bicubic(2)), UpscaleOptions(chunk_seconds=chunks, encoders=1,
                                                                 model_id="bicubic (test)"))
    with av.open(str(dst)) as c:
        heads = [bytes(p) for p in c.demux(c.streams.video[0]) if p.is_keyframe and p.size]
    settings = [h[h.index(b"options: "):h.index(b"options: ") + 2000] for h in heads if b"options: " in h]
    assert len(settings) == 1 if chunks == 0 else len(settings) >= 2  # one per encoder instance (each chunk starts one)
    assert all(b" sliced_threads=0 " in s for s in settings), settings[0][:400]
