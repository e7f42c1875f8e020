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
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vsr.errors import UsageError, VsrError
from vsr.files import written_whole
from vsr.model import Generator, GeneratorConfig

FORMAT = "vsr-generator-1"
MAX_HEADER = 16 * 2**20  # bytes of a safetensors header vsr parses (a 16x64 generator's is 6 KB)
MAX_ENTRIES = 1_000_000  # values in a torch.save file (a finetune checkpoint of the bundled model has ~1000)
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
    """The bundled file a bare name (with or without ``.safetensors``) names, else a path.

    A bundled name always means the bundled file, whatever lies in the current folder: a local file
    of that name is ``./NAME`` (any spec with a folder in it is a path)."""
    folder = weights_dir()
    bare = os.sep not in spec and not (os.altsep and os.altsep in spec) and not spec.startswith("~")
    if bare and spec not in ("", ".", ".."):
        for candidate in (folder / spec, folder / f"{spec}.safetensors"):
            if candidate.is_file():
                return candidate
    path = Path(spec).expanduser()
    if path.exists():
        return path
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


def file_kind(path: str | os.PathLike) -> str:
    """What a weights file is, by its bytes, not its name: ``"safetensors"``, ``"torch-zip"``
    (``torch.save``'s zip format; TorchScript archives are zips too, told apart by
    :func:`read_torch_file`), ``"torch-legacy"`` (the pickle ``torch.save`` wrote before 1.6), or
    ``"unknown"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise WeightsError(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        if int.from_bytes(head[:8], "little") > MAX_HEADER:
            raise WeightsError(f"{os.fspath(path)!r}: its safetensors header is {int.from_bytes(head[:8], 'little') / 2**20:.0f} MiB; "
                               f"a model's is kilobytes (vsr reads up to {MAX_HEADER // 2**20} MiB)")
        return "safetensors"  # an 8-byte header length, then the JSON header
    if head[:1] == b"\x80":  # a pickle's PROTO opcode
        return "torch-legacy"
    return "unknown"


def check_tensors(name: str, found: Any) -> None:
    """Every tensor in ``found`` (nested dicts, lists and tuples) is backed by as much data as it
    claims: a crafted file can describe a huge tensor over a one-element storage (stride 0), which
    loads in no memory but becomes gigabytes in the model built from its shape."""
    stack, seen = [("", found)], 0
    while stack:
        key, value = stack.pop()
        if isinstance(value, torch.Tensor):
            if value.numel() * value.element_size() > value.untyped_storage().nbytes():
                raise WeightsError(f"{name!r}: tensor {key or 'at the top'!r} claims shape {tuple(value.shape)} over "
                                   f"{value.untyped_storage().nbytes()} bytes of data: a crafted file, not weights")
        elif isinstance(value, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
        seen += 1
        if seen > MAX_ENTRIES:
            raise WeightsError(f"{name!r} holds more than {MAX_ENTRIES} values; a model's weights are thousands")


def check_values(name: str, state: dict[str, torch.Tensor], floats_only: bool) -> None:
    """A model's tensors hold numbers it can run with: real floating point (``floats_only``: every
    tensor, as vsr's generator has; else integer buffers are allowed, as some architectures keep
    index tables), and finite."""
    for key, value in state.items():
        if value.is_complex() or (floats_only and not value.is_floating_point()):
            raise WeightsError(f"{name!r}: tensor {key!r} is {str(value.dtype).removeprefix('torch.')}, "
                               f"expected floating point weights")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeightsError(f"{name!r}: tensor {key!r} holds NaN or infinite values")


def is_vsr_weights(path: str | os.PathLike) -> bool:
    """A safetensors file written by vsr (not a checkpoint, not a community model)."""
    return file_kind(path) == "safetensors" and read_metadata(path).get("vsr.format") == FORMAT


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{os.fspath(path)!r} is not a safetensors weights file ({exc})") from exc


def _header_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a safetensors file, from its header alone (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path!r} could not be read: {exc}") from exc


def config_mismatch(config: GeneratorConfig, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why tensors of these shapes are not a generator of ``config`` (None when they are), found
    before any module is built, so that a config asking for a huge network costs nothing."""
    expected = config.tensor_shapes()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        return (f"missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            return f"tensor {key!r} has shape {tuple(shapes[key])}, expected {shape}"
    return None


def _check_regular(name: str) -> None:
    if not os.path.isfile(name):
        if os.path.exists(name):
            raise WeightsError(f"{name!r} is not a regular file (a folder, a device or a pipe): expected a weights file")
        raise WeightsError(f"weights file {name!r} does not exist")


def load_generator(path: str | os.PathLike, scale: int | None = None) -> Generator:
    """Build the generator described by the file and load its tensors, checking everything: the
    config's values, then every tensor's name and shape (from the file's header) against the
    config, before anything is allocated."""
    name = os.fspath(path)
    _check_regular(name)
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
    problem = config_mismatch(config, _header_shapes(name))
    if problem:
        raise WeightsError(f"{name!r} does not match its config {config}: {problem}")
    try:
        state = load_file(name)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{name!r} could not be read: {exc}") from exc
    check_values(name, state, floats_only=True)
    model = Generator(config)
    model.load_state_dict(state)
    model.eval()
    return model


# Entries that only a TorchScript archive (code and constants for torch.jit) holds; torch.save's
# zips hold data.pkl, data/N, byteorder, version.
_TORCHSCRIPT_ENTRIES = ("constants.pkl", "bytecode.pkl", ".debug_pkl")


def read_torch_file(path: str | os.PathLike) -> Any:
    """What a ``torch.save`` file (``.pth``/``.pt``/``.ckpt``/``.bin``) holds, read as data only.

    A TorchScript archive is refused by its contents (whatever its name): loading one runs the code
    inside.  Everything else goes through ``torch.load(weights_only=True)``, whose unpickler builds
    nothing but tensors and plain containers (memory-mapped for the zip format, so tensors are read
    as they are used).  :class:`WeightsError` with one line otherwise."""
    import zipfile

    name = os.fspath(path)
    kind = file_kind(name)
    if kind == "torch-zip":
        try:
            with zipfile.ZipFile(name) as archive:
                entries = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise WeightsError(f"{name!r} is a damaged zip file ({exc})") from None
        if any(e.endswith(_TORCHSCRIPT_ENTRIES) or "/code/" in e for e in entries):
            raise WeightsError(f"{name!r} is a TorchScript archive (a program, not just tensors): vsr does not load "
                               f"code from a weights file; save the model's state_dict with torch.save instead")
    elif kind != "torch-legacy":
        raise WeightsError(f"{name!r} is not a weights file: expected safetensors or a PyTorch state dict "
                           f"(.pth/.pt/.ckpt/.bin written by torch.save)")
    try:
        loaded = torch.load(name, map_location="cpu", weights_only=True, mmap=kind == "torch-zip")
    except Exception as exc:  # noqa: BLE001 - a hostile file makes torch raise many kinds; one line for all
        text = str(exc)
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if found or "Weights only load failed" in text:
            what = found.group(1) if found else "Python objects"
            raise WeightsError(f"{name!r}: refused to unpickle it: it holds {what}, not only tensors and plain "
                               f"containers (the only things vsr reads from a weights file)") from None
        detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise WeightsError(f"{name!r} could not be read as tensors: {detail}") from None
    check_tensors(name, loaded)
    return loaded


def _community_state_dict(path: str, kind: str, loaded: Any = None) -> dict[str, torch.Tensor]:
    """A community model's tensors: the file's state dict, unwrapped from the containers their
    authors use (``params_ema``, ``params``, ``state_dict``, ``model``, a ``module.`` prefix...)."""
    from spandrel import canonicalize_state_dict

    if kind == "safetensors":
        try:
            loaded = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path!r} could not be read: {exc}") from None
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path!r} holds a {type(loaded).__name__}, not a state dict (names -> tensors)")
    state = canonicalize_state_dict(loaded)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path!r} holds no tensors: expected a model's state dict")
    check_values(path, tensors, floats_only=False)
    return tensors


def load_model(path: str | os.PathLike, scale: int | None = None) -> torch.nn.Module:
    """vsr's own weights (:func:`load_generator`), a ``vsr finetune`` checkpoint (its EMA
    generator), or any community model spandrel recognises from its tensors
    (:func:`vsr.thirdparty.load_spandrel`); :class:`WeightsError` with one line otherwise.

    Every file is read here as data (safetensors, or :func:`read_torch_file`): nothing reaches
    ``torch.jit.load`` or an unpickler that builds more than tensors and plain containers."""
    name = os.fspath(path)
    _check_regular(name)
    kind = file_kind(name)
    loaded = None
    if kind == "safetensors":
        if read_metadata(name).get("vsr.format") == FORMAT:
            return load_generator(name, scale=scale)
    else:
        loaded = read_torch_file(name)
        from vsr.train import CHECKPOINT_FORMAT, CheckpointError, check_checkpoint

        if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT:
            try:  # `vsr finetune`'s checkpoint: its EMA generator, as the weights file gets
                config = check_checkpoint(loaded, name)
            except CheckpointError as exc:
                raise WeightsError(str(exc)) from None
            if scale is not None and config.scale != scale:
                raise WeightsMismatch(f"{name!r} is a x{config.scale} model, but x{scale} was asked for")
            model = Generator(config)
            model.load_state_dict(loaded["ema"])
            return model.eval()
    from vsr.thirdparty import ThirdPartyError, load_spandrel

    try:
        model = load_spandrel(_community_state_dict(name, kind, loaded), Path(name).name)
    except ThirdPartyError as exc:
        raise WeightsError(str(exc)) from None
    if scale is not None and model.scale != scale:
        raise WeightsMismatch(f"{name!r} is a x{model.scale} model ({model.architecture}), but x{scale} was asked for")
    return model


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What ``vsr models`` shows of a model file (loads it; :class:`WeightsError` if it cannot)."""
    model = load_model(path)
    row = {"name": Path(path).name, "scale": model.scale, "parameters": sum(p.numel() for p in model.parameters()),
           "trained": "", "validation": ""}
    if isinstance(model, Generator):
        cfg = model.config
        row.update(architecture=cfg.architecture, fp16=True)
        if is_vsr_weights(path):  # a checkpoint has no records
            try:
                row.update(_records(path, cfg.scale))
            except (WeightsError, ValueError, TypeError, KeyError, IndexError, AttributeError):
                row["trained"] = "(unreadable training record)"  # informational: the model itself loaded
    else:
        row.update(architecture=model.architecture, fp16=model.supports_half)
    return row


def _records(path: str | os.PathLike, scale: int) -> dict[str, str]:
    """The ``trained`` and ``validation`` columns from a vsr weights file's records."""
    row = {}
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
    held_out = json.loads(read_metadata(path).get("vsr.evaluation", "{}")).get(f"x{scale} clean")
    if held_out and "psnr_y" in held_out.get("scores", {}):
        scores, bicubic = held_out["scores"], held_out["bicubic"]
        row["validation"] = f"{scores['psnr_y'] - bicubic['psnr_y']:+.2f} dB" + (
            f", NIQE {scores['niqe']:.2f} (bicubic {bicubic['niqe']:.2f})" if "niqe" in scores else "")
    return row


def total_steps(training: dict[str, Any]) -> int:
    """Training steps in all behind a ``vsr.training`` record: its own and those of the file it was
    fine-tuned from (a record older than ``total_steps`` gives its own)."""
    return int(training.get("total_steps", training.get("steps", 0)))


def training_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``vsr.training`` record of a vsr weights file ({} when it has none)."""
    meta = read_metadata(path)
    if "vsr.training" not in meta:
        return {}
    try:
        info = json.loads(meta["vsr.training"])
    except ValueError as exc:
        raise WeightsError(f"{os.fspath(path)!r} has an unreadable vsr.training record: {exc}") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{os.fspath(path)!r} has a vsr.training record that is not a JSON object")
    return info
