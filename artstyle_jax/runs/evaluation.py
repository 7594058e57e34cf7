"""Evaluation of a frozen backbone: weighted kNN and a linear probe on its pooled features.

Pooled features of the training split (`config.dataset.train_split`, deterministic
`views.EvalView`) are the kNN bank and the probe's training set; the test split
(`config.dataset.eval_split`, the same view) is what both are scored on.

- kNN: weighted votes of the `config.knn_k` most cosine-similar training images (`knn`).
- Linear probe: one of the protocols of `probes` ('fast', 'paper', 'baseline'); in fast mode,
  `augmented_copies` passes of the training split through `views.ProbeTrainView`
  (RandomResizedCrop + flip, each copy its own draws) join the training features.

`evaluate_backbone` takes the steps in order: check the options (`check_options`) and the
splits (`check_splits`), extract the features, score the kNN (`score_knn`), fit and score the
probe, write the outputs (`write_outputs`). `evaluate_workdir` evaluates a training run's
checkpoint, `evaluate_weights` a backbone a user names (`models.load_backbone`).

Outputs (process 0), in the output directory, each tagged with the checkpoint step inside:
  knn.json, knn_confusion.png                 `metrics.classification_results` plus the settings
                                              and the test features' health (`feature_health`),
                                              their retrieval of training images (`retrieval`)
  linear_<mode>.json, linear_<mode>_confusion.png
  linear_head.npz                             the probe for prediction (`head_file`)
  label_efficiency.json                       with a `label_plan`: the few-label settings (`label_efficiency`)
  embedding.png                               with `embedding`: t-SNE map of the test features
and, with `verbose`, the tables on stdout. A refused evaluation raises before anything is written.
"""
from collections.abc import Callable, Mapping, Sequence
import functools
import os
import pathlib
import tempfile
from typing import Any, NamedTuple, Optional

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from artstyle_jax import models
from artstyle_jax.data import view_specs
from artstyle_jax.data import views
from artstyle_jax.evaluators import knn
from artstyle_jax.evaluators import label_efficiency
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.evaluators import metrics
from artstyle_jax.evaluators import probes
from artstyle_jax.evaluators import report
from artstyle_jax.evaluators import retrieval
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.method import health
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import heads
from artstyle_jax.pictures import confusion
from artstyle_jax.pictures import embedding_map
from artstyle_jax.pictures import figure
from artstyle_jax.runs import head_file
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import paths

# (split, transform) -> (features (N, C) float32, labels (N,) int32) of the evaluated backbone.
Extract = Callable[[Any, Any], tuple[np.ndarray, np.ndarray]]


class Backbone(NamedTuple):
  """The backbone evaluated."""
  module: nn.Module
  params: Any  # replicated over the evaluation's mesh
  model_name: str
  random_init: bool


def check_options(mode: str, augmented_copies: int, paper_epochs: int, paper_batch_size: int) -> None:
  """Raises ConfigError for options `evaluate_backbone` cannot use."""
  if mode not in probes.MODES:
    raise config_lib.ConfigError(f"mode must be one of {probes.MODES}, got {mode!r}")
  if augmented_copies < 0 or (augmented_copies and mode != "fast"):
    raise config_lib.ConfigError(f"augmented_copies must be >= 0 and only goes with mode 'fast', got "
                                 f"{augmented_copies} with mode {mode!r}")
  if paper_epochs < 1 or paper_batch_size < 1:
    raise config_lib.ConfigError(f"paper_epochs and paper_batch_size must be >= 1, got {paper_epochs} and "
                                 f"{paper_batch_size}")


def check_splits(config: ml_collections.ConfigDict, train_source: Sequence[Any], test_source: Sequence[Any], *,
                 mode: str, paper_batch_size: int, embedding: bool) -> None:
  """Raises ConfigError when the splits are too small for the kNN, the probe or the map."""
  if config.knn_k > len(train_source):
    raise config_lib.ConfigError(f"knn_k={config.knn_k} exceeds the {len(train_source)} training images")
  if mode != "fast" and len(train_source) < paper_batch_size:
    raise config_lib.ConfigError(f"the {len(train_source)} training images do not fill one {mode} probe batch "
                                 f"of {paper_batch_size}")
  if embedding and len(test_source) < embedding_map.MIN_EMBEDDING_POINTS:
    raise config_lib.ConfigError(f"the {len(test_source)} test images are too few for an embedding map "
                                 f"(at least {embedding_map.MIN_EMBEDDING_POINTS})")


def _backbone(config: ml_collections.ConfigDict, params: Any, module: Optional[nn.Module], weights: Optional[str],
              mesh: jax.sharding.Mesh) -> Backbone:
  """The backbone `evaluate_backbone` is given, its parameters replicated over `mesh`."""
  if module is None:
    module = step_lib.build_backbone(config, mesh)
    if params is None:
      return Backbone(module, saved_run.random_backbone_params(config, module, mesh), config.model.name, True)
    return Backbone(module, params, config.model.name, False)
  return Backbone(module, jax.device_put(params, sharding.replicated(mesh)), models.model_name(module),
                  weights.startswith(models.RANDOM_PREFIX))


def feature_health(test_features: np.ndarray) -> dict[str, float]:
  """'effective_rank' and 'first_pc_share' (`evaluators.health`) of the probed (N, C) test features,
  and 'feature_dim' C: how many directions the backbone's features use (collapse shows as a few)."""
  return {"effective_rank": float(health.effective_rank(test_features)),
          "first_pc_share": float(health.first_pc_share(test_features)), "feature_dim": int(test_features.shape[1])}


def score_knn(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
              test_labels: np.ndarray, class_names: list[str], k: int) -> dict[str, Any]:
  """The kNN's results on the test features, the training features its bank."""
  scores = knn.knn_classify(train_features, train_labels, test_features, len(class_names), k=k).scores
  return {**metrics.classification_results(np.asarray(scores), test_labels, class_names),
          "method": "knn", "k": int(k), "temperature": knn.DEFAULT_TEMPERATURE}


def _fit_fast(config: ml_collections.ConfigDict, extract: Extract, train_source: Any, train_features: np.ndarray,
              train_labels: np.ndarray, num_classes: int,
              augmented_copies: int) -> tuple[heads.LinearHead, dict[str, Any]]:
  """The fast probe on the training features and `augmented_copies` augmented passes."""
  copies = [train_features]
  mean, std = view_specs.student_normalisation(config)
  probe_view = views.ProbeTrainView(config.image_size, mean, std)
  for copy in range(1, augmented_copies + 1):
    logging.info("extracting augmented copy %d/%d of %s", copy, augmented_copies, config.dataset.train_split)
    copies.append(extract(train_source, probes.AugmentedCopy(probe_view, copy, config.seed))[0])
  head, settings = probes.fit_fast_probe(np.stack(copies), train_labels, num_classes, config.seed)
  return head, {**settings, "augmented_copies": augmented_copies}


def _title(result: Mapping[str, Any]) -> str:
  if result.get("weights"):
    backbone = result["weights"]
  elif result["random_init"]:
    backbone = "random init"
  else:
    backbone = "trained" if result["step"] is None else f"step {result['step']}"
  return f"{result['method']}: {result['model']} ({backbone}), {result['dataset']} {result['test_split']}"


def write_outputs(out_dir: str | os.PathLike, results: Mapping[str, Mapping[str, Any]],
                  head: Mapping[str, np.ndarray], few_label: Optional[Mapping[str, Any]] = None) -> None:
  """<method>.json and <method>_confusion.png per results entry, linear_head.npz
  (`head_file.head_arrays`) and, when given, label_efficiency.json, each replacing its file whole."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    for method, result in results.items():
      report.write_json(result, os.path.join(tmp, f"{method}.json"))
      confusion.draw_confusion_matrix(result, _title(result), os.path.join(tmp, f"{method}_confusion.png"))
    head_file.write(tmp, head)
    if few_label is not None:
      report.write_json(few_label, os.path.join(tmp, label_efficiency.RESULTS_FILE))
    for name in sorted(os.listdir(tmp)):
      paths.write_atomically(out / name, pathlib.Path(tmp, name).read_bytes())


def evaluate_backbone(config: ml_collections.ConfigDict, backbone_params: Any, out_dir: str | os.PathLike, *,
                      mode: str = "fast", augmented_copies: int = 0,
                      paper_epochs: int = linear_probe.PAPER_EPOCHS,
                      paper_batch_size: int = probes.PAPER_BATCH_SIZE,
                      batch_size: Optional[int] = None, step: Optional[int] = None,
                      mesh: Optional[jax.sharding.Mesh] = None, verbose: bool = True,
                      probe: Optional[Mapping[str, float]] = None, backbone: Optional[nn.Module] = None,
                      weights: Optional[str] = None, embedding: bool = False,
                      label_plan: Optional[label_efficiency.Plan] = None) -> dict[str, dict[str, Any]]:
  """kNN and linear probe of one backbone on config.dataset; writes `out_dir` (module docstring).

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
    probe: paper and baseline modes' SGD values, `probes.probe_options(mode)` by default.
    backbone: the module of `backbone_params` when it is not config.model's ConvNeXt (an
      external backbone, `models.load_backbone`); `weights` is then the source it came from.
    embedding: also draw the t-SNE map of the test split's features, `embedding.EMBEDDING_FILE`.
    label_plan: also the few-label settings of `label_efficiency` on the same features.

  Returns:
    {'knn': results, 'linear': results}, each `metrics.classification_results` plus 'method'
    ('knn', 'linear_fast', 'linear_paper' or 'linear_baseline'), 'step', 'random_init', 'model',
    'weights', 'num_parameters', 'dataset', 'train_split', 'test_split', 'num_train', 'image_size',
    the test features' `feature_health` and the method's settings; with a `label_plan`,
    'label_efficiency' too (`label_efficiency.evaluate`'s dict with the same common keys).
  Raises:
    ConfigError, FileNotFoundError: unusable options or dataset, before anything is written.
  """
  check_options(mode, augmented_copies, paper_epochs, paper_batch_size)
  mesh = sharding.create_mesh() if mesh is None else mesh
  batch_size = features.extraction_batch_size(config, mesh) if batch_size is None else batch_size
  if batch_size < 1 or batch_size % mesh.size:
    raise config_lib.ConfigError(f"the extraction batch of {batch_size} does not split over {mesh.size} devices")
  train_source, test_source, class_names = saved_run.open_splits(config)
  check_splits(config, train_source, test_source, mode=mode, paper_batch_size=paper_batch_size, embedding=embedding)

  evaluated = _backbone(config, backbone_params, backbone, weights, mesh)
  extract = functools.partial(features.extract_split, config, features.make_feature_fn(evaluated.module, mesh),
                              evaluated.params, mesh=mesh, batch_size=batch_size)
  mean, std = view_specs.student_normalisation(config)
  eval_view = views.EvalView(config.image_size, mean, std)
  logging.info("extracting features of %s (%d images) and %s (%d images)", config.dataset.train_split,
               len(train_source), config.dataset.eval_split, len(test_source))
  train_features, train_labels = extract(train_source, eval_view)
  test_features, test_labels = extract(test_source, eval_view)
  common = {"step": step, "random_init": evaluated.random_init, "model": evaluated.model_name, "weights": weights,
            "num_parameters": models.num_parameters({"params": evaluated.params}), "dataset": config.dataset.name,
            "train_split": config.dataset.train_split, "test_split": config.dataset.eval_split,
            "num_train": int(len(train_labels)), "image_size": int(config.image_size), **feature_health(test_features)}

  few_label = None
  if label_plan is not None:  # first: a setting the split cannot give is refused before any fit
    few_label = {"method": "label_efficiency", **common,
                 **label_efficiency.evaluate(label_plan, train_features, train_labels, test_features, test_labels,
                                             class_names, config.knn_k)}
  knn_results = {**score_knn(train_features, train_labels, test_features, test_labels, class_names, config.knn_k),
                 **retrieval.evaluate_retrieval(train_features, train_labels, test_features, test_labels,
                                                retrieval.DEFAULT_K, retrieval.REPRESENTATION), **common}
  if mode == "fast":
    head, settings = _fit_fast(config, extract, train_source, train_features, train_labels, len(class_names),
                               augmented_copies)
  else:
    head, settings = probes.fit_paper_probe(config, evaluated.module, evaluated.params, train_source,
                                            len(class_names), epochs=paper_epochs, batch_size=paper_batch_size,
                                            options=probes.probe_options(mode) if probe is None else probe)
  linear_scores = heads.linear_logits(head, test_features)
  linear_results = {**metrics.classification_results(np.asarray(linear_scores), test_labels, class_names),
                    "method": f"linear_{mode}", **settings, **common}

  results = {"knn": knn_results, "linear": linear_results}
  if label_plan is not None:
    results["label_efficiency"] = few_label
  if jax.process_index() == 0:
    write_outputs(out_dir, {r["method"]: r for r in (knn_results, linear_results)},
                  head_file.head_arrays(head, config, class_names, mode, step, evaluated.model_name, weights),
                  few_label)
    if embedding:
      title = (f"{evaluated.model_name} ({figure.describe_step(None if evaluated.random_init else step)}), "
               f"{config.dataset.name} {config.dataset.eval_split}")
      embedding_map.draw_embedding(test_features, test_labels, class_names, title,
                                   epath.Path(out_dir) / embedding_map.EMBEDDING_FILE, seed=config.seed)
    if verbose:
      for result in (knn_results, linear_results):
        print(report.format_table(result, title=_title(result)) + "\n", flush=True)
      if few_label is not None:
        print(label_efficiency.format_table(few_label, title=_title({**few_label, "method": "few labels"}))
              + "\n", flush=True)
  return results


def evaluate_workdir(workdir: str, config: ml_collections.ConfigDict, *, step: Optional[int] = None,
                     random_init: bool = False, mesh: Optional[jax.sharding.Mesh] = None,
                     out_dir: Optional[str | os.PathLike] = None, **options) -> dict[str, dict[str, Any]]:
  """Evaluates a workdir's checkpoint (the latest, or `step`), or with `random_init` the untrained
  backbone, into `out_dir` (default `saved_run.eval_dir(workdir, random_init)`); `options` as
  `evaluate_backbone`'s.

  Raises:
    WorkdirError, ConfigError, FileNotFoundError: before anything is written.
  """
  checkpoints.check_compatible(workdir, config)
  config_lib.validate(config)
  if not random_init:
    saved_run.checkpoint_step(workdir, step)
  saved_run.open_splits(config)  # A missing dataset is refused before the backbone is restored.
  mesh = sharding.create_mesh() if mesh is None else mesh
  params = None
  if not random_init:
    params, step = saved_run.restore_backbone(workdir, config, step, mesh)
    logging.info("restored the student backbone of step %d from %s", step, workdir)
  out_dir = saved_run.eval_dir(workdir, random_init) if out_dir is None else out_dir
  return evaluate_backbone(config, params, out_dir, step=None if random_init else step, mesh=mesh, **options)


def weights_config(config: ml_collections.ConfigDict, backbone: nn.Module,
                   overridden: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """`config` for evaluating an external backbone: a ResNet gets the ImageNet normalisation its
  checkpoints were trained with, an EfficientNet-Lite its `(x - 127) / 128`
  (`efficientnet_lite.MEAN`, `STD`), a ViT its family's normalisation and image size
  (`vit_weights.preprocessing`), each unless views.student.mean / .std / image_size are among the
  `overridden` keys; a ViT's image size is then rounded to a multiple of its patch size."""
  config = config.copy_and_resolve_references()
  if isinstance(backbone, models.resnet.ResNet):
    mean, std, image_size = view_specs.IMAGENET_MEAN, view_specs.IMAGENET_STD, config.image_size
  elif isinstance(backbone, models.efficientnet_lite.EfficientNetLite):
    mean, std, image_size = models.efficientnet_lite.MEAN, models.efficientnet_lite.STD, config.image_size
  elif isinstance(backbone, models.vit.ViT):
    mean, std, image_size = models.vit_weights.preprocessing(backbone)
    image_size = config.image_size if "image_size" in overridden else image_size
    image_size = models.vit_weights.compatible_image_size(backbone, image_size)
  else:
    return config
  with config.unlocked():
    if "views.student.mean" not in overridden:
      config.views.student.mean = mean
    if "views.student.std" not in overridden:
      config.views.student.std = std
    config.image_size = image_size
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
  saved_run.open_splits(config)  # A missing dataset is refused before the backbone is loaded.
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
