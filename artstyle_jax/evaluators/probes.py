"""The three linear probe protocols of an evaluation, on a frozen backbone's pooled features.

- 'fast': features of the training split made once (plus augmented copies), standardised and
  fitted on device in one jitted scan, the weight decay chosen on a held-out fifth of the
  training images (`linear_probe.select_weight_decay`, then `fit_fast`).
- 'paper': artstyle_jax/METHOD.md's protocol (`linear_probe.fit_paper`): fresh
  `views.ProbeTrainView` views every epoch, batch 16, 100 epochs, the final epoch's head. Each
  epoch is a new shuffle of the training split with its last incomplete batch dropped (as
  training does).
- 'baseline': the same with the authors' protocol for the other methods' ResNet-50 checkpoints
  (artstyle_jax/METHOD.md, "The paper's baselines"): learning rate 0.3.
"""
from collections.abc import Mapping
import itertools
import math
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from artstyle_jax.data import pipeline
from artstyle_jax.data import view_specs
from artstyle_jax.data import views
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.method import sharding
from artstyle_jax.models import heads

MODES = ("fast", "paper", "baseline")
PAPER_BATCH_SIZE = 16
BASELINE_LEARNING_RATE = 0.3  # the published resnet50_moco_v2.py


class AugmentedCopy:
  """`transform` with draws of its own for copy `copy` of a split.

  The eval pass gives a record the same Generator on every pass; this derives a new one from
  it, the copy and the seed, so every (seed, copy, record) gets its own deterministic views.
  """

  def __init__(self, transform: pipeline.Transform, copy: int, seed: int):
    self.transform = transform
    self.copy = copy
    self.seed = seed

  def __call__(self, image_bytes: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    entropy = [self.seed, self.copy, *rng.integers(0, 2**32, size=4).tolist()]
    return self.transform(image_bytes, np.random.default_rng(entropy))


def fit_fast_probe(train_features: np.ndarray, train_labels: np.ndarray, num_classes: int,
                   seed: int) -> tuple[heads.LinearHead, dict[str, Any]]:
  """Fast-mode head on (copies, N, C) features; returns (head, its settings for the results)."""
  select_rng, fit_rng = jax.random.split(jax.random.PRNGKey(seed))
  selection = linear_probe.select_weight_decay(train_features, train_labels, num_classes, rng=select_rng)
  fit = linear_probe.fit_fast(train_features, train_labels, num_classes, weight_decay=selection.weight_decay,
                              rng=fit_rng)
  return fit.head, {
      "weight_decay": selection.weight_decay,
      "weight_decay_validation_top1": {f"{wd:g}": acc for wd, acc in selection.accuracies.items()},
      "steps": linear_probe.FAST_STEPS,
      "final_loss": float(fit.losses[-1]),
  }


def _probe_mesh(batch_size: int) -> jax.sharding.Mesh:
  # On one process the probe's small batches run on as many devices as divide them.
  if jax.process_count() == 1:
    return sharding.create_mesh(devices=jax.devices()[:math.gcd(batch_size, jax.device_count())])
  mesh = sharding.create_mesh()
  if batch_size % mesh.size:
    raise config_lib.ConfigError(f"the paper probe's batch of {batch_size} does not split over the "
                                 f"{mesh.size} devices of this multi-process run")
  return mesh


def probe_options(mode: str, learning_rate: Optional[float] = None, momentum: Optional[float] = None,
                  weight_decay: Optional[float] = None, init_stddev: Optional[float] = None) -> dict[str, float]:
  """The SGD probe's learning_rate, momentum, weight_decay and init_stddev: the paper's (lr 0.001)
  or the baseline's (lr 0.3), Nesterov momentum 0.9, no weight decay, N(0, 0.01) weights; each
  value given replaces its default."""
  defaults = {"learning_rate": BASELINE_LEARNING_RATE if mode == "baseline" else linear_probe.PAPER_LEARNING_RATE,
              "momentum": linear_probe.PAPER_MOMENTUM, "weight_decay": 0.0,
              "init_stddev": linear_probe.PAPER_INIT_STDDEV}
  given = {"learning_rate": learning_rate, "momentum": momentum, "weight_decay": weight_decay,
           "init_stddev": init_stddev}
  return {key: float(defaults[key] if given[key] is None else given[key]) for key in defaults}


def fit_paper_probe(config: ml_collections.ConfigDict, backbone, backbone_params: Any, train_source: Any,
                    num_classes: int, *, epochs: int, batch_size: int,
                    options: Mapping[str, float]) -> tuple[heads.LinearHead, dict[str, Any]]:
  """Paper- or baseline-mode head (artstyle_jax/METHOD.md "Linear evaluation", "The paper's baselines");
  `options`: `probe_options`. Returns (head, its settings for the results)."""
  mesh = _probe_mesh(batch_size)
  params = jax.device_put(backbone_params, sharding.replicated(mesh))
  feature_fn = features.make_feature_fn(backbone, mesh)
  mean, std = view_specs.student_normalisation(config)
  steps_per_epoch = pipeline.steps_per_epoch(len(train_source), batch_size)
  stream = iter(pipeline.train_dataset(
      train_source, views.ProbeTrainView(config.image_size, mean, std), global_batch_size=batch_size,
      seed=config.seed, num_epochs=epochs, num_workers=config.dataset.num_workers,
      num_threads=config.dataset.num_threads))

  # Features and labels come back to every process whole: the head trains on each, identically.
  def host_features(images):
    return multihost_utils.process_allgather(feature_fn(params, images), tiled=True)

  def make_train_batches(epoch):
    del epoch  # The stream's epochs follow one another, each with its own shuffle and views.
    for batch in itertools.islice(stream, steps_per_epoch):
      arrays = sharding.shard_batch({"image": batch["image"], "label": batch["label"]}, mesh)
      yield arrays["image"], np.asarray(multihost_utils.process_allgather(arrays["label"], tiled=True))

  def log_epoch(epoch, head, loss):
    del head
    logging.info("linear probe: epoch %d/%d, mean training loss %.4f", epoch + 1, epochs, loss)

  fit = linear_probe.fit_paper(host_features, make_train_batches, num_classes, steps_per_epoch,
                               jax.random.PRNGKey(config.seed), epochs=epochs, on_epoch_end=log_epoch,
                               **options)
  return fit.head, {"epochs": epochs, "batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
                    **options, "final_epoch_loss": float(fit.epoch_losses[-1])}
