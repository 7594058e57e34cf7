"""Evaluation of a trained student: weighted kNN and a linear probe on its pooled features.

  python -m artstyle_jax.eval --workdir=DIR [--step=N] [--mode=fast|paper|baseline] [--augmented_copies=N]
      [--random_init] [--embedding] [--config.key=value ...]
  python -m artstyle_jax.eval --weights=SOURCE --workdir=OUT --config.dataset.name=NAME
      --config.dataset.data_dir=DIR [--mode=...] [--embedding] [--config.key=value ...]

The student's backbone is restored from the workdir's checkpoint (the latest, or --step) and
frozen. Pooled features of the training split (`config.dataset.train_split`, deterministic
`views.EvalView`) are the kNN bank and the probe's training set; the test split
(`config.dataset.eval_split`, the same view) is what both are scored on.

- kNN: weighted votes of the `config.knn_k` most cosine-similar training images (`evaluators.knn`).
- Linear probe, fast mode: the features above, plus `--augmented_copies` passes of the training
  split through `views.ProbeTrainView` (RandomResizedCrop + flip, each copy its own draws),
  standardised and fitted on device in one jitted scan, the weight decay chosen on a held-out
  fifth of the training images (`linear_probe.select_weight_decay`, then `fit_fast`).
- Linear probe, paper mode: METHOD.md's protocol (`linear_probe.fit_paper`): fresh
  ProbeTrainView views every epoch, batch 16, 100 epochs, the final epoch's head. Each epoch is
  a new shuffle of the training split with its last incomplete batch dropped (as training does).
- Linear probe, baseline mode: the same with the authors' protocol for the other methods' ResNet-50
  checkpoints (METHOD.md, "The paper's baselines"): learning rate 0.3. --probe_learning_rate,
  --probe_momentum, --probe_weight_decay, --probe_init_stddev, --paper_epochs and
  --paper_batch_size set any of the paper and baseline probes' values.

External backbones: with --weights=SOURCE (`models.load_backbone`: a hub id such as
timm/convnext_base.fb_in22k_ft_in1k, a ConvNeXt .safetensors file, an authors' .pth, a ResNet-50
checkpoint of MoCo, SwAV, MMSelfSup, torchvision, ..., or random:MODEL) no training run is needed:
the config is configs/paper.py with the --config overrides (dataset.name and dataset.data_dir at
least). A ResNet is normalised with the ImageNet constants unless views.student is overridden;
a ConvNeXt with the paper's student constants. Results go to OUT/eval/, with the config used.

`--config.key=value` overrides the workdir's saved config.json, e.g. `dataset.data_dir` when the
dataset moved, or `dataset.eval_split=validation`; keys that fix the model's shapes cannot change.
`--random_init` evaluates the untrained backbone of `config.seed` (the student's initialisation
when config.init is 'random') instead of a checkpoint, as a baseline.

Outputs (process 0), in DIR/eval/ (DIR/eval/random_init/ with --random_init), each tagged with
the checkpoint step inside:
  knn.json, knn_confusion.png                 `metrics.classification_results` plus the settings
  linear_<mode>.json, linear_<mode>_confusion.png
  linear_head.npz                             the probe for predict (`HEAD_KEYS`)
  embedding.png                               with --embedding: t-SNE map of the test features
and the tables on stdout. A refused evaluation (no checkpoint, no such step, a missing dataset)
exits 1 with one error line before anything is written.
"""
from collections.abc import Mapping
import functools
import itertools
import math
import os
import pathlib
import sys
import tempfile
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
from ml_collections import config_flags
import numpy as np

from artstyle_jax import checkpoints
from artstyle_jax import config_lib
from artstyle_jax import features
from artstyle_jax import host_memory
from artstyle_jax import models
from artstyle_jax import paths
from artstyle_jax import pictures
from artstyle_jax import program_logging
from artstyle_jax import sharding
from artstyle_jax import step as step_lib
from artstyle_jax.data import pipeline
from artstyle_jax.data import sources
from artstyle_jax.data import views
from artstyle_jax.evaluators import knn
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.evaluators import metrics
from artstyle_jax.evaluators import report

MODES = ("fast", "paper", "baseline")
PAPER_BATCH_SIZE = 16
BASELINE_LEARNING_RATE = 0.3  # the published resnet50_moco_v2.py
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "paper.py"
EVAL_DIR = "eval"
RANDOM_INIT_DIR = "random_init"
HEAD_FILE = "linear_head.npz"
# Arrays of linear_head.npz: the head (kernel (C, K) float32, bias (K,) float32) for raw pooled
# features, and what predict needs to make those features: the backbone's checkpoint step (-1 for
# a random initialisation), the eval transform (image_size, crop_fraction, mean, std) and the
# class names in label order; for an external backbone, its --weights source and the seed of a
# random one ('' and config.seed for a workdir's).
HEAD_KEYS = ("kernel", "bias", "class_names", "model_name", "step", "mode", "image_size", "crop_fraction",
             "mean", "std", "weights", "seed")


def eval_dir(workdir: str, random_init: bool = False) -> epath.Path:
  """Where eval writes its results for a workdir."""
  path = epath.Path(workdir) / EVAL_DIR
  return path / RANDOM_INIT_DIR if random_init else path


# ---------------------------------------------------------------------------------------------
# The workdir: config, checkpoint step, backbone parameters.


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


def restore_backbone(workdir: str, config: ml_collections.ConfigDict, step: Optional[int] = None,
                     mesh: Optional[jax.sharding.Mesh] = None) -> tuple[Any, int]:
  """The student's backbone parameters from a checkpoint, replicated over `mesh`.

  Only that subtree of the saved TrainState is read (Orbax partial restore), so teachers and
  optimiser state never take memory.

  The latest checkpoint when `step` is None: a damaged one is moved aside, with a warning, for
  the one before it (`checkpoints.restore_newest`).

  Returns:
    (backbone params, the checkpoint's step).
  Raises:
    WorkdirError: no such checkpoint, a damaged `step`, or one whose student is not
      config.model's backbone.
  """
  checkpoint_step(workdir, step)
  mesh = sharding.create_mesh() if mesh is None else mesh
  replicated = sharding.replicated(mesh)
  abstract = jax.eval_shape(_init_backbone_fn(config, step_lib.build_backbone(config, mesh)))
  target = {"params": {"backbone": jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)}}

  def read(step: int) -> Any:
    try:
      return checkpoints.restore_subtree(workdir, step, target)["params"]["backbone"]
    except checkpoints.WorkdirError:  # a damaged checkpoint, for restore_newest
      raise
    except (ValueError, KeyError) as e:
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise checkpoints.WorkdirError(f"the checkpoint of step {step} in {workdir} holds no {config.model.name} "
                                     f"student backbone ({reason})") from e

  with checkpoints.manager(workdir, read_only=True) as mngr:
    restored = checkpoints.restore_newest(mngr, read, step)
  if restored is None:
    raise checkpoints.WorkdirError(f"{workdir} holds no checkpoint that reads back: each was damaged and moved "
                                   f"aside to {checkpoints.CHECKPOINT_DIR}/<step>{checkpoints.CORRUPT_SUFFIX}")
  return restored


def open_splits(config: ml_collections.ConfigDict) -> tuple[Any, Any, list[str]]:
  """(training split, test split, class names) of config.dataset.

  Raises:
    ConfigError: dataset.data_dir unset, or a split the dataset lacks.
    FileNotFoundError: no such directory, or the dataset was not built in it.
  """
  data_dir = config.dataset.data_dir
  if not data_dir:
    raise config_lib.ConfigError("dataset.data_dir is not set: pass --config.dataset.data_dir=DIR")
  if not epath.Path(data_dir).exists():
    raise FileNotFoundError(f"dataset.data_dir {data_dir} does not exist")
  try:
    train = sources.open_split(config.dataset.name, data_dir, config.dataset.train_split)
    test = sources.open_split(config.dataset.name, data_dir, config.dataset.eval_split)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  except FileNotFoundError as e:
    raise FileNotFoundError(f"no built dataset {config.dataset.name!r} in {data_dir}: build it with "
                            "`python -m artstyle_jax.data.builders`, or pass --config.dataset.name / "
                            "--config.dataset.data_dir") from e
  return train, test, sources.label_names(config.dataset.name, data_dir)


# ---------------------------------------------------------------------------------------------
# Features and probes.


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


def extraction_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """config.batch_size rounded up to a multiple of the mesh's devices (which may not be training's)."""
  return -(-config.batch_size // mesh.size) * mesh.size


def extract_features(config: ml_collections.ConfigDict, feature_fn: features.FeatureFn, backbone_params: Any,
                     source: Any, transform: pipeline.Transform, mesh: jax.sharding.Mesh,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, C) float32, labels (N,) int32) of every record of `source`, in source order."""
  batches = pipeline.eval_dataset(source, transform, global_batch_size=batch_size,
                                  num_workers=config.dataset.num_workers, num_threads=config.dataset.num_threads)
  feats, labels, _ = features.extract(feature_fn, backbone_params, batches, mesh)
  return feats, labels


def fit_fast_probe(train_features: np.ndarray, train_labels: np.ndarray, num_classes: int,
                   seed: int) -> tuple[linear_probe.Head, dict[str, Any]]:
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
                    options: Mapping[str, float]) -> tuple[linear_probe.Head, dict[str, Any]]:
  """Paper- or baseline-mode head (METHOD.md "Linear evaluation", "The paper's baselines");
  `options`: `probe_options`. Returns (head, its settings for the results)."""
  mesh = _probe_mesh(batch_size)
  params = jax.device_put(backbone_params, sharding.replicated(mesh))
  feature_fn = features.make_feature_fn(backbone, mesh)
  mean, std = views.student_normalisation(config)
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


# ---------------------------------------------------------------------------------------------
# Outputs.


def head_arrays(head: linear_probe.Head, config: ml_collections.ConfigDict, class_names: list[str], mode: str,
                step: Optional[int], model_name: Optional[str] = None,
                weights: Optional[str] = None) -> dict[str, np.ndarray]:
  """The contents of linear_head.npz (`HEAD_KEYS`); model_name defaults to config.model.name."""
  mean, std = views.student_normalisation(config)
  return {
      "kernel": np.asarray(head["kernel"], np.float32),
      "bias": np.asarray(head["bias"], np.float32),
      "class_names": np.asarray(class_names, np.str_),
      "model_name": np.asarray(model_name or config.model.name),
      "step": np.asarray(-1 if step is None else step, np.int64),
      "mode": np.asarray(mode),
      "image_size": np.asarray(config.image_size, np.int64),
      "crop_fraction": np.asarray(views.EVAL_CROP_FRACTION, np.float64),
      "mean": np.asarray(mean, np.float64),
      "std": np.asarray(std, np.float64),
      "weights": np.asarray(weights or ""),
      "seed": np.asarray(config.seed, np.int64),
  }


def _publish(local: str, target: epath.Path) -> None:
  """Copies a local file to `target` (local or remote) under a temporary name, then renames it,
  so that a reader never sees a partial file."""
  staged = target.with_name(target.name + ".tmp")
  staged.write_bytes(epath.Path(local).read_bytes())
  staged.replace(target)


def write_outputs(out_dir: str | os.PathLike, results: Mapping[str, Mapping[str, Any]],
                  head: Mapping[str, np.ndarray]) -> None:
  """<method>.json and <method>_confusion.png per results entry, and linear_head.npz."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    for method, result in results.items():
      report.write_json(result, os.path.join(tmp, f"{method}.json"))
      report.plot_confusion_matrix(result, os.path.join(tmp, f"{method}_confusion.png"), title=_title(result))
    np.savez(os.path.join(tmp, HEAD_FILE), **head)
    for name in sorted(os.listdir(tmp)):
      _publish(os.path.join(tmp, name), out / name)


def _title(result: Mapping[str, Any]) -> str:
  if result.get("weights"):
    backbone = result["weights"]
  elif result["random_init"]:
    backbone = "random init"
  else:
    backbone = "trained" if result["step"] is None else f"step {result['step']}"
  return f"{result['method']}: {result['model']} ({backbone}), {result['dataset']} {result['test_split']}"


# ---------------------------------------------------------------------------------------------
# Evaluation.


def evaluate_backbone(config: ml_collections.ConfigDict, backbone_params: Any, out_dir: str | os.PathLike, *,
                      mode: str = "fast", augmented_copies: int = 0,
                      paper_epochs: int = linear_probe.PAPER_EPOCHS, paper_batch_size: int = PAPER_BATCH_SIZE,
                      batch_size: Optional[int] = None, step: Optional[int] = None,
                      mesh: Optional[jax.sharding.Mesh] = None, verbose: bool = True,
                      probe: Optional[Mapping[str, float]] = None, backbone: Optional[nn.Module] = None,
                      weights: Optional[str] = None, embedding: bool = False) -> dict[str, dict[str, Any]]:
  """kNN and linear probe of one backbone on config.dataset; writes `out_dir` (see module docstring).

  Args:
    config: the run's config (model, image_size, views.student, dataset, knn_k, seed).
    backbone_params: the backbone's parameters; None for the random initialisation of config.seed
      (of config.model's ConvNeXt).
    out_dir: directory for the results (created; files in it of the same names are replaced).
    mode: 'fast', 'paper' or 'baseline' linear probe.
    augmented_copies: fast mode: ProbeTrainView passes over the training split added to its
      EvalView features.
    paper_epochs, paper_batch_size: paper and baseline modes' epochs (100) and batch (16).
    batch_size: images per feature-extraction step, a multiple of the mesh's devices; default
      config.batch_size rounded up to one.
    step: the checkpoint step the parameters come from, recorded in the outputs.
    mesh: devices of the extraction, default all.
    verbose: print the tables (process 0).
    probe: paper and baseline modes' SGD values, `probe_options(mode)` by default.
    backbone: the module of `backbone_params` when it is not config.model's ConvNeXt (an
      external backbone, `models.load_backbone`); `weights` is then the source it came from.
    embedding: also draw the t-SNE map of the test split's features, `pictures.EMBEDDING_FILE`.

  Returns:
    {'knn': results, 'linear': results}, each `metrics.classification_results` plus 'method'
    ('knn', 'linear_fast', 'linear_paper' or 'linear_baseline'), 'step', 'random_init', 'model',
    'weights', 'num_parameters', 'dataset', 'train_split', 'test_split', 'num_train', 'image_size'
    and the method's settings.
  Raises:
    ConfigError, FileNotFoundError: unusable options or dataset, before anything is written.
  """
  if mode not in MODES:
    raise config_lib.ConfigError(f"mode must be one of {MODES}, got {mode!r}")
  if augmented_copies < 0 or (augmented_copies and mode != "fast"):
    raise config_lib.ConfigError(f"augmented_copies must be >= 0 and only goes with mode 'fast', got "
                                 f"{augmented_copies} with mode {mode!r}")
  if paper_epochs < 1 or paper_batch_size < 1:
    raise config_lib.ConfigError(f"paper_epochs and paper_batch_size must be >= 1, got {paper_epochs} and "
                                 f"{paper_batch_size}")
  mesh = sharding.create_mesh() if mesh is None else mesh
  batch_size = extraction_batch_size(config, mesh) if batch_size is None else batch_size
  if batch_size < 1 or batch_size % mesh.size:
    raise config_lib.ConfigError(f"the extraction batch of {batch_size} does not split over {mesh.size} devices")
  train_source, test_source, class_names = open_splits(config)
  num_classes = len(class_names)
  if config.knn_k > len(train_source):
    raise config_lib.ConfigError(f"knn_k={config.knn_k} exceeds the {len(train_source)} training images")
  if mode != "fast" and len(train_source) < paper_batch_size:
    raise config_lib.ConfigError(f"the {len(train_source)} training images do not fill one {mode} probe batch "
                                 f"of {paper_batch_size}")
  if embedding and len(test_source) < pictures.MIN_EMBEDDING_POINTS:
    raise config_lib.ConfigError(f"the {len(test_source)} test images are too few for an embedding map "
                                 f"(at least {pictures.MIN_EMBEDDING_POINTS})")

  if backbone is None:
    backbone = step_lib.build_backbone(config, mesh)
    model_name = config.model.name
    random_init = backbone_params is None
    if random_init:
      backbone_params = random_backbone_params(config, backbone, mesh)
  else:
    model_name = models.model_name(backbone)
    random_init = weights.startswith(models.RANDOM_PREFIX)
    backbone_params = jax.device_put(backbone_params, sharding.replicated(mesh))
  feature_fn = features.make_feature_fn(backbone, mesh)
  extract = functools.partial(extract_features, config, feature_fn, backbone_params, mesh=mesh,
                              batch_size=batch_size)
  mean, std = views.student_normalisation(config)
  eval_view = views.EvalView(config.image_size, mean, std)
  logging.info("extracting features of %s (%d images) and %s (%d images)", config.dataset.train_split,
               len(train_source), config.dataset.eval_split, len(test_source))
  train_features, train_labels = extract(train_source, eval_view)
  test_features, test_labels = extract(test_source, eval_view)
  common = {"step": step, "random_init": random_init, "model": model_name, "weights": weights,
            "num_parameters": models.num_parameters({"params": backbone_params}), "dataset": config.dataset.name,
            "train_split": config.dataset.train_split, "test_split": config.dataset.eval_split,
            "num_train": int(len(train_labels)), "image_size": int(config.image_size)}

  knn_scores = knn.knn_classify(train_features, train_labels, test_features, num_classes, k=config.knn_k).scores
  knn_results = {**metrics.classification_results(np.asarray(knn_scores), test_labels, class_names),
                 "method": "knn", "k": int(config.knn_k), "temperature": knn.DEFAULT_TEMPERATURE, **common}

  if mode == "fast":
    copies = [train_features]
    probe_view = views.ProbeTrainView(config.image_size, mean, std)
    for copy in range(1, augmented_copies + 1):
      logging.info("extracting augmented copy %d/%d of %s", copy, augmented_copies, config.dataset.train_split)
      copies.append(extract(train_source, AugmentedCopy(probe_view, copy, config.seed))[0])
    head, settings = fit_fast_probe(np.stack(copies), train_labels, num_classes, config.seed)
    settings["augmented_copies"] = augmented_copies
  else:
    head, settings = fit_paper_probe(config, backbone, backbone_params, train_source, num_classes,
                                     epochs=paper_epochs, batch_size=paper_batch_size,
                                     options=probe_options(mode) if probe is None else probe)
  linear_scores = linear_probe.apply_head(head, test_features)
  linear_results = {**metrics.classification_results(np.asarray(linear_scores), test_labels, class_names),
                    "method": f"linear_{mode}", **settings, **common}

  results = {"knn": knn_results, "linear": linear_results}
  if jax.process_index() == 0:
    write_outputs(out_dir, {r["method"]: r for r in results.values()},
                  head_arrays(head, config, class_names, mode, step, model_name, weights))
    if embedding:
      title = (f"{model_name} ({pictures.describe_step(None if random_init else step)}), "
               f"{config.dataset.name} {config.dataset.eval_split}")
      pictures.draw_embedding(test_features, test_labels, class_names, title,
                              epath.Path(out_dir) / pictures.EMBEDDING_FILE, seed=config.seed)
    if verbose:
      for result in results.values():
        print(report.format_table(result, title=_title(result)) + "\n", flush=True)
  return results


def evaluate_workdir(workdir: str, config: ml_collections.ConfigDict, *, step: Optional[int] = None,
                     random_init: bool = False, mesh: Optional[jax.sharding.Mesh] = None,
                     out_dir: Optional[str | os.PathLike] = None, **options) -> dict[str, dict[str, Any]]:
  """Evaluates a workdir's checkpoint (the latest, or `step`), or with `random_init` the untrained
  backbone, into `out_dir` (default `eval_dir(workdir, random_init)`); `options` as
  `evaluate_backbone`'s.

  Raises:
    WorkdirError, ConfigError, FileNotFoundError: before anything is written.
  """
  checkpoints.check_compatible(workdir, config)
  config_lib.validate(config)
  if not random_init:
    checkpoint_step(workdir, step)
  open_splits(config)  # A missing dataset is refused before the backbone is restored.
  mesh = sharding.create_mesh() if mesh is None else mesh
  params = None
  if not random_init:
    params, step = restore_backbone(workdir, config, step, mesh)
    logging.info("restored the student backbone of step %d from %s", step, workdir)
  out_dir = eval_dir(workdir, random_init) if out_dir is None else out_dir
  return evaluate_backbone(config, params, out_dir, step=None if random_init else step, mesh=mesh, **options)


def weights_config(config: ml_collections.ConfigDict, backbone: nn.Module,
                   overridden: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """`config` for evaluating an external backbone: a ResNet gets the ImageNet normalisation its
  checkpoints were trained with, unless views.student.mean / .std are among the `overridden` keys."""
  config = config.copy_and_resolve_references()
  if isinstance(backbone, models.resnet.ResNet):
    with config.unlocked():
      if "views.student.mean" not in overridden:
        config.views.student.mean = IMAGENET_MEAN
      if "views.student.std" not in overridden:
        config.views.student.std = IMAGENET_STD
  return config


def evaluate_weights(source: str, config: ml_collections.ConfigDict, out_dir: str | os.PathLike, *,
                     overridden: tuple[str, ...] = (), mesh: Optional[jax.sharding.Mesh] = None,
                     **options) -> dict[str, dict[str, Any]]:
  """Evaluates the backbone `source` names (`models.load_backbone`; 'random' alone is
  random:<config.model.name>) into `out_dir`, which also gets the config used (config.json);
  `options` as `evaluate_backbone`'s.

  Raises:
    ConfigError, FileNotFoundError, BackboneError: before anything is written.
  """
  config_lib.validate(config)
  open_splits(config)  # A missing dataset is refused before the backbone is loaded.
  source = models.RANDOM_PREFIX + config.model.name if source == "random" else models.backbones.canonical_source(source)
  backbone, variables = models.load_backbone(source, seed=config.seed, dtype=config_lib.compute_dtype(config),
                                             forms=step_lib.model_forms(config, mesh))
  config = weights_config(config, backbone, overridden)
  logging.info("loaded %s (%s)", source, models.model_name(backbone))
  results = evaluate_backbone(config, variables["params"], out_dir, mesh=mesh, backbone=backbone, weights=source,
                              **options)
  if jax.process_index() == 0:
    checkpoints.save_config(os.fspath(out_dir), config)
  return results


# ---------------------------------------------------------------------------------------------
# The program.


def _define_flags() -> None:
  """The program's flags; defined only when it runs as a program, so that importing this module
  does not claim flag names (workdir, step) that the other programs define too."""
  paths.DEFINE_path("workdir", None, "Workdir of a training run (config.json and checkpoints/); with "
                    "--weights, the directory for the results.")
  flags.DEFINE_string("weights", None, "Evaluate this backbone instead of a training run's (models.load_backbone: "
                      "a hub id, a .safetensors / .pth file, random:MODEL); the config is configs/paper.py "
                      "with the --config overrides.")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the latest.")
  flags.DEFINE_enum("mode", "fast", MODES, "Linear probe: 'fast' (features once, fitted on device), "
                    "'paper' (METHOD.md's protocol) or 'baseline' (the paper's protocol for the other methods).")
  flags.DEFINE_integer("augmented_copies", 0, "Fast mode: augmented passes over the training split.", lower_bound=0)
  flags.DEFINE_bool("random_init", False, "Evaluate the random initialisation of config.seed instead of a "
                    "checkpoint (results in DIR/eval/random_init/).")
  define_probe_flags()
  flags.DEFINE_bool("embedding", False, f"Also draw the test split's features as a t-SNE map, "
                    f"DIR/eval/{pictures.EMBEDDING_FILE}.")
  flags.DEFINE_integer("batch_size", None, "Images per feature-extraction step, a multiple of the device count; "
                       "default config.batch_size rounded up to one.",
                       lower_bound=1)


def define_probe_flags() -> None:
  """The paper and baseline probes' flags (compare has them too)."""
  flags.DEFINE_integer("paper_epochs", linear_probe.PAPER_EPOCHS, "Paper and baseline modes: epochs.", lower_bound=1)
  flags.DEFINE_integer("paper_batch_size", PAPER_BATCH_SIZE, "Paper and baseline modes: batch size.", lower_bound=1)
  flags.DEFINE_float("probe_learning_rate", None, "Paper and baseline modes: base learning rate; default "
                     f"{linear_probe.PAPER_LEARNING_RATE} (paper), {BASELINE_LEARNING_RATE} (baseline).")
  flags.DEFINE_float("probe_momentum", None, f"Nesterov momentum; default {linear_probe.PAPER_MOMENTUM}.")
  flags.DEFINE_float("probe_weight_decay", None, "Weight decay; default 0.")
  flags.DEFINE_float("probe_init_stddev", None, f"Initial weights' stddev; default {linear_probe.PAPER_INIT_STDDEV}.")


def probe_flag_options(flag_values: flags.FlagValues) -> dict[str, Any]:
  """`evaluate_backbone`'s probe options from the flags of `define_probe_flags`."""
  return {"paper_epochs": flag_values.paper_epochs, "paper_batch_size": flag_values.paper_batch_size,
          "probe": probe_options(flag_values.mode, flag_values.probe_learning_rate, flag_values.probe_momentum,
                                 flag_values.probe_weight_decay, flag_values.probe_init_stddev)}


def override_keys(args: list[str]) -> tuple[str, ...]:
  """The keys of the --config.key=value arguments among `args`."""
  return tuple(arg[len("--config."):].split("=", 1)[0] for arg in args if arg.startswith("--config."))


def _fail(message: Any) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags, then `--config.key=value` overrides of the saved config of --workdir.

  The overridable config is only known once --workdir is, hence two passes.
  """
  try:
    remaining = flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    _fail(e)
  if not flags.FLAGS.workdir:
    _fail("--workdir is required")
  if flags.FLAGS.weights:
    if flags.FLAGS.random_init or flags.FLAGS.step is not None:
      _fail("--weights evaluates one backbone: --random_init and --step belong to a training run's workdir "
            "(a random backbone is --weights=random:MODEL)")
    config, where = config_lib.base_config(str(WEIGHTS_CONFIG), "paper"), str(WEIGHTS_CONFIG)
  else:
    try:
      config = saved_config(flags.FLAGS.workdir)
    except checkpoints.WorkdirError as e:
      _fail(e)
    where = f"{flags.FLAGS.workdir}/{checkpoints.CONFIG_FILE}"
  for key in override_keys(remaining[1:]):
    if not config_lib.has_key(config, key):
      _fail(f"unknown config key {key!r}: {where} has no such key")
  try:
    config_flags.DEFINE_config_dict("config", config, "The workdir's saved config; override keys as "
                                    "--config.key=value.", sys_argv=remaining)
    argv = flags.FLAGS(remaining)
  except flags.Error as e:
    _fail(e)
  return argv


def main(argv):
  host_memory.keep_freed_memory()  # Before JAX starts its backend.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
    jax.distributed.initialize()
  program_logging.setup()
  flag_values = flags.FLAGS
  options = {"mode": flag_values.mode, "augmented_copies": flag_values.augmented_copies,
             "batch_size": flag_values.batch_size, "embedding": flag_values.embedding,
             **probe_flag_options(flag_values)}
  try:
    if flag_values.weights:
      out = eval_dir(flag_values.workdir)
      evaluate_weights(flag_values.weights, flag_values.config, out, overridden=override_keys(sys.argv[1:]),
                       **options)
    else:
      out = eval_dir(flag_values.workdir, flag_values.random_init)
      evaluate_workdir(flag_values.workdir, flag_values.config, step=flag_values.step,
                       random_init=flag_values.random_init, **options)
  except (config_lib.ConfigError, checkpoints.WorkdirError, FileNotFoundError, models.BackboneError) as e:
    _fail(e)
  logging.info("results written to %s", out)

if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags)
