"""Per-stage wall-clock accounting for ``--profile``."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

# stage -> the pipeline thread that runs it
STAGES = {
    "decode": "decode", "to_rgb": "to-rgb", "to_planes": "to-rgb",
    "to_tensor": "model", "model": "model", "to_frame": "model",
    "to_yuv": "to-yuv", "from_planes": "to-yuv", "encode": "encode",
}


class Timings(dict):
    """``{stage: seconds}``; ``with timings("model"): ...`` adds the block's duration.

    A pipeline thread may be several threads working at once (``lanes[thread]``, e.g. the model's
    CPU workers, each on its own frame): its stages' seconds are summed over them, and the thread's
    busy time is that sum divided by its lanes.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lanes: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            with self._lock:
                self[stage] = self.get(stage, 0.0) + seconds

    def merge(self, other: "Timings") -> None:
        self.update(other)
        self.lanes.update(other.lanes)

    def by_thread(self) -> dict[str, float]:
        """Busy seconds of each pipeline thread (per lane when it has several)."""
        out: dict[str, float] = {}
        for stage, seconds in self.items():
            thread = STAGES.get(stage, stage)
            out[thread] = out.get(thread, 0.0) + seconds / self.lanes.get(thread, 1)
        return out

    def bottleneck(self) -> tuple[str, float]:
        threads = self.by_thread()
        name = max(threads, key=threads.get) if threads else "model"
        return name, threads.get(name, 0.0)
