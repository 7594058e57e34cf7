"""bench cost: the roofline of the train step from the chips' published peaks and XLA's analyses,
for a TPU compiled without one (libtpu) and for a GPU from the step lowered on this host."""
import json
import os
import types

import jax
from jax.experimental import topologies
import jax.numpy as jnp
import pytest

from artstyle_jax.bench import breakdown
from artstyle_jax.bench import chips
from artstyle_jax.bench import cost
from artstyle_jax.bench import hlo_cost
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


def test_gpu_cost_comes_from_the_step_lowered_here_in_the_gpus_forms(capsys, tmp_path):
  out = tmp_path / "cost.json"
  assert cost.main(["cost", *TINY, "--config.model.remat=True", "--gpu=h200", "--batch_sizes=1,2", f"--out={out}"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert json.loads(out.read_text()) == result
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


def _xla_cost(compiled) -> tuple[float, float, float]:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return analysis["flops"], analysis["bytes accessed"], analysis["transcendentals"]


def test_op_by_op_counts_add_up_to_xlas_totals():
  """A matmul, GELU, a padded depthwise convolution (only taps inside the image count) and a
  reduction, forward and backward, compiled here: the ops' FLOPs, transcendentals and bytes
  sum to XLA's cost analysis of the program within 0.5%."""
  def f(x, w, k):
    y = jax.nn.gelu(x @ w).reshape(2, 8, 8, 16)
    z = jax.lax.conv_general_dilated(y, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=16)
    return jnp.sum(jnp.exp(z))

  args = (jnp.ones((128, 32)), jnp.ones((32, 16)), jnp.ones((7, 7, 1, 16)))
  for program in (jax.jit(f), jax.jit(jax.grad(f, argnums=(0, 1, 2)))):
    compiled = program.lower(*args).compile()
    ops = hlo_cost.top_level_ops(compiled.as_text())
    flops, bytes_accessed, transcendentals = _xla_cost(compiled)
    assert sum(op.flops for op in ops) == pytest.approx(flops, rel=5e-3)
    assert sum(op.bytes for op in ops) == pytest.approx(bytes_accessed, rel=5e-3)
    assert sum(op.transcendentals for op in ops) == pytest.approx(transcendentals, rel=5e-3)


def test_ops_are_named_by_the_part_and_pass_that_make_them():
  names = {
      "jit(train_step)/teacher_style/ConvNeXt/stages_2/checkpoint/blocks_4/fc1/dot_general": ("stage 2 fc1", "teachers"),
      "jit(train_step)/jvp(student)/ConvNeXt/stages_0/blocks_1/gelu/erf": ("stage 0 gelu", "student fwd"),
      ("jit(train_step)/transpose(jvp(student))/ConvNeXt/stages_3/jvp(student)/ConvNeXt/stages_3/checkpoint/"
       "rematted_computation/blocks_1/conv_dw/conv_general_dilated"): ("stage 3 conv_dw", "student bwd"),
      "jit(train_step)/transpose(jvp(student))/ConvNeXt/stages_1/downsample_norm/mul": ("stage 1 downsampling",
                                                                                       "student bwd"),
      "jit(train_step)/jvp(student)/ConvNeXt/stem_conv/conv_general_dilated": ("stem", "student fwd"),
      "jit(train_step)/transpose(jvp(gram_loss))/dot_general": ("gram loss", "student bwd"),
      "jit(train_step)/ema/add": ("EMA", "step"),
      "jit(train_step)/optimizer/mul": ("optimiser", "step"),
      "": (breakdown.COPIES, "step"),
  }
  for op_name, (part, pass_name) in names.items():
    assert (breakdown.part_of(op_name), breakdown.pass_of(op_name)) == (part, pass_name), op_name


def test_breakdown_rows_sum_to_the_programs_totals_and_name_every_part(monkeypatch, capsys):
  """--breakdown on the TPU path with this host's devices (the accelerators' forms): rows whose
  bytes and FLOPs sum to the compiled program's totals, all but a sliver counted op by op; every
  part of the network and of the step has a row, and every pass moves bytes."""
  monkeypatch.setattr(memory, "topology_devices", lambda name: jax.devices()[:1])
  accelerator_forms = ["--config.model.depthwise=conv", "--config.model.mlp_grad=autodiff",
                       "--config.model.patchify=conv"]
  assert cost.main(["cost", *TINY, *accelerator_forms, "--topology=v5e:2x2", "--batch_sizes=2", "--breakdown"]) == 0
  out = capsys.readouterr().out
  figures = json.loads(out.strip().splitlines()[-1])["by_batch"]["2"]
  rows = {row["part"]: row for row in figures["breakdown"]["rows"]}
  assert sum(r["bytes"] for r in rows.values()) == pytest.approx(figures["bytes_accessed_per_device"], rel=1e-9)
  assert sum(r["flops"] for r in rows.values()) == pytest.approx(figures["flops_per_device"], rel=1e-9)
  assert abs(rows[breakdown.UNATTRIBUTED]["bytes"]) < 0.01 * figures["bytes_accessed_per_device"]
  assert abs(rows[breakdown.UNATTRIBUTED]["flops"]) < 0.01 * figures["flops_per_device"]
  assert sum(r["roofline_share"] for r in rows.values()) == pytest.approx(1.0)
  layers = [f"stage {s} {layer}" for s in range(4) for layer in ("conv_dw", "norm", "fc1", "gelu", "fc2")]
  for part in ["stem", *layers, "stage 1 downsampling", "stage 3 downsampling", "projection head", "gram loss",
               "relation loss", "queue", "EMA", "optimiser", "gradient norm"]:
    assert rows[part]["bytes"] > 0, part
  assert rows["stage 0 fc1"]["flops"] > 0 and rows["stage 3 conv_dw"]["flops"] > 0
  for pass_name in ("teachers", "student fwd", "student bwd"):
    assert rows["stage 2 fc1"]["bytes_by_pass"][pass_name] > 0, pass_name
  assert "| stage 2 conv_dw |" in out and figures["breakdown"]["mfu_ceiling"] > 0
  # A CPU has one memory space: every byte of its ops is in "HBM".
  assert figures["breakdown"]["hbm_bytes"] == pytest.approx(figures["breakdown"]["counted_bytes"])


def test_bytes_in_hbm_leave_out_on_chip_shapes_and_count_a_copy_once():
  """Shapes as a TPU's compiled HLO writes them: a layout marked S(1) is on-chip memory; an
  asynchronous copy's tuple (destination, source, context) and slice's ((source), destination,
  context) move their destination's bytes across HBM once, though XLA counts the whole tuple."""
  assert hlo_cost.hbm_shape_bytes("bf16[16,22,22,512]{3,2,1,0:T(8,128)(2,1)}") == 16 * 22 * 22 * 512 * 2
  assert hlo_cost.hbm_shape_bytes("f32[512,2048]{1,0:T(8,128)S(1)}") == 0
  copy = "(f32[512,2048]{1,0:T(8,128)S(1)}, f32[512,2048]{1,0:T(8,128)}, u32[]{:S(2)})"
  piece = "((f32[512,2048]{1,0:T(8,128)}), f32[128,2048]{1,0:T(8,128)S(1)}, s32[]{:S(2)})"
  text = "\n".join(["HloModule m", "", "ENTRY %main (p: f32[512,2048]) -> f32[512,2048] {",
                    "  %p = f32[512,2048]{1,0:T(8,128)} parameter(0)",
                    f"  %copy-start = {copy} copy-start(%p)",
                    "  %copy-done = f32[512,2048]{1,0:T(8,128)S(1)} copy-done(%copy-start)",
                    f"  %slice-start = {piece} slice-start(%p), slice={{[0:128], [0:2048]}}",
                    "  ROOT %slice-done = f32[128,2048]{1,0:T(8,128)S(1)} slice-done(%slice-start)", "}"])
  ops = {op.name: op for op in hlo_cost.top_level_ops(text)}
  assert ops["copy-start"].hbm_bytes == 512 * 2048 * 4 and ops["copy-start"].bytes == 2 * 512 * 2048 * 4 + 4
  assert ops["slice-start"].hbm_bytes == 128 * 2048 * 4
  assert ops["copy-done"].bytes == ops["copy-done"].hbm_bytes == 0


def test_breakdown_needs_a_tpu_topology(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cost.main(["cost", *TINY, "--gpu=h100", "--breakdown"])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.splitlines() == [
      "error: --breakdown needs --topology or --at_hand on a TPU: it reads the compiled program, which only the "
      "TPU path has"]


def test_one_target_is_required(capsys):
  """None or two of --topology, --gpu and --at_hand: exit status 1 and one error line naming them."""
  for target in ((), ("--topology=v5e:2x2", "--gpu=h100"), ("--gpu=h100", "--at_hand")):
    with pytest.raises(SystemExit) as exit_info:
      cost.main(["cost", *TINY, *target])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: give one of --topology (a Cloud TPU, e.g. v5e:2x2), --gpu (e.g. h100) or --at_hand"]


def test_at_hand_needs_an_accelerator_of_the_chips_table(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cost.main(["cost", *TINY, "--at_hand"])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.splitlines() == [
      "error: --at_hand needs a TPU or GPU of bench.chips; JAX's default device is cpu"]


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
