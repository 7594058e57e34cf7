"""The paper's comparison table: several backbones evaluated on one dataset with one protocol.

  python -m artstyle_jax.compare --entry=NAME=SOURCE_OR_WORKDIR [--entry=...] --workdir=OUT
      [--mode=fast|paper|baseline] [--config=configs/paper.py] [--config.key=value ...]
      [--paper_epochs=N --paper_batch_size=N --probe_learning_rate=LR ...] [--batch_size=N] [--embedding]

Each entry is evaluated as `eval` would (weighted kNN and the --mode linear probe, on the
config's dataset) and becomes one row of the table:

- a workdir of ours (a directory with config.json): its latest checkpoint's student, with its saved
  config and the --config overrides given here;
- any other SOURCE is a backbone for `models.load_backbone` (a hub id such as
  timm/convnext_base.fb_in22k_ft_in1k, the ImageNet initialisation before our training; a
  ResNet-50 checkpoint of MoCo, SwAV, MMSelfSup, ...; an authors' .pth; random:MODEL, or `random`
  for the random initialisation of the config's model), evaluated with --config (default
  configs/paper.py) and its overrides, a ResNet normalised with the ImageNet constants.

Outputs in OUT: comparison.json (every row, with its error if it failed), comparison.md (the
table: method, backbone, parameters, kNN top-1, linear top-1 / top-5, mean per-class accuracy),
comparison.png (bar chart of the top-1 figures), and entries/NAME/ with each entry's eval outputs
(with --embedding, its t-SNE map of the test split's features too: entries/NAME/embedding.png).
One progress line per entry; an entry that fails is reported (a line on stderr, a row that says
why) and the others go on. Exit status 1 when an entry failed, or when the command is refused
(one error line, nothing written).
"""
from collections.abc import Mapping, Sequence
import json
import os
import re
import sys
import time
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
from ml_collections import config_flags

from artstyle_jax import checkpoints
from artstyle_jax import config_lib
from artstyle_jax import eval as eval_lib
from artstyle_jax import host_memory
from artstyle_jax import models
from artstyle_jax import paths
from artstyle_jax import pictures
from artstyle_jax import program_logging
from artstyle_jax import sharding

RESULTS_FILE = "comparison.json"
TABLE_FILE = "comparison.md"
CHART_FILE = "comparison.png"
ENTRIES_DIR = "entries"
_NAME = re.compile(r"[\w.+-]+")


class Entry:
  """One row to evaluate: its NAME and SOURCE, and whether SOURCE is one of our workdirs."""

  def __init__(self, name: str, source: str):
    self.name = name
    self.source = models.backbones.canonical_source(source)
    self.is_workdir = (epath.Path(self.source) / checkpoints.CONFIG_FILE).exists()


def parse_entries(values: Sequence[str]) -> list[Entry]:
  """--entry values NAME=SOURCE as Entries.

  Raises:
    ConfigError: none given, one without NAME=, a NAME that is not a file name or given twice.
  """
  if not values:
    raise config_lib.ConfigError("give at least one --entry=NAME=SOURCE_OR_WORKDIR")
  entries = []
  for value in values:
    name, sep, source = value.partition("=")
    if not sep or not source or not _NAME.fullmatch(name):
      raise config_lib.ConfigError(f"--entry={value}: expected NAME=SOURCE_OR_WORKDIR, NAME of letters, digits, "
                                   "'_', '.', '+', '-'")
    if name in {e.name for e in entries}:
      raise config_lib.ConfigError(f"--entry name {name!r} is given twice")
    entries.append(Entry(name, source))
  return entries


def entry_config(entry: Entry, config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """The config an entry is evaluated with: `config` (the --config file with `overrides`) for a
  backbone source; a workdir's saved config with the same `overrides` for a workdir."""
  if not entry.is_workdir:
    return config
  return config_lib.override(eval_lib.saved_config(entry.source), overrides)


def evaluate_entry(entry: Entry, config: ml_collections.ConfigDict, overrides: Sequence[str], out_dir: epath.Path,
                   mesh: jax.sharding.Mesh, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """`eval`'s results ({'knn': ..., 'linear': ...}) of one entry, its outputs written to out_dir."""
  if entry.is_workdir:
    return eval_lib.evaluate_workdir(entry.source, entry_config(entry, config, overrides), mesh=mesh,
                                     out_dir=out_dir, verbose=False, **options)
  return eval_lib.evaluate_weights(entry.source, config, out_dir, overridden=eval_lib.override_keys(
      [f"--config.{o}" for o in overrides]), mesh=mesh, verbose=False, **options)


def row(entry: Entry, results: Optional[Mapping[str, Mapping[str, Any]]], error: Optional[str],
        seconds: float) -> dict[str, Any]:
  """One row of comparison.json; the figures are None for an entry that failed."""
  knn, linear = (results or {}).get("knn"), (results or {}).get("linear")
  return {
      "name": entry.name, "source": entry.source, "kind": "workdir" if entry.is_workdir else "weights",
      "model": knn and knn["model"], "num_parameters": knn and knn["num_parameters"],
      "step": knn and knn["step"], "knn_top1": knn and knn["top1"], "linear_method": linear and linear["method"],
      "linear_top1": linear and linear["top1"], "linear_top5": linear and linear["top5"],
      "linear_mean_per_class_accuracy": linear and linear["mean_per_class_accuracy"],
      "error": error, "seconds": round(seconds, 1),
  }


def _percent(value: Optional[float]) -> str:
  return "-" if value is None else f"{100.0 * value:.2f}"


def _millions(count: Optional[int]) -> str:
  return "-" if count is None else f"{count / 1e6:.1f}M"


def format_table(comparison: Mapping[str, Any]) -> str:
  """comparison.md: a heading naming the dataset and protocol, the Markdown table, the failures."""
  lines = [f"# {comparison['dataset']} ({comparison['test_split']} split), linear probe: {comparison['mode']}", "",
           "| method | backbone | params | kNN top-1 | linear top-1 | linear top-5 | per-class mean accuracy |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in comparison["entries"]:
    backbone = "failed" if r["error"] else r["model"]
    lines.append(f"| {r['name']} | {backbone} | {_millions(r['num_parameters'])} | {_percent(r['knn_top1'])} | "
                 f"{_percent(r['linear_top1'])} | {_percent(r['linear_top5'])} | "
                 f"{_percent(r['linear_mean_per_class_accuracy'])} |")
  failed = [r for r in comparison["entries"] if r["error"]]
  if failed:
    lines += [""] + [f"- {r['name']} ({r['source']}) failed: {r['error']}" for r in failed]
  return "\n".join(lines) + "\n"


def plot_chart(comparison: Mapping[str, Any], path: str) -> None:
  """comparison.png: kNN and linear top-1 per entry, horizontal bars, failed entries marked."""
  entries = comparison["entries"]
  figure = Figure(figsize=(8, 1.2 + 0.6 * len(entries)), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  height = 0.38
  positions = range(len(entries))
  for offset, key, label in ((-height / 2, "knn_top1", "kNN top-1"),
                             (height / 2, "linear_top1", f"linear top-1 ({comparison['mode']})")):
    values = [100.0 * (r[key] or 0.0) for r in entries]
    bars = axes.barh([p + offset for p in positions], values, height, label=label)
    axes.bar_label(bars, labels=["failed" if r["error"] else f"{v:.1f}" for r, v in zip(entries, values)],
                   padding=2, fontsize=8)
  axes.set_yticks(list(positions), [r["name"] for r in entries])
  axes.invert_yaxis()
  axes.set_xlim(0, 105)
  axes.set_xlabel("accuracy (%)")
  axes.set_title(f"{comparison['dataset']} ({comparison['test_split']}): kNN and linear probe top-1")
  axes.legend(loc="lower right", fontsize=8)
  figure.savefig(path, dpi=120)


def write_outputs(out: epath.Path, comparison: Mapping[str, Any]) -> None:
  """comparison.json, comparison.md and comparison.png in `out` (process 0)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / RESULTS_FILE).write_text(json.dumps(comparison, indent=2, allow_nan=False) + "\n")
  (out / TABLE_FILE).write_text(format_table(comparison))
  plot_chart(comparison, os.fspath(out / CHART_FILE))


def compare(entries: Sequence[Entry], config: ml_collections.ConfigDict, workdir: str, *,
            overrides: Sequence[str] = (), mode: str = "fast", **options) -> dict[str, Any]:
  """Evaluates every entry into workdir/entries/NAME and writes the comparison (module docstring).

  Args:
    entries: the rows, in order.
    config: the --config file with `overrides` applied (backbone sources use it).
    overrides: the "key=value" overrides, applied to the workdirs' saved configs too.
    mode: the linear probe, 'fast', 'paper' or 'baseline'.
    options: `eval.evaluate_backbone`'s (batch_size, paper_epochs, paper_batch_size, probe, embedding).

  Returns:
    What comparison.json holds: dataset, test_split, mode and one `row` per entry.
  Raises:
    ConfigError, FileNotFoundError: an unusable config or dataset, before anything is written.
  """
  config_lib.validate(config)
  eval_lib.open_splits(config)
  mesh = sharding.create_mesh()
  out = epath.Path(workdir)
  rows = []
  for index, entry in enumerate(entries, 1):
    print(f"[{index}/{len(entries)}] {entry.name}: evaluating {entry.source}", flush=True)
    start = time.perf_counter()
    try:
      results = evaluate_entry(entry, config, overrides, out / ENTRIES_DIR / entry.name, mesh,
                               {"mode": mode, **options})
    except Exception as e:  # pylint: disable=broad-except  (one entry's failure must not end the others)
      if not isinstance(e, (config_lib.ConfigError, checkpoints.WorkdirError, FileNotFoundError,
                            models.BackboneError)):
        logging.exception("entry %s failed", entry.name)
      message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      rows.append(row(entry, None, message, time.perf_counter() - start))
      print(f"[{index}/{len(entries)}] {entry.name} failed: {message}", file=sys.stderr, flush=True)
      continue
    rows.append(row(entry, results, None, time.perf_counter() - start))
    r = rows[-1]
    print(f"[{index}/{len(entries)}] {entry.name}: {r['model']}, kNN top-1 {_percent(r['knn_top1'])}%, linear "
          f"top-1 {_percent(r['linear_top1'])}% ({r['seconds']:.0f} s)", flush=True)
  comparison = {"dataset": config.dataset.name, "test_split": config.dataset.eval_split, "mode": mode,
                "entries": rows}
  if jax.process_index() == 0:
    write_outputs(out, comparison)
  return comparison


# ---------------------------------------------------------------------------------------------
# The program.


def _define_flags() -> None:
  flags.DEFINE_multi_string("entry", [], "NAME=SOURCE_OR_WORKDIR, once per row, in order.")
  paths.DEFINE_path("workdir", None, "Directory for the comparison's outputs.")
  flags.DEFINE_enum("mode", "fast", eval_lib.MODES, "Linear probe of every entry: 'fast', 'paper' or 'baseline'.")
  flags.DEFINE_integer("batch_size", None, "Images per feature-extraction step; default config.batch_size rounded "
                       "up to a multiple of the device count.", lower_bound=1)
  eval_lib.define_probe_flags()
  flags.DEFINE_bool("embedding", False, "Also draw each entry's t-SNE map of the test split's features, "
                    f"entries/NAME/{pictures.EMBEDDING_FILE}.")
  config_flags.DEFINE_config_file("config", str(eval_lib.WEIGHTS_CONFIG), "Config of the backbone sources "
                                  "(dataset, image size, normalisation); --config.key=value overrides apply to "
                                  "the workdirs' saved configs too.")


def _fail(message: Any) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    _fail(str(e).strip().splitlines()[0])


def main(argv):
  host_memory.keep_freed_memory()  # Before JAX starts its backend.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  program_logging.setup()
  flag_values = flags.FLAGS
  if not flag_values.workdir:
    _fail("--workdir is required")
  overrides = [arg[len("--config."):] for arg in sys.argv[1:] if arg.startswith("--config.")]
  try:
    entries = parse_entries(flag_values.entry)
    comparison = compare(entries, flag_values.config, flag_values.workdir, overrides=overrides,
                         mode=flag_values.mode, batch_size=flag_values.batch_size, embedding=flag_values.embedding,
                         **eval_lib.probe_flag_options(flag_values))
  except (config_lib.ConfigError, FileNotFoundError) as e:
    _fail(e)
  print(format_table(comparison), end="")
  print(f"written to {flag_values.workdir}: {RESULTS_FILE}, {TABLE_FILE}, {CHART_FILE}, {ENTRIES_DIR}/")
  if any(r["error"] for r in comparison["entries"]):
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags)
