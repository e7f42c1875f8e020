"""Files that appear whole or not at all, and folders that can take them: the one way vsr writes an
output, a checkpoint, a weights file or a record (a hidden temporary file beside the destination,
renamed over it only when complete; removed on any error or Ctrl-C)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def partial_path(dst: str | os.PathLike) -> Path:
    """Where ``dst`` is written until it is complete: beside it, hidden, keeping the extension (so
    FFmpeg still picks the container by it)."""
    dst = Path(dst)
    return dst.with_name(f".{dst.stem}.vsr-partial{dst.suffix}")


def remove(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def written_whole(dst: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """``with written_whole(dst) as tmp:`` write ``tmp``; when the block ends without an error it
    becomes ``dst`` (with ``mode`` less the umask, if given: some writers make files 0600), else
    it is removed and ``dst`` is untouched."""
    tmp = partial_path(dst)
    try:
        yield tmp
        if mode is not None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, mode & ~umask)
        os.replace(tmp, dst)
    except BaseException:
        remove(tmp)
        raise


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
