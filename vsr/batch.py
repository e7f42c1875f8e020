"""Folders: plan which files to convert, skip what is done, keep going past bad files.

The plan is a pure function of the folder tree and the options; outputs are only ever
created complete (temporary file + rename, in :mod:`vsr.pipeline`), so an output that
exists is a finished one and a re-run skips it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from vsr.decode import InputError, probe
from vsr.errors import UsageError, VsrError
from vsr.files import folder_problem, partial_path, remove, written_whole
from vsr.media import kind_of, output_name
from vsr.pipeline import Result, UpscaleError, UpscaleOptions, upscale_file
from vsr.report import BatchReporter
from vsr.upscaler import Upscaler


class BatchError(VsrError):
    """The batch as a whole cannot run (a usage problem); the message says why."""


class ShardError(BatchError, UsageError):
    """--shard written wrong."""


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


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


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
    if _inside(dst_dir, src_dir):
        raise BatchError(
            f"output folder {os.fspath(dst_dir)!r} is inside the input folder {os.fspath(src_dir)!r}; "
            f"choose an output folder outside it"
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
    for rel in rels:
        src = src_dir / rel
        kind = kind_of(rel)
        dst = output_name(dst_dir / rel)
        if kind == "video" and opts.ext:
            dst = dst.with_suffix("." + opts.ext.lstrip("."))
        if kind is not None:
            if dst in made_by:
                raise BatchError(f"{os.fspath(made_by[dst])!r} and {os.fspath(rel)!r} would both be written to "
                                 f"{os.fspath(dst)!r}; rename one of them")
            made_by[dst] = rel
        recorded = recorded_settings(dst) if dst.exists() and not opts.overwrite else None
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
# all its tags are stored.)
MANIFEST = ".vsr-settings.json"
_manifest_lock = threading.Lock()


def recorded_settings(dst: Path) -> str | None:
    """What ``dst`` was recorded as made with, or None (not recorded: made elsewhere or by an
    older vsr)."""
    try:
        with open(dst.parent / MANIFEST) as f:
            return json.load(f).get(dst.name)
    except (OSError, ValueError, AttributeError):
        return None


def record_settings(dst: Path, settings: str | None) -> None:
    """Record ``dst`` as made with ``settings`` (atomically: a temporary file, then a rename)."""
    if settings is None:
        return
    manifest = dst.parent / MANIFEST
    with _manifest_lock:
        try:
            with open(manifest) as f:
                entries = json.load(f)
        except (OSError, ValueError):
            entries = {}
        entries[dst.name] = settings
        with written_whole(manifest) as tmp:
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


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
    """Convert the jobs; one worker thread per upscaler (device), files handed out from one queue.

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
            try:
                job.result = upscale_file(job.src, job.dst, upscaler, opts, reporter.for_job(job), stop=stop, fault=hook)
                job.status = "damaged" if job.result.gaps else "done"
                record_settings(job.dst, options.settings)
            except UpscaleError as exc:
                job.status, job.error = "failed", str(exc)
            except KeyboardInterrupt as exc:
                job.status, job.error = "interrupted", "interrupted"
                interrupted.append(exc)
                stop.set()
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                _remove_stale(job.dst)
            with lock:
                reporter.file_finished(job)

    if len(upscalers) == 1:
        try:
            worker(upscalers[0])
        except KeyboardInterrupt:
            stop.set()
            raise
    else:
        threads = [threading.Thread(target=worker, args=(u,), name=f"vsr-worker-{k}", daemon=True) for k, u in enumerate(upscalers)]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)
        except KeyboardInterrupt:
            stop.set()
            for t in threads:
                t.join()
            raise
    if interrupted:
        raise KeyboardInterrupt
    return list(jobs)


def _remove_stale(dst: Path) -> None:
    remove(partial_path(dst))
