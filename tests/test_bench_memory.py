"""bench memory: XLA's memory analysis of the compiled train step and the largest batch it allows."""
import json
import types

from jax.experimental import topologies
import pytest

from artstyle_jax.bench import memory

GIB = 2**30


def test_line_through_the_peaks_gives_bytes_per_image_and_the_largest_batch():
  """Peaks of 1 GiB + 0.5 GiB per image: 30 images fit in 16 GiB, 31 do not."""
  fit = memory.fit_line({8: 5 * GIB, 16: 9 * GIB, 32: 17 * GIB}, limit_bytes=16 * GIB)
  assert fit["bytes_per_image"] == pytest.approx(0.5 * GIB)
  assert fit["fixed_bytes"] == pytest.approx(1 * GIB)
  assert fit["max_batch_per_device"] == 30


def test_line_needs_two_batch_sizes():
  with pytest.raises(ValueError, match="two batch sizes"):
    memory.fit_line({8: 5 * GIB}, limit_bytes=16 * GIB)


def test_memory_of_the_tiny_step_grows_with_the_batch_and_prints_json_last(capsys):
  """Two compiles of the tiny config's step on the 8 test devices: the per-device peak grows
  with the batch, the state (fixed part) is positive, and the JSON line is last."""
  assert memory.main(["memory", "--config=configs/tiny.py", "--config.model.depthwise=conv",
                      "--batch_sizes=1,2", "--limit_gib=1"]) == 0
  figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert figures["num_devices"] == 8 and figures["topology"] is None
  assert figures["forms"] == {"depthwise": "conv", "mlp_grad": "manual", "patchify": "matmul",
                              "compiled_kernels": False}  # this CPU's, the depthwise form as asked
  peaks = {b: m["peak_bytes"] for b, m in figures["memory_by_batch"].items()}
  assert peaks["2"] > peaks["1"] > 0
  assert figures["bytes_per_image"] == pytest.approx(peaks["2"] - peaks["1"])
  assert figures["fixed_bytes"] > 0
  assert figures["max_batch_per_device"] == int((GIB - figures["fixed_bytes"]) // figures["bytes_per_image"])


def test_topology_without_libtpu_is_refused_with_the_install_command(monkeypatch):
  def no_tpu_support(**kwargs):
    raise RuntimeError("JAX TPU support not installed; cannot generate TPU topology.")

  monkeypatch.setattr(topologies, "get_topology_desc", no_tpu_support)
  with pytest.raises(SystemExit, match=r"needs libtpu \(pip install 'jax\[tpu\]'\)"):
    memory.main(["memory", "--config=configs/tiny.py", "--topology=v5e:2x2"])


def test_libtpu_held_by_another_process_is_named_as_such(monkeypatch):
  def locked(**kwargs):
    raise RuntimeError("ABORTED: Internal error when accessing libtpu multi-process lockfile.")

  monkeypatch.setattr(topologies, "get_topology_desc", locked)
  with pytest.raises(SystemExit, match="another process holds libtpu"):
    memory.main(["memory", "--config=configs/tiny.py", "--topology=v5e:2x2"])


def test_more_devices_than_the_topology_has_are_refused_before_compiling(monkeypatch):
  """--num_devices picks the first chips of --topology: outside [1, chips] is an error naming the range."""
  four_chips = types.SimpleNamespace(devices=[object()] * 4)
  monkeypatch.setattr(topologies, "get_topology_desc", lambda **kwargs: four_chips)
  with pytest.raises(SystemExit, match=r"--num_devices must be in \[1, 4\] for v5e:2x2"):
    memory.main(["memory", "--config=configs/tiny.py", "--topology=v5e:2x2", "--num_devices=5"])
