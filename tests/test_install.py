"""Installed as users install it: a real wheel, a fresh virtual environment, run from another folder."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import make_clip

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with vsr's wheel installed.  Its dependencies (torch is gigabytes) come from this
    interpreter's site-packages through a .pth line; a .pth listed that way is not a site folder, so
    a development (editable) install of vsr there does not leak in."""
    if not (REPO / "weights").is_dir():
        pytest.skip("needs the repository checkout")
    root = tmp_path_factory.mktemp("install")
    had_build = (REPO / "build").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist")], check=True, cwd=root)
    if not had_build:  # setuptools builds in the source tree; leave the checkout as it was
        shutil.rmtree(REPO / "build", ignore_errors=True)
    (wheel,) = (root / "dist").glob("vsr-*.whl")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return env_dir


def test_wheel_in_a_fresh_venv_upscales_with_its_bundled_weights_from_any_folder(venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    make_clip(work / "clip.mp4", frames=2, size=(32, 24))
    env = {k: v for k, v in os.environ.items() if k not in ("VSR_WEIGHTS_DIR", "PYTHONPATH")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import vsr, vsr.weights as w; "
                            "print(vsr.__file__); print(w.weights_dir())"],
                           capture_output=True, text=True, check=True, cwd=work, env=env).stdout.split()
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)), where  # not the checkout
    res = subprocess.run([str(venv / "bin" / "vsr"), "upscale", "clip.mp4", "-q"], capture_output=True, text=True,
                         cwd=work, env=env)
    assert res.returncode == 0, res.stderr
    assert (work / "clip_x4.mp4").stat().st_size > 0
    res = subprocess.run([str(venv / "bin" / "vsr"), "models"], capture_output=True, text=True, cwd=work, env=env)
    assert res.returncode == 0 and "vsr_x4_psnr" in res.stdout and "vsr_x2_psnr" in res.stdout
