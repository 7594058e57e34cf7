"""The demo on synthetic art styles: self-supervised pretraining against the backbone it starts from.

`run(config, workdir)`, with configs/demo.py on the CPU of a laptop in minutes:
1. renders the procedural art-style dataset of `config.synthetic` (`data.synthetic`, its kind:
   the scenes every style paints, or the texture-defined styles) and builds it as a TFDS dataset
   in WORKDIR/data;
2. pretrains the student from `config.init` with the dual-teacher method
   (`pretraining.train_and_evaluate`) in WORKDIR/pretrain, a workdir as train.py writes it: run
   again after an interruption it resumes from the latest checkpoint; a finished run is not
   repeated. With a pretrained init (configs/demo.py's ImageNet weights, the paper's regime) the
   same pretraining from a random initialisation too, in WORKDIR/pretrain_random;
3. scores the pooled features of each backbone (`backbones`: the random initialisation, the
   pretrained init, and what pretraining made of each) with the fast linear probe and the
   weighted kNN on the test split (`evaluation.evaluate_backbone`), as eval.py would, into
   WORKDIR/pretrain/eval (and its random_init/ and init/) and WORKDIR/pretrain_random/eval
   (so predict.py works on either workdir);
4. writes them side by side with the pretrained backbone's margin over the one it started from,
   WORKDIR/demo_results.json (`RESULTS_FILE`), and the text that closes the demo (`closing_text`);
5. leaves the pictures: the training curves WORKDIR/pretrain/curves.png (drawn by training), a
   t-SNE map of the test features per backbone, embedding.png in each evaluation's directory,
   and WORKDIR/retrieval_sheet.png (`SHEET_FILE`): a test painting of each of a few styles, its
   predicted styles and its closest training paintings (predict.py's --sheet);
6. exports the pretrained student (`exporting`): transformers' files for a ConvNeXt, our
   safetensors for a backbone transformers has no class of.
"""
import contextlib
import io
import json
import signal
import time
from typing import Any

from absl import logging
from etils import epath
import ml_collections
import tensorflow_datasets as tfds

from artstyle_jax.data import pipeline
from artstyle_jax.data import synthetic
from artstyle_jax.evaluators import report
from artstyle_jax.method import config_lib
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import convnext
from artstyle_jax.pictures import curves
from artstyle_jax.pictures import embedding_map
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import exporting
from artstyle_jax.runs import prediction
from artstyle_jax.runs import pretraining
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints

DATA_DIR = "data"
PRETRAIN_DIR = "pretrain"
# The same pretraining from a random initialisation, beside one from a pretrained init.
PRETRAIN_RANDOM_DIR = "pretrain_random"
# The pretrained init's evaluation, under WORKDIR/pretrain/eval.
INIT_EVAL_DIR = "init"
RESULTS_FILE = "demo_results.json"
# The figures demo_results.json keeps of each backbone's kNN and linear probe, and their margins.
SUMMARY_METRICS = ("top1", "top5", "mean_per_class_accuracy", "macro_f1")
SUMMARY_METHODS = ("linear", "knn")
# Their keys in demo_results.json, as "<method>_<metric>".
SUMMARY_FIGURES = tuple(f"{method}_{metric}" for method in SUMMARY_METHODS for metric in SUMMARY_METRICS)
# Kept too, per backbone: its test features' health (`evaluation.feature_health`), where a collapse shows.
HEALTH_METRICS = ("effective_rank", "first_pc_share")
SHEET_FILE = "retrieval_sheet.png"
SHEET_QUERIES = 4  # test paintings on the retrieval sheet, each of another style
SHEET_MATCHES = 5
# The backbones compared, in the order printed; from a random init, FROM_RANDOM_BACKBONES.
BACKBONES = ("random_init", "init", "pretrained_random", "pretrained")
FROM_RANDOM_BACKBONES = ("random_init", "pretrained")


def from_random(config: ml_collections.ConfigDict) -> bool:
  """Whether the demo's pretraining starts from a random initialisation."""
  return config.init == "random"


def backbones(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The backbones the demo compares: ('random_init', 'pretrained') from a random init; with a
  pretrained init also the init itself ('init') and the pretraining from random
  ('pretrained_random')."""
  return FROM_RANDOM_BACKBONES if from_random(config) else BACKBONES


def baseline(config: ml_collections.ConfigDict) -> str:
  """The backbone the pretrained one's margin is taken over: the one it started from."""
  return "random_init" if from_random(config) else "init"


def export_format(config: ml_collections.ConfigDict) -> str:
  """transformers' files for a ConvNeXt, else our safetensors (transformers has no EfficientNet-Lite)."""
  return "transformers" if config.model.name in convnext.SIZES else "safetensors"


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a config the demo cannot run, before anything is built or written."""
  config_lib.validate(config)
  if config.dataset.name or config.dataset.data_dir:
    raise config_lib.ConfigError("the demo builds its own dataset from config.synthetic in WORKDIR/data: leave "
                                 "dataset.name and dataset.data_dir unset")
  if not from_random(config):
    # What train would refuse at its start, refused before the dataset is built.
    pretraining.load_backbone_params(config, step_lib.build_backbone(config))
  synth = config.synthetic
  if synth.per_class < 1 or synth.test_per_class < 1:
    raise config_lib.ConfigError(f"synthetic.per_class and synthetic.test_per_class must be at least 1, got "
                                 f"{synth.per_class} and {synth.test_per_class}")
  if synth.kind not in synthetic.KINDS:
    raise config_lib.ConfigError(f"synthetic.kind must be one of {synthetic.KINDS}, got {synth.kind!r}")
  num_train = synth.per_class * len(synthetic.styles_of(synth.kind))
  pipeline.steps_per_epoch(num_train, config.batch_size)
  if config.knn_k > num_train:
    raise config_lib.ConfigError(f"knn_k={config.knn_k} exceeds the {num_train} training images of "
                                 f"synthetic.per_class={synth.per_class}")


def check_same_run(pretrain_dir: str, config: ml_collections.ConfigDict) -> None:
  """Raises WorkdirError when pretrain_dir holds checkpoints of a run with another config: going
  on from them would give a run that neither config describes. The dataset's name and directory
  are left out (the demo sets them; synthetic.* says which dataset it is)."""
  if checkpoints.latest_step(pretrain_dir) is None:
    return
  saved = config_lib.flatten(checkpoints.load_config(pretrain_dir).to_dict())
  wanted = config_lib.flatten(json.loads(config.to_json_best_effort()))
  keys = sorted((saved.keys() | wanted.keys()) - {"dataset.name", "dataset.data_dir"})
  differing = [f"{key}: {saved.get(key)!r} there, {wanted.get(key)!r} here" for key in keys
               if saved.get(key) != wanted.get(key)]
  if differing:
    raise checkpoints.WorkdirError(f"{pretrain_dir} holds a pretraining with another config ({'; '.join(differing)}): "
                                   "use a new --workdir, or the flags that run was started with")


def build_data(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """Builds config.synthetic's dataset in workdir/data (once); returns the config pointing at it."""
  data_dir = str(epath.Path(workdir) / DATA_DIR)
  # TFDS prints its progress and "Dataset ... downloaded and prepared" on stdout; of the build,
  # the demo shows what the builders log (examples written, files skipped).
  tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()):
    name = synthetic.build_dataset(data_dir, per_class=config.synthetic.per_class, size=config.synthetic.size,
                                   seed=config.synthetic.seed, test_per_class=config.synthetic.test_per_class,
                                   kind=config.synthetic.kind)
  config = config.copy_and_resolve_references()
  config.dataset.name = name
  config.dataset.data_dir = data_dir
  return config


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> tuple[int, int]:
  """Runs (or resumes, or finds finished) the pretraining in `workdir`; returns (its latest
  checkpoint's step, the step the run ends at)."""
  _, num_train = pretraining.open_train_data(config)
  total_steps = config_lib.total_steps(config, steps_per_epoch=pipeline.steps_per_epoch(num_train, config.batch_size))
  # train_and_evaluate turns SIGTERM and SIGINT into "checkpoint and stop" for good; the rest of
  # the demo has nothing to save, so it gets the usual handlers back.
  handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    pretraining.train_and_evaluate(config, workdir)
  finally:
    for signum, handler in handlers.items():
      signal.signal(signum, handler)
  return checkpoints.latest_step(workdir), total_steps


def write_sheet(config: ml_collections.ConfigDict, pretrain_dir: str, path: str) -> str:
  """The retrieval sheet of the evaluated pretrained backbone (predict.py's --sheet) into `path`:
  the first test painting of each of the first `SHEET_QUERIES` styles, the training paintings
  as the gallery. Returns `path`."""
  tree = epath.Path(config.dataset.data_dir) / "synthetic_trees" / config.dataset.name.split("/")[-1]
  styles = sorted(p for p in (tree / "test").iterdir() if p.is_dir())[:SHEET_QUERIES]
  queries = [str(sorted(style.glob("*.jpg"))[0]) for style in styles]
  prediction.predict(pretrain_dir, queries, top_k=3, gallery=str(tree / "train"), num_matches=SHEET_MATCHES,
                     sheet=path)
  return path


def summary(results: dict[str, dict[str, Any]], out_dir: epath.Path) -> dict[str, Any]:
  """The figures of one backbone's `evaluation.evaluate_backbone` results kept in demo_results.json."""
  figures = {f"{method}_{metric}": results[method][metric] for method in SUMMARY_METHODS
             for metric in SUMMARY_METRICS}
  health = {metric: results["knn"][metric] for metric in HEALTH_METRICS}
  return {"step": results["linear"]["step"], **figures, **health, "results_dir": str(out_dir)}


def row_label(name: str, results: dict[str, Any]) -> str:
  """The printed name of backbone `name` of demo_results.json's `results`."""
  step = results[name]["step"]
  if name == "random_init":
    return "random initialisation"
  if name == "init":
    return f"init ({results['init_source']})"
  if name == "pretrained_random":
    return f"pretrained from random (step {step})"
  return f"pretrained (step {step})" if results["baseline"] == "random_init" else f"pretrained from init (step {step})"


def comparison_table(results: dict[str, Any]) -> str:
  """The printed comparison: top-1 of both evaluations and the test features' effective rank per
  backbone, and the pretrained backbone's margin over the one it started from (the rank's as a
  ratio)."""
  rows = [(row_label(name, results), results[name]) for name in results["backbones"]]
  start = "random init" if results["baseline"] == "random_init" else "init"
  margin_label = f"margin over the {start} (points; rank ratio)"
  width = max(len(label) for label in [*(label for label, _ in rows), margin_label])
  margin = results["margin"]
  lines = [f"{'':<{width}}  linear probe top-1  kNN top-1  effective rank",
           *(f"{label:<{width}}  {100 * r['linear_top1']:>17.1f}%  {100 * r['knn_top1']:>8.1f}%  "
             f"{r['effective_rank']:>14.1f}" for label, r in rows),
           f"{margin_label:<{width}}  {100 * margin['linear_top1']:>+18.1f}  "
           f"{100 * margin['knn_top1']:>+9.1f}  {margin['effective_rank_ratio']:>14.2f}"]
  return "\n".join(lines)


def write_export(pretrain_dir: str, out: str, fmt: str, step: int) -> str:
  """Exports the student of checkpoint `step` to `out` in format `fmt`, after the evaluations so
  that its model card holds their figures; a previous run's export there is replaced. Returns `out`."""
  if epath.Path(out).exists():
    epath.Path(out).rmtree()
  exporting.export(pretrain_dir, fmt, out, step=step)
  return out


def closing_text(results: dict[str, Any], workdir: str) -> str:
  """What the demo prints at the end: the setting, the comparison, where to look next."""
  data = results["dataset"]
  minutes = results["seconds"]["total"]["wall_s"] / 60
  # A test image of the rendered tree (data.synthetic's layout), to try predict.py on.
  image = next(iter(sorted(epath.Path(data["data_dir"]).glob("synthetic_trees/*/test/*/*.jpg"))), None)
  start = "" if results["baseline"] == "random_init" else f" from {results['init_source']} and from random"
  lines = [f"{results['model']} at {results['image_size']} px, pretrained{start} for {results['pretrain_steps']} steps "
           f"on {data['num_train']} synthetic paintings of {data['num_classes']} styles, tested on {data['num_test']} "
           f"others ({minutes:.1f} min):",
           comparison_table(results),
           "",
           f"Results in {epath.Path(workdir) / RESULTS_FILE}; per-class tables and confusion plots in "
           f"{', '.join(results[name]['results_dir'] for name in results['backbones'])}.",
           "Pictures:",
           f"  training curves      {results['pictures']['curves']}"]
  maps = [results["pictures"][f"embedding_{name}"] for name in results["backbones"]][::-1]
  lines += [f"  {'feature maps (t-SNE)' if i == 0 else '':<20} {path}" for i, path in enumerate(maps)]
  lines += [f"  retrieval sheet      {results['pictures']['retrieval_sheet']}"]
  if results["export_format"] == "transformers":
    lines.append(f"The pretrained backbone for transformers (AutoModel.from_pretrained), with its model card: "
                 f"{results['export']}")
  else:
    lines.append(f"The pretrained backbone as safetensors (models.load_backbone), with its model card: "
                 f"{results['export']}")
  if image is not None:
    lines += ["Styles of an image by the pretrained backbone's linear probe:",
              f"  python -m artstyle_jax.predict --workdir={epath.Path(workdir) / PRETRAIN_DIR} {image}"]
  return "\n".join(lines)


class _Clock:
  """Wall-clock and process CPU seconds of the demo's phases."""

  def __init__(self):
    self.start = self.last = (time.monotonic(), time.process_time())
    self.phases = {}

  def lap(self, phase: str) -> None:
    now = (time.monotonic(), time.process_time())
    self.phases[phase] = {"wall_s": now[0] - self.last[0], "cpu_s": now[1] - self.last[1]}
    self.last = now

  def record(self) -> dict[str, dict[str, float]]:
    total = {"wall_s": self.last[0] - self.start[0], "cpu_s": self.last[1] - self.start[1]}
    return {**self.phases, "total": total}


def _evaluate_all(config: ml_collections.ConfigDict, workdir: str, step: int,
                  runs: dict[str, ml_collections.ConfigDict]) -> tuple[dict, dict]:
  """({name: evaluate_backbone's results}, {name: its directory}) of each of `backbones(config)`;
  `runs` maps each pretraining's directory to its config."""
  pretrain_dir = str(epath.Path(workdir) / PRETRAIN_DIR)
  out_dirs = {"pretrained": saved_run.eval_dir(pretrain_dir), "random_init": saved_run.eval_dir(pretrain_dir, True),
              "init": saved_run.eval_dir(pretrain_dir) / INIT_EVAL_DIR,
              "pretrained_random": saved_run.eval_dir(str(epath.Path(workdir) / PRETRAIN_RANDOM_DIR))}
  evaluations = {}
  for name in backbones(config):
    logging.info("evaluating %s", name)
    weights, run_config, run_step = None, config, None
    if name == "init":
      weights = config.init
      params = pretraining.load_backbone_params(config, step_lib.build_backbone(config))
    elif name == "random_init":
      params = None
    else:
      directory = PRETRAIN_DIR if name == "pretrained" else PRETRAIN_RANDOM_DIR
      run_config = runs[directory]
      params, run_step = saved_run.restore_backbone(str(epath.Path(workdir) / directory), run_config, step)
    evaluations[name] = evaluation.evaluate_backbone(run_config, params, out_dirs[name], step=run_step, verbose=False,
                                                     weights=weights, embedding=True)
  return evaluations, {name: out_dirs[name] for name in backbones(config)}


def pretrainings(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{directory under WORKDIR: config} of the demo's pretrainings: `config` in PRETRAIN_DIR and,
  from a pretrained init, the same from random in PRETRAIN_RANDOM_DIR."""
  runs = {PRETRAIN_DIR: config}
  if not from_random(config):
    runs[PRETRAIN_RANDOM_DIR] = random_start(config)
  return runs


def random_start(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` pretraining from a random initialisation (the demo's second run of a pretrained init)."""
  config = config.copy_and_resolve_references()
  config.init = "random"
  return config


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """The whole demo in `workdir`; returns what demo_results.json holds, or None when a
  pretraining was stopped by a signal before its last step.

  Raises:
    ConfigError, WorkdirError, FileNotFoundError: before the pretraining writes anything.
    health.TrainingError: a non-finite loss in pretraining.
  """
  check_config(config)
  for directory, run_config in pretrainings(config).items():
    check_same_run(str(epath.Path(workdir) / directory), run_config)
  clock = _Clock()
  config = build_data(config, workdir)
  clock.lap("data")

  runs = pretrainings(config)
  for directory, run_config in runs.items():
    step, total_steps = pretrain(run_config, str(epath.Path(workdir) / directory))
    if step != total_steps:
      return None
  clock.lap("pretrain")

  pretrain_dir = str(epath.Path(workdir) / PRETRAIN_DIR)
  evaluations, out_dirs = _evaluate_all(config, workdir, total_steps, runs)
  clock.lap("evaluate")
  sheet = write_sheet(config, pretrain_dir, str(epath.Path(workdir) / SHEET_FILE))
  clock.lap("sheet")
  fmt = export_format(config)
  exported = write_export(pretrain_dir, str(epath.Path(workdir) / f"backbone_{fmt}"), fmt, step)
  clock.lap("export")

  names, base = backbones(config), baseline(config)
  pretrained_linear = evaluations["pretrained"]["linear"]
  results = {name: summary(evaluations[name], out_dirs[name]) for name in names}
  results.update({
      "backbones": list(names),
      "baseline": base,
      "init_source": config.init,
      "margin": {**{key: results["pretrained"][key] - results[base][key] for key in SUMMARY_FIGURES},
                 "effective_rank_ratio": results["pretrained"]["effective_rank"] / results[base]["effective_rank"]},
      "model": config.model.name,
      "image_size": config.image_size,
      "dataset": {"name": config.dataset.name, "data_dir": config.dataset.data_dir, "kind": config.synthetic.kind,
                  "num_train": pretrained_linear["num_train"], "num_test": pretrained_linear["num_examples"],
                  "num_classes": pretrained_linear["num_classes"]},
      "pretrain_workdir": pretrain_dir,
      "pictures": {"curves": str(epath.Path(pretrain_dir) / curves.CURVES_FILE),
                   **{f"embedding_{name}": str(out_dirs[name] / embedding_map.EMBEDDING_FILE) for name in names},
                   "retrieval_sheet": sheet},
      "export": exported,
      "export_format": fmt,
      "pretrain_steps": total_steps,
      "seconds": clock.record(),
  })
  report.write_json(results, str(epath.Path(workdir) / RESULTS_FILE))
  return results
