"""Files that appear whole or not at all, and folders that can take them: the one way vsr writes an
output, a checkpoint, a weights file or a record (a hidden temporary file beside the destination,
renamed over it only when complete; removed on any error or Ctrl-C).

The temporary file is created by vsr itself, exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``, through
:func:`tempfile.mkstemp`) under a name no one can guess, so a link or file planted beside the
destination is never followed, truncated or removed, and the temporary file is never the input."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL = ".vsr-partial"  # in every temporary file's name, before the destination's extension


class PartialFileError(OSError):
    """The temporary file beside a destination could not be created (the message says why)."""


def new_partial(dst: str | os.PathLike) -> Path:
    """Create, exclusively and empty, the file ``dst`` is written to until it is complete: beside
    it (the rename is then atomic), hidden, under a fresh unpredictable name that keeps the
    extension (FFmpeg picks the container by it).  The caller owns it: it writes the file by name
    (it exists, so a writer opening it with ``O_TRUNC`` truncates vsr's own empty file), then
    :func:`finish` renames it over ``dst``, or :func:`remove` throws it away."""
    dst = Path(dst)
    folder = dst.parent if str(dst.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{dst.stem[:80]}.", suffix=f"{PARTIAL}{dst.suffix}")
    except OSError as exc:
        error = PartialFileError(f"cannot create a temporary file in {os.fspath(folder)!r}: {exc.strerror or exc}")
        error.errno = exc.errno
        raise error from exc
    os.close(fd)
    return Path(name)


def finish(tmp: Path, dst: str | os.PathLike, mode: int | None = None) -> None:
    """``tmp`` (from :func:`new_partial`) becomes ``dst``, with ``mode`` less the umask (by default
    0666 less the umask, as any file a program creates: the temporary file was made 0600).  On
    failure ``tmp`` is removed and ``dst`` untouched."""
    try:
        os.chmod(tmp, (0o666 if mode is None else mode) & ~_umask())
        os.replace(tmp, dst)
    except BaseException:
        remove(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without setting it where Linux says it (setting it, even briefly,
    would change the mode of files other threads create meanwhile)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def remove(path: str | os.PathLike | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def written_whole(dst: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """``with written_whole(dst) as tmp:`` write ``tmp`` (a fresh file of vsr's own, see
    :func:`new_partial`); when the block ends without an error it becomes ``dst`` (with ``mode``
    less the umask, if given: some writers make files 0600), else it is removed and ``dst`` is
    untouched."""
    tmp = new_partial(dst)
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    finish(tmp, dst, mode)


def folder_problem(path: str | os.PathLike, create: bool = False) -> str | None:
    """Why a file cannot be created at ``path``, or None: its folder must exist (or, with
    ``create``, the nearest existing folder above it), be a folder, and be writable."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    existing = folder
    while create and not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.exists():
        return f"folder {os.fspath(existing)!r} does not exist"
    if not existing.is_dir():
        return f"{os.fspath(existing)!r} is a file"
    if not os.access(existing, os.W_OK):
        return f"folder {os.fspath(existing)!r} is not writable"
    return None


def inside(child: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """``child`` is ``parent`` or lies under it, links resolved (for paths that do not exist yet,
    as far as they exist)."""
    try:
        Path(child).resolve().relative_to(Path(parent).resolve())
        return True
    except ValueError:
        return False
