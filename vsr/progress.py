"""Rich progress displays for the CLI (stderr).  Library code reports through callbacks."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
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

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class FileProgress:
    """The pipeline's Reporter for one file: frames done/total, fps, ETA (stderr)."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def start(self, name: str, total: int | None) -> None:
        if self.quiet:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[fps]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.task = self.progress.add_task(name, total=total, fps="")
        self.began = time.monotonic()
        self.done = 0
        self.progress.start()

    def advance(self, frames: int) -> None:
        if self.progress is None:
            return
        self.done += frames
        elapsed = time.monotonic() - self.began
        self.progress.update(self.task, advance=frames, fps=f"{self.done / elapsed:.2f} fps" if elapsed > 0 else "")

    def warn(self, message: str) -> None:
        (self.progress.console if self.progress else self.console).print(f"[yellow]warning:[/] {message}", soft_wrap=True)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class BatchProgress:
    """Overall (files, frames, ETA) and per-file progress for a folder (stderr)."""

    def __init__(self, console: Console, total_files: int, total_frames: int | None, quiet: bool = False) -> None:
        self.console = console
        self.files_done = 0
        self.total_files = total_files
        self.progress: Progress | None = None
        if quiet:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
        )
        self.overall = self.progress.add_task("all frames", total=total_frames or None, info=f"0/{total_files} files")
        self.progress.start()

    def _print(self, message: str) -> None:
        (self.progress.console if self.progress else self.console).print(message, soft_wrap=True)

    def for_job(self, job) -> "_FileTask":
        return _FileTask(self, job)

    def file_finished(self, job) -> None:
        self.files_done += 1
        if self.progress is not None:
            self.progress.update(self.overall, info=f"{self.files_done}/{self.total_files} files")
        if job.status == "failed":
            self._print(f"[red]failed:[/] {job.rel}: {job.error}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _FileTask:
    """The pipeline Reporter for one file of a batch."""

    def __init__(self, batch: BatchProgress, job) -> None:
        self.batch, self.job, self.task = batch, job, None

    def start(self, name: str, total: int | None) -> None:
        if self.batch.progress is not None:
            self.task = self.batch.progress.add_task(self.job.rel, total=total, info="")

    def advance(self, frames: int) -> None:
        if self.batch.progress is not None:
            self.batch.progress.update(self.batch.overall, advance=frames)
            if self.task is not None:
                self.batch.progress.update(self.task, advance=frames)

    def warn(self, message: str) -> None:
        self.batch._print(f"[yellow]warning:[/] {self.job.rel}: {message}")

    def finish(self) -> None:
        if self.batch.progress is not None and self.task is not None:
            self.batch.progress.remove_task(self.task)
            self.task = None
