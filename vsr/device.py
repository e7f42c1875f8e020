"""Choosing the device: ``auto`` means CUDA when present, else the CPU."""

from __future__ import annotations

import re

import torch


class DeviceError(Exception):
    pass


_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto", rank: int | None = None) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``rank`` picks the GPU of a distributed worker."""
    if not _SPEC.match(spec):
        raise DeviceError(f"expected a device 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} asked for, but this machine has no usable CUDA GPU")
        index = int(spec.split(":")[1]) if ":" in spec else (rank if rank is not None else 0) % torch.cuda.device_count()
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    return torch.device("cpu")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX-BF16; Linux's /proc/cpuinfo flags).

    Measured on the project's machines: with native bf16 the generator ran 1.97x faster under bf16
    autocast than in fp32 (a training step 1.8x); on an AVX2-only CPU, where bf16 is emulated, 15x
    slower.  So bf16 is chosen only where the CPU says it has it.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device, training: bool = False) -> torch.dtype:
    """``auto|fp32|bf16|fp16`` -> the compute dtype on ``device``.

    ``auto``: on CUDA fp16 for inference (measured fastest) and bf16 for training where the GPU has
    it (no loss scaling needed; else fp16 with a grad scaler); on the CPU bf16 where the CPU has it
    natively (:func:`cpu_has_native_bf16`), else fp32.
    """
    if precision not in PRECISIONS:
        raise DeviceError(f"expected a precision {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        if training:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


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
    import os
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


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a
    container limited to 4 CPUs on a 64-core host sees 64 in its mask but gets 4)."""
    import os

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
    import os

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
