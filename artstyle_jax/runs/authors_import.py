"""The conversion of a checkpoint of the authors' PyTorch code into a new workdir that eval,
predict and train use (`import_checkpoint`).

The file is `torch.save({'model': state_dict, 'optimizer': SGD state_dict, 'epoch': int})`
(artstyle_jax/METHOD.md, "Other accidents in the published code"; read by
`models.authors_checkpoint`). It becomes the TrainState of a fresh workdir, written as
config.json and checkpoints/<step>/ with the single item 'state':

  net.net.<timm features-only key>, head_q.*      -> params (the student)
  encoder_k.net.*, head_k.*                       -> teachers['weak'] (teacher W)
  encoder_style.net.*, head_style.*               -> teachers['style'] (teacher S); when the two
                                                     teachers are identical one copy serves both
  queue (D, K), queue_ptr (1,) int64              -> queue (K, D), queue_ptr () int32
  the student's SGD momentum buffers              -> the momentum trace of opt_state (zero where
                                                     torch has none: torch starts a buffer at
                                                     the first gradient, which equals a zero one)
  epoch                                           -> step = epoch * iters_per_epoch

The config is the one given, with what the checkpoint fixes: model.name (the ConvNeXt size, from
the backbone's shapes), model.proj_hidden_dim and model.proj_dim (from the heads), queue_size
(K), optim.momentum and optim.weight_decay (from the SGD state unless overridden), and
share_teachers=False when the two teachers differ. An override that contradicts the
checkpoint's shapes is refused. The teachers' momenta are the config's.

Step. 'epoch' counts the epochs the authors' run completed (their loop resumes at it), so the
imported run stands at `epoch * iters_per_epoch`, iters_per_epoch being what train.py will count:
the training split's size // batch_size, read from the config's dataset when it names a
directory; otherwise it is given, or the step itself is. The optimiser's step count in
opt_state is set to the same step, so the learning rate schedule continues where the authors'
stopped (for the same batch size, epochs and warm-up). The drop-path PRNG key is
`fold_in(PRNGKey(config.seed), step)`.
"""
from collections.abc import Mapping, Sequence
import functools
import shlex
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from artstyle_jax.data import pipeline
from artstyle_jax.data import sources
from artstyle_jax.method import config_lib
from artstyle_jax.method import optim
from artstyle_jax.method import state as state_lib
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import convnext_weights
from artstyle_jax.models.authors_checkpoint import model_name
from artstyle_jax.models.authors_checkpoint import NETWORK_PREFIXES
from artstyle_jax.models.authors_checkpoint import read
from artstyle_jax.models.authors_checkpoint import TorchCheckpoint
from artstyle_jax.models.authors_checkpoint import TorchNetwork
from artstyle_jax.models.torch_weights import CheckpointError
from artstyle_jax.models.torch_weights import describe
from artstyle_jax.storage import checkpoints


def checkpoint_config(
    checkpoint: TorchCheckpoint, config: ml_collections.ConfigDict, overridden: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """`config` with what the checkpoint fixes (see the module docstring), validated.

  Args:
    overridden: the dotted keys the user set on the command line. Those of optim.momentum and
      optim.weight_decay win over the checkpoint; those of the state's shapes must agree with it.

  Raises:
    CheckpointError: an override contradicts the checkpoint.
    ConfigError: the resulting config is unusable (e.g. K not a multiple of batch_size).
  """
  try:
    module, _ = convnext_weights.from_timm(checkpoint.networks["student"].backbone)
  except ValueError as e:
    raise CheckpointError(f"the student backbone {NETWORK_PREFIXES['student'][0]}* is not a timm ConvNeXt: {e}") from e
  hidden_dim, _ = checkpoint.networks["student"].head["linear.weight"].shape
  proj_dim, queue_size = checkpoint.queue.shape
  fixed = {
      "model.name": model_name(module.depths, module.dims),
      "model.proj_hidden_dim": hidden_dim,
      "model.proj_dim": proj_dim,
      "queue_size": queue_size,
  }
  if not checkpoint.networks["weak"].equals(checkpoint.networks["style"]):
    fixed["share_teachers"] = False
  trained_with = {"optim.momentum": checkpoint.sgd_momentum, "optim.weight_decay": checkpoint.weight_decay}

  config = config.copy_and_resolve_references()
  contradicting = [f"--config.{key}={_get(config, key)!r} (the checkpoint has {value!r})"
                   for key, value in fixed.items() if key in overridden and _get(config, key) != value]
  if contradicting:
    raise CheckpointError(f"overrides contradict the checkpoint: {'; '.join(contradicting)}"
                          + ("; its two teachers differ, so they need two copies" if "share_teachers" in fixed
                             and "share_teachers" in overridden else ""))
  for key, value in {**trained_with, **fixed}.items():
    if key not in overridden:
      _set(config, key, value)
  return config_lib.validate(config)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  *parents, leaf = dotted.split(".")
  for part in parents:
    config = config[part]
  return config[leaf]


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


def train_steps_per_epoch(config: ml_collections.ConfigDict) -> int | None:
  """Steps per epoch as train.py counts them (the training split's size // batch_size); None when
  the config names no dataset directory."""
  if not config.dataset.data_dir:
    return None
  try:
    source = sources.open_split(config.dataset.name, config.dataset.data_dir, config.dataset.train_split)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  return pipeline.steps_per_epoch(len(source), config.batch_size)


def import_step(checkpoint: TorchCheckpoint, config: ml_collections.ConfigDict, *,
                iters_per_epoch: int | None = None, step: int | None = None) -> int:
  """The imported state's step: `step` when given, else `epoch * iters_per_epoch` (0 at epoch 0),
  iters_per_epoch defaulting to what train.py will count on the config's dataset."""
  if step is not None and iters_per_epoch is not None:
    raise CheckpointError("give either --step or --iters_per_epoch, not both")
  if step is not None:
    if step < 0:
      raise CheckpointError(f"--step must be non-negative, got {step}")
    return step
  if checkpoint.epoch == 0:
    return 0
  if iters_per_epoch is None:
    iters_per_epoch = train_steps_per_epoch(config)
  if iters_per_epoch is None:
    raise CheckpointError(f"the checkpoint is at epoch {checkpoint.epoch}; to know the step, give "
                          "--config.dataset.data_dir (steps per epoch as train.py counts them), --iters_per_epoch "
                          "or --step")
  if iters_per_epoch < 1:
    raise CheckpointError(f"--iters_per_epoch must be positive, got {iters_per_epoch}")
  return checkpoint.epoch * iters_per_epoch


def _head_params(head: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """torch Linear (out, in) weights as flax Dense (in, out) kernels."""
  return {layer: {"kernel": np.ascontiguousarray(head[f"{layer}.weight"].T), "bias": head[f"{layer}.bias"]}
          for layer in ("linear", "out")}


def to_state(checkpoint: TorchCheckpoint, config: ml_collections.ConfigDict, step: int) -> state_lib.TrainState:
  """The TrainState of `config` (from `checkpoint_config`) holding the checkpoint at `step`.

  Raises:
    CheckpointError: the converted arrays do not have the shapes of the config's state.
  """
  backbone, head = step_lib.build_backbone(config), step_lib.build_head(config)
  # The optimiser state's structure does not depend on the schedule's length.
  optimizer, _ = optim.create(config, steps_per_epoch=1)

  def network(n: TorchNetwork, name: str):
    try:
      backbone_params = convnext_weights.params_from_timm(backbone, n.backbone)
    except ValueError as e:
      raise CheckpointError(f"{NETWORK_PREFIXES[name][0]}* does not fit {config.model.name}: {e}") from e
    return {"backbone": backbone_params, "head": _head_params(n.head)}

  params = network(checkpoint.networks["student"], "student")
  opt_state = optax.tree_utils.tree_set(
      optimizer.init(params), trace=network(checkpoint.momentum, "student"), count=jnp.asarray(step, jnp.int32))
  state = state_lib.TrainState(
      step=jnp.asarray(step, jnp.int32),
      params=params,
      teachers={name: network(checkpoint.networks[name], name) for name in state_lib.teacher_names(config)},
      opt_state=opt_state,
      queue=jnp.asarray(checkpoint.queue.T),
      queue_ptr=jnp.asarray(checkpoint.queue_ptr, jnp.int32),
      rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
  )
  state = jax.tree.map(jnp.asarray, state)
  abstract = jax.eval_shape(functools.partial(
      state_lib.create, config=config, backbone=backbone, head=head, optimizer=optimizer), jax.random.PRNGKey(0))
  _check_fits(state, abstract)
  return state


def _check_fits(state: state_lib.TrainState, abstract: state_lib.TrainState) -> None:
  got = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: (x.shape, x.dtype), state))
  want = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: (x.shape, x.dtype), abstract))
  def names(leaves):
    return {jax.tree_util.keystr(path) for path, _ in leaves[0]}

  if jax.tree.structure(state) != jax.tree.structure(abstract):
    raise CheckpointError(f"the converted state's layout differs from the model's: it has "
                          f"{describe(names(got) - names(want)) or 'nothing'} extra and lacks "
                          f"{describe(names(want) - names(got)) or 'nothing'}")
  differing = [f"{jax.tree_util.keystr(path)} {g} (model {w})"
               for (path, g), (_, w) in zip(got[0], want[0]) if g != w]
  if differing:
    raise CheckpointError(f"converted arrays differ in shape or dtype from the model's: {describe(differing, 4)}")


def check_new_workdir(workdir: str) -> None:
  """Raises WorkdirError when the workdir already holds a config or checkpoints."""
  path = epath.Path(workdir)
  checkpoint_dir = path / checkpoints.CHECKPOINT_DIR
  if (path / checkpoints.CONFIG_FILE).exists() or (checkpoint_dir.exists() and any(checkpoint_dir.iterdir())):
    raise checkpoints.WorkdirError(f"{workdir} already holds a run ({checkpoints.CONFIG_FILE} or checkpoints); "
                                   "import into a new --workdir (nothing was overwritten)")


def import_checkpoint(
    path: str,
    workdir: str,
    config: ml_collections.ConfigDict,
    overridden: Sequence[str] = (),
    *,
    iters_per_epoch: int | None = None,
    step: int | None = None,
) -> tuple[ml_collections.ConfigDict, state_lib.TrainState]:
  """Converts the authors' checkpoint at `path` into a new `workdir`; returns (config, state).

  Everything is read and converted before the workdir is touched, so a refused import leaves
  nothing behind.
  """
  check_new_workdir(workdir)
  checkpoint = read(path)
  config = checkpoint_config(checkpoint, config, overridden)
  step = import_step(checkpoint, config, iters_per_epoch=iters_per_epoch, step=step)
  state = to_state(checkpoint, config, step)
  check_new_workdir(workdir)  # Again: a large conversion takes a while, and someone may have started a run.
  checkpoints.save_config(workdir, config)
  with checkpoints.manager(workdir) as mngr:
    checkpoints.save(mngr, step, state, force=True)
    mngr.wait_until_finished()
  return config, state


def continue_command(config_file: str, config: ml_collections.ConfigDict, workdir: str) -> str:
  """The train.py command line that continues the imported run: `config_file` with an override
  for every key where the imported config differs from it."""
  base = config_lib.flatten(config_lib.load(config_file).to_dict())
  overrides = [f"--config.{key}={value}" for key, value in sorted(config_lib.flatten(config.to_dict()).items())
               if base.get(key) != value]
  return shlex.join(["python", "-m", "artstyle_jax.train", f"--config={config_file}", f"--workdir={workdir}",
                     *overrides])
