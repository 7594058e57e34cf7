"""The workdir: Orbax checkpoints of the train state and data iterator, and the run's config.

Layout of a workdir:

  config.json            the config the run was started with (`save_config` / `load_config`)
  checkpoints/<step>/    Orbax: item 'state' (the whole TrainState) and, for checkpoints
                         written by training, item 'data' (the Grain iterator of each process)
  metrics.jsonl, tb/     metrics (train.py)
  eval/                  evaluation results and the linear head (eval.py)

Every program that writes to a workdir refuses one whose config describes another model
(`check_compatible`), before it writes anything.
"""
import json
from typing import Any

import grain
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Config keys that fix the shapes of the train state: a checkpoint only restores into a run that
# agrees on all of them.
SHAPE_KEYS = ("model.name", "model.proj_hidden_dim", "model.proj_dim", "queue_size", "style_teacher",
              "share_teachers", "momentum_weak", "momentum_style")


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked (another model's checkpoints, nothing to restore)."""


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes config.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was started with."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise WorkdirError(f"{workdir} holds no {CONFIG_FILE}: not a workdir written by artstyle_jax.train")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises WorkdirError when the workdir's checkpoints were made for another model or state layout."""
  if not (epath.Path(workdir) / CONFIG_FILE).exists() or latest_step(workdir) is None:
    return
  saved = load_config(workdir)
  differing = [f"{key}: checkpoint has {_get(saved, key)!r}, config asks for {_get(config, key)!r}"
               for key in SHAPE_KEYS if _get(saved, key) != _get(config, key)]
  if differing:
    raise WorkdirError(f"{workdir} holds checkpoints of another model ({'; '.join(differing)}); "
                       "use a new --workdir, or the config the checkpoints were made with")


def manager(workdir: str, *, max_to_keep: int | None = None, async_save: bool = False,
            read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager over workdir/checkpoints with items 'state' and 'data'."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(
      epath.Path(workdir) / CHECKPOINT_DIR,
      options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
  )


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint's step, None when there is none."""
  if not (epath.Path(workdir) / CHECKPOINT_DIR).exists():
    return None
  with manager(workdir, read_only=True) as mngr:
    return mngr.latest_step()


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any = None, *,
         force: bool = False) -> bool:
  """Saves the state (and the data iterator when given) at `step`; True when a save started."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` (arrays or abstract values) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: Any = None
            ) -> tuple[Any, Any]:
  """Restores the state at `step` into `abstract_state`'s shapes and shardings.

  The data iterator, when given, is restored in place from the checkpoint's 'data' item; a
  checkpoint without one (imported from PyTorch) leaves it at its start.

  Returns:
    (state, data_iterator).
  Raises:
    WorkdirError: the checkpoint's arrays do not fit `abstract_state`.
  """
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None and (epath.Path(mngr.directory) / str(step) / "data").exists():
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError) as e:
    raise WorkdirError(f"checkpoint {step} in {mngr.directory} does not fit this model: {e}") from e
  return restored["state"], restored["data"] if "data" in items else data_iterator
