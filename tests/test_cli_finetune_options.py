"""`vsr finetune` options through the command line (issue #33 item 3), each checked by its effect:
the training record, the weights, the checkpoint and the frame cache."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from conftest import make_clip, pattern, tiny_generator
from vsr.cli import main
from vsr.weights import load_generator, save_generator, training_info

TINY = ["--from", "scratch", "--blocks", "1", "--channels", "4"]
FAST = ["--steps", "2", "--no-gan", "--patch-size", "32", "--batch-size", "2", "-q"]


def textured(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(pattern(seed, w, h).astype(np.int16) + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    for i in range(3):
        av.VideoFrame.from_ndarray(textured(i), format="rgb24").save(str(root / f"img{i}.png"))
    make_clip(root / "clip.mp4", frames=6, size=(128, 96))
    return root


def finetune(*args, env=None):
    r = CliRunner().invoke(main, ["finetune", *map(str, args)], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_val_folder_holds_out_its_own_files_and_trains_on_all_of_folder(folder, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    av.VideoFrame.from_ndarray(textured(7), format="rgb24").save(str(val / "held.png"))
    out = tmp_path / "o.safetensors"
    finetune(folder, "-o", out, *TINY, *FAST, "--val", val, "--val-every", "2", "--cache-dir", tmp_path / "c")
    data = training_info(out)["data"]
    # without --val, --val-fraction 0.1 holds one of the folder's four files out
    assert data["train_sources"] == 4 and data["val_sources"] == 1 and data["val_images"] >= 1, data
    assert sorted(data["sources"]) == ["clip.mp4", "img0.png", "img1.png", "img2.png"]
    assert [s for s, _ in training_info(out)["validation"]] == [2]


def test_max_side_shrinks_frames_before_they_are_cached(folder, tmp_path):
    cache = tmp_path / "c"
    finetune(folder, "-o", tmp_path / "o.safetensors", *TINY, *FAST, "--max-side", "64", "--cache-dir", cache)
    cached = sorted(cache.glob("*/*.npy"))
    assert cached
    assert {np.load(p, allow_pickle=False).shape for p in cached} == {(48, 64, 3)}  # 128x96 -> 64x48
    # img0 as Pillow shrinks it (antialiased bicubic): the cached frame is that picture
    ref = np.asarray(Image.fromarray(textured(0)).resize((64, 48), Image.BICUBIC)).astype(int)
    diffs = [np.abs(np.load(p, allow_pickle=False).astype(int) - ref).mean() for p in cached]
    assert min(diffs) < 2.0, diffs


def test_pixel_loss_mse_is_the_loss_trained_on(folder, tmp_path):
    """Same seed, same data, only the loss differs: the record says mse and the weights differ from l1's."""
    runs = {}
    for loss in ("l1", "mse"):
        out = tmp_path / f"{loss}.safetensors"
        finetune(folder, "-o", out, *TINY, *FAST, "--pixel-loss", loss, "--cache-dir", tmp_path / "c", "--val-fraction", "0")
        assert training_info(out)["train_config"]["pixel_loss"] == loss
        runs[loss] = load_file(out)
    assert any(not np.array_equal(runs["l1"][k].numpy(), runs["mse"][k].numpy()) for k in runs["l1"])


def test_checkpoint_is_written_where_asked_and_resumes(folder, tmp_path):
    from vsr.train import load_checkpoint

    out, ckpt = tmp_path / "o.safetensors", tmp_path / "elsewhere" / "my.ckpt"
    ckpt.parent.mkdir()
    finetune(folder, "-o", out, *TINY, *FAST, "--checkpoint", ckpt, "--checkpoint-every", "1", "--cache-dir", tmp_path / "c")
    assert ckpt.is_file() and not out.with_suffix(".ckpt").exists()
    assert load_checkpoint(ckpt)["step"] == 2
    more = tmp_path / "more.safetensors"
    finetune(folder, "-o", more, *TINY, "--steps", "3", "--no-gan", "--patch-size", "32", "--batch-size", "2", "-q",
             "--resume", ckpt, "--checkpoint", tmp_path / "more.ckpt", "--cache-dir", tmp_path / "c")
    assert training_info(more)["steps"] == 3


def test_the_default_start_is_the_bundled_x4_model(folder, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    bundled = tiny_generator(scale=4, channels=4, batch_norm=False, global_skip="bicubic")
    save_generator(weights / "vsr_x4_psnr.safetensors", bundled, training={"steps": 5})
    out = tmp_path / "o.safetensors"
    finetune(folder, "-o", out, *FAST, "--cache-dir", tmp_path / "c", env={"VSR_WEIGHTS_DIR": str(weights)})
    info = training_info(out)
    assert Path(info["started_from"]).name == "vsr_x4_psnr.safetensors"
    assert info["earlier_training"]["steps"] == 5 and info["total_steps"] == 7
    assert load_generator(out).config == bundled.config
