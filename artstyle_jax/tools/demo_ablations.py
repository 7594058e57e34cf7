"""The demo's pretraining with one setting changed at a time, scored as the demo scores a backbone.

  python -m artstyle_jax.tools.demo_ablations --workdir=DIR [--runs=NAME,NAME,...]
      [--config=configs/demo_scratch.py] [--config.key=value ...]

Each run of `RUNS` is the config (default configs/demo_scratch.py, with its overrides) plus the run's own
overrides, pretrained in DIR/NAME (a train.py workdir: run the command again after an interruption
and it resumes; a finished run is not repeated) on the demo's dataset, built once in DIR/data. Each
pretrained backbone, and the random initialisation of every image size the runs use, gets the
demo's evaluation (`evaluation.evaluate_backbone`: fast linear probe and kNN on the test split) in
DIR/NAME/eval. Printed as a Markdown table and kept in DIR/ablations.json (`RESULTS_FILE`), per
run: the test features' effective rank and first-PC share, kNN and linear top-1, the training
batch's pooled-feature rank at the first and the last step, and the last step's loss.
"""
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
import ml_collections

from artstyle_jax import cli
from artstyle_jax.evaluators import report
from artstyle_jax.method import config_lib
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import saved_run
from artstyle_jax.runs import synthetic_demo
from artstyle_jax.storage import metric_writer

RESULTS_FILE = "ablations.json"
# name: (what the run changes, its config overrides). The demo's own settings are the first run.
RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "demo": ("configs/demo_scratch.py: the paper's rate and schedule, peak 0.002", ()),
    "cosine_0.6": ("peak 0.6 (base 0.3) on a continuous cosine",
                   ("optim.base_lr=0.3", "optim.schedule=cosine")),
    "cosine_0.06": ("peak 0.06, cosine", ("optim.base_lr=0.03", "optim.schedule=cosine")),
    "cosine_0.02": ("peak 0.02, cosine", ("optim.base_lr=0.01", "optim.schedule=cosine")),
    "cosine_0.006": ("peak 0.006, cosine", ("optim.base_lr=0.003", "optim.schedule=cosine")),
    "cosine_0.002": ("peak 0.002 (the paper's), cosine", ("optim.schedule=cosine",)),
    "cosine_0.0006": ("peak 0.0006, cosine", ("optim.base_lr=0.0003", "optim.schedule=cosine")),
    "cosine_0.0002": ("peak 0.0002, cosine", ("optim.base_lr=0.0001", "optim.schedule=cosine")),
    "cosine_0.002_24_epochs": ("peak 0.002, cosine, 24 epochs instead of 8",
                               ("optim.schedule=cosine", "num_epochs=24")),
    "no_gram_0.6": ("peak 0.6, cosine, no Gram terms",
                    ("optim.base_lr=0.3", "optim.schedule=cosine", "loss_weights.gram_weak=0.0",
                     "loss_weights.gram_style=0.0")),
    "teacher_temp_0.1_0.6": ("peak 0.6, cosine, teacher temperature 0.1 (the student's) instead of 0.04",
                             ("optim.base_lr=0.3", "optim.schedule=cosine", "loss.teacher_temp=0.1")),
    "queue_2048_0.6": ("peak 0.6, cosine, queue of 2048 instead of 512",
                       ("optim.base_lr=0.3", "optim.schedule=cosine", "queue_size=2048")),
    "warmup_3_0.6": ("peak 0.6, cosine, 3 warm-up epochs instead of 1",
                     ("optim.base_lr=0.3", "optim.schedule=cosine", "optim.warmup_epochs=3")),
    "image_96_0.6": ("peak 0.6, cosine, 96 px views instead of 64",
                     ("optim.base_lr=0.3", "optim.schedule=cosine", "image_size=96")),
}
RANDOM_INIT = "random_init"

cli.define_config_file("Base config of every run, default configs/demo_scratch.py; override keys as "
                       "--config.key=value.", default=str(config_lib.packaged_config("demo_scratch.py")))
_WORKDIR = cli.DEFINE_path("workdir", None, "Directory of the runs, their dataset and ablations.json.")
_RUNS = flags.DEFINE_list("runs", list(RUNS), f"Runs to make, of {', '.join(RUNS)}.")


def run_config(base: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`base` with run `name`'s overrides, validated; raises ConfigError for an unknown run."""
  if name not in RUNS:
    raise config_lib.ConfigError(f"unknown run {name!r}; the runs are {', '.join(RUNS)}")
  config = config_lib.override(base, RUNS[name][1])
  synthetic_demo.check_config(config)
  return config


def batch_ranks(workdir: str) -> tuple[float, float, float]:
  """(pooled-feature rank of the first logged step's batch, of the last's, the last loss)."""
  records = [r for r in metric_writer.read_records(workdir) if "loss" in r]
  return records[0]["health/pooled_rank"], records[-1]["health/pooled_rank"], records[-1]["loss"]


def score(config: ml_collections.ConfigDict, params: Any, out_dir: epath.Path, step: int | None) -> dict[str, Any]:
  """The demo's evaluation of one backbone (None: the random initialisation), its figures."""
  results = evaluation.evaluate_backbone(config, params, out_dir, step=step, verbose=False)
  knn, linear = results["knn"], results["linear"]
  return {"effective_rank": knn["effective_rank"], "first_pc_share": knn["first_pc_share"],
          "knn_top1": knn["top1"], "linear_top1": linear["top1"], "step": step}


def run_all(base: ml_collections.ConfigDict, workdir: str, names: list[str]) -> dict[str, dict[str, Any]] | None:
  """Pretrains and scores runs `names` in `workdir` (module docstring); returns ablations.json's
  contents: per run its description, overrides and figures, and the random initialisations'
  figures under 'random_init_<image size>'; None when a signal stopped a pretraining (run again
  to resume it).

  Raises:
    ConfigError, WorkdirError: an unknown run, a config the demo cannot run, a run's workdir
      holding checkpoints of another config; before anything is written.
  """
  configs = {name: run_config(base, name) for name in names}
  root = epath.Path(workdir)
  for name, config in configs.items():
    synthetic_demo.check_same_run(str(root / name), config)
  # No run changes config.synthetic: the dataset is built (or found) once, for all of them.
  data = synthetic_demo.build_data(base, workdir).dataset
  results = {}
  for name, config in configs.items():
    with config.unlocked():
      config.dataset.name, config.dataset.data_dir = data.name, data.data_dir
    run_dir = str(root / name)
    step, total_steps = synthetic_demo.pretrain(config, run_dir)
    if step != total_steps:
      return None
    params, step = saved_run.restore_backbone(run_dir, config, step)
    first_rank, last_rank, loss = batch_ranks(run_dir)
    results[name] = {"description": RUNS[name][0], "overrides": list(RUNS[name][1]),
                     **score(config, params, saved_run.eval_dir(run_dir), step), "image_size": config.image_size,
                     "batch_rank_first": first_rank, "batch_rank_last": last_rank, "last_loss": loss}
    baseline = f"{RANDOM_INIT}_{config.image_size}"
    if baseline not in results:
      results[baseline] = {"description": f"the random initialisation at {config.image_size} px",
                           **score(config, None, root / baseline, None), "image_size": config.image_size}
    logging.info("%s: %s", name, results[name])
  report.write_json(results, str(root / RESULTS_FILE))
  return results


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
  """The runs as README's table: one row each, the random initialisations first."""
  rows = sorted(results.items(), key=lambda item: not item[0].startswith(RANDOM_INIT))
  lines = ["| run | what changes | effective rank | first PC | kNN top-1 | linear top-1 | batch rank, first -> last "
           "step | last loss |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for name, r in rows:
    batch = (f"{r['batch_rank_first']:.1f} -> {r['batch_rank_last']:.1f}" if "batch_rank_first" in r else "")
    loss = f"{r['last_loss']:.2f}" if "last_loss" in r else ""
    lines.append(f"| {name} | {r['description']} | {r['effective_rank']:.1f} | {100 * r['first_pc_share']:.0f}% | "
                 f"{100 * r['knn_top1']:.1f}% | {100 * r['linear_top1']:.1f}% | {batch} | {loss} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    cli.fail("--workdir is required")
  results = run_all(flags.FLAGS.config, _WORKDIR.value, _RUNS.value)
  if results is None:
    print(f"a pretraining stopped before its last step; run the same command again to resume it in "
          f"{_WORKDIR.value}", flush=True)
    return
  print(markdown_table(results), flush=True)
  print(f"\nResults in {epath.Path(_WORKDIR.value) / RESULTS_FILE}", flush=True)


if __name__ == "__main__":
  cli.run(main)
