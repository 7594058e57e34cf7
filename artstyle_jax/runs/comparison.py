"""The paper's comparison table: several backbones evaluated on one dataset with one protocol.

`compare(entries, config, workdir)` evaluates each entry as `runs.evaluation` does (weighted
kNN and a linear probe, on the config's dataset) into workdir/entries/NAME/, one row of the table
each: a workdir of ours (a directory with config.json: its latest checkpoint's student, with its
saved config and the overrides), a fine-tuning workdir (`finetuning`: its row's linear columns are
the fine-tuned classifier's results, read from its eval/finetune.json, its kNN columns empty), or
any other source of a backbone for `models.load_backbone`, evaluated with the config. An entry that fails is reported (a line on stderr, a row that says
why) and the others go on. Written in the workdir: comparison.json (every row, with its error if
it failed), comparison.md (the table: method, backbone, parameters, then top-1, top-5, mean
per-class accuracy and macro-F1 of the kNN and of the linear probe) and comparison.png
(`pictures.comparison_chart`). With a few-label plan (`evaluators.label_efficiency`), every row
also holds its settings' figures, comparison.md a second table (top-1, mean ± std over the label
seeds, per setting) and label_efficiency.png draws top-1 against labels per class
(`pictures.label_efficiency_chart`).
"""
from collections.abc import Mapping, Sequence
import json
import re
import sys
import time
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import ml_collections

from artstyle_jax import models
from artstyle_jax.evaluators import label_efficiency
from artstyle_jax.method import config_lib
from artstyle_jax.method import sharding
from artstyle_jax.pictures import comparison_chart
from artstyle_jax.pictures import label_efficiency_chart
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import finetuning
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints

RESULTS_FILE = "comparison.json"
TABLE_FILE = "comparison.md"
CHART_FILE = "comparison.png"
LABEL_CHART_FILE = "label_efficiency.png"
ENTRIES_DIR = "entries"
_NAME = re.compile(r"[\w.+-]+")


class Entry:
  """One row to evaluate: its NAME and SOURCE, and whether SOURCE is one of our workdirs."""

  def __init__(self, name: str, source: str):
    self.name = name
    self.source = models.backbones.canonical_source(source)
    self.is_finetuned = finetuning.is_finetune_workdir(self.source)
    self.is_workdir = ((epath.Path(self.source) / checkpoints.CONFIG_FILE).exists()
                       and not models.backbones.is_transformers_directory(self.source) and not self.is_finetuned)


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
  return config_lib.override(saved_run.saved_config(entry.source), overrides)


def evaluate_entry(entry: Entry, config: ml_collections.ConfigDict, overrides: Sequence[str], out_dir: epath.Path,
                   mesh: jax.sharding.Mesh, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """The evaluation's results ({'knn': ..., 'linear': ...}) of one entry, its outputs written to out_dir."""
  if entry.is_finetuned:
    return {"linear": finetuning.read_results(entry.source, config)}
  if entry.is_workdir:
    return evaluation.evaluate_workdir(entry.source, entry_config(entry, config, overrides), mesh=mesh,
                                     out_dir=out_dir, verbose=False, **options)
  return evaluation.evaluate_weights(entry.source, config, out_dir,
                                   overridden=tuple(o.split("=", 1)[0] for o in overrides), mesh=mesh,
                                   verbose=False, **options)


def row(entry: Entry, results: Optional[Mapping[str, Mapping[str, Any]]], error: Optional[str],
        seconds: float) -> dict[str, Any]:
  """One row of comparison.json; the figures are None for an entry that failed, 'label_efficiency'
  (the settings of `label_efficiency.evaluate`) None without a few-label plan."""
  knn, linear = (results or {}).get("knn"), (results or {}).get("linear")
  few_label = (results or {}).get("label_efficiency")
  first = knn or linear
  kind = "finetuned" if entry.is_finetuned else "workdir" if entry.is_workdir else "weights"
  return {
      "name": entry.name, "source": entry.source, "kind": kind,
      "model": first and first["model"], "num_parameters": first and first["num_parameters"],
      "step": first and first["step"], "linear_method": linear and linear["method"],
      **{f"{method}_{metric}": result and result[metric]
         for method, result in (("knn", knn), ("linear", linear)) for metric in label_efficiency.METRICS},
      "label_efficiency": few_label and few_label["settings"],
      "error": error, "seconds": round(seconds, 1),
  }


def _percent(value: Optional[float]) -> str:
  return "-" if value is None else f"{100.0 * value:.2f}"


def _millions(count: Optional[int]) -> str:
  return "-" if count is None else f"{count / 1e6:.1f}M"


def format_table(comparison: Mapping[str, Any]) -> str:
  """comparison.md: a heading naming the dataset and protocol, the Markdown table, the failures."""
  figures = [f"{method}_{metric}" for method in label_efficiency.METHODS for metric in label_efficiency.METRICS]
  lines = [f"# {comparison['dataset']} ({comparison['test_split']} split), linear probe: {comparison['mode']}", "",
           "| method | backbone | params | kNN top-1 | kNN top-5 | kNN per-class mean | kNN macro-F1 | linear top-1 "
           "| linear top-5 | linear per-class mean | linear macro-F1 |",
           "| --- " * (3 + len(figures)) + "|"]
  for r in comparison["entries"]:
    backbone = "failed" if r["error"] else r["model"]
    lines.append(f"| {r['name']} | {backbone} | {_millions(r['num_parameters'])} | "
                 + " | ".join(_percent(r[key]) for key in figures) + " |")
  lines += _label_efficiency_table(comparison)
  failed = [r for r in comparison["entries"] if r["error"]]
  if failed:
    lines += [""] + [f"- {r['name']} ({r['source']}) failed: {r['error']}" for r in failed]
  return "\n".join(lines) + "\n"


def _mean_std(spread: Optional[Mapping[str, Any]]) -> str:
  if spread is None:
    return "-"
  return _percent(spread["mean"]) + ("" if spread["std"] is None else f" ± {_percent(spread['std'])}")


def _label_efficiency_table(comparison: Mapping[str, Any]) -> list[str]:
  """The few-label table's lines (none without a plan): a row per entry, a column per setting,
  cells 'kNN / linear' top-1."""
  plan = comparison.get("label_plan")
  if not plan:
    return []
  lines = ["", f"Few labels: top-1 (%), kNN / linear, mean ± std over label seeds 0-{plan['seeds'] - 1}", "",
           "| method | " + " | ".join(plan["settings"]) + " |", "| --- " * (1 + len(plan["settings"])) + "|"]
  for r in comparison["entries"]:
    by_name = {s["name"]: s for s in r["label_efficiency"] or ()}
    cells = [f"{_mean_std(by_name[name]['knn']['top1'])} / {_mean_std(by_name[name]['linear']['top1'])}"
             if name in by_name else "-" for name in plan["settings"]]
    lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
  return lines


def write_outputs(out: epath.Path, comparison: Mapping[str, Any]) -> None:
  """comparison.json, comparison.md, comparison.png and, with a few-label plan, label_efficiency.png
  in `out` (process 0)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / RESULTS_FILE).write_text(json.dumps(comparison, indent=2, allow_nan=False) + "\n")
  (out / TABLE_FILE).write_text(format_table(comparison))
  comparison_chart.draw_comparison_chart(comparison, out / CHART_FILE)
  if comparison.get("label_plan"):
    label_efficiency_chart.draw_label_efficiency_chart(comparison, out / LABEL_CHART_FILE)


def compare(entries: Sequence[Entry], config: ml_collections.ConfigDict, workdir: str, *,
            overrides: Sequence[str] = (), mode: str = "fast", **options) -> dict[str, Any]:
  """Evaluates every entry into workdir/entries/NAME and writes the comparison (module docstring).

  Args:
    entries: the rows, in order.
    config: the --config file with `overrides` applied (backbone sources use it).
    overrides: the "key=value" overrides, applied to the workdirs' saved configs too.
    mode: the linear probe, 'fast', 'paper' or 'baseline'.
    options: `evaluation.evaluate_backbone`'s (batch_size, paper_epochs, paper_batch_size, probe, embedding,
      label_plan).

  Returns:
    What comparison.json holds: dataset, test_split, mode, label_plan ({'settings': names, 'seeds'}
    or None) and one `row` per entry.
  Raises:
    ConfigError, FileNotFoundError: an unusable config or dataset, before anything is written.
  """
  config_lib.validate(config)
  saved_run.open_splits(config)
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
  plan = options.get("label_plan")
  comparison = {"dataset": config.dataset.name, "test_split": config.dataset.eval_split, "mode": mode,
                "label_plan": plan and {"settings": [s.name for s in plan.settings], "seeds": plan.seeds},
                "entries": rows}
  if jax.process_index() == 0:
    write_outputs(out, comparison)
  return comparison
