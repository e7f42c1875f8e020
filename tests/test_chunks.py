"""A video in chunks (#29): several encoder instances, one valid stream, and resume after a stop.

Every chunked output is compared with the same command's unchunked output (``chunk_seconds=0``):
the same frames at the same pts, the other streams' packets bit for bit, the same tags and
chapters; and it is read by the ffmpeg binary without a word, with a keyframe at each chunk's start
and decode timestamps increasing across the joins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import ffmpeg_packets, make_clip, pyav_video_pts
from vsr.chunks import (ChunkedEncode, ChunkError, ChunkPacket, ChunkRecord, Chunker, Joiner, Mark, WorkFolder,
                        chunk_length, held_frames, work_folder_of)
import vsr.pipeline as pipeline
from vsr.encode import EncodeOptions, Writer
from vsr.model import Bicubic
from vsr.pipeline import UpscaleError, UpscaleOptions, upscale_file
from vsr.report import Reporter
from vsr.timing import Timings
from vsr.upscaler import Upscaler

MODEL = "bicubic x2 (test)"


def _options(**kw) -> UpscaleOptions:
    encode = kw.pop("encode", EncodeOptions(preset="fast"))
    return UpscaleOptions(model_id=MODEL, encode=encode, **kw)


def _video_packets(path: Path) -> list[tuple[int, int, bool]]:
    with av.open(str(path)) as c:
        return [(p.pts, p.dts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]


def _ffmpeg_warnings(ffmpeg: str, path: Path) -> str:
    res = subprocess.run([ffmpeg, "-v", "warning", "-i", str(path), "-map", "0", "-f", "null", "-"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return re.sub(r" @ 0x[0-9a-f]+", "", res.stderr.strip())


def _frames(ffmpeg: str, path: Path, size: tuple[int, int] = (128, 96)) -> np.ndarray:
    """Every frame the ffmpeg binary decodes, as RGB, one per frame of the file (no frame-rate conversion)."""
    res = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, size[1], size[0], 3)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """100 frames at 25 fps with B-frames, AAC audio, chapters and tags."""
    return make_clip(tmp_path_factory.mktemp("chunks") / "in.mp4", frames=100, size=(64, 48), audio=1,
                     chapters=True, metadata={"title": "a clip", "artist": "someone"})


# -- joining, unit -----------------------------------------------------------------------------------
def _chunk(pts_in_decode_order: list[int], delay: int, step: int = 10) -> list[ChunkPacket]:
    first = min(pts_in_decode_order)
    return [ChunkPacket(p, first - (delay - i) * step if i < delay else None, step, i == 0, 0, 1)
            for i, p in enumerate(pts_in_decode_order)]


def test_joined_dts_increase_and_never_pass_pts_with_b_frames():
    joiner = Joiner(b"hdr")
    # I P B B: shown 0 30 10 20 (decode order 0, 30, 10, 20), the encoder two packets ahead
    a = joiner.join(0, b"hdr", _chunk([0, 30, 10, 20, 70, 50, 40, 60], 2))
    b = joiner.join(1, b"hdr", _chunk([80, 110, 90, 100, 120], 2))
    dts = [p.dts for p in a + b]
    assert dts == sorted(set(dts)), dts  # strictly increasing across the join
    assert all(p.dts <= p.pts for p in a + b)
    assert [p.dts for p in b[:2]] == [60, 70]  # the previous chunk's last shown frames, not the encoder's guesses
    assert dts[:2] == [-20, -10]  # the first chunk keeps its encoder's own


def test_a_chunk_is_joined_only_under_the_same_headers_and_from_a_keyframe():
    joiner = Joiner(b"sps-pps")
    with pytest.raises(ChunkError, match="other codec headers"):
        joiner.join(0, b"other", _chunk([0, 10], 0))
    packets = _chunk([0, 10], 0)
    packets[0].key = False
    with pytest.raises(ChunkError, match="keyframe"):
        joiner.join(0, b"sps-pps", packets)


def test_chunk_length_is_bounded_by_time_encoders_and_memory():
    assert chunk_length(100_000, 25, 1, 1, None) == 250  # 10 s at most
    assert chunk_length(2000, 25, 4, 1, None) == 250 and chunk_length(1200, 25, 4, 1, None) == 150  # two per encoder
    assert chunk_length(400, 25, 4, 1, None) == 120  # but never under the encoder's pipeline, 120 frames
    assert chunk_length(100_000, 25, 4, 10 << 20, 4 << 30) == 25  # 4 x 25 frames of 10 MiB: a quarter of 4 GiB
    assert chunk_length(None, 24, 1, 1, None, seconds=0.5) == 12


def test_a_chunk_that_does_not_follow_or_reorders_deeper_is_not_joined():
    joiner = Joiner(b"h")
    joiner.join(0, b"h", _chunk([0, 30, 10, 20], 1))
    with pytest.raises(ChunkError, match="does not follow"):
        joiner.join(1, b"h", _chunk([30, 40], 1))  # pts 30 was shown already
    with pytest.raises(ChunkError, match="deeper"):
        joiner.join(1, b"h", _chunk([40, 70, 50, 60], 2))
    out = joiner.join(1, b"h", _chunk([40, 70, 50, 60], 1))
    assert [p.dts for p in out] == [30, 40, 50, 60]  # the delay of the first chunk, the pts before it


def test_no_decode_timestamp_is_made_up_when_none_fits():
    joiner = Joiner(b"h")
    packets = _chunk([0, 10, 20], 0)
    packets[1].pts = None
    with pytest.raises(ChunkError, match="without timestamps"):
        joiner.join(0, b"h", packets)
    # a packet whose encoder-given dts goes backwards (the first chunk keeps its encoder's own)
    with pytest.raises(ChunkError, match="no decode timestamp fits"):
        Joiner(b"h").join(0, b"h", [ChunkPacket(0, 5, 10, True, 0, 1), ChunkPacket(10, -10, 10, False, 0, 1),
                                     ChunkPacket(20, None, 10, False, 0, 1)])


def _cuts(length: int, keys=(), done=None, n: int = 40) -> tuple[list[Mark], list[int]]:
    """(the marks, the frames that pass) of frames 0..n-1 (pts 10 per frame; ``keys``: source keyframes)."""
    out = list(Chunker(length, done or {}, lambda i: i * 10).items(range(n), lambda i: True, lambda i: i in keys))
    return [m for m in out if isinstance(m, Mark)], [i for i in out if not isinstance(i, Mark)]


def test_chunks_are_cut_before_source_keyframes_once_half_full():
    marks, frames = _cuts(10, keys={2, 7, 13})
    assert [m.start for m in marks] == [0, 7, 13, 23, 33]  # 2: too early; 7 and 13: half full; then every 10
    assert [m.first_pts for m in marks] == [0, 70, 130, 230, 330] and frames == list(range(40))
    assert [m.start for m in _cuts(10)[0]] == [0, 10, 20, 30]


def test_only_a_done_chunk_that_starts_where_this_run_cuts_is_skipped():
    record = lambda start, pts: ChunkRecord(1, start, 10, pts, 5, "x")  # noqa: E731
    marks, frames = _cuts(10, done={1: record(10, 100)})
    assert marks[1].done is not None and frames == list(range(10)) + list(range(20, 40))
    assert [m.start for m in marks] == [0, 10, 20, 30]  # the next chunk starts after it, as in the run that made it
    for other in (record(11, 100), record(10, 90)):  # another cut, or another first frame: encoded again
        marks, frames = _cuts(10, done={1: other})
        assert all(m.done is None for m in marks) and frames == list(range(40))


def test_the_frames_held_for_the_encoders_are_bounded():
    assert held_frames(1, 250, 16, 1, None) == 16  # one encoder: a queue's worth, not a chunk
    assert held_frames(4, 250, 16, 1, None) == 3 * 250 + 16
    assert held_frames(4, 3600 * 25, 16, 10 << 20, 4 << 30) == 102  # a long chunk asked: a quarter of memory
    assert held_frames(4, 250, 16, 1 << 40, 4 << 30) == 16


class _SlowEncoder:
    """A stand-in encoder instance: one packet per frame, each taking a while."""

    extradata = b"h"

    def __init__(self, threads: int) -> None:
        self.pts: list[int] = []

    def encode(self, frame):
        if frame is None:
            return []
        time.sleep(0.002)
        first = not self.pts
        self.pts.append(frame)
        return [type("P", (), {"pts": frame, "dts": frame, "duration": 1, "is_keyframe": first,
                               "__bytes__": lambda self: b"x"})()]


def test_the_encode_stage_holds_no_more_frames_than_its_budget(tmp_path):
    work = WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 20, True, lambda m: None)
    muxed: list[int] = []
    others: list[tuple[int, int]] = []  # (frames before the packet in the input, video packets muxed before it)
    stop = threading.Event()
    encode = ChunkedEncode(work, 2, 1, _SlowEncoder, Joiner(b"h"), Fraction(1, 25),
                           lambda p, data, tb: muxed.append(p.pts), lambda item: others.append((item, len(muxed))),
                           stop, lambda n: None, 24, Timings())
    most = 0
    for i in range(100):
        if i % 20 == 0:
            encode.mark(Mark(i // 20, i, i))
        encode.frame(i)
        encode.packet(i + 1)  # an audio packet after frame i
        most = max(most, sum(c.frames.qsize() for c in encode.order))
    encode.close()
    work.close()
    assert muxed == list(range(100))
    assert most <= 24 + 2  # the budget, give or take the end marks
    # each other packet is muxed after the frames before it, and as soon as they are joined
    assert [k for k, _n in others] == list(range(1, 101))
    assert all(0 <= n - k <= 1 for k, n in others), others


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    first = WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 10, False, lambda m: None)
    try:
        with pytest.raises(ChunkError, match="another vsr run is writing out.mp4"):
            WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 10, True, lambda m: None)
    finally:
        first.close()
    WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 10, True, lambda m: None).close()  # free again


# -- one valid stream -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["mp4", "mkv", "ts", "webm"])
def test_chunked_output_has_the_unchunked_content(tmp_path, clip, ffmpeg, ext):
    up = Upscaler(Bicubic(2))
    whole = upscale_file(clip, tmp_path / f"whole.{ext}", up, _options(chunk_seconds=0))
    chunked = upscale_file(clip, tmp_path / f"chunked.{ext}", up, _options(chunk_seconds=0.5, encoders=2))
    assert chunked.frames == whole.frames == 100 and chunked.encoders == 2
    assert not work_folder_of(tmp_path / f"chunked.{ext}").exists()  # assembled: the chunks are gone
    pts, _tb = pyav_video_pts(tmp_path / f"chunked.{ext}")
    assert pts == pyav_video_pts(tmp_path / f"whole.{ext}")[0]
    packets = _video_packets(tmp_path / f"chunked.{ext}")
    keys = [i for i, (_p, _d, k) in enumerate(packets) if k]
    assert keys[:9] == [0, 12, 24, 36, 48, 60, 72, 84, 96]  # a keyframe at every chunk start (0.5 s = 12 frames)
    dts = [d for _p, d, _k in packets if d is not None]  # (Matroska stores none for B-frames)
    assert len(dts) > 50 and all(b > a for a, b in zip(dts, dts[1:]))
    assert all(d <= p for p, d, _k in packets if d is not None)
    assert _ffmpeg_warnings(ffmpeg, tmp_path / f"chunked.{ext}") == _ffmpeg_warnings(ffmpeg, tmp_path / f"whole.{ext}")
    assert ffmpeg_packets(ffmpeg, tmp_path / f"chunked.{ext}", "a:0") == ffmpeg_packets(ffmpeg, tmp_path / f"whole.{ext}", "a:0")
    with av.open(str(tmp_path / f"chunked.{ext}")) as c, av.open(str(tmp_path / f"whole.{ext}")) as w:
        assert dict(c.metadata) == dict(w.metadata)
        assert ext == "ts" or dict(c.metadata).get("title") == "a clip"  # (.ts: the title is the service name)
        assert [(ch["start"], ch["end"]) for ch in c.chapters()] == [(ch["start"], ch["end"]) for ch in w.chapters()]


def test_chunked_frames_are_as_close_to_a_lossless_output_as_unchunked_ones(tmp_path, clip, ffmpeg):
    up = Upscaler(Bicubic(2))
    lossless = upscale_file(clip, tmp_path / "ref.mkv", up, _options(chunk_seconds=0, encode=EncodeOptions(codec="ffv1")))
    assert lossless.frames == 100
    upscale_file(clip, tmp_path / "whole.mp4", up, _options(chunk_seconds=0))
    upscale_file(clip, tmp_path / "chunked.mp4", up, _options(chunk_seconds=0.5, encoders=3))
    ref = _frames(ffmpeg, tmp_path / "ref.mkv")
    whole, chunked = _frames(ffmpeg, tmp_path / "whole.mp4"), _frames(ffmpeg, tmp_path / "chunked.mp4")
    assert len(ref) == len(whole) == len(chunked) == 100  # every frame decodes
    for i in range(100):
        assert _psnr(chunked[i], ref[i]) >= _psnr(whole[i], ref[i]) - 1.0, i


def test_variable_frame_rate_keeps_every_pts(tmp_path, ffmpeg):
    rng = np.random.default_rng(3)
    stamps = np.cumsum(rng.integers(1, 4, 60)) * 1000  # ticks of 1/90000: 11-33 ms apart
    vfr = make_clip(tmp_path / "vfr.mkv", pts=[int(p) for p in stamps], time_base=Fraction(1, 90000), size=(48, 32))
    up = Upscaler(Bicubic(2))
    upscale_file(vfr, tmp_path / "whole.mp4", up, _options(chunk_seconds=0))
    upscale_file(vfr, tmp_path / "chunked.mp4", up, _options(chunk_seconds=0.2, encoders=2))
    assert pyav_video_pts(tmp_path / "chunked.mp4") == pyav_video_pts(tmp_path / "whole.mp4")
    assert len(pyav_video_pts(tmp_path / "chunked.mp4")[0]) == 60
    assert _ffmpeg_warnings(ffmpeg, tmp_path / "chunked.mp4") == _ffmpeg_warnings(ffmpeg, tmp_path / "whole.mp4")


# -- what cannot be chunked -------------------------------------------------------------------------------
def test_a_container_that_counts_frames_is_refused_when_encoders_are_asked(tmp_path, clip):
    up = Upscaler(Bicubic(2))
    with pytest.raises(UpscaleError, match=r"--encoders 2: the avi container.*--encoders 1"):
        upscale_file(clip, tmp_path / "out.avi", up, _options(chunk_seconds=0.5, encoders=2))
    assert os.listdir(tmp_path) == []  # nothing half-written
    result = upscale_file(clip, tmp_path / "out.avi", up, _options(chunk_seconds=0.5))  # left to vsr: one encoder
    assert result.frames == 100 and result.encoders == 1


def test_an_encoder_whose_instances_write_other_headers_is_not_chunked(tmp_path, clip, monkeypatch):
    """A stand-in for an encoder that cannot guarantee one set of headers: each new instance is
    given another reference count, which changes x264's SPS."""
    real = Writer.chunk_encoder
    count = [0]

    def drifting(self, threads):
        count[0] += 1
        name, options, *rest = self._video_setup
        self._video_setup = (name, {**options, "x264-params": f"ref={4 + count[0]}"}, *rest)
        try:
            return real(self, threads)
        finally:
            self._video_setup = (name, options, *rest)

    monkeypatch.setattr(Writer, "chunk_encoder", drifting)
    up = Upscaler(Bicubic(2))
    with pytest.raises(UpscaleError, match="write different codec headers"):
        upscale_file(clip, tmp_path / "out.mp4", up, _options(chunk_seconds=0.5, encoders=2))
    result = upscale_file(clip, tmp_path / "out.mp4", up, _options(chunk_seconds=0.5))
    assert result.encoders == 1 and result.frames == 100
    assert not work_folder_of(tmp_path / "out.mp4").exists()


# -- resume ---------------------------------------------------------------------------------------------
class _Counter:
    """The ``fault`` hook: counts the frames that reach the model, and stops the run (as Ctrl-C)
    at frame ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.frames, self.stop_at = 0, stop_at

    def __call__(self, index: int) -> None:
        if self.stop_at is not None and index >= self.stop_at:
            raise KeyboardInterrupt
        self.frames += 1


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("long") / "long.mp4", frames=300, size=(48, 32), audio=1, chapters=True)


def _stopped_half_way(src: Path, dst: Path, **kw) -> _Counter:
    first = _Counter(stop_at=150)
    with pytest.raises(KeyboardInterrupt):
        upscale_file(src, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, queue_size=4, **kw), fault=first)
    assert not dst.exists()
    return first


def test_a_stopped_run_resumes_where_it_was(tmp_path, long_clip, ffmpeg):
    dst = tmp_path / "out.mp4"
    first = _stopped_half_way(long_clip, dst, encoders=2)
    work = work_folder_of(dst)
    done = json.loads((work / "done.json").read_text())["chunks"]
    assert done and all((work / f"{c['index']:05d}.chunk").exists() for c in done)
    assert not [p for p in os.listdir(work) if "partial" in p]  # the unfinished chunks were thrown away

    class Lines:
        info_lines: list[str] = []

    from vsr.report import Reporter

    class Listening(Reporter):
        def info(self, message):
            Lines.info_lines.append(message)

    second = _Counter()
    result = upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=2), Listening(),
                          fault=second)
    assert any(line.startswith("resuming out.mp4") for line in Lines.info_lines), Lines.info_lines
    assert result.frames == 300 and result.resumed == sum(c["frames"] for c in done) > 0
    assert result.upscaled == second.frames
    assert first.frames + second.frames <= 1.1 * 300, (first.frames, second.frames)
    assert not work.exists()
    upscale_file(long_clip, tmp_path / "whole.mp4", Upscaler(Bicubic(2)), _options(chunk_seconds=0))
    assert pyav_video_pts(dst) == pyav_video_pts(tmp_path / "whole.mp4")
    assert ffmpeg_packets(ffmpeg, dst, "a:0") == ffmpeg_packets(ffmpeg, tmp_path / "whole.mp4", "a:0")
    assert _ffmpeg_warnings(ffmpeg, dst) == _ffmpeg_warnings(ffmpeg, tmp_path / "whole.mp4")
    assert len(_frames(ffmpeg, dst, (96, 64))) == 300


def test_a_truncated_chunk_is_encoded_again_not_joined(tmp_path, long_clip, ffmpeg):
    dst = tmp_path / "out.mkv"
    _stopped_half_way(long_clip, dst, encoders=1)
    work = work_folder_of(dst)
    done = json.loads((work / "done.json").read_text())["chunks"]
    assert len(done) >= 3
    victim = work / f"{done[1]['index']:05d}.chunk"
    victim.write_bytes(victim.read_bytes()[:-7])
    second = _Counter()
    result = upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=1), fault=second)
    kept = sum(c["frames"] for c in done) - done[1]["frames"]
    assert result.resumed == kept and second.frames == 300 - kept
    assert len(_frames(ffmpeg, dst, (96, 64))) == 300 and _ffmpeg_warnings(ffmpeg, dst) == ""


def test_other_settings_or_overwrite_start_over(tmp_path, long_clip):
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst)
    warned: list[str] = []
    from vsr.report import Reporter

    class Listening(Reporter):
        def warn(self, message):
            warned.append(message)

    other = _options(chunk_seconds=0.5, encode=EncodeOptions(preset="fast", crf=30))
    result = upscale_file(long_clip, dst, Upscaler(Bicubic(2)), other, Listening())
    assert result.resumed == 0 and result.frames == 300
    assert any("other settings" in w and "starting over" in w for w in warned), warned
    dst.unlink()
    _stopped_half_way(long_clip, dst)
    result = upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, resume=False))  # (-y)
    assert result.resumed == 0


def test_an_input_rewritten_with_its_size_and_time_kept_starts_over(tmp_path, long_clip):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    src.write_bytes(long_clip.read_bytes())
    _stopped_half_way(src, dst)
    st = os.stat(src)
    data = bytearray(src.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # the same size, other bytes; then its old time back (as cp -p does)
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    warned: list[str] = []
    from vsr.report import Reporter

    class Listening(Reporter):
        def warn(self, message):
            warned.append(message)

    result = upscale_file(src, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, queue_size=4), Listening())
    assert result.resumed == 0 and any("another input" in w for w in warned), warned


def test_other_streams_stay_interleaved_with_the_joined_chunks(tmp_path, clip):
    def order(path: Path) -> list[int]:
        """Per audio packet in file order, how many video packets come before it."""
        seen, counts = 0, []
        with av.open(str(path)) as c:
            for p in c.demux():
                if p.size and p.stream.type == "video":
                    seen += 1
                elif p.size and p.stream.type == "audio":
                    counts.append(seen)
        return counts

    up = Upscaler(Bicubic(2))
    upscale_file(clip, tmp_path / "whole.mkv", up, _options(chunk_seconds=0))
    upscale_file(clip, tmp_path / "chunked.mkv", up, _options(chunk_seconds=0.5, encoders=2))
    whole, chunked = order(tmp_path / "whole.mkv"), order(tmp_path / "chunked.mkv")
    assert len(whole) == len(chunked) > 50
    assert max(abs(a - b) for a, b in zip(whole, chunked)) <= 3, (whole[:12], chunked[:12])


def test_a_killed_runs_partial_output_is_removed_by_the_next_run_and_nothing_else(tmp_path, long_clip):
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst)
    work = work_folder_of(dst)
    stale = tmp_path / ".out.abc123.vsr-partial.mp4"  # what a SIGKILLed run leaves (a real one: the SIGKILL test)
    stale.write_bytes(b"half a file")
    (work / "output.json").write_text(json.dumps({"format": 1, "name": stale.name}))
    upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, queue_size=4))
    assert not stale.exists() and dst.exists()
    for planted in ("keep.mp4", "../keep.mp4", ".out.x.vsr-partial.mkv"):  # not a partial file of out.mp4: kept
        victim = tmp_path / planted
        victim.write_bytes(b"mine")
        dst.unlink()
        _stopped_half_way(long_clip, dst)
        (work / "output.json").write_text(json.dumps({"format": 1, "name": planted}))
        upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, queue_size=4))
        assert victim.read_bytes() == b"mine", planted


def test_sigkill_half_way_then_the_same_command_resumes(tmp_path, ffmpeg):
    """The real thing: ``vsr upscale`` killed with SIGKILL once half the chunks are recorded."""
    src = make_clip(tmp_path / "in.mp4", frames=1500, size=(64, 48), audio=1)
    dst = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "vsr", "upscale", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2",
           "--chunk-seconds", "0.5", "--preset", "fast", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    done_file = work_folder_of(dst) / "done.json"
    killed_at = 0
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            killed_at = len(json.loads(done_file.read_text())["chunks"])
        except (OSError, ValueError, KeyError):
            killed_at = 0
        if killed_at >= 60:  # of 120 chunks
            proc.kill()
            break
        time.sleep(0.01)
    proc.wait()
    if killed_at < 60:
        pytest.skip(f"the run ended before half of it was recorded (exit {proc.returncode})")
    assert not dst.exists()
    partial = lambda: [p for p in os.listdir(tmp_path) if ".vsr-partial" in p]  # noqa: E731
    assert partial()  # what the kill left beside the output ...
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    kept = int(line.split("(")[1].split(" kept")[0])
    assert kept >= 600 and "1500 frames" in line  # about half, not upscaled again
    assert len(_frames(ffmpeg, dst)) == 1500
    assert _ffmpeg_warnings(ffmpeg, dst) == _ffmpeg_warnings(ffmpeg, src)  # (its audio track's title: FFmpeg 9 warns on both)
    assert not work_folder_of(dst).exists()
    assert not partial()  # ... the next run removed


def test_cli_encoders_and_chunk_seconds(tmp_path, clip):
    from vsr.cli import main

    runner = CliRunner()
    out = tmp_path / "o.mp4"
    res = runner.invoke(main, ["upscale", str(clip), "-o", str(out), "--model", "bicubic", "--scale", "2",
                               "--encoders", "2", "--chunk-seconds", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    assert [i for i, (_p, _d, k) in enumerate(_video_packets(out)) if k][:3] == [0, 12, 24]
    res = runner.invoke(main, ["upscale", str(clip), "-o", str(tmp_path / "o.ogv"), "--model", "bicubic", "--scale", "2",
                               "--encoders", "2", "--chunk-seconds", "0.5"])
    assert res.exit_code == 1 and "--encoders 2: the ogv container's timestamps count frames" in res.output
    res = runner.invoke(main, ["upscale", str(clip), "-o", str(tmp_path / "p.mp4"), "--model", "bicubic",
                               "--encoders", "2", "--chunk-seconds", "0"])
    assert res.exit_code == 1 and "--chunk-seconds 0" in res.output
    assert not (tmp_path / "p.mp4").exists()


def test_batches_of_frames_do_not_move_frames_across_chunks(tmp_path, long_clip, ffmpeg):
    """Frames go to the model five at a time while chunks are twelve long: every chunk still holds
    exactly its own frames (a keyframe every 12), and a resumed run joins the same frames."""
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst, encoders=2, batch_size=5)
    result = upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=2, batch_size=5))
    assert result.resumed > 0 and result.frames == 300
    keys = [i for i, (_p, _d, k) in enumerate(_video_packets(dst)) if k]
    assert keys[:10] == list(range(0, 120, 12))
    upscale_file(long_clip, tmp_path / "whole.mp4", Upscaler(Bicubic(2)), _options(chunk_seconds=0))
    assert pyav_video_pts(dst) == pyav_video_pts(tmp_path / "whole.mp4")
    whole, chunked = _frames(ffmpeg, tmp_path / "whole.mp4", (96, 64)), _frames(ffmpeg, dst, (96, 64))
    assert len(chunked) == 300
    assert min(_psnr(a, b) for a, b in zip(whole, chunked)) > 35  # the same pictures in the same places


# -- folders ---------------------------------------------------------------------------------------------
def test_a_folder_run_resumes_the_file_it_was_stopped_in(tmp_path, long_clip):
    """A folder run replaces the outputs it planned to (its own ``overwrite``), yet a file stopped
    part-way resumes from its chunks."""
    from vsr import batch

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    os.link(long_clip, src / "a.mp4")
    options = _options(chunk_seconds=0.5, queue_size=4)
    jobs = batch.plan(src, out, batch.BatchOptions(settings=options.settings), 2)

    def stop_half_way(job, index):
        if index >= 150:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.run(jobs, [Upscaler(Bicubic(2))], options, fault=stop_half_way)
    assert work_folder_of(out / "a.mp4").exists() and not (out / "a.mp4").exists()
    jobs = batch.plan(src, out, batch.BatchOptions(settings=options.settings), 2)
    batch.run(jobs, [Upscaler(Bicubic(2))], options)
    assert jobs[0].status == "done" and jobs[0].result.resumed > 0 and jobs[0].result.frames == 300


def test_folders_keep_several_files_in_flight_per_device(tmp_path, monkeypatch):
    """--jobs N: N upscalers on the device, each file's encoder on its share of the cores; and the
    files really are upscaled at the same time."""
    import threading

    from vsr import batch
    from vsr.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        make_clip(src / f"c{k}.mp4", frames=6)
    seen = {}
    real_run = batch.run

    def spying(jobs, upscalers, options, reporter=None, fault=None):
        seen["upscalers"], seen["threads"] = len(upscalers), options.encode.threads
        active, most = set(), [0]
        lock = threading.Lock()

        def overlap(job, index):
            with lock:
                active.add(job.rel)
                most[0] = max(most[0], len(active))
            time.sleep(0.05)
            if index == 5:
                with lock:
                    active.discard(job.rel)

        result = real_run(jobs, upscalers, options, reporter, fault=overlap)
        seen["most"] = most[0]
        return result

    monkeypatch.setattr(batch, "run", spying)
    res = CliRunner().invoke(main, ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", "bicubic",
                                    "--scale", "2", "--device", "cpu", "--jobs", "2", "-q"])
    assert res.exit_code == 0, res.output
    from vsr.system import usable_cores

    assert seen["upscalers"] == 2 and seen["threads"] == max(1, usable_cores() // 2)
    assert seen["most"] == 2
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 3


def test_a_fifo_or_folder_where_a_chunk_was_is_redone_not_waited_on(tmp_path, long_clip):
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst, encoders=1)
    work = work_folder_of(dst)
    done = json.loads((work / "done.json").read_text())["chunks"]
    fifo, folder = work / f"{done[0]['index']:05d}.chunk", work / f"{done[1]['index']:05d}.chunk"
    fifo.unlink()
    os.mkfifo(fifo)
    folder.unlink()
    folder.mkdir()
    result = upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=1))
    assert result.frames == 300 and result.resumed == sum(c["frames"] for c in done[2:])


# -- from the attack review of the budget, the stale partial and the job's identity -------------------------
class _Warned(Reporter):
    def __init__(self):
        super().__init__()
        self.warned = []

    def warn(self, message):
        self.warned.append(message)


def test_abort_stops_the_encoders_at_their_next_frame(tmp_path):
    class Slower(_SlowEncoder):
        def encode(self, frame):
            if frame is not None:
                time.sleep(0.02)
            return super().encode(frame)

    work = WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 1000, True, lambda m: None)
    encode = ChunkedEncode(work, 1, 1, Slower, Joiner(b"h"), Fraction(1, 25), lambda *a: None, lambda i: None,
                           threading.Event(), lambda n: None, 1000, Timings())
    encode.mark(Mark(0, 0, 0))
    for i in range(200):
        encode.frame(i)
    began = time.monotonic()
    encode.abort()
    took = time.monotonic() - began
    work.close()
    assert took < 1.0 and not work.done, (took, work.done)


def test_the_pipeline_gives_the_encoders_the_bounded_budget(tmp_path, long_clip, monkeypatch):
    seen = []
    real = pipeline.ChunkedEncode

    def spy(*args):
        seen.append(args[10])  # held_frames
        return real(*args)

    monkeypatch.setattr(pipeline, "ChunkedEncode", spy)
    upscale_file(long_clip, tmp_path / "out.mp4", Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=1, queue_size=4))
    assert seen == [4]  # one encoder: a queue's worth, not a chunk more


def test_a_stale_partial_goes_also_when_the_next_run_starts_over(tmp_path, long_clip):
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst)
    stale = tmp_path / ".out.abc123.vsr-partial.mp4"
    stale.write_bytes(b"half a file")
    (work_folder_of(dst) / "output.json").write_text(json.dumps({"format": 1, "name": stale.name}))
    other = _options(chunk_seconds=0.5, encode=EncodeOptions(preset="fast", crf=30))
    upscale_file(long_clip, dst, Upscaler(Bicubic(2)), other)
    assert not stale.exists()


def test_a_name_through_a_folder_is_not_followed(tmp_path, long_clip):
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst)
    (tmp_path / ".out.").mkdir()
    victim = tmp_path / "keep.vsr-partial.mp4"
    victim.write_bytes(b"mine")
    (work_folder_of(dst) / "output.json").write_text(json.dumps({"format": 1, "name": ".out./../keep.vsr-partial.mp4"}))
    upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, queue_size=4))
    assert victim.read_bytes() == b"mine"


@pytest.mark.parametrize("change", ["libraries", "code", "precision"])
def test_other_libraries_or_precision_start_over(tmp_path, long_clip, monkeypatch, change):
    dst = tmp_path / "out.mp4"
    first = Upscaler(Bicubic(2), precision="fp32")
    with pytest.raises(KeyboardInterrupt):
        upscale_file(long_clip, dst, first, _options(chunk_seconds=0.5, queue_size=4), fault=_Counter(stop_at=150))
    if change in ("libraries", "code"):
        if change == "libraries":
            monkeypatch.setattr(torch, "__version__", "0.0.0-other")
        else:  # another revision of vsr's code under the same version number
            monkeypatch.setattr(pipeline, "code_identity", lambda: "another-revision")
        second = Upscaler(Bicubic(2), precision="fp32")
    else:
        second = Upscaler(Bicubic(2), precision="bf16")
        assert second.dtype != first.dtype
    r = _Warned()
    result = upscale_file(long_clip, dst, second, _options(chunk_seconds=0.5, queue_size=4), r)
    key = "arithmetic" if change == "precision" else "libraries"
    assert result.resumed == 0 and any(f"({key} differ); starting over" in w for w in r.warned), r.warned


def test_the_partial_of_another_output_is_kept(tmp_path, long_clip):
    """Fails on 375bd05: '.out.' + anything + '.vsr-partial.mp4' also names out.v2.mp4's partial."""
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst)
    other = tmp_path / ".out.v2.abcd1234.vsr-partial.mp4"  # a run writing out.v2.mp4
    other.write_bytes(b"another run's output")
    (work_folder_of(dst) / "output.json").write_text(json.dumps({"format": 1, "name": other.name}))
    upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, queue_size=4))
    assert other.exists()


@pytest.mark.parametrize("name", [".out.dir.vsr-partial.mp4", ".out.\x00.vsr-partial.mp4"])
def test_a_recorded_name_that_cannot_be_removed_does_not_stop_every_run(tmp_path, long_clip, name):
    """Fails on 375bd05: EISDIR -> 'cannot write in the work folder' on every run (-y too); NUL -> ValueError."""
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst)
    if "\x00" not in name:
        (tmp_path / name).mkdir()
    (work_folder_of(dst) / "output.json").write_text(json.dumps({"format": 1, "name": name}))
    upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, queue_size=4))
    assert dst.exists()


def test_an_encoder_still_flushing_when_abort_gives_up_records_nothing(tmp_path):
    """abort() waits a while for each encoder thread; one still flushing after that must neither
    keep its chunk nor write into a work folder its run has closed (the next run may hold it)."""
    class SlowFlush(_SlowEncoder):
        def encode(self, frame):
            if frame is None:
                time.sleep(0.6)
            return super().encode(frame)

    work = WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 1000, True, lambda m: None)
    encode = ChunkedEncode(work, 1, 1, SlowFlush, Joiner(b"h"), Fraction(1, 25), lambda *a: None, lambda i: None,
                           threading.Event(), lambda n: None, 1000, Timings())
    encode.abort_wait = 0.05
    encode.mark(Mark(0, 0, 0))
    for i in range(5):
        encode.frame(i)
    encode._seal()  # the chunk's frames are all in: the encoder flushes
    time.sleep(0.2)
    encode.abort()
    work.close()
    for t in encode.threads_started:
        t.join(timeout=10)
    assert not work.done
    assert not (work.path / "done.json").exists() or json.loads((work.path / "done.json").read_text())["chunks"] == []
    assert not list(work.path.glob("*.chunk*")), sorted(p.name for p in work.path.iterdir())


def test_a_closed_work_folder_records_nothing(tmp_path):
    work = WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 10, True, lambda m: None)
    work.close()
    with pytest.raises(ChunkError, match="not recorded"):
        work.record(ChunkRecord(0, 0, 10, 0, 100, "0" * 64))
    assert not work.done


def test_a_work_folder_made_for_a_run_that_fails_to_start_goes(tmp_path, long_clip, monkeypatch):
    def fail(self, tmp):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(WorkFolder, "own_partial", fail)
    dst = tmp_path / "out.mp4"
    with pytest.raises(UpscaleError, match="No space left"):
        upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_work_folder_of_another_user_is_never_joined(tmp_path, long_clip):
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst)
    work = work_folder_of(dst)
    os.chown(work, 12345, -1)  # as if planted in a shared (sticky) folder by someone else
    with pytest.raises(UpscaleError, match="belongs to another user"):
        upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5))
    assert not dst.exists() and work.stat().st_uid == 12345


def test_close_when_the_last_chunk_is_joined_while_it_waits(tmp_path):
    """close() waits for the head chunk, joining finished ones meanwhile; when that join takes the
    last chunk there is nothing left to wait for (it raised IndexError: a whole run lost at its end)."""
    gate = threading.Event()

    class Gated(_SlowEncoder):
        def encode(self, frame):
            if frame is None:
                gate.wait(10)  # the flush ends only when the test says so
            return super().encode(frame)

    work = WorkFolder.open(tmp_path / "out.mp4", {"job": 1}, 1000, True, lambda m: None)
    muxed: list[int] = []
    encode = ChunkedEncode(work, 1, 1, Gated, Joiner(b"h"), Fraction(1, 25), lambda p, data, tb: muxed.append(p.pts),
                           lambda i: None, threading.Event(), lambda n: None, 1000, Timings())
    encode.mark(Mark(0, 0, 0))
    for i in range(5):
        encode.frame(i)
    real_poll = encode.poll

    def poll():  # the encoder finishes between close()'s wait and its poll
        if not gate.is_set():
            gate.set()
            assert encode.order[0].ended.wait(10)
        real_poll()

    encode.poll = poll
    encode.close()
    work.close()
    assert muxed == [0, 1, 2, 3, 4] and not encode.order


# -- resume without decoding what is done ---------------------------------------------------------
def _read_frames(path: Path, skip=None, decoded: list | None = None, monkeypatch=None):
    from vsr.decode import FrameItem, Skipped, probe, read
    import vsr.decode as decode
    if monkeypatch is not None:
        real = decode._Reader._decode
        monkeypatch.setattr(decode._Reader, "_decode", lambda self, p: decoded.append(p.pts) or real(self, p))
    out, skipped = [], []
    for item in read(probe(path), set(), skip=skip):
        if isinstance(item, FrameItem):
            out.append((item.index, item.pts, item.frame.to_ndarray(format="rgb24"), item.time_base, item.frame.key_frame))
        elif isinstance(item, Skipped):
            skipped.append(item.seconds)
    return out, skipped


@pytest.mark.parametrize("early", [True, False])
def test_a_resumed_read_skips_the_frames_kept_without_decoding_them(gop_clip, monkeypatch, early):
    """``early`` False: decoding starts at the first packet shown at ``until``, not half a second
    before: the two groups held must then be enough for the B-frames before a keyframe."""
    from vsr.decode import SkipTo
    import vsr.decode as decode
    whole, _ = _read_frames(gop_clip)
    assert len(whole) == 300
    tb = whole[0][3]
    keys = [i for i, *_rest, key in whole if key and i > 100]
    # inside a group, at a keyframe, and at the B-frames shown before one (they refer to the group before)
    for start in (1, 137, keys[0], keys[1] - 2, keys[2] - 1, 299):
        decoded = []
        until = Fraction(whole[start - 1][1]) * tb + Fraction(1, 1000)
        if not early:
            monkeypatch.setattr(decode, "_SKIP_EARLY", Fraction(0))
        tail, skipped = _read_frames(gop_clip, SkipTo(start, until), decoded, monkeypatch)
        monkeypatch.undo()
        assert [(i, pts) for i, pts, *_ in tail] == [(i, pts) for i, pts, *_ in whole[start:]], start
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(tail, whole[start:])), start  # decoded as a whole read does
        # from two groups before the first packet shown half a second before ``until``, at most
        assert len(decoded) <= 300 - start + 2 * 25 + 13 + 8, (start, len(decoded))
        assert all(t < until for t in skipped)  # a packet for each not yet decoded, all shown before ``until``
        if start >= 137:
            assert len(skipped) >= start - 2 * 25 - 13 - 8


def test_the_marks_of_chunks_the_reader_skipped_come_among_the_other_packets():
    records = [ChunkRecord(0, 0, 10, 0, 5, "x"), ChunkRecord(1, 10, 10, 100, 5, "y")]
    skipped = [(records[0], 0.0), (records[1], 1.0)]

    class S:
        def __init__(self, t):
            self.seconds = t

    items = [S(0.0), "a0", S(0.5), "a1", S(1.0), "a2", S(1.5), "a3"] + list(range(20, 30))
    out = list(Chunker(10, {0: records[0], 1: records[1]}, lambda i: i * 10, skipped).items(
        items, lambda i: isinstance(i, int), lambda i: False, lambda i: i.seconds if isinstance(i, S) else None,
        lambda i: i))
    names = [f"M{m.index}{'d' if m.done else ''}" if isinstance(m, Mark) else m for m in out]
    assert names == ["M0d", "a0", "a1", "M1d", "a2", "a3", "M2"] + list(range(20, 30))
    with pytest.raises(ChunkError, match="first frame decoded is frame 21"):  # not where the kept chunks end
        list(Chunker(10, {0: records[0], 1: records[1]}, lambda i: i * 10, skipped).items(
            [S(0.0)] + list(range(21, 30)), lambda i: isinstance(i, int), lambda i: False,
            lambda i: i.seconds if isinstance(i, S) else None, lambda i: i))
    # a reader that decodes every frame (it could not skip): the done chunks are matched as before
    out = list(Chunker(10, {0: records[0], 1: records[1]}, lambda i: i * 10, skipped).items(
        range(30), lambda i: True, lambda i: False, lambda i: None, lambda i: i))
    assert [m.index for m in out if isinstance(m, Mark) and m.done] == [0, 1]
    assert [i for i in out if not isinstance(i, Mark)] == list(range(20, 30))


def test_a_resumed_run_does_not_decode_the_chunks_it_keeps(tmp_path, gop_clip, ffmpeg, monkeypatch):
    import vsr.decode as decode
    dst = tmp_path / "out.mp4"
    _stopped_half_way(gop_clip, dst, encoders=2)
    done = json.loads((work_folder_of(dst) / "done.json").read_text())["chunks"]
    kept = 0  # the chunks kept from the first on, one after another
    by_index = {c["index"]: c for c in done}
    while kept in by_index:
        kept += 1
    prefix_frames = sum(by_index[i]["frames"] for i in range(kept))
    assert prefix_frames >= 100, done
    decoded = []
    real = decode._Reader._decode
    monkeypatch.setattr(decode._Reader, "_decode", lambda self, p: decoded.append(p.pts) or real(self, p))
    result = upscale_file(gop_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=2))
    monkeypatch.undo()
    assert result.frames == 300 and result.resumed >= prefix_frames
    assert len(decoded) <= 300 - prefix_frames + 2 * 25 + 13 + 8, (len(decoded), prefix_frames)
    whole = tmp_path / "whole.mp4"
    upscale_file(gop_clip, whole, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=2))
    assert pyav_video_pts(dst) == pyav_video_pts(whole)
    assert ffmpeg_packets(ffmpeg, dst, "a:0") == ffmpeg_packets(ffmpeg, whole, "a:0")
    assert _ffmpeg_warnings(ffmpeg, dst) == ""
    a, b = _frames(ffmpeg, dst, (96, 64)), _frames(ffmpeg, whole, (96, 64))
    assert len(a) == len(b) == 300 and _psnr(a, b) > 45


def _resumed(src: Path, tmp_path: Path, monkeypatch, **kw):
    """Stop a run of ``src`` half way, run it again: (its result, the video packets it decoded,
    the frames kept from the first on, the output)."""
    import vsr.decode as decode
    dst = tmp_path / "out.mp4"
    _stopped_half_way(src, dst, **kw)
    by_index = {c["index"]: c for c in json.loads((work_folder_of(dst) / "done.json").read_text())["chunks"]}
    kept = prefix = 0
    while kept in by_index:
        prefix += by_index[kept]["frames"]
        kept += 1
    decoded = []
    real = decode._Reader._decode
    monkeypatch.setattr(decode._Reader, "_decode", lambda self, p: decoded.append(p.pts) or real(self, p))
    try:
        result = upscale_file(src, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, **kw))
    finally:
        monkeypatch.undo()
    return result, len(decoded), prefix, dst


def _remuxed(tmp_path: Path, ffmpeg: str, name: str, video: Callable, audio: Callable = lambda p: p) -> Path:
    """12 s of moving pictures (48x32, a keyframe every 12 frames, no B-frames) with Opus audio,
    remuxed into ``name`` with each video packet through ``video(packet, n)`` (n: its number;
    returns the packet to write) and each audio packet through ``audio``."""
    cfr = tmp_path / "cfr.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=25:duration=12", "-f", "lavfi",
                    "-i", "sine=frequency=440:duration=12", "-c:v", "libx264", "-g", "12", "-bf", "0", "-sc_threshold",
                    "0", "-c:a", "libopus", "-shortest", str(cfr)], check=True)
    src = tmp_path / name
    with av.open(str(cfr)) as c, av.open(str(src), "w") as out:
        vi, ai = c.streams.video[0], c.streams.audio[0]
        vo, ao = out.add_stream_from_template(vi), out.add_stream_from_template(ai)
        n = 0
        for p in c.demux():
            if not p.size:
                continue
            if p.stream.index == vi.index:
                p, n = video(p, n), n + 1
                p.stream = vo
            else:
                p = audio(p)
                p.stream = ao
            out.mux(p)
    return src


def test_a_resumed_run_judges_the_gaps_in_what_it_skipped(tmp_path, ffmpeg, monkeypatch):
    """Frames missing at 2 s (10 of them), in the chunks the first run finished: the resumed run,
    which does not decode them, still finds the gap (--strict refuses the file as a whole run does)."""
    made = make_clip(tmp_path / "gap0.mp4", frames=300, size=(48, 32), audio=1,
                     pts=[i * 512 for i in range(50)] + [(i + 10) * 512 for i in range(50, 300)])
    src = tmp_path / "gap.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-i", str(made), "-map", "0", "-c:v", "libx264", "-g", "12", "-c:a", "copy",
                    "-fps_mode", "passthrough", "-video_track_timescale", "12800", str(src)], check=True)
    with pytest.raises(UpscaleError, match=r"about 10 frames missing \(1\.96-2\.40 s\)"):
        _resumed(src, tmp_path, monkeypatch, strict=True)
    (tmp_path / "again").mkdir()
    result, decoded, prefix, _dst = _resumed(src, tmp_path / "again", monkeypatch)
    assert prefix > 100 and decoded < 300 - prefix + 2 * 12 + 13 + 8  # it skipped them
    assert result.gaps and any("10 frames missing" in w for w in result.warnings), result.warnings


def test_resuming_decodes_from_the_start_where_frame_times_went_backwards(tmp_path, ffmpeg, monkeypatch):
    """Two frames' pts swapped early: a whole run times its frames by dts from there (FFmpeg's
    best-effort timestamp), a reader started in the middle would time them by pts and give two
    frames again; so the times shown do not match the chunks kept and every frame is decoded."""
    def swapped(p, n):  # (1 ms ticks, 40 a frame)
        p.dts, p.pts = p.pts + 120, p.pts + 200 + (40 if n == 10 else -40 if n == 11 else 0)
        return p

    def later(p):
        p.pts, p.dts = p.pts + 200, p.dts + 200
        return p

    src = _remuxed(tmp_path, ffmpeg, "faulty.ts", swapped, later)
    result, decoded, prefix, dst = _resumed(src, tmp_path, monkeypatch)
    assert prefix > 100 and decoded >= 290 and result.frames == 300
    whole = tmp_path / "whole.mp4"
    upscale_file(src, whole, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5))
    assert pyav_video_pts(dst) == pyav_video_pts(whole)


def test_resuming_skips_where_each_frame_is_one_tick(tmp_path, ffmpeg, monkeypatch):
    """A time base of one tick a frame (1/25): the next chunk's first frame is a tick after the
    last one kept, and is neither dropped nor given twice."""
    src = tmp_path / "tb25.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=25:duration=12", "-f", "lavfi",
                    "-i", "sine=frequency=440:duration=12", "-c:v", "libx264", "-g", "12", "-c:a", "aac", "-shortest",
                    "-video_track_timescale", "25", str(src)], check=True)
    result, decoded, prefix, dst = _resumed(src, tmp_path, monkeypatch)
    assert prefix > 100 and decoded < 300 - prefix + 2 * 12 + 13 + 8 and result.frames == 300
    whole = tmp_path / "whole.mp4"
    upscale_file(src, whole, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5))
    assert pyav_video_pts(dst) == pyav_video_pts(whole)
    assert ffmpeg_packets(ffmpeg, dst, "a:0") == ffmpeg_packets(ffmpeg, whole, "a:0")


def test_a_frame_at_the_time_of_the_one_before_a_kept_chunk_ends_resumes(tmp_path, ffmpeg, monkeypatch):
    """The first frame of each chunk from frame 120 on shown at the time of the frame before it: a
    whole run stamps it a tick later (encoders need increasing times); a run that resumes after a
    kept chunk must too, or its chunk does not follow the kept one and the output can never be made."""
    before = []

    def repeated(p, n):
        if n in range(120, 181, 12):
            p.pts = p.dts = before[-1]
        before.append(p.pts)
        return p

    src = _remuxed(tmp_path, ffmpeg, "dup.mkv", repeated)
    result, _decoded, prefix, dst = _resumed(src, tmp_path, monkeypatch)
    assert prefix >= 120 and result.frames == 300
    whole = tmp_path / "whole.mp4"
    upscale_file(src, whole, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5))
    assert pyav_video_pts(dst) == pyav_video_pts(whole)


def test_damage_the_decoder_met_in_the_chunks_kept_is_judged_when_they_are_skipped(tmp_path, ffmpeg, monkeypatch):
    """A keyframe at 1.44 s garbled (the decoder conceals it, no frame is lost): the run that made
    the chunks records what the decoder met with them, and a run that resumes without decoding them
    warns as a whole run does (--strict refuses)."""
    def garbled(p, n):
        if n != 36:
            return p
        data = bytearray(bytes(p))
        for i in range(len(data) // 3, len(data)):
            data[i] ^= 0x5A
        q = av.Packet(bytes(data))
        q.pts, q.dts, q.time_base, q.is_keyframe = p.pts, p.dts, p.time_base, p.is_keyframe
        return q

    src = _remuxed(tmp_path, ffmpeg, "damaged.mkv", garbled)
    whole = upscale_file(src, tmp_path / "whole.mp4", Upscaler(Bicubic(2)), _options(chunk_seconds=0.5))
    assert any("damaged input" in w for w in whole.warnings), whole.warnings  # (the premise)
    (tmp_path / "a").mkdir()
    result, decoded, prefix, _dst = _resumed(src, tmp_path / "a", monkeypatch)
    assert prefix > 100 and decoded < 300 - prefix + 2 * 12 + 13 + 8  # skipped
    assert [w for w in result.warnings if "damaged input" in w] == [w for w in whole.warnings if "damaged input" in w]
    (tmp_path / "b").mkdir()
    with pytest.raises(UpscaleError, match=r"damaged input.*--strict"):
        _resumed(src, tmp_path / "b", monkeypatch, strict=True)


def test_a_kept_chunks_last_pts_is_read_from_its_file_not_from_the_list(tmp_path, long_clip, ffmpeg):
    """done.json is a list anyone can edit; the chunk files are checked by their SHA-256: a record
    without ``last_pts`` (or with another) resumes as if it were the file's."""
    dst = tmp_path / "out.mp4"
    _stopped_half_way(long_clip, dst, encoders=2)
    listed = work_folder_of(dst) / "done.json"
    data = json.loads(listed.read_text())
    for k, c in enumerate(data["chunks"]):
        if k % 2:
            del c["last_pts"]
        else:
            c["last_pts"] = c["last_pts"] + 10**6 if k % 4 == 0 else 2**70
    listed.write_text(json.dumps(data))
    result = upscale_file(long_clip, dst, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=2))
    assert result.resumed > 0 and result.frames == 300
    whole = tmp_path / "whole.mp4"
    upscale_file(long_clip, whole, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, encoders=2))
    assert pyav_video_pts(dst) == pyav_video_pts(whole)
    assert _ffmpeg_warnings(ffmpeg, dst) == _ffmpeg_warnings(ffmpeg, whole)


def test_a_part_of_a_video_resumes_without_decoding_the_chunks_kept(tmp_path, gop_clip, ffmpeg, monkeypatch):
    """--start (a span) and resume: the times shown are counted in the span's timeline."""
    from vsr.decode import Span
    result, decoded, prefix, dst = _resumed(gop_clip, tmp_path, monkeypatch, span=Span(2.3, 8.0))
    assert prefix > 60 and decoded < 200 - prefix + 2 * 25 + 13 + 8 and result.frames == 200
    whole = tmp_path / "whole.mp4"
    upscale_file(gop_clip, whole, Upscaler(Bicubic(2)), _options(chunk_seconds=0.5, span=Span(2.3, 8.0)))
    assert pyav_video_pts(dst) == pyav_video_pts(whole)
    assert ffmpeg_packets(ffmpeg, dst, "a:0") == ffmpeg_packets(ffmpeg, whole, "a:0")
