"""Checkpoints that cannot be read back or written: damaged ones moved aside for the one before,
failed saves reported in one line with what is left."""
import logging
import os
import resource

import jax
import numpy as np
import pytest

from artstyle_jax import checkpoints
from helpers import assert_trees_equal, file_contents


def small_state(seed):
  """A train-state stand-in: random (so incompressible) float32 arrays, 1.6 MB in all."""
  rng = np.random.default_rng(seed)
  return {"params": {"kernel": jax.numpy.asarray(rng.standard_normal((400, 1000), np.float32)),
                     "bias": jax.numpy.asarray(rng.standard_normal((1000,), np.float32))}}


def abstract(state):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return checkpoints.abstract_like(state, jax.tree.map(lambda _: device, state))


@pytest.fixture
def workdir(tmp_path):
  """A workdir with checkpoints 1 and 2 of different states."""
  with checkpoints.manager(str(tmp_path)) as mngr:
    for step in (1, 2):
      checkpoints.save(mngr, step, small_state(step), force=True)
  return tmp_path


def largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


def truncate_largest_data_file(checkpoint):
  path = largest_file(checkpoint / "state")
  os.truncate(path, os.path.getsize(path) // 2)


def truncate_metadata(checkpoint):
  os.truncate(checkpoint / "state" / "_METADATA", 100)


def remove_array_data(checkpoint):
  for root, _, names in os.walk(checkpoint / "state" / "ocdbt.process_0" / "d"):
    for name in names:
      os.remove(os.path.join(root, name))


def restore_newest(workdir, step=None):
  with checkpoints.manager(str(workdir), read_only=True) as mngr:
    return checkpoints.restore_newest(
        mngr, lambda s: checkpoints.restore(mngr, s, abstract(small_state(0)))[0], step)


@pytest.mark.parametrize("damage", [truncate_largest_data_file, truncate_metadata, remove_array_data])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_one_before_restores(workdir, damage, caplog):
  """Truncated array data, unparsable metadata, missing array files: one warning naming the step
  and the reason, the checkpoint renamed to 2.corrupt byte for byte, step 1's state restored."""
  damage(workdir / "checkpoints" / "2")
  damaged_files = file_contents(workdir / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING):
    state, step = restore_newest(workdir)
  assert step == 1
  assert_trees_equal(state, small_state(1))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.module == "checkpoints"]
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert warnings[0].startswith(f"checkpoint 2 in {workdir / 'checkpoints'} is damaged (")
  assert f"moved it aside to {workdir / 'checkpoints' / '2.corrupt'}" in warnings[0]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2.corrupt"]
  assert file_contents(workdir / "checkpoints" / "2.corrupt") == damaged_files
  assert checkpoints.latest_step(str(workdir)) == 1


def test_a_checkpoint_damaged_again_at_the_same_step_keeps_the_first_one_aside(workdir):
  """2.corrupt already there: the second damaged 2 goes to 2.corrupt1; nothing is overwritten."""
  truncate_largest_data_file(workdir / "checkpoints" / "2")
  restore_newest(workdir)
  with checkpoints.manager(str(workdir)) as mngr:
    checkpoints.save(mngr, 2, small_state(2), force=True)
  truncate_largest_data_file(workdir / "checkpoints" / "2")
  assert restore_newest(workdir)[1] == 1
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2.corrupt", "2.corrupt1"]


def test_a_damaged_step_asked_for_is_an_error_naming_it_and_stays_in_place(workdir):
  truncate_largest_data_file(workdir / "checkpoints" / "2")
  with pytest.raises(checkpoints.DamagedCheckpointError, match=r"checkpoint 2 in .* is damaged \(OUT_OF_RANGE") as e:
    restore_newest(workdir, step=2)
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


def test_a_checkpoint_of_another_model_is_not_taken_for_a_damaged_one(workdir):
  """Arrays of other shapes: WorkdirError 'does not fit', and every checkpoint stays."""
  wrong = {"params": {"kernel": jax.ShapeDtypeStruct((3, 3), np.float32),
                      "bias": jax.ShapeDtypeStruct((3,), np.float32)}}
  with checkpoints.manager(str(workdir), read_only=True) as mngr:
    with pytest.raises(checkpoints.WorkdirError, match="does not fit this model") as e:
      checkpoints.restore_newest(mngr, lambda s: checkpoints.restore(mngr, s, abstract(wrong)))
  assert not isinstance(e.value, checkpoints.DamagedCheckpointError)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


@pytest.fixture
def file_size_limit():
  """Sets RLIMIT_FSIZE for this process (writes past it fail with EFBIG, as a full disk fails
  with ENOSPC; Python ignores SIGXFSZ), and lifts it afterwards."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
  resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_failed_asynchronous_save_is_one_error_naming_step_reason_and_the_last_complete_checkpoint(
    workdir, file_size_limit):
  before = file_contents(workdir / "checkpoints")
  mngr = checkpoints.manager(str(workdir), async_save=True, max_to_keep=1)
  file_size_limit(100_000)
  with pytest.raises(checkpoints.SaveError) as e:
    checkpoints.save(mngr, 3, small_state(3), force=True)
    checkpoints.finish(mngr)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"saving checkpoint 3 in {workdir / 'checkpoints'} failed: File too large;")
  assert "the last complete checkpoint is step 2" in message
  file_size_limit(resource.RLIM_INFINITY)
  after = file_contents(workdir / "checkpoints")
  assert {path: after[path] for path in before} == before, "a complete checkpoint was changed or removed"
  assert checkpoints.latest_step(str(workdir)) == 2
