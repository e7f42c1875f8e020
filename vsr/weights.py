"""Weights files: a generator's tensors plus its config, in safetensors.

A weights file is self-describing: its metadata holds ``vsr.format``,
``vsr.config`` (the :class:`GeneratorConfig` as JSON) and optionally
``vsr.training`` (JSON: steps, losses, data summary, validation scores) and
``vsr.evaluation`` (JSON: held-out scores by protocol, written by ``scripts/evaluate.py --record``).
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vsr.errors import UsageError, VsrError
from vsr.files import written_whole
from vsr.model import Generator, GeneratorConfig

FORMAT = "vsr-generator-1"
DEFAULT_WEIGHTS = {4: "vsr_x4_psnr.safetensors", 2: "vsr_x2_psnr.safetensors"}  # per scale; x4 when none is asked


def default_weights(scale: int | None = None) -> str:
    """The bundled model ``vsr upscale`` uses for ``--scale`` (x4 when no scale is asked for)."""
    return DEFAULT_WEIGHTS.get(scale or 4, DEFAULT_WEIGHTS[4])


class WeightsError(VsrError):
    """A weights file that cannot be used; the message says why."""


class WeightsMismatch(WeightsError, UsageError):
    """The weights are fine but not what the command asked for (another scale): a usage mistake."""


def weights_dir() -> Path:
    """Where bundled weights live: ``$VSR_WEIGHTS_DIR``; in an installed package ``vsr/bundled/``
    (package data, copied from the repository's ``weights/``); in a checkout, ``weights/``."""
    env = os.environ.get("VSR_WEIGHTS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    installed = here / "bundled"
    return installed if installed.is_dir() else here.parent / "weights"


def bundled_weights() -> list[str]:
    folder = weights_dir()
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def resolve_weights(spec: str) -> Path:
    """A path, or the name (with or without ``.safetensors``) of a bundled file."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    folder = weights_dir()
    for candidate in (folder / spec, folder / f"{spec}.safetensors"):
        if candidate.is_file():
            return candidate
    names = ", ".join(bundled_weights()) or "none"
    raise WeightsError(f"weights {spec!r} not found: expected a file path or a bundled name (bundled: {names})")


def save_generator(path: str | os.PathLike, model: Generator, training: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    metadata = {"vsr.format": FORMAT, "vsr.config": model.config.to_json()}
    if training is not None:
        metadata["vsr.training"] = json.dumps(training, sort_keys=True)
    save_file(state, os.fspath(path), metadata=metadata)


def interpolate(a: str | os.PathLike, b: str | os.PathLike, alpha: float) -> tuple[Generator, dict[str, Any]]:
    """ESRGAN's network interpolation: every weight ``(1 - alpha) * a + alpha * b`` of two generators
    with the same config (e.g. a PSNR model and the adversarial model fine-tuned from it), which
    trades fidelity for texture more smoothly than either loss weight.  Returns the model and a
    ``vsr.training`` record naming both sources."""
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
    first, second = load_generator(a), load_generator(b)
    if first.config != second.config:
        raise WeightsMismatch(f"{os.fspath(a)!r} and {os.fspath(b)!r} have different configs "
                              f"({first.config.to_json()} vs {second.config.to_json()}): only like models interpolate")
    state_b = second.state_dict()
    merged = {k: torch.lerp(v, state_b[k], alpha) if v.dtype.is_floating_point else v
              for k, v in first.state_dict().items()}
    first.load_state_dict(merged)
    record = {"interpolated": {"a": Path(a).name, "b": Path(b).name, "alpha": alpha,
                               "a_training": training_info(a), "b_training": training_info(b)}}
    return first, record


def record_metadata(path: str | os.PathLike, key: str, value: dict[str, Any]) -> None:
    """Merge ``value`` into the JSON object under metadata ``key`` of a vsr weights file (the tensors
    are copied unchanged; the file is replaced whole or not at all)."""
    meta = read_metadata(path)
    if meta.get("vsr.format") != FORMAT:
        raise WeightsError(f"{os.fspath(path)!r} is not vsr generator weights (metadata vsr.format={meta.get('vsr.format')!r})")
    try:
        merged = json.loads(meta.get(key, "{}"))
    except ValueError as exc:
        raise WeightsError(f"{os.fspath(path)!r} has unreadable metadata {key!r}: {exc}") from exc
    merged.update(value)
    meta[key] = json.dumps(merged, sort_keys=True)
    state = load_file(os.fspath(path))
    with written_whole(path, mode=0o644) as tmp:
        save_file(state, os.fspath(tmp), metadata=meta)


def is_vsr_weights(path: str | os.PathLike) -> bool:
    """A ``.safetensors`` file written by vsr (not a checkpoint, not a community model)."""
    return Path(path).suffix.lower() == ".safetensors" and read_metadata(path).get("vsr.format") == FORMAT


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{os.fspath(path)!r} is not a safetensors weights file ({exc})") from exc


def load_generator(path: str | os.PathLike, scale: int | None = None) -> Generator:
    """Build the generator described by the file and load its tensors, checking everything."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise WeightsError(f"weights file {name!r} does not exist")
    meta = read_metadata(name)
    if meta.get("vsr.format") != FORMAT or "vsr.config" not in meta:
        raise WeightsError(
            f"{name!r} is a safetensors file but not vsr generator weights "
            f"(expected metadata vsr.format={FORMAT!r}, got {meta.get('vsr.format')!r})"
        )
    try:
        config = GeneratorConfig.from_json(meta["vsr.config"])
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{name!r} has an unusable config: {exc}") from exc
    if scale is not None and config.scale != scale:
        raise WeightsMismatch(f"{name!r} is a x{config.scale} model, but x{scale} was asked for")
    try:
        state = load_file(name)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{name!r} could not be read: {exc}") from exc
    model = Generator(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{name!r} does not match its config {config}: "
            f"missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{name!r}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)} for {config}"
            )
    model.load_state_dict(state)
    model.eval()
    return model


def _training_checkpoint(path: str | os.PathLike) -> dict | None:
    """A ``vsr finetune`` checkpoint (a torch zip file, read with ``weights_only``: nothing but
    tensors and plain values is unpickled), or None for any other file."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return None
    from vsr.train import load_checkpoint

    try:
        return load_checkpoint(path)
    except Exception:  # noqa: BLE001 - not ours (e.g. a pickle weights_only refuses): spandrel's loader says why
        return None


def load_model(path: str | os.PathLike, scale: int | None = None) -> torch.nn.Module:
    """vsr's own weights (:func:`load_generator`), or any community model spandrel recognises
    (:func:`vsr.thirdparty.load_spandrel`); :class:`WeightsError` with one line otherwise."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {os.fspath(path)!r} does not exist")
    checkpoint = _training_checkpoint(path)
    if checkpoint is not None:  # `vsr finetune`'s checkpoint: its EMA generator, as the weights file gets
        from vsr.train import generator_from_checkpoint

        model = generator_from_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["ema"])
        if scale is not None and model.config.scale != scale:
            raise WeightsMismatch(f"{os.fspath(path)!r} is a x{model.config.scale} model, but x{scale} was asked for")
        return model.eval()
    # a .safetensors file must at least be one; vsr's own carry their config in the metadata
    if is_vsr_weights(path):
        return load_generator(path, scale=scale)
    from vsr.thirdparty import ThirdPartyError, load_spandrel

    try:
        model = load_spandrel(path)
    except ThirdPartyError as exc:
        raise WeightsError(str(exc)) from None
    if scale is not None and model.scale != scale:
        raise WeightsMismatch(f"{os.fspath(path)!r} is a x{model.scale} model ({model.architecture}), but x{scale} was asked for")
    return model


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What ``vsr models`` shows of a model file (loads it; :class:`WeightsError` if it cannot)."""
    model = load_model(path)
    row = {"name": Path(path).name, "scale": model.scale, "parameters": sum(p.numel() for p in model.parameters()),
           "trained": "", "validation": ""}
    if isinstance(model, Generator):
        cfg = model.config
        row.update(architecture=f"SRResNet {cfg.blocks}x{cfg.channels}" + (" BN" if cfg.batch_norm else ""), fp16=True)
        info = training_info(path)
        if "interpolated" in info:
            mix = info["interpolated"]
            row["trained"] = f"{1 - mix['alpha']:g} x {mix['a']} + {mix['alpha']:g} x {mix['b']}"
        elif info:
            row["trained"] = f"{info.get('steps', '?')} steps"
            if total_steps(info) > int(info.get("steps", 0)):
                row["trained"] += f" ({total_steps(info)} in all)"
            if info.get("validation"):
                step, scores = info["validation"][-1]
                row["validation"] = f"{scores['psnr'] - scores['bicubic_psnr']:+.2f} dB (crops)"
        held_out = json.loads(read_metadata(path).get("vsr.evaluation", "{}")).get(f"x{cfg.scale} clean")
        if held_out and "psnr_y" in held_out.get("scores", {}):
            scores, bicubic = held_out["scores"], held_out["bicubic"]
            row["validation"] = f"{scores['psnr_y'] - bicubic['psnr_y']:+.2f} dB" + (
                f", NIQE {scores['niqe']:.2f} (bicubic {bicubic['niqe']:.2f})" if "niqe" in scores else "")
    else:
        row.update(architecture=model.architecture, fp16=model.supports_half)
    return row


def total_steps(training: dict[str, Any]) -> int:
    """Training steps in all behind a ``vsr.training`` record: its own and those of the file it was
    fine-tuned from (a record older than ``total_steps`` gives its own)."""
    return int(training.get("total_steps", training.get("steps", 0)))


def training_info(path: str | os.PathLike) -> dict[str, Any]:
    meta = read_metadata(path)
    return json.loads(meta["vsr.training"]) if "vsr.training" in meta else {}
