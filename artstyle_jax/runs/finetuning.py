"""Supervised fine-tuning of a whole backbone plus a linear classifier: `finetune(source, config, workdir)`.

The paper's supervised comparison. The backbone is any source `models.load_backbone` reads
(normalised and sized as `evaluation.weights_config` says for eval --weights), or one of our
pretraining workdirs (its latest checkpoint's student backbone, `saved_run.restore_backbone`).
It is trained with a classifier on the training split's labels (`supervised_step`: AdamW,
warm-up + cosine, label smoothing, a lower backbone rate; the views are the linear probe's,
`views.ProbeTrainView`), then the classifier is scored on the test split (`views.EvalView`) with
`metrics.classification_results`.

The workdir is written as training's: config.json (with finetune.weights, the source),
checkpoints/<step>/ (Orbax: the state and the Grain iterator; running again resumes from the
latest, batch for batch; SIGTERM or SIGINT saves and stops), metrics-NNN.jsonl and tb/, and at the
end eval/finetune.json (`RESULTS_FILE`) and eval/finetune_confusion.png. A refused run (an
unknown source, a missing dataset, a workdir of another source) raises before anything is written.
"""
import json
import os
from typing import Any, Optional

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import ml_collections

from artstyle_jax import models
from artstyle_jax.data import pipeline
from artstyle_jax.data import view_specs
from artstyle_jax.data import views
from artstyle_jax.evaluators import metrics
from artstyle_jax.evaluators import report
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.method import supervised_step
from artstyle_jax.pictures import confusion
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import pretraining
from artstyle_jax.runs import saved_run
from artstyle_jax.runtime import multihost
from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import metric_writer

METHOD = "finetune"
RESULTS_FILE = f"{METHOD}.json"
CONFUSION_FILE = f"{METHOD}_confusion.png"


def results_path(workdir: str | os.PathLike) -> epath.Path:
  """Where a fine-tuning workdir's test results are."""
  return saved_run.eval_dir(os.fspath(workdir)) / RESULTS_FILE


def is_finetune_workdir(path: str | os.PathLike) -> bool:
  """Whether `path` is a workdir this module wrote (its config.json has finetune.weights)."""
  try:
    return "weights" in checkpoints.load_config(os.fspath(path)).get("finetune", {})
  except (checkpoints.WorkdirError, ValueError, OSError):
    return False


def _is_pretraining_workdir(path: str) -> bool:
  return ((epath.Path(path) / checkpoints.CONFIG_FILE).exists() and not models.backbones.is_transformers_directory(path)
          and not is_finetune_workdir(path))


def load_weights(source: str, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 overridden: tuple[str, ...]) -> tuple[nn.Module, Any, ml_collections.ConfigDict]:
  """(backbone, its params, the config with finetune.weights = the canonical source and the
  backbone's normalisation and image size).

  Raises:
    BackboneError, FileNotFoundError, WorkdirError: a source that names no backbone.
  """
  source = models.RANDOM_PREFIX + config.model.name if source == "random" else models.backbones.canonical_source(source)
  if is_finetune_workdir(source):
    raise models.BackboneError(f"{source} is a fine-tuning workdir; give the backbone it started from, or a "
                               "pretraining workdir")
  if _is_pretraining_workdir(source):
    saved = saved_run.saved_config(source)
    backbone = step_lib.build_backbone(saved, mesh)
    params, step = saved_run.restore_backbone(source, saved, mesh=mesh)
    logging.info("restored the student backbone of step %d from %s", step, source)
    config = config.copy_and_resolve_references()
    with config.unlocked():
      for key in ("mean", "std"):
        if f"views.student.{key}" not in overridden:
          config.views.student[key] = saved.views.student[key]
  else:
    backbone, variables = models.load_backbone(source, seed=config.seed, dtype=config_lib.compute_dtype(config),
                                               forms=step_lib.model_forms(config, mesh))
    params = variables["params"]
    config = evaluation.weights_config(config, backbone, overridden)
  with config.unlocked():
    config.finetune.weights = source
  return backbone, params, config


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises WorkdirError when `workdir` holds checkpoints of another fine-tuning or of training."""
  if checkpoints.latest_step(workdir) is None:
    return
  saved = checkpoints.load_config(workdir).get("finetune", {}).get("weights")
  if saved != config.finetune.weights:
    what = f"a fine-tuning of {saved}" if saved else "a pretraining run"
    raise checkpoints.WorkdirError(f"{workdir} holds checkpoints of {what}, not of {config.finetune.weights}; "
                                   "use a new --workdir")


def evaluate(backbone: nn.Module, params: Any, config: ml_collections.ConfigDict, test_source: Any,
             class_names: list[str], mesh: jax.sharding.Mesh, step: int) -> dict[str, Any]:
  """The fine-tuned classifier's `metrics.classification_results` on the test split, with the run's settings."""
  mean, std = view_specs.student_normalisation(config)
  logits_fn = jax.jit(lambda p, images: supervised_step.logits(backbone, p, images),
                      out_shardings=sharding.batch_sharding(mesh))
  scores, labels = features.extract_split(config, logits_fn, params, test_source,
                                          views.EvalView(config.image_size, mean, std), mesh,
                                          features.extraction_batch_size(config, mesh))
  return {**metrics.classification_results(scores, labels, class_names), "method": METHOD, "step": step,
          "random_init": config.finetune.weights.startswith(models.RANDOM_PREFIX),
          "model": models.model_name(backbone), "weights": config.finetune.weights,
          "num_parameters": models.num_parameters({"params": params["backbone"]}),
          "dataset": config.dataset.name, "train_split": config.dataset.train_split,
          "test_split": config.dataset.eval_split, "image_size": int(config.image_size),
          "epochs": int(config.num_epochs), "batch_size": int(config.batch_size),
          "learning_rate": float(config.optim.base_lr), "weight_decay": float(config.optim.weight_decay),
          "backbone_lr_scale": float(config.finetune.backbone_lr_scale),
          "label_smoothing": float(config.finetune.label_smoothing)}


def read_results(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A finished fine-tuning's eval/finetune.json, for a comparison on config.dataset's test split.

  Raises:
    WorkdirError: the run has not finished, or was scored on another dataset or split.
  """
  path = results_path(workdir)
  if not path.exists():
    raise checkpoints.WorkdirError(f"{workdir} holds no {RESULTS_FILE}: the fine-tuning has not finished (run "
                                   "python -m artstyle_jax.finetune on it again)")
  results = json.loads(path.read_text())
  if (results["dataset"], results["test_split"]) != (config.dataset.name, config.dataset.eval_split):
    raise checkpoints.WorkdirError(f"{workdir} was scored on {results['dataset']} {results['test_split']}, the "
                                   f"comparison is on {config.dataset.name} {config.dataset.eval_split}")
  return results


def _write_results(workdir: str, results: dict[str, Any]) -> None:
  out = saved_run.eval_dir(workdir)
  out.mkdir(parents=True, exist_ok=True)
  report.write_json(results, os.fspath(out / RESULTS_FILE))
  title = (f"{METHOD}: {results['model']} ({results['weights']}), step {results['step']}, "
           f"{results['dataset']} {results['test_split']}")
  confusion.draw_confusion_matrix(results, title, out / CONFUSION_FILE)


def finetune(source: str, config: ml_collections.ConfigDict, workdir: str, *, overridden: tuple[str, ...] = (),
             verbose: bool = True) -> Optional[dict[str, Any]]:
  """Fine-tunes (or resumes) the run in `workdir` (module docstring); returns the test results,
  None when stopped by a signal before the last step.

  Args:
    source: the backbone (`models.load_backbone`'s sources, 'random' for random:<model.name>, or a
      pretraining workdir).
    config: configs/finetune.py's keys with the user's overrides.
    overridden: the keys the user set, which the backbone's normalisation and size leave alone.

  Raises:
    ConfigError, FileNotFoundError, BackboneError, WorkdirError: before anything is written.
    health.TrainingError: a non-finite loss. SaveError: a checkpoint could not be written.
  """
  config_lib.validate(config)
  train_source, test_source, class_names = saved_run.open_splits(config)
  mesh = sharding.create_mesh(config.mesh.fsdp)
  sharding.check_batch_divides(config.batch_size, mesh)
  backbone, backbone_params, config = load_weights(source, config, mesh, overridden)
  check_workdir(workdir, config)
  steps_per_epoch = pipeline.steps_per_epoch(len(train_source), config.batch_size)
  total_steps = config_lib.total_steps(config, steps_per_epoch=steps_per_epoch)

  optimizer, schedule = supervised_step.create_optimizer(config, steps_per_epoch)
  state, shardings = supervised_step.create_state(backbone, backbone_params, len(class_names), config, optimizer,
                                                  mesh)
  del backbone_params
  train_step = supervised_step.compile_step(
      supervised_step.make_step(backbone, optimizer, schedule, num_classes=len(class_names),
                                label_smoothing=config.finetune.label_smoothing), shardings, mesh)
  mean, std = view_specs.student_normalisation(config)
  data_iterator = iter(pipeline.train_dataset(
      train_source, views.ProbeTrainView(config.image_size, mean, std), global_batch_size=config.batch_size,
      seed=config.seed, num_workers=config.dataset.num_workers, num_threads=config.dataset.num_threads))

  multihost.barrier("finetune_state_created")
  mngr = checkpoints.manager(workdir, max_to_keep=config.keep_checkpoints, async_save=config.async_checkpointing)
  abstract_state = checkpoints.abstract_like(state, shardings)
  restored = checkpoints.restore_newest(mngr, lambda s: checkpoints.restore(mngr, s, abstract_state, data_iterator))
  start_step = 0
  if restored is not None:
    (state, data_iterator), start_step = restored
    logging.info("Resumed from the checkpoint of step %d in %s", start_step, workdir)
  checkpoints.save_config(workdir, config)

  writer = metric_writer.MetricWriter(workdir, total_steps=total_steps, batch_size=config.batch_size)
  stop = pretraining.StopRequest()
  stop.install()
  try:
    for step in range(start_step + 1, total_steps + 1):
      state, step_metrics = train_step(state, sharding.shard_batch(next(data_iterator), mesh))
      stopping = stop.agreed(step, config.log_every_steps)
      if step % config.log_every_steps == 0 or step == total_steps or stopping:
        logged = jax.device_get(step_metrics)
        pretraining.check_finite(step, logged, workdir)
        writer.write_train(step, logged)
      if step % config.checkpoint_every_steps == 0 or step == total_steps or stopping:
        pretraining.check_finite(step, jax.device_get(step_metrics), workdir)
        writer.flush()  # every record up to the checkpoint is kept, in an object store too
        checkpoints.save(mngr, step, state, data_iterator, force=True)
      if stopping:
        logging.warning("%s received: saved the checkpoint of step %d, exiting", stop.signal_name, step)
        return None
  finally:
    try:
      checkpoints.finish(mngr)
    finally:
      writer.close()  # after the last save: the records reach the store with the checkpoint they describe

  results = evaluate(backbone, state.params, config, test_source, class_names, mesh, total_steps)
  if jax.process_index() == 0:
    _write_results(workdir, results)
    if verbose:
      print(report.format_table(results, title=f"{METHOD}: {results['model']} ({results['weights']}), "
                                               f"{results['dataset']} {results['test_split']}"), flush=True)
  return results
