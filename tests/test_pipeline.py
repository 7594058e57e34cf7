"""Grain pipelines: epoch shuffling, process sharding, determinism, resumption from Orbax, evaluation pass."""
import io
import json

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from artstyle_jax.bench import data as bench_data
from artstyle_jax.data import photometric
from artstyle_jax.data import pipeline
from artstyle_jax.data import sources
from artstyle_jax.data import view_specs
from artstyle_jax.data import views

NUM_RECORDS = 23
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(name="source", scope="module")
def fixture_source():
  """An in-memory random-access source of small JPEGs, each a different flat-ish colour."""
  rng = np.random.default_rng(0)
  records = []
  for i in range(NUM_RECORDS):
    pixels = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((int(rng.integers(20, 40)), int(rng.integers(20, 40))), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    records.append({"image": buffer.getvalue(), "label": i % 5, "filename": f"img_{i}.jpg"})
  return records


@pytest.fixture(name="transform", scope="module")
def fixture_transform():
  """A random transform (crop + flip), so that its output reveals the Generator it was given."""
  return views.ProbeTrainView(8, MEAN, STD)


def take(dataset, count):
  iterator = iter(dataset)
  return [next(iterator) for _ in range(count)]


def test_each_epoch_visits_every_record_at_most_once_in_a_new_order(source, transform):
  steps = pipeline.steps_per_epoch(NUM_RECORDS, 4)
  batches = take(pipeline.train_dataset(source, transform, global_batch_size=4, seed=3, process_count=1,
                                        process_index=0), 3 * steps)
  epochs = [np.concatenate([b["index"] for b in batches[e * steps:(e + 1) * steps]]) for e in range(3)]
  for order in epochs:
    assert len(order) == 20 and len(set(order.tolist())) == 20 and set(order.tolist()) <= set(range(NUM_RECORDS))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  for batch in batches:
    np.testing.assert_array_equal(batch["label"], np.array([source[i]["label"] for i in batch["index"]]))
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int64
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32


def test_shuffle_is_fixed_by_the_seed(source, transform):
  def order(seed):
    return np.concatenate([b["index"] for b in take(pipeline.train_dataset(
        source, transform, global_batch_size=4, seed=seed, process_count=1, process_index=0), 5)])
  np.testing.assert_array_equal(order(7), order(7))
  assert not np.array_equal(order(7), order(8))


def test_processes_split_each_global_batch_the_same_whatever_the_process_count(source, transform):
  """Per-host batches of 2 processes concatenate to the global batches of a single process."""
  def stream(process_index, process_count):
    return take(pipeline.train_dataset(source, transform, global_batch_size=4, seed=5, num_epochs=2,
                                       process_index=process_index, process_count=process_count), 10)
  single = stream(0, 1)
  halves = [stream(0, 2), stream(1, 2)]
  for step, global_batch in enumerate(single):
    assert halves[0][step]["index"].shape == (2,)
    for key in ("index", "label", "image"):
      np.testing.assert_array_equal(np.concatenate([halves[0][step][key], halves[1][step][key]]), global_batch[key])


def test_views_depend_only_on_seed_epoch_and_record_index(source, transform):
  steps = pipeline.steps_per_epoch(NUM_RECORDS, 4)
  batches = take(pipeline.train_dataset(source, transform, global_batch_size=4, seed=11, process_count=1,
                                        process_index=0), 2 * steps)
  for step, batch in enumerate(batches):
    epoch = step // steps
    for row, index in enumerate(batch["index"]):
      expected = transform(source[index]["image"], pipeline.example_rng(11, epoch, int(index)))["image"]
      np.testing.assert_array_equal(batch["image"][row], expected)
  first_epoch = {int(i): b["image"][r] for b in batches[:steps] for r, i in enumerate(b["index"])}
  second_epoch = {int(i): b["image"][r] for b in batches[steps:] for r, i in enumerate(b["index"])}
  common = set(first_epoch) & set(second_epoch)
  assert any(not np.array_equal(first_epoch[i], second_epoch[i]) for i in common)


def test_worker_processes_do_not_change_the_batches(source, transform):
  kwargs = dict(global_batch_size=4, seed=2, process_count=1, process_index=0)
  in_process = take(pipeline.train_dataset(source, transform, num_workers=0, **kwargs), 6)
  iterator = iter(pipeline.train_dataset(source, transform, num_workers=2, **kwargs))
  with_workers = [next(iterator) for _ in range(6)]
  iterator.close()
  for expected, batch in zip(in_process, with_workers):
    for key in expected:
      np.testing.assert_array_equal(batch[key], expected[key])


def test_resuming_from_an_orbax_checkpoint_gives_the_batches_of_an_uninterrupted_run(source, transform, tmp_path):
  def make_iterator():
    return iter(pipeline.train_dataset(source, transform, global_batch_size=4, seed=9, process_count=1,
                                       process_index=0))
  manager = ocp.CheckpointManager(tmp_path, item_handlers={"data": grain.checkpoint.CheckpointHandler()})
  iterator = make_iterator()
  for _ in range(4):  # stop one batch before the end of the first epoch (5 steps)
    next(iterator)
  manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  uninterrupted = [next(iterator) for _ in range(4)]  # crosses into the second epoch

  resumed = make_iterator()
  manager.restore(manager.latest_step(), args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  for expected in uninterrupted:
    batch = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(batch[key], expected[key])
  manager.close()


def test_a_position_saved_by_two_processes_continues_one_process_at_the_same_global_batch(source, transform, tmp_path):
  """Grain's files of two processes after 3 batches each (process_<i>-of-2.json): a one-process
  stream set from them yields global batch 3 next, process 0's part then process 1's; files whose
  positions differ are refused."""
  def stream(index, count):
    return iter(pipeline.train_dataset(source, transform, global_batch_size=4, seed=3, process_index=index,
                                       process_count=count))

  parts = []
  for index in range(2):
    iterator = stream(index, 2)
    for _ in range(3):
      next(iterator)
    (tmp_path / f"process_{index}-of-2.json").write_text(json.dumps(iterator.get_state()))
    parts.append(next(iterator)["index"])
  resumed = stream(0, 1)
  assert pipeline.restore_position(tmp_path, resumed) == 2
  np.testing.assert_array_equal(next(resumed)["index"], np.concatenate(parts))

  (tmp_path / "process_1-of-2.json").write_text(json.dumps(stream(1, 2).get_state()))
  with pytest.raises(pipeline.PositionError, match="saved different data iterator positions"):
    pipeline.restore_position(tmp_path, stream(0, 1))


def test_three_view_batches_follow_the_batch_contract(source):
  config = ml_collections.ConfigDict({
      "image_size": 16, "photometric_on_device": False,
      "views": {view: {"mean": MEAN, "std": STD} for view in view_specs.VIEW_NAMES}})
  host_batch = take(pipeline.train_dataset(source, views.TrainViews(config), global_batch_size=4, seed=0,
                                           process_count=1, process_index=0), 1)[0]
  assert set(host_batch) == {"student", "weak", "style", "label", "index"}
  assert all(host_batch[v].shape == (4, 16, 16, 3) and host_batch[v].dtype == np.float32
             for v in view_specs.VIEW_NAMES)

  config.photometric_on_device = True
  device_batch = take(pipeline.train_dataset(source, views.TrainViews(config), global_batch_size=4, seed=0,
                                             process_count=1, process_index=0), 1)[0]
  specs = view_specs.view_specs(config)
  param_keys = {key for view, spec in specs.items() for key in photometric.param_keys(view, spec)}
  assert set(device_batch) == {"student", "weak", "style", "label", "index"} | param_keys
  assert all(device_batch[v].dtype == np.uint8 for v in view_specs.VIEW_NAMES)
  assert device_batch["student_jitter_order"].shape == (4, 4)
  out = jax.jit(lambda batch: photometric.device_photometric(batch, config))(device_batch)
  for view in view_specs.VIEW_NAMES:
    np.testing.assert_allclose(np.asarray(out[view]) * STD[0], host_batch[view] * STD[0], atol=1 / 255)


def test_evaluation_covers_every_record_once_and_masks_the_padding(source):
  transform = views.EvalView(8, MEAN, STD)
  per_host = [list(pipeline.eval_dataset(source, transform, global_batch_size=4, process_index=p, process_count=2))
              for p in range(2)]
  assert len(per_host[0]) == len(per_host[1]) == pipeline.num_eval_batches(NUM_RECORDS, 4) == 6
  seen = []
  for batches in per_host:
    for batch in batches:
      assert batch["image"].shape == (2, 8, 8, 3)
      real = batch["index"][batch["mask"]]
      np.testing.assert_array_equal(batch["label"][batch["mask"]], [source[i]["label"] for i in real])
      assert np.all(batch["index"][~batch["mask"]] == -1)
      seen.extend(real.tolist())
  assert sorted(seen) == list(range(NUM_RECORDS))
  assert sum(int((~b["mask"]).sum()) for batches in per_host for b in batches) == 24 - NUM_RECORDS
  np.testing.assert_array_equal(per_host[0][0]["image"][0], transform(source[0]["image"])["image"])


def test_steps_per_epoch_drops_the_last_partial_batch():
  assert pipeline.steps_per_epoch(1000, 16) == 62
  with pytest.raises(sources.DatasetError, match="10 examples do not fill one global batch of 16"):
    pipeline.steps_per_epoch(10, 16)


def test_bad_sharding_and_too_small_sources_are_rejected(source, transform):
  with pytest.raises(ValueError, match="multiple of the 3 processes"):
    pipeline.train_dataset(source, transform, global_batch_size=4, seed=0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="do not fill one global batch"):
    pipeline.train_dataset(source[:3], transform, global_batch_size=4, seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="process_index 2"):
    pipeline.eval_dataset(source, transform, global_batch_size=4, process_index=2, process_count=2)


def test_data_benchmark_prints_its_figures_as_one_json_line_last(capsys):
  assert bench_data.main(["data", "--image-size", "32", "--num-images", "4", "--batch-size", "2",
                          "--repeats", "1"]) == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  figures = json.loads(last)
  assert figures["benchmark"] == "data" and figures["num_images"] == 4
  for name in ("pil", "host", "split"):
    assert figures[f"{name}_images_per_cpu_s"] > 0
  assert figures["device_photometric_images_per_s"] > 0
  assert figures["split_speedup_vs_pil"] == pytest.approx(
      figures["split_images_per_cpu_s"] / figures["pil_images_per_cpu_s"], abs=0.01)
