"""Rich progress displays for the CLI (stderr): the reporters of :mod:`vsr.report`, shown."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vsr.report import BatchReporter, Reporter, TrainReporter


class TrainProgress(TrainReporter):
    """step/total, current losses, steps/s, ETA; validation lines as they come."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None
        self.began = 0.0
        self.first = 0

    def start(self, step: int, total: int) -> None:
        self.began, self.first, self.total, self.last_line = time.monotonic(), step, total, time.monotonic()
        if self.quiet or not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=step, rate="", losses="")
        self.progress.start()

    def step(self, step: int, losses: dict) -> None:
        """Losses may be device tensors: they are read (which waits for the device) only when shown,
        a few times a second on a terminal, once a minute in a log."""
        if self.quiet:
            return
        now = time.monotonic()
        live = self.progress is not None and self.console.is_terminal
        if step != self.total and now - self.last_line < (0.25 if live else 60):
            return
        elapsed = now - self.began
        rate = (step - self.first) / elapsed if elapsed > 0 else 0.0
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in losses.items() if k not in ("d_real", "d_fake"))
        if live:
            self.progress.update(self.task, completed=step, rate=f"{rate:.2f} step/s", losses=shown)
            self.last_line = now
        else:
            # Not a terminal (a log file, nohup): a plain line a minute instead of a live bar.
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            self.console.print(f"step {step}/{self.total} {rate:.3f} step/s ETA {eta / 60:.0f} min {shown}")
            self.last_line = time.monotonic()

    def validate(self, step: int, scores: dict[str, float]) -> None:
        line = (f"step {step}: PSNR-Y {scores['psnr']:.2f} dB (bicubic {scores['bicubic_psnr']:.2f}, "
                f"{scores['psnr'] - scores['bicubic_psnr']:+.2f}), SSIM {scores['ssim']:.4f} "
                f"(bicubic {scores['bicubic_ssim']:.4f})")
        (self.progress.console if self.progress else self.console).print(line)

    def info(self, message: str) -> None:
        if not self.quiet:
            (self.progress.console if self.progress else self.console).print(message, soft_wrap=True)

    def warn(self, message: str) -> None:
        (self.progress.console if self.progress else self.console).print(f"[yellow]warning:[/] {message}",
                                                                         soft_wrap=True)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def eta_text(done: int, total: int | None, elapsed: float) -> str:
    """Time left at the running average rate (rich's own column follows a short window, whose speed
    spikes when two workers finish together and gives "ETA 0:00:05" with minutes to go)."""
    if not total or done <= 0 or elapsed <= 0:
        return "-:--:--"
    left = max(0.0, (total - done) * elapsed / done)
    hours, rest = divmod(int(left + 0.5), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class _Rate:
    """Frames done since a start, for the running-average fps and ETA."""

    def __init__(self, total: int | None) -> None:
        self.total, self.done, self.began = total, 0, time.monotonic()

    def add(self, frames: int) -> None:
        self.done += frames

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.began

    @property
    def fps(self) -> str:
        return f"{self.done / self.elapsed:.2f} fps" if self.elapsed > 0 and self.done else ""

    @property
    def eta(self) -> str:
        return eta_text(self.done, self.total, self.elapsed)

    def line(self, name: str) -> str:
        total = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.done / self.total:.1f} %)" if self.total else ""
        return f"{name}: {self.done}{total} frames{share}, {self.fps or '0.00 fps'}, ETA {self.eta}"


class FileProgress(Reporter):
    """The pipeline's Reporter for one file: frames done/total, fps, ETA (stderr).  Off a terminal
    (nohup, a scheduler, CI) a plain line every ``LOG_INTERVAL`` seconds instead of a live bar."""

    LOG_INTERVAL = 10.0

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None
        self.rate: _Rate | None = None

    def start(self, name: str, total: int | None) -> None:
        if self.quiet:
            return
        self.name, self.rate, self.last_line = name, _Rate(total), time.monotonic()
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[fps]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=self.console, transient=True,
        )
        self.task = self.progress.add_task(name, total=total, fps="", eta=self.rate.eta)
        self.progress.start()

    def advance(self, frames: int) -> None:
        if self.rate is None:
            return
        self.rate.add(frames)
        if self.progress is not None:
            self.progress.update(self.task, advance=frames, fps=self.rate.fps, eta=self.rate.eta)
        elif time.monotonic() - self.last_line >= self.LOG_INTERVAL:
            self.console.print(self.rate.line(self.name), soft_wrap=True)
            self.last_line = time.monotonic()

    def warn(self, message: str) -> None:
        if not self.quiet:
            (self.progress.console if self.progress else self.console).print(f"[yellow]warning:[/] {message}", soft_wrap=True)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.rate = None


class BatchProgress(BatchReporter):
    """Overall (files, frames, ETA) and per-file progress for a folder (stderr); off a terminal, a
    plain overall line every ``LOG_INTERVAL`` seconds."""

    LOG_INTERVAL = 10.0

    def __init__(self, console: Console, total_files: int, total_frames: int | None, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.files_done = 0
        self.total_files = total_files
        self.progress: Progress | None = None
        self.rate = _Rate(total_frames)
        self.last_line = time.monotonic()
        if quiet or not console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), console=console, transient=True,
        )
        self.overall = self.progress.add_task("all frames", total=total_frames or None, info=f"0/{total_files} files",
                                              eta=self.rate.eta)
        self.progress.start()

    def _print(self, message: str) -> None:
        (self.progress.console if self.progress else self.console).print(message, soft_wrap=True)

    def for_job(self, job) -> "_FileTask":
        return _FileTask(self, job)

    def advance(self, frames: int) -> None:
        self.rate.add(frames)
        if self.progress is not None:
            self.progress.update(self.overall, advance=frames, eta=self.rate.eta)
        elif not self.quiet and time.monotonic() - self.last_line >= self.LOG_INTERVAL:
            self._print(self.rate.line(f"all ({self.files_done}/{self.total_files} files)"))
            self.last_line = time.monotonic()

    def file_finished(self, job) -> None:
        self.files_done += 1
        if self.progress is not None:
            self.progress.update(self.overall, info=f"{self.files_done}/{self.total_files} files")
        if job.status == "failed":
            self._print(f"[red]failed:[/] {job.rel}: {job.error}")

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _FileTask(Reporter):
    """The pipeline Reporter for one file of a batch."""

    def __init__(self, batch: BatchProgress, job) -> None:
        self.batch, self.job, self.task, self.rate = batch, job, None, None

    def start(self, name: str, total: int | None) -> None:
        self.rate = _Rate(total)
        if self.batch.progress is not None:
            self.task = self.batch.progress.add_task(self.job.rel, total=total, info="", eta=self.rate.eta)

    def advance(self, frames: int) -> None:
        self.batch.advance(frames)
        if self.rate is not None:
            self.rate.add(frames)
        if self.batch.progress is not None and self.task is not None:
            self.batch.progress.update(self.task, advance=frames, eta=self.rate.eta)

    def warn(self, message: str) -> None:
        if not self.batch.quiet:
            self.batch._print(f"[yellow]warning:[/] {self.job.rel}: {message}")

    def finish(self) -> None:
        if self.batch.progress is not None and self.task is not None:
            self.batch.progress.remove_task(self.task)
            self.task = None
