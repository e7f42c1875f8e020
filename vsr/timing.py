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


class GilProbe:
    """How long a Python thread waits to run: a thread that sleeps ``interval`` at a time and
    measures how late it wakes.  The lateness is the time to get the GIL back (plus the OS
    scheduler's delay), i.e. what any pipeline thread pays after each call that released it.
    ``probe.start()`` ... ``probe.stop()`` (or ``with GilProbe() as probe:``), then ``probe.mean_ms``,
    ``probe.max_ms``.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vsr-gil-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(self.interval)
            self.samples.append(max(0.0, time.perf_counter() - t0 - self.interval))

    def start(self) -> "GilProbe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "GilProbe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def mean_ms(self) -> float:
        return 1000 * sum(self.samples) / len(self.samples) if self.samples else 0.0

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.samples, default=0.0)
