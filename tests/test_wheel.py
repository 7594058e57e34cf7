"""The package works installed from a wheel, without the clone: the wheel ships the configs and the
specification (artstyle_jax/configs, artstyle_jax/METHOD.md), and the shortened demo runs in a fresh
virtual environment from an empty directory on its packaged default config.

Nothing is downloaded: the wheel is built without build isolation, installed without dependencies,
and the fresh environment reads its dependencies from this test environment's site-packages."""
import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

from helpers import SHORT_DEMO

REPO = pathlib.Path(__file__).resolve().parents[1]
# Not the clone (PYTHONPATH), not the user's site-packages: only what the fresh environment holds.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONNOUSERSITE": "1",
       "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(*command, **kwargs):
  result = subprocess.run([str(c) for c in command], env=ENV, capture_output=True, text=True, timeout=600, **kwargs)
  assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
  return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel, built from a copy of the project's files so that the build writes nothing into the clone."""
  tmp = tmp_path_factory.mktemp("wheel")
  source = tmp / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, source / name)
  for name in ("artstyle_jax", "configs"):  # artstyle_jax/configs is a link to configs/, kept as a link.
    shutil.copytree(REPO / name, source / name, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
  _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
       "-w", tmp / "dist", source)
  built, = (tmp / "dist").glob("*.whl")
  return built


@pytest.fixture(scope="module")
def python(wheel, tmp_path_factory):
  """The interpreter of a fresh virtual environment with the wheel installed."""
  venv = tmp_path_factory.mktemp("venv")
  _run(sys.executable, "-m", "venv", "--without-pip", venv)
  interpreter = venv / "bin" / "python"
  _run(sys.executable, "-m", "pip", "--python", interpreter, "install", "--no-deps", "--no-index", "-q", wheel)
  # The dependencies, after the install so that pip never sees (nor offers to replace) this
  # environment's own install of the project: a .pth line adds a directory to sys.path without
  # running the .pth files in it, so an editable install's import hook there stays out.
  purelib = _run(interpreter, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
  pathlib.Path(purelib, "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  return interpreter


def test_the_wheel_ships_the_configs_and_the_specification(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  assert {f"artstyle_jax/configs/{p.name}" for p in (REPO / "configs").glob("*.py")} <= names
  assert "artstyle_jax/METHOD.md" in names


def test_the_installed_demo_runs_from_an_empty_directory(python, tmp_path):
  """`python -m artstyle_jax.demo --workdir=demo` (README's command, shortened) where there is no
  clone: the package is imported from the fresh environment, the default config from inside it."""
  empty = tmp_path / "empty"
  empty.mkdir()
  where = _run(python, "-c", "import artstyle_jax; from artstyle_jax.method import config_lib; "
               "print(artstyle_jax.__file__); print(config_lib.packaged_config('demo.py'))", cwd=empty)
  package, config = map(pathlib.Path, where.stdout.split())
  venv = python.parents[1]
  assert package.is_relative_to(venv) and config.is_relative_to(venv)
  assert config.is_file() and not config.is_symlink() and config.parent.name == "configs"

  result = subprocess.run([str(python), "-m", "artstyle_jax.demo", "--workdir=demo", *SHORT_DEMO], cwd=empty, env=ENV,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert os.listdir(empty) == ["demo"]
  results = json.loads((empty / "demo" / "demo_results.json").read_text())
  assert (results["model"], results["pretrain_steps"], results["pretrained"]["step"]) == ("efficientnet_lite0", 2, 2)
  assert results["pretrained"]["results_dir"] == str(empty / "demo" / "pretrain" / "eval")
  assert (empty / "demo" / "pretrain" / "checkpoints" / "2").is_dir()
  assert (empty / "demo" / "pretrain" / "eval" / "linear_fast.json").is_file()
  assert "pretrained from init (step 2)" in result.stdout
