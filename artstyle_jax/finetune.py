"""Supervised fine-tuning of a whole backbone plus a linear classifier (`finetuning.finetune`).

  python -m artstyle_jax.finetune --weights=SOURCE --workdir=DIR --config.dataset.name=NAME
      --config.dataset.data_dir=DIR [--config=configs/finetune.py] [--config.key=value ...]

SOURCE is any backbone eval --weights takes (`models.load_backbone`: a hub id, a .safetensors or
.pth file, random:MODEL, ...) or one of our pretraining workdirs (its latest student backbone).
The recipe is configs/finetune.py's (AdamW, warm-up + cosine, label smoothing 0.1, a backbone
rate a tenth of the classifier's, RandomResizedCrop + flip). Running again on DIR resumes from
its latest checkpoint, batch for batch; SIGTERM or SIGINT saves a checkpoint and exits 0. At the
end the classifier is scored on the test split: DIR/eval/finetune.json (top-1, top-5, mean
per-class accuracy, macro-F1, confusion matrix) and DIR/eval/finetune_confusion.png, and
`compare --entry=NAME=DIR` reads DIR as a row. A refused run (an unknown source, a missing
dataset, a workdir of another source) exits 1 with one error line before anything is written.
"""
import sys

from absl import app
from absl import flags

from artstyle_jax import cli
from artstyle_jax.method import config_lib
from artstyle_jax.runs import finetuning
from artstyle_jax.runtime import multihost
from artstyle_jax.storage import checkpoints

cli.define_config_file("Fine-tuning config file (default configs/finetune.py).",
                       default=str(config_lib.packaged_config("finetune.py")), lock_config=True)
_WORKDIR = cli.DEFINE_path("workdir", None, "Directory for checkpoints, metrics, the saved config and eval/.")
_WEIGHTS = flags.DEFINE_string("weights", None, "The backbone to fine-tune (models.load_backbone's sources, "
                               "random:MODEL, or a pretraining workdir).")
flags.mark_flags_as_required(["workdir", "weights"])
cli.define_distributed_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.start_compilation_cache(flags.FLAGS.config, _WORKDIR.value)
  multihost.on_lost_peer(lambda: checkpoints.newest_checkpoint_note(_WORKDIR.value))
  finetuning.finetune(_WEIGHTS.value, flags.FLAGS.config, _WORKDIR.value, overridden=cli.override_keys(sys.argv[1:]))


if __name__ == "__main__":
  cli.run(main, distributed=True)
