"""Per-stage wall-clock accounting for ``--profile`` (each stage is written by one thread only)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

# stage -> the pipeline thread that runs it
STAGES = {
    "decode": "decode", "to_rgb": "to-rgb",
    "to_tensor": "model", "model": "model", "to_frame": "model",
    "to_yuv": "to-yuv", "encode": "encode",
}


class Timings(dict):
    """``{stage: seconds}``; ``with timings("model"): ...`` adds the block's duration."""

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t0

    def by_thread(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, seconds in self.items():
            thread = STAGES.get(stage, stage)
            out[thread] = out.get(thread, 0.0) + seconds
        return out

    def bottleneck(self) -> tuple[str, float]:
        threads = self.by_thread()
        name = max(threads, key=threads.get) if threads else "model"
        return name, threads.get(name, 0.0)
