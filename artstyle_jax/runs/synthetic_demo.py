"""The demo on synthetic art styles: self-supervised pretraining against a random initialisation.

`run(config, workdir)`, with configs/demo.py on the CPU of a laptop in minutes:
1. renders the procedural art-style dataset of `config.synthetic` (`data.synthetic`: ten
   texture-defined styles) and builds it as a TFDS dataset in WORKDIR/data;
2. pretrains the student from its random initialisation with the dual-teacher method
   (`pretraining.train_and_evaluate`) in WORKDIR/pretrain, a workdir as train.py writes it: run
   again after an interruption it resumes from the latest checkpoint; a finished run is not
   repeated;
3. scores the pooled features of the pretrained student backbone and of the random
   initialisation it started from (same architecture, same seed) with the fast linear probe
   and the weighted kNN on the test split (`evaluation.evaluate_backbone`), into
   WORKDIR/pretrain/eval and WORKDIR/pretrain/eval/random_init as eval.py would (so predict.py
   works on WORKDIR/pretrain);
4. writes the two side by side, WORKDIR/demo_results.json (`RESULTS_FILE`), and the text that
   closes the demo (`closing_text`);
5. leaves the pictures: the training curves WORKDIR/pretrain/curves.png (drawn by training), a
   t-SNE map of the test features per backbone, embedding.png in each evaluation's directory,
   and WORKDIR/retrieval_sheet.png (`SHEET_FILE`): a test painting of each of a few styles, its
   predicted styles and its closest training paintings (predict.py's --sheet).
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
# The backbones compared, in the order printed.
BACKBONES = ("random_init", "pretrained")
# The pretrained student for transformers (`exporting`), with its model card.
EXPORT_DIR = "backbone_transformers"
EXPORT_FORMAT = "transformers"


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a config the demo cannot run, before anything is built or written."""
  config_lib.validate(config)
  if config.dataset.name or config.dataset.data_dir:
    raise config_lib.ConfigError("the demo builds its own dataset from config.synthetic in WORKDIR/data: leave "
                                 "dataset.name and dataset.data_dir unset")
  if config.init != "random":
    raise config_lib.ConfigError(f"the demo pretrains from a random initialisation, got init={config.init!r}")
  synth = config.synthetic
  if synth.per_class < 1 or synth.test_per_class < 1:
    raise config_lib.ConfigError(f"synthetic.per_class and synthetic.test_per_class must be at least 1, got "
                                 f"{synth.per_class} and {synth.test_per_class}")
  num_train = synth.per_class * len(synthetic.STYLES)
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
                                   seed=config.synthetic.seed, test_per_class=config.synthetic.test_per_class)
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


def comparison_table(results: dict[str, Any]) -> str:
  """The printed comparison: top-1 of both evaluations and the test features' effective rank per
  backbone, and pretrained's margin (the rank's as a ratio)."""
  rows = [("random initialisation", results["random_init"]),
          (f"pretrained (step {results['pretrained']['step']})", results["pretrained"])]
  margin_label = "margin (points; rank ratio)"
  width = max(len(label) for label in [*(label for label, _ in rows), margin_label])
  margin = results["margin"]
  lines = [f"{'':<{width}}  linear probe top-1  kNN top-1  effective rank",
           *(f"{label:<{width}}  {100 * r['linear_top1']:>17.1f}%  {100 * r['knn_top1']:>8.1f}%  "
             f"{r['effective_rank']:>14.1f}" for label, r in rows),
           f"{margin_label:<{width}}  {100 * margin['linear_top1']:>+18.1f}  "
           f"{100 * margin['knn_top1']:>+9.1f}  {margin['effective_rank_ratio']:>14.2f}"]
  return "\n".join(lines)


def write_export(pretrain_dir: str, out: str, step: int) -> str:
  """Exports the student of checkpoint `step` to `out` (EXPORT_FORMAT), after the evaluations so
  that its model card holds their figures; a previous run's export there is replaced. Returns `out`."""
  if epath.Path(out).exists():
    epath.Path(out).rmtree()
  exporting.export(pretrain_dir, EXPORT_FORMAT, out, step=step)
  return out


def closing_text(results: dict[str, Any], workdir: str) -> str:
  """What the demo prints at the end: the setting, the comparison, where to look next."""
  data = results["dataset"]
  minutes = results["seconds"]["total"]["wall_s"] / 60
  # A test image of the rendered tree (data.synthetic's layout), to try predict.py on.
  image = next(iter(sorted(epath.Path(data["data_dir"]).glob("synthetic_trees/*/test/*/*.jpg"))), None)
  lines = [f"{results['model']} at {results['image_size']} px, pretrained for {results['pretrain_steps']} steps on "
           f"{data['num_train']} synthetic paintings of {data['num_classes']} styles, tested on {data['num_test']} "
           f"others ({minutes:.1f} min):",
           comparison_table(results),
           "",
           f"Results in {epath.Path(workdir) / RESULTS_FILE}; per-class tables and confusion plots in "
           f"{results['pretrained']['results_dir']} and {results['random_init']['results_dir']}.",
           "Pictures:",
           f"  training curves      {results['pictures']['curves']}",
           f"  feature maps (t-SNE) {results['pictures']['embedding_pretrained']}",
           f"                       {results['pictures']['embedding_random_init']}",
           f"  retrieval sheet      {results['pictures']['retrieval_sheet']}",
           f"The pretrained backbone for transformers (AutoModel.from_pretrained), with its model card: "
           f"{results['export']}"]
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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """The whole demo in `workdir`; returns what demo_results.json holds, or None when pretraining
  was stopped by a signal before its last step.

  Raises:
    ConfigError, WorkdirError, FileNotFoundError: before the pretraining writes anything.
    health.TrainingError: a non-finite loss in pretraining.
  """
  check_config(config)
  pretrain_dir = str(epath.Path(workdir) / PRETRAIN_DIR)
  check_same_run(pretrain_dir, config)
  clock = _Clock()
  config = build_data(config, workdir)
  clock.lap("data")

  step, total_steps = pretrain(config, pretrain_dir)
  clock.lap("pretrain")
  if step != total_steps:
    return None

  logging.info("evaluating the pretrained backbone of step %d and its random initialisation", step)
  params, step = saved_run.restore_backbone(pretrain_dir, config, step)
  out_dirs = {"pretrained": saved_run.eval_dir(pretrain_dir), "random_init": saved_run.eval_dir(pretrain_dir, True)}
  evaluations = {
      "pretrained": evaluation.evaluate_backbone(config, params, out_dirs["pretrained"], step=step, verbose=False,
                                               embedding=True),
      "random_init": evaluation.evaluate_backbone(config, None, out_dirs["random_init"], verbose=False,
                                                embedding=True),
  }
  clock.lap("evaluate")
  sheet = write_sheet(config, pretrain_dir, str(epath.Path(workdir) / SHEET_FILE))
  clock.lap("sheet")
  exported = write_export(pretrain_dir, str(epath.Path(workdir) / EXPORT_DIR), step)
  clock.lap("export")

  pretrained_linear = evaluations["pretrained"]["linear"]
  results = {name: summary(evaluations[name], out_dirs[name]) for name in BACKBONES}
  results.update({
      "margin": {**{key: results["pretrained"][key] - results["random_init"][key] for key in SUMMARY_FIGURES},
                 "effective_rank_ratio": (results["pretrained"]["effective_rank"]
                                          / results["random_init"]["effective_rank"])},
      "model": config.model.name,
      "image_size": config.image_size,
      "dataset": {"name": config.dataset.name, "data_dir": config.dataset.data_dir,
                  "num_train": pretrained_linear["num_train"], "num_test": pretrained_linear["num_examples"],
                  "num_classes": pretrained_linear["num_classes"]},
      "pretrain_workdir": pretrain_dir,
      "pictures": {"curves": str(epath.Path(pretrain_dir) / curves.CURVES_FILE),
                   **{f"embedding_{name}": str(out_dirs[name] / embedding_map.EMBEDDING_FILE) for name in BACKBONES},
                   "retrieval_sheet": sheet},
      "export": exported,
      "pretrain_steps": total_steps,
      "seconds": clock.record(),
  })
  report.write_json(results, str(epath.Path(workdir) / RESULTS_FILE))
  return results
