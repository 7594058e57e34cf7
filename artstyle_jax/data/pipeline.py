"""Grain input pipelines: the training stream (shuffled, sharded, batched) and the evaluation pass.

Sources are random-access (`len(source)`, `source[i]`) records {'image': encoded bytes,
'label': int, ...}, e.g. a `tfds.data_source` or an in-memory list. A transform maps
(image bytes, numpy Generator) to a dict of arrays (`views.TrainViews`, `views.EvalView`, ...);
the pipeline adds 'label' (int32) and 'index' (int64, the record's index in the source).

Training layout. Epoch e visits the records in the permutation `grain.experimental.index_shuffle`
makes with a seed derived from (seed, e), cut to the first `steps_per_epoch * G` positions (drop
remainder; G = global batch). Global batch k of epoch e holds positions [k G, (k + 1) G); process
p of P takes its contiguous per-host part [k G + p b, k G + (p + 1) b), b = G / P. So the global
batch does not depend on the number of processes, and the views of a record depend only on
(seed, epoch, record index) (`example_rng`), not on worker count, threads or batch position.

Each pipeline is a `grain.MapDataset` of batches turned into an `IterDataset` with thread
(`ReadOptions`) and process (`mp_prefetch`) prefetching. Batch i of the stream is the same
whatever `num_workers`; the iterator's position is saved with Orbax through Grain's handler:

  mngr = ocp.CheckpointManager(dir, item_handlers={'data': grain.checkpoint.CheckpointHandler()})
  mngr.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  mngr.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator)))

(restore into an iterator of the same pipeline, built with the same number of workers). Grain
writes one file per process, process_<i>-of-<n>.json; `restore_position` reads them also into a
run on another number of processes.

Grain's worker processes (`num_workers` > 0) read Grain's absl flags as they start: outside an
absl program (a notebook, a test) call `absl.flags.FLAGS.mark_as_parsed()` first, to give them
their defaults.
"""
import dataclasses
import json
import math
from typing import Any, Callable, Optional, Protocol

from etils import epath
import grain
import jax
import numpy as np

from artstyle_jax.data import sources

Transform = Callable[[bytes, np.random.Generator], dict[str, np.ndarray]]

# Distinct SeedSequence spawn keys keep the shuffle and view streams apart.
_SHUFFLE_STREAM = 0
_VIEW_STREAM = 1


class RandomAccessSource(Protocol):
  """What the pipelines read: a length and records {'image': bytes, 'label': int, ...} by index."""

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> dict[str, Any]:
    ...


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The Generator that makes the views of source record `index` in `epoch`."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VIEW_STREAM, epoch, index)))


def _epoch_shuffle_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence(seed, spawn_key=(_SHUFFLE_STREAM, epoch)).generate_state(1)[0])


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
  """Training steps in one epoch (the last incomplete global batch is dropped).

  Raises:
    DatasetError: the records do not fill one global batch (a dataset too small for the config).
  """
  if num_records < global_batch_size:
    raise sources.DatasetError(
        f"the dataset's {num_records} examples do not fill one global batch of {global_batch_size}")
  return num_records // global_batch_size


def num_eval_batches(num_records: int, global_batch_size: int) -> int:
  """Evaluation steps for one pass over all records (the last batch padded)."""
  return math.ceil(num_records / global_batch_size)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where this process's slot `s` of its stream sits in the global order."""
  num_records: int
  global_batch_size: int
  per_host_batch_size: int
  process_index: int
  batches_per_epoch: int

  def locate(self, slot: int) -> tuple[int, int]:
    """(epoch, position within the epoch's global order) of this process's `slot`."""
    epoch, within = divmod(slot, self.batches_per_epoch * self.per_host_batch_size)
    step, offset = divmod(within, self.per_host_batch_size)
    return epoch, step * self.global_batch_size + self.process_index * self.per_host_batch_size + offset


def _layout(source, global_batch_size: int, process_index: Optional[int], process_count: Optional[int],
            batches_per_epoch: Callable[[int, int], int]) -> _Layout:
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} must be a positive multiple of the {process_count} processes.")
  num_records = len(source)
  if num_records == 0:
    raise ValueError("the source is empty.")
  return _Layout(num_records=num_records, global_batch_size=global_batch_size,
                 per_host_batch_size=global_batch_size // process_count, process_index=process_index,
                 batches_per_epoch=batches_per_epoch(num_records, global_batch_size))


def _example(source, transform: Transform, record_index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  record = source[record_index]
  example = transform(record["image"], rng)
  example["label"] = np.int32(record["label"])
  example["index"] = np.int64(record_index)
  return example


class _TrainExample:
  """Slot of this process's training stream -> transformed example (picklable for workers)."""

  def __init__(self, source, transform: Transform, seed: int, layout: _Layout):
    self.source = source
    self.transform = transform
    self.seed = seed
    self.layout = layout

  def __call__(self, slot: int, _) -> dict[str, np.ndarray]:
    epoch, position = self.layout.locate(slot)
    record_index = grain.experimental.index_shuffle(position, max_index=self.layout.num_records - 1,
                                                    seed=_epoch_shuffle_seed(self.seed, epoch), rounds=4)
    return _example(self.source, self.transform, record_index, example_rng(self.seed, epoch, record_index))


class _EvalExample:
  """Slot of this process's evaluation pass -> example with 'mask'; padding slots have mask False, index -1."""

  def __init__(self, source, transform: Transform, layout: _Layout):
    self.source = source
    self.transform = transform
    self.layout = layout

  def __call__(self, slot: int, _) -> dict[str, np.ndarray]:
    _, position = self.layout.locate(slot)
    real = position < self.layout.num_records
    record_index = position % self.layout.num_records
    example = _example(self.source, self.transform, record_index, example_rng(0, 0, record_index))
    example["mask"] = np.bool_(real)
    if not real:
      example["index"] = np.int64(-1)
    return example


def _prefetched(batches: grain.MapDataset, num_workers: int, num_threads: int,
                prefetch_batches: int) -> grain.IterDataset:
  # Grain can only keep as many threads busy as there are buffered batches.
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch_batches, num_threads))
  return batches.to_iter_dataset(read_options).mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch_batches))


def train_dataset(source: RandomAccessSource, transform: Transform, *, global_batch_size: int, seed: int,
                  num_epochs: Optional[int] = None, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, num_workers: int = 0, num_threads: int = 4,
                  prefetch_batches: int = 2) -> grain.IterDataset:
  """The training stream of this process: per-host batches of `transform`ed examples.

  Args:
    source: random-access records {'image': bytes, 'label': int}.
    transform: (image bytes, Generator) -> dict of arrays, e.g. `views.TrainViews(config)`.
    global_batch_size: examples per step over all processes.
    seed: shuffle and augmentation seed (non-negative).
    num_epochs: epochs to yield, None for an endless stream.
    process_index, process_count: this process and the total, default jax's.
    num_workers: prefetching processes (0: all in this process).
    num_threads: threads per process, each preparing whole batches.
    prefetch_batches: batches buffered per process (at least `num_threads` are).

  Returns:
    An IterDataset of dicts of (global_batch_size / process_count, ...) arrays: the transform's
    keys plus 'label' int32 and 'index' int64.
  """
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got {seed}.")
  layout = _layout(source, global_batch_size, process_index, process_count, steps_per_epoch)
  slots = grain.MapDataset.range(layout.batches_per_epoch * layout.per_host_batch_size).repeat(num_epochs)
  batches = slots.map_with_index(_TrainExample(source, transform, seed, layout)).batch(
      layout.per_host_batch_size, drop_remainder=True)
  return _prefetched(batches, num_workers, num_threads, prefetch_batches)


def eval_dataset(source: RandomAccessSource, transform: Transform, *, global_batch_size: int,
                 process_index: Optional[int] = None, process_count: Optional[int] = None, num_workers: int = 0,
                 num_threads: int = 4, prefetch_batches: int = 2) -> grain.IterDataset:
  """One pass over every record in source order, sharded like training, the last batch padded.

  Every process yields `num_eval_batches(len(source), global_batch_size)` batches of
  global_batch_size / process_count examples with the transform's keys, 'label', 'index' and
  'mask' (bool; False marks padding, whose 'index' is -1 and whose other values are those of a
  real record). Transforms receive `example_rng(0, 0, index)`.
  """
  layout = _layout(source, global_batch_size, process_index, process_count, num_eval_batches)
  slots = grain.MapDataset.range(layout.batches_per_epoch * layout.per_host_batch_size)
  batches = slots.map_with_index(_EvalExample(source, transform, layout)).batch(layout.per_host_batch_size)
  return _prefetched(batches, num_workers, num_threads, prefetch_batches)


class PositionError(ValueError):
  """A saved iterator position that cannot be restored."""


def restore_position(directory: epath.Path, iterator: Any) -> int:
  """Sets `iterator` to the position Grain's checkpoint handler saved in `directory` (files
  process_<i>-of-<n>.json); returns n, the number of processes that saved it.

  The training streams of all processes stand at the same batch, and batch k holds the same
  global examples whatever the number of processes (see the module's layout), so a run on another
  number of processes continues from the one position all the files hold: each process then
  takes its own part of the same global batch k.

  Raises:
    PositionError: no position saved, or processes that saved different ones.
  """
  index, count = jax.process_index(), jax.process_count()
  own = directory / f"process_{index}-of-{count}.json"
  files = [own] if own.exists() else sorted(directory.glob("process_*-of-*.json"))
  if not files:
    raise PositionError(f"{directory} holds no data iterator position")
  positions = [json.loads(f.read_text()) for f in files]
  if any(position != positions[0] for position in positions):
    raise PositionError(f"the {len(files)} processes that wrote {directory} saved different data iterator "
                        "positions: the run cannot continue on another number of processes")
  if isinstance(iterator, grain.DatasetIterator):
    iterator.set_state(positions[0])
    iterator.start_prefetch()
  else:
    iterator.set_state(json.dumps(positions[0]).encode())
  return count if own.exists() else len(files)
