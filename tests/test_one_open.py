"""The input is opened once per file upscaled (ARCHITECTURE.md, "How a frame travels"): one
:class:`vsr.decode.Source` describes it, answers where its chroma is sited and gives its packets,
on both colour paths, for a video, a part of one and a picture."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE, make_clip
from vsr.decode import Source, Span, chroma_left, probe
from vsr.model import Bicubic
from vsr.pipeline import UpscaleOptions, upscale_file
from vsr.upscaler import Upscaler


@pytest.fixture
def opens(monkeypatch) -> list[str]:
    """The path of every file ``av.open`` opens for reading, in order."""
    seen: list[str] = []
    real = av.open

    def counting(file, *args, **kwargs):
        if (args[0] if args else kwargs.get("mode", "r")) == "r":
            seen.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting)
    return seen


@pytest.mark.parametrize("colour", ["cpu", "device"])
def test_a_video_is_opened_once_on_either_colour_path(tmp_path, opens, colour):
    clip = make_clip(tmp_path / "in.mp4", frames=6, audio=1)
    result = upscale_file(clip, tmp_path / "out.mp4", Upscaler(Bicubic(2)), UpscaleOptions(colour=colour))
    assert result.frames == 6
    assert ("to_planes" in result.stages) is (colour == "device")  # the device path (and its chroma question) was taken
    assert opens.count(str(clip)) == 1, opens  # before: 2 on the CPU path, 3 with colour on the device


def test_a_part_of_a_video_is_opened_once(tmp_path, opens):
    clip = make_clip(tmp_path / "in.mp4", frames=20, audio=1)
    result = upscale_file(clip, tmp_path / "out.mp4", Upscaler(Bicubic(2)), UpscaleOptions(span=Span(0.4)))
    assert result.frames == 10
    assert opens.count(str(clip)) == 1, opens


def test_a_picture_is_opened_once(tmp_path, opens):
    png = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(png)
    result = upscale_file(png, tmp_path / "out.png", Upscaler(Bicubic(2)), UpscaleOptions())
    assert result.frames == 1
    assert opens.count(str(png)) == 1, opens  # before: 2


@pytest.mark.parametrize("kind", ["sample", "vfr", "vp9"])
def test_the_source_describes_as_probe_does_and_reads_what_it_decoded(tmp_path, kind):
    """A Source set up for reading (frame threads) describes the file as probe does (one frame in
    flight), gives the chroma siting the separate look gives, and reads every frame from the first."""
    if kind == "sample":
        src = SAMPLE
    elif kind == "vfr":
        src = make_clip(tmp_path / "vfr.mkv", frames=6, pts=[0, 1, 3, 4, 7, 9], time_base=Fraction(1, 10), subtitles=True)
    else:
        src = make_clip(tmp_path / "c.webm", frames=4, codec="libvpx-vp9")
    info = probe(src)
    with Source.open(src) as source:
        assert source.info == info
        assert source.chroma_left() is chroma_left(info) is (kind != "vp9")
        frames = [item for item in source.read(set()) if hasattr(item, "frame")]
    with av.open(str(src)) as c:
        expected = [f.pts for f in c.decode(video=0)]
    assert [f.pts for f in frames] == expected and frames[0].index == 0
