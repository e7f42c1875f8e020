"""This machine, as a process sees it: the cores it may use, the memory it can still take (cgroup
limits included), and the allocator setting the CLI makes at start.  No torch: the CLI checks its
inputs before importing it."""

from __future__ import annotations

import os
import re

# What --device takes (vsr.device.resolve_device checks the device exists).
DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse freed memory instead of returning it to the kernel.

    On the CPU every frame allocates the same few feature maps of hundreds of MB (64 channels at
    the output size).  glibc serves blocks above 32 MB with a fresh ``mmap`` and ``munmap``s them
    on free, so each frame page-faults and zeroes ~1 GB again: measured here, a third of the
    model's time was spent in the kernel (320x180 -> 1280x720: 2.0 s/frame -> 1.25 s/frame with
    this).  We turn off ``mmap`` for large blocks, never trim the heap, and use one arena so that
    any thread (the model may run in a worker thread) allocates from that heap.  Peak memory is
    unchanged (the same blocks are reused); memory freed is kept by the process until it exits.

    Process-wide and irreversible: call it from an entry point (the CLI, a script), before threads
    start.  Only on Linux with glibc; returns whether it was applied.  ``VSR_KEEP_FREED_MEMORY=0``
    turns it off.
    """
    import ctypes
    import sys

    if os.environ.get("VSR_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt tunables)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                and libc.mallopt(_M_ARENA_MAX, 1))


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel now (glibc's ``malloc_trim``): what
    :func:`keep_freed_memory` keeps for the model's next frame, at a point where something large and
    short-lived has gone (a chunk's encoder instance, with its threads and frame buffers).  Each new
    instance otherwise lands among the holes its predecessors left in the one heap, and the process
    grew with the number of chunks (a 500-frame clip in 1-s chunks: 749 -> 864 MiB).  The model's
    buffers fault back in once, on its next frame.  Does nothing where glibc is not the allocator."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(ctypes.c_size_t(0))


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a
    container limited to 4 CPUs on a 64-core host sees 64 in its mask but gets 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = max(1, min(cores, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


CGROUP_ROOT = "/sys/fs/cgroup"  # where the memory limits are read (tests point these elsewhere)
PROC_CGROUP = "/proc/self/cgroup"


def available_memory() -> int | None:
    """Bytes this process can still take without swapping or being killed: the system's
    ``MemAvailable``, capped by the memory limit of every cgroup above the process (v2
    ``memory.max`` less what the group holds, reclaimable page cache not counted; v1
    ``memory.limit_in_bytes``).  A container limited to 2 GiB on a 64 GiB host gets about 2 GiB,
    not 64.  None if nothing can be read."""
    limits = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(limits) if limits else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _cgroup_available() -> int | None:
    try:
        with open(PROC_CGROUP) as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        entries = []
    found = []
    unified = next((e[2] for e in entries if len(e) == 3 and e[0] == "0" and e[1] == ""), None)
    if unified is not None:  # v2: this group and each one above it may carry a limit
        path = unified
        while True:
            folder = os.path.join(CGROUP_ROOT, path.lstrip("/"))
            limit = _read_int(os.path.join(folder, "memory.max"))
            used = _read_int(os.path.join(folder, "memory.current"))
            if limit is not None and used is not None:
                cache = 0
                try:
                    with open(os.path.join(folder, "memory.stat")) as f:
                        for line in f:
                            if line.startswith("inactive_file "):
                                cache = int(line.split()[1])
                except (OSError, ValueError):
                    pass
                found.append(max(0, limit - used + cache))
            if path in ("", "/"):
                break
            path = os.path.dirname(path.rstrip("/"))
    v1 = next((e[2] for e in entries if len(e) == 3 and "memory" in e[1].split(",")), None)
    for path in {"", (v1 or "").lstrip("/")}:  # v1: the group's folder, or the root a container sees
        folder = os.path.join(CGROUP_ROOT, "memory", path)
        limit = _read_int(os.path.join(folder, "memory.limit_in_bytes"))
        used = _read_int(os.path.join(folder, "memory.usage_in_bytes"))
        if limit is not None and used is not None and limit < 1 << 60:  # "no limit" is a huge number
            found.append(max(0, limit - used))
    return min(found) if found else None
