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

`StepProgram` is the train step over abstract state and batch, which the benchmarks also compile
(bench memory, cost and step); `with_batch` gives a config another global batch.
"""
import collections
from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import state as state_lib
from artstyle_jax.method import step
from artstyle_jax.models import forms as forms_lib
from artstyle_jax.models import heads

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


class StepProgram:
  """The config's train step on `mesh`, lowered from abstract shapes; the network in the forms
  of `platform` when given (a program lowered here for another platform), else of the mesh's."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str | None = None):
    self.config, self.mesh = config, mesh
    sharding.check_batch_divides(config.batch_size, mesh)
    backbone, head = step.build_backbone(config, mesh, platform=platform), step.build_head(config)
    self.forms = backbone.forms
    optimizer, schedule = optim.create(config, steps_per_epoch=1000)
    self.create = functools.partial(
        step.create_state, config=config, backbone=backbone, head=head, optimizer=optimizer, mesh=mesh)
    abstract_state = jax.eval_shape(
        functools.partial(state_lib.create, config=config, backbone=backbone, head=head, optimizer=optimizer),
        jax.random.PRNGKey(0))
    self.state_shardings = sharding.state_sharding(abstract_state, mesh, config.mesh.fsdp_min_size)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, self.state_shardings)
    views = ("student", "weak", "style") if config.style_teacher else ("student", "weak")
    shape = (config.batch_size, config.image_size, config.image_size, 3)
    self.views = views
    self.abstract_batch = {
        v: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding.batch_sharding(mesh)) for v in views}
    train_step = step.make_train_step(config, backbone, head, optimizer, schedule, mesh=mesh)
    self.jitted = step.compile_train_step(train_step, self.state_shardings, mesh)

  def lower(self):
    return self.jitted.lower(self.abstract_state, self.abstract_batch)

  def random_batch(self) -> dict[str, jax.Array]:
    shape = (self.config.batch_size, self.config.image_size, self.config.image_size, 3)

    @functools.partial(jax.jit, out_shardings=sharding.batch_sharding(self.mesh))
    def make(key):
      keys = jax.random.split(key, len(self.views))
      return {v: jax.random.normal(k, shape, jnp.float32) for v, k in zip(self.views, keys)}

    return make(jax.random.PRNGKey(1))


def with_batch(config: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
  """The config at another global batch; the queue grows to the next multiple of it if needed."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.batch_size = batch_size
  config.queue_size = math.ceil(config.queue_size / batch_size) * batch_size
  return config_lib.validate(config)


def train_step_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str) -> Program:
  """The config's train step on `mesh` as train.py compiles it, the network in `platform`'s forms."""
  program = StepProgram(config, mesh, platform=platform)
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
  shape = (features.extraction_batch_size(config, mesh), config.image_size, config.image_size, 3)
  return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding.batch_sharding(mesh))


def features_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str) -> Program:
  """Eval's and predict's feature function at eval's extraction batch, in `platform`'s forms."""
  backbone, params = _backbone_and_params(config, mesh, platform)
  return Program("features", features.make_feature_fn(backbone, mesh), (params, _abstract_images(config, mesh)),
                 backbone.forms)


def predict_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str) -> Program:
  """Predict's style probabilities: the pooled features through the saved linear probe, softmax."""
  backbone, params = _backbone_and_params(config, mesh, platform)

  def style_probabilities(backbone_params, probe: heads.LinearHead, images: jax.Array) -> jax.Array:
    pooled = features.pooled(backbone, {"params": backbone_params}, images)
    return jax.nn.softmax(heads.linear_logits(probe, pooled), axis=-1)

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
