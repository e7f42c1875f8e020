"""Folders: plan which files to convert, skip what is done, keep going past bad files.

The plan is a pure function of the folder tree and the options; outputs are only ever
created complete (temporary file + rename, in :mod:`vsr.pipeline`), so an output that
exists is a finished one and a re-run skips it.  The input and output folders never contain
each other.  Beside the outputs, a record of the settings each was made with
(:data:`MANIFEST`) is merged under a file lock, so shards running at once (several processes or
machines on one folder) keep every entry.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import queue
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from vsr.decode import InputError, probe
from vsr.errors import UsageError, VsrError
from vsr.files import folder_problem, inside, remove, written_whole
from vsr.media import kind_of, output_name
from vsr.pipeline import Result, UpscaleError, UpscaleOptions, upscale_file
from vsr.report import BatchReporter
from vsr.stills import is_animated
from vsr.upscaler import Upscaler


class BatchError(VsrError):
    """The batch as a whole cannot run (a usage problem); the message says why."""


class ShardError(BatchError, UsageError):
    """--shard written wrong."""


class FolderError(BatchError, UsageError):
    """The input and output folders are one, or one lies inside the other."""


@dataclass
class Job:
    src: Path
    dst: Path
    rel: str
    action: str  # "convert", "skip" (done earlier), "changed" (made with other settings: kept), "ignore" (not media)
    reason: str = ""
    frames: int | None = None
    status: str = "pending"  # after running: "done", "damaged" (written, frames missing in the input), "failed",
    # "skipped", "changed" (an output made with other settings, kept), "ignored"
    result: Result | None = None
    error: str = ""


@dataclass(frozen=True)
class BatchOptions:
    recursive: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    ext: str | None = None  # container extension for video outputs, e.g. "mkv"
    overwrite: bool = False
    shard: tuple[int, int] = (1, 1)  # (I, N), 1-based
    settings: str | None = None  # what this run makes outputs with (UpscaleOptions.settings)
    redo_changed: bool = False  # redo outputs recorded as made with other settings


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ShardError(f"expected --shard I/N (e.g. 2/4), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ShardError(f"expected --shard I/N with 1 <= I <= N, got {text!r}")
    return i, n


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def list_files(root: Path, opts: BatchOptions) -> list[str]:
    """Relative POSIX paths of the candidate files, sorted: the deterministic list shards cut."""
    paths = root.rglob("*") if opts.recursive else root.iterdir()
    rels = []
    for p in paths:
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = p.relative_to(root).as_posix()
        if opts.include and not _matches(rel, opts.include):
            continue
        if opts.exclude and _matches(rel, opts.exclude):
            continue
        rels.append(rel)
    return sorted(rels)


def plan(src_dir: Path, dst_dir: Path, opts: BatchOptions, scale: int) -> list[Job]:
    if not src_dir.is_dir():
        raise BatchError(f"input folder {os.fspath(src_dir)!r} does not exist")
    # Links resolved: outputs written among the inputs would be read (or overwritten) as inputs.
    if inside(dst_dir, src_dir):
        raise FolderError(
            f"output folder {os.fspath(dst_dir)!r} is inside the input folder {os.fspath(src_dir)!r}; "
            f"choose an output folder outside it"
        )
    if inside(src_dir, dst_dir):
        raise FolderError(
            f"input folder {os.fspath(src_dir)!r} is inside the output folder {os.fspath(dst_dir)!r}; "
            f"choose an output folder that does not contain the input"
        )
    problem = folder_problem(dst_dir / "output", create=True)
    if problem:
        raise BatchError(f"output folder {os.fspath(dst_dir)!r} cannot be created or written: {problem}")
    rels = list_files(src_dir, opts)
    if not any(kind_of(r) for r in rels):
        raise BatchError(f"no videos or images in {os.fspath(src_dir)!r}" + ("" if opts.recursive else " (use --recursive for subfolders)"))
    i, n = opts.shard
    rels = [r for k, r in enumerate(rels) if k % n == i - 1]
    jobs = []
    made_by: dict[Path, Path] = {}
    records: dict[Path, dict[str, str]] = {}  # each output folder's record, read once
    for rel in rels:
        src = src_dir / rel
        kind = kind_of(rel)
        if kind == "image" and is_animated(src):  # an APNG or animated WebP is a video
            kind = "video"
        dst = output_name(dst_dir / rel, animated=kind == "video")
        if kind == "video" and opts.ext:
            dst = dst.with_suffix("." + opts.ext.lstrip("."))
        if kind is not None:
            if dst in made_by:
                raise BatchError(f"{os.fspath(made_by[dst])!r} and {os.fspath(rel)!r} would both be written to "
                                 f"{os.fspath(dst)!r}; rename one of them")
            made_by[dst] = rel
        recorded = recorded_settings(dst, records) if dst.exists() and not opts.overwrite else None
        if kind is None:
            jobs.append(Job(src, dst, rel, "ignore", "not a video or image"))
        elif dst.exists() and not opts.overwrite and recorded not in (None, opts.settings) and opts.redo_changed:
            jobs.append(Job(src, dst, rel, "convert", "made with other settings: redo"))
        elif dst.exists() and not opts.overwrite and recorded not in (None, opts.settings):
            jobs.append(Job(src, dst, rel, "changed", "made with other settings (--redo-changed redoes it)"))
        elif dst.exists() and not opts.overwrite:
            jobs.append(Job(src, dst, rel, "skip", "done earlier"))
        else:
            jobs.append(Job(src, dst, rel, "convert", "replace" if dst.exists() else "new"))
    return jobs


# Beside the outputs of a folder run: output file name -> the settings it was made with.  (In a
# file of its own because MP4, the default container, keeps no custom tag without rewriting how
# all its tags are stored.)  Merged under an flock on MANIFEST_LOCK: shards on one folder, in
# several processes or on several machines, each re-read, add to and rewrite the record whole.
MANIFEST = ".vsr-settings.json"
MANIFEST_LOCK = MANIFEST + ".lock"
MANIFEST_LIMIT = 256 * 2**20  # bytes; a record larger than this is not one of vsr's
_manifest_lock = threading.Lock()  # the threads of one process (flock is per open file)


def read_manifest(path: Path) -> dict[str, str]:
    """The record at ``path`` ({} when there is none).  Raises ValueError when it is not a record
    of vsr's (not JSON, or JSON of another shape), OSError when it cannot be read (a link is not
    followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return {}
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # (a FIFO would block the run)
            raise ValueError("not a regular file")
        data = f.read(MANIFEST_LIMIT + 1)
    if len(data) > MANIFEST_LIMIT:
        raise ValueError(f"larger than {MANIFEST_LIMIT // 2**20} MiB")
    try:
        entries = json.loads(data)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError included; RecursionError: "[[[[...")
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise ValueError(f"expected an object of file names and settings, got {type(entries).__name__}"
                         + ("" if not isinstance(entries, dict) else " with other values"))
    return entries


def recorded_settings(dst: Path, cache: dict[Path, dict[str, str]] | None = None) -> str | None:
    """What ``dst`` was recorded as made with, or None (not recorded: made elsewhere or by an
    older vsr, or the record is unreadable; :func:`record_settings` reports that and sets it aside).
    ``cache``: records already read, by folder."""
    folder = dst.parent
    if cache is None or folder not in cache:
        try:
            entries = read_manifest(folder / MANIFEST)
        except (OSError, ValueError):
            entries = {}
        if cache is None:
            return entries.get(dst.name)
        cache[folder] = entries
    return cache[folder].get(dst.name)


def record_settings(dst: Path, settings: str | None, warn: Callable[[str], None] | None = None) -> None:
    """Record ``dst`` as made with ``settings``: under the folder's lock, the record is re-read,
    the entry added, and the whole written anew (temporary file, then a rename).  A record that
    is not vsr's is kept aside as ``MANIFEST.bad-<time>`` (said through ``warn``), never replaced."""
    if settings is None:
        return
    manifest = dst.parent / MANIFEST
    with _manifest_lock, _locked(dst.parent / MANIFEST_LOCK):
        try:
            entries = read_manifest(manifest)
        except (OSError, ValueError) as exc:
            aside = _set_aside(manifest)
            if warn is not None:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                warn(f"{os.fspath(manifest)!r} is not a readable record of settings ({reason}); kept as "
                     f"{aside.name!r} and a new record started")
            entries = {}
        entries[dst.name] = settings
        _write_manifest(manifest, entries)


def _write_manifest(manifest: Path, entries: dict[str, str]) -> None:
    with written_whole(manifest) as tmp:
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


def _set_aside(manifest: Path) -> Path:
    """Rename a bad record out of the way (under the lock), to a name not taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = manifest.with_name(f"{manifest.name}.bad-{stamp}")
    k = 1
    while os.path.lexists(aside):
        k += 1
        aside = manifest.with_name(f"{manifest.name}.bad-{stamp}-{k}")
    os.rename(manifest, aside)
    return aside


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the lock file ``path`` (created if need be, never through a
    link); removed when released, so the folder keeps only the record.  (A holder removes the file
    before unlocking; whoever locked that removed file meanwhile sees it is no longer at ``path``
    and tries again.)"""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the threads of this process are still serialised
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        fd = os.open(path, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        remove(path)
        os.close(fd)


def count_frames(jobs: Sequence[Job]) -> None:
    """Fill in frame counts (for the overall ETA); unreadable files are left for the run to report."""
    for job in jobs:
        if job.action == "convert":
            try:
                job.frames = probe(job.src).frames
            except InputError:
                job.frames = None


def run(
    jobs: Sequence[Job],
    upscalers: Sequence[Upscaler],
    options: UpscaleOptions,
    reporter: BatchReporter | None = None,
    fault: Callable[[Job, int], None] | None = None,
) -> list[Job]:
    """Convert the jobs; one worker thread per upscaler (a device may have several), files handed out from one queue.

    A failed file is recorded and the batch goes on; Ctrl-C stops the whole batch (no partial files).
    """
    reporter = reporter or BatchReporter()
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        if job.action == "skip":
            job.status = "skipped"
        elif job.action == "changed":
            job.status = "changed"
        elif job.action == "ignore":
            job.status = "ignored"
        else:
            todo.put(job)
    stop = threading.Event()
    lock = threading.Lock()
    interrupted: list[BaseException] = []
    opts = dataclasses.replace(options, overwrite=True)

    def worker(upscaler: Upscaler) -> None:
        while not stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            hook = (lambda index, job=job: fault(job, index)) if fault is not None else None
            job_reporter = reporter.for_job(job)
            try:
                job.result = upscale_file(job.src, job.dst, upscaler, opts, job_reporter, stop=stop, fault=hook)
                job.status = "damaged" if job.result.gaps else "done"
            except UpscaleError as exc:
                job.status, job.error = "failed", str(exc)
            except KeyboardInterrupt as exc:
                job.status, job.error = "interrupted", "interrupted"
                interrupted.append(exc)
                stop.set()
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            if job.result is not None and job.status in ("done", "damaged"):
                _record(job, options.settings, job_reporter)
            with lock:
                reporter.file_finished(job)

    if len(upscalers) == 1:
        try:
            worker(upscalers[0])
        except KeyboardInterrupt:
            stop.set()
            raise
    else:
        # Each worker says when it has ended (its temporary file removed); not Thread.join, which a
        # Ctrl-C or SIGTERM interrupting it leaves saying a running thread has ended (CPython 3.11 and
        # earlier, python/cpython#90882): the process then exited under a worker, its partial file left.
        ended = [threading.Event() for _ in upscalers]

        def run_worker(upscaler: Upscaler, end: threading.Event) -> None:
            try:
                worker(upscaler)
            finally:
                end.set()

        threads = [threading.Thread(target=run_worker, args=(u, e), name=f"vsr-worker-{k}", daemon=True)
                   for k, (u, e) in enumerate(zip(upscalers, ended))]
        for t in threads:
            t.start()
        try:
            _wait_all(ended)
        except KeyboardInterrupt:
            stop.set()
            _wait_all(ended)
            raise
    if interrupted:
        raise KeyboardInterrupt
    return list(jobs)


def _wait_all(events: Sequence[threading.Event]) -> None:
    for event in events:
        while not event.wait(timeout=0.2):  # (a wait with a timeout: Ctrl-C reaches it on every platform)
            pass

def _record(job: Job, settings: str | None, reporter) -> None:
    """Record a written output's settings; the output stays written (and counted) if that fails."""
    warnings = job.result.warnings if job.result is not None else []

    def warn(message: str) -> None:
        warnings.append(message)
        reporter.warn(message)

    try:
        record_settings(job.dst, settings, warn)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        warn(f"written, but its settings could not be recorded in {MANIFEST} ({reason}); a re-run counts it "
             f"as done earlier")
