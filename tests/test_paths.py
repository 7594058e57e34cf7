"""paths: what users type (relative, ~, gs://) becomes what the programs use (absolute, or the URL)."""
import os

from absl import flags
import pytest

from artstyle_jax import cli
from artstyle_jax.method import config_lib
from artstyle_jax.storage import paths
from helpers import config_path


def test_relative_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("run") == str(tmp_path / "run")
  assert paths.resolve("./a/../b/") == str(tmp_path / "b")
  assert paths.resolve(tmp_path / "c") == str(tmp_path / "c")


def test_home_is_expanded(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  assert paths.resolve("~/data") == str(tmp_path / "data")


@pytest.mark.parametrize("url", ["gs://bucket/run", "s3://b/x/y", "file:///tmp/x"])
def test_urls_stay_as_they_are(url):
  assert paths.is_url(url)
  assert paths.resolve(url) == url


def test_none_and_empty_stay_as_they_are():
  assert paths.resolve(None) is None
  assert paths.resolve("") == ""


def test_path_flags_resolve_values_and_defaults(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  flag_values = flags.FlagValues()
  workdir = cli.DEFINE_path("workdir", "default_dir", "a path", flag_values=flag_values)
  entries = cli.DEFINE_multi_path("entry", None, "paths", flag_values=flag_values)
  flag_values(["prog"])
  assert workdir.value == str(tmp_path / "default_dir")
  flag_values(["prog", "--workdir=run", "--entry=a", "--entry=gs://b/c"])
  assert workdir.value == str(tmp_path / "run")
  assert entries.value == [str(tmp_path / "a"), "gs://b/c"]
  assert os.path.isabs(workdir.value)


def test_config_paths_resolve_where_the_config_is_validated(tmp_path, monkeypatch):
  """dataset.data_dir and an init naming a local file become absolute in validate (and so in the
  config.json a run saves); a Hugging Face hub id, 'random' and gs:// stay as they are."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "weights.safetensors").write_bytes(b"")
  tiny = config_path("tiny")
  config = config_lib.load(tiny, ["dataset.data_dir=tfds", "init=weights.safetensors"])
  assert (config.dataset.data_dir, config.init) == (str(tmp_path / "tfds"), str(tmp_path / "weights.safetensors"))
  for init, data_dir in (("timm/convnext_atto.d2_in1k", "gs://bucket/tfds"), ("random", "gs://bucket/tfds")):
    config = config_lib.load(tiny, [f"dataset.data_dir={data_dir}", f"init={init}"])
    assert (config.dataset.data_dir, config.init) == (data_dir, init)


def test_write_atomically_replaces_the_whole_file_and_leaves_no_staging_file(tmp_path):
  target = tmp_path / "results.json"
  paths.write_atomically(str(target), b"first")
  paths.write_atomically(target, b"second, longer")
  assert target.read_bytes() == b"second, longer"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
