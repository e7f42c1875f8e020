"""Hostile weights files (issue 28, rows 1, 3 and 4): a weights file is data, never code; its sizes
are checked before memory is spent; a bundled name always means the bundled file."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import make_clip, tiny_generator
from vsr.cli import main
from vsr.weights import FORMAT, WeightsError, load_model, resolve_weights, save_generator, weights_dir

VICTIM_TEXT = b"echo this is the user's .bashrc\n"

# What a measured child runs: the CLI, then its own peak RSS (KiB on Linux) into the file argv[1].
_MEASURED = ("import atexit, resource, sys\n"
             "out = sys.argv.pop(1)\n"
             "atexit.register(lambda: open(out, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
             "sys.argv[0] = 'vsr'\n"
             "from vsr.cli import main\n"
             "main()\n")


def run_measured(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, float]:
    """``vsr ARGS`` in a child process: its result and its peak resident memory in MiB."""
    peak = tmp_path / "peak-rss"
    result = subprocess.run([sys.executable, "-c", _MEASURED, str(peak), *map(str, args)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    return result, int(peak.read_text()) / 1024


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in text and len(errors) == 1, text
    return errors[0]


# ------------------------------------------------------------------- row 1: TorchScript runs code
def torchscript_that_writes(victim: Path) -> torch.jit.ScriptModule:
    """A scripted module whose ``__setstate__`` (run by ``torch.jit.load``) overwrites ``victim``'s
    first bytes through a shared memory map: what the review used to stand in for any code."""

    class Payload(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(3))
            self.target = str(victim)

        @torch.jit.export
        def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
            return (self.target, self.weight, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
            self.target = state[0]
            self.weight = state[1]
            self.training = state[2]
            written = torch.from_file(state[0], shared=True, size=6, dtype=torch.uint8)
            if int(written.fill_(88).sum()) < 0:  # used, so that the compiler keeps the write
                self.training = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, and still loads and runs
        return torch.jit.script(Payload())


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "bashrc"
    path.write_bytes(VICTIM_TEXT)
    return path


@pytest.fixture
def scripted(tmp_path, victim) -> dict[str, Path]:
    module = torchscript_that_writes(victim)
    paths = {}
    for ext in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
        paths[ext] = tmp_path / f"community{ext}"
        module.save(str(paths[ext]))
    # the payload works: loading the archive as torch.jit does rewrites the victim
    check = tmp_path / "check"
    check.write_bytes(VICTIM_TEXT)
    torchscript_that_writes(check).save(str(tmp_path / "check.pt"))
    torch.jit.load(str(tmp_path / "check.pt"))
    assert check.read_bytes().startswith(b"XXXXXX"), "the stand-in payload did not run: the test would prove nothing"
    return paths


def test_torchscript_never_runs_from_upscale(scripted, victim, tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=2, size=(32, 24))
    for ext, path in scripted.items():
        r = CliRunner().invoke(main, ["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--weights", str(path)])
        assert r.exit_code == 1, (ext, r.output)
        assert "TorchScript archive" in one_error_line(r.output), ext
        assert victim.read_bytes() == VICTIM_TEXT, f"{ext}: the archive's code ran"
        assert not (tmp_path / "o.mp4").exists()


def test_torchscript_never_runs_from_models(scripted, victim, tmp_path):
    r = CliRunner().invoke(main, ["models", *map(str, scripted.values())])
    assert r.exit_code == 1, r.output
    assert victim.read_bytes() == VICTIM_TEXT, "the archive's code ran"
    refused = [line for line in r.output.splitlines() if "TorchScript archive" in line]
    assert len(refused) == len(scripted), r.output
    for name in weights_dir().glob("*.safetensors"):  # the bundled models are still listed
        assert name.name in r.output


def test_torchscript_never_runs_from_finetune_resume(scripted, victim, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=2, size=(32, 24))
    r = CliRunner().invoke(main, ["finetune", str(folder), "-o", str(tmp_path / "ft.safetensors"), "--steps", "1",
                                  "--no-gan", "--resume", str(scripted[".ckpt"]), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 1, r.output
    assert "TorchScript archive" in one_error_line(r.output)
    assert victim.read_bytes() == VICTIM_TEXT
    assert not (tmp_path / "ft.safetensors").exists()


def test_a_plain_state_dict_still_loads_through_every_name(tmp_path):
    """What is refused is code, not a file name: the same tensors load from each container."""
    import spandrel  # noqa: F401 - community models need it

    from test_thirdparty import compact_state

    state = compact_state()
    torch.save({"params": state}, tmp_path / "a.pth")
    torch.save(state, tmp_path / "a.pt")
    torch.save({"state_dict": state}, tmp_path / "a.bin", _use_new_zipfile_serialization=False)  # the old format
    save_file(state, tmp_path / "a.safetensors")
    for name in ("a.pth", "a.pt", "a.bin", "a.safetensors"):
        model = load_model(tmp_path / name)
        assert model.scale == 4 and model.architecture == "RealESRGAN Compact", name


def test_a_file_that_is_no_weights_is_named(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("just some text\n")
    with pytest.raises(WeightsError, match="is not a weights file: expected safetensors or a PyTorch state dict"):
        load_model(path)


# ------------------------------------------------------------------- row 3: sizes from a config
def vsr_file_claiming(path: Path, **config) -> Path:
    """A vsr weights file with a tiny generator's tensors whose config claims ``config``."""
    model = tiny_generator(batch_norm=False, global_skip="bicubic")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    claimed = json.dumps({**json.loads(model.config.to_json()), **config})
    save_file(state, path, metadata={"vsr.format": FORMAT, "vsr.config": claimed})
    return path


def test_a_config_claiming_a_huge_network_costs_no_memory(tmp_path):
    """The review's 180-byte file asking for 4096 channels took 10.7 GB before 'does not match'."""
    path = vsr_file_claiming(tmp_path / "huge.safetensors", channels=1024, blocks=40)  # ~3 GB of weights, were it built
    assert path.stat().st_size < 100_000
    src = make_clip(tmp_path / "in.mp4", frames=2, size=(32, 24))
    result, peak_mib = run_measured(tmp_path, "upscale", src, "-o", tmp_path / "o.mp4", "--weights", path)
    assert result.returncode == 1, result.stderr
    assert "does not match its config" in one_error_line(result.stderr)
    assert peak_mib < 2048, f"peak RSS {peak_mib:.0f} MiB"
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("config, fragment", [
    ({"channels": 200000}, "channels must be an integer from 1 to 1024"),
    ({"blocks": 10**9}, "blocks must be an integer from 1 to 256"),
    ({"channels": -3}, "channels must be an integer from 1 to 1024"),
    ({"scale": 3}, "scale must be one of (2, 4)"),
    ({"batch_norm": "yes"}, "batch_norm must be true or false"),
    ({"colour": "red"}, "unknown generator config keys ['colour']"),
])
def test_impossible_configs_are_one_line(tmp_path, config, fragment):
    path = vsr_file_claiming(tmp_path / "odd.safetensors", **config)
    r = CliRunner().invoke(main, ["models", str(path)])
    assert r.exit_code == 1
    line = " ".join(one_error_line(r.output).split())
    assert "unusable config" in line and fragment in line, line


def checkpoint_of(path: Path, **changes) -> Path:
    """A real ``vsr finetune`` checkpoint's structure (``Trainer.state_dict``) with ``changes``
    (a value of None removes the key)."""
    from vsr.train import TrainConfig, Trainer

    trainer = Trainer(tiny_generator(batch_norm=False, global_skip="bicubic"), TrainConfig(steps=2, no_gan=True, patch_size=32, batch_size=1), "cpu")
    state = {**trainer.state_dict(), "sampler_rng": torch.Generator().get_state(), "history": []}
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    torch.save(state, path)
    return path


def test_crafted_checkpoints_are_one_line(tmp_path):
    """The review's tracebacks: KeyError 'ema', scale 3, and a config asking for a huge network."""
    good = checkpoint_of(tmp_path / "good.ckpt")
    assert load_model(good).scale == 4
    cases = {
        "no_ema.ckpt": ({"ema": None}, "no 'ema' tensors"),
        "scale3.ckpt": ({"generator_config": {"scale": 3, "blocks": 1, "channels": 8, "batch_norm": False,
                                              "global_skip": "bicubic"}}, "scale must be one of (2, 4)"),
        "huge.ckpt": ({"generator_config": {"scale": 4, "blocks": 200, "channels": 1024, "batch_norm": False,
                                            "global_skip": "bicubic"}}, "does not match"),
        "no_train_config.ckpt": ({"train_config": None}, "it has no 'train_config'"),
        "bad_train_config.ckpt": ({"train_config": {"steps": 2, "wings": 4}}, "damaged vsr checkpoint"),
        "ema_not_tensors.ckpt": ({"ema": {"head.0.weight": "x"}}, "no 'ema' tensors"),
    }
    paths = {name: checkpoint_of(tmp_path / name, **changes) for name, (changes, _) in cases.items()}
    src = make_clip(tmp_path / "in.mp4", frames=2, size=(32, 24))
    for name, (_, fragment) in cases.items():
        r = CliRunner().invoke(main, ["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--weights", str(paths[name])])
        assert r.exit_code == 1, (name, r.output)
        assert fragment in " ".join(one_error_line(r.output).split()), (name, r.output)
    # `vsr models` goes on past every bad file: one line each, the good file and the bundled ones listed
    r = CliRunner().invoke(main, ["models", *map(str, paths.values()), str(good)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert sum(line.startswith("error:") for line in r.output.splitlines()) == len(cases), r.output
    assert "good.ckpt" in r.output and "SRResNet 1x8" in r.output


def test_resume_from_a_crafted_checkpoint_is_one_line(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=2, size=(48, 48))
    args = ["finetune", str(folder), "-o", str(tmp_path / "ft.safetensors"), "--steps", "1", "--no-gan",
            "--patch-size", "32", "--batch-size", "1", "--from", "scratch", "--blocks", "1", "--channels", "8",
            "--cache-dir", str(tmp_path / "cache")]
    for changes, fragment in (({"train_config": None}, "it has no 'train_config'"),
                              ({"opt_g": {"state": {}, "param_groups": []}}, "its training state does not fit"),
                              ({"sampler_rng": None}, "its training state does not fit")):
        path = checkpoint_of(tmp_path / "crafted.ckpt", **changes)
        r = CliRunner().invoke(main, [*args, "--resume", str(path)])
        assert r.exit_code == 1, r.output
        assert fragment in " ".join(one_error_line(r.output).split()), r.output
        assert not (tmp_path / "ft.safetensors").exists()


# ------------------------------------------------------------------- row 4: names mean what they say
def test_a_bundled_name_always_means_the_bundled_file(tmp_path, monkeypatch):
    bundled = weights_dir() / "vsr_x4_psnr.safetensors"
    if not bundled.is_file():
        pytest.skip("no bundled weights in this installation")
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "vsr_x4_psnr.safetensors"
    save_generator(local, tiny_generator(batch_norm=False, global_skip="bicubic"))
    for spec in ("vsr_x4_psnr", "vsr_x4_psnr.safetensors"):
        assert resolve_weights(spec) == bundled, spec
    assert resolve_weights("./vsr_x4_psnr.safetensors").resolve() == local  # a path is a path
    assert resolve_weights(str(local)) == local
    # what `vsr upscale` loads and records (a folder run's manifest keeps it) with no --weights, or a bare name
    from vsr.cli import file_digest, load_model as cli_load_model

    for weights in (None, "vsr_x4_psnr.safetensors"):
        _, model_id = cli_load_model("srgan", weights, None)
        assert model_id == f"vsr_x4_psnr.safetensors sha256:{file_digest(bundled)}", (weights, model_id)
    _, model_id = cli_load_model("srgan", "./vsr_x4_psnr.safetensors", None)
    assert model_id == f"vsr_x4_psnr.safetensors sha256:{file_digest(local)}"


# ------------------------------------------------------------------- what the attack review found next
def strided_zero(shape) -> torch.Tensor:
    """A tensor of ``shape`` over one float: a few bytes in a file, ``prod(shape)`` in a model."""
    return torch.zeros(1).as_strided(tuple(shape), [0] * len(shape))


def test_tensors_claiming_more_data_than_the_file_holds_cost_no_memory(tmp_path):
    """A 40x1024 checkpoint whose tensors are stride-0 views of one float (33 KB: 3.7 GB and exit 0
    before), and a 2 KB Real-ESRGAN Compact state dict claiming 8192 channels (3.1 GB)."""
    from vsr.model import GeneratorConfig

    config = GeneratorConfig(scale=4, blocks=40, channels=1024, batch_norm=False, global_skip="bicubic")
    fake = {k: strided_zero(shape) for k, shape in config.tensor_shapes().items()}
    ckpt = checkpoint_of(tmp_path / "x.ckpt", generator_config=json.loads(config.to_json()), generator=fake, ema=fake)
    from test_thirdparty import compact_state

    community = tmp_path / "c.pth"
    torch.save({"params_ema": {k: strided_zero(v.shape) for k, v in compact_state(nf=2048).items()}}, community)
    assert ckpt.stat().st_size < 200_000 and community.stat().st_size < 20_000
    result, peak_mib = run_measured(tmp_path, "models", ckpt, community)
    assert result.returncode == 1, result.stderr
    refused = [line for line in result.stderr.splitlines() if "a crafted file, not weights" in line]
    assert len(refused) == 2 and "Traceback" not in result.stderr, result.stderr
    assert peak_mib < 2048, f"peak RSS {peak_mib:.0f} MiB"


def test_resume_with_crafted_optimiser_tensors_is_one_line(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=2, size=(48, 48))
    from vsr.train import TrainConfig, Trainer

    trainer = Trainer(tiny_generator(batch_norm=False, global_skip="bicubic"), TrainConfig(steps=2, no_gan=True, patch_size=32,
                                                                                          batch_size=1), "cpu")
    opt = trainer.opt_g.state_dict()
    opt["state"] = {i: {"step": torch.tensor(1.0), "exp_avg": strided_zero(p.shape), "exp_avg_sq": strided_zero(p.shape)}
                    for i, p in enumerate(trainer.generator.parameters())}
    path = checkpoint_of(tmp_path / "opt.ckpt", opt_g=opt)
    r = CliRunner().invoke(main, ["finetune", str(folder), "-o", str(tmp_path / "ft.safetensors"), "--steps", "3", "--no-gan",
                                  "--resume", str(path), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 1, r.output
    assert "a crafted file, not weights" in one_error_line(r.output)


def test_weights_of_the_wrong_kind_of_numbers_are_one_line(tmp_path):
    """int8, complex, bool or NaN weights ran (exit 0, garbage frames) before."""
    model = tiny_generator(batch_norm=False, global_skip="bicubic")
    good = model.state_dict()
    cases = {"int8": ({k: v.to(torch.int8) for k, v in good.items()}, "is int8, expected floating point"),
             "complex": ({k: v.to(torch.complex64) for k, v in good.items()}, "is complex64, expected floating point"),
             "bool": ({k: v.bool() for k, v in good.items()}, "is bool, expected floating point"),
             "nan": ({k: torch.full_like(v, float("nan")) for k, v in good.items()}, "holds NaN or infinite values")}
    paths = {kind: checkpoint_of(tmp_path / f"{kind}.ckpt", ema=state) for kind, (state, _) in cases.items()}
    nan_safetensors = tmp_path / "nan.safetensors"
    save_file(cases["nan"][0], nan_safetensors, metadata={"vsr.format": FORMAT, "vsr.config": model.config.to_json()})
    for kind, (_, fragment) in cases.items():
        with pytest.raises(WeightsError, match=fragment):
            load_model(paths[kind])
    with pytest.raises(WeightsError, match="holds NaN or infinite values"):
        load_model(nan_safetensors)


def test_paths_that_are_not_weights_files_are_one_line(tmp_path):
    huge_header = tmp_path / "header.safetensors"
    length = 17 * 2**20
    huge_header.write_bytes(length.to_bytes(8, "little") + b"{" + b" " * length)
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    r = CliRunner().invoke(main, ["models", "/proc/self/mem", str(folder), str(huge_header)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    errors = [" ".join(line.split()) for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, r.output
    assert "cannot read '/proc/self/mem'" in errors[0]
    assert "is not a regular file" in errors[1]
    assert "its safetensors header is 17 MiB" in errors[2]
