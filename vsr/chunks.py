"""A long video in chunks: the unit of parallel encoding and of resume (Av1an's ``chunk.rs``,
``broker.rs``, ``concat.rs``).

* :func:`chunk_length` and :class:`Chunker`: where the output timeline is cut.  Before a source
  keyframe once a chunk holds half its length, at its length at the latest; each chunk is encoded
  by an encoder instance of its own, so it starts with a keyframe of its own.  The rule depends only
  on the frames, so a second run cuts the same video in the same places.
* :class:`WorkFolder`: the hidden folder beside the output where finished chunks wait
  (``00000.chunk``...), each written whole then renamed and listed in ``done.json`` with its size
  and SHA-256; tied to the input file's identity and the settings by ``job.json``.
* :func:`write_chunk` / :func:`read_chunk`: a chunk file holds one encoder's packets exactly
  (timestamps in the encoder's time base, the codec headers they decode under).
* :class:`Joiner`: the chunks' packets as one stream: the headers checked against the output's,
  a keyframe first in each, decode timestamps made monotonic across the joins (B-frames included).

Nothing here touches the model: it sees the frames in order, as without chunks.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import queue
import re
import shutil
import stat
import struct
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from vsr.errors import VsrError
from vsr.files import PARTIAL, finish, new_partial, remove, written_whole
from vsr.system import return_freed_memory

# Output containers whose video can be joined from chunks: each holds a stream whose packets carry
# their own pts and dts, and a keyframe may start anywhere.  (Ogg and AVI count frames instead;
# images are one frame.)
JOINABLE_CONTAINERS = {"mp4", "mov", "matroska", "webm", "mpegts"}

LONGEST_CHUNK_SECONDS = 10.0  # what a kill can cost, at most, per encoder; and what each holds in memory
SHORTEST_CHUNK_SECONDS = 1.0  # below this, the extra keyframes and encoder starts cost more than they give
# ... and never fewer frames than an encoder's pipeline holds several times over: x264 medium looks
# 40 frames ahead and each frame thread holds one more; a chunk of 30 frames at 1080p on an H200 was
# all start-up and flush (4 encoders on 30-frame chunks ran at the speed of one).
SHORTEST_CHUNK_FRAMES = 120
TRIM_SECONDS = 10.0  # the free heap is handed back after a chunk at most this often (ChunkedEncode)
WORK_SUFFIX = ".vsr-work"
_FORMAT = 1  # of job.json / done.json / the chunk files


class ChunkError(VsrError):
    """Chunks cannot be made or joined as asked; the message says why."""


# -- where the timeline is cut ------------------------------------------------------------------
def chunk_length(frames: int | None, rate: float, encoders: int, frame_bytes: int, memory: int | None,
                 seconds: float | None = None) -> int:
    """Frames per chunk.  ``seconds``: asked for.  Else at most :data:`LONGEST_CHUNK_SECONDS`, and
    short enough for two chunks per encoder in a video of ``frames`` (so the last chunks do not
    leave encoders idle), but not under :data:`SHORTEST_CHUNK_SECONDS`; and small enough that the
    chunks in flight (``encoders`` of them, held as frames until encoded) take at most a quarter of
    ``memory``."""
    rate = rate if rate and rate > 0 else 25.0
    if seconds is not None:
        return max(1, round(seconds * rate))
    length = round(LONGEST_CHUNK_SECONDS * rate)
    if frames:
        length = min(length, math.ceil(frames / (2 * encoders)))
    length = max(length, round(SHORTEST_CHUNK_SECONDS * rate), SHORTEST_CHUNK_FRAMES)
    if memory is not None and encoders > 1:
        length = min(length, max(1, memory // 4 // (encoders * max(1, frame_bytes))))
    return max(1, length)


def held_frames(encoders: int, length: int, queue: int, frame_bytes: int, memory: int | None) -> int:
    """Frames the encode stage may hold waiting in its encoders' queues.  The encoders work on
    consecutive chunks and the frames come in order, so while the last of ``encoders`` chunks is fed
    the others may still hold all of theirs: ``(encoders - 1) * length`` plus a queue's worth (one
    encoder holds a queue's worth only).  Never more than a quarter of ``memory`` (a long chunk
    asked for, or kept from an earlier run, does not grow the process), never under ``queue``."""
    held = (encoders - 1) * length + queue
    if memory is not None:
        held = min(held, memory // 4 // max(1, frame_bytes))
    return max(1, queue, held)


@dataclass(frozen=True)
class ChunkRecord:
    """A finished chunk: frames ``[start, start + frames)`` of the output, its first frame's pts
    (the encoder's time base), and its file's size and SHA-256; ``last_pts``: the latest pts the
    encoder gave it (a run that resumes after it stamps the next frame later than that, as the run
    that made it would have)."""

    index: int
    start: int
    frames: int
    first_pts: int | None
    bytes: int
    sha256: str
    last_pts: int | None = None


@dataclass(frozen=True)
class Mark:
    """In the frame stream: the frames that follow belong to chunk ``index`` (first frame
    ``start``, whose pts in the encoder's time base is ``first_pts``); ``done``: finished by an
    earlier run, its frames are not upscaled again and do not follow (they are dropped)."""

    index: int
    start: int
    first_pts: int | None
    done: ChunkRecord | None = None


class Chunker:
    """Cuts the frame items of one video into chunks: a :class:`Mark` before each chunk's first
    frame; the frames of chunks found done are dropped (packets of other streams pass).

    ``skipped``: the done chunks from the first on (:meth:`WorkFolder.done_from_start`), each with
    the time its first frame is shown, seconds, where the reader does not give their frames
    (vsr.decode.SkipTo) but an item for each video packet it skips (``skipped_time`` gives its
    time, None for other items): their marks come as the skipped packets reach their times, among
    the other streams' packets, and the first frame given must be the one after them."""

    def __init__(self, length: int, done: dict[int, ChunkRecord], pts_of: Callable[[object], int | None],
                 skipped: Iterable[tuple[ChunkRecord, float]] = ()) -> None:
        self.length = length
        self.done = done
        self.pts_of = pts_of  # a frame item's pts in the encoder's time base (to match a done chunk)
        self.index = -1
        self.size = 0  # frames in the current chunk
        self.frame = 0  # output frames so far
        self.skipping = 0  # frames of a done chunk still to drop
        self.skipped = deque(skipped)

    def _skipped_mark(self) -> Mark:
        record, _seconds = self.skipped.popleft()
        if record.index != self.index + 1 or record.start != self.frame:
            raise ChunkError(f"chunk {record.index} (from frame {record.start}) does not follow chunk {self.index} "
                             f"(to frame {self.frame})")
        self.index, self.frame, self.size = record.index, record.start + record.frames, 1 << 62
        return Mark(record.index, record.start, record.first_pts, record)

    def _cut(self, keyframe: bool) -> bool:
        if self.index < 0:
            return True
        return self.size >= self.length or (keyframe and self.size >= max(1, self.length // 2))

    def items(self, items: Iterable, is_frame: Callable[[object], bool], is_keyframe: Callable[[object], bool],
              skipped_time: Callable[[object], float | None] = lambda item: None,
              index_of: Callable[[object], int] = lambda item: -1) -> Iterator:
        """``index_of``: a frame item's index in the video (where the reader skipped, the first
        one's is checked against the chunks skipped)."""
        reader_skips = False
        for item in items:
            seconds = skipped_time(item)
            if seconds is not None:
                reader_skips = True
                while self.skipped and self.skipped[0][1] <= seconds:
                    yield self._skipped_mark()
                continue
            if not is_frame(item):
                yield item
                continue
            if self.skipped and (reader_skips or index_of(item) > 0):
                while self.skipped:
                    yield self._skipped_mark()
                if index_of(item) != self.frame:
                    raise ChunkError(f"the first frame decoded is frame {index_of(item)}, but the chunks kept end "
                                     f"at frame {self.frame}")
            self.skipped.clear()  # (a reader that gives every frame: the done chunks are matched below)
            if self.skipping:
                self.skipping -= 1
                self.frame += 1
                continue
            if self._cut(is_keyframe(item)):
                self.index += 1
                self.size = 0
                record = self.done.get(self.index)
                first_pts = self.pts_of(item)
                if record is not None and record.start == self.frame and record.first_pts == first_pts:
                    yield Mark(self.index, self.frame, first_pts, record)
                    self.skipping = record.frames - 1
                    self.frame += 1
                    self.size = 1 << 62  # the next frame starts the next chunk, as in the run that made it
                    continue
                yield Mark(self.index, self.frame, first_pts)
            self.size += 1
            self.frame += 1
            yield item
        while reader_skips and self.skipped:  # the video ended among them: every frame was done
            yield self._skipped_mark()


# -- the work folder -----------------------------------------------------------------------------
_SAMPLE = 1 << 20  # bytes of the input hashed at its start, middle and end


def file_identity(path: Path) -> dict:
    """What tells this input file from another one at the same path: its size, modification time
    and a SHA-256 of three 1 MiB samples (start, middle, end), which catches a file rewritten with
    its size and time kept (``cp -p``, ``touch -r``) as far as those bytes show it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest = hashlib.sha256()
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            f.seek(offset)
            digest.update(f.read(_SAMPLE))
        return {"input": os.fspath(path.resolve()), "size": size, "mtime_ns": os.fstat(f.fileno()).st_mtime_ns,
                "sample_sha256": digest.hexdigest()}


@functools.cache
def code_identity() -> str:
    """A SHA-256 (12 hex digits) of vsr's own source files: its version number does not change with
    every revision of the code, and chunks another revision made are not joined to this one's."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.relative_to(Path(__file__).parent).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def work_folder_of(dst: Path) -> Path:
    return dst.parent / f".{dst.name}{WORK_SUFFIX}"


class WorkFolder:
    """The chunks of one output, kept beside it until the output is assembled.  Opened with the
    job's identity (the input file's path, size and modification time, and the settings): chunks
    of another job (other settings, another input) are thrown away, never joined.  Locked while a
    run uses it."""

    def __init__(self, path: Path, job: dict, length: int, output: Path) -> None:
        self.path = path
        self.output = output
        self.job = job
        self.length = length  # frames per chunk: fixed by the job's first run
        self.done: dict[int, ChunkRecord] = {}
        self.damage: list[list[float]] = []  # what done.json says the decoder met in an earlier run
        self.damage_so_far: Callable[[], list] | None = None  # this run's (vsr.decode.DecodeReport.damage)
        self._lock: int | None = None
        self._state = threading.Lock()  # close() against an encoder thread still recording
        self.closed = False

    @classmethod
    def open(cls, dst: Path, job: dict, length: int, fresh: bool, warn: Callable[[str], None]) -> "WorkFolder":
        """The work folder of ``dst``, with the chunks an earlier run of the same job finished
        (``fresh``: none, they are thrown away).  A chunk whose file is not exactly what was
        recorded (truncated, changed) is dropped and will be encoded again."""
        path = work_folder_of(dst)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise ChunkError(f"{os.fspath(path)!r} is in the way of vsr's work folder (a link or a file); remove it")
        path.mkdir(exist_ok=True)
        if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():  # planted in a shared folder: never joined
            raise ChunkError(f"{os.fspath(path)!r} belongs to another user; remove it or write the output elsewhere")
        work = cls(path, job, length, dst)
        work._take_lock(dst)  # before anything in it is read or removed: another run may be using it
        try:
            earlier = None if fresh else _read_json(path / "job.json")
            if earlier is not None and earlier.get("job") == job and isinstance(earlier.get("length"), int) \
                    and earlier["length"] > 0:
                work.length = earlier["length"]
                work._load_done()
                return work
            if earlier is not None:
                before = earlier.get("job") if isinstance(earlier.get("job"), dict) else {}
                changed = sorted(k for k in job.keys() | before.keys() if before.get(k) != job.get(k)) or ["chunk length"]
                warn(f"an unfinished run of {dst.name} was made with other settings or another input "
                     f"({', '.join(changed)} differ); starting over")
            work._clear_files()
            with written_whole(path / "job.json") as tmp:
                tmp.write_text(json.dumps({"format": _FORMAT, "job": job, "length": length}, indent=1))
            return work
        except BaseException:
            work.close()
            raise

    def own_partial(self, tmp: Path) -> None:
        """``tmp`` is the output's temporary file for this run (vsr.files.new_partial, beside the
        output).  A run killed outright (SIGKILL, a power cut) leaves its own behind: the file the
        last run recorded here is removed first, if it is still one of vsr's partial files of the same
        output (this run holds the lock: no other chunked run is writing it)."""
        earlier = _read_json(self.path / "output.json")
        name = earlier.get("name") if earlier else None
        if isinstance(name, str) and name != tmp.name and _is_partial_of(name, self.output):
            stale = self.output.parent / name
            try:  # a regular file only, unlinked, never followed; one that cannot go never fails the run
                if stat.S_ISREG(os.lstat(stale).st_mode):
                    remove(stale)
            except OSError:
                pass
        with written_whole(self.path / "output.json") as f:
            f.write_text(json.dumps({"format": _FORMAT, "name": tmp.name}))

    def _take_lock(self, dst: Path) -> None:
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ChunkError(f"another vsr run is writing {dst.name} (its work folder {self.path.name} is in use)") from exc
        self._lock = fd

    def _load_done(self) -> None:
        listed = _read_json(self.path / "done.json") or {}
        chunks = listed.get("chunks")
        for raw in chunks if isinstance(chunks, list) else []:
            record = _record_of(raw)
            if record is not None and record.index not in self.done and self.whole(record):
                last = self._last_pts(record)  # from the file (its hash checked), not the list
                if last is not False:
                    self.done[record.index] = dataclasses.replace(record, last_pts=last)
        damage = listed.get("damage")
        self.damage = [[float(a), float(b)] for a, b in damage if _finite(a) and _finite(b) and a <= b] \
            if isinstance(damage, list) and all(isinstance(d, list) and len(d) == 2 for d in damage) else []
        keep = {self.chunk_path(i).name for i in self.done} | {"job.json", "done.json", "lock", "output.json"}
        for entry in self.path.iterdir():  # partial files of a killed run, chunks not (or badly) recorded
            if entry.name not in keep:
                _remove_entry(entry)
        self._write_done()

    def _clear_files(self) -> None:
        for entry in self.path.iterdir():
            if entry.name not in ("lock", "output.json"):
                _remove_entry(entry)

    def chunk_path(self, index: int) -> Path:
        return self.path / f"{index:05d}.chunk"

    def whole(self, record: ChunkRecord) -> bool:
        """The chunk file is exactly what was recorded: a regular file of its size and SHA-256."""
        try:
            f = _open_regular(self.chunk_path(record.index))
        except OSError:
            return False
        with f:
            if os.fstat(f.fileno()).st_size != record.bytes:
                return False
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == record.sha256

    def done_from_start(self, time_base: Fraction) -> tuple[list[ChunkRecord], Fraction, list[int]] | None:
        """The chunks done from the first on, one after another; the time (seconds, in the frames'
        timeline; ``time_base``: the chunks') before which every frame is theirs; and their frames'
        pts, sorted: what a run that resumes need not decode, and what the input must show before
        that time for it to be so.  None where there are none, or where a file does not say (a
        damaged file is found out when it is joined)."""
        prefix: list[ChunkRecord] = []
        frames = 0
        while (r := self.done.get(len(prefix))) is not None and r.start == frames and r.first_pts is not None:
            prefix.append(r)
            frames += r.frames
        pts: list[int] = []
        for record in prefix:
            found = self._packets_of(record)
            if found is None:
                return None
            tb, packets = found
            if tb != time_base or len(packets) != record.frames or any(p.pts is None for p in packets):
                return None
            pts += (p.pts for p in packets)
        if not pts:
            return None
        # the encoder's pts are the frames' times in its time base (each after the one before): the
        # next chunk's first frame is shown later than half a tick past this one's last
        return prefix, (max(pts) + Fraction(1, 2)) * time_base, sorted(pts)

    def record(self, record: ChunkRecord) -> None:
        with self._state:
            if self.closed:  # an encoder thread that outlived its run (abort gives up waiting on it)
                raise ChunkError(f"chunk {record.index} finished after its run ended; it is not recorded")
            self.done[record.index] = record
            self._write_done()

    def forget(self, index: int) -> None:
        """Drop a chunk's record (its file is encoded again by the next run)."""
        self.done.pop(index, None)
        self._write_done()

    def _packets_of(self, record: ChunkRecord) -> tuple[Fraction, list[ChunkPacket]] | None:
        """(time base, packets) of a chunk's file, or None where it cannot be read."""
        path = self.chunk_path(record.index)
        try:
            with _open_regular(path) as f:
                _extradata, tb, packets = read_chunk(f, path.name, record.frames)
        except (ChunkError, OSError):
            return None
        return tb, packets

    def _last_pts(self, record: ChunkRecord) -> int | None | bool:
        """The latest pts in a chunk's file (None: none has one; False: the file cannot be read)."""
        found = self._packets_of(record)
        if found is None:
            return False
        return max((p.pts for p in found[1] if p.pts is not None), default=None)

    def _write_done(self) -> None:
        chunks = [asdict(r) for _i, r in sorted(self.done.items())]
        # the damage the decoder met so far (seconds, the frames' timeline): a run that resumes does
        # not decode the chunks it keeps, and judges the damage in them from this
        damage = [[a, b] for a, b in (self.damage_so_far() if self.damage_so_far else self.damage)]
        with written_whole(self.path / "done.json") as tmp:
            tmp.write_text(json.dumps({"format": _FORMAT, "chunks": chunks, "damage": damage}))

    def close(self) -> None:
        with self._state:
            self.closed = True
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def discard(self) -> None:
        """The output is assembled: the chunks go."""
        self.close()
        _remove_tree(self.path)


def _is_partial_of(name: str, dst: Path) -> bool:
    """``name`` is one that vsr.files.new_partial gives a temporary file of ``dst`` (no folder part)."""
    head, tail = f".{dst.stem[:80]}.", f"{PARTIAL}{dst.suffix}"
    return (name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)
            and re.fullmatch(r"[a-z0-9_]+", name[len(head):len(name) - len(tail)]) is not None)


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (never a link, a FIFO that would block,
    a device or a folder), else OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb")


def _record_of(raw) -> ChunkRecord | None:
    """A record of done.json, or None where it is not one (wrong keys or types, impossible values)."""
    try:
        record = ChunkRecord(**raw)
    except TypeError:
        return None
    ints = (record.index, record.start, record.frames, record.bytes)
    if not all(type(v) is int for v in ints) or min(ints) < 0 or record.frames == 0 or record.index > 10**7:
        return None
    if not all(v is None or type(v) is int for v in (record.first_pts, record.last_pts)) or not isinstance(record.sha256, str):
        return None
    return record


def _finite(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _read_json(path: Path) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd) as f:
            data = json.loads(f.read(1 << 24))
        return data if isinstance(data, dict) and data.get("format") == _FORMAT else None
    except (OSError, ValueError, RecursionError):
        return None


def _remove_entry(entry: Path) -> None:
    """Something in vsr's own work folder that is not a recorded chunk: a file, link or FIFO is
    unlinked (a link's target is never touched), a folder removed with what it holds."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        remove(entry)


def _remove_tree(path: Path) -> None:
    """vsr's own work folder and what it holds (never followed through a link)."""
    if path.is_symlink():
        return
    shutil.rmtree(path, ignore_errors=True)


# -- chunk files ---------------------------------------------------------------------------------
_MAGIC = b"VSR-CHUNK\n"
_HEAD = struct.Struct("<I")
_PACKET = struct.Struct("<qqqBI")  # pts, dts, duration, flags (1: keyframe), size
_NONE = -(2**63)
_MOST_HEAD = 1 << 20  # the time base and the codec headers (tens of bytes to a few KiB)


@dataclass
class ChunkPacket:
    pts: int | None
    dts: int | None
    duration: int
    key: bool
    offset: int  # of its data in the chunk file
    size: int


class ChunkWriter:
    """Packets of one chunk into its file: written to a temporary file of vsr's own, which becomes
    the chunk (:meth:`finish`) only when the encoder has given its last packet."""

    def __init__(self, work: WorkFolder, index: int, start: int, extradata: bytes | None, time_base: Fraction) -> None:
        self.work, self.index, self.start = work, index, start
        self.tmp = new_partial(work.chunk_path(index))
        self.f: BinaryIO = open(self.tmp, "wb")
        self.digest = hashlib.sha256()
        self.last_pts: int | None = None
        head = json.dumps({"time_base": [time_base.numerator, time_base.denominator],
                           "extradata": (extradata or b"").hex()}).encode()
        self._write(_MAGIC + _HEAD.pack(len(head)) + head)

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.digest.update(data)

    def packet(self, pts: int | None, dts: int | None, duration: int | None, key: bool, data: bytes) -> None:
        self._write(_PACKET.pack(_NONE if pts is None else pts, _NONE if dts is None else dts, duration or 0,
                                 1 if key else 0, len(data)))
        self._write(data)
        if pts is not None and (self.last_pts is None or pts > self.last_pts):
            self.last_pts = pts

    def finish(self, frames: int, first_pts: int | None) -> ChunkRecord:
        self.f.flush()
        os.fsync(self.f.fileno())
        size = self.f.tell()
        self.f.close()
        finish(self.tmp, self.work.chunk_path(self.index))
        return ChunkRecord(self.index, self.start, frames, first_pts, size, self.digest.hexdigest(), self.last_pts)

    def abort(self) -> None:
        self.f.close()
        remove(self.tmp)


def read_chunk(f: BinaryIO, name: str, most: int | None = None) -> tuple[bytes, Fraction, list[ChunkPacket]]:
    """(codec headers, time base, packets in decode order: where their data lies) of a chunk file;
    ``most``: packets it may hold (ChunkError past it, before more memory is spent)."""
    if f.read(len(_MAGIC)) != _MAGIC:
        raise ChunkError(f"{name} is not a vsr chunk")
    try:
        (n,) = _HEAD.unpack(f.read(_HEAD.size))
        if n > _MOST_HEAD:
            raise ChunkError(f"{name}: its header claims {n} bytes")
        head = json.loads(f.read(n))
        extradata, time_base = bytes.fromhex(head["extradata"]), Fraction(*head["time_base"])
        if time_base <= 0:
            raise ValueError(time_base)
    except (struct.error, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise ChunkError(f"{name}: its header is damaged") from exc
    end = os.fstat(f.fileno()).st_size
    packets = []
    at = f.tell()
    while at < end:
        raw = f.read(_PACKET.size)
        if len(raw) < _PACKET.size:
            raise ChunkError(f"{name} is cut short")
        pts, dts, duration, flags, size = _PACKET.unpack(raw)
        at += _PACKET.size
        if at + size > end:
            raise ChunkError(f"{name} is cut short")
        packets.append(ChunkPacket(None if pts == _NONE else pts, None if dts == _NONE else dts, duration,
                                   bool(flags & 1), at, size))
        if most is not None and len(packets) > most:
            raise ChunkError(f"{name} holds more than the {most} packets recorded; it cannot be joined")
        at += size
        f.seek(at)
    return extradata, time_base, packets


# -- joining -------------------------------------------------------------------------------------
class Joiner:
    """The chunks, in order, as one stream.  Each chunk's packets must decode under the output's
    codec headers (``extradata``: the same bytes) and start with a keyframe.  Presentation
    timestamps are kept exactly; decode timestamps are made again across the joins: packet ``i``
    (in decode order) of the whole stream gets the ``i - delay``-th smallest pts, where ``delay`` is
    how many packets the encoder sends before the first one shown (its B-frame reorder depth).  So
    dts increase strictly and never pass a packet's pts, as an encoder of the whole stream makes them."""

    def __init__(self, extradata: bytes | None) -> None:
        self.extradata = extradata or b""
        self.delay: int | None = None
        self.tail: deque[int] = deque()  # the largest pts joined so far (``delay`` of them)
        self.last_dts: int | None = None

    def join(self, index: int, extradata: bytes, packets: list[ChunkPacket]) -> list[ChunkPacket]:
        """``packets`` of chunk ``index`` with their decode timestamps for the joined stream."""
        if extradata != self.extradata:
            raise ChunkError(f"chunk {index} was encoded with other codec headers than the output's; "
                             f"it cannot be joined (the encoder's headers depend on more than its settings)")
        if not packets:
            return packets
        if not packets[0].key:
            raise ChunkError(f"chunk {index} does not start with a keyframe; it cannot be joined")
        if any(p.pts is None for p in packets):
            raise ChunkError(f"chunk {index} has packets without timestamps; it cannot be joined")
        shown = sorted(p.pts for p in packets)
        delay = sum(1 for p in packets if p.dts is not None and p.dts < shown[0])
        if self.delay is None:
            self.delay = delay
        elif delay > self.delay:
            raise ChunkError(f"chunk {index} reorders frames deeper ({delay}) than the first chunk ({self.delay})")
        d = self.delay
        if self.tail and self.tail[-1] >= shown[0]:
            raise ChunkError(f"chunk {index} does not follow the one before it (pts {shown[0]} after {self.tail[-1]})")
        ahead = list(self.tail)[-d:] if d else []
        for i, p in enumerate(packets):
            if i < d:
                dts = ahead[i] if len(ahead) == d else p.dts  # the first chunk: the encoder's own
            else:
                dts = shown[i - d]
            if dts is None or dts > p.pts or (self.last_dts is not None and dts <= self.last_dts):
                raise ChunkError(f"chunk {index}: no decode timestamp fits packet {i} (pts {p.pts}); it cannot be joined")
            p.dts = dts
            self.last_dts = dts
        self.tail.extend(shown)
        while len(self.tail) > max(d, 1):
            self.tail.popleft()
        return packets


# -- the encode stage of a chunked video ---------------------------------------------------------
_END = object()


class _Chunk:
    """A chunk in flight: its frames' queue and encoder thread, or a finished chunk of an earlier run."""

    def __init__(self, index: int, start: int, first_pts: int | None, record: ChunkRecord | None = None) -> None:
        self.index, self.start, self.first_pts = index, start, first_pts
        self.record = record  # set when its file is whole
        self.frames: queue.Queue = queue.Queue()  # bounded by ChunkedEncode's budget, not here
        self.ended = threading.Event()  # the encoder thread is done (record or error)
        self.error: BaseException | None = None
        self.resumed = record is not None
        if self.resumed:
            self.ended.set()


class ChunkedEncode:
    """The encode stage of a chunked video, on one thread (the only one that writes the output):
    each chunk's frames go to an encoder instance of its own, on a thread of its own, ``encoders``
    of them at once (each with ``threads`` threads); a finished chunk is written whole to the work
    folder and recorded; chunks are joined into the output in order as they finish, and the other
    streams' packets are muxed after the frames that came before them in the input.

    ``new_encoder(threads)`` gives an open encoder (``encode(frame)`` -> packets, ``extradata``);
    ``mux_video(packet, data, time_base)`` and ``mux_other(item)`` write into the output."""

    def __init__(self, work: WorkFolder, encoders: int, threads: int, new_encoder: Callable, joiner: Joiner,
                 time_base: Fraction, mux_video: Callable, mux_other: Callable, stop, advance: Callable[[int], None],
                 held_frames: int, timings) -> None:
        self.work, self.threads, self.new_encoder, self.joiner = work, threads, new_encoder, joiner
        self.time_base, self.mux_video, self.mux_other, self.stop, self.advance = time_base, mux_video, mux_other, stop, advance
        self.timings = timings  # vsr.timing.Timings: "encode", summed over the encoder threads (its lanes)
        timings.lanes["encode"] = encoders
        self.slots = threading.Semaphore(encoders)
        self.budget = threading.Semaphore(max(1, held_frames))  # frames waiting in the encoders' queues
        self.order: deque[_Chunk] = deque()  # chunks not yet joined, in order
        self.current: _Chunk | None = None
        self.held: deque[tuple[int, object]] = deque()  # (frames before it, packet item) not yet muxed
        self.seen = 0  # frames of the output before the next item (those of resumed chunks too)
        self.joined = 0  # frames joined into the output
        self.resumed = 0  # frames taken from an earlier run's chunks
        self.threads_started: list[threading.Thread] = []
        self._record_lock = threading.Lock()
        self.cancelled = threading.Event()  # abort(): the encoder threads stop at their next frame
        self._trimmed: float | None = None  # when the free heap was last handed back
        self.abort_wait = 5.0  # seconds abort() waits for each encoder thread (one flushing may take longer)

    # -- items in ---------------------------------------------------------------------------------
    def mark(self, mark: Mark) -> None:
        self._seal()
        if mark.done is not None:
            self.order.append(_Chunk(mark.index, mark.start, mark.done.first_pts, mark.done))
            self.seen += mark.done.frames
            self.resumed += mark.done.frames
            self.advance(mark.done.frames)
        else:
            self._wait(lambda: self.slots.acquire(timeout=0.05))
            chunk = _Chunk(mark.index, mark.start, mark.first_pts)
            thread = threading.Thread(target=self._encode, args=(chunk,), name=f"vsr-encode-{mark.index}", daemon=True)
            self.order.append(chunk)
            self.current = chunk
            self.threads_started.append(thread)
            thread.start()
        self.poll()

    def frame(self, frame) -> None:
        if self.current is None:
            raise ChunkError("a frame came before the first chunk's mark")
        self._wait(lambda: self.budget.acquire(timeout=0.05))
        self.current.frames.put(frame)
        self.seen += 1

    def packet(self, item) -> None:
        self.held.append((self.seen, item))
        self.poll()

    def close(self) -> None:
        """Every chunk encoded and joined, every packet muxed."""
        self._seal()
        while self.order:
            # (the poll inside _wait may join the last chunks: then there is nothing left to wait for)
            self._wait(lambda: not self.order or self.order[0].ended.wait(0.05))
            self.poll()
        self._release(None)

    def abort(self) -> None:
        """Stop every encoder thread (their unfinished chunks are thrown away)."""
        self.cancelled.set()
        self._seal()
        for t in self.threads_started:
            t.join(timeout=self.abort_wait)

    # -- joining ------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Join the chunks at the head of the order that are finished; an encoder that failed,
        wherever it is in the order, fails the run at once."""
        for chunk in self.order:
            if chunk.error is not None:
                raise chunk.error
        while self.order and self.order[0].ended.is_set():
            chunk = self.order.popleft()
            try:
                self._join(chunk)
            except (ChunkError, OSError) as exc:
                if not chunk.resumed:
                    raise
                self.work.forget(chunk.index)  # not joined, and not to be tried again as it is
                raise ChunkError(f"{exc}; its record is dropped: the same command encodes that chunk again") from exc
        self._release(self.joined)

    def _join(self, chunk: _Chunk) -> None:
        record = chunk.record
        path = self.work.chunk_path(chunk.index)
        with _open_regular(path) as f:
            extradata, time_base, packets = read_chunk(f, path.name, record.frames)
            if time_base != self.time_base:
                raise ChunkError(f"{path.name} is in another time base ({time_base}) than the output's; it cannot be joined")
            if len(packets) != record.frames:
                raise ChunkError(f"{path.name} holds {len(packets)} packets for {record.frames} frames; it cannot be joined")
            for j, p in enumerate(self.joiner.join(chunk.index, extradata, packets)):
                self._release(chunk.start + j)
                f.seek(p.offset)
                self.mux_video(p, f.read(p.size), time_base)
        self.joined = chunk.start + record.frames

    def _release(self, frames: int | None) -> None:
        """Mux the held packets that came after at most ``frames`` frames (None: all)."""
        while self.held and (frames is None or self.held[0][0] <= frames):
            self.mux_other(self.held.popleft()[1])

    # -- helpers ----------------------------------------------------------------------------------
    def _seal(self) -> None:
        if self.current is not None:
            self.current.frames.put(_END)
            self.current = None

    def _wait(self, attempt: Callable[[], bool]) -> None:
        """Retry ``attempt`` until it succeeds, joining finished chunks meanwhile (so a failed encoder
        is noticed) and giving up when the run is stopped."""
        while not attempt():
            if self.stop.is_set():
                raise KeyboardInterrupt
            self.poll()

    def _stopping(self) -> bool:
        return self.stop.is_set() or self.cancelled.is_set()

    def _encode(self, chunk: _Chunk) -> None:
        """One chunk's encoder thread."""
        out = encoder = None
        try:
            encoder = self.new_encoder(self.threads)
            if (encoder.extradata or b"") != self.joiner.extradata:
                raise ChunkError(f"the encoder's codec headers for chunk {chunk.index} differ from the output's; "
                                 f"chunks of this encoder cannot be joined (use --encoders 1 --chunk-seconds 0)")
            out = ChunkWriter(self.work, chunk.index, chunk.start, encoder.extradata, self.time_base)
            frames = 0
            while True:
                try:
                    frame = chunk.frames.get(timeout=0.1)
                except queue.Empty:
                    if self._stopping():
                        break
                    continue
                if frame is _END or self._stopping():
                    break
                self.budget.release()
                with self.timings("encode"):
                    self._packets(out, encoder.encode(frame))
                frames += 1
            if self._stopping():
                raise KeyboardInterrupt
            with self.timings("encode"):
                self._packets(out, encoder.encode(None))
            if self._stopping():  # stopped during the flush: the chunk is not kept
                raise KeyboardInterrupt
            record = out.finish(frames, chunk.first_pts)
            out = None
            with self._record_lock:
                self.work.record(record)
            chunk.record = record
        except BaseException as exc:  # noqa: BLE001 - handed to the encode stage
            chunk.error = exc
            if out is not None:
                out.abort()
            while True:  # free what the frames still queued hold
                try:
                    if chunk.frames.get_nowait() is not _END:
                        self.budget.release()
                except queue.Empty:
                    break
        finally:
            # the encoder freed before its slot is: the next chunk's instance then reuses its memory
            # (two x264 instances at once for a moment grew the process by one instance per chunk)
            encoder = None
            self._return_freed_memory()
            self.slots.release()
            chunk.ended.set()

    def _return_freed_memory(self) -> None:
        """Hand the heap's free pages back (vsr.system.return_freed_memory) after a chunk's encoder
        has gone, at most every :data:`TRIM_SECONDS`: the model's buffers fault back in after each
        (measured: 1-s chunks of a cheap model ran 3.5-6 % slower trimming after every chunk)."""
        with self._record_lock:
            now = time.monotonic()
            if self._trimmed is not None and now - self._trimmed < TRIM_SECONDS:
                return
            self._trimmed = now
        return_freed_memory()

    def _packets(self, out: ChunkWriter, packets) -> None:
        for p in packets:
            out.packet(p.pts, p.dts, p.duration, p.is_keyframe, bytes(p))
