"""The workdir: Orbax checkpoints of the train state and data iterator, and the run's config.

Layout of a workdir:

  config.json            the config the run was started with (`save_config` / `load_config`)
  checkpoints/<step>/    Orbax: item 'state' (the whole TrainState) and, for checkpoints
                         written by training, item 'data' (the Grain iterator of each process)
  metrics-NNN.jsonl, tb/ metrics, a JSONL file per run of train.py (`metric_writer`)
  eval/                  evaluation results and the linear head (eval.py)

Every program that writes to a workdir refuses one whose config describes another model
(`check_compatible`), before it writes anything. Programs that read checkpoints go through
`restore_newest`: a checkpoint whose files every process finds damaged (truncated, undecodable,
a data file missing), twice, is moved aside to checkpoints/<step>.corrupt, never deleted, and the
one before it is used; one that fails otherwise, or on some processes only, is left in place and
the program stops with one line saying so. A save that fails (disk full, no permission, a bucket
that refuses writes) raises SaveError, whose message is the one line a program prints.
"""
from collections.abc import Callable, Mapping
import contextlib
import json
import re
from typing import Any, TypeVar

from absl import logging
from etils import epath
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from artstyle_jax.data import pipeline
from artstyle_jax.runtime import multihost
from artstyle_jax.storage import failures
from artstyle_jax.storage import restore_tasks

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Config keys that fix the shapes of the train state: a checkpoint only restores into a run that
# agrees on all of them.
# config.json's record of the network's forms a run used.
FORMS_KEY = "forms"
SHAPE_KEYS = ("model.name", "model.proj_hidden_dim", "model.proj_dim", "queue_size", "style_teacher",
              "share_teachers", "momentum_weak", "momentum_style")


CORRUPT_SUFFIX = ".corrupt"
_TMP_STEP = re.compile(r"(\d+)\.orbax-checkpoint-tmp")

T = TypeVar("T")


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked (another model's checkpoints, nothing to restore)."""


class DamagedCheckpointError(WorkdirError):
  """A checkpoint whose files cannot be read back; `reason` is the storage's one-line account."""

  def __init__(self, step: int, directory: Any, reason: str):
    self.step, self.reason = step, reason
    super().__init__(f"checkpoint {step} in {directory} is damaged ({reason})")


class UnreadableCheckpointError(WorkdirError):
  """A checkpoint that could not be read for a reason that may pass (a storage error, a read that
  failed on some processes only); it is left in place. `reason` is the one-line account."""

  def __init__(self, step: int, directory: Any, reason: str):
    self.step, self.reason = step, reason
    super().__init__(f"checkpoint {step} in {directory} could not be read ({reason}): it is left in place; run "
                     f"again, or move it aside (to {step}{CORRUPT_SUFFIX}) if this persists")


class SaveError(RuntimeError):
  """A checkpoint that could not be written; the message says which, why, and what is left."""


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def save_config(workdir: str, config: ml_collections.ConfigDict, forms: Mapping[str, Any] | None = None) -> None:
  """Writes config.json (process 0 only); with `forms` (`Forms.as_dict()`), the forms the
  program chose for its devices, under the key FORMS_KEY beside the config's own keys (a record
  of what ran, not part of the config: `load_config` leaves it out, `load_forms` reads it)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  record = json.loads(config.to_json_best_effort())
  if forms is not None:
    record[FORMS_KEY] = dict(forms)
  path.write_text(json.dumps(record, indent=2, sort_keys=True))


def _config_record(workdir: str) -> dict[str, Any]:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise WorkdirError(f"{workdir} holds no {CONFIG_FILE}: not a workdir written by artstyle_jax.train")
  return json.loads(path.read_text())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was started with."""
  record = _config_record(workdir)
  record.pop(FORMS_KEY, None)
  return ml_collections.ConfigDict(record)


def load_forms(workdir: str) -> dict[str, Any] | None:
  """The network's forms the workdir's last training ran in (`Forms.as_dict()`), None if unrecorded."""
  return _config_record(workdir).get(FORMS_KEY)


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


def newest_checkpoint_note(workdir: str) -> str:
  """'the newest complete checkpoint is step N in WORKDIR' (or that it has none), read from the
  directory alone, with no collective: a process whose peers are gone can still say it."""
  steps = ocp.path.step.checkpoint_steps(epath.Path(workdir) / CHECKPOINT_DIR)
  if not steps:
    return f"{workdir} has no complete checkpoint yet"
  return f"the newest complete checkpoint is step {max(steps)} in {workdir}"


def _save_error(mngr: ocp.CheckpointManager, error: BaseException) -> SaveError:
  """SaveError for a save of `mngr` that raised `error`: the step (from Orbax's temporary
  directory, when the error names it), the reason, and the newest checkpoint that is complete."""
  match = next(filter(None, (_TMP_STEP.search(str(cause)) for cause in failures.causes(error))), None)
  what = f"saving checkpoint {match.group(1)}" if match else "saving a checkpoint"
  mngr.reload()
  last = mngr.latest_step()
  left = f"the last complete checkpoint is step {last}" if last is not None else "no checkpoint is complete"
  reason = failures.os_reason(error)
  save_error = SaveError(f"{what} in {mngr.directory} failed: {reason}; {left}, nothing complete was removed")
  save_error.__cause__ = error  # as `raise ... from error` would, for `finish`, which raises it later
  return save_error


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any = None, *,
         force: bool = False) -> bool:
  """Saves the state (and the data iterator when given) at `step`; True when a save started.

  Raises:
    SaveError: this save, or an asynchronous one before it, failed.
  """
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  try:
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)
  except Exception as e:  # Orbax re-raises a background save's failure of any kind here.
    raise _save_error(mngr, e)


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous save in flight, then closes the manager.

  Closing waits once more for the writes a failed save left behind (its metadata file, in a
  thread of Orbax's own), which raise the store's error again: that error is this save's.

  Raises:
    SaveError: that save failed.
  """
  try:
    mngr.wait_until_finished()
  except Exception as e:  # As in `save`.
    error = _save_error(mngr, e)
  else:
    error = None
  try:
    mngr.close()
  except Exception as e:
    error = error or _save_error(mngr, e)
  if error is not None:
    raise error


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` (arrays or abstract values) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: Any = None
            ) -> tuple[Any, Any]:
  """Restores the state at `step` into `abstract_state`'s shapes and shardings.

  The data iterator, when given, is restored in place from the checkpoint's 'data' item, also
  one saved by another number of processes (`pipeline.restore_position`; one log line says so); a
  checkpoint without one (imported from PyTorch) leaves it at its start. Nothing here waits for
  the other processes: each reads alone (`restore_newest` brings their verdicts together).

  Returns:
    (state, data_iterator).
  Raises:
    DamagedCheckpointError: the checkpoint's files cannot be read back.
    UnreadableCheckpointError: the storage failed in a way that may pass.
    WorkdirError: the checkpoint's arrays do not fit `abstract_state`.
  """
  directory = epath.Path(mngr.directory) / str(step)
  try:
    with restore_tasks.settled(), contextlib.closing(ocp.StandardCheckpointHandler()) as handler:
      state = handler.restore(directory / "state", args=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None and (directory / "data").exists():
      saved_count = pipeline.restore_position(directory / "data", data_iterator)
      if saved_count != jax.process_count():
        logging.info("The data iterator of checkpoint %d was saved by %d processes, this run has %d: the input "
                     "continues at global batch %d", step, saved_count, jax.process_count(), step)
  except Exception as e:  # TensorStore's read errors come as a bare Exception.
    raise _read_error(e, step, mngr.directory) from e
  return state, data_iterator


def _read_error(error: Exception, step: int, directory: Any) -> Exception:
  """What a failed read of checkpoint `step` is to the programs."""
  if isinstance(error, WorkdirError):
    return error
  if isinstance(error, pipeline.PositionError):
    return WorkdirError(f"checkpoint {step} in {directory}: {error}")
  reason = failures.damage_reason(error)
  if reason is not None:
    return DamagedCheckpointError(step, directory, reason)
  reason = failures.storage_failure(error)
  if reason is not None:
    return UnreadableCheckpointError(step, directory, reason)
  if isinstance(error, (ValueError, KeyError)):
    return WorkdirError(f"checkpoint {step} in {directory} does not fit this model: {error}")
  return error


def restore_subtree(workdir: str, step: int, target: Any) -> Any:
  """The part of checkpoint `step`'s state that `target` (a pytree of ShapeDtypeStructs with
  shardings, e.g. {'params': {'backbone': ...}}) names; nothing else is read.

  Raises:
    DamagedCheckpointError: the checkpoint's files cannot be read back.
    UnreadableCheckpointError: the storage failed in a way that may pass.
    ValueError, KeyError: the checkpoint holds no such subtree, or one of other shapes.
  """
  directory = epath.Path(workdir) / CHECKPOINT_DIR
  try:
    with restore_tasks.settled(), contextlib.closing(ocp.PyTreeCheckpointHandler()) as handler:
      return handler.restore(directory / str(step) / "state", args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  except Exception as e:  # As in `restore`.
    error = _read_error(e, step, directory)
    if isinstance(error, WorkdirError):
      raise error from e
    raise


def move_aside(directory: Any, step: int) -> epath.Path:
  """Renames checkpoint `step` in `directory` to <step>.corrupt (<step>.corrupt1, ... when taken),
  where Orbax no longer sees it and nothing deletes it; returns the new path. Every process
  calls it; process 0 renames."""
  source = epath.Path(directory) / str(step)
  target, n = source.with_name(f"{step}{CORRUPT_SUFFIX}"), 0
  while target.exists():
    n += 1
    target = source.with_name(f"{step}{CORRUPT_SUFFIX}{n}")
  multihost.barrier(f"move_aside_{step}_named")  # every process named the target before it exists
  if jax.process_index() == 0:
    source.rename(target)
  multihost.barrier(f"move_aside_{step}_moved")
  return target


def _disagreement(step: int, directory: Any, error: Exception | None, verdicts: np.ndarray) -> Exception:
  """The error every process raises when not all of them found checkpoint `step` damaged."""
  if error is not None and not isinstance(error, DamagedCheckpointError):
    return error
  failed = ", ".join(str(int(i)) for i in np.flatnonzero(verdicts != multihost.READ))
  why = f" ({error.reason})" if error is not None else ""
  return UnreadableCheckpointError(step, directory, f"process {failed} of {len(verdicts)} could not read it{why}, "
                                   "the others could")


def restore_newest(mngr: ocp.CheckpointManager, read: Callable[[int], T], step: int | None = None
                   ) -> tuple[T, int] | None:
  """(read(s), s) for the newest checkpoint s of `mngr` that reads back, or for `step` when one
  is asked for; None when no checkpoint is left.

  Every process calls this. `read(s)` raises DamagedCheckpointError for a checkpoint whose
  files are damaged and UnreadableCheckpointError for a storage failure that may pass (as
  `restore` and `restore_subtree` do); either is tried once more. Then the processes compare
  verdicts: a checkpoint every process found damaged is moved aside (`move_aside`) with one
  warning line naming it and why, and the one before it is tried. When any process failed
  otherwise, or only some found it damaged, every process raises (that process its own error,
  the others UnreadableCheckpointError) and the checkpoint stays where it is. A damaged `step`
  asked for is the error, left where it is.
  """
  candidates = [step] if step is not None else sorted(mngr.all_steps(), reverse=True)
  moved = False
  try:
    for candidate in candidates:
      result, error, verdicts = multihost.read_on_every_process(
          read, candidate, retried=(DamagedCheckpointError, UnreadableCheckpointError), damage=DamagedCheckpointError)
      if (verdicts == multihost.READ).all():
        return result, candidate
      if step is not None and error is not None:
        raise error
      if not (verdicts == multihost.DAMAGED).all():
        raise _disagreement(candidate, mngr.directory, error, verdicts)
      logging.warning("%s: moved it aside to %s, trying the checkpoint before it", error,
                      move_aside(mngr.directory, candidate))
      moved = True
    return None
  finally:
    if moved:
      mngr.reload()
