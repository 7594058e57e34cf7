"""Where a compiled train step's FLOPs and bytes come from: its ops grouped by the code that made them.

Each top-level op of the optimised HLO (`hlo_cost`) is named by its metadata's op_name, which
carries the Flax module path (`ConvNeXt/stages_2/blocks_5/fc1`), the step's named scopes
(`teacher_weak`, `student`, `gram_loss`, `relation_loss`, `queue`, `ema`, `optimizer`,
`grad_norm`, `health`; `gelu`, `layer_scale` and `residual` inside a block) and the autodiff
transform (`transpose(...)`: the backward pass; `rematted_computation`: the forward recomputed
in it). From that each op gets:

  part  what computes it: 'stem', 'stage S <layer>' for a block's conv_dw, norm, fc1, gelu, fc2,
        layer_scale and residual, 'stage S downsampling', 'projection head', and the step's own
        parts (gram loss, relation loss, queue, EMA, optimiser, gradient norm, health, rng);
        'copies between memory spaces' for the compiler's unnamed prefetches of parameters.
  pass  'teachers' (both teachers' forwards), 'student fwd', 'student bwd' (the recomputed
        forward included), or 'step' for the step's own parts.

Rows are parts; their bytes and FLOPs sum to the ops' totals; one last row, 'not attributed',
holds what the compiler's own totals (`Compiled.cost_analysis()`) count beyond the ops' (XLA
counts the TPU's asynchronous copies its own way), so that the rows sum to the program's totals.
Each row's roofline time is the sum over its ops of max(FLOPs / peak, bytes / bandwidth): ops run
one after the other, each bound by its own limit. Beside XLA's bytes, each row has its bytes in
HBM (`hlo_cost`: on a TPU, operands the compiler prefetched to on-chip memory count once, in the
copy, not again in each consumer), and the roofline of those.
"""
import collections
from collections.abc import Iterable
import dataclasses
import re

from artstyle_jax.bench import chips
from artstyle_jax.bench import hlo_cost

PASSES = ("teachers", "student fwd", "student bwd", "step")
BLOCK_LAYERS = ("conv_dw", "norm", "fc1", "gelu", "fc2", "layer_scale", "residual")
STEP_PARTS = {"gram_loss": "gram loss", "relation_loss": "relation loss", "queue": "queue", "ema": "EMA",
              "optimizer": "optimiser", "grad_norm": "gradient norm", "health": "health"}
UNATTRIBUTED = "not attributed"
COPIES = "copies between memory spaces"

_STAGE = re.compile(r"\bstages_(\d+)\b")
_BLOCK_LAYER = re.compile(r"\bblocks_\d+/(\w+)")


def pass_of(op_name: str) -> str:
  """'teachers', 'student fwd', 'student bwd' or 'step' of an op's metadata op_name."""
  if "teacher_" in op_name:
    return "teachers"
  if "transpose(" in op_name:
    return "student bwd"
  if "student" in op_name:
    return "student fwd"
  return "step"


def part_of(op_name: str) -> str:
  """The part of the network or the step an op's metadata op_name belongs to."""
  if not op_name:
    return COPIES
  if "ProjectionHead" in op_name:
    return "projection head"
  if "ConvNeXt" in op_name:
    if "stem_" in op_name:
      return "stem"
    stages = _STAGE.findall(op_name)
    if not stages:
      return "backbone, other"
    stage = stages[-1]
    if "downsample_" in op_name:
      return f"stage {stage} downsampling"
    layers = [layer for layer in _BLOCK_LAYER.findall(op_name) if layer in BLOCK_LAYERS]
    return f"stage {stage} {layers[-1]}" if layers else f"stage {stage} block, other"
  for scope, part in STEP_PARTS.items():
    if re.search(rf"\b{scope}\b", op_name):
      return part
  if "threefry" in op_name or "random" in op_name:
    return "rng"
  return "step, other"


@dataclasses.dataclass
class Row:
  part: str
  bytes_by_pass: dict[str, float]
  flops: float
  roofline_s: float
  hbm_bytes: float = 0.0
  hbm_roofline_s: float = 0.0

  @property
  def bytes(self) -> float:
    return sum(self.bytes_by_pass.values())


def _order(part: str) -> tuple:
  stage = re.match(r"stage (\d+) (.*)", part)
  if part == "stem":
    return (0,)
  if stage:
    layer = stage.group(2)
    rank = (["downsampling"] + list(BLOCK_LAYERS) + ["block, other"]).index(layer)
    return (1, int(stage.group(1)), rank)
  tail = ["backbone, other", "projection head"] + list(STEP_PARTS.values()) + ["rng", "step, other", COPIES,
                                                                                UNATTRIBUTED]
  return (2, tail.index(part))


def rows(ops: Iterable[hlo_cost.Op], chip: chips.Chip, total_flops: float, total_bytes: float) -> list[Row]:
  """The ops grouped by part, in the network's order, then the 'not attributed' remainder of the
  compiler's totals (`total_flops`, `total_bytes`); bytes split by pass."""
  by_part: dict[str, Row] = {}
  for op in ops:
    row = by_part.setdefault(part_of(op.op_name), Row(part_of(op.op_name), collections.Counter(), 0.0, 0.0))
    row.bytes_by_pass[pass_of(op.op_name)] += op.bytes
    row.flops += op.flops
    row.roofline_s += max(op.flops / chip.peak_flops_per_s, op.bytes / chip.hbm_bytes_per_s)
    row.hbm_bytes += op.hbm_bytes
    row.hbm_roofline_s += max(op.flops / chip.peak_flops_per_s, op.hbm_bytes / chip.hbm_bytes_per_s)
  counted_bytes = sum(r.bytes for r in by_part.values())
  counted_flops = sum(r.flops for r in by_part.values())
  rest_bytes, rest_flops = total_bytes - counted_bytes, total_flops - counted_flops
  result = sorted(by_part.values(), key=lambda r: _order(r.part))
  result.append(Row(UNATTRIBUTED, collections.Counter({"step": rest_bytes}), rest_flops,
                    max(rest_flops / chip.peak_flops_per_s, rest_bytes / chip.hbm_bytes_per_s, 0.0),
                    0.0, max(rest_flops / chip.peak_flops_per_s, 0.0)))
  return result


def breakdown(hlo_text: str, chip: chips.Chip, total_flops: float, total_bytes: float) -> dict:
  """The compiled program's rows (`rows`) as JSON-able figures, with the per-op roofline time:
  {'rows': [{part, bytes, bytes_by_pass, flops, roofline_s, roofline_share}], 'counted_bytes',
  'counted_flops' (the ops' own totals), 'roofline_s' (sum of the rows')}."""
  ops = hlo_cost.top_level_ops(hlo_text)
  table = rows(ops, chip, total_flops, total_bytes)
  roofline_s = sum(r.roofline_s for r in table)
  hbm_bytes = sum(r.hbm_bytes for r in table)
  return {
      "counted_bytes": sum(op.bytes for op in ops), "counted_flops": sum(op.flops for op in ops),
      "roofline_s": roofline_s, "hbm_bytes": hbm_bytes,
      "hbm_roofline_s": sum(r.hbm_roofline_s for r in table),
      "hbm_step_s": max(total_flops / chip.peak_flops_per_s, hbm_bytes / chip.hbm_bytes_per_s),
      "rows": [{"part": r.part, "bytes": r.bytes, "bytes_by_pass": {p: r.bytes_by_pass.get(p, 0.0) for p in PASSES},
                "hbm_bytes": r.hbm_bytes, "flops": r.flops, "roofline_s": r.roofline_s,
                "roofline_share": r.roofline_s / roofline_s, "hbm_roofline_s": r.hbm_roofline_s}
               for r in table],
  }


def markdown(figures: dict) -> str:
  """A Markdown table of `breakdown`'s rows: GB by pass, GFLOP, roofline ms and share."""
  lines = ["| part | GB teachers | GB student fwd | GB student bwd | GB step | GB | GB in HBM | GFLOP | roofline ms "
           "| share | HBM roofline ms |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for row in figures["rows"]:
    by_pass = " | ".join(f"{row['bytes_by_pass'][p] / 1e9:.2f}" for p in PASSES)
    lines.append(f"| {row['part']} | {by_pass} | {row['bytes'] / 1e9:.2f} | {row['hbm_bytes'] / 1e9:.2f} | "
                 f"{row['flops'] / 1e9:.1f} | {row['roofline_s'] * 1e3:.2f} | {row['roofline_share']:.1%} | "
                 f"{row['hbm_roofline_s'] * 1e3:.2f} |")
  return "\n".join(lines)
