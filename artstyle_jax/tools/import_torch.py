"""Imports a checkpoint of the authors' PyTorch code as a workdir that eval, predict and train use.

  python -m artstyle_jax.tools.import_torch CHECKPOINT.pth --workdir=DIR \
      [--iters_per_epoch=N | --step=N] [--config=configs/paper.py] [--config.key=value ...]

The file is `torch.save({'model': state_dict, 'optimizer': SGD state_dict, 'epoch': int})`; it
becomes the TrainState of a fresh workdir DIR (`authors_import`: which arrays go where, and what
the checkpoint fixes of the config).

The config is `--config` (default configs/paper.py) with its overrides, and what the checkpoint
fixes: model.name, model.proj_hidden_dim, model.proj_dim, queue_size, optim.momentum and
optim.weight_decay (unless overridden), share_teachers=False when the two teachers differ. An
override that contradicts the checkpoint's shapes is refused.

The imported run stands at step `epoch * iters_per_epoch`, iters_per_epoch being what train.py
will count on the config's dataset when --config.dataset.data_dir is given; otherwise pass it
with --iters_per_epoch, or give the step itself with --step. Prints what was imported and the
train.py command that continues the run; a refused import is one error line, nothing written.
"""
import sys

from absl import app
from absl import flags

from artstyle_jax import cli
from artstyle_jax.method import config_lib
from artstyle_jax.runs import authors_import
from artstyle_jax.storage import paths

DEFAULT_CONFIG = config_lib.packaged_config("paper.py")

cli.define_config_file("Config the imported run continues with, default configs/paper.py.",
                       default=str(DEFAULT_CONFIG))
_WORKDIR = cli.DEFINE_path("workdir", None, "New directory for the imported run.", required=True)
_ITERS_PER_EPOCH = flags.DEFINE_integer("iters_per_epoch", None, "Steps per epoch: the step is epoch * "
                                        "iters_per_epoch. Default: counted on the config's dataset as train.py "
                                        "counts them.")
_STEP = flags.DEFINE_integer("step", None, "The imported state's step, instead of epoch * iters_per_epoch.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(f"give exactly one checkpoint file, got {argv[1:]}")
  overridden = cli.override_keys(sys.argv[1:])
  config, state = authors_import.import_checkpoint(paths.resolve(argv[1]), _WORKDIR.value, flags.FLAGS.config, overridden,
                                                   iters_per_epoch=_ITERS_PER_EPOCH.value, step=_STEP.value)
  config_file = cli.config_file()
  print(f"imported {argv[1]} into {_WORKDIR.value}: {config.model.name}, step {int(state.step)}, "
        f"teacher copies {' and '.join(state.teachers)}, queue {config.queue_size} x {config.model.proj_dim}\n"
        f"continue training with: {authors_import.continue_command(config_file, config, _WORKDIR.value)}")


if __name__ == "__main__":
  cli.run(main)
