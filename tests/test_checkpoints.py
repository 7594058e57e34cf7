"""Checkpoints that cannot be read back or written: damaged ones moved aside for the one before,
reads that fail for a passing reason tried again and left in place, failed saves reported in one
line with what is left."""
import asyncio
import contextlib
import gc
import logging
import os
import resource
import shutil
import sys

import jax
import numpy as np
import pytest

from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import failures
from artstyle_jax.storage import restore_tasks
from helpers import assert_trees_equal
from helpers import file_contents


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


def test_a_read_that_fails_once_is_tried_again_and_nothing_is_moved(workdir):
  """A read of checkpoint 2 that fails once (as a dropped connection does) and then succeeds:
  checkpoint 2 is what comes back, and both checkpoints stay."""
  calls = []

  def read_failing_once(step):
    calls.append(step)
    if len(calls) == 1:
      raise checkpoints.DamagedCheckpointError(step, workdir, "OUT_OF_RANGE: a read cut short")
    return step

  with checkpoints.manager(str(workdir), read_only=True) as mngr:
    assert checkpoints.restore_newest(mngr, read_failing_once) == (2, 2)
  assert calls == [2, 2]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


@pytest.mark.parametrize("message", ["UNKNOWN: Error reading: connection reset",
                                     "NOT_FOUND: Error reading gs://bucket/run/checkpoints/2/state/_METADATA"])
def test_a_storage_failure_that_may_pass_is_no_damage_and_leaves_the_checkpoint_in_place(workdir, message):
  """TensorStore's UNKNOWN and NOT_FOUND (an object store's transient errors come so): not damage,
  tried twice, then one error line naming the step and the reason; nothing is moved aside."""
  error = Exception(message)
  assert failures.damage_reason(error) is None and failures.storage_failure(error) == message

  def read(step):
    raise checkpoints.UnreadableCheckpointError(step, workdir, failures.storage_failure(error))

  with checkpoints.manager(str(workdir), read_only=True) as mngr:
    with pytest.raises(checkpoints.UnreadableCheckpointError, match=r"checkpoint 2 in .* could not be read \(") as e:
      checkpoints.restore_newest(mngr, read)
  assert "\n" not in str(e.value) and "left in place" in str(e.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


async def stand_in_read(delay, fails):
  """Orbax's read of one array in the form that matters here: whatever stops it, GeneratorExit
  included, is raised again as a new exception."""
  try:
    await asyncio.sleep(delay)
    if fails:
      raise OSError("OUT_OF_RANGE")
  except BaseException as e:
    raise RuntimeError("while reading an array") from e


def stand_in_restore():
  """Orbax's way to run a restore: a fresh event loop, closed as soon as the first read fails."""
  async def read_all():
    await asyncio.gather(stand_in_read(0.2, fails=False), stand_in_read(0.01, fails=True))

  loop = asyncio.new_event_loop()
  try:
    loop.run_until_complete(read_all())
  except RuntimeError:
    pass
  finally:
    loop.close()


@pytest.mark.parametrize("settled, complaints", [(False, 1), (True, 0)])
def test_a_failed_restore_under_settled_leaves_no_pending_read_to_complain_when_collected(
    monkeypatch, settled, complaints):
  """A read still pending when the loop closes is collected later and raises from its `except`:
  Python prints "Exception ignored in: <coroutine ...>" (the plain loop, the control, shows it).
  Under restore_tasks.settled() the loop awaits it on close: nothing is reported."""
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  with restore_tasks.settled() if settled else contextlib.nullcontext():
    stand_in_restore()
  gc.collect()
  assert len(unraisable) == complaints


def many_arrays(seed):
  """A train-state stand-in of many arrays, 1 KB to 1 MB each (random, so incompressible): OCDBT
  packs them into several data files, each holding some arrays."""
  rng = np.random.default_rng(seed)
  return {f"layer_{i:02d}": jax.numpy.asarray(rng.standard_normal((256 << (i % 11),), np.float32)) for i in range(24)}


def test_any_array_file_damaged_gives_one_warning_the_right_checkpoint_and_nothing_else(
    tmp_path, monkeypatch, caplog, capfd):
  """Each file of checkpoint 2's arrays truncated in turn to a quarter, half, three quarters (so
  that a different array is the first to fail): one warning line and checkpoint 1 as saved, or
  checkpoint 2 as saved where the file holds nothing its index uses; the former at least once.
  No exception reaches Python's unraisable hook (abandoned reads of the damaged checkpoint
  collected), no traceback on stderr."""
  source = tmp_path / "source"
  with checkpoints.manager(str(source)) as mngr:
    for step in (1, 2):
      checkpoints.save(mngr, step, many_arrays(step), force=True)
  files = sorted(os.path.relpath(os.path.join(d, f), source)
                 for d, _, fs in os.walk(source / "checkpoints" / "2" / "state" / "ocdbt.process_0" / "d") for f in fs)
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  restored_steps = []
  for i, (name, kept) in enumerate((name, kept) for name in files for kept in (0.25, 0.5, 0.75)):
    copy = tmp_path / str(i)
    shutil.copytree(source, copy)
    os.truncate(copy / name, int(os.path.getsize(copy / name) * kept))
    caplog.clear()
    with caplog.at_level(logging.WARNING), checkpoints.manager(str(copy), read_only=True) as mngr:
      state, step = checkpoints.restore_newest(
          mngr, lambda s: checkpoints.restore(mngr, s, abstract(many_arrays(0)))[0])
    gc.collect()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.module == "checkpoints"]
    assert len(warnings) == (step == 1), (name, kept, warnings)
    assert_trees_equal(state, many_arrays(step))
    restored_steps.append(step)
  assert 1 in restored_steps
  assert unraisable == []
  assert "Traceback" not in capfd.readouterr().err


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
