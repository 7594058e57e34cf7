"""Self-supervised dual-teacher pretraining of a workdir: `train_and_evaluate(config, workdir)`.

One process or many (`jax.distributed`, joined before this runs). Running again on a workdir
resumes from its latest checkpoint, batch for batch. SIGTERM or SIGINT saves a checkpoint and
ends the run (after the step under way; on several processes, at the next multiple of
log_every_steps, so that they agree on it without a collective at every step); a non-finite loss
stops it (health.TrainingError) and keeps the last good checkpoint. At the checkpoints, at most once a
minute, and at the last step, WORKDIR/curves.png is redrawn from WORKDIR/metrics-NNN.jsonl
(`curves.refresh_curves`); with config.knn_every_steps a weighted kNN on the held-out split
monitors the student's features. The step's feature-health signals are logged with its metrics,
and one warning says when an effective rank falls under config.health.rank_warning_fraction of
its first logged value, that of step 1: the initialisation's (`RankWatch`).
"""
import functools
import signal
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from artstyle_jax import models
from artstyle_jax.data import photometric
from artstyle_jax.data import pipeline
from artstyle_jax.data import sources
from artstyle_jax.data import view_specs
from artstyle_jax.data import views
from artstyle_jax.evaluators import knn
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.method import health
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import convnext
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.pictures import curves
from artstyle_jax.runtime import multihost
from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import metric_writer


class StopRequest:
  """Remembers a SIGTERM / SIGINT so that the loop can checkpoint and leave between steps."""

  def __init__(self):
    self.signal_name = None

  def __call__(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def install(self) -> None:
    signal.signal(signal.SIGTERM, self)
    signal.signal(signal.SIGINT, self)

  def agreed(self, step: int, every_steps: int) -> bool:
    """Whether to stop after `step`; every process gets the same answer.

    On one process: whether a signal came, at every step. On several: whether any process got
    one, asked every `every_steps` steps only (False between), since the question is a
    collective that would make each step wait for the one before to finish on the device.
    """
    requested = self.signal_name is not None
    if jax.process_count() == 1:
      return requested
    if step % every_steps:
      return False
    agreed = bool(np.any(multihost_utils.process_allgather(np.array(requested))))
    if agreed and not requested:
      self.signal_name = "a stop signal to another process"
    return agreed


def load_backbone_params(config: ml_collections.ConfigDict, backbone: Any) -> Any:
  """The student backbone's initial parameters from `config.init` (`models.load_backbone`); None
  for 'random'."""
  if config.init == "random":
    return None
  try:
    module, variables = models.load_backbone(config.init)
  except models.BackboneError as e:
    raise config_lib.ConfigError(f"init: {e}") from e
  if isinstance(backbone, efficientnet_lite.EfficientNetLite):
    if models.model_name(module) != backbone.name_of_size:
      raise config_lib.ConfigError(f"init {config.init!r} is a {models.model_name(module)}, but the student is "
                                   f"model.name={config.model.name!r}")
    return variables["params"]
  if not isinstance(module, convnext.ConvNeXt):
    raise config_lib.ConfigError(f"init {config.init!r} is a {models.model_name(module)}; the student is a ConvNeXt")
  if (tuple(module.depths), tuple(module.dims)) != (tuple(backbone.depths), tuple(backbone.dims)):
    raise config_lib.ConfigError(
        f"init {config.init!r} is a ConvNeXt with depths {tuple(module.depths)}, dims {tuple(module.dims)}, "
        f"but model.name={config.model.name!r} has depths {tuple(backbone.depths)}, dims {tuple(backbone.dims)}")
  return variables["params"]


def open_train_data(config: ml_collections.ConfigDict) -> tuple[Any, int]:
  """(source of the training split, its size); raises as `sources.open_split`."""
  source = sources.open_split(config.dataset.name, config.dataset.data_dir, config.dataset.train_split)
  return source, len(source)


def knn_monitor(config, backbone, mesh, train_source, eval_source):
  """`evaluate(backbone_params) -> {'knn_top1', 'knn_rank', 'knn_pc1_share'}`: the top-1 of a
  weighted kNN on the held-out split, features of the training split as the bank, and the
  effective rank and first-PC share of the held-out split's pooled features."""
  mean, std = view_specs.student_normalisation(config)
  transform = views.EvalView(config.image_size, mean, std)
  feature_fn = features.make_feature_fn(backbone, mesh)

  def extract(source, params):
    batches = pipeline.eval_dataset(source, transform, global_batch_size=config.batch_size,
                                    num_threads=config.dataset.num_threads)
    return features.extract(feature_fn, params, batches, mesh)

  num_classes = len(sources.label_names(config.dataset.name, config.dataset.data_dir))

  def evaluate(backbone_params) -> dict[str, float]:
    bank, bank_labels, _ = extract(train_source, backbone_params)
    queries, query_labels, _ = extract(eval_source, backbone_params)
    result = knn.knn_classify(bank, bank_labels, queries, num_classes, k=config.knn_k)
    return {"knn_top1": float(np.mean(np.asarray(result.predictions) == query_labels)),
            "knn_rank": float(health.effective_rank(queries)), "knn_pc1_share": float(health.first_pc_share(queries))}

  return evaluate


class RankWatch:
  """Warns, once per run, when an effective rank it is shown falls under `fraction` of the first
  value of the same signal; a resumed run takes its first values from the workdir's metrics files.

  Signals: 'health/pooled_rank' (the step's batch) and 'knn_rank' (the kNN monitor's split).
  """
  SIGNALS = ("health/pooled_rank", "knn_rank")

  def __init__(self, workdir: str, fraction: float):
    self.fraction = fraction
    self.warned = False
    self.start = {}
    for record in metric_writer.read_records(workdir):
      for name in self.SIGNALS:
        if name in record:
          self.start.setdefault(name, float(record[name]))

  def __call__(self, step: int, scalars: dict[str, float]) -> None:
    for name in self.SIGNALS:
      if name not in scalars:
        continue
      value = float(scalars[name])
      start = self.start.setdefault(name, value)
      if not self.warned and value < self.fraction * start:
        self.warned = True
        logging.warning("step %d: the effective rank %s fell to %.1f, under %.2f of its first value %.1f: the "
                        "features are collapsing onto a few dimensions", step, name, value, self.fraction, start)


def check_finite(step: int, metrics: dict[str, float], workdir: str) -> None:
  if not np.isfinite(metrics["loss"]):
    last = checkpoints.latest_step(workdir)
    raise health.TrainingError(f"non-finite loss {metrics['loss']} at step {step} (terms: "
                        f"{ {k: v for k, v in metrics.items() if k != 'loss'} }); the run stopped, "
                        f"the last good checkpoint is step {last} in {workdir}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

  Raises:
    ConfigError, WorkdirError, FileNotFoundError: before anything is written to the workdir.
    health.TrainingError: a non-finite loss.
    SaveError: a checkpoint could not be written.
  """
  config_lib.validate(config)
  checkpoints.check_compatible(workdir, config)
  train_source, num_examples = open_train_data(config)
  steps_per_epoch = pipeline.steps_per_epoch(num_examples, config.batch_size)
  total_steps = config_lib.total_steps(config, steps_per_epoch=steps_per_epoch)

  mesh = sharding.create_mesh(config.mesh.fsdp)
  sharding.check_batch_divides(config.batch_size, mesh)
  backbone, head = step_lib.build_backbone(config, mesh), step_lib.build_head(config)
  backbone_params = load_backbone_params(config, backbone)
  optimizer, schedule = optim.create(config, steps_per_epoch)
  rng = jax.random.PRNGKey(config.seed)
  state, state_shardings = step_lib.create_state(rng, config, backbone, head, optimizer, mesh, backbone_params)
  del backbone_params
  preprocess = (functools.partial(photometric.device_photometric, config=config) if config.photometric_on_device
                else None)
  train_step = step_lib.compile_train_step(
      step_lib.make_train_step(config, backbone, head, optimizer, schedule, preprocess, mesh=mesh), state_shardings,
      mesh)

  data = pipeline.train_dataset(
      train_source, views.TrainViews(config), global_batch_size=config.batch_size, seed=config.seed,
      num_workers=config.dataset.num_workers, num_threads=config.dataset.num_threads)
  data_iterator = iter(data)

  multihost.barrier("state_created")  # the manager's first barrier is a collective
  mngr = checkpoints.manager(workdir, max_to_keep=config.keep_checkpoints, async_save=config.async_checkpointing)
  abstract_state = checkpoints.abstract_like(state, state_shardings)
  restored = checkpoints.restore_newest(mngr, lambda s: checkpoints.restore(mngr, s, abstract_state, data_iterator))
  start_step = 0
  if restored is not None:  # also a step-0 checkpoint, as tools.import_torch writes for an epoch-0 file
    (state, data_iterator), start_step = restored
    logging.info("Resumed from the checkpoint of step %d in %s", start_step, workdir)
  checkpoints.save_config(workdir, config, forms=backbone.forms.as_dict())

  monitor = None
  if config.knn_every_steps:
    eval_source = sources.open_split(config.dataset.name, config.dataset.data_dir,
                                     config.dataset.eval_split)
    monitor = knn_monitor(config, backbone, mesh, train_source, eval_source)

  writer = metric_writer.MetricWriter(workdir, total_steps=total_steps, batch_size=config.batch_size)
  rank_watch = RankWatch(workdir, config.health.rank_warning_fraction)
  stop = StopRequest()
  stop.install()
  last_metrics: dict[str, float] = {}
  pending = None  # (step, metrics on device) of the step before: read one step late to keep the device busy
  curves_drawn_at = None  # time.monotonic() of the last drawing of curves.png
  try:
    for step in range(start_step + 1, total_steps + 1):
      batch = sharding.shard_batch(next(data_iterator), mesh)
      if step == start_step + 1:
        train_step = train_step.lower(state, batch).compile()
        multihost.barrier("train_step_compiled")
      state, metrics = train_step(state, batch)
      if pending is not None:
        check_finite(pending[0], jax.device_get(pending[1]), workdir)
      pending = (step, metrics)
      stopping = stop.agreed(step, config.log_every_steps)
      # Step 1 too: its metrics are the initialisation's, the start the health signals are read against.
      if step % config.log_every_steps == 0 or step in (1, total_steps) or stopping:
        last_metrics = jax.device_get(metrics)
        check_finite(step, last_metrics, workdir)
        writer.write_train(step, last_metrics)
        rank_watch(step, last_metrics)
      if monitor is not None and (step % config.knn_every_steps == 0 or step == total_steps):
        monitored = monitor(state.params["backbone"])
        writer.write_scalars(step, monitored)
        rank_watch(step, monitored)
        logging.info("step %d: kNN top-1 on %s %.4f, effective rank %.1f, first-PC share %.2f", step,
                     config.dataset.eval_split, monitored["knn_top1"], monitored["knn_rank"],
                     monitored["knn_pc1_share"])
      if step % config.checkpoint_every_steps == 0 or step == total_steps or stopping:
        check_finite(step, jax.device_get(metrics), workdir)
        writer.flush()  # every record up to the checkpoint is kept, in an object store too
        checkpoints.save(mngr, step, state, data_iterator, force=True)
        if (step < total_steps and not stopping
            and (curves_drawn_at is None or time.monotonic() - curves_drawn_at >= curves.CURVES_MIN_INTERVAL_S)):
          curves.refresh_curves(workdir)
          curves_drawn_at = time.monotonic()
      if stopping:
        logging.warning("%s received: saved the checkpoint of step %d, exiting", stop.signal_name, step)
        break
  finally:
    try:
      checkpoints.finish(mngr)
    finally:
      writer.close()  # after the last save: the records reach the store with the checkpoint they describe
  curves.refresh_curves(workdir)  # the last drawing, from every record the closed writer wrote
  return last_metrics
