"""The paper's comparison table: several backbones evaluated on one dataset with one protocol
(`comparison.compare`).

  python -m artstyle_jax.compare --entry=NAME=SOURCE_OR_WORKDIR [--entry=...] --workdir=OUT
      [--mode=fast|paper|baseline] [--config=configs/paper.py] [--config.key=value ...]
      [--paper_epochs=N --paper_batch_size=N --probe_learning_rate=LR ...] [--batch_size=N] [--embedding]
      [--label_fractions=F,... --shots=S,... --label_seeds=N]

Each entry is evaluated as `eval` would (weighted kNN and the --mode linear probe, on the
config's dataset) and becomes one row of the table:

- a workdir of ours (a directory with our config.json): its latest checkpoint's student, with its
  saved config and the --config overrides given here;
- a fine-tuning workdir (python -m artstyle_jax.finetune): not evaluated again, its row's linear
  columns are the fine-tuned classifier's (DIR/eval/finetune.json), its kNN columns empty;
- any other SOURCE is a backbone for `models.load_backbone` (a hub id such as
  timm/convnext_base.fb_in22k_ft_in1k, the ImageNet initialisation before our training; a
  ResNet-50 checkpoint of MoCo, SwAV, MMSelfSup, ...; an authors' .pth; a directory of a DINOv2
  or CLIP model's transformers files; random:MODEL, or `random` for the random initialisation of
  the config's model), evaluated with --config (default configs/paper.py) and its overrides, a
  ResNet normalised with the ImageNet constants, a ViT with its own constants and image size.

Outputs in OUT: comparison.json (every row, with its error if it failed), comparison.md (the
table: method, backbone, parameters, then the kNN's and the linear probe's top-1, top-5, mean
per-class accuracy and macro-F1), comparison.png (bar chart of the top-1 figures), and
entries/NAME/ with each entry's eval outputs (with --embedding, its t-SNE map of the test split's
features too: entries/NAME/embedding.png). With --label_fractions or --shots (as eval's: every
entry scored on the same label subsets), comparison.md gains a few-label table and
label_efficiency.png draws top-1 against labels per class, a line per entry, the spread over the
--label_seeds shaded; each entry's figures are in entries/NAME/label_efficiency.json.
One progress line per entry; an entry that fails is reported (a line on stderr, a row that says
why) and the others go on. Exit status 1 when an entry failed, or when the command is refused
(one error line, nothing written).
"""
import sys

from absl import app
from absl import flags

from artstyle_jax import cli
from artstyle_jax.evaluators import probes
from artstyle_jax.method import config_lib
from artstyle_jax.pictures import embedding_map
from artstyle_jax.runs import comparison

DEFAULT_CONFIG = config_lib.packaged_config("paper.py")

_ENTRY = flags.DEFINE_multi_string("entry", [], "NAME=SOURCE_OR_WORKDIR, once per row, in order.")
_WORKDIR = cli.DEFINE_path("workdir", None, "Directory for the comparison's outputs.")
_MODE = flags.DEFINE_enum("mode", "fast", probes.MODES, "Linear probe of every entry: 'fast', 'paper' or "
                          "'baseline'.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per feature-extraction step; default "
                                   "config.batch_size rounded up to a multiple of the device count.", lower_bound=1)
cli.define_probe_flags()
cli.define_label_flags()
_EMBEDDING = flags.DEFINE_bool("embedding", False, "Also draw each entry's t-SNE map of the test split's features, "
                               f"entries/NAME/{embedding_map.EMBEDDING_FILE}.")
cli.define_config_file("Config of the backbone sources (dataset, image size, normalisation), default "
                       "configs/paper.py; --config.key=value overrides apply to the workdirs' saved configs too.",
                       default=str(DEFAULT_CONFIG))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    cli.fail("--workdir is required")
  label_plan = cli.label_plan()
  results = comparison.compare(comparison.parse_entries(_ENTRY.value), flags.FLAGS.config, _WORKDIR.value,
                               overrides=cli.config_overrides(sys.argv[1:]), mode=_MODE.value,
                               batch_size=_BATCH_SIZE.value, embedding=_EMBEDDING.value, label_plan=label_plan,
                               **cli.probe_flag_options())
  print(comparison.format_table(results), end="")
  charts = [comparison.CHART_FILE] + ([comparison.LABEL_CHART_FILE] if label_plan else [])
  print(f"written to {_WORKDIR.value}: {comparison.RESULTS_FILE}, {comparison.TABLE_FILE}, {', '.join(charts)}, "
        f"{comparison.ENTRIES_DIR}/")
  if any(r["error"] for r in results["entries"]):
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
