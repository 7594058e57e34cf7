"""The device programs of train, eval and predict, lowered here for a TPU or a GPU, exported and scanned.

No accelerator is needed: `jax.export` lowers a program for other platforms than this host's,
with the network in those platforms' forms (`forms.resolve`), over a mesh of this host's devices
that stands for theirs (the shardings, FSDP included, are the program's; the devices are not).

  program = train_step_program(config, mesh, platform="tpu")
  exported = export(program, platforms=("tpu", "cuda"))
  findings = scan(exported.mlir_module())

Programs:
  train_step  the train step as train.py compiles it (state, batch of views) -> (state, metrics)
  features    eval's and predict's pooled-feature function (`features.make_feature_fn`):
              (backbone params, images (B, S, S, 3)) -> (B, C) float32
  predict     the style probabilities predict computes from those features with the probe eval
              saved: (backbone params, probe, images) -> (B, K) float32
"""
from collections.abc import Callable, Sequence
import collections
import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from artstyle_jax import eval as eval_lib
from artstyle_jax import features
from artstyle_jax import sharding
from artstyle_jax import step
from artstyle_jax.bench import step as bench_step
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.models import forms as forms_lib

PROGRAMS = ("train_step", "features", "predict")
# Custom-call targets of this package's kernels (`models/cpu/kernels.py`): XLA:CPU only.
OWN_TARGET_PREFIX = "artstyle_"
# WikiArt's 27 styles: the probe's classes in the predict program.
PROBE_CLASSES = 27


@dataclasses.dataclass(frozen=True)
class Program:
  """A jitted device program with abstract arguments (shapes, dtypes, shardings) to lower it on."""
  name: str
  jitted: Any  # jax.jit's wrapped function
  args: tuple
  forms: forms_lib.Forms


def train_step_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str) -> Program:
  """The config's train step on `mesh` as train.py compiles it, the network in `platform`'s forms."""
  program = bench_step.StepProgram(config, mesh, platform=platform)
  return Program("train_step", program.jitted, (program.abstract_state, program.abstract_batch), program.forms)


def _backbone_and_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str):
  """The backbone in `platform`'s forms and its abstract parameters, replicated (as eval restores them)."""
  backbone = step.build_backbone(config, mesh, platform=platform)
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), images, train=False)["params"])
  replicated = sharding.replicated(mesh)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)
  return backbone, params


def _abstract_images(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> jax.ShapeDtypeStruct:
  """Eval's and predict's image batch: (B, S, S, 3) float32 over the mesh's devices."""
  shape = (eval_lib.extraction_batch_size(config, mesh), config.image_size, config.image_size, 3)
  return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding.batch_sharding(mesh))


def features_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str) -> Program:
  """Eval's and predict's feature function at eval's extraction batch, in `platform`'s forms."""
  backbone, params = _backbone_and_params(config, mesh, platform)
  return Program("features", features.make_feature_fn(backbone, mesh), (params, _abstract_images(config, mesh)),
                 backbone.forms)


def predict_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str) -> Program:
  """Predict's style probabilities: the pooled features through the saved linear probe, softmax."""
  backbone, params = _backbone_and_params(config, mesh, platform)

  def style_probabilities(backbone_params, probe: linear_probe.Head, images: jax.Array) -> jax.Array:
    pooled = features.pooled(backbone, {"params": backbone_params}, images)
    return jax.nn.softmax(linear_probe.apply_head(probe, pooled), axis=-1)

  channels = backbone.dims[-1]
  replicated = sharding.replicated(mesh)
  probe = {"kernel": jax.ShapeDtypeStruct((channels, PROBE_CLASSES), jnp.float32, sharding=replicated),
           "bias": jax.ShapeDtypeStruct((PROBE_CLASSES,), jnp.float32, sharding=replicated)}
  jitted = jax.jit(style_probabilities, out_shardings=sharding.batch_sharding(mesh))
  return Program("predict", jitted, (params, probe, _abstract_images(config, mesh)), backbone.forms)


BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, jax.sharding.Mesh, str], Program]] = {
    "train_step": train_step_program, "features": features_program, "predict": predict_program}


def export(program: Program, platforms: Sequence[str]) -> jax.export.Exported:
  """`jax.export` of the program for `platforms` (e.g. ('tpu', 'cuda')); raises where a custom
  call is not one every platform has."""
  return jax.export.export(program.jitted, platforms=tuple(platforms))(*program.args)


@dataclasses.dataclass(frozen=True)
class Findings:
  """What a StableHLO module computes with, as far as the accelerators' checks go."""
  custom_call_targets: tuple[str, ...]  # every target, sorted, once each
  convolution_dtypes: dict[str, int]  # result element type ('bf16', 'f32', ...) -> count
  dot_general_dtypes: dict[str, int]
  element_types: tuple[str, ...]  # every tensor element type in the module, sorted

  @property
  def own_custom_calls(self) -> tuple[str, ...]:
    """Targets of this package's CPU kernels."""
    return tuple(t for t in self.custom_call_targets if t.startswith(OWN_TARGET_PREFIX))

  @property
  def host_callbacks(self) -> tuple[str, ...]:
    """Targets that call back into the Python host (jax.pure_callback, io_callback, debug prints)."""
    return tuple(t for t in self.custom_call_targets if "callback" in t)


_CUSTOM_CALL = re.compile(r"custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]+)\"")
_RESULT_TYPE = re.compile(r"->\s*tensor<(?:[^>]*x)?(\w+)>")
_ELEMENT_TYPE = re.compile(r"tensor<(?:[0-9?]+x)*(\w+)>")


def _result_dtypes(text: str, op: str) -> dict[str, int]:
  lines = (line for line in text.splitlines() if f"stablehlo.{op}" in line)
  return dict(collections.Counter(match.group(1) for line in lines if (match := _RESULT_TYPE.search(line))))


def scan(stablehlo_text: str) -> Findings:
  """The custom calls, the convolutions' and matmuls' dtypes and every element type of a module."""
  targets = {a or b for a, b in _CUSTOM_CALL.findall(stablehlo_text)}
  return Findings(
      custom_call_targets=tuple(sorted(targets)),
      convolution_dtypes=_result_dtypes(stablehlo_text, "convolution"),
      dot_general_dtypes=_result_dtypes(stablehlo_text, "dot_general"),
      element_types=tuple(sorted(set(_ELEMENT_TYPE.findall(stablehlo_text)))),
  )
