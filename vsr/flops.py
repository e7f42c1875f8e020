"""What a model costs to run: floating-point operations (a multiply-add counts two) per frame.

One count for every model vsr runs, used by ``vsr models`` and ``scripts/benchmark.py``: vsr's
generator from its config (:meth:`vsr.model.GeneratorConfig.flops_per_pixel`, the paper's layers),
any other module (community models through spandrel) counted by torch's ``FlopCounterMode`` on a
copy of the model on the meta device, which computes nothing and allocates no frame.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from vsr.model import Generator

# The frame ``vsr models`` prices models at: one 1920x1080 output frame, so that x2 and x4 models
# compare at the same result (an x4 model reads a 480x270 frame for it, an x2 one 960x540).
REFERENCE_OUTPUT = (1920, 1080)


def frame_flops(model: nn.Module, width: int, height: int) -> float:
    """FLOPs of one ``width`` x ``height`` input frame through ``model``."""
    if isinstance(model, Generator):
        return model.config.flops_per_pixel() * width * height
    weight = next(model.parameters())
    with warnings.catch_warnings():  # what the model's code says as it runs is for its runs, not a count
        warnings.simplefilter("ignore")
        try:
            return _counted(copy.deepcopy(model).to("meta"), width, height, torch.device("meta"), weight.dtype)
        except (NotImplementedError, RuntimeError):  # an operation without a meta kernel: count a real run
            return _counted(model, width, height, weight.device, weight.dtype)


def _counted(model: nn.Module, width: int, height: int, device: torch.device, dtype: torch.dtype) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.rand(1, 3, height, width, device=device, dtype=dtype))
    return float(counter.get_total_flops())


def reference_frame_flops(model: nn.Module, scale: int) -> float:
    """FLOPs of one :data:`REFERENCE_OUTPUT` frame (1080p) made by ``model``, an x``scale`` model."""
    width, height = REFERENCE_OUTPUT
    return frame_flops(model, math.ceil(width / scale), math.ceil(height / scale))
