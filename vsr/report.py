"""How the library tells its caller what is happening: one family of reporter classes whose
methods do nothing, which the CLI's progress displays subclass (vsr.progress) and tests subclass
to listen in.  Library code only calls these methods; it never prints.

* :class:`Reporter`, for one file (:func:`vsr.pipeline.upscale_file`): start, advance, info,
  warn, finish;
* :class:`BatchReporter`, for a folder (:func:`vsr.batch.run`): a Reporter per file, and each
  file's outcome;
* :class:`TrainReporter`, for a training run (:func:`vsr.finetune.run_finetune`): the steps,
  their losses and the validation scores.
"""

from __future__ import annotations

from typing import Any


class Lines:
    """Lines for the user: ``info`` (what is being done) and ``warn`` (what they should know)."""

    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...


class Reporter(Lines):
    """One file: ``start(name, total frames or None)``, ``advance(frames)`` as they are written,
    ``finish()`` (also after a failure)."""

    def start(self, name: str, total: int | None) -> None: ...
    def advance(self, frames: int) -> None: ...
    def finish(self) -> None: ...


class BatchReporter:
    """A folder: the :class:`Reporter` of each job's file, then that job's outcome."""

    def for_job(self, job: Any) -> Reporter:
        return Reporter()

    def file_finished(self, job: Any) -> None: ...
    def finish(self) -> None: ...


class TrainReporter(Lines):
    """A training run: ``start(first step, last step)``, each step's losses (which may be device
    tensors: read them only when shown), validation scores, ``finish()``."""

    def start(self, step: int, total: int) -> None: ...
    def step(self, step: int, losses: dict[str, Any]) -> None: ...
    def validate(self, step: int, scores: dict[str, float]) -> None: ...
    def finish(self) -> None: ...
