"""What evaluation and prediction read of a training run: its workdir's saved config and
checkpoint steps, the student's (or a teacher's) backbone of a checkpoint (or the random initialisation it
started from), the splits of the dataset its config names, and where evaluation writes.

The workdir's files and how checkpoints are written and read back are `checkpoints`'.
"""
from collections.abc import Mapping
from typing import Any, Optional

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from artstyle_jax import models
from artstyle_jax.data import sources
from artstyle_jax.method import sharding
from artstyle_jax.method import state as state_lib
from artstyle_jax.method import step as step_lib
from artstyle_jax.storage import checkpoints

EVAL_DIR = "eval"
# The networks of a training state, by the names users give them.
NETWORKS = ("student", "weak_teacher", "style_teacher")
RANDOM_INIT_DIR = "random_init"


def eval_dir(workdir: str, random_init: bool = False) -> epath.Path:
  """Where evaluation writes its results for a workdir."""
  path = epath.Path(workdir) / EVAL_DIR
  return path / RANDOM_INIT_DIR if random_init else path


def _typed(value: Any) -> Any:
  if isinstance(value, Mapping):
    return ml_collections.ConfigDict({key: _typed(item) for key, item in value.items()})
  if isinstance(value, list):
    return tuple(_typed(item) for item in value)
  if value is None:
    return config_dict.placeholder(str)
  return value


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The workdir's config.json as a ConfigDict that `--config.key=value` overrides can parse.

  JSON keeps neither tuples nor the type of an unset value: lists become tuples again, and
  None becomes an unset string (the one such key of a saved config is dataset.data_dir).
  """
  return _typed(checkpoints.load_config(workdir).to_dict())


def checkpoint_step(workdir: str, step: Optional[int] = None) -> int:
  """`step` when the workdir holds its checkpoint, the latest checkpoint's when step is None.

  Raises:
    WorkdirError: no checkpoint at all, or none of `step`.
  """
  steps = []
  if (epath.Path(workdir) / checkpoints.CHECKPOINT_DIR).exists():
    with checkpoints.manager(workdir, read_only=True) as mngr:
      steps = sorted(mngr.all_steps())
  if not steps:
    raise checkpoints.WorkdirError(f"{workdir} holds no checkpoint: train first (python -m artstyle_jax.train) "
                                   "or import one (python -m artstyle_jax.tools.import_torch)")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise checkpoints.WorkdirError(f"{workdir} has no checkpoint of step {step}; it has steps {steps}")
  return step


def _init_backbone_fn(config: ml_collections.ConfigDict, backbone):
  # The key state.create gives the student's backbone, so a random initialisation here is the
  # student's first state when config.init is 'random'.
  key = models.backbones.random_init_key(config.seed)
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  return lambda: backbone.init(key, images, train=False)["params"]


def random_backbone_params(config: ml_collections.ConfigDict, backbone, mesh: jax.sharding.Mesh) -> Any:
  """The backbone's random initialisation from config.seed, replicated over `mesh`."""
  return jax.jit(_init_backbone_fn(config, backbone), out_shardings=sharding.replicated(mesh))()


def network_path(config: ml_collections.ConfigDict, network: str) -> tuple[str, ...]:
  """Where `network` (one of NETWORKS) is in a TrainState of `config`: the style teacher is the
  weak teacher's copy when the state keeps one copy for both (`state.teacher_names`).

  Raises:
    WorkdirError: another name, or a teacher the config's run has none of.
  """
  if network not in NETWORKS:
    raise checkpoints.WorkdirError(f"unknown network {network!r}; a training state holds {', '.join(NETWORKS)}")
  if network == "student":
    return ("params",)
  if network == "style_teacher" and not config.style_teacher:
    raise checkpoints.WorkdirError("this run trained without a style teacher (config.style_teacher is off)")
  names = state_lib.teacher_names(config)
  return ("teachers", "style" if network == "style_teacher" and "style" in names else "weak")


def restore_backbone(workdir: str, config: ml_collections.ConfigDict, step: Optional[int] = None,
                     mesh: Optional[jax.sharding.Mesh] = None, network: str = "student") -> tuple[Any, int]:
  """The backbone parameters of `network` (the student, or a teacher: `NETWORKS`) from a
  checkpoint, replicated over `mesh`.

  Only that subtree of the saved TrainState is read (Orbax partial restore), so the other
  networks and the optimiser state never take memory.

  The latest checkpoint when `step` is None: a damaged one is moved aside, with a warning, for
  the one before it (`checkpoints.restore_newest`).

  Returns:
    (backbone params, the checkpoint's step).
  Raises:
    WorkdirError: no such checkpoint, a damaged `step`, or one whose student is not
      config.model's backbone.
  """
  where = network_path(config, network)
  checkpoint_step(workdir, step)
  mesh = sharding.create_mesh() if mesh is None else mesh
  replicated = sharding.replicated(mesh)
  abstract = jax.eval_shape(_init_backbone_fn(config, step_lib.build_backbone(config, mesh)))
  target = {"backbone": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)}
  for name in reversed(where):
    target = {name: target}

  def read(step: int) -> Any:
    try:
      restored = checkpoints.restore_subtree(workdir, step, target)
      for name in where:
        restored = restored[name]
      return restored["backbone"]
    except checkpoints.WorkdirError:  # a damaged checkpoint, for restore_newest
      raise
    except (ValueError, KeyError) as e:
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise checkpoints.WorkdirError(f"the checkpoint of step {step} in {workdir} holds no {config.model.name} "
                                     f"{network.replace('_', ' ')} backbone ({reason})") from e

  with checkpoints.manager(workdir, read_only=True) as mngr:
    restored = checkpoints.restore_newest(mngr, read, step)
  if restored is None:
    raise checkpoints.WorkdirError(f"{workdir} holds no checkpoint that reads back: each was damaged and moved "
                                   f"aside to {checkpoints.CHECKPOINT_DIR}/<step>{checkpoints.CORRUPT_SUFFIX}")
  return restored


def open_splits(config: ml_collections.ConfigDict) -> tuple[Any, Any, list[str]]:
  """(training split, test split, class names) of config.dataset; raises as `sources.open_split`."""
  name, data_dir = config.dataset.name, config.dataset.data_dir
  train = sources.open_split(name, data_dir, config.dataset.train_split)
  test = sources.open_split(name, data_dir, config.dataset.eval_split)
  return train, test, sources.label_names(config.dataset.name, config.dataset.data_dir)
