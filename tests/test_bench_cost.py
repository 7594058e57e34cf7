"""bench cost: the roofline of the train step from the chips' published peaks and XLA's analyses,
for a TPU compiled without one (libtpu) and for a GPU from the step lowered on this host."""
import json
import os
import types

import jax
from jax.experimental import topologies
import pytest

from artstyle_jax.bench import chips
from artstyle_jax.bench import cost
from artstyle_jax.bench import memory
from artstyle_jax.models import forms

GIB = 2**30
TINY = ["--config=configs/tiny.py", "--config.image_size=32", "--config.model.dtype=bfloat16"]
CHIP = chips.Chip("test chip", ("Test",), peak_flops_per_s=100e12, hbm_bytes_per_s=1e12, hbm_bytes=16 * GIB)


def test_roofline_is_the_longer_of_compute_and_memory_time():
  """1 PFLOP at 100 TFLOP/s is 10 s, 2 TB at 1 TB/s 2 s: compute-bound, 10 s per step of 64
  images on 2 devices; 0.8 PFLOP of it the model's: MFU ceiling 0.8 / (10 * 2 * 0.1) = 0.4."""
  bound = chips.roofline(CHIP, flops_per_device=1e15, bytes_per_device=2e12, model_flops=0.8e15,
                         global_batch=64, num_devices=2)
  assert bound["compute_s"] == pytest.approx(10.0) and bound["memory_s"] == pytest.approx(2.0)
  assert bound["step_s"] == pytest.approx(10.0) and bound["bound"] == "compute"
  assert bound["images_per_s"] == pytest.approx(6.4) and bound["mfu_ceiling"] == pytest.approx(0.4)
  memory_bound = chips.roofline(CHIP, flops_per_device=1e14, bytes_per_device=4e12, model_flops=1e14,
                                global_batch=8, num_devices=1)
  assert memory_bound["bound"] == "memory" and memory_bound["step_s"] == pytest.approx(4.0)
  assert memory_bound["mfu_ceiling"] == pytest.approx(0.25)


def test_chips_are_found_by_topology_and_by_device_kind():
  assert chips.tpu_of_topology("v5e:2x2").name == "TPU v5e" and chips.tpu_of_topology("v4:2x2x1").name == "TPU v4"
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
    chips.tpu_of_topology("v9:2x2")
  kind = lambda name: types.SimpleNamespace(device_kind=name)
  assert chips.chip_of(kind("TPU v5 lite")) is chips.TPUS["v5e"]
  assert chips.chip_of(kind("TPU v5")) is chips.TPUS["v5p"]
  assert chips.chip_of(kind("NVIDIA H100 80GB HBM3")) is chips.GPUS["h100"]
  assert chips.chip_of(kind("NVIDIA H100 PCIe")) is chips.GPUS["h100-pcie"]
  assert chips.chip_of(kind("NVIDIA H200")) is chips.GPUS["h200"]
  assert chips.chip_of(kind("cpu")) is None


def test_gpu_cost_comes_from_the_step_lowered_here_in_the_gpus_forms(capsys):
  assert cost.main(["cost", *TINY, "--config.model.remat=True", "--gpu=h200", "--batch_sizes=1,2"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["chip"] == "H200 SXM" and result["estimate"] == cost.GPU_ESTIMATE
  assert result["forms"] == forms.PLAIN.as_dict()
  one, two = result["by_batch"]["1"], result["by_batch"]["2"]
  assert two["flops_per_device"] > one["flops_per_device"] > 0
  assert one["flops_per_device"] > one["model_flops"] > 0  # remat recomputes the forward
  assert one["step_s"] == max(one["compute_s"], one["memory_s"])
  assert one["images_per_s"] == pytest.approx(1 / one["step_s"])
  assert result["max_batch_per_device"] > 2


def test_tpu_path_compiles_each_batch_and_fits_the_memory_line(monkeypatch, capsys):
  """The --topology path with this host's devices standing in for the TPU's (libtpu is not needed
  to check what it computes from the compiled step): two compiles, the line, the roofline."""
  monkeypatch.setattr(memory, "topology_devices", lambda name: jax.devices()[:1])
  assert cost.main(["cost", *TINY, "--config.model.depthwise=conv", "--topology=v5e:2x2",
                    "--batch_sizes=1,2"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["chip"] == "TPU v5e" and result["num_devices"] == 1 and result["estimate"] == cost.TPU_ESTIMATE
  peaks = {b: f["peak_bytes"] for b, f in result["by_batch"].items()}
  assert peaks["2"] > peaks["1"] > 0
  assert result["bytes_per_image"] == pytest.approx(peaks["2"] - peaks["1"])
  assert result["max_batch_per_device"] == int((16 * GIB - result["fixed_bytes"]) // result["bytes_per_image"])
  for figures in result["by_batch"].values():
    assert figures["flops_per_device"] > 0 and figures["model_flops"] > 0 and 0 < figures["mfu_ceiling"]


def test_one_target_is_required(capsys):
  """Neither or both of --topology and --gpu: exit status 1 and one error line naming both."""
  for target in ((), ("--topology=v5e:2x2", "--gpu=h100")):
    with pytest.raises(SystemExit) as exit_info:
      cost.main(["cost", *TINY, *target])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: give one of --topology (a Cloud TPU, e.g. v5e:2x2) or --gpu (e.g. h100)"]


def _libtpu_installed() -> bool:
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  try:
    topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
  except RuntimeError:
    return False
  return True


@pytest.mark.skipif(not _libtpu_installed(), reason="libtpu is not installed (pip install 'jax[tpu]'); the "
                    "TPU path's arithmetic is tested above with this host's devices")
def test_a_deviceless_tpu_compile_gives_the_tpus_forms_and_figures(capsys):
  assert cost.main(["cost", *TINY, "--topology=v5e:2x2", "--batch_sizes=1,2"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["forms"] == forms.PLAIN.as_dict()
  assert all(f["flops_per_device"] > 0 and f["peak_bytes"] > 0 for f in result["by_batch"].values())
