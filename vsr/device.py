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
