"""The command line: exit codes, one-line errors, never a partial output."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import SAMPLE, make_clip, tiny_generator
from vsr.cli import main
from vsr.weights import save_generator


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def assert_one_line_error(result, *fragments, code=1):
    assert result.exit_code == code, result.output
    text = " ".join(result.output.split())  # rich may wrap long lines
    assert "Traceback" not in result.output
    assert "error" in text.lower()
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "in.mp4", frames=4)


def test_upscale_bicubic_end_to_end(tmp_path, clip):
    out = tmp_path / "out.mp4"
    result = invoke("upscale", clip, "-o", out, "--model", "bicubic", "-q")
    assert result.exit_code == 0, result.output
    assert "4 frames" in result.output and "fps" in result.output
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (192, 128)


def test_upscale_with_weights_file_and_default_output_name(tmp_path, clip, tiny_weights, monkeypatch):
    """--batch-size 2 hands the model two frames a call, --tile 16 tiles of at most 16 pixels plus the
    receptive field's margin; the tiled frames are the untiled ones (lossless FFV1, read by ffmpeg)."""
    from conftest import ffmpeg_exe, ffmpeg_frames
    from vsr.upscaler import Upscaler

    shapes: list[tuple[int, ...]] = []
    real_run = Upscaler._run

    def recording(self, x):
        shapes.append(tuple(x.shape))
        return real_run(self, x)

    monkeypatch.setattr(Upscaler, "_run", recording)
    result = invoke("upscale", clip, "--weights", tiny_weights, "--batch-size", "2", "--tile", "16", "-q",
                    "--codec", "ffv1", "--cpu-workers", "1", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "in_x4.mp4").exists()
    tiled = list(shapes)
    assert {n for n, *_ in tiled} == {2} and len(tiled) % 2 == 0  # 4 frames, 2 a call: each tile twice
    tiles_per_batch = len(tiled) // 2
    assert tiles_per_batch >= 6  # 48x32 in tiles of 16: 3 x 2 cores
    assert all(h < 32 and w < 48 for _n, _c, h, w in tiled)  # never the whole 48x32 frame
    shapes.clear()
    result = invoke("upscale", clip, "-o", tmp_path / "whole.mkv", "--weights", tiny_weights, "-q", "--codec", "ffv1",
                    "--device", "cpu", "--cpu-workers", "1", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert shapes == [(1, 3, 32, 48)] * 4  # the default on the CPU: one whole frame a call
    ffmpeg = ffmpeg_exe()
    got, want = ffmpeg_frames(ffmpeg, tmp_path / "in_x4.mp4"), ffmpeg_frames(ffmpeg, tmp_path / "whole.mkv")
    assert got.shape == want.shape == (4, 128, 192, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # stitched cores: no seams


def test_profile_names_the_model_workers(tmp_path, clip, tiny_weights):
    import torch

    result = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--weights", tiny_weights, "--device", "cpu",
                    "--cpu-workers", "2", "--profile", "-q")
    assert result.exit_code == 0, result.output
    lanes = min(2, torch.get_num_threads())
    assert ("model x2: 2 worker threads, each on its own frame" in " ".join(result.output.split())) == (lanes == 2)
    assert "bounded by the" in result.output and "where the time goes" in result.output


def test_missing_input(tmp_path):
    result = invoke("upscale", tmp_path / "nope.mp4", "-o", tmp_path / "o.mp4", "--model", "bicubic")
    assert_one_line_error(result, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_not_a_media_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n" * 50)
    result = invoke("upscale", notes, "-o", tmp_path / "o.mp4", "--model", "bicubic")
    assert_one_line_error(result, "expected a video or image file", "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_no_video_stream(tmp_path):
    audio = tmp_path / "sound.m4a"
    with av.open(str(audio), "w") as out:
        a = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        for p in a.encode(frame):
            out.mux(p)
        for p in a.encode(None):
            out.mux(p)
    result = invoke("upscale", audio, "-o", tmp_path / "o.mp4", "--model", "bicubic")
    assert_one_line_error(result, "expected a file with a video stream", "audio")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sound.m4a"]


def test_truncated_file_says_at_which_frame(tmp_path, ffmpeg):
    whole = tmp_path / "whole.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-i", str(SAMPLE), "-c", "copy", "-movflags", "+faststart", str(whole)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    result = invoke("upscale", cut, "-o", tmp_path / "o.mp4", "--model", "bicubic", "-q")
    assert_one_line_error(result, "decoding failed at frame")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "whole.mp4"]


def test_output_exists_needs_overwrite(tmp_path, clip):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"precious")
    result = invoke("upscale", clip, "-o", out, "--model", "bicubic")
    assert_one_line_error(result, "exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    result = invoke("upscale", clip, "-o", out, "--model", "bicubic", "--overwrite", "-q")
    assert result.exit_code == 0
    assert out.stat().st_size > 1000


def test_output_is_input(tmp_path, clip):
    result = invoke("upscale", clip, "-o", clip, "--model", "bicubic", "--overwrite")
    assert_one_line_error(result, "is the input file")


@pytest.mark.parametrize("args, fragment", [
    (["--codec", "libnothing"], "unknown video encoder 'libnothing'"),
    (["--codec", "aac"], "expected a video encoder"),
    (["--pix-fmt", "yuv999p"], "unknown pixel format 'yuv999p'"),
    (["--codec", "libx264", "--pix-fmt", "rgb48be"], "does not take pixel format 'rgb48be'"),
])
def test_bad_encoder_options_are_usage_errors(tmp_path, clip, args, fragment):
    result = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--model", "bicubic", *args)
    assert_one_line_error(result, fragment, code=2)
    assert not (tmp_path / "o.mp4").exists()


def test_unusable_weights(tmp_path, clip):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    result = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--weights", junk)
    assert_one_line_error(result, "is not a weights file: expected safetensors or a PyTorch state dict")
    x2 = tmp_path / "x2.safetensors"
    save_generator(x2, tiny_generator(scale=2))
    result = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--weights", x2, "--scale", "4")
    assert_one_line_error(result, "x2 model", "x4 was asked for", code=2)  # a usage mistake
    assert not (tmp_path / "o.mp4").exists()


def test_held_out_scores_recorded_in_the_weights_file(tmp_path):
    """What scripts/evaluate.py --record does: scores merged into the file's metadata per protocol,
    tensors and training record untouched, shown by `vsr models`; a file that is not vsr's refused."""
    from safetensors.torch import load_file, save_file

    from vsr.weights import WeightsError, read_metadata, record_metadata

    path = tmp_path / "m.safetensors"
    save_generator(path, tiny_generator(batch_norm=False, global_skip="bicubic"), training={"steps": 7})
    before = load_file(path)
    clean = {"scores": {"psnr_y": 31.25, "niqe": 17.5}, "bicubic": {"psnr_y": 30.0, "niqe": 18.75}}
    record_metadata(path, "vsr.evaluation", {"x4 clean": clean})
    record_metadata(path, "vsr.evaluation", {"x4 H.264 crf 28": {"scores": {"psnr_y": 25.0}, "bicubic": {"psnr_y": 24.0}}})
    meta = read_metadata(path)
    assert json.loads(meta["vsr.evaluation"]) == {"x4 clean": clean, "x4 H.264 crf 28": {
        "scores": {"psnr_y": 25.0}, "bicubic": {"psnr_y": 24.0}}}
    assert json.loads(meta["vsr.training"]) == {"steps": 7}
    after = load_file(path)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".*partial*"))
    r = invoke("models", path)
    assert r.exit_code == 0, r.output
    assert "+1.25 dB, NIQE 17.50 (bicubic 18.75)" in r.output and "7 steps" in r.output
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(WeightsError, match="not vsr generator weights"):
        record_metadata(other, "vsr.evaluation", {})
    assert read_metadata(other) == {}


def models_rows(output: str) -> dict[str, dict[str, str]]:
    """`vsr models`' table as {file name: {column: cell}} (a table off a terminal is 200 columns wide, not wrapped)."""
    lines = [line for line in output.splitlines() if line.startswith(("┃", "│"))]
    cells = [[c.strip() for c in line.strip("┃│").split("┃" if line.startswith("┃") else "│")] for line in lines]
    header, rows = cells[0], cells[1:]
    return {row[0]: dict(zip(header, row)) for row in rows}


def test_models_lists_the_work_of_a_1080p_frame_for_every_model(tmp_path):
    """The FLOPs column: GFLOP to make one 1920x1080 frame, from the generator's config (the fast
    tier about 1/10 of vsr_x4_psnr's; an x2 model reads 4x the pixels of an x4 one for it), and for
    a model of another kind (a community model) counted from its operations."""
    from vsr.flops import frame_flops, reference_frame_flops
    from vsr.model import GeneratorConfig
    from vsr.weights import load_generator, weights_dir

    r = invoke("models")
    assert r.exit_code == 0, r.output
    rows = models_rows(r.output)
    gflop = {name: float(row["GFLOP/1080p frame"]) for name, row in rows.items()}
    assert set(gflop) >= {"vsr_x4_fast.safetensors", "vsr_x4_psnr.safetensors", "vsr_x2_psnr.safetensors"}
    assert 8 < gflop["vsr_x4_psnr.safetensors"] / gflop["vsr_x4_fast.safetensors"] < 12
    assert gflop["vsr_x4_psnr.safetensors"] == round(GeneratorConfig().flops_per_pixel() * 480 * 270 / 1e9)
    psnr = load_generator(weights_dir() / "vsr_x4_psnr.safetensors").config
    x2 = load_generator(weights_dir() / "vsr_x2_psnr.safetensors").config
    assert gflop["vsr_x2_psnr.safetensors"] == pytest.approx(
        gflop["vsr_x4_psnr.safetensors"] * 4 * x2.flops_per_pixel() / psnr.flops_per_pixel(), rel=0.01)

    # Another kind of module: counted from what it runs, without running it (meta) or changing it.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 48, 3, padding=1), torch.nn.PixelShuffle(4))
    before = [p.detach().clone() for p in net.parameters()]
    assert frame_flops(net, 40, 30) == 2 * 9 * (3 * 8 + 8 * 48) * 40 * 30
    assert reference_frame_flops(net, 4) == 2 * 9 * (3 * 8 + 8 * 48) * 480 * 270
    assert all(p.device.type == "cpu" and torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_network_interpolation(tmp_path):
    """scripts/interpolate_weights.py's core: weights (1-a)*A + a*B of like models, ends exact."""
    from vsr.errors import UsageError
    from vsr.weights import WeightsMismatch, interpolate

    a, b, x2 = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "x2.safetensors"
    save_generator(a, tiny_generator(seed=0), training={"steps": 1})
    save_generator(b, tiny_generator(seed=1), training={"steps": 2})
    save_generator(x2, tiny_generator(scale=2))
    sa, sb = tiny_generator(seed=0).state_dict(), tiny_generator(seed=1).state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    for alpha, want in ((0.0, sa), (1.0, sb)):
        got = interpolate(a, b, alpha)[0].state_dict()
        assert all(torch.equal(got[k], want[k]) for k in sa)
    model, record = interpolate(a, b, 0.25)
    got = model.state_dict()
    k = next(k for k in sa if sa[k].dtype.is_floating_point and not torch.equal(sa[k], sb[k]))
    assert torch.allclose(got[k], 0.75 * sa[k] + 0.25 * sb[k], atol=1e-6)
    assert record["interpolated"]["alpha"] == 0.25 and record["interpolated"]["b_training"] == {"steps": 2}
    out = tmp_path / "mix.safetensors"
    save_generator(out, model, training=record)
    r = invoke("models", out)
    assert r.exit_code == 0 and "0.75 x a.safetensors + 0.25 x b.safetensors" in " ".join(r.output.split()), r.output
    with pytest.raises(WeightsMismatch, match="different configs"):
        interpolate(a, x2, 0.5)
    with pytest.raises(UsageError, match="between 0 and 1"):
        interpolate(a, b, 1.5)


def test_no_bundled_weights_points_to_the_ways_out(tmp_path, clip):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("upscale", clip, "-o", tmp_path / "o.mp4", env={"VSR_WEIGHTS_DIR": str(empty)})
    assert_one_line_error(result, "no bundled weights", "--weights PATH", "--model bicubic")


def test_unknown_output_extension(tmp_path, clip):
    result = invoke("upscale", clip, "-o", tmp_path / "o.xyz", "--model", "bicubic")
    assert_one_line_error(result, "cannot tell the output format")


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "0"], "Invalid value for '--batch-size': expected a positive number, got 0"),
    (["--device", "tpu"], "Invalid value for '--device': expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--tile", "4"], "Invalid value for '--tile': expected a tile size of at least 16 pixels, got 4"),
    (["--cpu-workers", "0"], "Invalid value for '--cpu-workers': expected a positive number, got 0"),
    (["--device", "cpu", "--compile", "--cpu-workers", "2"], "several CPU workers are for the CPU in eager mode"),
], ids=["batch-size", "device", "tile", "cpu-workers", "compile-workers"])
def test_bad_option_values_are_usage_errors(tmp_path, clip, args, fragment):
    """Exit 2 with the option's own complaint (click's "No such option" for a removed option also
    exits 2: the message tells them apart), and no output."""
    result = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--model", "bicubic", *args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert fragment in text and "No such option" not in text and "Traceback" not in text, text
    assert not (tmp_path / "o.mp4").exists()


def test_cuda_asked_without_gpu(tmp_path, clip):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = invoke("upscale", clip, "-o", tmp_path / "o.mp4", "--model", "bicubic", "--device", "cuda")
    assert_one_line_error(result, "no usable CUDA GPU")


def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path):
    """A real SIGINT to a real process, part-way through a file."""
    src = make_clip(tmp_path / "long.mp4", frames=400, size=(160, 96))
    out = tmp_path / "o.mp4"
    # SIGINT as a terminal's Ctrl-C gives it: a test run started in the background (`cmd &` in a script)
    # hands its children SIGINT ignored, and Python then keeps ignoring it (the run went on to exit 0)
    proc = subprocess.Popen([sys.executable, "-m", "vsr", "upscale", str(src), "-o", str(out), "--model", "bicubic",
                             "--preset", "veryslow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    import time

    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".o.") and ".vsr-partial" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the signal was sent: {sorted(tmp_path.iterdir())}"
    proc.send_signal(2)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4"]


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "vsr", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "upscale" in result.stdout and "finetune" in result.stdout
    assert shutil.which("vsr") is not None


def test_video_to_image_name_is_refused(tmp_path, clip):
    result = invoke("upscale", clip, "-o", tmp_path / "frame.png", "--model", "bicubic")
    assert_one_line_error(result, "is a video", "frame.png")
    assert not (tmp_path / "frame.png").exists()


def test_cli_choices_are_the_librarys():
    """The CLI lists precisions and colour modes without importing torch; they must be the library's."""
    from vsr.cli import COLOUR_CHOICES, PRECISION_CHOICES
    from vsr.device import PRECISIONS
    from vsr.pipeline import COLOUR_MODES

    assert PRECISION_CHOICES == list(PRECISIONS) and COLOUR_CHOICES == list(COLOUR_MODES)


def test_cuda_defaults_batch_and_graphs_only_where_measured(tmp_path, clip):
    import torch

    from vsr.cli import cuda_defaults

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    png = tmp_path / "a.png"
    png.write_bytes(b"")
    assert cuda_defaults(cuda, clip, None, None) == (8, False, True)  # a video on CUDA: batches; graphs once the model bounds it
    assert cuda_defaults(cuda, png, None, None) == (8, False, False)  # one picture: compiling costs more than it saves
    assert cuda_defaults(cuda, tmp_path, None, None) == (8, False, False)  # folders: frame sizes vary
    assert cuda_defaults(cpu, clip, None, None) == (1, False, False)
    assert cuda_defaults(cuda, clip, 2, False) == (2, False, False)  # what the user says stands
    assert cuda_defaults(cuda, clip, None, True) == (8, True, False)


def test_compiling_part_way_only_where_the_model_bounds_the_run_and_it_pays():
    from vsr.pipeline import COMPILE_SECONDS, COMPILED_SPEEDUP, worth_compiling

    # 100 frames in 5 s, never waiting: the model is the bound
    pays = COMPILE_SECONDS / (1 - 1 / COMPILED_SPEEDUP)  # seconds left at which compiling breaks even
    assert worth_compiling(5.0, 0.0, 100, round(20 * pays * 1.2))
    assert not worth_compiling(5.0, 0.0, 100, round(20 * pays * 0.8))  # too little left
    assert not worth_compiling(5.0, 2.0, 100, 10**6)  # waited on the encoder 40% of the time
    assert worth_compiling(5.0, 0.5, 100, None)  # unknown length: long


def test_a_run_the_model_bounds_compiles_part_way(tmp_path, monkeypatch):
    """CompileWhenBound in the pipeline: a model slower than the encoder is compiled once the look
    is over; with the encoder made the slow side, or compiling not asked, it is not."""
    import time as _time

    import vsr.pipeline
    from conftest import make_clip
    from vsr.encode import Writer
    from vsr.model import Bicubic
    from vsr.pipeline import CompileWhenBound, UpscaleOptions, upscale_file
    from vsr.upscaler import Upscaler

    monkeypatch.setattr(CompileWhenBound, "LOOK_SECONDS", 0.3)
    monkeypatch.setattr(vsr.pipeline, "COMPILE_SECONDS", 0.0)
    clip = make_clip(tmp_path / "in.mp4", frames=40)
    compiled = []

    def upscaler(slow_model: bool) -> Upscaler:
        up = Upscaler(Bicubic(2))
        up.compile_now = lambda: compiled.append(True)
        real = up.upscale_stream

        def stream(batches, *a, **k):
            for out in real(batches, *a, **k):
                if slow_model:
                    _time.sleep(0.03)
                yield out

        up.upscale_stream = stream
        return up

    options = UpscaleOptions(compile_if_bound=True, chunk_seconds=0, queue_size=2)
    upscale_file(clip, tmp_path / "a.mp4", upscaler(True), options)
    assert compiled == [True]
    compiled.clear()
    upscale_file(clip, tmp_path / "b.mp4", upscaler(True), UpscaleOptions(chunk_seconds=0))  # not asked
    assert compiled == []
    real_encode = Writer.encode_frame

    def slow_encode(self, frame):
        _time.sleep(0.03)
        real_encode(self, frame)

    monkeypatch.setattr(Writer, "encode_frame", slow_encode)
    upscale_file(clip, tmp_path / "c.mp4", upscaler(False), options)  # the encoder bounds it
    assert compiled == []


def test_precision_and_colour_options(tmp_path, clip):
    """--colour device converts YUV<->RGB beside the model (the profile's to_planes/from_planes
    stages), --colour cpu with swscale (to_rgb/to_yuv); both give the same picture."""
    from conftest import ffmpeg_exe, ffmpeg_frames

    def stages(output: str) -> set[str]:
        names = {"to_rgb", "to_yuv", "to_planes", "from_planes"}
        return {cell for line in output.splitlines() for cell in line.replace("│", " ").split() if cell in names}

    out = tmp_path / "o.mp4"
    result = invoke("upscale", clip, "-o", out, "--model", "bicubic", "--precision", "fp32", "--colour", "device", "-q",
                    "--profile")
    assert result.exit_code == 0, result.output
    assert stages(result.output) == {"to_planes", "from_planes"}, result.output
    cpu = tmp_path / "cpu.mp4"
    result = invoke("upscale", clip, "-o", cpu, "--model", "bicubic", "--precision", "fp32", "--colour", "cpu", "-q",
                    "--profile")
    assert result.exit_code == 0, result.output
    assert stages(result.output) == {"to_rgb", "to_yuv"}, result.output
    ffmpeg = ffmpeg_exe()
    a, b = ffmpeg_frames(ffmpeg, out).astype(int), ffmpeg_frames(ffmpeg, cpu).astype(int)
    assert a.shape == b.shape == (4, 128, 192, 3) and np.abs(a - b).mean() < 2
    result = invoke("upscale", clip, "-o", out, "--model", "bicubic", "--precision", "fp8", "--overwrite")
    assert result.exit_code == 2 and "fp8" in result.output


def test_scale_2_uses_the_bundled_x2_model(tmp_path, clip):
    folder = tmp_path / "weights"
    folder.mkdir()
    save_generator(folder / "vsr_x2_psnr.safetensors", tiny_generator(scale=2, batch_norm=False, global_skip="bicubic"))
    save_generator(folder / "vsr_x4_psnr.safetensors", tiny_generator(scale=4, batch_norm=False, global_skip="bicubic"))
    env = {"VSR_WEIGHTS_DIR": str(folder)}
    result = invoke("upscale", clip, "-o", tmp_path / "x2.mp4", "--scale", "2", "-q", env=env)
    assert result.exit_code == 0, result.output
    result = invoke("upscale", clip, "-o", tmp_path / "x4.mp4", "-q", env=env)
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "x2.mp4")) as a, av.open(str(tmp_path / "x4.mp4")) as b:
        assert (a.streams.video[0].width, b.streams.video[0].width) == (96, 192)
