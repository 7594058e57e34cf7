"""FLOPs and bytes of each top-level op of a compiled (optimised) HLO module, from its text.

XLA's cost analysis (`Compiled.cost_analysis()`) gives a program's totals only. This module
counts the same quantities op by op from `Compiled.as_text()`, with the rules of XLA's
`HloCostAnalysis`, so that the totals can be split by where each op comes from (its metadata):

  bytes  a top-level op reads its operands and writes its result (an asynchronous copy or slice
         when it starts, reading the operand its start tuple holds); a fusion reads each operand
         once (only the sliced part of an operand it only slices) and writes its result (only the
         update of an in-place dynamic-update-slice). Shapes count their logical elements (no
         tile padding). Parameters, constants, tuples, get-tuple-element and bitcasts move
         nothing. `hbm_bytes` counts only the shapes in memory space 0: on a TPU the compiler
         places operands in on-chip memory (layouts marked S(1)) with asynchronous copies
         whose bytes XLA counts again in each consumer; what crosses the HBM bus is the copy
         once (its destination's bytes) and the shapes left in HBM.
  FLOPs  2 per multiply-add of a convolution or dot (only the kernel taps that fall inside the
         padded input), 1 per element of other arithmetic, 1 per input element of a reduce;
         transcendental functions (exp, log, erf, rsqrt, ...) are counted apart.

A while loop's body and condition are counted once, as XLA's analysis does.

  ops = hlo_cost.top_level_ops(compiled.as_text())
  sum(op.bytes for op in ops), sum(op.flops for op in ops)
"""
from collections.abc import Iterator
import dataclasses
import functools
import math
import re

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e5m2fnuz": 1,
    "f8e4m3fnuz": 1, "f8e4m3b11fnuz": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0,
}
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_LEAF = re.compile(r"(\w+)\[([\d,]*)\](?:\{([^{}]*)\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SOURCE = re.compile(r'source_file="([^"]*)" source_line=(\d+)')
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_GROUPS = re.compile(r"(feature_group_count|batch_group_count)=(\d+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")

_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id",
         "replica-id", "opt-barrier"}
_TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic", "erf",
                   "rsqrt", "sqrt", "cbrt", "power", "sine", "cosine", "tan", "atan2"}
_NO_FLOPS = {"broadcast", "reshape", "transpose", "copy", "slice", "dynamic-slice", "dynamic-update-slice",
             "concatenate", "pad", "iota", "reverse", "gather", "scatter", "bitcast-convert", "copy-start",
             "copy-done", "slice-start", "slice-done", "custom-call", "all-gather", "all-reduce", "reduce-scatter",
             "collective-permute", "all-to-all", "send", "recv", "send-done", "recv-done", "infeed", "outfeed",
             "sort", "rng-bit-generator", "get-dimension-size", "domain", "while", "conditional", "call", "fusion"}
_SLICES = {"slice", "dynamic-slice"}


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  shape: str  # the result's shape text, e.g. 'bf16[16,88,88,128]{3,2,1,0:T(8,128)(2,1)}' or a tuple
  operands: list[str]
  arguments: str  # the text between the opcode's parentheses (a parameter's number)
  attributes: str  # everything after the operand list
  op_name: str
  source: str  # 'file:line' of the op's Python source, '' when the metadata has none

  @property
  def called(self) -> list[str]:
    return _CALLS.findall(self.attributes)


@dataclasses.dataclass
class Op:
  """One top-level op of the entry computation (or of a while loop's body) with its cost."""
  name: str
  opcode: str
  op_name: str  # metadata op_name: the op's, a fusion's heaviest fused op's, or the consumer's (`_labels`)
  source: str
  flops: float
  transcendentals: float
  bytes: float
  hbm_bytes: float  # the part of `bytes` in HBM (`hbm_shape_bytes`): what crosses the HBM bus


def shape_bytes(shape: str) -> float:
  """Bytes of a shape's logical elements; a tuple's leaves summed, layouts ignored."""
  shape = re.sub(r"\{[^{}]*\}", "", re.sub(r"\{[^{}]*\{[^{}]*\}[^{}]*\}", "", shape))
  return sum(_DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(shape))


def hbm_shape_bytes(shape: str) -> float:
  """Bytes of a shape's leaves in memory space 0 (HBM): leaves whose layout names another space,
  S(1) and up (a TPU's on-chip memories), are left out."""
  return sum(_DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims, layout in _LEAF.findall(shape) if not _ON_CHIP.search(layout))


def _dims(shape: str) -> list[int]:
  match = _ARRAY.search(shape)
  return [int(d) for d in match.group(2).split(",") if d] if match else []


def _elements(shape: str) -> int:
  return math.prod(_dims(shape))


def _split_shape(rest: str) -> tuple[str, str]:
  """'SHAPE opcode(...)...' -> (SHAPE, 'opcode(...)...'), SHAPE possibly a parenthesised tuple."""
  if rest.startswith("("):
    depth = 0
    for index, char in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(char, 0)
      if depth == 0:
        return rest[:index + 1], rest[index + 2:]
  shape, _, tail = rest.partition(" ")
  return shape, tail


def _split_operands(tail: str) -> tuple[str, str, str]:
  """'opcode(%a, %b), attrs' -> (opcode, '%a, %b', 'attrs')."""
  opcode, _, rest = tail.partition("(")
  depth, index = 1, 0
  for index, char in enumerate(rest):
    depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(char, 0)
    if depth == 0:
      break
  return opcode, rest[:index], rest[index + 1:]


def parse(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """The module's computations by name, each its instructions in order, and the entry's name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = "", None
  for line in text.splitlines():
    if current is None:
      match = _COMPUTATION.match(line)
      if match and "=" not in line.split("(")[0]:
        current = computations.setdefault(match.group(1), [])
        entry = match.group(1) if line.startswith("ENTRY") else entry
      continue
    if line.startswith("}"):
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    shape, tail = _split_shape(match.group(2))
    opcode, arguments, attributes = _split_operands(tail)
    op_name = _OP_NAME.search(attributes)
    source = _SOURCE.search(attributes)
    current.append(Instruction(match.group(1), opcode, shape, re.findall(r"%([\w.\-]+)", arguments), arguments,
                               attributes,
                               op_name.group(1) if op_name else "",
                               f"{source.group(1)}:{source.group(2)}" if source else ""))
  return computations, entry


@functools.lru_cache(maxsize=None)
def _valid_pairs(output: int, kernel: int, input_size: int, stride: int, pad_low: int, lhs_dilation: int,
                 rhs_dilation: int) -> int:
  """(output position, kernel tap) pairs of one spatial dimension whose input lies in the image."""
  dilated = (input_size - 1) * lhs_dilation + 1
  count = 0
  for o in range(output):
    for k in range(kernel):
      position = o * stride + k * rhs_dilation - pad_low
      count += 0 <= position < dilated and position % lhs_dilation == 0
  return count


def _window_field(window: str, key: str, rank: int, default: int) -> list[str]:
  match = re.search(rf"\b{key}=([\d_x\-]+)", window)
  return match.group(1).split("x") if match else [str(default)] * rank


def convolution_flops(instruction: Instruction, operand_shapes: list[str]) -> float:
  """2 x the multiply-adds of a convolution, counting only taps inside the (padded) input."""
  lhs_labels, _, out_labels = _DIM_LABELS.search(instruction.attributes).groups()
  lhs, out = _dims(operand_shapes[0]), _dims(instruction.shape)
  groups = dict(_GROUPS.findall(instruction.attributes))
  feature_groups, batch_groups = int(groups.get("feature_group_count", 1)), int(groups.get("batch_group_count", 1))
  window = _WINDOW.search(instruction.attributes)
  window = window.group(1) if window else ""
  spatial = [c for c in lhs_labels if c.isdigit()]
  sizes = _window_field(window, "size", len(spatial), 1)
  strides = _window_field(window, "stride", len(spatial), 1)
  pads = _window_field(window, "pad", len(spatial), 0)
  lhs_dilations = _window_field(window, "lhs_dilate", len(spatial), 1)
  rhs_dilations = _window_field(window, "rhs_dilate", len(spatial), 1)
  pairs = 1
  for index, dim in enumerate(spatial):
    pad_low = int(pads[index].split("_")[0]) if "_" in pads[index] else int(pads[index])
    pairs *= _valid_pairs(out[out_labels.index(dim)], int(sizes[index]), lhs[lhs_labels.index(dim)],
                          int(strides[index]), pad_low, int(lhs_dilations[index]), int(rhs_dilations[index]))
  input_features = lhs[lhs_labels.index("f")]
  output_features = out[out_labels.index("f")]
  batch = lhs[lhs_labels.index("b")]
  return 2.0 * (input_features / feature_groups) * output_features * (batch / batch_groups) * pairs


def dot_flops(instruction: Instruction, operand_shapes: list[str]) -> float:
  contracting = _CONTRACTING.search(instruction.attributes)
  lhs = _dims(operand_shapes[0])
  size = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d) if contracting else 1
  return 2.0 * _elements(instruction.shape) * size


def _arithmetic(instruction: Instruction, shapes: dict[str, str]) -> tuple[float, float]:
  """(FLOPs, transcendentals) of one instruction that is not a fusion or a loop."""
  operand_shapes = [shapes.get(o, "") for o in instruction.operands]
  if instruction.opcode == "convolution":
    return convolution_flops(instruction, operand_shapes), 0.0
  if instruction.opcode == "dot":
    return dot_flops(instruction, operand_shapes), 0.0
  if instruction.opcode in ("reduce", "reduce-window", "select-and-scatter"):
    return float(sum(_elements(s) for s in operand_shapes[:max(1, len(operand_shapes) // 2)])), 0.0
  if instruction.opcode in _FREE or instruction.opcode in _NO_FLOPS:
    return 0.0, 0.0
  elements = float(_elements(instruction.shape))
  return (0.0, elements) if instruction.opcode in _TRANSCENDENTAL else (elements, 0.0)


def _fusion_bytes(instruction: Instruction, fused: list[Instruction], shapes: dict[str, str],
                  size=shape_bytes) -> float:
  """A fusion's operand reads (sliced parts only where a parameter is only sliced) and result
  writes, each shape's bytes as `size` counts them (`shape_bytes`, or `hbm_shape_bytes`)."""
  by_index = {int(inner.arguments): inner.name for inner in fused if inner.opcode == "parameter"}
  users: dict[str, list[Instruction]] = {}
  for inner in fused:
    for operand in inner.operands:
      users.setdefault(operand, []).append(inner)
  root = fused[-1]
  in_place = root.opcode == "dynamic-update-slice"
  total = 0.0
  for index, operand in enumerate(instruction.operands):
    parameter = by_index.get(index)
    uses = users.get(parameter, [])
    if in_place and uses == [root] and root.operands[0] == parameter:
      continue
    if uses and all(u.opcode in _SLICES and u.operands[0] == parameter for u in uses):
      total += sum((size(u.shape) if size(shapes.get(operand, '')) else 0.0) for u in uses)
    else:
      total += size(shapes.get(operand, ""))
  if in_place:
    fused_shapes = {i.name: i.shape for i in fused}
    return total + (size(fused_shapes.get(root.operands[1], "")) if size(instruction.shape) else 0.0)
  return total + size(instruction.shape)


def _heaviest(fused: list[Instruction], fallback: Instruction) -> Instruction:
  """The fused op that names a fusion: its convolution or dot, else its root, else the fusion."""
  for inner in fused:
    if inner.opcode in ("convolution", "dot") and inner.op_name:
      return inner
  for inner in reversed(fused):
    if inner.op_name and inner.opcode not in _FREE:
      return inner
  return fallback


def _fused_arithmetic(computations, name: str) -> tuple[float, float]:
  fused = computations[name]
  shapes = {i.name: i.shape for i in fused}
  flops = transcendentals = 0.0
  for inner in fused:
    if inner.opcode == "fusion":
      f, t = _fused_arithmetic(computations, inner.called[0])
    else:
      f, t = _arithmetic(inner, shapes)
    flops, transcendentals = flops + f, transcendentals + t
  return flops, transcendentals


def _labels(computations, instructions: list[Instruction]) -> dict[str, tuple[str, str]]:
  """(op_name, source) of each instruction: its own metadata's (a fusion's: its heaviest fused
  op's); an op without metadata (a layout copy, a prefetch of a parameter) takes those of the
  nearest op downstream that has them, whose operand it prepares."""
  labels = {}
  for instruction in instructions:
    named = instruction
    if instruction.opcode == "fusion":
      named = _heaviest(computations[instruction.called[0]], instruction)
    labels[instruction.name] = (named.op_name, named.source)
  users: dict[str, list[str]] = {}
  for instruction in instructions:
    for operand in instruction.operands:
      users.setdefault(operand, []).append(instruction.name)
  for instruction in reversed(instructions):
    if not labels[instruction.name][0]:
      labels[instruction.name] = next(
          (labels[u] for u in users.get(instruction.name, ()) if labels[u][0]), labels[instruction.name])
  return labels


def _ops(computations, name: str, parent: tuple[str, str] = ("", "")) -> Iterator[Op]:
  instructions = computations[name]
  shapes = {i.name: i.shape for i in instructions}
  labels = _labels(computations, instructions)
  for instruction in instructions:
    op_name, source = labels[instruction.name] if labels[instruction.name][0] else parent
    if instruction.opcode in ("while", "conditional", "call"):
      for called in instruction.called:
        yield from _ops(computations, called, (op_name, source))
      continue
    if instruction.opcode in _FREE:
      continue
    if instruction.opcode == "fusion":
      flops, transcendentals = _fused_arithmetic(computations, instruction.called[0])
      fused = computations[instruction.called[0]]
      size = _fusion_bytes(instruction, fused, shapes)
      hbm = _fusion_bytes(instruction, fused, shapes, hbm_shape_bytes)
    else:
      flops, transcendentals = _arithmetic(instruction, shapes)
      if instruction.opcode.endswith("-done"):
        size = hbm = 0.0  # Its start moved the bytes.
      elif instruction.opcode.endswith("-start"):
        # The start's tuple holds the source (or its alias), the destination and a context: XLA
        # counts the tuple; the transfer crosses HBM once, with the destination's bytes.
        size = shape_bytes(instruction.shape)
        hbm = _moved_bytes(instruction)
      else:
        size = shape_bytes(instruction.shape) + sum(shape_bytes(shapes.get(o, "")) for o in instruction.operands)
        hbm = hbm_shape_bytes(instruction.shape) + sum(hbm_shape_bytes(shapes.get(o, "")) for o in instruction.operands)
    yield Op(instruction.name, instruction.opcode, op_name, source, flops, transcendentals, size, hbm)


def _moved_bytes(start: Instruction) -> float:
  """Bytes an asynchronous copy or slice moves: its destination, the tuple's first array leaf
  after the (possibly nested) source."""
  leaves = _LEAF.findall(start.shape.removeprefix("(("))
  if start.shape.startswith("(("):  # ((source), destination, context)
    source_leaves = _LEAF.findall(start.shape[2:start.shape.index(")")])
    leaves = leaves[len(source_leaves):]
  destination = leaves[0]
  return _DTYPE_BYTES.get(destination[0], 4) * math.prod(int(d) for d in destination[1].split(",") if d)


def top_level_ops(text: str) -> list[Op]:
  """Every op of the module's entry computation that costs something, with its FLOPs and bytes."""
  computations, entry = parse(text)
  return list(_ops(computations, entry))
