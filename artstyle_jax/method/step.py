"""Student and teacher forwards and the dual-teacher train step (artstyle_jax/METHOD.md, steps 1 to 7).

Typical use (train.py, bench):

  mesh = sharding.create_mesh(config.mesh.fsdp)
  backbone, head = step.build_backbone(config, mesh), step.build_head(config)
  optimizer, schedule = optim.create(config, steps_per_epoch)
  state, shardings = step.create_state(rng, config, backbone, head, optimizer, mesh)
  train_step = step.compile_train_step(
      step.make_train_step(config, backbone, head, optimizer, schedule, mesh=mesh), shardings, mesh)
  state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
"""
from collections.abc import Callable, Mapping
import functools
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from artstyle_jax.method import config_lib
from artstyle_jax.method import health
from artstyle_jax.method import losses
from artstyle_jax.method import sharding
from artstyle_jax.method import state as state_lib
from artstyle_jax.models import convnext
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import forms as forms_lib
from artstyle_jax.models import heads

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def model_forms(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None, *,
                platform: str | None = None) -> forms_lib.Forms:
  """The forms `config.model` asks for (depthwise, mlp_grad, patchify; 'auto' or a form), chosen
  for `platform` when given (a lowering platform: 'tpu', 'cuda', ...), else for the platform of
  `mesh`'s devices (default: all devices, as `sharding.create_mesh`'s)."""
  if platform is None:
    platform = forms_lib.platform_of(jax.devices()[0] if mesh is None else mesh)
  return forms_lib.resolve(platform, config_lib.compute_dtype(config), **config_lib.requested_forms(config))


def build_backbone(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None, *,
                   platform: str | None = None) -> nn.Module:
  """The backbone named by `config.model`: a ConvNeXt (compute dtype, remat and its policy,
  drop-path) or an EfficientNet-Lite (compute dtype, drop-path; frozen BatchNorm,
  `efficientnet_lite`), in the forms for `platform` or the platform of `mesh`'s devices
  (`model_forms`)."""
  if config.model.name in efficientnet_lite.SIZES:
    return efficientnet_lite.create(config.model.name, dtype=config_lib.compute_dtype(config),
                                    drop_path_rate=config.model.drop_path_rate,
                                    forms=model_forms(config, mesh, platform=platform))
  return convnext.create(
      config.model.name,
      dtype=config_lib.compute_dtype(config),
      remat=config.model.remat,
      remat_policy=config.model.remat_policy,
      drop_path_rate=config.model.drop_path_rate,
      forms=model_forms(config, mesh, platform=platform),
  )


def build_head(config: ml_collections.ConfigDict) -> heads.ProjectionHead:
  return heads.ProjectionHead(
      hidden_dim=config.model.proj_hidden_dim, out_dim=config.model.proj_dim, dtype=config_lib.compute_dtype(config))


def forward(
    backbone: nn.Module,
    head: nn.Module,
    params: state_lib.Params,
    images: jax.Array,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """One network (student or teacher) on a batch of views.

  Args:
    params: {'backbone': ..., 'head': ...}.
    images: (B, S, S, 3) float32, normalised.
    train: stochastic layers (drop-path) active; `rng` required when the rate is positive.

  Returns:
    f: (B, S/32, S/32, C) last-stage feature map, in the compute dtype.
    z: (B, D) float32 L2-normalised embedding of the pooled map.
  """
  rngs = None if rng is None else {"dropout": rng}
  f = backbone.apply({"params": params["backbone"]}, images, train=train, rngs=rngs)[-1]
  z = head.apply({"params": params["head"]}, convnext.pool(f))
  return f, z


def _relation_loss(config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  if config.loss.relation == "info_nce":
    return functools.partial(losses.info_nce_loss, temperature=config.loss.info_nce_temp)
  return functools.partial(
      losses.relation_alignment_loss, student_temp=config.loss.student_temp, teacher_temp=config.loss.teacher_temp)


def health_metrics(config: ml_collections.ConfigDict, f_student: jax.Array, z_student: jax.Array,
                   targets: Mapping[str, tuple[jax.Array, jax.Array]], queue: jax.Array) -> Metrics:
  """Feature-health signals of one step from its own tensors (`evaluators.health`).

  Args:
    f_student: (B, h, w, C) the student's last-stage map.
    z_student: (B, D) the student's embeddings.
    targets: {view: (f_t, z_t)} of each teacher.
    queue: (K, D) the queue the relation loss compared against.

  Returns:
    'health/pooled_rank' and 'health/proj_rank' (effective ranks of the batch's pooled features
    and embeddings, at most B - 1), 'health/proj_std' (std of the normalised embeddings,
    1/sqrt(D) healthy, 0 collapsed), and per teacher view 'health/cos_<view>' (mean cosine of
    student and teacher embeddings) and, with the relation loss, 'health/entropy_<view>' (the
    teacher's softmax over the queue, nats, log K uniform).
  """
  f_student, z_student, targets, queue = jax.lax.stop_gradient((f_student, z_student, targets, queue))
  signals = {"health/pooled_rank": health.effective_rank(convnext.pool(f_student), via_gram=True),
             "health/proj_rank": health.effective_rank(z_student, via_gram=True),
             "health/proj_std": health.normalised_std(z_student)}
  for view, (_, z_t) in targets.items():
    signals[f"health/cos_{view}"] = health.mean_cosine(z_student, z_t)
    if config.loss.relation != "info_nce":
      signals[f"health/entropy_{view}"] = health.softmax_entropy(
          health.queue_logits(z_t, queue, config.loss.teacher_temp))
  return signals


def make_train_step(
    config: ml_collections.ConfigDict,
    backbone: nn.Module,
    head: nn.Module,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    preprocess: Callable[[Batch], Batch] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[state_lib.TrainState, Batch], tuple[state_lib.TrainState, Metrics]]:
  """`train_step(state, batch) -> (state, metrics)`, pure, for `jax.jit`.

  The batch holds float32 views 'student', 'weak' and (with a style teacher) 'style', each
  (B, S, S, 3), after `preprocess` (default identity) has run on it inside the step. Loss terms
  are named rel_weak, rel_style, gram_weak, gram_style ('rel' is InfoNCE when
  `config.loss.relation` is 'info_nce'); every term of a present teacher is computed and
  reported, those of weight 0 carry no gradient. The style terms and the style view are absent
  without a style teacher. Metrics: 'loss', the terms, 'lr' (this step's rate), 'grad_norm'
  (global L2 norm of the loss gradient, before weight decay), and the feature-health signals of
  `health_metrics`.

  With a `mesh` whose `fsdp` axis is larger than 1, each network's parameters are gathered
  (all-gathered from their FSDP shards) where it runs, so that activations stay split over the
  batch alone; gradients return to the parameters' sharding through the step's out_shardings.
  `config` is one `config_lib.validate` has passed, as the programs' runs do before they build it.
  """
  momenta = state_lib.teacher_momenta(config)
  weights = {term: float(config.loss_weights[term]) for term in config_lib.LOSS_TERMS}
  views = ("weak", "style") if config.style_teacher else ("weak",)
  relation_loss = _relation_loss(config)
  gather = mesh is not None and mesh.shape[sharding.FSDP_AXIS] > 1

  def gathered(params):
    return jax.lax.with_sharding_constraint(params, sharding.replicated(mesh)) if gather else params

  def train_step(state: state_lib.TrainState, batch: Batch) -> tuple[state_lib.TrainState, Metrics]:
    if preprocess is not None:
      batch = preprocess(batch)
    # 1. EMA of the teachers towards the student as it is at the start of the step.
    with jax.named_scope("ema"):
      teachers = {name: state_lib.ema_update(state.teachers[name], state.params, m) for name, m in momenta.items()}
    # 2. Teacher forwards (outside the differentiated function: no gradient reaches them).
    teacher_params = {"weak": teachers["weak"], "style": state_lib.style_teacher_params(teachers)}
    targets = {}
    for view in views:
      with jax.named_scope(f"teacher_{view}"):
        targets[view] = forward(backbone, head, gathered(teacher_params[view]), batch[view])
    rng, dropout_rng = jax.random.split(state.rng)

    # 3-5. Student forward and the weighted loss terms against each teacher.
    def loss_fn(params):
      with jax.named_scope("student"):
        f_s, z_s = forward(backbone, head, gathered(params), batch["student"], train=True, rng=dropout_rng)
      terms = {}
      for view, (f_t, z_t) in targets.items():
        with jax.named_scope("relation_loss"):
          terms[f"rel_{view}"] = relation_loss(z_s, z_t, state.queue)
        with jax.named_scope("gram_loss"):
          terms[f"gram_{view}"] = losses.gram_alignment_loss(f_s, f_t)
      loss = sum(weights[term] * value for term, value in terms.items() if weights[term])
      return loss, (terms, f_s, z_s)

    (loss, (terms, f_s, z_s)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # 6. Optimiser step on the student.
    with jax.named_scope("optimizer"):
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    # 7. Enqueue the teachers' keys of the global batch: z_w, then z_y.
    queue, queue_ptr = state.queue, state.queue_ptr
    with jax.named_scope("queue"):
      for view in views:
        queue, queue_ptr = state_lib.enqueue(queue, queue_ptr, targets[view][1])

    new_state = state.replace(
        step=state.step + 1, params=params, teachers=teachers, opt_state=opt_state,
        queue=queue, queue_ptr=queue_ptr, rng=rng)
    with jax.named_scope("grad_norm"):
      grad_norm = optax.tree.norm(grads)
    with jax.named_scope("health"):
      signals = health_metrics(config, f_s, z_s, targets, state.queue)
    metrics = {"loss": loss, **terms, "lr": schedule(state.step), "grad_norm": grad_norm, **signals}
    return new_state, metrics

  return train_step


def create_state(
    rng: jax.Array,
    config: ml_collections.ConfigDict,
    backbone: nn.Module,
    head: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    backbone_params: Any = None,
) -> tuple[state_lib.TrainState, state_lib.TrainState]:
  """A fresh TrainState created directly with its shardings on `mesh`; returns (state, shardings)."""
  create = functools.partial(state_lib.create, config=config, backbone=backbone, head=head, optimizer=optimizer)
  abstract = jax.eval_shape(create, rng, backbone_params=backbone_params)
  shardings = sharding.state_sharding(abstract, mesh, config.mesh.fsdp_min_size)
  state = jax.jit(create, out_shardings=shardings)(rng, backbone_params=backbone_params)
  return state, shardings


def compile_train_step(train_step: Callable, state_shardings: state_lib.TrainState, mesh: jax.sharding.Mesh):
  """`jax.jit` of a train step: batch over the mesh's devices, state as `state_shardings`,
  metrics replicated, the input state's buffers donated."""
  return jax.jit(
      train_step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  )
