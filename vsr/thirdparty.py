"""Community weights (Real-ESRGAN, SwinIR, SPAN, HAT, OmniSR, ...) through spandrel.

spandrel (the library chaiNNer and ComfyUI use) recognises ~40 architectures from a state dict,
including the wrappers their authors ship (Real-ESRGAN's ``params``/``params_ema``).  vsr reads the
file itself (:func:`vsr.weights.load_model`: safetensors, or ``torch.load(weights_only=True)`` after
refusing TorchScript) and hands spandrel only the tensors.  :func:`load_spandrel` turns what it finds into a module vsr's upscaler runs like
its own (it pads inputs to the sizes the architecture needs and crops the output), and refuses,
in one line each, what vsr cannot use: unknown architectures, models that are not image
super-resolution or restoration, and grayscale or RGBA models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsr.errors import VsrError

PURPOSES = ("SR", "Restoration")  # what vsr runs; spandrel also knows FaceSR, Inpainting, ...


class ThirdPartyError(VsrError):
    """A model file vsr cannot use; the message says why in one line."""


class SpandrelModel(nn.Module):
    """A spandrel image model as vsr's upscaler runs it: float NCHW RGB in [0, 1] -> ``scale`` x larger.

    Inputs are padded (edges replicated) to the architecture's size multiple and minimum, and the
    output cropped back, so any frame size works.
    """

    def __init__(self, descriptor, source: str) -> None:
        super().__init__()
        self.net = descriptor.model
        self.architecture = descriptor.architecture.name
        self.scale = int(descriptor.scale)
        self.supports_half = bool(descriptor.supports_half)
        self.supports_bfloat16 = bool(descriptor.supports_bfloat16)
        req = descriptor.size_requirements
        self.multiple, self.minimum, self.square = int(req.multiple_of), int(req.minimum), bool(req.square)
        self.parameters_count = sum(p.numel() for p in self.net.parameters())
        self.source = source

    def facts(self):
        """For the upscaler: receptive field unknown (tiles are blended), memory as a 64-channel
        network's at the output size, fp16/bf16 only where the architecture allows them."""
        from vsr.model import ModelFacts

        dtypes = {torch.float32} | ({torch.float16} if self.supports_half else set()) | (
            {torch.bfloat16} if self.supports_bfloat16 else set())
        return ModelFacts(self, self.architecture, self.scale, None, 3 * 64 * self.scale**2 * 4, frozenset(dtypes),
                          self.multiple, self.minimum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = max(h, self.minimum), max(w, self.minimum)
        if self.square:
            th = tw = max(th, tw)
        th, tw = -(-th // self.multiple) * self.multiple, -(-tw // self.multiple) * self.multiple
        if (th, tw) != (h, w):
            x = F.pad(x, (0, tw - w, 0, th - h), mode="replicate")
        y = self.net(x)
        return y[..., : h * self.scale, : w * self.scale]


def load_spandrel(state_dict: dict[str, torch.Tensor], name: str) -> SpandrelModel:
    """The model spandrel recognises in ``state_dict`` (read from the file ``name`` by
    :func:`vsr.weights.load_model`, as data), or :class:`ThirdPartyError`.  Only the state dict
    reaches spandrel, never the file: spandrel's own file loading hands ``.pt`` files to
    ``torch.jit.load``, which runs the code a TorchScript archive carries."""
    try:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    except ImportError as exc:  # pragma: no cover - spandrel is a dependency
        raise ThirdPartyError(f"reading {name} needs spandrel: pip install spandrel") from exc
    try:
        descriptor = ModelLoader(device=torch.device("cpu")).load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise ThirdPartyError(f"{name}: not an architecture spandrel knows (neither vsr weights nor any of the "
                              f"~40 community architectures it recognises from their tensors)") from None
    except Exception as exc:  # noqa: BLE001 - a crafted state dict makes spandrel raise many kinds; one line for all
        raise ThirdPartyError(f"{name}: cannot build a model from its tensors ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ThirdPartyError(f"{name}: a {descriptor.architecture.name} {descriptor.purpose} model that does not map "
                              f"an image to an image; vsr runs image super-resolution models")
    if descriptor.purpose not in PURPOSES:
        raise ThirdPartyError(f"{name}: a {descriptor.architecture.name} model for {descriptor.purpose}, "
                              f"not super-resolution or restoration")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        kind = {1: "grayscale", 4: "RGBA"}.get(descriptor.input_channels, f"{descriptor.input_channels}-channel")
        raise ThirdPartyError(f"{name}: a {kind} model ({descriptor.input_channels} channels in, "
                              f"{descriptor.output_channels} out); vsr upscales RGB (3 channels)")
    return SpandrelModel(descriptor, name).eval()
